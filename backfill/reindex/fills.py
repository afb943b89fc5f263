"""Filling the index being built: from Kafka and archive files through the Luigi backfills, or
from the old index keeping each document's version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from backfill.reindex.plan import (
    FillJob,
    FillResult,
    ReindexError,
)
from ingest.errors import ConfigError
from ingest.settings import StreamSettings
from ingest.types import IndexAction, RawRecord

if TYPE_CHECKING:  # the runner loads luigi; the fills import it only when they run
    from backfill.runner import BackfillSummary
    from ingest.pipeline.wiring import Components

log = structlog.get_logger(__name__)


# ----------------------------------------------------------------------------- fills


class StreamFiller:
    """The real fills: the Luigi Kafka and file backfills (:mod:`backfill.runner`) aimed at
    the new index, and a scroll copy of the old index."""

    def __init__(self, components: Components, stream: StreamSettings, run_id: int | None) -> None:
        self._components = components
        self._stream = stream
        self._run_id = run_id

    def fill(self, job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
        if job.source == "kafka":
            return self._from_kafka(job, progress)
        if job.source == "index":
            return self._from_index(job, progress)
        if job.source == "files":
            return self._from_files(job, progress)
        raise ConfigError(f"unknown reindex source {job.source!r}")

    def _from_kafka(self, job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
        """The Luigi offset backfill: every partition from ``start`` (default the earliest
        retained offset) up to the end offsets, through the stream's own pipeline.

        Its chunks are named by index and offsets, so a fill killed half-way resumes: the
        chunks already done are skipped. Bad records land in the stream's dead letters (the
        rows the daemon wrote, so nothing is counted twice).
        """
        from backfill.runner import run_kafka_backfill

        summary = run_kafka_backfill(
            self._components.settings,
            self._stream.name,
            index=job.target,
            end_offsets=dict(job.end_offsets),
            start_offsets=dict(job.start_offsets),
        )
        return self._summary_result(summary, progress)

    def _from_index(self, job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
        """Scroll the source index and write each hit with its ``_version`` as external version.

        Writes go straight to the sink (no offsets, no dead letters to commit), so the
        stream's delete markers are checked here, as the batch writer does on every other
        path: a copy of a document deleted since the scroll saw it is dropped.
        """
        from ingest.pipeline.deletes import drop_superseded
        from ingest.search.bulk import BulkSink, SinkResult

        client = self._components.search
        settings = self._components.settings
        sink = BulkSink(
            client,
            max_retry_s=settings.runtime.max_retry_s,
            max_request_bytes=settings.search.max_bulk_bytes,
        )
        client.refresh(job.source_index)
        total = FillResult()
        page: list[IndexAction] = []

        def flush() -> None:
            kept, superseded = drop_superseded(self._components.ledger, self._stream.alias, page)
            result = sink.write(kept, [job.target]) if kept else SinkResult()
            for action, reason in result.rejected:
                log.error("reindex_document_rejected", doc_id=action.doc_id, reason=reason)
            total.add(
                FillResult(
                    read=len(page),
                    indexed=result.indexed,
                    conflicts=result.conflicts + superseded,
                    rejected=len(result.rejected),
                )
            )
            page.clear()
            progress(total)

        for n, hit in enumerate(client.scan(job.source_index, size=1000)):
            page.append(hit_action(hit, job.source_index, n))
            if len(page) >= 1000:
                flush()
        if page:
            flush()
        return total

    def _from_files(self, job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
        """The Luigi file backfill for each ``--path`` (file, directory or glob)."""
        from backfill.runner import run_file_backfill

        total = FillResult()
        for path in job.paths:
            summary = run_file_backfill(
                self._components.settings, self._stream.name, path, index=job.target
            )
            total.add(self._summary_result(summary, progress))
        return total

    @staticmethod
    def _summary_result(
        summary: BackfillSummary, progress: Callable[[FillResult], None]
    ) -> FillResult:
        if not summary.ok:
            failed = "; ".join(f"{f.label}: {f.error}" for f in summary.failures[:5])
            raise ReindexError(
                f"{summary.chunks_failed} backfill chunk(s) failed ({failed}); re-run to resume"
            )
        result = FillResult(
            read=summary.records_read,
            indexed=summary.records_indexed,
            deleted=summary.records_deleted,
            conflicts=summary.conflicts,
            dead_lettered=summary.records_dead_lettered,
        )
        progress(result)
        return result


def hit_action(hit: Mapping[str, Any], source_index: str, n: int) -> IndexAction:
    """A search hit as an index action keeping its version (docs/design.md#versions)."""
    doc_id = str(hit["_id"])
    return IndexAction(
        op="index",
        doc_id=doc_id,
        version=int(hit.get("_version", 1)),
        body=orjson.dumps(hit.get("_source") or {}),
        # the document keeps its shard key; the ingest pipeline already ran on this _source
        routing=hit.get("_routing"),
        record=RawRecord(
            topic=source_index,
            partition=0,
            offset=n,
            key=doc_id.encode(),
            value=None,
            source="index",
        ),
    )
