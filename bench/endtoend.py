"""The search server's raw bulk ceiling vs the daemon end to end, and the daemon's peak RSS.

- ceiling: pre-built bulk bodies of the documents the pipeline makes, posted straight to
  the search server (2,000 per request, the daemon's default batch), into a fresh index
  with the stream's mapping.
- end to end: the same records produced to Kafka first, then ``ingest run`` (a real
  subprocess) drains them; throughput from its first ledger commit to catching up.
- peak RSS: the daemon's resident memory, sampled every 0.2 s while it drains a backlog.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import Producer

from bench.common import fresh_settings, write_daemon_config
from bench.pipeline import STREAM, encoded_records
from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.dev.stack import StackEndpoints
from ingest.ledger import PostgresLedger
from ingest.pipeline.batch import Batch
from ingest.pipeline.process import RecordProcessor
from ingest.pipeline.transform import Transformer
from ingest.search.client import connect_search
from ingest.search.mapping import index_definition
from ingest.settings import Settings, group_id_for
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
    config = write_daemon_config(settings, workdir)
    log = (workdir / "daemon.log").open("ab")
    port = free_port()
    proc = subprocess.Popen(
        [INGEST, "run", "--config", str(config), "--metrics-port", str(port)],
        stdout=log,
        stderr=log,
    )
    ps = psutil.Process(proc.pid)
    ledger = PostgresLedger.from_settings(settings.ledger)
    group, topic = group_id_for(settings, settings.streams[0]), settings.streams[0].topic
    peak_rss = 0
    first_commit_at = None
    bulk_s_at_first = 0.0
    cpu_at_first = 0.0
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
                bulk_s_at_first = bulk_seconds(port)
                cpu_at_first = cpu_seconds(ps)
            if all(offsets.get(p, 0) >= n for p, n in per_partition.items()):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode}; see {workdir}/daemon.log")
            time.sleep(0.2)
        finished = time.perf_counter()
        bulk_s = bulk_seconds(port) - bulk_s_at_first
        cpu_s = cpu_seconds(ps) - cpu_at_first
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
        # Steady-state wall time spent inside bulk requests: 1.0 would mean the daemon keeps
        # the search server busy all the time, whatever that server's speed at the moment.
        "share_in_bulk": round(bulk_s / max(1e-9, finished - t0), 3),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        # The daemon's CPU (user + system) per record over the same steady span.
        "cpu_us_per_record": round(cpu_s / max(1, len(records) - n0) * 1e6, 1),
    }


def cpu_seconds(ps: psutil.Process) -> float:
    times = ps.cpu_times()
    return float(times.user + times.system)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bulk_seconds(port: int) -> float:
    """The daemon's ``bulk_latency_seconds`` sum so far, from its /metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("ingest_bulk_latency_seconds_sum{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def run(
    endpoints: StackEndpoints, *, n: int = 40_000, backlog: int = 500_000, rounds: int = 5
) -> dict[str, Any]:
    """Ceiling and daemon passes over the same records, alternated for ``rounds`` rounds.

    The search server's own speed drifts by ±15 % from one minute to the next on this
    machine, so a single ceiling pass compared with a single daemon pass mostly measures
    that drift. Each round pairs a ceiling pass with the daemon pass right after it; the
    reported ratio is the median of the rounds' ratios (every round is kept in the result).
    """
    records, _ = encoded_records(n)
    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            raw = ceiling(endpoints, records, per_request=2000)
            e2e = drain(fresh_settings(endpoints), records, Path(tmp))
            pairs.append(
                {
                    "raw_bulk_ceiling_docs_per_s": round(raw),
                    "end_to_end": e2e,
                    "ratio": round(e2e["steady_records_per_s"] / raw, 3),
                }
            )
        big, _ = encoded_records(backlog, seed=2)
        rss = drain(fresh_settings(endpoints), big, Path(tmp))
    ratios = sorted(p["ratio"] for p in pairs)
    shares = sorted(p["end_to_end"]["share_in_bulk"] for p in pairs)
    return {
        "rounds": pairs,
        "share_in_bulk_median": shares[len(shares) // 2],
        "end_to_end_vs_ceiling": ratios[len(ratios) // 2],
        "end_to_end_vs_ceiling_range": [ratios[0], ratios[-1]],
        "backlog_drain": rss,
    }
