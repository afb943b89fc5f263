"""``ingest status`` against the real ledger and the real broker.

The ledger is filled the way the daemon, a backfill and a reindex would leave it (claims and
commits, runs with heartbeats — one of them aged past the stale limit through SQL —, dead
letters, index versions, chunks); records are produced in batches so the broker's
watermark must come from a real fetch (tansu's ListOffsets is wrong for batched produce).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from psycopg import sql

from ingest.cli import main
from ingest.ledger import OffsetCommit, PostgresLedger
from ingest.settings import Settings, group_id_for
from ingest.types import DeadLetter, RawRecord
from tests.support.daemon import write_config

pytestmark = pytest.mark.integration


def _produce(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(topic, value=f"v{i}".encode(), partition=partition)
    assert producer.flush(15) == 0


def _fill_ledger(settings: Settings, ledger: PostgresLedger) -> dict[str, Any]:
    stream = settings.streams[0]
    group = group_id_for(settings, stream)
    claims = ledger.claim_partitions(group, stream.topic, [0, 1], "host-a:1:orders")
    ledger.commit([OffsetCommit(group, stream.topic, 0, claims[0].generation, 3)])
    live = ledger.start_run("stream", stream.name, {"group": group})
    ledger.heartbeat(live, {"consumed": 3})
    stale = ledger.start_run("backfill", stream.name, {"range": "0-100"})
    with psycopg.connect(settings.ledger.dsn.get_secret_value(), autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET heartbeat_at = now() - interval '10 minutes' WHERE id = %s"
            ).format(sql.Identifier(ledger.schema, "runs")),
            (stale,),
        )
    failed = ledger.start_run("reindex", stream.name, {"to": 2})
    ledger.finish_run(failed, "failed", error="mapping conflict on field note")
    record = RawRecord(stream.topic, 0, 1, None, b"xx", 0, [])
    ledger.store_dead_letters([DeadLetter(record, "framing", "framing: bad", stream.name)])
    ledger.add_index_version(stream.alias, 1, f"{stream.alias}-v1", "fp1", "live")
    ledger.add_index_version(stream.alias, 2, f"{stream.alias}-v2", "fp2", "building")
    for task, outcome in (("chunk-a", "done"), ("chunk-b", "failed")):
        assert ledger.try_lock_chunk(task, "KafkaRangeChunk", stream.name, {}, "w1")
        ledger.finish_chunk(
            task, outcome, {"indexed": 5}, error="boom" if outcome == "failed" else None
        )
    return {"live": live, "stale": stale, "failed": failed}


def test_status_json_and_table(
    make_settings: Callable[..., Settings], kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = make_settings(partitions=2, runtime={"heartbeat_s": 2})
    stream = settings.streams[0]
    _produce(kafka_bootstrap, stream.topic, {0: 5, 1: 2})
    config = write_config(settings, tmp_path / "c.toml")
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        runs = _fill_ledger(settings, ledger)

    result = CliRunner().invoke(main, ["status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)

    parts = {p["partition"]: p for p in data["partitions"]}
    assert (parts[0]["next_offset"], parts[0]["high_watermark"], parts[0]["lag"]) == (3, 5, 2)
    assert (parts[1]["next_offset"], parts[1]["high_watermark"], parts[1]["lag"]) == (None, 2, None)
    assert parts[0]["owner"] == "host-a:1:orders" and parts[0]["last_flush"].endswith("Z")

    procs = {p["run_id"]: p for p in data["processes"]}
    assert procs[runs["live"]]["stale"] is False
    assert procs[runs["stale"]]["stale"] is True
    assert procs[runs["live"]]["counters"] == {"consumed": 3}
    assert runs["failed"] not in procs

    assert data["dead_letters"] == [{"stream": "orders", "stage": "framing", "count": 1}]
    assert [(v["version"], v["state"]) for v in data["index_versions"]] == [
        (1, "live"),
        (2, "building"),
    ]
    recent = {r["run_id"]: r for r in data["recent_runs"]}
    assert recent[runs["failed"]]["status"] == "failed"
    assert recent[runs["failed"]]["error"] == "mapping conflict on field note"
    assert runs["live"] not in recent  # stream runs are not "recent backfill runs"
    assert data["chunks"] == [
        {
            "stream": "orders",
            "family": "KafkaRangeChunk",
            "pending": 0,
            "running": 0,
            "done": 1,
            "failed": 1,
            "last_finished_at": data["chunks"][0]["last_finished_at"],
            "last_error": "boom",
        }
    ]
    problems = " | ".join(data["problems"])
    assert f"run {runs['stale']} (backfill" in problems
    assert "1 KafkaRangeChunk chunk(s) failed" in problems

    table = CliRunner().invoke(main, ["status", "--config", str(config)])
    assert table.exit_code == 0, table.output
    assert "STALE" in table.stdout
    assert "mapping conflict" in table.stdout
    assert "building" in table.stdout


def test_status_with_broker_down_still_shows_the_ledger(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """An unreachable broker costs one bounded timeout and one problem line, not a failure."""
    from ingest.dev.stack import free_port

    settings = make_settings(
        partitions=None, kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"}
    )
    stream = settings.streams[0]
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        group = group_id_for(settings, stream)
        claims = ledger.claim_partitions(group, stream.topic, [0], "o")
        ledger.commit([OffsetCommit(group, stream.topic, 0, claims[0].generation, 7)])
    config = write_config(settings, tmp_path / "c.toml")
    started = time.monotonic()
    result = CliRunner().invoke(main, ["status", "--config", str(config), "--json"])
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert took < 20
    assert [(p["next_offset"], p["high_watermark"]) for p in data["partitions"]] == [(7, None)]
    assert any("broker high watermarks unavailable" in p for p in data["problems"])

    quick = CliRunner().invoke(main, ["status", "--config", str(config), "--json", "--no-broker"])
    assert json.loads(quick.stdout)["problems"] == []


def test_status_unknown_stream_is_a_config_error(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    config = write_config(make_settings(partitions=None), tmp_path / "c.toml")
    result = CliRunner().invoke(main, ["status", "--config", str(config), "--stream", "nope"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unknown stream 'nope' (configured: orders)"
    ]
