"""``ingest ledger grant --role NAME [--apply]``: least privilege for workers on the ledger.

The daemon and the backfills need to read and write the ledger's tables, delete old dead
letters, and use the id sequences — never to create, alter or drop anything. The statements
come from :meth:`~ingest.ledger.PostgresLedger.grant_sql` (identifiers quoted by psycopg);
this command prints them, or with ``--apply`` runs them in one transaction as the configured
(owner) role, after applying any missing migration so every table and sequence exists.
The role itself (``CREATE ROLE ... LOGIN``) and ``CONNECT`` on the database are the DBA's.
"""

from __future__ import annotations

from pathlib import Path

import click

from ingest.cli._common import config_option, fail_cleanly, load
from ingest.errors import ConfigError, FatalError


@click.command("grant")
@config_option
@click.option("--role", required=True, help="The PostgreSQL role the workers log in as.")
@click.option("--apply", "apply_now", is_flag=True, help="Run the statements (as the owner).")
@fail_cleanly
def grant(config_path: Path | None, role: str, apply_now: bool) -> None:
    """Print (or --apply) the SQL giving ROLE only what the daemon and backfills need."""
    from ingest.ledger import PostgresLedger
    from ingest.ledger.migrator import check_grantee

    check_grantee(role)
    settings = load(config_path, log_level="WARNING")
    with PostgresLedger.from_settings(settings.ledger, max_size=1) as ledger:
        if apply_now:
            ledger.migrate()
        statements = ledger.grant_sql(role)
    for stmt in statements:
        click.echo(f"{stmt};")
    if apply_now:
        _apply(settings.ledger.dsn.get_secret_value(), statements, role)
        click.echo(f"-- applied {len(statements)} statement(s) for role {role!r}")


def _apply(dsn: str, statements: list[str], role: str) -> None:
    """Run ``statements`` in one transaction; a refused one becomes one error line."""
    import psycopg

    from ingest.settings import dsn_secret, redact_dsn

    secret = dsn_secret(dsn)

    def clean(exc: BaseException) -> str:
        text = redact_dsn(" ".join(str(exc).split()))
        return text.replace(secret, "***") if secret else text

    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn, conn.transaction():
            for stmt in statements:
                # Built by grant_sql from psycopg.sql.Identifier: no value is interpolated.
                conn.execute(stmt.encode())
    except psycopg.errors.UndefinedObject as exc:
        raise ConfigError(
            f"cannot grant to role {role!r}: {clean(exc)} (create it first: CREATE ROLE ... LOGIN)"
        ) from None
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot connect to the ledger database: {clean(exc)}") from None
    except psycopg.Error as exc:
        raise FatalError(f"granting to role {role!r} failed: {clean(exc)}") from None
