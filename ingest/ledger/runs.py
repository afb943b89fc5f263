"""Runs: one row per daemon, backfill or reindex process, with heartbeat and counters.

``status`` shows them and a supervisor's restart is visible in them; a run whose heartbeat
stopped is marked failed by :meth:`RunLedger.mark_stale_runs`. Counters arrive two ways:
the flush adds them once per flush mark (inside the flush transaction, see
:meth:`RunLedger._add_counters`), heartbeats and the final status overwrite gauges.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import structlog
from psycopg import sql
from psycopg.types.json import Jsonb

from ingest.ledger.base import Conn, LedgerBase
from ingest.ledger.models import RUN_STATUSES, FlushMark, RunRow, check_counters, scrub_params

log = structlog.get_logger(__name__)

#: What a RunRow shows; bookkeeping columns (flush_marks) stay out of it.
_RUN_COLUMNS = sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(RunRow))

_RUN_KIND = re.compile(r"^[a-z][a-z_-]{0,62}$")


class RunLedger(LedgerBase):
    """The ``runs`` table: start, heartbeat, finish, list, and the flush's counters."""

    def start_run(
        self, kind: str, stream: str | None, params: Mapping[str, Any] | None = None
    ) -> int:
        """Insert a ``running`` run for this host and pid; its id. Secret-like params are masked."""
        if not _RUN_KIND.match(kind):
            raise ValueError(f"invalid run kind {kind!r}")
        query = sql.SQL(
            "INSERT INTO {} (kind, stream, params, host, pid) VALUES (%s, %s, %s, %s, %s)"
            " RETURNING id"
        ).format(self._table("runs"))
        values = (
            kind,
            stream,
            Jsonb(scrub_params(params or {})),
            socket.gethostname(),
            os.getpid(),
        )
        with self._conn("start_run") as conn:
            row = conn.execute(query, values).fetchone()
        assert row is not None
        run_id = int(row[0])
        log.info("ledger_run_started", run_id=run_id, kind=kind, stream=stream)
        return run_id

    def heartbeat(self, run_id: int, counters: Mapping[str, int] | None = None) -> bool:
        """Mark the run alive; ``counters`` overwrite same-named ones (gauges). Called every
        ``runtime.heartbeat_s``. False when the run is no longer ``running`` (marked stale).
        """
        query = sql.SQL(
            "UPDATE {} SET heartbeat_at = now(), counters = counters || %s"
            " WHERE id = %s AND status = 'running'"
        ).format(self._table("runs"))
        with self._conn("heartbeat") as conn:
            cur = conn.execute(query, (Jsonb(check_counters(counters)), run_id))
            return cur.rowcount == 1

    def finish_run(
        self,
        run_id: int,
        status: str,
        error: str | None = None,
        counters: Mapping[str, int] | None = None,
    ) -> None:
        """Close the run with ``status``; ``counters`` overwrite same-named ones."""
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"invalid final run status {status!r}")
        query = sql.SQL(
            "UPDATE {} SET status = %s, error = %s, finished_at = now(), heartbeat_at = now(),"
            " counters = counters || %s WHERE id = %s"
        ).format(self._table("runs"))
        clean_error = None if error is None else self._redact(error)
        with self._conn("finish_run") as conn:
            conn.execute(query, (status, clean_error, Jsonb(check_counters(counters)), run_id))
        log.info("ledger_run_finished", run_id=run_id, status=status)

    def run(self, run_id: int) -> RunRow | None:
        query = sql.SQL("SELECT {} FROM {} WHERE id = %s").format(_RUN_COLUMNS, self._table("runs"))
        with self._conn("run") as conn:
            rows = self._dicts(conn, query, (run_id,))
        return RunRow(**rows[0]) if rows else None

    def runs(
        self,
        kind: str | None = None,
        limit: int = 20,
        *,
        stream: str | None = None,
        status: str | None = None,
    ) -> list[RunRow]:
        """The newest runs first, optionally filtered."""
        where, values = self._filters(kind=kind, stream=stream, status=status)
        query = sql.SQL("SELECT {} FROM {} {} ORDER BY id DESC LIMIT %s").format(
            _RUN_COLUMNS, self._table("runs"), where
        )
        with self._conn("runs") as conn:
            return [RunRow(**row) for row in self._dicts(conn, query, (*values, limit))]

    def mark_stale_runs(self, older_than_s: float) -> int:
        """Mark ``running`` runs without a heartbeat for ``older_than_s`` as failed; how many."""
        query = sql.SQL(
            "UPDATE {} SET status = 'failed', finished_at = now(),"
            " error = coalesce(error, %s)"
            " WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => %s)"
        ).format(self._table("runs"))
        note = f"no heartbeat for {older_than_s:g}s: process gone"
        with self._conn("mark_stale_runs") as conn:
            count = conn.execute(query, (note, float(older_than_s))).rowcount
        if count:
            log.warning("ledger_stale_runs_marked", count=count, older_than_s=older_than_s)
        return count

    def _add_counters(
        self, conn: Conn, run_id: int, counters: dict[str, int], flush: FlushMark | None
    ) -> None:
        """Add ``counters`` to the run inside the caller's flush transaction, once per mark.

        The run's ``flush_marks`` remember each writer's highest flush number, so a commit
        re-sent after a lost reply adds nothing the second time.
        """
        writer, number = flush if flush is not None else ("", 0)
        query = sql.SQL(
            "UPDATE {} AS r SET heartbeat_at = now(), counters = r.counters || coalesce(("
            " SELECT jsonb_object_agg(d.key,"
            "  coalesce((r.counters ->> d.key)::bigint, 0) + d.value::bigint)"
            " FROM jsonb_each_text(%(counters)s::jsonb) AS d), '{{}}'::jsonb),"
            " flush_marks = CASE WHEN %(marked)s"
            "  THEN r.flush_marks || jsonb_build_object(%(writer)s::text, %(number)s::bigint)"
            "  ELSE r.flush_marks END"
            " WHERE r.id = %(run_id)s AND (NOT %(marked)s"
            "  OR coalesce((r.flush_marks ->> %(writer)s)::bigint, -1) < %(number)s)"
        ).format(self._table("runs"))
        params = {
            "counters": Jsonb(counters),
            "marked": flush is not None,
            "writer": writer,
            "number": number,
            "run_id": run_id,
        }
        if conn.execute(query, params).rowcount == 1:
            return
        exists = sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(self._table("runs"))
        if conn.execute(exists, (run_id,)).fetchone() is None:
            log.warning("ledger_run_missing", run_id=run_id)
        else:
            log.info("ledger_flush_already_counted", run_id=run_id, writer=writer, flush=number)
