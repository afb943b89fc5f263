"""Pipeline throughput without a sink: decode + validate + transform + serialize, one core.

Encodes sample orders to Confluent wire format once, then times
``RecordProcessor.process`` (the exact code the daemon and backfills run) over them.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from bench.common import ROOT
from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.avro.transcode import native_available
from ingest.dev.samples import sample_orders
from ingest.latency import EventTime, measure_flush
from ingest.pipeline.batch import Batch
from ingest.pipeline.process import RecordProcessor
from ingest.pipeline.transform import Transformer
from ingest.pipeline.wiring import processor_for
from ingest.settings import StreamSettings
from ingest.types import RawRecord

STREAM = StreamSettings(
    name="orders",
    topic="orders",
    subject="orders",
    alias="orders",
    id_field="order_id",
    version_field="updated_at",
)


def encoded_records(
    n: int, seed: int = 1, schema_id: int | None = None
) -> tuple[list[RawRecord], int]:
    """``n`` sample orders framed with ``schema_id`` (default: the latest version)."""
    catalog = SchemaCatalog.load(ROOT / "schemas")
    codec = AvroCodec(catalog, "orders")
    out: list[RawRecord] = []
    total = 0
    writer = codec.reader if schema_id is None else catalog.by_id(schema_id)
    fields = {f["name"] for f in writer.schema["fields"]}  # an older one lacks newer fields
    for i, sample in enumerate(itertools.islice(sample_orders(seed), n)):
        order = {k: v for k, v in sample.items() if k in fields}
        value = codec.encode(order, schema_id=schema_id)
        total += len(value)
        out.append(RawRecord("orders", i % 4, i, order["order_id"].encode(), value))
    return out, total


def measure(
    processor: RecordProcessor, records: list[RawRecord], batch_size: int, repeats: int
) -> tuple[float, int]:
    """Best CPU seconds over ``repeats`` passes, and the JSON bytes one pass produced."""
    n = len(records)
    best = float("inf")
    body_bytes = 0
    for _ in range(repeats):
        started = time.process_time()
        body_bytes = 0
        for i in range(0, n, batch_size):
            batch = Batch()
            processor.process(records[i : i + batch_size], batch, now=0.0)
            body_bytes += sum(len(a.body or b"") for a in batch.actions)
            assert not batch.dead_letters, batch.dead_letters[:1]
        best = min(best, time.process_time() - started)
    return best, body_bytes


def latency_cost(
    processor: RecordProcessor, records: list[RawRecord], batch_size: int, repeats: int
) -> dict[str, float]:
    """CPU µs per record of a flush's ingestion latency summary (done once per flush,
    after the bulk acknowledgement, off the per-record path): from the Kafka timestamp
    alone, plus an event time that is the version field, plus one read from the document."""
    batches = []
    for i in range(0, len(records), batch_size):
        batch = Batch()
        processor.process(records[i : i + batch_size], batch, now=0.0)
        for j, action in enumerate(batch.actions):
            action.record.timestamp_ms = 1_700_000_000_000 + i + j
        batches.append(batch.actions)
    clocks = {
        "kafka_timestamp": None,
        "with_event_time_from_version": EventTime("updated_at", from_version=True),
        "with_event_time_from_document": EventTime("created_at", from_version=False),
    }
    out = {}
    for name, event_time in clocks.items():
        best = float("inf")
        for _ in range(repeats):
            started = time.process_time()
            for actions in batches:
                measure_flush("orders", "live", actions, 1_700_000_100_000, event_time)
            best = min(best, time.process_time() - started)
        out[f"latency_{name}_us_per_record"] = round(best / len(records) * 1e6, 3)
    return out


def run(n: int = 200_000, batch_size: int = 2000, repeats: int = 3) -> dict[str, Any]:
    """The daemon's processor (native fast path) and, for comparison, the Python path; both
    also for records written with the older orders v1 (read with v2's defaults)."""
    records, total_bytes = encoded_records(n)
    v1_records, _ = encoded_records(n, schema_id=1)
    catalog = SchemaCatalog.load(ROOT / "schemas")
    codec = AvroCodec(catalog, "orders", decimals_as_float=True)  # as build_pipeline does
    processor = processor_for(STREAM, codec)
    best, body_bytes = measure(processor, records, batch_size, repeats)
    v1_best, _ = measure(processor, v1_records, batch_size, repeats)
    python_path = RecordProcessor(STREAM, codec, Transformer(STREAM))
    python_best, _ = measure(python_path, records, batch_size, repeats)
    v1_python_best, _ = measure(python_path, v1_records, batch_size, repeats)
    return {
        "records": n,
        "native_fast_path": native_available(),
        "avro_bytes_per_record": round(total_bytes / n, 1),
        "json_bytes_per_record": round(body_bytes / n, 1),
        "cpu_s": round(best, 3),
        "records_per_s_per_core": round(n / best),
        "python_path_records_per_s_per_core": round(n / python_best),
        "v1_records_per_s_per_core": round(n / v1_best),
        "v1_python_path_records_per_s_per_core": round(n / v1_python_best),
        **latency_cost(processor, records, batch_size, repeats),
    }


if __name__ == "__main__":
    print(run())
