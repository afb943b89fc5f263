"""A micro-batch: processed records waiting for one flush, and when to flush it.

The batch knows nothing about Kafka or the ledger. It holds the actions and dead letters the
pipeline produced, the highest offset seen per (topic, partition) — every record in the batch
leaves it into the index or the dead-letter store, so after a flush the next offset is that
plus one — and the first offset per partition (the dual-write handoff). Time is passed in so
tests never sleep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.types import DeadLetter, IndexAction, RawRecord


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """Flush on whichever comes first: records, bytes or linger time."""

    max_records: int
    max_bytes: int
    linger_s: float


@dataclass(slots=True)
class Batch:
    """Everything read since the last flush, per partition offsets included."""

    actions: list[IndexAction] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: (topic, partition) -> highest offset added.
    last_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: (topic, partition) -> lowest offset added.
    first_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    records: int = 0
    size_bytes: int = 0
    filtered: int = 0
    #: Records decoded and transformed in Python, not by the native transcoder.
    python_path: int = 0
    opened_at: float | None = None

    def note(self, record: RawRecord, now: float) -> None:
        """Count ``record`` as consumed; whatever became of it, its offset is now covered."""
        if self.opened_at is None:
            self.opened_at = now
        key = (record.topic, record.partition)
        last = self.last_offsets.get(key)
        if last is None or record.offset > last:
            self.last_offsets[key] = record.offset
        first = self.first_offsets.get(key)
        if first is None or record.offset < first:
            self.first_offsets[key] = record.offset
        self.records += 1
        self.size_bytes += record.size_bytes

    def waiting_since(self, since: float) -> None:
        """The records just added were already waiting at ``since`` (fetched while the
        previous batch was being flushed): the linger time counts from then, so a record
        waits at most ``linger_s`` in the ingester, not a whole flush plus ``linger_s``."""
        if self.records and (self.opened_at is None or since < self.opened_at):
            self.opened_at = since

    def held_bytes(self) -> int:
        """Bytes the batch keeps in memory until its commit: the raw records plus the
        documents rendered from them (counted against ``max_buffered_bytes`` in flight)."""
        return self.size_bytes + sum(len(a.body) for a in self.actions if a.body is not None)

    def add_action(self, action: IndexAction) -> None:
        self.actions.append(action)

    def add_dead_letter(self, dead: DeadLetter) -> None:
        self.dead_letters.append(dead)

    def is_empty(self) -> bool:
        return self.records == 0

    def is_due(self, policy: FlushPolicy, now: float) -> bool:
        """True when records, bytes or the linger time reached the policy's limit."""
        if self.records == 0:
            return False
        if self.records >= policy.max_records or self.size_bytes >= policy.max_bytes:
            return True
        return self.opened_at is not None and now - self.opened_at >= policy.linger_s

    def time_left_s(self, policy: FlushPolicy, now: float) -> float:
        """How long until the linger limit; the full linger time for an empty batch."""
        if self.opened_at is None:
            return policy.linger_s
        return max(0.0, policy.linger_s - (now - self.opened_at))

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """The position to read next per partition once this batch is flushed."""
        return {key: offset + 1 for key, offset in self.last_offsets.items()}

    def absorb(self, other: Batch) -> None:
        """Append everything of ``other``, read after this batch (it is left as it was)."""
        self.actions += other.actions
        self.dead_letters += other.dead_letters
        for key, offset in other.last_offsets.items():
            self.last_offsets[key] = max(offset, self.last_offsets.get(key, offset))
        for key, offset in other.first_offsets.items():
            self.first_offsets[key] = min(offset, self.first_offsets.get(key, offset))
        self.records += other.records
        self.size_bytes += other.size_bytes
        self.filtered += other.filtered
        self.python_path += other.python_path
        if other.opened_at is not None:
            self.opened_at = min(other.opened_at, self.opened_at or other.opened_at)

    def drop_partitions(self, partitions: set[tuple[str, int]]) -> None:
        """Forget everything read from ``partitions`` (lost without a chance to flush)."""
        if not partitions:
            return
        self.actions = [
            a for a in self.actions if (a.record.topic, a.record.partition) not in partitions
        ]
        self.dead_letters = [
            d for d in self.dead_letters if (d.record.topic, d.record.partition) not in partitions
        ]
        for key in partitions:
            self.last_offsets.pop(key, None)
            self.first_offsets.pop(key, None)
        if not self.last_offsets:
            self.records = 0
            self.size_bytes = 0
            self.python_path = 0
            self.opened_at = None


def newest_per_document(actions: list[IndexAction]) -> list[IndexAction]:
    """Keep one action per document id: the highest version (the first on a tie).

    Several versions of one document inside a batch would only produce 409s for all but the
    newest; sending just the newest saves bulk work and gives the same index content.
    """
    if len(actions) < 2:
        return actions
    best: dict[str, IndexAction] = {}
    for action in actions:
        current = best.get(action.doc_id)
        # Strictly greater: on a tie the first wins, as external versioning does in the index.
        if current is None or action.version > current.version:
            best[action.doc_id] = action
    if len(best) == len(actions):
        return actions
    return list(best.values())
