"""The PostgreSQL ledger: the one source of truth shared by the daemon and the backfills.

It owns every durable decision that makes writes idempotent: where each consumer group stands
on each partition (with a generation that fences a stale owner), which records were
dead-lettered, which runs happened, which index versions exist behind an alias and which
backfill chunks are done. Each public method is one short transaction on a pooled connection
in autocommit mode, except :meth:`PostgresLedger.try_lock_chunk`, which keeps a dedicated
connection holding a session advisory lock for as long as the chunk runs.

Every identifier goes through :class:`psycopg.sql.Identifier` (the schema name is
configurable) and every value through a placeholder. Driver errors are translated at this
boundary: connection trouble becomes :class:`~ingest.errors.TransientError` (retry), any other
database error :class:`~ingest.errors.FatalError`, and an unreachable server at start
:class:`~ingest.errors.ConfigError` naming the host but never the password.
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from ingest.errors import ConfigError, FatalError, FencedError, IngestError, TransientError
from ingest.ledger.migrator import (
    apply_migrations,
    chunk_lock_key,
    grant_statements,
    load_migrations,
)
from ingest.ledger.models import (
    CHUNK_STATUSES,
    INDEX_STATES,
    RUN_STATUSES,
    ChunkRow,
    DeadLetterRow,
    FlushMark,
    IndexVersionRow,
    OffsetCommit,
    OffsetRow,
    PartitionClaim,
    RunRow,
    check_counters,
    decode_handoff,
    decode_headers,
    encode_handoff,
    encode_headers,
    scrub_params,
)
from ingest.settings import LedgerSettings, dsn_secret, redact_dsn
from ingest.types import DeadLetter

log = structlog.get_logger(__name__)
#: What a RunRow shows; bookkeeping columns (flush_marks) stay out of it.
_RUN_COLUMNS = sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(RunRow))

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_RUN_KIND = re.compile(r"^[a-z][a-z_-]{0,62}$")

Conn = psycopg.Connection[Any]

#: One extra WHERE condition and the values for its placeholders, for ``_filters``.
Condition = tuple[sql.Composable, Sequence[Any]]


class PostgresLedger:
    """The ledger on one PostgreSQL database and schema; thread-safe.

    Construct it once per process; it connects at once (blocking up to
    ``connect_timeout_s``; libpq never waits less than 2 s per attempt) and raises
    :class:`ConfigError` if the server cannot be reached. Call :meth:`migrate` next. All
    other methods block for one short transaction, bounded by ``statement_timeout_s``.
    """

    def __init__(
        self,
        dsn: str,
        schema: str = "ingest",
        *,
        max_size: int = 4,
        connect_timeout_s: float = 10,
        statement_timeout_s: float = 60,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ConfigError(
                f"invalid ledger schema name {schema!r}: use lowercase letters, digits and _"
            )
        self._dsn = dsn
        self._schema = schema
        self._secret = dsn_secret(dsn)
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_ms = max(1, int(statement_timeout_s * 1000))
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise ConfigError(f"invalid ledger DSN: {self._clean(exc)}") from None
        self._where = _describe(params)
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, math.ceil(connect_timeout_s)),
            "application_name": params.get("application_name") or "ingest-ledger",
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        self._chunk_conns: dict[str, Conn] = {}
        self._chunk_lock = threading.Lock()
        self._probe()
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            dsn,
            kwargs=self._kwargs,
            min_size=1,
            max_size=max(1, max_size),
            open=False,
            configure=self._configure,
            check=ConnectionPool.check_connection,
            timeout=connect_timeout_s,
            name=f"ledger-{schema}",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as exc:
            self._pool.close(timeout=1)
            raise ConfigError(
                f"cannot connect to the ledger database ({self._where}) within "
                f"{connect_timeout_s:g}s"
            ) from exc
        log.info("ledger_connected", where=self._where, schema=schema)

    @classmethod
    def from_settings(cls, settings: LedgerSettings, *, max_size: int = 4) -> Self:
        """The ledger described by ``settings.ledger``; blocks like the constructor."""
        return cls(
            settings.dsn.get_secret_value(),
            settings.schema_name,
            max_size=max_size,
            connect_timeout_s=settings.connect_timeout_s,
        )

    @property
    def schema(self) -> str:
        return self._schema

    def close(self) -> None:
        """Release held chunk locks and close the pool; blocks up to a few seconds."""
        with self._chunk_lock:
            conns = list(self._chunk_conns.values())
            self._chunk_conns.clear()
        for conn in conns:
            conn.close()
        self._pool.close(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- schema -------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply missing migrations; the versions applied now (``[]`` when up to date).

        Called once at start by every process. Blocks while another process migrates the
        same schema. Safe for a role without DDL rights when nothing is missing.
        """
        with self._conn("migrate") as conn:
            return apply_migrations(conn, self._schema, load_migrations())

    def grant_sql(self, role: str) -> list[str]:
        """SQL giving ``role`` only what workers need; run it as the schema owner.

        Pure (no I/O). Run it after :meth:`migrate`, and again after any migration that adds
        a table or sequence: grants cover the objects that exist when they run.
        """
        return [stmt.as_string() for stmt in grant_statements(self._schema, role)]

    # -- offsets ------------------------------------------------------------------------

    def claim_partitions(
        self, group: str, topic: str, partitions: Sequence[int], owner: str
    ) -> dict[int, PartitionClaim]:
        """Take ``partitions`` for ``owner``: bump each generation (insert if new), one txn.

        Called on assignment, before the first fetch; the caller seeks to each claim's
        ``next_offset`` and commits with its ``generation``. Any older owner's next commit
        then raises :class:`FencedError`.
        """
        wanted = sorted({int(p) for p in partitions})
        if not wanted:
            return {}
        query = sql.SQL(
            "INSERT INTO {t} AS po"
            " (consumer_group, topic, partition, next_offset, generation, owner, updated_at)"
            " SELECT %s, %s, p, NULL, 1, %s, now() FROM unnest(%s::integer[]) AS p ORDER BY p"
            " ON CONFLICT (consumer_group, topic, partition) DO UPDATE"
            " SET generation = po.generation + 1, owner = EXCLUDED.owner, updated_at = now()"
            " RETURNING partition, generation, next_offset"
        ).format(t=self._table("partition_offsets"))
        with self._conn("claim_partitions") as conn, conn.transaction():
            rows = conn.execute(query, (group, topic, owner, wanted)).fetchall()
        claims = {int(p): PartitionClaim(int(p), int(g), n) for p, g, n in rows}
        log.info(
            "ledger_partitions_claimed",
            group=group,
            topic=topic,
            owner=owner,
            generations={p: c.generation for p, c in claims.items()},
        )
        return claims

    def commit(
        self,
        offsets: Sequence[OffsetCommit],
        dead_letters: Sequence[DeadLetter] = (),
        run_id: int | None = None,
        counters: Mapping[str, int] | None = None,
        flush: FlushMark | None = None,
    ) -> None:
        """Record one flush atomically: next offsets, dead letters and run counters.

        Called after the sink wrote the batch and before the Kafka commit. Raises
        :class:`FencedError` (and writes nothing) if any partition's stored generation is not
        the one given. ``next_offset`` never moves backwards. Dead letters already stored
        (same stream, source, topic, partition, offset) only get ``attempts``/``last_seen_at``
        bumped. ``counters`` are added to the run's counters, once per ``flush`` mark
        (writer id, flush number): re-sending a commit that landed adds nothing.
        """
        ordered = sorted(offsets, key=lambda c: (c.group, c.topic, c.partition))
        added = check_counters(counters)
        with self._conn("commit") as conn, conn.transaction():
            for c in ordered:
                self._commit_offset(conn, c)
            self._upsert_dead_letters(conn, dead_letters)
            if run_id is not None and added:
                self._add_counters(conn, run_id, added, flush)

    def offsets(self, group: str, topic: str) -> dict[int, int]:
        """Committed next offsets of ``group`` on ``topic``; never-committed partitions left out."""
        query = sql.SQL(
            "SELECT partition, next_offset FROM {} WHERE consumer_group = %s AND topic = %s"
            " AND next_offset IS NOT NULL"
        ).format(self._table("partition_offsets"))
        with self._conn("offsets") as conn:
            return {int(p): int(n) for p, n in conn.execute(query, (group, topic)).fetchall()}

    def all_offsets(self) -> list[OffsetRow]:
        """Every partition row, for ``status``."""
        query = sql.SQL(
            "SELECT consumer_group, topic, partition, next_offset, generation, owner, updated_at"
            " FROM {} ORDER BY consumer_group, topic, partition"
        ).format(self._table("partition_offsets"))
        with self._conn("all_offsets") as conn:
            return [OffsetRow(**row) for row in self._dicts(conn, query)]

    # -- runs ---------------------------------------------------------------------------

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

    # -- dead letters -------------------------------------------------------------------

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

    # -- index versions -----------------------------------------------------------------

    def index_versions(self, alias: str) -> list[IndexVersionRow]:
        query = sql.SQL("SELECT * FROM {} WHERE alias = %s ORDER BY version").format(
            self._table("index_versions")
        )
        with self._conn("index_versions") as conn:
            return [_index_row(r) for r in self._dicts(conn, query, (alias,))]

    def add_index_version(
        self,
        alias: str,
        version: int,
        index_name: str,
        fingerprint: str,
        state: str = "building",
        *,
        details: Mapping[str, Any] | None = None,
    ) -> IndexVersionRow:
        """Record a new physical index; the stored row.

        Idempotent: if ``(alias, version)`` exists, nothing changes and the existing row is
        returned, so the caller compares ``index_name``. Adding a ``live`` version retires the
        previous live one in the same transaction.

        The conflict clause names no constraint: with one (``alias, version``), two processes
        adding the same first version at once could trip the *other* unique constraint
        (``index_name``) and fail instead of finding each other's row.
        """
        _check_state(state)
        insert = sql.SQL(
            "INSERT INTO {} (alias, version, index_name, schema_fingerprint, state, details)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
        ).format(self._table("index_versions"))
        select = sql.SQL("SELECT * FROM {} WHERE alias = %s AND version = %s").format(
            self._table("index_versions")
        )
        with self._conn("add_index_version") as conn, conn.transaction():
            if state == "live":
                self._retire_live(conn, alias, version)
            values = (alias, version, index_name, fingerprint, state, Jsonb(dict(details or {})))
            conn.execute(insert, values)
            rows = self._dicts(conn, select, (alias, version))
        if not rows:
            raise LookupError(
                f"index {index_name!r} is already recorded under another alias or version"
                f" than {alias!r} v{version}"
            )
        return _index_row(rows[0])

    def set_index_state(
        self,
        alias: str,
        version: int,
        state: str,
        details: Mapping[str, Any] | None = None,
    ) -> IndexVersionRow:
        """Move a version to ``state``, merging ``details``; the updated row.

        Going ``live`` retires the previous live version in the same transaction (call it
        right after the alias swap). Raises :class:`LookupError` for an unknown version.
        """
        _check_state(state)
        query = sql.SQL(
            "UPDATE {} SET state = %s, details = details || %s, updated_at = now()"
            " WHERE alias = %s AND version = %s RETURNING *"
        ).format(self._table("index_versions"))
        with self._conn("set_index_state") as conn, conn.transaction():
            if state == "live":
                self._retire_live(conn, alias, version)
            rows = self._dicts(conn, query, (state, Jsonb(dict(details or {})), alias, version))
            if not rows:
                raise LookupError(f"no index version {version} for alias {alias!r}")
        log.info("ledger_index_state", alias=alias, version=version, state=state)
        return _index_row(rows[0])

    def set_handoff(
        self, alias: str, version: int, partition_offsets: Mapping[int, int]
    ) -> dict[int, int]:
        """Merge per-partition first dual-written offsets, keeping the minimum; the result.

        Called by the daemon after its first flush into a building version; repeated calls
        (later flushes, restarts) can only lower a partition's value, never raise it.
        """
        query = sql.SQL(
            "UPDATE {t} AS iv SET updated_at = now(), handoff = ("
            " SELECT coalesce(jsonb_object_agg(m.key, m.low), '{{}}'::jsonb) FROM ("
            "  SELECT key, min(value::bigint) AS low FROM ("
            "   SELECT key, value FROM jsonb_each_text(iv.handoff)"
            "   UNION ALL SELECT key, value FROM jsonb_each_text(%s::jsonb)) AS u"
            "  GROUP BY key) AS m)"
            " WHERE alias = %s AND version = %s RETURNING handoff"
        ).format(t=self._table("index_versions"))
        with self._conn("set_handoff") as conn:
            row = conn.execute(
                query, (Jsonb(encode_handoff(partition_offsets)), alias, version)
            ).fetchone()
        if row is None:
            raise LookupError(f"no index version {version} for alias {alias!r}")
        return decode_handoff(row[0])

    def building_version(self, alias: str) -> IndexVersionRow | None:
        """The newest ``building`` version of ``alias``, polled by the daemon to dual-write."""
        return self._one_version(alias, "building")

    def live_version(self, alias: str) -> IndexVersionRow | None:
        return self._one_version(alias, "live")

    # -- backfill chunks ----------------------------------------------------------------

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
            " counts = '{{}}'::jsonb, locked_by = EXCLUDED.locked_by, family = EXCLUDED.family,"
            " stream = EXCLUDED.stream, params = EXCLUDED.params"
        ).format(t=self._table("backfill_chunks"))
        status_q = sql.SQL("SELECT status FROM {} WHERE task_id = %s FOR UPDATE").format(
            self._table("backfill_chunks")
        )
        with self._translate("try_lock_chunk"):
            conn = psycopg.connect(self._dsn, **self._kwargs)
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
    ) -> None:
        """Record the chunk's outcome (``done`` or ``failed``) and release its lock."""
        if status not in CHUNK_STATUSES or status in {"pending", "running"}:
            raise ValueError(f"invalid final chunk status {status!r}")
        query = sql.SQL(
            "UPDATE {} SET status = %s, counts = %s, error = %s, finished_at = now()"
            " WHERE task_id = %s"
        ).format(self._table("backfill_chunks"))
        values = (
            status,
            Jsonb(check_counters(counts)),
            None if error is None else self._redact(error),
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
            "UPDATE {} SET status = 'pending', finished_at = NULL, error = NULL {}"
        ).format(self._table("backfill_chunks"), where)
        with self._conn("reset_chunks") as conn:
            count = conn.execute(query, values).rowcount
        log.info("ledger_chunks_reset", stream=stream, family=family, count=count)
        return count

    # -- internals ----------------------------------------------------------------------

    def _table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self._schema, name)

    def _configure(self, conn: Conn) -> None:
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false)",
            (f"{self._statement_timeout_ms}ms",),
        )

    def _probe(self) -> None:
        """One direct connection, so an unreachable server fails fast with a useful line."""
        try:
            with psycopg.connect(self._dsn, **self._kwargs):
                pass
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot connect to the ledger database ({self._where}) within "
                f"{self._connect_timeout_s:g}s: {self._clean(exc)}"
            ) from None

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except IngestError:
            raise
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise TransientError(f"ledger {action} failed: {self._clean(exc)}") from exc
        except psycopg.Error as exc:
            raise FatalError(f"ledger {action} failed: {self._clean(exc)}") from exc

    @contextmanager
    def _conn(self, action: str) -> Iterator[Conn]:
        with self._translate(action), self._pool.connection() as conn:
            yield conn

    def _clean(self, exc: BaseException) -> str:
        """The error's text on one line, without the DSN password."""
        return self._redact(" ".join(str(exc).split()) or type(exc).__name__)

    def _redact(self, text: str) -> str:
        text = redact_dsn(text)
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    @staticmethod
    def _dicts(conn: Conn, query: sql.Composed, values: Sequence[Any] = ()) -> list[DictRow]:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, values)
            return cur.fetchall()

    @staticmethod
    def _filters(
        *conditions: Condition | None, **equal: str | None
    ) -> tuple[sql.Composable, list[Any]]:
        """The WHERE clause of every query with optional filters, and its values in order.

        ``column = value`` for each ``equal`` value that is not None, then each condition
        that is not None, all ANDed; ``WHERE true`` when nothing filters. Conditions carry
        their own values because they need operators or casts other than ``=``.
        """
        clauses: list[sql.Composable] = [
            sql.SQL("{} = %s").format(sql.Identifier(k)) for k, v in equal.items() if v is not None
        ]
        values: list[Any] = [v for v in equal.values() if v is not None]
        for condition in conditions:
            if condition is not None:
                clause, condition_values = condition
                clauses.append(clause)
                values.extend(condition_values)
        if not clauses:
            return sql.SQL("WHERE true"), []
        return sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses), values

    def _commit_offset(self, conn: Conn, c: OffsetCommit) -> None:
        if c.next_offset < 0:
            raise ValueError(
                f"next_offset {c.next_offset} for {c.topic}[{c.partition}] is negative"
            )
        update = sql.SQL(
            "UPDATE {} SET next_offset = GREATEST(next_offset, %s), updated_at = now()"
            " WHERE consumer_group = %s AND topic = %s AND partition = %s AND generation = %s"
            " RETURNING next_offset"
        ).format(self._table("partition_offsets"))
        row = conn.execute(
            update, (c.next_offset, c.group, c.topic, c.partition, c.generation)
        ).fetchone()
        if row is not None:
            if row[0] != c.next_offset:
                log.warning(
                    "ledger_offset_not_moved_back",
                    group=c.group,
                    topic=c.topic,
                    partition=c.partition,
                    stored=row[0],
                    given=c.next_offset,
                )
            return
        held_q = sql.SQL(
            "SELECT generation, owner FROM {}"
            " WHERE consumer_group = %s AND topic = %s AND partition = %s"
        ).format(self._table("partition_offsets"))
        held = conn.execute(held_q, (c.group, c.topic, c.partition)).fetchone()
        holder = "nobody (never claimed)" if held is None else f"generation {held[0]} ({held[1]})"
        log.error(
            "ledger_fenced", group=c.group, topic=c.topic, partition=c.partition, ours=c.generation
        )
        raise FencedError(
            f"partition {c.topic}[{c.partition}] of group {c.group!r} is held by {holder}, "
            f"this process has generation {c.generation}"
        )

    def _upsert_dead_letters(self, conn: Conn, dead_letters: Sequence[DeadLetter]) -> None:
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

    def _add_counters(
        self, conn: Conn, run_id: int, counters: dict[str, int], flush: FlushMark | None
    ) -> None:
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

    def _retire_live(self, conn: Conn, alias: str, version: int) -> None:
        query = sql.SQL(
            "UPDATE {} SET state = 'retired', updated_at = now()"
            " WHERE alias = %s AND state = 'live' AND version <> %s"
        ).format(self._table("index_versions"))
        conn.execute(query, (alias, version))

    def _one_version(self, alias: str, state: str) -> IndexVersionRow | None:
        query = sql.SQL(
            "SELECT * FROM {} WHERE alias = %s AND state = %s ORDER BY version DESC LIMIT 1"
        ).format(self._table("index_versions"))
        with self._conn("index_version") as conn:
            rows = self._dicts(conn, query, (alias, state))
        return _index_row(rows[0]) if rows else None


def _describe(params: Mapping[str, Any]) -> str:
    """Where the DSN points, without credentials: ``host=... port=... dbname=...``."""
    host = params.get("host") or params.get("hostaddr") or "default socket"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or "default"
    return f"host={host} port={port} dbname={dbname}"


def _check_state(state: str) -> None:
    if state not in INDEX_STATES:
        raise ValueError(f"invalid index state {state!r}")


def _dead_letter_row(row: Mapping[str, Any]) -> DeadLetterRow:
    data = dict(row)
    data["key"] = None if data["key"] is None else bytes(data["key"])
    data["value"] = None if data["value"] is None else bytes(data["value"])
    data["headers"] = decode_headers(data["headers"])
    return DeadLetterRow(**data)


def _index_row(row: Mapping[str, Any]) -> IndexVersionRow:
    data = dict(row)
    data["handoff"] = decode_handoff(data["handoff"])
    return IndexVersionRow(**data)
