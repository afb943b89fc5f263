"""Partition offsets: where each consumer group stands on each partition, and who owns it.

A row per (group, topic, partition) holds the **next** offset to read and a generation.
Claiming a partition bumps the generation; a commit must name the generation it claimed, so
a process that lost its partitions while stalled is fenced (:class:`FencedError`) instead
of moving an offset that a newer owner already moved.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from psycopg import sql

from ingest.errors import FencedError
from ingest.ledger.base import Conn, LedgerBase
from ingest.ledger.models import OffsetCommit, OffsetRow, PartitionClaim

log = structlog.get_logger(__name__)


class OffsetLedger(LedgerBase):
    """The ``partition_offsets`` table: claims, committed next offsets, the status listing."""

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

    def _commit_offset(self, conn: Conn, c: OffsetCommit) -> None:
        """Move one partition's next offset inside the caller's flush transaction.

        Raises :class:`FencedError` when the stored generation is not ``c.generation``; the
        caller's transaction then rolls back, so nothing of the flush is written.
        """
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
