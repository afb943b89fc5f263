"""The PostgreSQL ledger: the one source of truth shared by the daemon and the backfills.

It owns every durable decision that makes writes idempotent: where each consumer group stands
on each partition (with a generation that fences a stale owner), which records were
dead-lettered, which runs happened, which index versions exist behind an alias and which
backfill chunks are done, and which documents were deleted. Each record kind has its own
module (``offsets``, ``runs``, ``dead_letters``, ``index_versions``, ``chunks``,
``deletes``, ``latency``) over the shared connections, error translation and WHERE builder
in ``base``; this module composes them into :class:`PostgresLedger` and holds what spans
them: the schema's migrations and grants, and the flush, the one transaction that writes
five record kinds at once.

Each public method is one short transaction on a pooled connection in autocommit mode,
except :meth:`PostgresLedger.try_lock_chunk`, which keeps a dedicated connection holding a
session advisory lock for as long as the chunk runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ingest.latency import FlushLatency
from ingest.ledger.chunks import ChunkLedger
from ingest.ledger.credential_loads import CredentialLoadLedger
from ingest.ledger.dead_letters import DeadLetterLedger
from ingest.ledger.deletes import DeleteMarkerLedger
from ingest.ledger.index_versions import IndexVersionLedger
from ingest.ledger.latency import LatencyLedger
from ingest.ledger.migrator import apply_migrations, grant_statements, load_migrations
from ingest.ledger.models import FlushMark, OffsetCommit, check_counters
from ingest.ledger.offsets import OffsetLedger
from ingest.ledger.runs import RunLedger
from ingest.types import DeadLetter, DeleteMarker


class PostgresLedger(
    OffsetLedger,
    RunLedger,
    DeadLetterLedger,
    IndexVersionLedger,
    ChunkLedger,
    DeleteMarkerLedger,
    LatencyLedger,
    CredentialLoadLedger,
):
    """The ledger on one PostgreSQL database and schema; thread-safe.

    Construct it once per process; it connects at once (blocking up to
    ``connect_timeout_s``; libpq never waits less than 2 s per attempt) and raises
    :class:`~ingest.errors.ConfigError` if the server cannot be reached. Call :meth:`migrate`
    next. All other methods block for one short transaction, bounded by
    ``statement_timeout_s``.
    """

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

    # -- the flush ----------------------------------------------------------------------

    def commit(
        self,
        offsets: Sequence[OffsetCommit],
        dead_letters: Sequence[DeadLetter] = (),
        run_id: int | None = None,
        counters: Mapping[str, int] | None = None,
        flush: FlushMark | None = None,
        deletes: Sequence[DeleteMarker] = (),
        *,
        latency: FlushLatency | None = None,
    ) -> None:
        """Record one flush atomically: next offsets, dead letters, deletes, run counters and
        ingestion latency.

        Called after the sink wrote the batch and before the Kafka commit. Raises
        :class:`~ingest.errors.FencedError` (and writes nothing) if any partition's stored
        generation is not the one given. ``next_offset`` never moves backwards. Dead letters
        already stored (same stream, source, topic, partition, offset) only get
        ``attempts``/``last_seen_at`` bumped. ``counters`` are added to the run's counters,
        once per ``flush`` mark (writer id, flush number): re-sending a commit that landed
        adds nothing. ``deletes`` (the deletes the sink applied) become delete markers, the
        newest version per document kept; in this same transaction, so a delete whose
        offset is committed is always remembered. ``latency`` (the flush's ingestion latency
        samples) becomes ``flush_latency`` rows.
        """
        ordered = sorted(offsets, key=lambda c: (c.group, c.topic, c.partition))
        added = check_counters(counters)
        with self._conn("commit") as conn, conn.transaction():
            for c in ordered:
                self._commit_offset(conn, c)
            self._upsert_dead_letters(conn, dead_letters)
            self._upsert_delete_markers(conn, deletes)
            if run_id is not None and added:
                self._add_counters(conn, run_id, added, flush)
            if latency:
                self._insert_flush_latency(conn, latency, run_id)
