"""Credential loads: the audit trail of every secret a process put in force, never the value.

:mod:`ingest.credentials` logs each load at once and queues it; :meth:`record_credential_loads`
writes the queue here whenever the ledger is reachable (at start, periodically in the daemon,
at close), putting it back when PostgreSQL is not, so a load is never lost while the process
lives — in particular a rotated ledger DSN, which can only be recorded once connected with it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime

import structlog
from psycopg import sql

from ingest.credentials import REGISTRY, CredentialLoad, CredentialRegistry
from ingest.errors import TransientError
from ingest.ledger.base import LedgerBase

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CredentialLoadRow:
    """One row of ``credential_loads``."""

    id: int
    loaded_at: datetime
    recorded_at: datetime
    host: str
    pid: int
    name: str
    source: str
    file_mtime: datetime
    fingerprint: str
    reason: str


class CredentialLoadLedger(LedgerBase):
    """The ``credential_loads`` table: write the process's queued loads, list them."""

    def record_credential_loads(self, registry: CredentialRegistry = REGISTRY) -> int:
        """Write every queued load in one transaction; how many were written.

        Called at start, periodically and at close; blocks for one short transaction. While
        PostgreSQL is unreachable the loads go back to the queue and 0 is returned (they
        were logged when they happened).
        """
        loads = registry.take_pending_loads()
        if not loads:
            return 0
        try:
            self._insert_loads(loads)
        except TransientError as exc:
            registry.put_back(loads)
            log.warning("credential_loads_not_recorded", count=len(loads), error=str(exc))
            return 0
        except BaseException:
            registry.put_back(loads)
            raise
        return len(loads)

    def _insert_loads(self, loads: list[CredentialLoad]) -> None:
        query = sql.SQL(
            "INSERT INTO {} (loaded_at, host, pid, name, source, file_mtime, fingerprint, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(self._table("credential_loads"))
        host, pid = socket.gethostname(), os.getpid()
        rows = [
            (x.loaded_at, host, pid, x.name, x.source, x.file_mtime, x.fingerprint, x.reason)
            for x in loads
        ]
        with (
            self._conn("record_credential_loads") as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            cur.executemany(query, rows)

    def credential_loads(self, name: str | None = None) -> list[CredentialLoadRow]:
        """Recorded loads, oldest first; only ``name``'s when given."""
        where, values = self._filters(name=name)
        query = sql.SQL("SELECT * FROM {} {} ORDER BY loaded_at, id").format(
            self._table("credential_loads"), where
        )
        with self._conn("credential_loads") as conn:
            return [CredentialLoadRow(**row) for row in self._dicts(conn, query, values)]
