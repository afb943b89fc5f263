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
