"""The PostgreSQL ledger against the session's real embedded PostgreSQL.

Each test works in its own schema (the ``unique`` name) and drops it afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from ingest.errors import ConfigError, FencedError, TransientError
from ingest.ledger import ChunkSkew, ChunkTiming, OffsetCommit, PostgresLedger
from ingest.ledger.migrator import load_migrations
from ingest.settings import LedgerSettings
from ingest.types import DeadLetter, RawRecord

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_VERSIONS = [m.version for m in load_migrations()]
TABLES = {
    "schema_migrations",
    "partition_offsets",
    "runs",
    "dead_letters",
    "index_versions",
    "backfill_chunks",
    "delete_markers",
    "flush_latency",
    "credential_loads",
}


def _drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def open_ledger(ledger_dsn: str, unique: str) -> Iterator[Callable[..., PostgresLedger]]:
    """Factory for ledgers on the test's schema (several = several processes' pools)."""
    opened: list[PostgresLedger] = []

    def make(dsn: str | None = None, **kwargs: Any) -> PostgresLedger:
        ledger = PostgresLedger(dsn or ledger_dsn, unique, connect_timeout_s=5, **kwargs)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()
    _drop_schema(ledger_dsn, unique)


@pytest.fixture
def ledger(open_ledger: Callable[..., PostgresLedger]) -> PostgresLedger:
    led = open_ledger()
    led.migrate()
    return led


def _dead_letter(
    offset: int, *, stage: str = "decode", source: str = "kafka", stream: str = "orders"
) -> DeadLetter:
    record = RawRecord(
        topic="orders",
        partition=1,
        offset=offset,
        key=b"k\x00\xff",
        value=b"\x00\x00\x00\x00\x01garbage" + bytes([offset % 256]),
        timestamp_ms=1_700_000_000_000 + offset,
        headers=[("trace", b"\x01\x02"), ("trace", b""), ("empty", b"")],
        source=source,
    )
    return DeadLetter(record=record, stage=stage, reason=f"bad record {offset}", stream=stream)


def _tables(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
    return {r[0] for r in rows}


# -- migrations ---------------------------------------------------------------------------


def test_migrate_applies_each_version_once(
    open_ledger: Callable[..., PostgresLedger], ledger_dsn: str, unique: str
) -> None:
    """The first migrate applies every version; the second finds nothing to do."""
    led = open_ledger()
    assert led.migrate() == ALL_VERSIONS
    assert led.migrate() == []
    assert _tables(ledger_dsn, unique) == TABLES
    with psycopg.connect(ledger_dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            sql.SQL("SELECT version, checksum FROM {}").format(
                sql.Identifier(unique, "schema_migrations")
            )
        ).fetchall()
    assert sorted(r[0] for r in rows) == ALL_VERSIONS
    assert all(len(r[1]) == 64 for r in rows)


_MIGRATE_SCRIPT = """
import json, sys
from ingest.ledger import PostgresLedger
with PostgresLedger(sys.argv[1], sys.argv[2], connect_timeout_s=5) as led:
    print(json.dumps(led.migrate()))
"""


def at_once(
    ledgers: list[PostgresLedger], call: Callable[[PostgresLedger], Any]
) -> tuple[list[Any], list[BaseException]]:
    """``call`` on every ledger from its own thread, released together: (results, errors)."""
    barrier = threading.Barrier(len(ledgers), timeout=30)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(led: PostgresLedger) -> None:
        try:
            barrier.wait()
            results.append(call(led))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(led,)) for led in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results, errors


def test_migrate_concurrently_from_threads_and_processes(
    ledger_dsn: str, unique: str, open_ledger: Callable[..., PostgresLedger]
) -> None:
    """Racing migrators (4 threads, 2 processes) apply each version exactly once, no errors."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_SCRIPT, ledger_dsn, unique],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(2)
    ]
    results, errors = at_once([open_ledger() for _ in range(4)], PostgresLedger.migrate)
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert errors == []
    assert len(results) == 6
    applied = sorted(v for result in results for v in result)
    assert applied == ALL_VERSIONS
    assert _tables(ledger_dsn, unique) == TABLES


# -- offsets and fencing ------------------------------------------------------------------


