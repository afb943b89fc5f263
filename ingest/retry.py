"""The one retry policy: exponential backoff with full jitter inside a bounded time budget.

Only :class:`~ingest.errors.TransientError` is retried — every other error passes through on
the first attempt, because retrying a bad record or a bad setting cannot help. When the
budget is spent the last transient error is wrapped in
:class:`~ingest.errors.RetriesExhausted` (a fatal error: the process stops without committing
and a supervisor restarts it), so an outage is never retried forever and never swallowed.

The budget bounds the time from the first attempt to the start of the last one: a sleep that
would end past ``max_total_s`` is not taken. The last attempt may still run for up to one
request timeout.

Used by the bulk sink, the daemon and the backfills, so they all back off the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import structlog
import tenacity

from ingest.errors import RetriesExhausted, TransientError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """One failed attempt that will be retried after ``wait_s`` seconds.

    ``started_at`` is the ``time.monotonic()`` of the first attempt, so a readiness probe can
    report "in retry since" without keeping its own clock.
    """

    attempt: int
    wait_s: float
    elapsed_s: float
    started_at: float
    error: BaseException


#: Called before each backoff sleep; must not block.
OnRetry = Callable[[RetryEvent], None]


def retrying(
    *,
    max_total_s: float,
    initial_s: float = 0.1,
    max_s: float = 5.0,
    on_retry: OnRetry | None = None,
    what: str = "request",
    sleep: Callable[[float], None] = time.sleep,
) -> tenacity.Retrying:
    """A :class:`tenacity.Retrying` that retries only :class:`TransientError`.

    The n-th wait is uniform in ``[0, min(max_s, initial_s * 2**(n-1))]`` ("full jitter"),
    so many clients recovering from the same outage do not retry in lock step. ``what``
    names the operation in the log events and in the :class:`RetriesExhausted` message.

    Use it as ``for attempt in retrying(...): with attempt: do()`` or ``retrying(...)(fn)``.
    """
    if max_total_s <= 0:
        raise ValueError("max_total_s must be positive")

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        assert error is not None  # tenacity only sleeps after a failed attempt
        wait_s = state.upcoming_sleep
        elapsed_s = state.seconds_since_start or 0.0
        log.warning(
            "retrying",
            what=what,
            attempt=state.attempt_number,
            wait_s=round(wait_s, 3),
            elapsed_s=round(elapsed_s, 3),
            error=str(error),
            error_type=type(error).__name__,
        )
        if on_retry is not None:
            on_retry(
                RetryEvent(
                    attempt=state.attempt_number,
                    wait_s=wait_s,
                    elapsed_s=elapsed_s,
                    started_at=state.start_time,
                    error=error,
                )
            )

    def give_up(state: tenacity.RetryCallState) -> NoReturn:
        error = state.outcome.exception() if state.outcome else None
        elapsed_s = state.seconds_since_start or 0.0
        log.error(
            "retries_exhausted",
            what=what,
            attempts=state.attempt_number,
            elapsed_s=round(elapsed_s, 3),
            error=str(error),
        )
        raise RetriesExhausted(
            f"{what}: still failing after {state.attempt_number} attempts "
            f"in {elapsed_s:.1f}s (budget {max_total_s:g}s): {error}"
        ) from error

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientError),
        wait=tenacity.wait_random_exponential(multiplier=initial_s, max=max_s),
        stop=tenacity.stop_before_delay(max_total_s),
        before_sleep=before_sleep,
        retry_error_callback=give_up,
        sleep=sleep,
    )
