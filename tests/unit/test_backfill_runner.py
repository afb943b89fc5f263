"""The backfill summary, run options and the luigid task-history URL (no servers)."""

from __future__ import annotations

import datetime as dt

import pytest

from backfill.history import luigi_cfg_value, sqlalchemy_url
from backfill.runner import (
    BackfillSummary,
    ChunkFailure,
    RunOptions,
    _instant_ms,
    _window,
    _with_workers,
)
from backfill.skew import ChunkCost, SkewPolicy, judge_skew
from ingest.errors import ConfigError


def test_the_summary_names_every_failed_chunk_and_why() -> None:
    summary = BackfillSummary(
        stream="orders",
        kind="kafka",
        run_id=4,
        chunks_total=5,
        chunks_done=3,
        chunks_skipped=1,
        chunks_failed=1,
        records_read=120,
        records_indexed=100,
        records_deleted=4,
        records_dead_lettered=2,
        records_outside_window=18,
        conflicts=7,
        duration_s=3.25,
        failures=[ChunkFailure("KafkaTimeChunk_x", "orders p1 a..b", "RetriesExhausted: boom")],
    )
    assert not summary.ok
    assert summary.render() == [
        "backfill kafka orders: 5 chunks: 3 done, 1 skipped (already done), 1 failed in 3.2s",
        "records: 120 read, 100 indexed, 4 deleted (tombstones), 2 dead-lettered, "
        "18 outside the time window, "
        "7 no-ops (the index already had that version or a newer one)",
        "failed chunks:",
        "  orders p1 a..b [KafkaTimeChunk_x]: RetriesExhausted: boom",
    ]
    assert BackfillSummary(stream="orders", kind="files", run_id=None, chunks_total=0).ok


def test_the_summary_ends_with_the_skewed_and_slowest_chunks() -> None:
    """The chunk-timing lines follow the failures; a summary without a judgement has none."""
    skew = judge_skew(
        [
            ChunkCost("T_a", "orders p0 a..b", 1.0, 100),
            ChunkCost("T_b", "orders p1 a..b", 9.0, 100),
            ChunkCost("T_c", "orders p0 b..c", 1.0, 100),
        ],
        SkewPolicy(min_records=10, top=1),
    )
    summary = BackfillSummary(
        stream="orders", kind="kafka", run_id=4, chunks_total=3, chunks_done=3, skew=skew
    )
    assert summary.render()[2:] == [
        "chunk timing: median 10.00 ms/record over 3 chunks of 10+ records; "
        "skewed = over 3x the median",
        "skewed chunks (1):",
        "  orders p1 a..b: 9.00s, 100 records, 0 bytes, 90.00 ms/record (9.0x the median)"
        " SKEWED [T_b]",
        "slowest chunks (top 1):",
        "  orders p1 a..b: 9.00s, 100 records, 0 bytes, 90.00 ms/record (9.0x the median) SKEWED",
    ]
    assert RunOptions().skew == SkewPolicy()


@pytest.mark.parametrize(
    ("params", "window"),
    [
        ({"partition": "1", "since": "A", "until": "B"}, "A..B"),
        ({"partition": "1", "start_offset": "0", "end_offset": "50"}, "offsets 0..50"),
        ({"path": "/x.avro", "sha256": "ab"}, None),
    ],
)
def test_the_skew_event_names_the_chunk_window(params: dict[str, str], window: str | None) -> None:
    assert _window(params) == window


def test_workers_argument_and_options() -> None:
    assert _with_workers(None, 3).workers == 3
    assert _with_workers(RunOptions(workers=2, force=True), 1) == RunOptions(workers=2, force=True)
    with pytest.raises(ConfigError, match="at least 1"):
        _with_workers(RunOptions(workers=0), 1)


def test_instants_from_strings_and_datetimes() -> None:
    t0 = 1_767_225_600_000
    assert _instant_ms("2026-01-01T00:00:00Z") == t0
    assert _instant_ms(dt.datetime(2026, 1, 1)) == t0  # naive means UTC
    assert _instant_ms(dt.datetime(2026, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))) == t0


@pytest.mark.parametrize(
    ("dsn", "kwargs", "url"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/postgres",
            {"database": "luigi"},
            "postgresql+psycopg://postgres@127.0.0.1:5432/luigi",
        ),
        (
            "postgresql://postgres:pw@/postgres?host=/run/pg",
            {},
            "postgresql+psycopg://postgres@/postgres?host=%2Frun%2Fpg",
        ),
        (
            "host=db.internal port=6432 dbname=ledger user=ingest password=s%cret",
            {"with_password": True},
            "postgresql+psycopg://ingest:s%25cret@db.internal:6432/ledger",
        ),
    ],
)
def test_task_history_url_from_a_ledger_dsn(dsn: str, kwargs: dict, url: str) -> None:
    """Password only on request: luigid reads PGPASSWORD/PGPASSFILE otherwise."""
    assert sqlalchemy_url(dsn, **kwargs) == url


def test_luigi_cfg_values_escape_percent_signs() -> None:
    assert luigi_cfg_value("postgresql+psycopg://u@/d?host=%2Frun") == (
        "postgresql+psycopg://u@/d?host=%%2Frun"
    )
    with pytest.raises(ConfigError, match="invalid ledger DSN"):
        sqlalchemy_url("host='unterminated")
