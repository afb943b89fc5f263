"""Requests in flight commit strictly in submission order, whatever order their writes end in.

The writes here are fakes held by events the test releases, so completion order is chosen by
the test; nothing sleeps.
"""

from __future__ import annotations

import threading

import pytest

from ingest.errors import FencedError, RetriesExhausted
from ingest.pipeline.inflight import (
    AdaptiveLimit,
    CommitOrder,
    FixedLimit,
    InFlight,
    LimitChange,
    Phase,
    limit_for,
)

WAIT_S = 10.0


class Writes:
    """A fake write phase: item ``k`` ends when the test releases it (or at once if free)."""

    def __init__(self, *free: int) -> None:
        self._gates: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.errors: dict[int, BaseException] = {}
        self.started: list[int] = []
        self.ended: list[int] = []
        self.threads: set[str] = set()
        self._ended_cond = threading.Condition()
        for k in free:
            self.gate(k).set()

    def gate(self, k: int) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(k, threading.Event())

    def release(self, *ks: int) -> None:
        for k in ks:
            self.gate(k).set()

    def wait_ended(self, *ks: int) -> None:
        with self._ended_cond:
            assert self._ended_cond.wait_for(lambda: set(ks) <= set(self.ended), WAIT_S)

    def __call__(self, k: int) -> str:
        self.started.append(k)
        self.threads.add(threading.current_thread().name)
        try:
            assert self.gate(k).wait(WAIT_S), f"write {k} was never released"
            if k in self.errors:
                raise self.errors[k]
            return f"written-{k}"
        finally:
            with self._ended_cond:
                self.ended.append(k)
                self._ended_cond.notify_all()


class Commits:
    def __init__(self) -> None:
        self.done: list[int] = []
        self.fail: dict[int, BaseException] = {}

    def __call__(self, k: int, result: str) -> None:
        assert result == f"written-{k}"
        if k in self.fail:
            raise self.fail[k]
        self.done.append(k)


def make(limit: int, writes: Writes, commits: Commits) -> InFlight[int, str]:
    return InFlight(writes, commits, FixedLimit(limit), name="test")


# -- the pure core ---------------------------------------------------------------------------


def test_order_releases_nothing_until_the_oldest_write_ended() -> None:
    """A later batch written first waits for the earlier one; then both come out in order."""
    order: CommitOrder[str] = CommitOrder()
    a, b, c = (order.open(x, 10) for x in "abc")
    order.written(c, "c")
    order.written(b, "b")
    assert order.take_head() is None
    assert order.bytes == 30
    order.written(a, "a")
    assert [order.take_head().item for _ in range(3)] == ["a", "b", "c"]  # type: ignore[union-attr]
    assert order.take_head() is None and order.bytes == 0


def test_order_hands_out_a_failed_head_before_any_later_written_batch() -> None:
    """A failed earlier batch comes out (to be raised) while later written ones stay behind."""
    order: CommitOrder[str] = CommitOrder()
    a, b = order.open("a", 1), order.open("b", 1)
    order.written(b, "b")
    order.failed(a, RetriesExhausted("gave up"))
    head = order.take_head()
    assert head is a and head.phase is Phase.FAILED and isinstance(head.error, RetriesExhausted)
    assert len(order) == 1


def test_order_clear_drops_every_ticket() -> None:
    order: CommitOrder[str] = CommitOrder()
    tickets = [order.open(x, 5) for x in "ab"]
    assert order.clear() == tickets
    assert all(t.dropped for t in tickets) and len(order) == 0 and order.bytes == 0


# -- InFlight ----------------------------------------------------------------------------------


def test_out_of_order_completion_commits_in_submission_order() -> None:
    """Writes ending 3, 2, 4, 1 commit as 1, 2, 3, 4, and none before 1 ended."""
    writes, commits = Writes(), Commits()
    inflight = make(4, writes, commits)
    for k in (1, 2, 3, 4):
        inflight.submit(k, 100)
    assert inflight.count == 4 and inflight.bytes == 400
    writes.release(3, 2, 4)
    writes.wait_ended(2, 3, 4)
    inflight.commit_ready()
    assert commits.done == []
    writes.release(1)
    inflight.drain()
    assert commits.done == [1, 2, 3, 4]
    assert inflight.count == 0 and inflight.bytes == 0
    assert threading.current_thread().name not in writes.threads


def test_a_failed_earlier_batch_raises_and_nothing_after_it_commits() -> None:
    """Batch 2's write gives up: 1 commits, the error surfaces at 2, 3 and 4 never commit."""
    writes, commits = Writes(1, 3, 4), Commits()
    writes.errors[2] = RetriesExhausted("bulk write: retries exhausted")
    inflight = make(4, writes, commits)
    for k in (1, 2, 3, 4):
        inflight.submit(k, 1)
    writes.wait_ended(3, 4)
    writes.release(2)
    with pytest.raises(RetriesExhausted):
        inflight.drain()
    assert commits.done == [1]
    assert inflight.abandon() == [3, 4]
    assert commits.done == [1]


