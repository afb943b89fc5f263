"""Produce -> searchable latency: how stale the index is while the daemon keeps up.

A real ``ingest run`` consumes a topic that the upstream producer library feeds at a steady
rate (about half the search server's bulk ceiling, so the daemon keeps up and what is
measured is latency, not backlog). One record in ``SAMPLE_EVERY`` is tracked: the time it
was handed to the producer, and the first time a search through the stream's alias finds
it. The alias is polled every ``POLL_S`` with an ``ids`` query and never refreshed by hand,
so visibility is what a user of the index sees: bulk acknowledged and the index refreshed
on its own ``refresh_interval``.

Two settings are measured: the defaults, and settings tuned for latency (see ``TUNED``).
"""

from __future__ import annotations

import itertools
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import fresh_settings, write_daemon_config
from bench.endtoend import INGEST, free_port
from ingest.avro.catalog import SchemaCatalog
from ingest.dev.samples import sample_orders
from ingest.dev.stack import StackEndpoints
from ingest.producer import RecordProducer
from ingest.search.client import SearchClient, connect_search
from ingest.settings import IndexSettings, Settings

#: One record in this many is tracked (fewer ids per poll keeps the poller's load small).
SAMPLE_EVERY = 10
#: How often the alias is searched for the tracked records still missing.
POLL_S = 0.02

#: Stream settings tuned for latency; what each one does is in the README. The batch size
#: limits stay at their defaults: capping them costs the search server throughput (a bulk
#: request has a fixed cost), and a daemon that falls behind has seconds of latency anyway.
TUNED: dict[str, Any] = {
    "linger_s": 0.05,
    "max_in_flight": 1,
    "index": IndexSettings(shards=1, replicas=0, refresh_interval="100ms"),
}
#: librdkafka properties tuned for latency (passed through ``[kafka.client]``).
TUNED_KAFKA_CLIENT: dict[str, str | int | bool] = {"fetch.wait.max.ms": 20}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Poller(threading.Thread):
    """Finds tracked records in the alias; ``seen`` maps id -> first time it was found."""

    def __init__(self, client: SearchClient, alias: str) -> None:
        super().__init__(daemon=True)
        self._client = client
        self._alias = alias
        self.pending: dict[str, float] = {}
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                ids = list(self.pending)
            if ids:
                body = {"query": {"ids": {"values": ids}}, "size": len(ids), "_source": False}
                found = self._client.request("POST", f"/{self._alias}/_search", body=body)
                now = time.time()
                with self.lock:
                    for hit in found["hits"]["hits"]:
                        if self.pending.pop(hit["_id"], None) is not None:
                            self.seen[hit["_id"]] = now
            time.sleep(POLL_S)


def measure(
    endpoints: StackEndpoints,
    *,
    rate: float,
    duration_s: float,
    warmup_s: float,
    tuned: bool,
    workdir: Path,
) -> dict[str, Any]:
    """p50/p90/p99 produce -> searchable seconds over ``duration_s`` at ``rate`` records/s."""
    settings = fresh_settings(endpoints, **(TUNED if tuned else {}))
    if tuned:
        kafka = settings.kafka.model_copy(update={"client": TUNED_KAFKA_CLIENT})
        settings = settings.model_copy(update={"kafka": kafka})
    stream = settings.streams[0]
    config = write_daemon_config(settings, workdir)
    log_path = workdir / f"{stream.topic}.log"
    with log_path.open("ab") as log:
        port = free_port()
        proc = subprocess.Popen(
            [INGEST, "run", "--config", str(config), "--metrics-port", str(port)],
            stdout=log,
            stderr=log,
        )
        try:
            _wait_for_assignment(log_path, proc)
            result = _drive(settings, rate, duration_s, warmup_s, proc)
            result.update(_flush_shape(port))
            return result
        finally:
            proc.terminate()
            proc.wait(60)


def _drive(
    settings: Settings,
    rate: float,
    duration_s: float,
    warmup_s: float,
    proc: subprocess.Popen[bytes],
) -> dict[str, Any]:
    stream = settings.streams[0]
    producer = RecordProducer(settings, stream, SchemaCatalog.load(settings.schemas_dir))
    client = connect_search(settings.search)
    poller = _Poller(client, stream.alias)
    poller.start()
    produced_at: dict[str, float] = {}
    orders = sample_orders(seed=int(time.time()))
    started = time.monotonic()
    measuring_from = started + warmup_s
    try:
        for i in itertools.count():
            due = started + i / rate
            if due > measuring_from + duration_s:
                break
            while (ahead := due - time.monotonic()) > 0:
                producer.poll(min(ahead, 0.01))
            order = next(orders)
            sent = time.time()
            producer.produce(order)
            if i % SAMPLE_EVERY == 0 and due >= measuring_from:
                produced_at[order["order_id"]] = sent
                with poller.lock:
                    poller.pending[order["order_id"]] = sent
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode}")
        assert producer.flush(60).failed == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with poller.lock:
                if not poller.pending:
                    break
            time.sleep(0.1)
    finally:
        poller.stop.set()
        poller.join(10)
        client.close()
    latencies = [poller.seen[k] - t for k, t in produced_at.items() if k in poller.seen]
    assert len(latencies) == len(produced_at), "some tracked records never became visible"
    return {
        "rate_per_s": rate,
        "tracked": len(latencies),
        "p50_s": round(_percentile(latencies, 0.5), 3),
        "p90_s": round(_percentile(latencies, 0.9), 3),
        "p99_s": round(_percentile(latencies, 0.99), 3),
        "max_s": round(max(latencies), 3),
    }


def _flush_shape(port: int) -> dict[str, float]:
    """Mean records and seconds per flush, from the daemon's own /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    values: dict[str, float] = {}
    for line in lines:
        for name in (
            "ingest_batch_size_records_sum",
            "ingest_batch_size_records_count",
            "ingest_bulk_latency_seconds_sum",
        ):
            if line.startswith(name + "{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    flushes = max(1.0, values.get("ingest_batch_size_records_count", 0.0))
    return {
        "flushes": flushes,
        "mean_records_per_flush": round(values.get("ingest_batch_size_records_sum", 0) / flushes),
        "mean_flush_s": round(values.get("ingest_bulk_latency_seconds_sum", 0) / flushes, 3),
    }


def _wait_for_assignment(log_path: Path, proc: subprocess.Popen[bytes]) -> None:
    """Until the daemon holds its partitions: records sent before would wait for the
    consumer group join (half the 6 s session timeout on tansu) and measure that instead."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}")
        if b'"partitions_assigned"' in log_path.read_bytes():
            return
        time.sleep(0.2)
    raise RuntimeError("daemon not assigned partitions within 60 s")


def run(
    endpoints: StackEndpoints,
    *,
    ceiling_docs_per_s: float,
    duration_s: float = 40.0,
    warmup_s: float = 10.0,
) -> dict[str, Any]:
    """Defaults vs latency-tuned settings at half the measured bulk ceiling."""
    rate = round(ceiling_docs_per_s / 2)
    with tempfile.TemporaryDirectory() as tmp:
        out: dict[str, Any] = {"ceiling_docs_per_s": round(ceiling_docs_per_s)}
        for name, tuned in (("defaults", False), ("latency_tuned", True)):
            out[name] = measure(
                endpoints,
                rate=rate,
                duration_s=duration_s,
                warmup_s=warmup_s,
                tuned=tuned,
                workdir=Path(tmp),
            )
            print(f"freshness {name}:", out[name], flush=True)
    return out
