"""Writing a batch's actions so the result does not depend on where a batch boundary falls.

A batch may hold several versions of one document. Sending only the newest saves bulk work
(the older ones would only get 409s), but if the index *refuses* the newest (a 400 such as
a mapping error), the older versions must still count: had they arrived in an earlier
batch, the document would hold the newest of them that the index accepts. So
:func:`write_newest_accepted` sends the newest version per ``_id`` first and, for each one
refused, sends the next-newest version of that ``_id`` in a follow-up bulk round of the same
flush, until one is accepted or none is left. Every refused version is returned to be
dead-lettered; a superseded version never sent counts as a conflict (already applied), as
the index would have answered.

Without refusals (the common case) this is one bulk round, as before: the superseded
versions are only grouped when a refusal needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ingest.pipeline.batch import newest_per_document
from ingest.types import IndexAction


class Written(Protocol):
    """What a sink's write reports (:class:`~ingest.search.bulk.SinkResult` is one)."""

    indexed: int
    deleted: int
    conflicts: int
    retries: int
    rejected: list[tuple[IndexAction, str]]


class Sink(Protocol):
    def write(self, actions: Sequence[IndexAction], targets: Sequence[str]) -> Written:
        """Bulk-write; blocks through retries, raises when they run out."""
        ...


@dataclass(slots=True)
class WriteOutcome:
    """The sum of every bulk round of one flush."""

    indexed: int = 0
    deleted: int = 0
    #: 409s plus the superseded versions that were never sent (already applied).
    conflicts: int = 0
    retries: int = 0
    #: Every refused version with the reason, to dead-letter, in the order refused.
    rejected: list[tuple[IndexAction, str]] = field(default_factory=list)
    #: Every action sent, over all rounds (refused ones included).
    sent: list[IndexAction] = field(default_factory=list)
    #: Bulk rounds sent: 1 without refusals that had an older version to fall back to.
    rounds: int = 0


def write_newest_accepted(
    sink: Sink, actions: Sequence[IndexAction], targets: Sequence[str]
) -> WriteOutcome:
    """Write ``actions`` so each document ends at its newest version the index accepts.

    Blocks through the sink's retries and raises whatever the sink raises (then nothing of
    the batch counts as written; re-sending is safe, every write carries its version).
    """
    outcome = WriteOutcome()
    if not actions:
        return outcome
    newest = newest_per_document(list(actions))
    unsent = len(actions) - len(newest)
    outcome.conflicts = unsent
    fallbacks: dict[str, list[IndexAction]] | None = None
    pending = newest
    while pending:
        result = sink.write(pending, targets)
        outcome.sent += pending
        outcome.rounds += 1
        outcome.indexed += result.indexed
        outcome.deleted += result.deleted
        outcome.conflicts += result.conflicts
        outcome.retries += result.retries
        outcome.rejected += result.rejected
        if not result.rejected or unsent == 0:
            break
        if fallbacks is None:
            fallbacks = superseded_versions(actions, newest)
        pending = []
        for refused, _reason in result.rejected:
            older = fallbacks.get(refused.doc_id)
            if older:
                pending.append(older.pop(0))
                unsent -= 1
                outcome.conflicts -= 1  # sent after all: its own answer counts now
    return outcome


def superseded_versions(
    actions: Sequence[IndexAction], chosen: Sequence[IndexAction]
) -> dict[str, list[IndexAction]]:
    """Per ``_id``, the actions not in ``chosen``, newest first (batch order on a tie, the
    order in which the index would take them)."""
    sent = {id(a) for a in chosen}
    older: dict[str, list[tuple[int, int, IndexAction]]] = {}
    for position, action in enumerate(actions):
        if id(action) not in sent:
            older.setdefault(action.doc_id, []).append((-action.version, position, action))
    return {
        doc_id: [a for _v, _p, a in sorted(entries, key=lambda e: (e[0], e[1]))]
        for doc_id, entries in older.items()
    }
