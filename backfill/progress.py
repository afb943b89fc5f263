"""Progress of a whole backfill in the terminal: a rich bar on a TTY, plain lines otherwise.

Chunks run in other processes (Luigi's workers, maybe other machines), so the numbers come
from where every chunk reports anyway: the ledger. :class:`LedgerProgress` polls the run's
counters (records read and indexed, dead letters — added by every flush in the same
transaction as the writes) and the chunk rows, and hands a :class:`Snapshot` to a view. Each
running chunk also reports to Luigi itself (``set_progress_percentage`` /
``set_status_message``, see :mod:`backfill.tasks`) so luigid's UI shows it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal, Protocol, TextIO

import structlog
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ingest.errors import IngestError
from ingest.ledger import PostgresLedger

log = structlog.get_logger(__name__)

ProgressMode = Literal["auto", "bar", "lines", "none"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where a backfill stands: chunks of this run and records read so far."""

    chunks_total: int
    chunks_done: int
    chunks_failed: int
    records_total: int
    records_read: int
    indexed: int
    dead_lettered: int


class ProgressView(Protocol):
    def update(self, snap: Snapshot) -> None: ...

    def close(self) -> None: ...


class NullView:
    def update(self, snap: Snapshot) -> None:
        return None

    def close(self) -> None:
        return None


class RateMeter:
    """Records per second and time left, from the first snapshot on."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._first: tuple[float, int] | None = None

    def rate(self, read: int) -> float:
        now = self._clock()
        if self._first is None:
            self._first = (now, read)
            return 0.0
        t0, r0 = self._first
        return (read - r0) / (now - t0) if now > t0 else 0.0

    @staticmethod
    def eta_s(rate: float, read: int, total: int) -> float | None:
        if rate <= 0 or total <= read:
            return None if total > read else 0.0
        return (total - read) / rate


def format_line(snap: Snapshot, rate: float, eta_s: float | None) -> str:
    """The plain progress line printed when stderr is not a terminal."""
    eta = "?" if eta_s is None else f"{eta_s:.0f}s"
    failed = f" ({snap.chunks_failed} failed)" if snap.chunks_failed else ""
    return (
        f"backfill progress: chunks {snap.chunks_done}/{snap.chunks_total}{failed}, "
        f"records {snap.records_read}/{snap.records_total}, {rate:.0f} rec/s, eta {eta}, "
        f"{snap.indexed} indexed, {snap.dead_lettered} dead-lettered"
    )


class LineView:
    """One line every ``every_s`` seconds (and a last one on close)."""

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out if out is not None else sys.stderr
        self._every_s = every_s
        self._clock = clock
        self._meter = RateMeter(clock)
        self._last_print: float | None = None
        self._last: Snapshot | None = None
        self._printed: Snapshot | None = None
        self._rate = 0.0

    def update(self, snap: Snapshot) -> None:
        self._rate = self._meter.rate(snap.records_read)
        self._last = snap
        now = self._clock()
        if self._last_print is None or now - self._last_print >= self._every_s:
            self._print()
            self._last_print = now

    def _print(self) -> None:
        if self._last is None or self._last == self._printed:
            return
        snap = self._printed = self._last
        eta = RateMeter.eta_s(self._rate, snap.records_read, snap.records_total)
        print(format_line(snap, self._rate, eta), file=self._out, flush=True)

    def close(self) -> None:
        self._print()


class BarView:
    """Two rich bars, chunks and records, with rate and time left (stderr, TTY only)."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._chunks: TaskID = self._progress.add_task("chunks", total=None, extra="")
        self._records: TaskID = self._progress.add_task("records", total=None, extra="")
        self._meter = RateMeter()
        self._progress.start()

    def update(self, snap: Snapshot) -> None:
        rate = self._meter.rate(snap.records_read)
        failed = f"[red]{snap.chunks_failed} failed[/]" if snap.chunks_failed else ""
        self._progress.update(
            self._chunks, total=snap.chunks_total, completed=snap.chunks_done, extra=failed
        )
        self._progress.update(
            self._records,
            total=max(snap.records_total, snap.records_read),
            completed=snap.records_read,
            extra=f"{rate:,.0f}/s {snap.indexed} indexed {snap.dead_lettered} dead",
        )

    def close(self) -> None:
        self._progress.stop()


def make_view(mode: ProgressMode, out: TextIO | None = None) -> ProgressView:
    """``auto``: a bar when stderr is a terminal, else lines."""
    stream = out if out is not None else sys.stderr
    if mode == "none":
        return NullView()
    if mode == "bar" or (mode == "auto" and stream.isatty()):
        return BarView()
    return LineView(stream)


class LedgerProgress:
    """Polls the ledger every ``poll_s`` on a daemon thread and feeds a view."""

    def __init__(
        self,
        ledger: PostgresLedger,
        view: ProgressView,
        *,
        run_id: int,
        stream: str,
        task_ids: Collection[str],
        records_total: int,
        poll_s: float = 0.5,
    ) -> None:
        self._ledger = ledger
        self._view = view
        self._run_id = run_id
        self._stream = stream
        self._task_ids = frozenset(task_ids)
        self._records_total = records_total
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="backfill-progress", daemon=True)

    def start(self) -> LedgerProgress:
        self._thread.start()
        return self

    def snapshot(self) -> Snapshot:
        run = self._ledger.run(self._run_id)
        counters = run.counters if run is not None else {}
        rows = [r for r in self._ledger.chunks(stream=self._stream) if r.task_id in self._task_ids]
        return Snapshot(
            chunks_total=len(self._task_ids),
            chunks_done=sum(1 for r in rows if r.status == "done"),
            chunks_failed=sum(1 for r in rows if r.status == "failed"),
            records_total=self._records_total,
            records_read=int(counters.get("consumed", 0)) + int(counters.get("skipped", 0)),
            indexed=int(counters.get("indexed", 0)),
            dead_lettered=int(counters.get("dead_lettered", 0)),
        )

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            self._tick()

    def _tick(self) -> None:
        try:
            self._view.update(self.snapshot())
        except IngestError as exc:  # the ledger blinked: progress can wait for the next tick
            log.debug("progress_poll_failed", error=str(exc))

    def stop(self) -> None:
        """Stop polling, show the final numbers and close the view."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._tick()
        self._view.close()
