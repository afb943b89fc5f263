"""Deleted documents stay deleted: the check every write path shares.

The search server refuses an older external version of a deleted document only while it
keeps the delete's tombstone (``index.gc_deletes``). The ledger keeps every applied delete
as a marker (newest version per alias and id, :mod:`ingest.ledger.deletes`), and before any
write the batch's index actions are checked against those markers — one query per flush for
the batch's ids — and the deletes in the batch itself: a write whose version is not newer
than a delete of its document is superseded, counted as a conflict (what the index would
have answered while it still remembered the delete), never a dead letter.

Every path writes through :class:`~ingest.pipeline.process.BatchWriter` (daemon, Kafka and
file backfills, reindex fills from Kafka or files, dead-letter replay), which calls
:func:`drop_superseded`; the reindex's copy from the old index calls it too. A marker
committed by another process after this check is covered by the server's own tombstone:
live indices keep deletes longer than twice ``runtime.max_retry_s`` (the longest a write
can be retried after its check, plus the longest a delete can wait for its ledger commit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ingest.types import DeleteMarker, IndexAction


class DeleteMarkerBook(Protocol):
    def delete_markers(self, alias: str, doc_ids: Sequence[str]) -> Mapping[str, int]:
        """The newest recorded delete version per id (ids never deleted are absent)."""
        ...


def drop_superseded(
    book: DeleteMarkerBook,
    alias: str,
    actions: Sequence[IndexAction],
    *,
    call: Callable[..., Mapping[str, int]] | None = None,
) -> tuple[list[IndexAction], int]:
    """``(kept, superseded)``: ``actions`` without the index writes a delete supersedes.

    A write is superseded when its version is not newer than the newest delete of its
    document, recorded in ``book`` or present in ``actions``. Deletes are always kept (the
    server orders them against the document). ``call(fn, *args)`` wraps the one ledger
    query (the flush's retry policy); one query whatever the batch size, none when the
    batch writes nothing.
    """
    ids = sorted({a.doc_id for a in actions if a.op == "index"})
    if not ids:
        return list(actions), 0
    found = (
        book.delete_markers(alias, ids) if call is None else call(book.delete_markers, alias, ids)
    )
    markers = dict(found)
    for a in actions:
        if a.op == "delete" and a.version > markers.get(a.doc_id, -1):
            markers[a.doc_id] = a.version
    if not markers:
        return list(actions), 0
    kept = [
        a
        for a in actions
        if a.op == "delete" or a.doc_id not in markers or a.version > markers[a.doc_id]
    ]
    return kept, len(actions) - len(kept)


def applied_deletes(
    stream: str,
    alias: str,
    sent: Sequence[IndexAction],
    rejected: Sequence[tuple[IndexAction, str]],
) -> list[DeleteMarker]:
    """The delete markers a flush records: every delete sent and not refused by the index.

    A delete answered 409 (a newer version is there) is recorded too: its marker only
    refuses writes not newer than the delete, which the index refuses as well.
    """
    refused = {id(action) for action, _reason in rejected}
    return [
        DeleteMarker(alias, a.doc_id, a.version, stream)
        for a in sent
        if a.op == "delete" and id(a) not in refused
    ]
