"""Planning a Kafka backfill: partition x time-window chunks and the offsets each one reads.

A time backfill ``[since, until)`` is cut into windows of ``--chunk`` length; each partition x
window is one chunk, the unit of completion in the ledger. Each chunk reads one bounded
offset range and keeps only the records whose timestamp lies inside its window, so a
record is indexed by exactly one chunk however the offsets were bounded.

Offset bounds come from ``offsets_for_times``: the earliest offset whose timestamp is
``>= T``. That is an exact lower bound for the window start (a record of the window can not
sit below it). For the end it is the usual stop offset (Flink's bounded Kafka source does the
same) but timestamps need not be monotonic, so the stop is looked up at ``end + lateness``:
records up to ``lateness`` out of order are still found. A broker that does not implement the
lookup (tansu answers offset 0 for every timestamp, even far in the future) is detected by
asking for a timestamp in the year 9999; the plan then reads whole partitions up to their end
and relies on the timestamp filter alone — slower, never wrong.

Everything here but :func:`plan_time_chunks` / :func:`plan_offset_chunks` is pure; those take
an :class:`OffsetLookup` (``KafkaRangeReader`` in production, a fake in unit tests).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from ingest.errors import ConfigError

log = structlog.get_logger(__name__)

#: 9999-12-31T23:59:59Z: no real record is stamped this late.
FAR_FUTURE_MS = 253_402_300_799_000
#: A plan with more chunks than this is a typo (``--chunk 1s`` over a year), not a backfill.
MAX_CHUNKS = 20_000

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_instant(text: str) -> int:
    """ISO 8601 date or date-time as epoch milliseconds; no offset means UTC.

    ``2026-01-01``, ``2026-01-01T10:00``, ``2026-01-01T10:00:00.250Z`` and
    ``2026-01-01T12:00:00+02:00`` are all accepted. A ConfigError names the bad value.
    """
    raw = text.strip()
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError(
            f"invalid time {text!r}: use ISO 8601, e.g. 2026-01-01T00:00:00Z"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - _EPOCH) // dt.timedelta(milliseconds=1)


def format_instant(ms: int) -> str:
    """Epoch milliseconds as canonical UTC ISO 8601 (``Z``; milliseconds only when set)."""
    value = _EPOCH + dt.timedelta(milliseconds=ms)
    if ms % 1000:
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``1h``, ``1h30m``, ``2d``, ``500ms`` as milliseconds (> 0 for chunks)."""
    raw = text.strip().lower().replace(" ", "")
    pos = 0
    total = 0.0
    while pos < len(raw):
        m = _DURATION_PART.match(raw, pos)
        if m is None:
            raise ConfigError(f"invalid duration {text!r}: use e.g. 30m, 1h, 1h30m, 1d")
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if not raw:
        raise ConfigError("invalid duration '': use e.g. 30m, 1h, 1d")
    return int(total)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Record timestamps ``start_ms <= ts < end_ms``."""

    start_ms: int
    end_ms: int

    def contains(self, timestamp_ms: int) -> bool:
        return self.start_ms <= timestamp_ms < self.end_ms

    @property
    def since(self) -> str:
        return format_instant(self.start_ms)

    @property
    def until(self) -> str:
        return format_instant(self.end_ms)


def split_windows(
    since_ms: int, until_ms: int, chunk_ms: int, *, max_chunks: int = MAX_CHUNKS
) -> list[TimeWindow]:
    """``[since, until)`` cut into windows of ``chunk_ms`` aligned at ``since``; the last may be
    shorter. ConfigError for an empty range or a plan over ``max_chunks`` windows."""
    if until_ms <= since_ms:
        raise ConfigError(
            f"--until ({format_instant(until_ms)}) must be after --since "
            f"({format_instant(since_ms)})"
        )
    if chunk_ms <= 0:
        raise ConfigError("--chunk must be a positive duration")
    count = -(-(until_ms - since_ms) // chunk_ms)
    if count > max_chunks:
        raise ConfigError(
            f"{count} time windows of {chunk_ms} ms is too many (limit {max_chunks}): "
            "use a larger --chunk"
        )
    return [
        TimeWindow(start, min(until_ms, start + chunk_ms))
        for start in range(since_ms, until_ms, chunk_ms)
    ]


class OffsetLookup(Protocol):
    """What planning needs from the broker (``ingest.kafka.consumer.KafkaRangeReader``)."""

    def partitions(self, topic: str) -> list[int]: ...

    def end_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]: ...

    def offsets_for_times(
        self, topic: str, partitions: Sequence[int], timestamp_ms: int
    ) -> dict[int, int | None]: ...


@dataclass(frozen=True, slots=True)
class KafkaChunkPlan:
    """One chunk: read ``start_offset <= offset < end_offset`` of one partition.

    ``window`` is ``None`` for an offset chunk (a reindex copy), which keeps every record.
    """

    topic: str
    partition: int
    start_offset: int
    end_offset: int
    window: TimeWindow | None = None

    @property
    def size(self) -> int:
        return max(0, self.end_offset - self.start_offset)

    def label(self, stream: str) -> str:
        """How operators see the chunk: ``orders p1 2026-01-01T00:00:00Z..01:00:00Z``."""
        if self.window is None:
            return f"{stream} p{self.partition} offsets {self.start_offset}..{self.end_offset}"
        return f"{stream} p{self.partition} {self.window.since}..{self.window.until}"


def choose_partitions(available: Sequence[int], requested: Sequence[int] | None) -> list[int]:
    """``requested`` (all when ``None``/empty), refusing partitions the topic lacks."""
    if not requested:
        return sorted(available)
    unknown = sorted(set(requested) - set(available))
    if unknown:
        raise ConfigError(f"partitions {unknown} do not exist (the topic has {sorted(available)})")
    return sorted(set(requested))


def parse_partitions(text: str | None) -> list[int] | None:
    """``"0,1, 3"`` -> ``[0, 1, 3]``; ``None``/empty -> ``None`` (all partitions)."""
    if text is None or not text.strip():
        return None
    out: list[int] = []
    for part in text.split(","):
        item = part.strip()
        if not item.isdigit():
            raise ConfigError(f"invalid --partitions {text!r}: use e.g. 0,1,2")
        out.append(int(item))
    return sorted(set(out))


def timestamps_supported(lookup: OffsetLookup, topic: str, ends: Mapping[int, int]) -> bool:
    """False when the broker answers a timestamp lookup with an offset that can not be right.

    No record is stamped in the year 9999, so a broker implementing ListOffsets by timestamp
    answers "none" (or the end) for every non-empty partition; tansu answers 0.
    """
    nonempty = [p for p, end in ends.items() if end > 0]
    if not nonempty:
        return True
    found = lookup.offsets_for_times(topic, nonempty, FAR_FUTURE_MS)
    return all(found.get(p) is None or (found[p] or 0) >= ends[p] for p in nonempty)


def plan_time_chunks(
    lookup: OffsetLookup,
    topic: str,
    partitions: Sequence[int],
    windows: Sequence[TimeWindow],
    *,
    lateness_ms: int = 0,
    ends: Mapping[int, int] | None = None,
) -> list[KafkaChunkPlan]:
    """One chunk per partition x window with the offset range it must read.

    Windows the broker says hold no records of a partition get no chunk, so a long range
    with gaps (``--since 2020-01-01 --chunk 1h``) plans only what has data.

    ``ends`` (each partition's end offset now) is fetched when not given; no chunk reads past
    it, so a backfill covers what the log held when it was planned. Blocks for one end-offset
    fetch and one timestamp lookup per distinct window boundary.
    """
    parts = sorted(partitions)
    if not parts or not windows:
        return []
    end_of = dict(ends) if ends is not None else lookup.end_offsets(topic, parts)
    if not timestamps_supported(lookup, topic, end_of):
        log.warning("broker_ignores_timestamp_lookup", topic=topic, reading="whole partitions")
        return [KafkaChunkPlan(topic, p, 0, end_of[p], w) for w in windows for p in parts]
    bounds = sorted({w.start_ms for w in windows} | {w.end_ms + lateness_ms for w in windows})
    found = {b: lookup.offsets_for_times(topic, parts, b) for b in bounds}
    plans: list[KafkaChunkPlan] = []
    for w in windows:
        for p in parts:
            end = end_of[p]
            start = _bounded(found[w.start_ms].get(p), end)
            stop = max(start, _bounded(found[w.end_ms + lateness_ms].get(p), end))
            if stop > start:  # a window holding no records needs no task
                plans.append(KafkaChunkPlan(topic, p, start, stop, w))
    return plans


def _bounded(offset: int | None, end: int) -> int:
    """A looked-up offset clamped to the partition end; ``None`` (no such record) is the end."""
    return end if offset is None else max(0, min(offset, end))


def plan_offset_chunks(
    topic: str,
    end_offsets: Mapping[int, int],
    *,
    start_offsets: Mapping[int, int] | None = None,
    max_chunk_offsets: int | None = None,
) -> list[KafkaChunkPlan]:
    """Offset chunks ``[start, end)`` per partition (start defaults to 0, the earliest), cut
    into pieces of at most ``max_chunk_offsets`` so several workers can share a partition."""
    if max_chunk_offsets is not None and max_chunk_offsets <= 0:
        raise ValueError("max_chunk_offsets must be positive")
    plans: list[KafkaChunkPlan] = []
    for p in sorted(end_offsets):
        start = (start_offsets or {}).get(p, 0)
        end = end_offsets[p]
        if end <= start:
            continue
        step = max_chunk_offsets or (end - start)
        for lo in range(start, end, step):
            plans.append(KafkaChunkPlan(topic, p, lo, min(end, lo + step)))
    return plans
