"""Progress output: the plain line, when it is printed, rate and time left."""

from __future__ import annotations

import io

from backfill.progress import LineView, NullView, RateMeter, Snapshot, format_line, make_view


def _snap(done: int, read: int, *, failed: int = 0) -> Snapshot:
    return Snapshot(
        chunks_total=4,
        chunks_done=done,
        chunks_failed=failed,
        records_total=1000,
        records_read=read,
        indexed=read - 2,
        dead_lettered=2,
    )


def test_the_plain_line_has_chunks_records_rate_and_eta() -> None:
    line = format_line(_snap(1, 250, failed=1), 50.0, 15.0)
    assert line == (
        "backfill progress: chunks 1/4 (1 failed), records 250/1000, 50 rec/s, eta 15s, "
        "248 indexed, 2 dead-lettered"
    )
    assert "eta ?" in format_line(_snap(0, 0), 0.0, None)


def test_rate_and_eta_come_from_the_first_snapshot() -> None:
    times = iter([10.0, 12.0])
    meter = RateMeter(clock=lambda: next(times))
    assert meter.rate(100) == 0.0
    assert meter.rate(300) == 100.0
    assert RateMeter.eta_s(100.0, 300, 1000) == 7.0
    assert RateMeter.eta_s(0.0, 300, 1000) is None
    assert RateMeter.eta_s(0.0, 1000, 1000) == 0.0


def test_lines_are_printed_every_interval_and_once_more_at_the_end() -> None:
    out = io.StringIO()
    now = [0.0]
    view = LineView(out, every_s=2.5, clock=lambda: now[0])
    for second, read in enumerate((0, 100, 200, 300, 400)):
        now[0] = float(second)
        view.update(_snap(0, read))
    view.close()
    lines = out.getvalue().splitlines()
    assert [line.split("records ")[1].split("/")[0] for line in lines] == ["0", "300", "400"]


def test_close_does_not_repeat_the_last_line() -> None:
    out = io.StringIO()
    view = LineView(out, every_s=60, clock=lambda: 0.0)
    view.update(_snap(4, 1000))
    view.close()
    assert len(out.getvalue().splitlines()) == 1


def test_views_by_mode() -> None:
    assert isinstance(make_view("none"), NullView)
    assert isinstance(make_view("auto", io.StringIO()), LineView)  # not a terminal
    assert isinstance(make_view("lines", io.StringIO()), LineView)


def test_the_bar_shows_chunks_and_records() -> None:
    from rich.console import Console

    from backfill.progress import BarView

    out = io.StringIO()
    view = BarView(Console(file=out, force_terminal=True, width=120))
    view.update(_snap(2, 500, failed=1))
    view.close()
    text = out.getvalue()
    assert "2/4" in text and "500/1000" in text and "1 failed" in text
