"""Plain values that flow between pipeline steps.

Offsets: ``offset`` is a record's own position; ``next_offset`` is the position to read next
(what the ledger and Kafka store as committed). Written down once, here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal


@dataclass(slots=True)
class RawRecord:
    """One record as read from its source, bytes untouched.

    Kafka records use ``topic``/``partition``/``offset``; archive files use
    ``source="file:<sha256>"`` with ``topic`` = path, ``partition`` = 0 and ``offset`` = the
    record's index inside the file.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    source: str = "kafka"

    @property
    def size_bytes(self) -> int:
        return len(self.value or b"") + len(self.key or b"")


@dataclass(slots=True)
class IndexAction:
    """One bulk item: index ``body`` (JSON bytes) or delete, with an external version.

    ``routing`` is the custom ``_routing`` of streams with a routing field (see
    :mod:`ingest.pipeline.routing`); ``None`` routes by ``_id``.
    """

    op: Literal["index", "delete"]
    doc_id: str
    version: int
    body: bytes | None
    record: RawRecord
    routing: str | None = None


@dataclass(slots=True)
class DeadLetter:
    """A record that can not be ingested, with the stage that refused it and why."""

    record: RawRecord
    stage: str
    reason: str
    stream: str


@dataclass(frozen=True, slots=True)
class DeleteMarker:
    """A delete applied to ``doc_id`` behind ``alias`` at external ``version``.

    Kept in the ledger so no later write of an equal or older version re-creates the
    document, long after the search server forgot the delete (``index.gc_deletes``).
    """

    alias: str
    doc_id: str
    version: int
    stream: str


#: ``fast(value, key, offset) -> (doc_id, version, body)`` or None for "take the Python
#: path": the native transcoder, see :mod:`ingest.avro.transcode`.
FastPath = Callable[[bytes, bytes | None, int], tuple[str, int, bytes] | None]
