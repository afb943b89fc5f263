"""The shape of the ledger schema: versioned migrations and the privileges a worker needs.

Migrations are the package-data files ``migrations/NNN_name.sql``. They are written with
unqualified names and run with ``search_path`` set to the ledger schema alone, so one set of
files serves any schema name without building SQL from strings.

Applying them is safe from any number of processes at once: everything happens in one
transaction that first takes ``pg_advisory_xact_lock`` on a key derived from the schema name,
so the second process waits, then finds the versions recorded and does nothing. A process
whose role may not run DDL (the daemon in production) can still call :func:`apply_migrations`
on an up-to-date schema: the check is read-only and the DDL is only reached when a version is
missing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg
import structlog
from psycopg import sql

from ingest.errors import ConfigError

log = structlog.get_logger(__name__)

_FILE_NAME = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+)\.sql$")

#: Tables a worker reads and writes (daemon, backfills, reindex, status).
WORKER_TABLES = (
    "partition_offsets",
    "runs",
    "dead_letters",
    "index_versions",
    "backfill_chunks",
    "delete_markers",
    "flush_latency",
    "credential_loads",
)
#: The tables a worker deletes from: dead letters and delete markers purged by age, latency
#: rows past their retention.
PURGEABLE_TABLES = ("dead_letters", "delete_markers", "flush_latency")
MIGRATIONS_TABLE = "schema_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: bytes
    checksum: str


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Every ``NNN_name.sql`` in ``directory`` (default: the packaged ones), by version.

    Other files are ignored; two files with one version number are a packaging bug and raise
    :class:`ConfigError` naming both.
    """
    folder = directory or resources.files("ingest.ledger").joinpath("migrations")
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        m = _FILE_NAME.match(entry.name)
        if not m or not entry.is_file():
            continue
        version = int(m.group("version"))
        if version == 0:
            raise ConfigError(f"ledger migration {entry.name}: versions start at 001")
        body = entry.read_bytes()
        migration = Migration(
            version=version,
            name=m.group("name"),
            sql=body,
            checksum=hashlib.sha256(body).hexdigest(),
        )
        if version in found:
            other = found[version]
            raise ConfigError(
                f"ledger migrations {version:03d}_{other.name}.sql and {entry.name} "
                "share one version number"
            )
        found[version] = migration
    return [found[v] for v in sorted(found)]


def lock_key(schema: str) -> int:
    """A stable signed 64-bit advisory-lock key for migrating ``schema``.

    Derived from a hash rather than ``hashtext()`` so the value is the same on every server
    version and can be recomputed when looking at ``pg_locks``.
    """
    digest = hashlib.sha256(b"ingest.ledger.migrate:" + schema.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def chunk_lock_key(schema: str, task_id: str) -> int:
    """The session advisory-lock key that marks backfill chunk ``task_id`` as being worked on."""
    digest = hashlib.sha256(b"ingest.ledger.chunk:" + schema.encode() + b"\0" + task_id.encode())
    return int.from_bytes(digest.digest()[:8], "big", signed=True)


def apply_migrations(
    conn: psycopg.Connection[Any], schema: str, migrations: list[Migration]
) -> list[int]:
    """Apply the missing ``migrations`` to ``schema`` in one transaction; the versions applied.

    Blocks while another process holds the migration lock for the same schema (bounded by the
    connection's ``statement_timeout``). ``conn`` must be in autocommit mode; its
    ``search_path`` is only changed for the transaction (``SET LOCAL``).
    """
    schema_id = sql.Identifier(schema)
    table = sql.Identifier(schema, MIGRATIONS_TABLE)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))
        exists = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s",
            (schema, MIGRATIONS_TABLE),
        ).fetchone()
        applied: dict[int, str] = {}
        if exists:
            cur = conn.execute(sql.SQL("SELECT version, checksum FROM {}").format(table))
            applied = {int(v): str(c) for v, c in cur.fetchall()}
        _warn_on_drift(schema, migrations, applied)
        pending = [m for m in migrations if m.version not in applied]
        if not pending:
            return []
        try:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema_id))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} ("
                    " version integer PRIMARY KEY,"
                    " name text NOT NULL,"
                    " checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(table)
            )
            for migration in pending:
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema_id))
                conn.execute(migration.sql)
                conn.execute(
                    sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
                        table
                    ),
                    (migration.version, migration.name, migration.checksum),
                )
                log.info(
                    "ledger_migration_applied",
                    schema=schema,
                    version=migration.version,
                    name=migration.name,
                )
        except psycopg.errors.InsufficientPrivilege as exc:
            missing = ", ".join(f"{m.version:03d}_{m.name}" for m in pending)
            raise ConfigError(
                f"ledger schema {schema!r} needs migrations {missing} but this role may not "
                f"run DDL ({exc.diag.message_primary}); run the migration as the schema owner"
            ) from exc
    return [m.version for m in pending]


def _warn_on_drift(schema: str, migrations: list[Migration], applied: dict[int, str]) -> None:
    known = {m.version: m for m in migrations}
    for version, checksum in applied.items():
        migration = known.get(version)
        if migration is None:
            log.warning("ledger_migration_unknown", schema=schema, version=version)
        elif migration.checksum != checksum:
            log.warning("ledger_migration_changed", schema=schema, version=version)


def check_grantee(role: str) -> str:
    """``role`` when it names one ordinary role; ConfigError (one line) otherwise.

    PostgreSQL's grammar reads the role name ``public`` as PUBLIC -- every role on the
    server -- in any case and even double-quoted (``sql.Identifier`` would quote it and
    change nothing), so the workers' grants would go to everyone.
    """
    name = role.strip()
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        name = name[1:-1].strip()
    if not name:
        raise ConfigError("--role must not be empty")
    if name.casefold() == "public":
        raise ConfigError(
            f"refusing to grant to {role!r}: PostgreSQL reads it as PUBLIC (every role, quoted "
            "or not); name the role the workers log in as"
        )
    return role


def grant_statements(schema: str, role: str) -> list[sql.Composed]:
    """The statements giving ``role`` what workers need on ``schema`` and nothing more.

    USAGE on the schema (no CREATE), SELECT/INSERT/UPDATE on the worker tables, DELETE only on
    dead letters and delete markers (both purged by age) and flush latency rows (retention),
    SELECT on ``schema_migrations`` so
    :func:`apply_migrations` can see the schema is current, and USAGE on the sequences behind
    ``bigserial`` ids. Run after the migrations, as their owner: ``ALL SEQUENCES`` covers the
    sequences that exist then.
    """
    role_id = sql.Identifier(check_grantee(role))
    stmts = [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role_id),
        sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(
            sql.Identifier(schema, MIGRATIONS_TABLE), role_id
        ),
    ]
    for table in WORKER_TABLES:
        stmts.append(
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON TABLE {} TO {}").format(
                sql.Identifier(schema, table), role_id
            )
        )
    for table in PURGEABLE_TABLES:
        stmts.append(
            sql.SQL("GRANT DELETE ON TABLE {} TO {}").format(sql.Identifier(schema, table), role_id)
        )
    stmts.append(
        sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
            sql.Identifier(schema), role_id
        )
    )
    return stmts
