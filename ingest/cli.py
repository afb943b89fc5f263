"""The ``ingest`` command: run the daemon, produce records, manage the local stack.

Every :class:`~ingest.errors.IngestError` becomes one ``error: ...`` line on stderr and exit
code 2 (configuration) or 1 (anything else at run time) — never a traceback for a problem the
user can fix. Heavy imports happen inside commands so ``ingest --help`` stays fast.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ingest.errors import ConfigError, IngestError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def fail_cleanly(func: F) -> F:
    """Turn IngestErrors into one line on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        except IngestError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_RUNTIME)

    return wrapper  # type: ignore[return-value]


def config_option(func: F) -> F:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="TOML settings file (default: ./ingest.toml, or $INGEST_CONFIG).",
    )(func)


def load(config_path: Path | None, *, log_level: str = "INFO") -> Any:
    """Settings plus logging configured with the secrets they hold."""
    from ingest.logconfig import configure_logging
    from ingest.settings import load_settings

    settings = load_settings(config_path)
    configure_logging(level=log_level, secrets=settings.secrets())
    return settings


@click.group()
@click.version_option(package_name="ingest")
def main() -> None:
    """Kafka -> Avro -> Elasticsearch/OpenSearch ingester with a PostgreSQL ledger."""
    from ingest.logconfig import configure_logging

    # Logs always go to stderr (stdout is for command output, e.g. `eval "$(ingest dev up)"`);
    # commands that load settings reconfigure with the secrets to redact.
    configure_logging(level="WARNING")


@main.command()
@config_option
@click.option("--stream", "streams", multiple=True, help="Stream(s) to run (default: all).")
@click.option("--metrics-port", type=int, default=None, help="Serve /metrics, /healthz, /readyz.")
@click.option("--metrics-host", default=None, help="Address to serve metrics on (127.0.0.1).")
@click.option("--log-level", default="INFO", show_default=True)
@fail_cleanly
def run(
    config_path: Path | None,
    streams: tuple[str, ...],
    metrics_port: int | None,
    metrics_host: str | None,
    log_level: str,
) -> None:
    """Run the consumer daemon until SIGTERM/SIGINT."""
    from ingest.daemon import Daemon

    settings = load(config_path, log_level=log_level)
    overrides = {"metrics_port": metrics_port, "metrics_host": metrics_host}
    chosen_overrides = {k: v for k, v in overrides.items() if v is not None}
    if chosen_overrides:
        runtime = settings.runtime.model_copy(update=chosen_overrides)
        settings = settings.model_copy(update={"runtime": runtime})
    chosen = [settings.stream(n) for n in streams] if streams else list(settings.streams)
    if not chosen:
        raise ConfigError("no streams configured: add a [[streams]] table to the config")
    sys.exit(Daemon(settings, chosen).run())


@main.command()
@config_option
@click.option(
    "--stream", "stream_name", required=True, help="Stream whose schema and topic to use."
)
@click.option("--count", type=click.IntRange(min=0), required=True)
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Records/s."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--invalid-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--duplicate-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@fail_cleanly
def produce(
    config_path: Path | None,
    stream_name: str,
    count: int,
    rate: float | None,
    seed: int,
    invalid_ratio: float,
    duplicate_ratio: float,
) -> None:
    """Produce valid sample records (and, on request, bad ones and newer duplicates)."""
    from ingest.producer import run_produce

    settings = load(config_path, log_level="WARNING")
    summary = run_produce(
        settings,
        stream_name,
        count,
        rate=rate,
        seed=seed,
        invalid_ratio=invalid_ratio,
        duplicate_ratio=duplicate_ratio,
    )
    click.echo(f"sent={summary.sent} failed={summary.failed}")
    if summary.failed:
        sys.exit(EXIT_RUNTIME)


@main.group()
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
@fail_cleanly
def dev_up(state_dir: Path) -> None:
    """Start the stack on free loopback ports; prints `export` lines for it."""
    from ingest.devstack import dev_up as up
    from ingest.devstack import env_exports
    from ingest.settings import external_ledger_dsn

    endpoints = up(state_dir, postgres_dsn=external_ledger_dsn())
    for line in env_exports(endpoints):
        click.echo(line)


@dev.command("status")
@_STATE_DIR
@fail_cleanly
def dev_status(state_dir: Path) -> None:
    """Say whether each embedded server is running and answering."""
    from ingest.devstack import dev_status as status
    from ingest.devstack import status_lines

    for line in status_lines(status(state_dir)):
        click.echo(line)


@dev.command("down")
@_STATE_DIR
@fail_cleanly
def dev_down(state_dir: Path) -> None:
    """Stop every embedded server; leaves no process behind."""
    from ingest.devstack import dev_down as down

    stopped = down(state_dir)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@main.group()
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


def _register_commands() -> None:
    """Commands that live in modules of their own (they import the helpers above)."""
    from ingest.commands.dlq import dlq
    from ingest.commands.grant import grant
    from ingest.commands.schemas import schemas
    from ingest.commands.status import status

    main.add_command(status)
    main.add_command(dlq)
    main.add_command(schemas)
    ledger.add_command(grant)


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
