"""``ingest run``: the consumer daemon."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ingest.cli._common import config_option, fail_cleanly, load
from ingest.errors import ConfigError


@click.command()
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
    """Run the consumer daemon until SIGTERM/SIGINT; then print a one-line summary."""
    from ingest.daemon.summary import summary_line
    from ingest.daemon.supervisor import Daemon

    settings = load(config_path, log_level=log_level)
    overrides = {"metrics_port": metrics_port, "metrics_host": metrics_host}
    chosen_overrides = {k: v for k, v in overrides.items() if v is not None}
    if chosen_overrides:
        runtime = settings.runtime.model_copy(update=chosen_overrides)
        settings = settings.model_copy(update={"runtime": runtime})
    chosen = [settings.stream(n) for n in streams] if streams else list(settings.streams)
    if not chosen:
        raise ConfigError("no streams configured: add a [[streams]] table to the config")
    daemon = Daemon(settings, chosen)
    code = daemon.run()
    click.echo(summary_line(daemon.metrics), err=True)
    sys.exit(code)