def test_claim_bumps_generation_and_returns_next_offset(ledger: PostgresLedger) -> None:
    """A new partition starts at generation 1 with no offset; each claim bumps it."""
    first = ledger.claim_partitions("g", "orders", [2, 0, 1, 1], "a")
    assert sorted(first) == [0, 1, 2]
    assert all(c.generation == 1 and c.next_offset is None for c in first.values())
    ledger.commit([OffsetCommit("g", "orders", 0, 1, 42)])
    second = ledger.claim_partitions("g", "orders", [0], "b")
    assert second[0].generation == 2
    assert second[0].next_offset == 42
    assert ledger.claim_partitions("g", "orders", [], "b") == {}
    # another group and topic are independent
    other = ledger.claim_partitions("h", "orders", [0], "c")
    assert other[0].generation == 1 and other[0].next_offset is None
    rows = {(r.consumer_group, r.partition): r for r in ledger.all_offsets()}
    assert rows[("g", 0)].owner == "b"
    assert rows[("g", 0)].generation == 2
    assert rows[("g", 1)].next_offset is None


def test_commit_moves_offsets_forward_only(ledger: PostgresLedger) -> None:
    """next_offset only grows; a lower commit leaves the stored value."""
    ledger.claim_partitions("g", "orders", [0, 1], "a")
    ledger.commit([OffsetCommit("g", "orders", 0, 1, 10), OffsetCommit("g", "orders", 1, 1, 5)])
    assert ledger.offsets("g", "orders") == {0: 10, 1: 5}
    ledger.commit([OffsetCommit("g", "orders", 0, 1, 7), OffsetCommit("g", "orders", 1, 1, 6)])
    assert ledger.offsets("g", "orders") == {0: 10, 1: 6}
    assert ledger.offsets("g", "other") == {}


def test_stale_generation_is_fenced_and_nothing_lands(ledger: PostgresLedger) -> None:
    """A commit with an old generation raises FencedError and rolls back all of it."""
    ledger.claim_partitions("g", "orders", [0, 1], "old")
    run_id = ledger.start_run("stream", "orders", {})
    ledger.commit([OffsetCommit("g", "orders", 0, 1, 10)], [], run_id, {"indexed": 1})
    ledger.claim_partitions("g", "orders", [0], "new")  # partition 0 -> generation 2
    with pytest.raises(FencedError, match=r"orders\[0\].*generation 2 \(new\)"):
        ledger.commit(
            # partition 1 is still ours: its move must be rolled back with the rest
            [OffsetCommit("g", "orders", 1, 1, 50), OffsetCommit("g", "orders", 0, 1, 20)],
            [_dead_letter(3)],
            run_id,
            {"indexed": 100},
        )
    assert ledger.offsets("g", "orders") == {0: 10}
    assert ledger.dead_letters() == []
    run = ledger.run(run_id)
    assert run is not None and run.counters == {"indexed": 1}
    # the new owner commits fine
    ledger.commit([OffsetCommit("g", "orders", 0, 2, 20)])
    assert ledger.offsets("g", "orders") == {0: 20}


def test_commit_to_unclaimed_partition_is_fenced(ledger: PostgresLedger) -> None:
    with pytest.raises(FencedError, match="never claimed"):
        ledger.commit([OffsetCommit("g", "orders", 9, 1, 1)])


# -- dead letters -------------------------------------------------------------------------


def test_dead_letters_are_stored_once_with_raw_bytes(ledger: PostgresLedger) -> None:
    """Dead-lettering a record again bumps attempts and keeps its bytes; one row per record."""
    ledger.claim_partitions("g", "orders", [1], "a")
    dl = _dead_letter(7)
    ledger.commit([OffsetCommit("g", "orders", 1, 1, 8)], [dl])
    ledger.store_dead_letters([_dead_letter(7, stage="transform")])
    ledger.commit([OffsetCommit("g", "orders", 1, 1, 8)], [dl])
    rows = ledger.dead_letters()
    assert len(rows) == 1
    row = rows[0]
    assert row.attempts == 3
    assert row.stage == "decode"  # the latest failure wins
    assert (row.key, row.value) == (dl.record.key, dl.record.value)
    assert row.headers == [("trace", b"\x01\x02"), ("trace", b""), ("empty", b"")]
    assert (row.topic, row.partition, row.offset, row.source) == ("orders", 1, 7, "kafka")
    assert row.timestamp_ms == dl.record.timestamp_ms
    assert row.first_seen_at <= row.last_seen_at
    assert row.to_raw_record() == dl.record
    assert ledger.dead_letter(row.id) == row
    assert ledger.dead_letter(row.id + 1000) is None