def test_fenced_commit_drops_every_later_batch() -> None:
    """A FencedError on batch 2's commit: the caller abandons, 2, 3 and 4 are never
    committed (abandon hands them back), and abandon returns only once their writes ended."""
    writes, commits = Writes(1, 3), Commits()
    commits.fail[2] = FencedError("generation 7 is stale")
    inflight = make(4, writes, commits)
    for k in (1, 2, 3, 4):
        inflight.submit(k, 1)
    writes.release(2)
    with pytest.raises(FencedError):
        inflight.drain()
    assert commits.done == [1]
    waiter = threading.Thread(target=lambda: dropped.extend(inflight.abandon()))
    dropped: list[int] = []
    waiter.start()
    writes.release(4)
    waiter.join(WAIT_S)
    assert not waiter.is_alive() and dropped == [2, 3, 4]
    assert 4 in writes.ended
    inflight.drain()
    assert commits.done == [1]


def test_revoke_drain_waits_for_every_write_and_commits_all() -> None:
    """drain (revoke, SIGTERM) returns only when every batch in flight is committed."""
    writes, commits = Writes(), Commits()
    inflight = make(3, writes, commits)
    for k in (1, 2, 3):
        inflight.submit(k, 1)
    releaser = threading.Thread(target=writes.release, args=(3, 1, 2))
    releaser.start()
    inflight.drain()
    releaser.join(WAIT_S)
    assert commits.done == [1, 2, 3] and inflight.count == 0


def test_a_full_window_waits_for_the_oldest_batch_before_starting_another() -> None:
    """With 2 in flight, the third submit commits batch 1 first; batch 2 still writes."""
    writes, commits = Writes(1), Commits()
    inflight = make(2, writes, commits)
    inflight.submit(1, 1)
    inflight.submit(2, 1)
    inflight.submit(3, 1)
    assert commits.done == [1]
    assert inflight.count == 2
    writes.release(2, 3)
    inflight.drain()
    assert commits.done == [1, 2, 3]


def test_make_room_commits_until_the_buffer_bound_holds() -> None:
    """In-flight bytes count against the buffer bound: make_room waits for the oldest."""
    writes, commits = Writes(1, 2), Commits()
    inflight = make(4, writes, commits)
    for k in (1, 2, 3):
        inflight.submit(k, 400)
    inflight.make_room(extra_bytes=300, max_bytes=1000)
    assert commits.done == [1, 2]
    assert inflight.bytes == 400
    writes.release(3)
    inflight.drain()


def test_one_in_flight_writes_and_commits_inline() -> None:
    """max_in_flight = 1 is the one-at-a-time flush: no thread, committed before returning;
    a fenced commit leaves its batch to abandon."""
    writes, commits = Writes(1, 2, 3), Commits()
    inflight = make(1, writes, commits)
    inflight.submit(1, 1)
    assert commits.done == [1] and inflight.count == 0
    writes.errors[2] = RetriesExhausted("gave up")
    with pytest.raises(RetriesExhausted):
        inflight.submit(2, 1)
    commits.fail[3] = FencedError("stale")
    with pytest.raises(FencedError):
        inflight.submit(3, 1)
    assert inflight.abandon() == [3]
    assert writes.threads == {threading.current_thread().name}


# -- the adaptive limit ------------------------------------------------------------------------


def feed(limit: AdaptiveLimit, latency_s: float, n: int, **kw: bool) -> None:
    for _ in range(n):
        limit.observe(
            latency_s, backoff=kw.get("backoff", False), saturated=kw.get("saturated", True)
        )


def test_auto_grows_by_one_per_window_while_latency_holds() -> None:
    limit = AdaptiveLimit(maximum=4)
    seen = []
    for _ in range(6):
        feed(limit, 1.0, limit.value)
        seen.append(limit.value)
    assert seen == [2, 3, 4, 4, 4, 4]


def test_auto_does_not_grow_while_the_window_is_not_in_use() -> None:
    limit = AdaptiveLimit(maximum=8)
    feed(limit, 1.0, 5, saturated=False)
    assert limit.value == 1


@pytest.mark.parametrize(
    ("latency_s", "backoff", "expected"),
    [
        pytest.param(1.0, True, 3, id="429-halves"),
        pytest.param(2.2, False, 3, id="latency-doubled-halves"),
        pytest.param(1.8, False, 7, id="latency-within-tolerance-grows"),
    ],
)
def test_auto_halves_on_backoff_or_rising_latency(
    latency_s: float, backoff: bool, expected: int
) -> None:
    changes: list[LimitChange] = []
    limit = AdaptiveLimit(maximum=8, on_change=changes.append)
    while limit.value < 6:
        feed(limit, 1.0, limit.value)
    feed(limit, latency_s, 1 if backoff else limit.value, backoff=backoff)
    assert limit.value == expected
    assert changes[-1].limit == expected


def test_auto_ignores_writes_started_before_a_decrease() -> None:
    """Slow writes started at the old, higher limit do not halve the new limit again."""
    limit = AdaptiveLimit(maximum=8)
    while limit.value < 6:
        feed(limit, 1.0, limit.value)
    before = limit.epoch
    feed(limit, 1.0, 1, backoff=True)
    assert limit.value == 3 and limit.epoch == before + 1
    for _ in range(5):
        limit.observe(5.0, backoff=False, saturated=True, epoch=before)
    assert limit.value == 3
    for _ in range(3):
        limit.observe(1.0, backoff=False, saturated=True, epoch=limit.epoch)
    assert limit.value == 4


def test_auto_never_goes_below_one() -> None:
    limit = AdaptiveLimit(maximum=8)
    feed(limit, 1.0, 3, backoff=True)
    assert limit.value == 1


def test_limit_for_the_setting() -> None:
    assert isinstance(limit_for("auto"), AdaptiveLimit)
    assert limit_for(3).value == 3
    with pytest.raises(ValueError):
        FixedLimit(0)
