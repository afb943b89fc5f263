"""Connecting to the ledger, the search cluster and the schema catalog, once, for any job.

The daemon, the backfills, the reindexer and the operator commands all start the same way:
load the catalog (bad schema files, and id or version fields the schemas do not have, fail
here), connect to PostgreSQL and migrate, connect to
the search cluster (its kind detected). Each failure is one ConfigError line. The pipeline for
a stream is built here too, so stream and backfill share one code path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import structlog

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.avro.fields import check_stream_fields
from ingest.avro.transcode import fast_path_for
from ingest.errors import ConfigError
from ingest.kafka.deadletters import DeadLetterTopic
from ingest.latency import IngestPath, event_time_for
from ingest.ledger import PostgresLedger
from ingest.pipeline.process import BatchWriter, DeadLetterPublisher, RecordProcessor
from ingest.pipeline.routing import schema_problem
from ingest.pipeline.transform import Transformer, load_hook
from ingest.retry import OnRetry, retrying
from ingest.search.bulk import BulkSink
from ingest.search.client import SearchClient, check_pipeline, connect_search
from ingest.settings import Settings, StreamSettings
from ingest.types import DeadLetter

log = structlog.get_logger(__name__)


@dataclass
class Components:
    settings: Settings
    catalog: SchemaCatalog
    ledger: PostgresLedger
    search: SearchClient

    def close(self) -> None:
        self.search.close()
        try:
            self.ledger.record_credential_loads()  # loads since the last periodic write
        finally:
            self.ledger.close()


@contextmanager
def open_components(settings: Settings) -> Iterator[Components]:
    """Catalog, migrated ledger and search client; closed on exit."""
    catalog = SchemaCatalog.load(settings.schemas_dir)
    for stream in settings.streams:
        latest = catalog.latest(stream.subject)
        check_stream_fields(catalog, stream)  # a typo'd id or version field fails here
        if stream.transform:
            load_hook(stream.transform)  # a missing hook is a config error, at start
        if stream.routing_field is not None:
            problem = schema_problem(latest.raw, stream.routing_field)
            if problem is not None:
                raise ConfigError(
                    f"stream {stream.name}: routing_field {stream.routing_field!r} {problem}"
                )
    check_s = settings.runtime.credential_check_s
    ledger = PostgresLedger.from_settings(settings.ledger, check_every_s=check_s)
    try:
        ledger.migrate()
        client = connect_search(settings.search, check_every_s=check_s)
        ledger.record_credential_loads()
    except BaseException:
        ledger.close()
        raise
    try:
        for stream in settings.streams:
            if stream.pipeline is not None:
                check_pipeline(client, stream.name, stream.pipeline)
    except BaseException:
        client.close()
        ledger.close()
        raise
    components = Components(settings, catalog, ledger, client)
    try:
        yield components
    finally:
        components.close()


@dataclass
class StreamPipeline:
    """Decode/validate/transform and flush for one stream: used by stream and backfill."""

    processor: RecordProcessor
    writer: BatchWriter
    sink: BulkSink


def build_pipeline(
    components: Components,
    stream: StreamSettings,
    *,
    run_id: int | None = None,
    on_retry: OnRetry | None = None,
    path: IngestPath = "live",
) -> StreamPipeline:
    """The one pipeline for ``stream``: codec -> transform -> bulk sink -> ledger.

    ``path`` labels the ingestion latency it measures: ``live`` for the daemon,
    ``backfill`` and ``replay`` for the jobs whose records are old by design.
    """
    settings = components.settings
    codec = AvroCodec.for_stream(settings, stream, components.catalog, decimals_as_float=True)
    sink = BulkSink(
        components.search,
        max_retry_s=settings.runtime.max_retry_s,
        max_request_bytes=settings.search.max_bulk_bytes,
        on_retry=on_retry,
        pipeline=stream.pipeline,
        what=f"bulk write ({stream.name})",
    )
    writer = BatchWriter(
        stream,
        sink,
        components.ledger,
        run_id=run_id,
        publish_dead_letters=_dead_letter_publisher(settings, stream, on_retry),
        retry=retrying(
            max_total_s=settings.runtime.max_retry_s,
            on_retry=on_retry,
            what=f"ledger commit ({stream.name})",
        ),
        path=path,
        event_time=event_time_for(stream.event_time_field, stream.version_field, codec.reader.raw),
    )
    return StreamPipeline(processor_for(stream, codec), writer, sink)


def processor_for(stream: StreamSettings, codec: AvroCodec) -> RecordProcessor:
    """The record processor of ``stream``: on the native fast path wherever it applies.

    ``codec`` should read decimals as floats (``decimals_as_float=True``), as documents
    hold them; the fast path requires it.
    """
    choice = fast_path_for(codec, stream)
    if choice.transcode is None:
        log.info("pipeline fast path off", stream=stream.name, reason=choice.reason)
    for writer in choice.slow_writers:
        log.info("pipeline fast path off for a writer schema", stream=stream.name, writer=writer)
    return RecordProcessor(stream, codec, Transformer(stream), fast=choice.transcode)


def _dead_letter_publisher(
    settings: Settings, stream: StreamSettings, on_retry: OnRetry | None
) -> DeadLetterPublisher | None:
    """The stream's dead-letter topic, retried like the sink; None when not configured."""
    if stream.dead_letter_topic is None:
        return None
    topic = DeadLetterTopic(settings, stream.dead_letter_topic)
    policy = retrying(
        max_total_s=settings.runtime.max_retry_s, on_retry=on_retry, what="dead-letter publish"
    )

    def publish(dead: Sequence[DeadLetter]) -> None:
        policy(topic, dead)

    return publish
