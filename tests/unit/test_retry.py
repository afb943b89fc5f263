"""The shared retry policy: what is retried, how long, and what is raised at the end."""

from __future__ import annotations

import time

import pytest

from ingest.errors import RecordError, RetriesExhausted, TransientError
from ingest.retry import RetryEvent, retrying


def test_transient_errors_are_retried_until_success() -> None:
    """A call failing transiently twice succeeds on the third attempt, with two events."""
    calls: list[int] = []
    events: list[RetryEvent] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("busy")
        return "ok"

    policy = retrying(max_total_s=5, initial_s=0.001, max_s=0.002, on_retry=events.append)
    assert policy(flaky) == "ok"
    assert len(calls) == 3
    assert [e.attempt for e in events] == [1, 2]
    assert all(0 <= e.wait_s <= 0.002 for e in events)
    assert events[0].started_at == events[1].started_at


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ValueError("bug"), id="bug"),
        pytest.param(RecordError("bad record"), id="record"),
        pytest.param(RetriesExhausted("nested"), id="fatal"),
    ],
)
def test_other_errors_pass_through_on_the_first_attempt(error: Exception) -> None:
    """Only TransientError is retried: anything else is raised unchanged at once."""
    calls: list[int] = []

    def fails() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)) as info:
        retrying(max_total_s=5, initial_s=0.001)(fails)
    assert info.value is error
    assert len(calls) == 1


def test_budget_bounds_total_time_and_wraps_the_last_error() -> None:
    """When the budget is spent RetriesExhausted is raised from the last transient error."""
    last = TransientError("still down")
    start = time.monotonic()

    def down() -> None:
        raise last

    with pytest.raises(RetriesExhausted) as info:
        retrying(max_total_s=0.05, initial_s=0.002, max_s=0.01, what="ledger write")(down)
    elapsed = time.monotonic() - start
    assert info.value.__cause__ is last
    assert "ledger write" in str(info.value)
    assert "still down" in str(info.value)
    assert elapsed < 0.5, "no sleep may end far past the budget"


def test_waits_grow_exponentially_within_the_cap() -> None:
    """The n-th wait is at most min(max_s, initial_s * 2**(n-1)) (full jitter below it)."""
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)

    attempts = 0

    def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 8:
            raise TransientError("x")

    retrying(max_total_s=60, initial_s=1.0, max_s=4.0, sleep=sleep)(flaky)
    assert len(waits) == 8
    for n, wait in enumerate(waits, start=1):
        assert 0 <= wait <= min(4.0, 1.0 * 2 ** (n - 1))


def test_a_sleep_past_the_budget_is_not_taken() -> None:
    """With a budget shorter than the first possible wait window, a long wait stops early."""
    waits: list[float] = []
    with pytest.raises(RetriesExhausted):
        retrying(max_total_s=0.5, initial_s=100, max_s=100, sleep=waits.append)(_always_transient)
    assert all(w < 0.5 for w in waits)


def _always_transient() -> None:
    raise TransientError("x")


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        retrying(max_total_s=0)