def test_dead_letter_queries_replay_and_purge(ledger: PostgresLedger) -> None:
    """Filters, replay marking, counts and purge by age."""
    ledger.store_dead_letters(
        [
            _dead_letter(1),
            _dead_letter(2, stage="index"),
            _dead_letter(1, source="file:" + "ab" * 32),  # same position, other source
            _dead_letter(3, stream="payments"),
        ]
    )
    all_rows = ledger.dead_letters()
    assert len(all_rows) == 4
    assert [r.offset for r in ledger.dead_letters("orders", stage="decode")] == [1, 1]
    assert len(ledger.dead_letters(limit=2)) == 2
    assert ledger.dead_letter_counts() == {
        ("orders", "decode"): 2,
        ("orders", "index"): 1,
        ("payments", "decode"): 1,
    }
    first = all_rows[0].id
    assert [r.id for r in ledger.dead_letters(ids=[first])] == [first]
    assert ledger.mark_replayed([first]) == 1
    assert first not in [r.id for r in ledger.dead_letters()]
    assert ledger.dead_letters(ids=[first]) == []
    replayed = ledger.dead_letters(ids=[first], include_replayed=True)
    assert replayed[0].replayed_at is not None
    assert ledger.dead_letter_counts()[("orders", "decode")] == 1
    # failing again makes it a live dead letter again
    ledger.store_dead_letters([_dead_letter(1)])
    again = ledger.dead_letter(first)
    assert again is not None and again.replayed_at is None and again.attempts == 2
    future = datetime.now(UTC) + timedelta(minutes=5)
    assert ledger.dead_letters(since=future) == []
    assert len(ledger.dead_letters(since=datetime.now(UTC) - timedelta(minutes=5))) == 4
    assert ledger.purge_dead_letters(datetime.now(UTC) - timedelta(days=1)) == 0
    assert ledger.purge_dead_letters(future) == 4
    assert ledger.dead_letters(include_replayed=True) == []


# -- runs ---------------------------------------------------------------------------------


def test_run_lifecycle(ledger: PostgresLedger) -> None:
    """start -> counters added by commits -> heartbeat gauges -> finish; secrets never stored."""
    run_id = ledger.start_run(
        "backfill",
        "orders",
        {"range": "0-10", "password": "hunter2", "target": "postgresql://u:pw0rd@h/db"},
    )
    run = ledger.run(run_id)
    assert run is not None
    assert (run.kind, run.stream, run.status) == ("backfill", "orders", "running")
    assert (run.host, run.pid) == (socket.gethostname(), os.getpid())
    assert run.params["password"] == "***"
    assert "pw0rd" not in json.dumps(run.params)
    assert run.params["range"] == "0-10"
    ledger.commit([], [], run_id, {"indexed": 3, "dead_lettered": 1})
    ledger.commit([], [], run_id, {"indexed": 4})
    assert ledger.heartbeat(run_id, {"lag": 12}) is True
    run = ledger.run(run_id)
    assert run is not None
    assert run.counters == {"indexed": 7, "dead_lettered": 1, "lag": 12}
    ledger.finish_run(
        run_id, "failed", error="boom at postgresql://u:pw0rd@h/db", counters={"lag": 0}
    )
    run = ledger.run(run_id)
    assert run is not None
    assert run.status == "failed" and run.finished_at is not None
    assert run.error is not None and "pw0rd" not in run.error
    assert run.counters["lag"] == 0
    assert ledger.heartbeat(run_id) is False
    other = ledger.start_run("stream", "orders", None)
    assert [r.id for r in ledger.runs()] == [other, run_id]
    assert [r.id for r in ledger.runs(kind="backfill")] == [run_id]
    assert [r.id for r in ledger.runs(status="running")] == [other]
    assert [r.id for r in ledger.runs(limit=1)] == [other]
    with pytest.raises(ValueError, match="status"):
        ledger.finish_run(other, "running")


