"""Backfill chunks: the Luigi tasks' completion, in the ledger rather than in marker files.

A chunk row per task id says whether that partition and time range (or archive file) is
``done``, ``failed`` or ``running``, and once finished what it cost (duration, records, bytes)
and the run's verdict on it (``skewed``: far slower per record than the run's median).
While a chunk runs, a session advisory lock on a dedicated connection (owned by
:class:`~ingest.ledger.base.LedgerBase`, so ``close`` releases it) keeps two backfills over
overlapping ranges from running it at once, without holding a transaction open for the
task's duration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.types.json import Jsonb

from ingest.ledger.base import LedgerBase
from ingest.ledger.migrator import chunk_lock_key
from ingest.ledger.models import (
    CHUNK_STATUSES,
    ChunkRow,
    ChunkSkew,
    ChunkTiming,
    check_counters,
    scrub_params,
)

log = structlog.get_logger(__name__)


class ChunkLedger(LedgerBase):
    """The ``backfill_chunks`` table and the per-chunk advisory locks."""

    def chunk(self, task_id: str) -> ChunkRow | None:
        """The chunk row; a Luigi task is complete when this is ``done``."""
        query = sql.SQL("SELECT * FROM {} WHERE task_id = %s").format(
            self._table("backfill_chunks")
        )
        with self._conn("chunk") as conn:
            rows = self._dicts(conn, query, (task_id,))
        return ChunkRow(**rows[0]) if rows else None

    def chunks(self, family: str | None = None, stream: str | None = None) -> list[ChunkRow]:
        where, values = self._filters(family=family, stream=stream)
        query = sql.SQL("SELECT * FROM {} {} ORDER BY task_id").format(
            self._table("backfill_chunks"), where
        )
        with self._conn("chunks") as conn:
            return [ChunkRow(**row) for row in self._dicts(conn, query, values)]

    def try_lock_chunk(
        self,
        task_id: str,
        family: str,
        stream: str,
        params: Mapping[str, Any],
        owner: str,
    ) -> bool:
        """Take chunk ``task_id`` for this process and mark it ``running``; False if not.

        Called at the start of a Luigi task's ``run()``. The lock is a session advisory lock
        on a dedicated connection, held until :meth:`finish_chunk` or :meth:`release_chunk`
        (or until the process dies and the server drops the connection), so no transaction
        stays open for the task's duration. False means another worker holds the chunk or
        it is already ``done``. Does not wait for the lock.
        """
        with self._chunk_lock:
            if task_id in self._chunk_conns:
                return False
        key = chunk_lock_key(self._schema, task_id)
        upsert = sql.SQL(
            "INSERT INTO {t} AS c (task_id, family, stream, params, status, attempts,"
            " started_at, locked_by) VALUES (%s, %s, %s, %s, 'running', 1, now(), %s)"
            " ON CONFLICT (task_id) DO UPDATE SET status = 'running',"
            " attempts = c.attempts + 1, started_at = now(), finished_at = NULL, error = NULL,"
            " counts = '{{}}'::jsonb, duration_s = NULL, records = NULL, read_bytes = NULL,"
            " run_id = NULL, skew_ratio = NULL, skewed = false,"
            " locked_by = EXCLUDED.locked_by, family = EXCLUDED.family,"
            " stream = EXCLUDED.stream, params = EXCLUDED.params"
        ).format(t=self._table("backfill_chunks"))
        status_q = sql.SQL("SELECT status FROM {} WHERE task_id = %s FOR UPDATE").format(
            self._table("backfill_chunks")
        )
        with self._translate("try_lock_chunk"):
            conn = self._open(psycopg.connect, **self._kwargs)
            try:
                self._configure(conn)
                got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                if not got or not got[0]:
                    conn.close()
                    return False
                with conn.transaction():
                    row = conn.execute(status_q, (task_id,)).fetchone()
                    if row is not None and row[0] == "done":
                        conn.close()
                        return False
                    values = (task_id, family, stream, Jsonb(scrub_params(params)), owner)
                    conn.execute(upsert, values)
            except BaseException:
                conn.close()
                raise
        with self._chunk_lock:
            self._chunk_conns[task_id] = conn
        log.info("ledger_chunk_locked", task_id=task_id, owner=owner)
        return True

    def finish_chunk(
        self,
        task_id: str,
        status: str,
        counts: Mapping[str, int] | None = None,
        error: str | None = None,
        *,
        timing: ChunkTiming | None = None,
        run_id: int | None = None,
    ) -> None:
        """Record the chunk's outcome (``done`` or ``failed``) and release its lock.

        ``timing`` (what the copy cost) and ``run_id`` (the backfill run that ran it) are
        stored with the outcome, so a run's chunks can be compared afterwards.
        """
        if status not in CHUNK_STATUSES or status in {"pending", "running"}:
            raise ValueError(f"invalid final chunk status {status!r}")
        query = sql.SQL(
            "UPDATE {} SET status = %s, counts = %s, error = %s, finished_at = now(),"
            " duration_s = %s, records = %s, read_bytes = %s, run_id = %s"
            " WHERE task_id = %s"
        ).format(self._table("backfill_chunks"))
        values = (
            status,
            Jsonb(check_counters(counts)),
            None if error is None else self._redact(error),
            None if timing is None else timing.duration_s,
            None if timing is None else timing.records,
            None if timing is None else timing.read_bytes,
            run_id,
            task_id,
        )
        with self._chunk_lock:
            held = self._chunk_conns.pop(task_id, None)
        try:
            if held is not None and not held.closed:
                with self._translate("finish_chunk"):
                    held.execute(query, values)
            else:
                with self._conn("finish_chunk") as conn:
                    conn.execute(query, values)
        finally:
            if held is not None:
                held.close()
        log.info("ledger_chunk_finished", task_id=task_id, status=status)

    def record_chunk_skew(self, run_id: int, verdicts: Iterable[ChunkSkew]) -> int:
        """Store a run's verdict on its chunks; how many rows took it.

        Called once by the backfill that ran them, after every chunk finished. Only rows
        still finished by ``run_id`` are touched, so a concurrent re-run of a chunk (which
        clears its timing) is not given this run's verdict.
        """
        query = sql.SQL(
            "UPDATE {} SET skew_ratio = %s, skewed = %s"
            " WHERE task_id = %s AND run_id = %s AND status = 'done'"
        ).format(self._table("backfill_chunks"))
        rows = [(v.ratio, v.skewed, v.task_id, run_id) for v in verdicts]
        if not rows:
            return 0
        updated = 0
        with self._conn("record_chunk_skew") as conn, conn.transaction(), conn.cursor() as cur:
            for row in rows:
                updated += cur.execute(query, row).rowcount
        log.info("ledger_chunk_skew_recorded", run_id=run_id, chunks=updated)
        return updated

    def release_chunk(self, task_id: str) -> None:
        """Drop the chunk lock without recording an outcome (the row stays ``running``)."""
        with self._chunk_lock:
            held = self._chunk_conns.pop(task_id, None)
        if held is not None:
            held.close()

    def reset_chunks(
        self,
        stream: str,
        family: str | None = None,
        *,
        task_ids: Sequence[str] | None = None,
    ) -> int:
        """Force a re-run: ``done``/``failed`` chunks of ``stream`` back to ``pending``; how many.

        ``task_ids`` limits the reset to those chunks (``--force`` over one range). Running
        chunks are left alone (a live worker would overwrite the reset).
        """
        where, values = self._filters(
            (sql.SQL("status IN ('done', 'failed')"), []),
            None if task_ids is None else (sql.SQL("task_id = ANY(%s)"), [list(task_ids)]),
            stream=stream,
            family=family,
        )
        query = sql.SQL(
            "UPDATE {} SET status = 'pending', finished_at = NULL, error = NULL,"
            " skew_ratio = NULL, skewed = false {}"
        ).format(self._table("backfill_chunks"), where)
        with self._conn("reset_chunks") as conn:
            count = conn.execute(query, values).rowcount
        log.info("ledger_chunks_reset", stream=stream, family=family, count=count)
        return count
