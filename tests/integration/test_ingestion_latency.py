"""Ingestion latency end to end: a real daemon, a real backfill, ``ingest status --json``.

The daemon's /metrics histogram counts every acknowledged record once, under
``path="live"``; the ledger keeps the same flushes for ``ingest status`` (another process);
a backfill over the same records lands under ``path="backfill"`` and leaves the live figure
alone. The event-time clock reads ``created_at`` from each document (it is not the
version field), so its newest record must be the newest ``created_at`` in the index.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from backfill.runner import RunOptions, run_kafka_backfill
from ingest.cli import main
from ingest.dev.demo import run_produce
from ingest.errors import FencedError
from ingest.latency import measure_flush
from ingest.ledger import OffsetCommit, PostgresLedger
from ingest.settings import Settings
from ingest.types import IndexAction, RawRecord
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    end_offsets,
    index_documents,
    metrics_port,
    scrape,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

HISTOGRAM = "ingest_ingestion_latency_seconds"


def sample(metrics: dict[str, float], name: str, **labels: str) -> float | None:
    """One sample of ``metrics`` by name and labels, whatever order the labels come in."""
    for line, value in metrics.items():
        metric, _, rest = line.partition("{")
        if metric != name:
            continue
        pairs = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        if {k: v.strip('"') for k, v in pairs.items()} == labels:
            return value
    return None


def status_json(config: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["status", "--config", str(config), "--json", "--no-broker"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def latency_row(data: dict[str, Any], path: str, source: str) -> dict[str, Any]:
    rows = [r for r in data["ingestion_latency"] if (r["path"], r["source"]) == (path, source)]
    assert len(rows) == 1, data["ingestion_latency"]
    return rows[0]


def test_live_and_backfill_latency_in_metrics_and_status(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        partitions=2, event_time_field="created_at", runtime={"heartbeat_s": 1}
    )
    config = write_config(settings, tmp_path / "c.toml")
    daemon = DaemonProcess(config, tmp_path / "d.log", extra_args=("--metrics-port", "0"))
    try:
        port = metrics_port(daemon)
        daemon.wait_assigned()
        summary = run_produce(settings, "orders", 300, seed=21, duplicate_ratio=0.1)
        wait_for(caught_up(settings, end_offsets(settings)), 120, "the daemon to catch up")
        wait_for(
            lambda: (
                sample(scrape(port), "ingest_heartbeat_timestamp_seconds", stream="orders")
                is not None
            ),
            30,
            "a heartbeat",
        )
        metrics = scrape(port)
    finally:
        assert daemon.stop() == 0, daemon.output()

    live = {"stream": "orders", "source": "kafka_timestamp", "path": "live"}
    assert sample(metrics, f"{HISTOGRAM}_count", **live) == summary.sent
    over_a_minute = sample(metrics, f"{HISTOGRAM}_bucket", **live, le="60.0")
    assert over_a_minute == summary.sent, "records produced while the daemon ran took < 60 s"
    events = sample(metrics, f"{HISTOGRAM}_count", **{**live, "source": "event_time"})
    assert events == summary.sent
    assert sample(metrics, "ingest_ready") == 1.0
    beat = sample(metrics, "ingest_heartbeat_timestamp_seconds", stream="orders")
    assert beat is not None and abs(beat - time.time()) < 60

    data = status_json(config)
    kafka = latency_row(data, "live", "kafka_timestamp")
    assert kafka["records"] == summary.sent and kafka["flushes"] >= 1
    assert 0 < kafka["p50_s"] <= kafka["p99_s"] <= 60
    assert kafka["newest_record_age_s"] < 600
    event = latency_row(data, "live", "event_time")
    newest_created = max(doc["created_at"] for doc in index_documents(settings).values())
    assert _instant(event["newest_record_at"]) == _instant(newest_created)
    assert event["p50_s"] == 3600.0, "sample orders are from 2024: over the last bound"

    backfill = run_kafka_backfill(
        settings,
        "orders",
        end_offsets=end_offsets(settings),
        options=RunOptions(retry_delay_s=0.5),
    )
    assert backfill.ok, backfill.render()
    after = status_json(config)
    assert latency_row(after, "backfill", "kafka_timestamp")["records"] == summary.sent
    assert latency_row(after, "live", "kafka_timestamp")["records"] == summary.sent


def _instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_latency_rows_land_with_the_flush_and_pruning_keeps_each_series_newest(
    make_settings: Callable[..., Settings],
) -> None:
    """A fenced commit writes no latency row; pruning drops old rows but keeps the newest of
    every (stream, path, source), so an idle stream still knows its newest record."""
    settings = make_settings(partitions=None)
    now_ms = int(time.time() * 1000)
    fresh = measure_flush("orders", "live", [_action(now_ms - 400)], now_ms, None)
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        claims = ledger.claim_partitions("g", "t", [0], "a")
        ledger.claim_partitions("g", "t", [0], "b")  # fences "a"
        with pytest.raises(FencedError):
            ledger.commit([OffsetCommit("g", "t", 0, claims[0].generation, 1)], latency=fresh)
        assert ledger.latency_windows(300) == []
        for age_s in (7200, 5400, 10):  # two old rows, then a fresh one
            at_ms = now_ms - age_s * 1000
            old = measure_flush("orders", "live", [_action(at_ms - 400)], at_ms, None)
            ledger.commit([], latency=old)
        backfill = measure_flush(
            "orders", "backfill", [_action(now_ms - 9_000_000)], now_ms - 7_200_000, None
        )
        ledger.commit([], latency=backfill)
        assert ledger.prune_latency("orders", keep_s=3600) == 2  # the backfill's only row stays
        windows = {(w.path, w.source): w for w in ledger.latency_windows(300)}
    live = windows[("live", "kafka_timestamp")]
    assert (live.flushes, live.records, sum(live.counts)) == (1, 1, 1)
    assert live.counts[5] == 1  # 0.4 s: the (0.25, 0.5] bucket
    only = windows[("backfill", "kafka_timestamp")]
    assert only.flushes == 0 and only.newest_record_at is not None
    assert abs(only.newest_record_at.timestamp() * 1000 - (now_ms - 9_000_000)) < 1


def _action(timestamp_ms: int) -> IndexAction:
    record = RawRecord("t", 0, 0, b"k", b"v", timestamp_ms)
    return IndexAction("index", "k", 1, b"{}", record)
