"""Bulk requests in flight, committed strictly in the order they were submitted.

One bulk request at a time caps a stream at one batch per round trip: on a cluster a network
hop away the ingester mostly waits. :class:`InFlight` keeps up to ``limit`` batches writing at
once and still commits them one by one, in submission order::

    submit(k)   the write phase of batch k starts on a writer thread (the sink: bulk requests
                with the sink's own retry budget); the caller goes on reading the next batch
    commit(k)   on the caller's thread, only once k's write ended AND every earlier batch was
                committed: k's ledger transaction (next offsets, dead letters, counters) and
                the Kafka commit never run before k-1's

So the ledger never holds an offset past a batch that is not in the index: a batch written
early waits for a slow earlier one. A batch whose write failed (its retry budget spent, or a
refusal retrying cannot fix) raises when it reaches the head: nothing after it is committed,
and the caller stops. A commit that raises (``FencedError``: another process owns a partition
now) leaves that batch, uncommitted, and the later ones for the caller to
:meth:`InFlight.abandon`. Writes of batches
that are never committed are harmless: every action carries an external version, so the
replay from the ledger's offsets re-sends them as no-ops.

With a fixed limit of 1 nothing runs in the background: write and commit run inline on the
caller's thread within :meth:`InFlight.submit`, which is the one-at-a-time flush exactly.

:class:`CommitOrder` is the bookkeeping alone, without threads (unit-tested with no sleeps);
:class:`AdaptiveLimit` is the optional AIMD controller of the limit (``max_in_flight =
"auto"``), after Vector's adaptive request concurrency.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, Literal, Protocol, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Upper bound of ``max_in_flight = "auto"``: past a handful of concurrent bulk requests per
#: stream a cluster only queues them (Elasticsearch's write thread pool is per node).
AUTO_MAX_IN_FLIGHT = 8


class Phase(Enum):
    WRITING = "writing"
    WRITTEN = "written"
    FAILED = "failed"


@dataclass(eq=False, slots=True)
class Ticket(Generic[T]):
    """One submitted batch: what the caller handed in and how its write ended."""

    seq: int
    item: T
    size_bytes: int
    #: The window was full when this one started (the limit was in use, so growing may help).
    saturated: bool = False
    #: The limit's epoch when this one started (see :class:`AdaptiveLimit`).
    epoch: int = 0
    phase: Phase = Phase.WRITING
    result: Any = None
    error: BaseException | None = None
    #: Dropped by :meth:`CommitOrder.clear`: its write may still run, it is never committed.
    dropped: bool = False


class CommitOrder(Generic[T]):
    """Tickets in submission order; only the oldest, once its write ended, may be taken.

    Pure bookkeeping, no threads and no I/O: :class:`InFlight` drives it under its lock.
    """

    def __init__(self) -> None:
        self._tickets: deque[Ticket[T]] = deque()
        self._next_seq = 0
        #: Bytes of the batches in flight (their records' sizes), for the buffer bound.
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._tickets)

    def __iter__(self) -> Iterator[Ticket[T]]:
        return iter(self._tickets)

    def open(
        self, item: T, size_bytes: int, *, saturated: bool = False, epoch: int = 0
    ) -> Ticket[T]:
        """Register a batch whose write starts now, behind every earlier one."""
        ticket = Ticket(self._next_seq, item, size_bytes, saturated, epoch)
        self._next_seq += 1
        self._tickets.append(ticket)
        self.bytes += size_bytes
        return ticket

    @staticmethod
    def written(ticket: Ticket[T], result: Any) -> None:
        ticket.phase, ticket.result = Phase.WRITTEN, result

    @staticmethod
    def failed(ticket: Ticket[T], error: BaseException) -> None:
        ticket.phase, ticket.error = Phase.FAILED, error

    def head_ended(self) -> bool:
        """True when the oldest batch's write has ended (or nothing is in flight)."""
        return not self._tickets or self._tickets[0].phase is not Phase.WRITING

    def put_back(self, ticket: Ticket[T]) -> None:
        """Return a taken ticket to the head: its commit failed, so it is not committed."""
        self._tickets.appendleft(ticket)
        self.bytes += ticket.size_bytes

    def take_head(self) -> Ticket[T] | None:
        """The oldest ticket once its write ended, removed; ``None`` while it still writes.

        A written ticket is the caller's to commit now; a failed one to raise. Later tickets
        are never returned before it, however early their writes ended.
        """
        if not self._tickets or self._tickets[0].phase is Phase.WRITING:
            return None
        ticket = self._tickets.popleft()
        self.bytes -= ticket.size_bytes
        return ticket

    def clear(self) -> list[Ticket[T]]:
        """Drop every ticket (none will be committed); returns them, writes maybe running."""
        dropped = list(self._tickets)
        for ticket in dropped:
            ticket.dropped = True
        self._tickets.clear()
        self.bytes = 0
        return dropped


class Limit(Protocol):
    """How many batches may be in flight; told how each write went."""

    @property
    def value(self) -> int: ...

    @property
    def epoch(self) -> int: ...

    def observe(self, latency_s: float, *, backoff: bool, saturated: bool, epoch: int = 0) -> None:
        """One write ended after ``latency_s``; ``backoff`` when the server pushed back;
        ``epoch`` is the limit's :attr:`epoch` when the write started."""
        ...