def test_a_re_sent_commit_counts_its_flush_once(ledger: PostgresLedger) -> None:
    """A commit whose reply was lost is sent again with the same flush mark: the offsets and
    dead letters were idempotent already, and now the run's counters are too."""
    run_id = ledger.start_run("stream", "orders", None)
    ledger.commit([], [], run_id, {"indexed": 5}, flush=("writer-a", 1))
    ledger.commit([], [], run_id, {"indexed": 5}, flush=("writer-a", 1))  # the re-send
    ledger.commit([], [], run_id, {"indexed": 2, "deleted": 1}, flush=("writer-a", 2))
    ledger.commit([], [], run_id, {"indexed": 3}, flush=("writer-b", 1))  # another stream
    ledger.commit([], [], run_id, {"indexed": 100}, flush=("writer-a", 1))  # stale, late
    run = ledger.run(run_id)
    assert run is not None
    assert run.counters == {"indexed": 10, "deleted": 1}


def test_mark_stale_runs(ledger: PostgresLedger, ledger_dsn: str, unique: str) -> None:
    """Only running runs whose heartbeat is older than the limit are marked failed."""
    stale = ledger.start_run("stream", "orders", {})
    fresh = ledger.start_run("stream", "orders", {})
    with psycopg.connect(ledger_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET heartbeat_at = now() - interval '1 hour' WHERE id = %s").format(
                sql.Identifier(unique, "runs")
            ),
            (stale,),
        )
    assert ledger.mark_stale_runs(600) == 1
    stale_row, fresh_row = ledger.run(stale), ledger.run(fresh)
    assert stale_row is not None and stale_row.status == "failed"
    assert stale_row.error is not None and "heartbeat" in stale_row.error
    assert fresh_row is not None and fresh_row.status == "running"
    assert ledger.mark_stale_runs(600) == 0


# -- index versions -----------------------------------------------------------------------


def test_processes_adding_the_same_first_version_at_once_all_get_its_row(
    ledger: PostgresLedger, open_ledger: Callable[..., PostgresLedger]
) -> None:
    """Daemons starting together all record v1: none may trip over the index-name unique
    constraint while another's insert is in flight (seen as a FatalError at start)."""
    ledgers = [ledger, *(open_ledger() for _ in range(5))]
    for round_no in range(15):
        alias = f"race{round_no}"
        rows, errors = at_once(
            ledgers, lambda led, a=alias: led.add_index_version(a, 1, f"{a}-v1", "f", "live")
        )
        assert errors == []
        assert {(r.alias, r.version, r.index_name) for r in rows} == {(alias, 1, f"{alias}-v1")}
        assert len(rows) == len(ledgers)
    with pytest.raises(LookupError, match="'race0-v1' is already recorded"):
        ledger.add_index_version("race0", 2, "race0-v1", "f")


def test_index_versions_and_handoff(ledger: PostgresLedger) -> None:
    """Versions move building -> live (retiring the old); handoff keeps the first offset."""
    v1 = ledger.add_index_version("orders", 1, "orders-v1", "f1", "live")
    assert v1.state == "live" and v1.handoff == {}
    ledger.add_index_version("orders", 2, "orders-v2", "f2")
    again = ledger.add_index_version("orders", 2, "orders-v2-other", "f9")
    assert again.index_name == "orders-v2"  # idempotent: the stored row wins
    building = ledger.building_version("orders")
    assert building is not None and building.version == 2
    assert ledger.set_handoff("orders", 2, {0: 100, 1: 50}) == {0: 100, 1: 50}
    assert ledger.set_handoff("orders", 2, {0: 80, 1: 60, 2: 5}) == {0: 80, 1: 50, 2: 5}
    live = ledger.set_index_state("orders", 2, "live", details={"docs": 10})
    assert live.state == "live" and live.details == {"docs": 10} and live.handoff[0] == 80
    states = {v.version: v.state for v in ledger.index_versions("orders")}
    assert states == {1: "retired", 2: "live"}
    live_row = ledger.live_version("orders")
    assert live_row is not None and live_row.version == 2
    assert ledger.building_version("orders") is None
    assert ledger.live_version("payments") is None
    merged = ledger.set_index_state("orders", 2, "live", details={"swap_s": 1})
    assert merged.details == {"docs": 10, "swap_s": 1}
    with pytest.raises(LookupError):
        ledger.set_index_state("orders", 7, "failed")
    with pytest.raises(LookupError):
        ledger.set_handoff("orders", 7, {0: 1})
    with pytest.raises(ValueError, match="state"):
        ledger.set_index_state("orders", 2, "bogus")


