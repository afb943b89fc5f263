"""Planning Kafka backfills: times, durations, windows and offset ranges, with a fake broker."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from backfill.kafka_range import (
    FAR_FUTURE_MS,
    KafkaChunkPlan,
    TimeWindow,
    choose_partitions,
    format_instant,
    parse_duration,
    parse_instant,
    parse_partitions,
    plan_offset_chunks,
    plan_time_chunks,
    split_windows,
    timestamps_supported,
)
from ingest.errors import ConfigError

H = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class FakeLookup:
    """A broker holding records with these timestamps per partition (offset = list index).

    ``honest=False`` answers every timestamp lookup with 0, as tansu does.
    """

    def __init__(self, timestamps: dict[int, list[int]], *, honest: bool = True) -> None:
        self.timestamps = timestamps
        self.honest = honest
        self.lookups: list[int] = []

    def partitions(self, topic: str) -> list[int]:
        return sorted(self.timestamps)

    def end_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        return {p: len(self.timestamps[p]) for p in partitions}

    def offsets_for_times(
        self, topic: str, partitions: Sequence[int], timestamp_ms: int
    ) -> dict[int, int | None]:
        self.lookups.append(timestamp_ms)
        if not self.honest:
            return {p: 0 for p in partitions}
        out: dict[int, int | None] = {}
        for p in partitions:
            found = [i for i, ts in enumerate(self.timestamps[p]) if ts >= timestamp_ms]
            out[p] = found[0] if found else None
        return out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2026-01-01", T0, id="date"),
        pytest.param("2026-01-01T00:00:00Z", T0, id="zulu"),
        pytest.param("2026-01-01T01:00:00+01:00", T0, id="offset"),
        pytest.param("2026-01-01T00:00:00.250", T0 + 250, id="naive-is-utc-millis"),
        pytest.param(" 2026-01-01T10:00 ", T0 + 10 * H, id="minutes-and-spaces"),
    ],
)
def test_parse_instant(text: str, expected: int) -> None:
    assert parse_instant(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "", "1767225600"])
def test_parse_instant_refuses_non_iso(text: str) -> None:
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_instant(text)


@pytest.mark.parametrize(
    ("ms", "text"),
    [(T0, "2026-01-01T00:00:00Z"), (T0 + 1_500, "2026-01-01T00:00:01.500Z")],
)
def test_format_instant_is_canonical_and_round_trips(ms: int, text: str) -> None:
    assert format_instant(ms) == text
    assert parse_instant(text) == ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1h", H),
        ("90s", 90_000),
        ("1h30m", 90 * 60_000),
        ("2d", 48 * H),
        ("500ms", 500),
        ("1.5h", 90 * 60_000),
        ("1W", 7 * 24 * H),
    ],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "h", "1y", "1h-5m", "ten minutes"])
def test_parse_duration_refuses_garbage(text: str) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(text)


def test_windows_are_aligned_at_since_and_the_last_is_cut_at_until() -> None:
    windows = split_windows(T0, T0 + 2 * H + 30 * 60_000, H)
    assert windows == [
        TimeWindow(T0, T0 + H),
        TimeWindow(T0 + H, T0 + 2 * H),
        TimeWindow(T0 + 2 * H, T0 + 2 * H + 30 * 60_000),
    ]
    assert windows[0].contains(T0) and not windows[0].contains(T0 + H)
    assert (windows[2].since, windows[2].until) == ("2026-01-01T02:00:00Z", "2026-01-01T02:30:00Z")


@pytest.mark.parametrize(
    ("since", "until", "chunk", "match"),
    [
        (T0, T0, H, "must be after"),
        (T0 + H, T0, H, "must be after"),
        (T0, T0 + H, 0, "positive"),
        (T0, T0 + 1000 * H, 1000, "too many"),
    ],
)
def test_bad_windows_are_refused(since: int, until: int, chunk: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        split_windows(since, until, chunk)


def test_partitions_parsing_and_choice() -> None:
    assert parse_partitions(None) is None
    assert parse_partitions(" ") is None
    assert parse_partitions("2, 0,2") == [0, 2]
    with pytest.raises(ConfigError, match="--partitions"):
        parse_partitions("0,x")
    assert choose_partitions([2, 0, 1], None) == [0, 1, 2]
    assert choose_partitions([0, 1, 2], [1]) == [1]
    with pytest.raises(ConfigError, match=r"\[5\] do not exist"):
        choose_partitions([0, 1], [0, 5])


def test_plan_reads_from_the_window_start_to_the_lookup_past_the_window_end() -> None:
    """An honest broker bounds each chunk; lateness moves the stop offset later."""
    minute = 60_000
    lookup = FakeLookup(
        {
            0: [T0 - minute, T0 + minute, T0 + H - minute, T0 + H + 30_000, T0 + H + 10 * minute],
            1: [],
        }
    )
    windows = split_windows(T0, T0 + 2 * H, H)
    plans = plan_time_chunks(lookup, "t", [0, 1], windows, lateness_ms=minute)
    assert [(p.partition, p.start_offset, p.end_offset) for p in plans] == [
        (0, 1, 4),  # offset 3 (30 s into the next hour) is inside the lateness allowance
        (0, 3, 5),  # nothing at or after 02:01: read to the end
    ]  # the empty partition 1 gets no chunk in either window
    assert FAR_FUTURE_MS in lookup.lookups
    assert plans[0].window == windows[0]
    assert plans[0].label("orders") == "orders p0 2026-01-01T00:00:00Z..2026-01-01T01:00:00Z"


def test_plan_reads_whole_partitions_when_the_broker_ignores_timestamps() -> None:
    lookup = FakeLookup({0: [T0, T0 + H], 1: [T0]}, honest=False)
    assert not timestamps_supported(lookup, "t", {0: 2, 1: 1})
    plans = plan_time_chunks(lookup, "t", [0, 1], split_windows(T0, T0 + 2 * H, H))
    assert {(p.partition, p.start_offset, p.end_offset) for p in plans} == {(0, 0, 2), (1, 0, 1)}
    assert len(plans) == 4


def test_empty_partitions_count_as_supporting_lookups() -> None:
    assert timestamps_supported(FakeLookup({0: []}, honest=False), "t", {0: 0})


def test_offset_chunks_cover_start_to_end_in_pieces() -> None:
    plans = plan_offset_chunks("t", {0: 10, 1: 0, 2: 5}, start_offsets={2: 2}, max_chunk_offsets=4)
    assert [(p.partition, p.start_offset, p.end_offset) for p in plans] == [
        (0, 0, 4),
        (0, 4, 8),
        (0, 8, 10),
        (2, 2, 5),
    ]
    assert all(p.window is None for p in plans)
    assert sum(p.size for p in plans) == 13
    assert plans[0].label("orders") == "orders p0 offsets 0..4"
    with pytest.raises(ValueError, match="positive"):
        plan_offset_chunks("t", {0: 1}, max_chunk_offsets=0)


def test_chunk_plan_size_is_never_negative() -> None:
    assert KafkaChunkPlan("t", 0, 5, 3).size == 0
