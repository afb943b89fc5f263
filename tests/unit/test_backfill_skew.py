"""Judging a backfill run's chunks for skew: time per record against the run's median."""

from __future__ import annotations

import pytest

from backfill.skew import (
    ChunkCost,
    SkewPolicy,
    describe_chunk,
    format_rate,
    judge_skew,
    render_report,
)


def _chunk(name: str, duration_s: float, records: int, read_bytes: int = 0) -> ChunkCost:
    return ChunkCost(f"T_{name}", f"orders {name}", duration_s, records, read_bytes)


def _flagged(chunks: list[ChunkCost], policy: SkewPolicy) -> list[str]:
    return [v.chunk.label for v in judge_skew(chunks, policy).skewed]


POLICY = SkewPolicy(factor=3.0, min_records=100)


@pytest.mark.parametrize(
    ("chunks", "flagged"),
    [
        pytest.param(
            [_chunk("a", 1.0, 1000), _chunk("b", 1.1, 1000), _chunk("c", 5.0, 1000)],
            ["orders c"],
            id="one-slow-chunk-among-equals",
        ),
        pytest.param(
            [_chunk("a", 1.0, 1000), _chunk("b", 1.1, 1000), _chunk("c", 2.9, 1000)],
            [],
            id="below-the-factor",
        ),
        pytest.param(
            [_chunk("a", 1.0, 1000), _chunk("b", 1.0, 1000), _chunk("c", 3.0, 1000)],
            [],
            id="exactly-the-factor-is-not-skewed",
        ),
        pytest.param(
            # Per record, not per chunk: c took longest but read ten times as much.
            [_chunk("a", 1.0, 1000), _chunk("b", 1.0, 1000), _chunk("c", 10.0, 10_000)],
            [],
            id="a-big-chunk-is-not-slow",
        ),
        pytest.param(
            # b is small and slow per record (its fixed cost): not judged, not in the median.
            [_chunk("a", 1.0, 1000), _chunk("b", 1.0, 50), _chunk("c", 1.0, 1000)],
            [],
            id="small-chunks-are-not-judged",
        ),
        pytest.param(
            [_chunk("a", 1.0, 1000), _chunk("b", 1.0, 1000)] * 3 + [_chunk("z", 4.0, 1000)],
            ["orders z"],
            id="median-ignores-the-outlier",
        ),
        pytest.param(
            [_chunk("a", 9.0, 1000), _chunk("b", 1.0, 1000)],
            [],
            id="two-chunks-can-not-be-three-times-their-median",
        ),
        pytest.param([_chunk("a", 9.0, 1000)], [], id="a-lone-chunk-is-its-own-median"),
        pytest.param([], [], id="no-chunks"),
        pytest.param(
            [_chunk("a", 0.0, 1000), _chunk("b", 0.0, 1000), _chunk("c", 1.0, 1000)],
            [],
            id="a-zero-median-judges-nothing",
        ),
    ],
)
def test_which_chunks_are_flagged(chunks: list[ChunkCost], flagged: list[str]) -> None:
    assert _flagged(chunks, POLICY) == flagged


def test_flagged_chunks_come_slowest_per_record_first_with_their_ratio() -> None:
    report = judge_skew(
        [
            _chunk("a", 1.0, 1000),
            _chunk("x", 8.0, 1000),
            _chunk("b", 1.0, 1000),
            _chunk("y", 12.0, 1000),
            _chunk("c", 1.0, 1000),
        ],
        POLICY,
    )
    assert report.median_s_per_record == pytest.approx(1e-3)
    assert [(v.chunk.label, v.ratio) for v in report.skewed] == [
        ("orders y", pytest.approx(12.0)),
        ("orders x", pytest.approx(8.0)),
    ]
    assert report.judged == 5


def test_the_factor_and_minimum_are_the_policy() -> None:
    chunks = [_chunk("a", 1.0, 200), _chunk("b", 1.0, 200), _chunk("c", 2.5, 200)]
    assert _flagged(chunks, SkewPolicy(factor=3.0, min_records=100)) == []
    assert _flagged(chunks, SkewPolicy(factor=2.0, min_records=100)) == ["orders c"]
    assert _flagged(chunks, SkewPolicy(factor=2.0, min_records=201)) == []


def test_unjudged_chunks_have_no_ratio_and_the_median_none_when_none_is_big_enough() -> None:
    report = judge_skew([_chunk("a", 1.0, 10), _chunk("b", 0.5, 0)], POLICY)
    assert report.median_s_per_record is None
    assert [(v.ratio, v.skewed) for v in report.verdicts] == [(None, False), (None, False)]


def test_slowest_are_the_top_n_by_duration() -> None:
    chunks = [_chunk(n, d, 1000) for n, d in [("a", 1.0), ("b", 4.0), ("c", 2.0), ("d", 3.0)]]
    report = judge_skew(chunks, SkewPolicy(factor=3.0, min_records=100, top=3))
    assert [v.chunk.label for v in report.slowest] == ["orders b", "orders d", "orders c"]
    assert judge_skew(chunks, SkewPolicy(top=0)).slowest == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"factor": 1.0}, "factor must be above 1"),
        ({"factor": 0.5}, "factor must be above 1"),
        ({"min_records": 0}, "at least 1"),
        ({"top": -1}, "must not be negative"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SkewPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (None, "-"),
        (2.5, "2.50 s/record"),
        (0.0125, "12.50 ms/record"),
        (0.0000251, "25.1 µs/record"),
    ],
)
def test_rates_are_readable(rate: float | None, text: str) -> None:
    assert format_rate(rate) == text


def test_the_report_names_median_skewed_and_slowest_chunks() -> None:
    chunks = [
        ChunkCost("T_a", "orders p0 A..B", 1.0, 1000, 64_000),
        ChunkCost("T_b", "orders p1 A..B", 1.2, 1000, 64_000),
        ChunkCost("T_c", "orders p0 B..C", 6.0, 1000, 64_000),
        ChunkCost("T_d", "orders p1 B..C", 0.4, 10, 640),
    ]
    report = judge_skew(chunks, SkewPolicy(factor=3.0, min_records=100, top=2))
    assert render_report(report) == [
        "chunk timing: median 1.20 ms/record over 3 chunks of 100+ records; "
        "skewed = over 3x the median",
        "skewed chunks (1):",
        "  orders p0 B..C: 6.00s, 1000 records, 64000 bytes, 6.00 ms/record (5.0x the median)"
        " SKEWED [T_c]",
        "slowest chunks (top 2):",
        "  orders p0 B..C: 6.00s, 1000 records, 64000 bytes, 6.00 ms/record (5.0x the median)"
        " SKEWED",
        "  orders p1 A..B: 1.20s, 1000 records, 64000 bytes, 1.20 ms/record (1.0x the median)",
    ]
    [small] = [v for v in report.verdicts if v.chunk.task_id == "T_d"]
    assert describe_chunk(small) == "orders p1 B..C: 0.40s, 10 records, 640 bytes, 40.00 ms/record"
    assert render_report(judge_skew([], POLICY)) == []
    assert render_report(judge_skew([chunks[3]], POLICY))[0] == (
        "chunk timing: no chunk read 100 records or more, none judged for skew"
    )