@dataclass(frozen=True, slots=True)
class LimitChange:
    """One move of an adaptive limit, and the latencies that decided it."""

    limit: int
    reason: str
    #: Mean bulk latency of the window that decided (None when every write pushed back).
    mean_s: float | None
    #: The latency the window was compared with.
    baseline_s: float | None


class FixedLimit:
    """``max_in_flight = N``."""

    def __init__(self, value: int) -> None:
        if value < 1:
            raise ValueError("the in-flight limit is at least 1")
        self.value = value
        self.epoch = 0

    def observe(self, latency_s: float, *, backoff: bool, saturated: bool, epoch: int = 0) -> None:
        """A fixed limit learns nothing."""


class AdaptiveLimit:
    """``max_in_flight = "auto"``: additive increase, multiplicative decrease (AIMD).

    Decisions are taken once per window of ``value`` completed writes (about one round trip
    at the current concurrency), on the window's mean latency:

    - the server pushed back (a 429, a 5xx or a timeout retried by the sink): halve;
    - the mean latency rose above ``baseline * (1 + tolerance)``: halve — more requests only
      queue on the server, which adds latency and no throughput;
    - otherwise, if the window was in use (a batch waited for a slot): one more.

    ``baseline`` is the lowest window mean seen, drifting up by ``drift`` of the gap each
    window so that a cluster that became slower for good is accepted as the new normal. The
    default ``tolerance`` of 1.0 halves once latency doubled: a loaded machine's latencies
    swing by a third from one window to the next, and a server a round trip away shows no
    rise at all until it is busy. Each decrease starts a new ``epoch``: writes started
    before it (at the higher concurrency) are not counted against the new limit.
    Latency is per request, so it compares like with like while batches are full (a backlog,
    where concurrency matters); with small lingering batches the limit hardly matters.
    """

    def __init__(
        self,
        maximum: int = AUTO_MAX_IN_FLIGHT,
        *,
        tolerance: float = 1.0,
        drift: float = 0.05,
        on_change: Callable[[LimitChange], None] | None = None,
    ) -> None:
        if maximum < 1:
            raise ValueError("the in-flight maximum is at least 1")
        self.value = 1
        self.maximum = maximum
        self.baseline_s: float | None = None
        self._tolerance = tolerance
        self._drift = drift
        self._on_change = on_change
        self._samples: list[float] = []
        self._backoff = False
        self._saturated = False
        self.epoch = 0

    def observe(self, latency_s: float, *, backoff: bool, saturated: bool, epoch: int = 0) -> None:
        if epoch < self.epoch:
            return
        self._backoff |= backoff
        self._saturated |= saturated
        if not backoff:
            self._samples.append(latency_s)
        if len(self._samples) < self.value and not self._backoff:
            return
        mean = sum(self._samples) / len(self._samples) if self._samples else None
        before, reason, baseline = self.value, "", self.baseline_s
        if self._backoff:
            self.value, reason = max(1, self.value // 2), "backoff"
        elif (
            mean is not None
            and self.baseline_s is not None
            and (mean > self.baseline_s * (1 + self._tolerance))
        ):
            self.value, reason = max(1, self.value // 2), "latency_rose"
        elif self._saturated and self.value < self.maximum:
            self.value, reason = self.value + 1, "latency_held"
        if mean is not None:
            if self.baseline_s is None or mean < self.baseline_s:
                self.baseline_s = mean
            else:
                self.baseline_s += self._drift * (mean - self.baseline_s)
        self._samples, self._backoff, self._saturated = [], False, False
        if self.value < before:
            self.epoch += 1
        if self.value != before and self._on_change is not None:
            self._on_change(LimitChange(self.value, reason, mean, baseline))


def limit_for(
    max_in_flight: int | Literal["auto"], *, on_change: Callable[[LimitChange], None] | None = None
) -> FixedLimit | AdaptiveLimit:
    """The limit a stream's ``max_in_flight`` setting asks for; ``on_change`` hears each move
    of an adaptive one (on a writer thread)."""
    if max_in_flight == "auto":
        return AdaptiveLimit(on_change=on_change)
    return FixedLimit(max_in_flight)


def _never(_result: Any) -> bool:
    return False


class InFlight(Generic[T, R]):
    """Runs ``write`` for up to ``limit`` items at once and ``commit`` for each in order.

    ``write(item)`` runs on a writer thread (daemon threads, started as the limit needs
    them) and must be safe to run concurrently; ``commit(item, result)`` runs on the thread
    calling :meth:`submit`, :meth:`commit_ready`, :meth:`wait_one`, :meth:`make_room` or
    :meth:`drain`, which is where a failed write's error and a commit's own error surface.
    Not for use from several caller threads. ``backoff(result)`` tells an adaptive limit
    that the server pushed back during a write that still succeeded.
    """

    def __init__(
        self,
        write: Callable[[T], R],
        commit: Callable[[T, R], None],
        limit: FixedLimit | AdaptiveLimit,
        *,
        backoff: Callable[[R], bool] = _never,
        name: str = "bulk-writer",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._commit = commit
        self.limiter = limit
        self._backoff = backoff
        self._name = name
        self._clock = clock
        self._inline = isinstance(limit, FixedLimit) and limit.value == 1
        self._order: CommitOrder[T] = CommitOrder()
        self._cond = threading.Condition()
        self._jobs: queue.SimpleQueue[Ticket[T] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        #: Dropped tickets whose writes may still run (waited for by :meth:`abandon`).
        self._orphans: list[Ticket[T]] = []

    # -- state ---------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Batches submitted and not yet committed (or dropped)."""
        return len(self._order)

    @property
    def bytes(self) -> int:
        """Bytes of the batches in flight, for the caller's buffer bound."""
        return self._order.bytes

    @property
    def limit(self) -> int:
        with self._cond:
            return self.limiter.value

    def items(self) -> list[T]:
        """The items in flight, oldest first (e.g. to strip partitions lost meanwhile)."""
        with self._cond:
            return [t.item for t in self._order]

    # -- submitting and committing -----------------------------------------------------------

    def submit(self, item: T, size_bytes: int) -> None:
        """Start writing ``item``; first commits what is ready and waits while the window is
        full. Inline (limit fixed at 1): writes and commits before returning."""
        if self._inline:
            with self._cond:
                ticket = self._order.open(item, size_bytes)
            try:
                result = self._write(item)
            except BaseException as exc:  # noqa: BLE001 - raised by _commit_head below
                CommitOrder.failed(ticket, exc)
            else:
                CommitOrder.written(ticket, result)
            self._commit_head(block=False)
            return
        self.commit_ready()
        while len(self._order) >= self.limit:
            self._commit_head(block=True)
        with self._cond:
            saturated = len(self._order) + 1 >= self.limiter.value
            ticket = self._order.open(
                item, size_bytes, saturated=saturated, epoch=self.limiter.epoch
            )
            if self._idle == 0:
                self._spawn()
            self._idle -= 1
        self._jobs.put(ticket)

    def commit_ready(self) -> None:
        """Commit every batch at the head whose write ended; never waits."""
        while self._commit_head(block=False):
            pass

    def wait_one(self) -> None:
        """Wait for the oldest batch's write and commit it (nothing when none is in flight)."""
        self._commit_head(block=True)

    def make_room(self, extra_bytes: int, max_bytes: int) -> None:
        """Commit the oldest batches until in-flight bytes plus ``extra_bytes`` (the batch
        being filled) are under ``max_bytes``, or nothing is in flight."""
        while len(self._order) and self._order.bytes + extra_bytes >= max_bytes:
            self._commit_head(block=True)

    def drain(self) -> None:
        """Wait for every write and commit every batch, in order (revoke, stop, end)."""
        while len(self._order):
            self._commit_head(block=True)

    def abandon(self, *, wait: bool = True) -> list[T]:
        """Drop every batch in flight uncommitted (fenced, rejoining, failing); returns them.

        With ``wait``, blocks until their writes ended, so a rejoin starts with every writer
        free; the writes' outcomes are ignored.
        """
        with self._cond:
            dropped = self._order.clear()
            self._orphans = [t for t in (*self._orphans, *dropped) if t.phase is Phase.WRITING]
            if wait:
                self._cond.wait_for(self._orphans_ended)
                self._orphans.clear()
        if dropped:
            log.info("in_flight_dropped", batches=len(dropped), writer=self._name)
        return [t.item for t in dropped]

    def close(self) -> None:
        """Drop what is in flight without waiting and let the writer threads end."""
        self.abandon(wait=False)
        for _ in self._threads:
            self._jobs.put(None)
        self._threads.clear()

    def _orphans_ended(self) -> bool:
        return all(t.phase is not Phase.WRITING for t in self._orphans)

    def _commit_head(self, *, block: bool) -> bool:
        with self._cond:
            if block:
                self._cond.wait_for(self._order.head_ended)
            ticket = self._order.take_head()
        if ticket is None:
            return False
        if ticket.error is not None:
            raise ticket.error
        try:
            self._commit(ticket.item, ticket.result)
        except BaseException:
            with self._cond:
                self._order.put_back(ticket)
            raise
        return True

    # -- writer threads -------------------------------------------------------------------

    def _spawn(self) -> None:
        thread = threading.Thread(
            target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        self._idle += 1
        thread.start()

    def _run(self) -> None:
        while True:
            ticket = self._jobs.get()
            if ticket is None:
                return
            started = self._clock()
            try:
                result = self._write(ticket.item)
            except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread, in order
                with self._cond:
                    CommitOrder.failed(ticket, exc)
                    self._idle += 1
                    self._cond.notify_all()
                continue
            took_s = self._clock() - started
            with self._cond:
                CommitOrder.written(ticket, result)
                self.limiter.observe(
                    took_s,
                    backoff=self._backoff(result),
                    saturated=ticket.saturated,
                    epoch=ticket.epoch,
                )
                self._idle += 1
                self._cond.notify_all()
