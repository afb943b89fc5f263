"""``ingest produce``: sample records (valid, and bad ones on request) for a stream's topic."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ingest.cli._common import EXIT_RUNTIME, config_option, fail_cleanly, load


@click.command()
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
    from ingest.dev.demo import run_produce

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
