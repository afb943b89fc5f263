"""The search server's raw bulk ceiling vs the daemon end to end, and the daemon's peak RSS.

- ceiling: pre-built bulk bodies of the documents the pipeline makes, posted straight to
  the search server (2,000 per request, the daemon's default batch), into a fresh index
  with the stream's mapping.
- end to end: the same records produced to Kafka first, then ``ingest run`` (a real
  subprocess) drains them; throughput from its first ledger commit to catching up.
- peak RSS: the daemon's resident memory, sampled every 0.2 s while it drains a backlog.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import tomli_w
from confluent_kafka import Producer

from bench.common import fresh_settings
from bench.pipeline import STREAM, encoded_records
from ingest.batch import Batch
from ingest.catalog import SchemaCatalog
from ingest.codec import AvroCodec
from ingest.daemon import group_id_for
from ingest.devstack import StackEndpoints
from ingest.ledger import PostgresLedger
from ingest.mapping import index_definition
from ingest.pipeline import RecordProcessor
from ingest.search import connect_search
from ingest.settings import Settings
from ingest.transform import Transformer
from ingest.types import RawRecord

INGEST = str(Path(sys.executable).with_name("ingest"))


def bulk_bodies(records: list[RawRecord], index: str, per_request: int) -> list[bytes]:
    catalog = SchemaCatalog.load(Path("schemas"))
    processor = RecordProcessor(STREAM, AvroCodec(catalog, "orders"), Transformer(STREAM))
    bodies = []
    for i in range(0, len(records), per_request):
        batch = Batch()
        processor.process(records[i : i + per_request], batch, now=0.0)
        lines = []
        for a in batch.actions:
            meta = {"_index": index, "_id": a.doc_id, "version": a.version}
            meta["version_type"] = "external"
            lines.append(orjson.dumps({"index": meta}))
            lines.append(a.body or b"{}")
        bodies.append(b"\n".join(lines) + b"\n")
    return bodies


def ceiling(endpoints: StackEndpoints, records: list[RawRecord], per_request: int) -> float:
    settings = fresh_settings(endpoints, partitions=1)
    client = connect_search(settings.search)
    catalog = SchemaCatalog.load(settings.schemas_dir)
    index = settings.streams[0].alias + "-raw"
    client.create_index(index, index_definition(catalog.latest("orders"), STREAM.index))
    bodies = bulk_bodies(records, index, per_request)
    started = time.perf_counter()
    for body in bodies:
        resp = client.bulk(body)
        assert not resp.get("errors"), str(resp)[:500]
    took = time.perf_counter() - started
    client.delete_index(index)
    client.close()
    return len(records) / took


def produce_raw(settings: Settings, records: list[RawRecord]) -> None:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    topic = settings.streams[0].topic
    for r in records:
        while True:
            try:
                producer.produce(topic, r.value, r.key, partition=r.partition)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(120) == 0


def drain(settings: Settings, records: list[RawRecord], workdir: Path) -> dict[str, Any]:
    """Run the daemon over a produced backlog; throughput and peak RSS."""
    produce_raw(settings, records)
    per_partition: dict[int, int] = {}
    for r in records:
        per_partition[r.partition] = per_partition.get(r.partition, 0) + 1
    config = workdir / f"{settings.streams[0].topic}.toml"
    data = settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["ledger"]["dsn"] = settings.ledger.dsn.get_secret_value()
    config.write_text(tomli_w.dumps(data))
    log = (workdir / "daemon.log").open("ab")
    proc = subprocess.Popen([INGEST, "run", "--config", str(config)], stdout=log, stderr=log)
    ps = psutil.Process(proc.pid)
    ledger = PostgresLedger.from_settings(settings.ledger)
    group, topic = group_id_for(settings, settings.streams[0]), settings.streams[0].topic
    peak_rss = 0
    first_commit_at = None
    started = time.perf_counter()
    try:
        while True:
            peak_rss = max(peak_rss, ps.memory_info().rss)
            try:
                offsets = ledger.offsets(group, topic)
            except Exception:  # noqa: BLE001 - schema not migrated yet
                offsets = {}
            done = sum(offsets.values())
            if done and first_commit_at is None:
                first_commit_at = (time.perf_counter(), done)
            if all(offsets.get(p, 0) >= n for p, n in per_partition.items()):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode}; see {workdir}/daemon.log")
            time.sleep(0.2)
        finished = time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(60)
        ledger.close()
    assert first_commit_at is not None
    t0, n0 = first_commit_at
    return {
        "records": len(records),
        "wall_s": round(finished - started, 2),
        "steady_records_per_s": round((len(records) - n0) / max(1e-9, finished - t0)),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
    }


def run(endpoints: StackEndpoints, *, n: int = 40_000, backlog: int = 500_000) -> dict[str, Any]:
    records, _ = encoded_records(n)
    raw = ceiling(endpoints, records, per_request=2000)
    with tempfile.TemporaryDirectory() as tmp:
        e2e = drain(fresh_settings(endpoints), records, Path(tmp))
        big, _ = encoded_records(backlog, seed=2)
        rss = drain(fresh_settings(endpoints), big, Path(tmp))
    return {
        "raw_bulk_ceiling_docs_per_s": round(raw),
        "end_to_end": e2e,
        "end_to_end_vs_ceiling": round(e2e["steady_records_per_s"] / raw, 3),
        "backlog_drain": rss,
    }
