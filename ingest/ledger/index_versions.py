"""Index versions: which physical indices stand behind each alias, and in which state.

A reindex adds version N+1 as ``building``; daemons poll ``building_version`` to
dual-write and record where they started (the handoff); the alias swap is followed by
``set_index_state(..., "live")``, which retires the previous live version in the same
transaction, so an alias never has two live versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from psycopg import sql
from psycopg.types.json import Jsonb

from ingest.ledger.base import Conn, LedgerBase
from ingest.ledger.models import INDEX_STATES, IndexVersionRow, decode_handoff, encode_handoff

log = structlog.get_logger(__name__)


class IndexVersionLedger(LedgerBase):
    """The ``index_versions`` table: add, move between states, handoff offsets, look up."""

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


def _check_state(state: str) -> None:
    if state not in INDEX_STATES:
        raise ValueError(f"invalid index state {state!r}")


def _index_row(row: Mapping[str, Any]) -> IndexVersionRow:
    data = dict(row)
    data["handoff"] = decode_handoff(data["handoff"])
    return IndexVersionRow(**data)
