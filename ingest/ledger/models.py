"""The values the ledger takes and returns, and how they map to columns.

Rows are frozen dataclasses so callers can hold them without fearing a later query changes
them. The small conversions between Python values and the stored form (Kafka headers as JSON,
handoff offsets keyed by partition, run parameters stripped of secrets) live here, free of
I/O, so they are unit-tested without a database.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ingest.settings import is_secret_key, redact_dsn
from ingest.types import RawRecord

RunStatus = Literal["running", "succeeded", "failed", "stopped"]
IndexState = Literal["building", "live", "retired", "failed", "deleted"]
ChunkStatus = Literal["pending", "running", "done", "failed"]

RUN_STATUSES: frozenset[str] = frozenset({"running", "succeeded", "failed", "stopped"})
INDEX_STATES: frozenset[str] = frozenset({"building", "live", "retired", "failed", "deleted"})
CHUNK_STATUSES: frozenset[str] = frozenset({"pending", "running", "done", "failed"})

#: What replaces a secret-looking value in stored run parameters.
REDACTED = "***"


@dataclass(frozen=True, slots=True)
class PartitionClaim:
    """A partition this owner now holds: commit with ``generation``; seek to ``next_offset``.

    ``next_offset`` is ``None`` when nothing was ever committed for the partition; the caller
    then starts where its reset policy says (earliest for a new group).
    """

    partition: int
    generation: int
    next_offset: int | None


#: ``(writer id, flush number)``: which flush a ledger commit records. A writer numbers its
#: flushes from 1; the run's counters take each number once, so a re-sent commit is harmless.
FlushMark = tuple[str, int]


@dataclass(frozen=True, slots=True)
class OffsetCommit:
    """Move ``group``'s position on one partition to ``next_offset`` (the next to read)."""

    group: str
    topic: str
    partition: int
    generation: int
    next_offset: int


@dataclass(frozen=True, slots=True)
class OffsetRow:
    consumer_group: str
    topic: str
    partition: int
    next_offset: int | None
    generation: int
    owner: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RunRow:
    id: int
    kind: str
    stream: str | None
    params: dict[str, Any]
    status: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    finished_at: datetime | None
    counters: dict[str, Any]
    error: str | None


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A stored dead letter; ``key``/``value``/``headers`` are the record's bytes untouched."""

    id: int
    stream: str
    source: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp_ms: int
    stage: str
    reason: str
    first_seen_at: datetime
    last_seen_at: datetime
    attempts: int
    replayed_at: datetime | None

    def to_raw_record(self) -> RawRecord:
        """The record as it was read, so a replay runs it through the pipeline again."""
        return RawRecord(
            topic=self.topic,
            partition=self.partition,
            offset=self.offset,
            key=self.key,
            value=self.value,
            timestamp_ms=self.timestamp_ms,
            headers=[(name, value or b"") for name, value in self.headers],
            source=self.source,
        )


@dataclass(frozen=True, slots=True)
class IndexVersionRow:
    alias: str
    version: int
    index_name: str
    schema_fingerprint: str
    state: str
    created_at: datetime
    updated_at: datetime
    #: partition -> first offset the streaming daemon wrote to this version.
    handoff: dict[int, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChunkRow:
    task_id: str
    family: str
    stream: str
    params: dict[str, Any]
    status: str
    attempts: int
    counts: dict[str, Any]
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    locked_by: str | None
    #: Set when the chunk finished (see :class:`ChunkTiming`); None before, or for a row
    #: finished without timing (a reindex's lock row).
    duration_s: float | None = None
    records: int | None = None
    read_bytes: int | None = None
    run_id: int | None = None
    #: Time per record over the run's median; None when the run did not judge this chunk.
    skew_ratio: float | None = None
    skewed: bool = False


@dataclass(frozen=True, slots=True)
class ChunkTiming:
    """What a finished chunk cost: the copy's wall time and what it read.

    ``records`` counts every source record read, those outside the chunk's time window too
    (reading them took time); ``read_bytes`` is their raw key + value size. Together they
    let a run compare chunks of different sizes by time per record.
    """

    duration_s: float
    records: int
    read_bytes: int

    def __post_init__(self) -> None:
        if self.duration_s < 0 or self.records < 0 or self.read_bytes < 0:
            raise ValueError(f"chunk timing must not be negative: {self}")


@dataclass(frozen=True, slots=True)
class ChunkSkew:
    """A run's verdict on one of its chunks: time per record over the run's median."""

    task_id: str
    ratio: float | None
    skewed: bool


def encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> list[list[str | None]]:
    """Kafka headers as JSON: ``[[name, base64 value or null], ...]``, order and repeats kept."""
    return [
        [name, None if value is None else base64.b64encode(value).decode("ascii")]
        for name, value in headers
    ]


def decode_headers(stored: Any) -> list[tuple[str, bytes | None]]:
    """Inverse of :func:`encode_headers`; tolerates an empty or missing column."""
    if not stored:
        return []
    return [
        (str(name), None if value is None else base64.b64decode(value)) for name, value in stored
    ]


def decode_handoff(stored: Any) -> dict[int, int]:
    """JSON object keys are strings; partitions are ints everywhere else."""
    if not stored:
        return {}
    return {int(partition): int(offset) for partition, offset in stored.items()}


def encode_handoff(partition_offsets: Mapping[int, int]) -> dict[str, int]:
    """Partition -> offset as a JSON object, refusing negative values early."""
    out: dict[str, int] = {}
    for partition, offset in partition_offsets.items():
        if int(partition) < 0 or int(offset) < 0:
            raise ValueError(f"handoff partition {partition} offset {offset}: must be >= 0")
        out[str(int(partition))] = int(offset)
    return out


def scrub_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` safe to store: secret-looking keys masked, DSN passwords redacted.

    Run parameters are shown by ``status`` and kept for months, so a credential that slipped
    into them (a DSN on a command line, say) must not be written at all.
    """

    def scrub(key: str, value: Any) -> Any:
        if is_secret_key(key):
            return REDACTED
        if isinstance(value, str):
            return redact_dsn(value)
        if isinstance(value, Mapping):
            return {str(k): scrub(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [scrub(key, v) for v in value]
        return value

    return {str(k): scrub(str(k), v) for k, v in params.items()}


def check_counters(counters: Mapping[str, int] | None) -> dict[str, int]:
    """Counters as plain ``str -> int``; bools and floats are refused (they would not add up)."""
    if not counters:
        return {}
    out: dict[str, int] = {}
    for name, value in counters.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"counter {name!r} must be an int, got {type(value).__name__}")
        out[str(name)] = value
    return out
