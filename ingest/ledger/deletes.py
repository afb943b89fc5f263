"""Delete markers: every applied delete, kept so a deleted document stays deleted.

External versions guard a delete only while the search server remembers it
(``index.gc_deletes``); afterwards any write of an older version of the document — a
backfill over an earlier window, an archive file, a replayed dead letter, a bulk request
retried for long — re-creates it. So the flush records each delete it sent, in the same
transaction as its offsets (:meth:`DeleteMarkerLedger._upsert_delete_markers`), and every
write path asks for the markers of its batch's ids in one query before writing
(:meth:`DeleteMarkerLedger.delete_markers`). One row per (alias, document id) holds the
newest delete version. Markers older than ``[ledger] delete_marker_retention_s`` are purged
(:meth:`DeleteMarkerLedger.purge_delete_markers`): after that a write older than the delete
is no longer refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import structlog
from psycopg import sql

from ingest.ledger.base import Conn, LedgerBase
from ingest.types import DeleteMarker

log = structlog.get_logger(__name__)


class DeleteMarkerLedger(LedgerBase):
    """The ``delete_markers`` table: upserts in the flush, lookups per batch, purging by age."""

    def delete_markers(self, alias: str, doc_ids: Sequence[str]) -> dict[str, int]:
        """The newest recorded delete version of each of ``doc_ids`` behind ``alias``.

        Called once per flush, before the sink write, with the batch's ids; ids never
        deleted are absent from the answer. One short read-only query.
        """
        if not doc_ids:
            return {}
        query = sql.SQL(
            "SELECT doc_id, version FROM {} WHERE alias = %s AND doc_id = ANY(%s::text[])"
        ).format(self._table("delete_markers"))
        with self._conn("delete_markers") as conn:
            rows = conn.execute(query, (alias, list(doc_ids))).fetchall()
        return {str(doc_id): int(version) for doc_id, version in rows}

    def record_deletes(self, markers: Sequence[DeleteMarker]) -> None:
        """Upsert ``markers`` in their own transaction (the flush uses its own)."""
        if not markers:
            return
        with self._conn("record_deletes") as conn, conn.transaction():
            self._upsert_delete_markers(conn, markers)

    def purge_delete_markers(self, before: datetime) -> int:
        """Forget deletes applied before ``before``; how many.

        Past this, a write older than such a delete re-creates its document: keep the
        retention longer than any window a backfill or replay may reach back to.
        """
        query = sql.SQL("DELETE FROM {} WHERE applied_at < %s").format(
            self._table("delete_markers")
        )
        with self._conn("purge_delete_markers") as conn:
            count = conn.execute(query, (before,)).rowcount
        log.info("ledger_delete_markers_purged", count=count, before=before.isoformat())
        return count

    def _upsert_delete_markers(self, conn: Conn, markers: Sequence[DeleteMarker]) -> None:
        """Store ``markers`` inside the caller's transaction, keeping the newest version.

        Rows are written in key order, so two flushes deleting the same documents lock them
        in one order and never deadlock.
        """
        newest: dict[tuple[str, str], DeleteMarker] = {}
        for m in markers:
            current = newest.get((m.alias, m.doc_id))
            if current is None or m.version > current.version:
                newest[(m.alias, m.doc_id)] = m
        if not newest:
            return
        query = sql.SQL(
            "INSERT INTO {} AS d (alias, doc_id, version, stream) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (alias, doc_id) DO UPDATE SET version = EXCLUDED.version,"
            " stream = EXCLUDED.stream, applied_at = now() WHERE d.version < EXCLUDED.version"
        ).format(self._table("delete_markers"))
        rows = [(m.alias, m.doc_id, m.version, m.stream) for _, m in sorted(newest.items())]
        with conn.cursor() as cur:
            cur.executemany(query, rows)
