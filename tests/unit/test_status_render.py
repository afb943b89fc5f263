"""``ingest status`` rendering and its JSON shape, from hand-built reports (no servers)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from ingest.cli.dlq import hex_dump, parse_ids, parse_when
from ingest.cli.status import age, render_status
from ingest.ops.report import (
    ChunkSummary,
    DeadLetterCount,
    IndexVersionStatus,
    LatencyStatus,
    PartitionStatus,
    ProcessStatus,
    RunOutcome,
    StatusReport,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def _report() -> StatusReport:
    return StatusReport(
        generated_at=NOW,
        ledger_schema="ingest",
        heartbeat_s=5.0,
        partitions=[
            PartitionStatus(
                "orders", "orders", "ingest.orders", 0, 1200, 1500, 300, NOW, "h:1:orders", 3
            ),
            PartitionStatus(
                "orders", "orders", "ingest.orders", 1, 12345678, 12345678, 0, NOW, "h:1:orders", 3
            ),
            PartitionStatus("orders", "orders", "ingest.orders", 2, 90, 10, -80, NOW, None, 1),
            PartitionStatus(
                "orders", "orders", "ingest.orders", 3, None, 7, None, None, None, None
            ),
        ],
        processes=[
            ProcessStatus(
                7, "stream", "orders", "h", 1, NOW, NOW - timedelta(seconds=2), 2.0, False, {}
            ),
            ProcessStatus(
                8,
                "backfill",
                "orders",
                "h",
                2,
                NOW,
                NOW - timedelta(minutes=5),
                300.0,
                True,
                {"indexed": 10},
            ),
        ],
        dead_letters=[DeadLetterCount("orders", "decode", 4)],
        index_versions=[
            IndexVersionStatus("orders", 1, "orders-v1", "retired", NOW, NOW),
            IndexVersionStatus("orders", 2, "orders-v2", "live", NOW, NOW),
        ],
        recent_runs=[
            RunOutcome(9, "reindex", "orders", "failed", NOW, NOW, {}, "mapping conflict"),
        ],
        chunks=[ChunkSummary("orders", "KafkaRangeChunk", 1, 0, 5, 2, NOW, "boom")],
        ingestion_latency=[
            LatencyStatus(
                "orders",
                "live",
                "kafka_timestamp",
                300.0,
                40,
                8000,
                0.412,
                2.75,
                NOW - timedelta(seconds=3),
                3.0,
            )
        ],
        problems=["run 8 (backfill orders on h pid 2) has not sent a heartbeat for 300s"],
    )


def _render(report: StatusReport) -> str:
    buf = io.StringIO()
    render_status(report, Console(file=buf, width=200, color_system=None, highlight=False))
    return buf.getvalue()


def test_partition_numbers_are_right_aligned_in_one_column() -> None:
    """Offsets of different widths end in the same column, so lag can be read at a glance."""
    lines = _render(_report()).splitlines()
    small = next(line for line in lines if " 1,200 " in line)
    big = next(line for line in lines if " 12,345,678 " in line)
    assert small.index("1,200") + len("1,200") == big.index("12,345,678") + len("12,345,678")


def test_stale_process_marked_and_problems_listed() -> None:
    """A process past its heartbeat window shows STALE and the problem is spelled out."""
    text = _render(_report())
    stale_line = next(line for line in text.splitlines() if "backfill" in line and "h:2" in line)
    ok_line = next(line for line in text.splitlines() if "stream" in line and "h:1" in line)
    assert "STALE" in stale_line
    assert "STALE" not in ok_line
    assert "has not sent a heartbeat for 300s" in text
    assert "no problems found" not in text


def test_unknown_values_render_as_dash_and_negative_lag_shows() -> None:
    text = _render(_report())
    part3 = next(line for line in text.splitlines() if "│ 3 " in line or "  3 " in line)
    assert part3.count(" - ") >= 2
    assert "-80" in text


def test_every_section_is_rendered() -> None:
    text = _render(_report())
    for title in (
        "partitions",
        "running processes",
        "dead letters (not replayed)",
        "index versions",
        "recent backfill/reindex/replay runs",
        "backfill chunks",
        "ingestion latency (flushes of the last 5m)",
    ):
        assert title in text
    latency = next(line for line in text.splitlines() if "kafka_timestamp" in line)
    assert "412ms" in latency and "2.8s" in latency and "3s ago" in latency
    assert "orders-v2" in text and "live" in text
    assert "mapping conflict" in text
    assert "KafkaRangeChunk" in text


def test_empty_report_says_so_in_one_line_each() -> None:
    text = _render(StatusReport(generated_at=NOW, ledger_schema="x", heartbeat_s=5))
    assert "processes: none running" in text
    assert "dead letters: none waiting" in text
    assert "ingestion latency: no flush recorded" in text
    assert "no problems found" in text


def test_json_has_stable_keys_and_iso_times() -> None:
    """Scripts rely on these keys; changing them needs a JSON_VERSION bump."""
    data = json.loads(json.dumps(_report().to_json()))
    assert set(data) == {
        "version",
        "generated_at",
        "ledger_schema",
        "heartbeat_s",
        "partitions",
        "processes",
        "dead_letters",
        "index_versions",
        "recent_runs",
        "chunks",
        "ingestion_latency",
        "problems",
    }
    assert data["version"] == 1
    assert data["generated_at"] == "2025-03-01T12:00:00Z"
    assert set(data["partitions"][0]) == {
        "stream",
        "topic",
        "group",
        "partition",
        "next_offset",
        "high_watermark",
        "lag",
        "last_flush",
        "owner",
        "generation",
    }
    assert data["partitions"][3]["next_offset"] is None
    assert set(data["processes"][0]) == {
        "run_id",
        "kind",
        "stream",
        "host",
        "pid",
        "started_at",
        "heartbeat_at",
        "heartbeat_age_s",
        "stale",
        "counters",
    }
    assert data["processes"][1]["stale"] is True
    assert data["dead_letters"] == [{"stream": "orders", "stage": "decode", "count": 4}]
    assert data["chunks"][0]["failed"] == 2
    assert data["ingestion_latency"] == [
        {
            "stream": "orders",
            "path": "live",
            "source": "kafka_timestamp",
            "window_s": 300.0,
            "flushes": 40,
            "records": 8000,
            "p50_s": 0.412,
            "p99_s": 2.75,
            "newest_record_at": "2025-03-01T11:59:57Z",
            "newest_record_age_s": 3.0,
        }
    ]


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (7200, "2h"), (3 * 86400, "3d")],
)
def test_age(seconds: int, expected: str) -> None:
    assert age(NOW - timedelta(seconds=seconds), NOW) == expected


def test_age_unknown_and_future() -> None:
    assert age(None, NOW) == "-"
    assert age(NOW + timedelta(seconds=30), NOW) == "0s"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-31", datetime(2025, 1, 31, tzinfo=UTC)),
        ("2025-01-31T12:30:00Z", datetime(2025, 1, 31, 12, 30, tzinfo=UTC)),
        ("2025-01-31T12:30:00+02:00", datetime(2025, 1, 31, 10, 30, tzinfo=UTC)),
        ("7d", NOW - timedelta(days=7)),
        ("90m", NOW - timedelta(minutes=90)),
    ],
)
def test_parse_when(text: str, expected: datetime) -> None:
    assert parse_when(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "7 days", "-3d", "2025-13-01"])
def test_parse_when_refuses_garbage(text: str) -> None:
    import click

    with pytest.raises(click.BadParameter):
        parse_when(text, now=NOW)


def test_parse_ids() -> None:
    import click

    assert parse_ids(None) is None
    assert parse_ids("3, 1,2") == [3, 1, 2]
    for bad in ("a,b", "", "0", "-1"):
        with pytest.raises(click.BadParameter):
            parse_ids(bad)


def test_hex_dump_layout_and_limit() -> None:
    lines = hex_dump(bytes(range(40)), limit=32)
    assert lines[0].startswith("00000000  00 01 02")
    assert lines[1].startswith("00000010  10 11")
    assert lines[0].endswith("|................|")
    assert lines[-1] == "... 8 more bytes (use --full)"
    assert hex_dump(b"AB\x00", limit=None) == [f"00000000  {'41 42 00':<47}  |AB.|"]


# --------------------------------------------------------------------------- gathering


class _FakeLedger:
    """The ledger's read side with canned rows (the real one is covered in integration)."""

    def __init__(self) -> None:
        from ingest.ledger import ChunkRow, IndexVersionRow, OffsetRow, RunRow

        def run(id_: int, kind: str, status: str, beat_age_s: float, stream: str = "orders"):
            return RunRow(
                id=id_,
                kind=kind,
                stream=stream,
                params={},
                status=status,
                host="h",
                pid=id_,
                started_at=NOW - timedelta(hours=1),
                heartbeat_at=NOW - timedelta(seconds=beat_age_s),
                finished_at=None if status == "running" else NOW,
                counters={"indexed": id_},
                error="boom" if status == "failed" else None,
            )

        self.offsets = [
            OffsetRow("g.orders", "orders-topic", 0, 10, 2, "h:1:orders", NOW),
            OffsetRow("g.orders", "orders-topic", 1, 50, 2, "h:1:orders", NOW),
            OffsetRow("other-group", "orders-topic", 0, 3, 1, "x", NOW),
        ]
        self.run_rows = [
            run(5, "backfill", "failed", 0),
            run(4, "stream", "running", 14.9),
            run(3, "backfill", "running", 15.1),
            run(2, "stream", "stopped", 0),
            run(1, "replay", "succeeded", 0, stream="gone"),
        ]
        self.versions = {
            "orders": [IndexVersionRow("orders", 1, "orders-v1", "fp", "live", NOW, NOW)]
        }
        self.chunk_rows = [
            ChunkRow("a", "Fam", "orders", {}, "done", 1, {}, NOW, NOW, None, None),
            ChunkRow("b", "Fam", "orders", {}, "failed", 2, {}, NOW, NOW, "late err", None),
            ChunkRow("c", "Fam", "orders", {}, "pending", 0, {}, None, None, None, None),
        ]

    def all_offsets(self):  # type: ignore[no-untyped-def]
        return self.offsets

    def runs(self, kind=None, limit=20, *, stream=None, status=None):  # type: ignore[no-untyped-def]
        rows = [r for r in self.run_rows if status is None or r.status == status]
        return rows[:limit]

    def dead_letter_counts(self):  # type: ignore[no-untyped-def]
        return {("orders", "decode"): 2, ("gone", "index"): 1}

    def index_versions(self, alias):  # type: ignore[no-untyped-def]
        return self.versions.get(alias, [])

    def chunks(self, family=None, stream=None):  # type: ignore[no-untyped-def]
        return self.chunk_rows

    def latency_windows(self, window_s, streams=None):  # type: ignore[no-untyped-def]
        from ingest.latency import BUCKETS_S
        from ingest.ledger import LatencyWindow

        counts = [0] * (len(BUCKETS_S) + 1)
        counts[5] = 99  # (0.25, 0.5] s
        counts[9] = 1  # (5, 10] s
        rows = [
            LatencyWindow("orders", "live", "kafka_timestamp", 3, 100, tuple(counts), NOW, NOW),
            LatencyWindow("gone", "live", "kafka_timestamp", 1, 1, tuple(counts), NOW, NOW),
            LatencyWindow(
                "orders", "backfill", "kafka_timestamp", 0, 0, (), NOW - timedelta(hours=2), NOW
            ),
        ]
        return [r for r in rows if streams is None or r.stream in streams]


