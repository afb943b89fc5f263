"""Dead letters: records that cannot be indexed, kept once each with their raw bytes.

A dead letter is keyed by (stream, source, topic, partition, offset): storing it again only
bumps ``attempts`` and ``last_seen_at``, so a replayed batch never duplicates one. The flush
stores them in its own transaction (:meth:`DeadLetterLedger._upsert_dead_letters`); the
``dlq`` commands list, show, mark replayed and purge them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog
from psycopg import sql
from psycopg.types.json import Jsonb

from ingest.ledger.base import Conn, LedgerBase
from ingest.ledger.models import DeadLetterRow, decode_headers, encode_headers
from ingest.types import DeadLetter

log = structlog.get_logger(__name__)


class DeadLetterLedger(LedgerBase):
    """The ``dead_letters`` table: idempotent upserts, listing, replay marks and purging."""

    def store_dead_letters(self, dead_letters: Sequence[DeadLetter]) -> None:
        """Upsert ``dead_letters`` in their own transaction (idempotent per record)."""
        if not dead_letters:
            return
        with self._conn("store_dead_letters") as conn, conn.transaction():
            self._upsert_dead_letters(conn, dead_letters)

    def dead_letters(
        self,
        stream: str | None = None,
        *,
        stage: str | None = None,
        since: datetime | None = None,
        ids: Sequence[int] | None = None,
        include_replayed: bool = False,
        limit: int = 100,
    ) -> list[DeadLetterRow]:
        """Dead letters by id; ``since`` compares with ``last_seen_at``."""
        where, values = self._filters(
            None if since is None else (sql.SQL("last_seen_at >= %s"), [since]),
            None if ids is None else (sql.SQL("id = ANY(%s::bigint[])"), [[int(i) for i in ids]]),
            None if include_replayed else (sql.SQL("replayed_at IS NULL"), []),
            stream=stream,
            stage=stage,
        )
        query = sql.SQL("SELECT * FROM {} {} ORDER BY id LIMIT %s").format(
            self._table("dead_letters"), where
        )
        with self._conn("dead_letters") as conn:
            return [_dead_letter_row(r) for r in self._dicts(conn, query, (*values, limit))]

    def dead_letter(self, dead_letter_id: int) -> DeadLetterRow | None:
        query = sql.SQL("SELECT * FROM {} WHERE id = %s").format(self._table("dead_letters"))
        with self._conn("dead_letter") as conn:
            rows = self._dicts(conn, query, (dead_letter_id,))
        return _dead_letter_row(rows[0]) if rows else None

    def mark_replayed(self, ids: Sequence[int]) -> int:
        """Stamp ``replayed_at`` on ``ids``; how many. Call only for records that went through."""
        query = sql.SQL("UPDATE {} SET replayed_at = now() WHERE id = ANY(%s::bigint[])").format(
            self._table("dead_letters")
        )
        with self._conn("mark_replayed") as conn:
            return conn.execute(query, ([int(i) for i in ids],)).rowcount

    def purge_dead_letters(self, before: datetime) -> int:
        """Delete dead letters last seen before ``before``; how many."""
        query = sql.SQL("DELETE FROM {} WHERE last_seen_at < %s").format(
            self._table("dead_letters")
        )
        with self._conn("purge_dead_letters") as conn:
            count = conn.execute(query, (before,)).rowcount
        log.info("ledger_dead_letters_purged", count=count)
        return count

    def dead_letter_counts(self) -> dict[tuple[str, str], int]:
        """Not-yet-replayed dead letters per (stream, stage), for ``status`` and metrics."""
        query = sql.SQL(
            "SELECT stream, stage, count(*) FROM {} WHERE replayed_at IS NULL"
            " GROUP BY stream, stage ORDER BY stream, stage"
        ).format(self._table("dead_letters"))
        with self._conn("dead_letter_counts") as conn:
            return {(s, st): int(n) for s, st, n in conn.execute(query).fetchall()}

    def _upsert_dead_letters(self, conn: Conn, dead_letters: Sequence[DeadLetter]) -> None:
        """Store ``dead_letters`` inside the caller's transaction (the flush's or their own)."""
        if not dead_letters:
            return
        query = sql.SQL(
            'INSERT INTO {} AS d (stream, source, topic, partition, "offset", key, value,'
            " headers, timestamp_ms, stage, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            ' ON CONFLICT (stream, source, topic, partition, "offset") DO UPDATE SET'
            " stage = EXCLUDED.stage, reason = EXCLUDED.reason, last_seen_at = now(),"
            " attempts = d.attempts + 1, replayed_at = NULL"
        ).format(self._table("dead_letters"))
        rows = [
            (
                dl.stream,
                dl.record.source,
                dl.record.topic,
                dl.record.partition,
                dl.record.offset,
                dl.record.key,
                dl.record.value,
                Jsonb(encode_headers(dl.record.headers)),
                dl.record.timestamp_ms,
                dl.stage,
                self._redact(dl.reason),
            )
            for dl in dead_letters
        ]
        with conn.cursor() as cur:
            cur.executemany(query, rows)


def _dead_letter_row(row: Mapping[str, Any]) -> DeadLetterRow:
    data = dict(row)
    data["key"] = None if data["key"] is None else bytes(data["key"])
    data["value"] = None if data["value"] is None else bytes(data["value"])
    data["headers"] = decode_headers(data["headers"])
    return DeadLetterRow(**data)