# -- backfill chunks ----------------------------------------------------------------------


def test_chunk_lock_is_exclusive_across_connections(
    open_ledger: Callable[..., PostgresLedger],
) -> None:
    """One holder per chunk; done chunks are not re-taken until reset; close frees the lock."""
    a = open_ledger()
    a.migrate()
    b = open_ledger()
    params = {"start": 0, "end": 100}
    assert a.try_lock_chunk("t1", "KafkaRange", "orders", params, "worker-a") is True
    assert b.try_lock_chunk("t1", "KafkaRange", "orders", params, "worker-b") is False
    assert a.try_lock_chunk("t1", "KafkaRange", "orders", params, "worker-a") is False
    row = b.chunk("t1")
    assert row is not None
    assert (row.status, row.attempts, row.locked_by) == ("running", 1, "worker-a")
    assert row.params == params
    a.finish_chunk("t1", "done", {"indexed": 100})
    done = b.chunk("t1")
    assert done is not None and done.status == "done" and done.counts == {"indexed": 100}
    assert b.try_lock_chunk("t1", "KafkaRange", "orders", params, "worker-b") is False
    assert b.reset_chunks("orders", "OtherFamily") == 0
    assert b.reset_chunks("orders") == 1
    assert b.try_lock_chunk("t1", "KafkaRange", "orders", params, "worker-b") is True
    assert a.try_lock_chunk("t1", "KafkaRange", "orders", params, "worker-a") is False
    retried = a.chunk("t1")
    assert retried is not None and retried.attempts == 2 and retried.status == "running"
    b.close()  # as if worker b died: the server drops its session lock
    assert a.try_lock_chunk("t1", "KafkaRange", "orders", params, "worker-a") is True
    a.finish_chunk("t1", "failed", {}, error="boom")
    failed = a.chunk("t1")
    assert failed is not None and (failed.status, failed.error) == ("failed", "boom")
    assert [c.task_id for c in a.chunks(stream="orders")] == ["t1"]
    assert a.chunks(family="Nope") == []
    assert a.chunk("missing") is None


def test_chunk_timing_and_the_run_verdict_are_stored_and_cleared_by_a_rerun(
    ledger: PostgresLedger,
) -> None:
    """A finished chunk keeps its cost and run; the run's verdict lands only on rows that run
    still owns; re-taking the chunk clears both."""
    for task_id in ("t1", "t2"):
        assert ledger.try_lock_chunk(task_id, "KafkaTimeChunk", "orders", {}, "w run 5")
        ledger.finish_chunk(
            task_id, "done", {"consumed": 30}, timing=ChunkTiming(6.5, 60, 13_411), run_id=5
        )
    row = ledger.chunk("t1")
    assert row is not None
    assert (row.duration_s, row.records, row.read_bytes, row.run_id) == (6.5, 60, 13_411, 5)
    assert (row.skew_ratio, row.skewed) == (None, False)
    verdicts = [ChunkSkew("t1", 12.5, True), ChunkSkew("t2", 1.0, False)]
    assert ledger.record_chunk_skew(6, verdicts) == 0  # another run's verdict: not applied
    assert ledger.record_chunk_skew(5, verdicts) == 2
    by_id = {r.task_id: r for r in ledger.chunks(stream="orders")}
    assert (by_id["t1"].skew_ratio, by_id["t1"].skewed) == (12.5, True)
    assert (by_id["t2"].skew_ratio, by_id["t2"].skewed) == (1.0, False)
    assert ledger.reset_chunks("orders", task_ids=["t1"]) == 1
    assert ledger.try_lock_chunk("t1", "KafkaTimeChunk", "orders", {}, "w run 7")
    rerun = ledger.chunk("t1")
    assert rerun is not None and rerun.status == "running"
    assert (rerun.duration_s, rerun.records, rerun.run_id) == (None, None, None)
    assert not rerun.skewed
    ledger.finish_chunk("t1", "failed", {}, error="boom")  # no timing: a reindex's lock row
    failed = ledger.chunk("t1")
    assert failed is not None and failed.duration_s is None and failed.skew_ratio is None


