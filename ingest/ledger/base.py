"""What every part of the PostgreSQL ledger shares: connections, transactions, errors, filters.

:class:`LedgerBase` owns the connections — a pool of autocommit connections for the short
transactions and the dedicated ones that hold backfill chunk locks — so :meth:`close`
releases all of them in one place. It also owns the boundary rules the record-kind modules
(``offsets``, ``runs``, ``dead_letters``, ``index_versions``, ``chunks``) all follow:

- every identifier goes through :class:`psycopg.sql.Identifier` (the schema name is
  configurable) and every value through a placeholder;
- driver errors are translated here: connection trouble becomes
  :class:`~ingest.errors.TransientError` (retry), any other database error
  :class:`~ingest.errors.FatalError`, and an unreachable server at start
  :class:`~ingest.errors.ConfigError` naming the host but never the password;
- every text value is stored without NUL (:mod:`ingest.ledger.text`, through the
  connections' adapters), so outside text such as a server's error reason cannot make a
  flush fail;
- the DSN may rotate (:mod:`ingest.credentials`): every new connection — the pool's and the
  dedicated ones — takes the DSN in force, and a connection that fails re-reads the DSN's
  file and connects once more if that changed it (see :meth:`LedgerBase._open`);
- every query with optional filters builds its WHERE clause with :meth:`LedgerBase._filters`,
  so "no filter" and "filter on None" mean the same thing everywhere.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from ingest.credentials import CredentialError, Secret, StaticSecret, file_secret
from ingest.errors import ConfigError, FatalError, IngestError, TransientError
from ingest.ledger.text import ledger_adapters
from ingest.settings import LedgerSettings, dsn_secret, redact_dsn

log = structlog.get_logger(__name__)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

Conn = psycopg.Connection[Any]
C = TypeVar("C")

#: One extra WHERE condition and the values for its placeholders, for :meth:`LedgerBase._filters`.
Condition = tuple[sql.Composable, Sequence[Any]]


class LedgerBase:
    """The ledger's connections on one PostgreSQL database and schema; thread-safe.

    Construct it once per process; it connects at once (blocking up to
    ``connect_timeout_s``; libpq never waits less than 2 s per attempt) and raises
    :class:`ConfigError` if the server cannot be reached. Call ``migrate`` next. All other
    methods block for one short transaction, bounded by ``statement_timeout_s``.
    """

    def __init__(
        self,
        dsn: str | Secret,
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
        self._dsn_source: Secret = StaticSecret("ledger.dsn", dsn) if isinstance(dsn, str) else dsn
        try:
            dsn = self._dsn_source.current()
        except CredentialError as exc:
            raise ConfigError(f"config error: {exc}") from None
        self._schema = schema
        #: DSN passwords seen by this ledger (the one in force and earlier ones), for redaction.
        self._secrets: set[str] = set()
        self._note_secret(dsn)
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
            # Every text parameter goes through the ledger's text rules (no NUL).
            "context": ledger_adapters(),
        }
        #: task id -> the dedicated connection holding that chunk's advisory lock.
        self._chunk_conns: dict[str, Conn] = {}
        self._chunk_lock = threading.Lock()
        self._probe()
        ledger = self

        class LedgerConnection(psycopg.Connection[Any]):
            """Connects with the DSN in force, whatever conninfo the pool passes."""

            @classmethod
            def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
                return ledger._open(super().connect, **kwargs)

        self._pool: ConnectionPool[Conn] = ConnectionPool(
            "",
            connection_class=LedgerConnection,
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
    def from_settings(
        cls, settings: LedgerSettings, *, max_size: int = 4, check_every_s: float = 1.0
    ) -> Self:
        """The ledger described by ``settings.ledger``; blocks like the constructor.

        A DSN from a file (``dsn_file``) is re-read when the file changes (checked at most
        every ``check_every_s``) and when a connection fails.
        """
        dsn: str | Secret = settings.dsn.get_secret_value()
        if settings.dsn_file is not None:
            dsn = file_secret("ledger.dsn", settings.dsn_file, check_every_s=check_every_s)
        return cls(
            dsn,
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

    # -- internals shared by every record kind ------------------------------------------

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
            with self._open(psycopg.connect, **self._kwargs):
                pass
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot connect to the ledger database ({self._where}) within "
                f"{self._connect_timeout_s:g}s: {self._clean(exc)}"
            ) from None

    def _open(self, connect: Callable[..., C], **kwargs: Any) -> C:
        """``connect(dsn, **kwargs)`` with the DSN in force; again once if a re-read changed it.

        Any connection failure re-reads the DSN, not only an authentication failure: libpq
        reports failures at connect without a SQLSTATE (psycopg's ``sqlstate`` is None for
        "password authentication failed"), and the message text is no contract. A re-read
        that changes nothing costs one file read, and the original error stands.
        """
        dsn = self._dsn_source.current()
        self._note_secret(dsn)
        try:
            return connect(dsn, **kwargs)
        except psycopg.OperationalError as exc:
            if not self._dsn_source.reload():
                raise
            log.warning("ledger_credentials_replaced", where=self._where, error=self._clean(exc))
        dsn = self._dsn_source.current()
        self._note_secret(dsn)
        return connect(dsn, **kwargs)

    def _note_secret(self, dsn: str) -> None:
        secret = dsn_secret(dsn)
        if secret:
            self._secrets.add(secret)

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
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
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


def _describe(params: Mapping[str, Any]) -> str:
    """Where the DSN points, without credentials: ``host=... port=... dbname=...``."""
    host = params.get("host") or params.get("hostaddr") or "default socket"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or "default"
    return f"host={host} port={port} dbname={dbname}"
