"""``ingest dev``: the embedded local stack (Kafka, search, PostgreSQL) on loopback ports."""

from __future__ import annotations

from pathlib import Path

import click

from ingest.cli._common import config_option, fail_cleanly, load


@click.group()
def dev() -> None:
    """The embedded local stack: Kafka (tansu), search (osmem), PostgreSQL."""


_STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".ingest-dev"),
    show_default=True,
)


@dev.command("up")
@_STATE_DIR
@config_option
@fail_cleanly
def dev_up(state_dir: Path, config_path: Path | None) -> None:
    """Start the stack on free loopback ports; prints `export` lines for it.

    When a config is found (--config, $INGEST_CONFIG or ./ingest.toml), its streams' topics
    are created on the new broker too, as `ingest topics ensure` would; what was done goes to
    stderr, so `eval "$(ingest dev up)"` only sees the exports.
    """
    from ingest.dev.stack import dev_up as up
    from ingest.dev.stack import env_exports
    from ingest.settings import external_ledger_dsn

    settings = load(config_path, log_level="WARNING")  # a bad config fails before any start
    endpoints = up(state_dir, postgres_dsn=external_ledger_dsn())
    for line in env_exports(endpoints):
        click.echo(line)
    if settings.streams:
        from ingest.kafka.topics import KafkaTopicAdmin, topic_specs

        kafka = settings.kafka.model_copy(update={"bootstrap_servers": endpoints.kafka_bootstrap})
        local = settings.model_copy(update={"kafka": kafka})
        for report in KafkaTopicAdmin(local).ensure(topic_specs(local.streams)):
            click.echo(f"topic {report.line()}", err=True)


@dev.command("status")
@_STATE_DIR
@fail_cleanly
def dev_status(state_dir: Path) -> None:
    """Say whether each embedded server is running and answering."""
    from ingest.dev.stack import dev_status as status
    from ingest.dev.stack import status_lines

    for line in status_lines(status(state_dir)):
        click.echo(line)


@dev.command("down")
@_STATE_DIR
@fail_cleanly
def dev_down(state_dir: Path) -> None:
    """Stop every embedded server; leaves no process behind."""
    from ingest.dev.stack import dev_down as down

    stopped = down(state_dir)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