def test_chunk_lock_race_has_one_winner(open_ledger: Callable[..., PostgresLedger]) -> None:
    ledgers = [open_ledger() for _ in range(4)]
    ledgers[0].migrate()
    barrier = threading.Barrier(len(ledgers), timeout=30)
    won: list[bool] = []

    def race(i: int) -> None:
        barrier.wait()
        won.append(ledgers[i].try_lock_chunk("race", "F", "orders", {}, f"w{i}"))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(won) == [False, False, False, True]


_LOCK_AND_HANG = """
import sys, time
from ingest.ledger import PostgresLedger
led = PostgresLedger(sys.argv[1], sys.argv[2], connect_timeout_s=5)
print("RESULT", led.try_lock_chunk("t-kill", "F", "orders", {}, "victim"), flush=True)
time.sleep(120)
"""


def test_chunk_lock_is_freed_when_holder_is_killed(
    ledger: PostgresLedger, ledger_dsn: str, unique: str
) -> None:
    """A SIGKILLed worker's chunk can be taken by another worker, with no manual cleanup."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOCK_AND_HANG, ledger_dsn, unique],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        while not line.startswith("RESULT"):  # structlog may print to stdout first
            line = proc.stdout.readline()
            assert line, "worker exited before locking"
        assert line.split() == ["RESULT", "True"]
        assert ledger.try_lock_chunk("t-kill", "F", "orders", {}, "me") is False
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not ledger.try_lock_chunk("t-kill", "F", "orders", {}, "me"):
        assert time.monotonic() < deadline, "lock of a killed worker never released"
        time.sleep(0.05)
    row = ledger.chunk("t-kill")
    assert row is not None and row.locked_by == "me" and row.attempts == 2


# -- privileges ---------------------------------------------------------------------------


def test_grant_sql_gives_a_worker_role_enough_and_no_more(
    ledger: PostgresLedger,
    ledger_dsn: str,
    unique: str,
) -> None:
    """A role granted grant_sql() runs every worker operation but cannot change the schema."""
    role = f"{unique}_worker"
    with psycopg.connect(ledger_dsn, autocommit=True, connect_timeout=5) as owner:
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for stmt in ledger.grant_sql(role):
            owner.execute(stmt.encode())
    worker_dsn = make_conninfo(ledger_dsn, user=role, password="any")
    w = PostgresLedger(worker_dsn, unique, connect_timeout_s=5)
    try:
        assert w.migrate() == []
        claims = w.claim_partitions("g", "orders", [0], "w")
        run_id = w.start_run("stream", "orders", {})
        offset = OffsetCommit("g", "orders", 0, claims[0].generation, 5)
        w.commit([offset], [_dead_letter(1)], run_id, {"n": 1})
        assert w.heartbeat(run_id, {"lag": 1})
        w.finish_run(run_id, "stopped")
        assert w.mark_stale_runs(3600) == 0
        assert w.offsets("g", "orders") == {0: 5}
        assert len(w.all_offsets()) == 1
        assert w.mark_replayed([d.id for d in w.dead_letters()]) == 1
        assert w.dead_letter_counts() == {}
        assert w.purge_dead_letters(datetime.now(UTC) + timedelta(minutes=1)) == 1
        w.add_index_version("orders", 1, f"{unique}-v1", "f")
        w.set_handoff("orders", 1, {0: 3})
        w.set_index_state("orders", 1, "live")
        assert w.try_lock_chunk("c", "F", "orders", {}, "w")
        w.finish_chunk("c", "done", {"n": 1})
        assert w.reset_chunks("orders") == 1
        assert len(w.runs()) == 1
        with psycopg.connect(worker_dsn, autocommit=True, connect_timeout=5) as conn:
            for statement in (
                sql.SQL("DROP TABLE {}").format(sql.Identifier(unique, "runs")),
                sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(unique, "extra")),
                sql.SQL("DELETE FROM {}").format(sql.Identifier(unique, "runs")),
                sql.SQL("TRUNCATE {}").format(sql.Identifier(unique, "partition_offsets")),
                sql.SQL("INSERT INTO {} VALUES (999, 'x', 'x')").format(
                    sql.Identifier(unique, "schema_migrations")
                ),
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        # a pending migration needs the owner: the worker gets a clear ConfigError
        with psycopg.connect(ledger_dsn, autocommit=True, connect_timeout=5) as owner:
            owner.execute(
                sql.SQL("DELETE FROM {} WHERE version = 1").format(
                    sql.Identifier(unique, "schema_migrations")
                )
            )
        with pytest.raises(ConfigError, match=r"001_initial.*schema owner"):
            w.migrate()
    finally:
        w.close()
        with psycopg.connect(ledger_dsn, autocommit=True, connect_timeout=5) as owner:
            owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            owner.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# -- connecting ---------------------------------------------------------------------------


def test_from_settings(ledger_dsn: str, unique: str) -> None:
    settings = LedgerSettings(dsn=SecretStr(ledger_dsn), schema=unique, connect_timeout_s=3)
    with PostgresLedger.from_settings(settings) as led:
        assert led.schema == unique
        assert led.migrate() == ALL_VERSIONS
    _drop_schema(ledger_dsn, unique)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_refused_connection_is_a_one_line_config_error_without_password() -> None:
    dsn = f"postgresql://ingest:hunter2secret@127.0.0.1:{_closed_port()}/ledger"
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        PostgresLedger(dsn, connect_timeout_s=2)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "127.0.0.1" in message
    assert "hunter2secret" not in message
    assert "\n" not in message


def test_silent_server_fails_within_the_connect_timeout() -> None:
    """A server that accepts TCP but never answers is given up on after connect_timeout_s."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accept(): the handshake never gets an answer
        port = listener.getsockname()[1]
        dsn = f"host=127.0.0.1 port={port} user=ingest password=hunter2secret dbname=x"
        started = time.monotonic()
        with pytest.raises(ConfigError) as info:
            PostgresLedger(dsn, connect_timeout_s=2)
        took = time.monotonic() - started
    assert 1.5 <= took < 6
    assert "hunter2secret" not in str(info.value)
    assert f"port={port}" in str(info.value)


