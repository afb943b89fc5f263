"""``ingest ledger``: the PostgreSQL ledger's schema; ``grant`` (its roles) is in cli.grant."""

from __future__ import annotations

from pathlib import Path

import click

from ingest.cli._common import config_option, fail_cleanly, load


@click.group()
def ledger() -> None:
    """The PostgreSQL ledger."""


@ledger.command("migrate")
@config_option
@fail_cleanly
def ledger_migrate(config_path: Path | None) -> None:
    """Create or upgrade the ledger schema (also done automatically at start)."""
    from ingest.ledger import PostgresLedger

    settings = load(config_path)
    with PostgresLedger.from_settings(settings.ledger) as led:
        applied = led.migrate()
    click.echo(f"applied migrations: {applied or 'none (up to date)'}")


@ledger.command("purge-deletes")
@config_option
@click.option(
    "--older-than",
    "older_than",
    default=None,
    help="Forget deletes applied before this (ISO 8601 or an age: 30d); "
    "default: [ledger] delete_marker_retention_s.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@fail_cleanly
def ledger_purge_deletes(config_path: Path | None, older_than: str | None, yes: bool) -> None:
    """Forget old delete markers (the daemon also does this at start, by the retention).

    A write older than a forgotten delete re-creates its document: purge only past the
    oldest data any backfill or replay may still send.
    """
    from datetime import UTC, datetime, timedelta

    from ingest.cli.dlq import parse_when
    from ingest.ledger import PostgresLedger

    settings = load(config_path)
    if older_than is None:
        before = datetime.now(UTC) - timedelta(seconds=settings.ledger.delete_marker_retention_s)
    else:
        before = parse_when(older_than, option="--older-than")
    when = before.isoformat(timespec="seconds")
    with PostgresLedger.from_settings(settings.ledger) as led:
        led.migrate()
        if not yes:
            click.confirm(
                f"Forget every delete applied before {when} in ledger schema "
                f"{settings.ledger.schema_name!r}? Older versions of those documents could "
                "then be indexed again by a backfill or replay.",
                abort=True,
            )
        count = led.purge_delete_markers(before)
    click.echo(f"purged {count} delete marker(s) applied before {when}")
