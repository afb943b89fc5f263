"""Ingestion latency: how long records took from their source clock to an acknowledged write.

A record's latency is the time from its Kafka timestamp (``source="kafka_timestamp"``) — or,
for a stream that sets ``event_time_field``, also from that field of the record
(``source="event_time"``) — to the moment the search server acknowledged the bulk write of
its batch. Every record of a batch shares that moment, so one flush's latencies are
``acked - timestamp`` over the batch's timestamps: sorted once, they fall into histogram
buckets with one binary search per bucket bound. Nothing is allocated per record beyond
the list of timestamps, and the pipeline's per-record path is untouched.

One flush's result is a :class:`LatencySample`: non-cumulative bucket counts over
:data:`BUCKETS_S`, the sum of latencies and the newest record's timestamp. Samples add up
exactly (bucket by bucket), which is why they — not per-flush quantiles — go to the
Prometheus histogram and to the ledger, and why :func:`quantile` can estimate p50/p99 over
any window of flushes the way Prometheus' ``histogram_quantile`` does.

``path`` keeps the live figure clean: ``live`` for the daemon, ``backfill`` for Luigi
chunks and ``replay`` for dead-letter replays, whose records are old by design.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ingest.errors import ConfigError
from ingest.types import IndexAction

#: Upper bounds (seconds) of the latency buckets: 10 ms up to an hour; one more bucket
#: (``+Inf``) holds anything older. Shared by /metrics and the ledger's bucket arrays.
BUCKETS_S: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)

Source = Literal["kafka_timestamp", "event_time"]
IngestPath = Literal["live", "backfill", "replay"]
SOURCES: tuple[Source, ...] = ("kafka_timestamp", "event_time")
PATHS: tuple[IngestPath, ...] = ("live", "backfill", "replay")

#: Bound offsets in milliseconds, precomputed for :func:`summarise`.
_BOUNDS_MS: tuple[int, ...] = tuple(round(b * 1000) for b in BUCKETS_S)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class LatencySample:
    """The latencies of one flush's records from one clock ``source``.

    ``counts[i]`` is how many latencies fell in ``(BUCKETS_S[i-1], BUCKETS_S[i]]`` (the
    first bucket starts at 0, and the last entry, one past the bounds, counts everything
    above an hour). Records stamped in the future (clock skew) count as 0 s.
    """

    source: str
    counts: tuple[int, ...]
    sum_s: float
    #: Unix milliseconds of the newest record's timestamp.
    newest_ms: int

    @property
    def count(self) -> int:
        return sum(self.counts)


def summarise(source: str, timestamps_ms: list[int], acked_ms: int) -> LatencySample | None:
    """Bucket ``acked_ms - t`` for every ``t`` in ``timestamps_ms``; None if none is usable.

    Timestamps ``<= 0`` (a producer that set none) are left out. Sorts ``timestamps_ms`` in
    place: callers pass a list they built for this.
    """
    timestamps_ms.sort()
    start = bisect_right(timestamps_ms, 0)
    n = len(timestamps_ms) - start
    if n <= 0:
        return None
    counts: list[int] = []
    cumulative_prev = 0
    for bound_ms in _BOUNDS_MS:
        # latency <= bound  <=>  t >= acked - bound
        within = len(timestamps_ms) - max(start, bisect_left(timestamps_ms, acked_ms - bound_ms))
        counts.append(within - cumulative_prev)
        cumulative_prev = within
    counts.append(n - cumulative_prev)  # over the last bound
    past = bisect_right(timestamps_ms, acked_ms, lo=start)  # records not in the future
    sum_ms = (past - start) * acked_ms - sum(timestamps_ms[start:past])
    return LatencySample(source, tuple(counts), sum_ms / 1000.0, timestamps_ms[-1])


def add_counts(samples: Iterable[Sequence[int]]) -> list[int]:
    """Bucket-by-bucket sum of several samples' (or ledger rows') counts."""
    total = [0] * (len(BUCKETS_S) + 1)
    for counts in samples:
        for i, c in enumerate(counts):
            total[i] += c
    return total


def quantile(q: float, counts: Sequence[int]) -> float | None:
    """The ``q`` quantile estimated from bucket ``counts``, as ``histogram_quantile`` does.

    Linear interpolation inside the bucket holding the rank (the first bucket starts at 0).
    A rank in the overflow bucket answers the highest bound (3600 s): "an hour or more".
    None when there is nothing counted.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts[: len(BUCKETS_S)]):
        if c and seen + c >= rank:
            lower = BUCKETS_S[i - 1] if i else 0.0
            return lower + (BUCKETS_S[i] - lower) * (rank - seen) / c
        seen += c
    return BUCKETS_S[-1]


