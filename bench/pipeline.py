"""Pipeline throughput without a sink: decode + validate + transform + serialize, one core.

Encodes sample orders to Confluent wire format once, then times
``RecordProcessor.process`` (the exact code the daemon and backfills run) over them.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from bench.common import ROOT
from ingest.batch import Batch
from ingest.catalog import SchemaCatalog
from ingest.codec import AvroCodec
from ingest.pipeline import RecordProcessor
from ingest.samples import sample_orders
from ingest.settings import StreamSettings
from ingest.transform import Transformer
from ingest.types import RawRecord

STREAM = StreamSettings(
    name="orders",
    topic="orders",
    subject="orders",
    alias="orders",
    id_field="order_id",
    version_field="updated_at",
)


def encoded_records(n: int, seed: int = 1) -> tuple[list[RawRecord], int]:
    catalog = SchemaCatalog.load(ROOT / "schemas")
    codec = AvroCodec(catalog, "orders")
    out: list[RawRecord] = []
    total = 0
    for i, order in enumerate(itertools.islice(sample_orders(seed), n)):
        value = codec.encode(order)
        total += len(value)
        out.append(RawRecord("orders", i % 4, i, order["order_id"].encode(), value))
    return out, total


def run(n: int = 200_000, batch_size: int = 2000, repeats: int = 3) -> dict[str, Any]:
    records, total_bytes = encoded_records(n)
    catalog = SchemaCatalog.load(ROOT / "schemas")
    codec = AvroCodec(catalog, "orders", decimals_as_float=True)  # as build_pipeline does
    processor = RecordProcessor(STREAM, codec, Transformer(STREAM))
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
    return {
        "records": n,
        "avro_bytes_per_record": round(total_bytes / n, 1),
        "json_bytes_per_record": round(body_bytes / n, 1),
        "cpu_s": round(best, 3),
        "records_per_s_per_core": round(n / best),
    }


if __name__ == "__main__":
    print(run())