def _settings():  # type: ignore[no-untyped-def]
    from ingest.settings import parse_settings

    return parse_settings(
        {
            "kafka": {"group_id": "g"},
            "runtime": {"heartbeat_s": 5},
            "streams": [
                {"name": "orders", "topic": "orders-topic", "subject": "orders", "alias": "orders"}
            ],
        }
    )


def test_gather_joins_ledger_and_broker_and_flags_problems() -> None:
    """Lag per partition from both sides; stale runs, negative lag and failed chunks flagged."""
    from ingest.ops.report import gather_status

    report = gather_status(
        _settings(),
        _FakeLedger(),
        ledger_schema="s",
        watermarks=lambda topic: {0: 15, 1: 40, 2: 9},
        now=NOW,
    )
    parts = {p.partition: p for p in report.partitions}
    assert sorted(parts) == [0, 1, 2]
    assert (parts[0].next_offset, parts[0].high_watermark, parts[0].lag) == (10, 15, 5)
    assert parts[1].lag == -10
    assert parts[2].next_offset is None and parts[2].lag is None and parts[2].high_watermark == 9
    assert {p.group for p in report.partitions} == {"g.orders"}
    stale = {p.run_id: p.stale for p in report.processes}
    assert stale == {4: False, 3: True}
    assert [r.run_id for r in report.recent_runs] == [5, 3, 1]
    assert report.chunks[0].failed == 1 and report.chunks[0].last_error == "late err"
    assert [v.index_name for v in report.index_versions] == ["orders-v1"]
    text = " | ".join(report.problems)
    assert "beyond the broker's end" in text
    assert "run 3 " in text
    assert "1 Fam chunk(s) failed" in text
    live, backfill = report.ingestion_latency
    assert (live.path, live.records, live.newest_record_age_s) == ("live", 100, 0)
    assert live.p50_s == pytest.approx(0.25 + 0.25 * 50 / 99, abs=1e-4)  # interpolated
    assert live.p99_s == pytest.approx(0.5)
    assert backfill.p50_s is None and backfill.newest_record_age_s == 7200


def test_gather_without_broker_keeps_ledger_side() -> None:
    """An unreachable broker is one problem line; the ledger's numbers are still shown."""
    from ingest.errors import TransientError
    from ingest.ops.report import gather_status

    calls: list[str] = []

    def broken(topic: str) -> dict[int, int]:
        calls.append(topic)
        raise TransientError("Kafka metadata failed: timed out")

    report = gather_status(
        _settings(), _FakeLedger(), ledger_schema="s", watermarks=broken, now=NOW
    )
    assert calls == ["orders-topic"]
    assert [p.next_offset for p in report.partitions] == [10, 50]
    assert all(p.high_watermark is None and p.lag is None for p in report.partitions)
    assert any("broker high watermarks unavailable" in p for p in report.problems)


def test_gather_filtered_to_streams_drops_other_streams() -> None:
    from ingest.ops.report import gather_status

    settings = _settings()
    report = gather_status(
        settings,
        _FakeLedger(),
        ledger_schema="s",
        watermarks=None,
        streams=list(settings.streams),
        now=NOW,
    )
    assert [d.stream for d in report.dead_letters] == ["orders"]
    assert all(r.stream == "orders" for r in report.recent_runs)