class EventTime:
    """Reads a stream's ``event_time_field`` from its index actions, in epoch milliseconds.

    When the field is also the stream's ``version_field`` the action's version already is
    the field in epoch milliseconds, so nothing is read. Otherwise the field is read from
    the document body (one JSON parse per document: a stream pays for it only when it asks
    for a second clock that is not its version). A document without a usable value is
    left out of the event-time figure.
    """

    def __init__(self, field: str, *, from_version: bool) -> None:
        self.field = field
        self.from_version = from_version

    def timestamps_ms(self, actions: Iterable[IndexAction]) -> list[int]:
        if self.from_version:
            return [a.version for a in actions if a.op == "index"]
        out: list[int] = []
        for action in actions:
            if action.op == "index" and action.body is not None:
                ms = _epoch_ms(orjson.loads(action.body).get(self.field))
                if ms is not None:
                    out.append(ms)
        return out


def _epoch_ms(value: Any) -> int | None:
    """A document's timestamp (ISO-8601 string as rendered, or epoch ms) in epoch ms."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return (parsed - _EPOCH) // dt.timedelta(milliseconds=1)
    return None


_TIMESTAMP_TYPES = {"timestamp-millis", "timestamp-micros"}


def event_time_for(
    field: str | None, version_field: str | None, reader_schema: dict[str, Any]
) -> EventTime | None:
    """The stream's event-time reader, checked against its reader schema; None when unset.

    Refuses (ConfigError, at start) a field that is not a top-level timestamp of the
    schema, so a misspelt name cannot silently give an empty figure.
    """
    if field is None:
        return None
    for f in reader_schema.get("fields", []):
        if f.get("name") == field and _is_timestamp(f.get("type")):
            return EventTime(field, from_version=field == version_field)
    raise ConfigError(
        f"event_time_field {field!r} is not a top-level timestamp-millis/-micros field"
        f" of {reader_schema.get('name', 'the schema')}"
    )


def _is_timestamp(schema: Any) -> bool:
    if isinstance(schema, list):
        return any(_is_timestamp(s) for s in schema if s != "null")
    return isinstance(schema, dict) and schema.get("logicalType") in _TIMESTAMP_TYPES


@dataclass(frozen=True, slots=True)
class FlushLatency:
    """One flush's latency samples (one per clock source) and where the flush came from."""

    stream: str
    path: str
    acked_ms: int
    samples: tuple[LatencySample, ...]

    def __bool__(self) -> bool:
        return bool(self.samples)


def measure_flush(
    stream: str,
    path: str,
    actions: Sequence[IndexAction],
    acked_ms: int,
    event_time: EventTime | None,
) -> FlushLatency:
    """The latency samples of a flush whose ``actions`` the server acknowledged at ``acked_ms``."""
    samples = []
    kafka = summarise("kafka_timestamp", [a.record.timestamp_ms for a in actions], acked_ms)
    if kafka is not None:
        samples.append(kafka)
    if event_time is not None:
        event = summarise("event_time", event_time.timestamps_ms(actions), acked_ms)
        if event is not None:
            samples.append(event)
    return FlushLatency(stream, path, acked_ms, tuple(samples))