# -- failures while running ---------------------------------------------------------------


def test_ledger_survives_its_connections_being_killed(
    open_ledger: Callable[..., PostgresLedger], ledger_dsn: str, unique: str
) -> None:
    """After the server drops every pooled connection, the next call reconnects and works."""
    led = open_ledger(make_conninfo(ledger_dsn, application_name=unique))
    led.migrate()
    led.claim_partitions("g", "orders", [0], "a")
    with psycopg.connect(ledger_dsn, autocommit=True, connect_timeout=5) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (unique,),
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    led.commit([OffsetCommit("g", "orders", 0, 1, 3)])
    assert led.offsets("g", "orders") == {0: 3}


def test_blocked_commit_times_out_as_transient_error(
    open_ledger: Callable[..., PostgresLedger], ledger_dsn: str, unique: str
) -> None:
    """A commit stuck behind a row lock gives up after statement_timeout_s, retryably."""
    led = open_ledger(statement_timeout_s=0.5)
    led.migrate()
    led.claim_partitions("g", "orders", [0], "a")
    with psycopg.connect(ledger_dsn, connect_timeout=5) as blocker:
        blocker.execute(
            sql.SQL("SELECT * FROM {} FOR UPDATE").format(
                sql.Identifier(unique, "partition_offsets")
            )
        )
        started = time.monotonic()
        with pytest.raises(TransientError, match="statement timeout"):
            led.commit([OffsetCommit("g", "orders", 0, 1, 3)])
        assert time.monotonic() - started < 5
        blocker.rollback()
    led.commit([OffsetCommit("g", "orders", 0, 1, 3)])
    assert led.offsets("g", "orders") == {0: 3}
