"""The ``backfill`` command: copy a Kafka time range or Avro archive files into the index.

Both subcommands plan chunks, run them as Luigi tasks (in-process scheduler unless
``--scheduler-url`` names a luigid) and print a closing summary. Exit codes: 0 when every
chunk is done, 1 when some chunk failed (listed with its error), 2 for a configuration
problem found before anything ran. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from backfill.reindex import reindex_command
from backfill.skew import DEFAULT_FACTOR, DEFAULT_MIN_RECORDS, format_rate
from ingest.cli._common import EXIT_RUNTIME, config_option, fail_cleanly, load

if TYPE_CHECKING:
    from ingest.ledger import ChunkRow

_PROGRESS = click.Choice(["auto", "bar", "lines", "none"])


def _run_options(func: Any) -> Any:
    """Options shared by both subcommands: how to run, not what to copy."""
    options = [
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True),
        click.option(
            "--index",
            default=None,
            help="Physical index to write (must exist); default: the stream's alias.",
        ),
        click.option(
            "--scheduler-url",
            default=None,
            help="Central luigid, e.g. http://127.0.0.1:8082; default: in-process scheduler.",
        ),
        click.option(
            "--force", is_flag=True, help="Mark this command's done chunks for re-run first."
        ),
        click.option(
            "--retries",
            type=click.IntRange(min=0),
            default=1,
            show_default=True,
            help="Times Luigi re-runs a failed chunk.",
        ),
        click.option(
            "--retry-delay",
            type=click.FloatRange(min=0),
            default=5.0,
            show_default=True,
            help="Seconds before a failed chunk is re-run (in-process scheduler).",
        ),
        click.option(
            "--lock-wait",
            type=click.FloatRange(min=0),
            default=3600.0,
            show_default=True,
            help="Seconds to wait for a chunk another backfill is running.",
        ),
        click.option(
            "--skew-factor",
            type=click.FloatRange(min=1.0, min_open=True),
            default=DEFAULT_FACTOR,
            show_default=True,
            help="Flag chunks slower per record than this many times the run's median.",
        ),
        click.option(
            "--skew-min-records",
            type=click.IntRange(min=1),
            default=DEFAULT_MIN_RECORDS,
            show_default=True,
            help="Chunks with fewer records are not judged for skew (their fixed cost rules).",
        ),
        click.option("--progress", "progress", type=_PROGRESS, default="auto", show_default=True),
        click.option("--log-level", default="WARNING", show_default=True),
        config_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _options(config_path: Path | None, kw: dict[str, Any]) -> Any:
    from backfill.runner import RunOptions
    from backfill.skew import SkewPolicy

    return RunOptions(
        workers=kw["workers"],
        scheduler_url=kw["scheduler_url"],
        force=kw["force"],
        retries=kw["retries"],
        retry_delay_s=kw["retry_delay"],
        lock_wait_s=kw["lock_wait"],
        progress=kw["progress"],
        config_path=str(config_path.resolve()) if config_path is not None else "",
        skew=SkewPolicy(factor=kw["skew_factor"], min_records=kw["skew_min_records"]),
    )


def _finish(summary: Any) -> None:
    for line in summary.render():
        click.echo(line)
    if not summary.ok:
        sys.exit(EXIT_RUNTIME)


@click.group()
@click.version_option(package_name="ingest")
def main() -> None:
    """Backfill a stream's index from Kafka time ranges or Avro archive files."""


@main.command()
@click.option("--stream", "stream_name", required=True, help="Stream name in the settings.")
@click.option("--since", required=True, help="Start (inclusive), ISO 8601; no offset = UTC.")
@click.option("--until", required=True, help="End (exclusive), ISO 8601.")
@click.option("--partitions", default=None, help="Comma-separated partitions; default: all.")
@click.option("--chunk", default="1h", show_default=True, help="Window per chunk: 30m, 1h, 1d.")
@click.option(
    "--lateness",
    default="1m",
    show_default=True,
    help="How far out of timestamp order records may be and still be found.",
)
@_run_options
@fail_cleanly
def kafka(
    stream_name: str,
    since: str,
    until: str,
    partitions: str | None,
    chunk: str,
    lateness: str,
    config_path: Path | None,
    **kw: Any,
) -> None:
    """Copy records with timestamps in [--since, --until) from the stream's topic.

    One chunk per partition x --chunk window; chunks already done (in the ledger) are
    skipped, failed ones run again. Reads with assign(): never joins the daemon's group.
    """
    import datetime as dt

    from backfill.kafka_range import parse_duration, parse_partitions
    from backfill.runner import run_kafka_backfill

    settings = load(config_path, log_level=kw["log_level"])
    summary = run_kafka_backfill(
        settings,
        stream_name,
        index=kw["index"],
        since=since,
        until=until,
        partitions=parse_partitions(partitions),
        chunk=dt.timedelta(milliseconds=parse_duration(chunk)),
        lateness=dt.timedelta(milliseconds=parse_duration(lateness)),
        options=_options(config_path, kw),
    )
    _finish(summary)


@main.command()
@click.option("--stream", "stream_name", required=True, help="Stream name in the settings.")
@click.option(
    "--path",
    "path_spec",
    required=True,
    help="Directory (searched for *.avro), glob or file of Avro object container files.",
)
@_run_options
@fail_cleanly
def files(stream_name: str, path_spec: str, config_path: Path | None, **kw: Any) -> None:
    """Copy the records of Avro object container files (one chunk per file and content).

    The stream must be versioned by a record field: file records have no Kafka offset.
    """
    from backfill.runner import run_file_backfill

    settings = load(config_path, log_level=kw["log_level"])
    summary = run_file_backfill(
        settings,
        stream_name,
        path_spec,
        index=kw["index"],
        options=_options(config_path, kw),
    )
    _finish(summary)


@main.command()
@click.option("--stream", "stream_name", required=True)
@click.option("--failed", "only_failed", is_flag=True, help="Only chunks that failed.")
@click.option("--skewed", "only_skewed", is_flag=True, help="Only chunks flagged skewed.")
@config_option
@fail_cleanly
def chunks(
    stream_name: str, only_failed: bool, only_skewed: bool, config_path: Path | None
) -> None:
    """List the stream's backfill chunks recorded in the ledger.

    A finished chunk shows what it cost (duration, records and bytes read, time per
    record), ``skew=`` its time per record over its run's median, and ``SKEWED`` when its
    run flagged it (above that run's --skew-factor).
    """
    from ingest.ledger import PostgresLedger

    settings = load(config_path, log_level="WARNING")
    settings.stream(stream_name)
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        rows = ledger.chunks(stream=stream_name)
    for row in rows:
        if (only_failed and row.status != "failed") or (only_skewed and not row.skewed):
            continue
        counts = " ".join(f"{k}={v}" for k, v in sorted(row.counts.items()))
        error = f" error={row.error}" if row.error else ""
        click.echo(
            f"{row.status:8} attempts={row.attempts} {row.family} {row.task_id} {counts}"
            f"{_timing(row)}{error}"
        )


def _timing(row: ChunkRow) -> str:
    """`` duration=… records=… bytes=… per_record=… skew=…x [SKEWED]`` of a finished row."""
    if row.duration_s is None or row.records is None:
        return ""
    rate = row.duration_s / row.records if row.records else None
    text = (
        f" duration={row.duration_s:.2f}s records={row.records} bytes={row.read_bytes or 0}"
        f" per_record={format_rate(rate).replace(' ', '')}"
    )
    if row.skew_ratio is not None:
        text += f" skew={row.skew_ratio:.1f}x"
    return text + (" SKEWED" if row.skewed else "")


@main.command("history-url")
@click.option(
    "--database", default=None, help="Database for luigid's tables (default: the ledger's)."
)
@config_option
@fail_cleanly
def history_url(database: str | None, config_path: Path | None) -> None:
    """Print the luigi.cfg line sending luigid's task history to the ledger's PostgreSQL.

    The password is left out: give luigid PGPASSWORD or PGPASSFILE instead.
    """
    from backfill.history import luigi_cfg_value, sqlalchemy_url

    settings = load(config_path, log_level="WARNING")
    url = sqlalchemy_url(settings.ledger.dsn.get_secret_value(), database=database)
    click.echo(f"db_connection = {luigi_cfg_value(url)}")


main.add_command(reindex_command)  # backfill/reindex/: zero-downtime reindex, rollback

if __name__ == "__main__":  # pragma: no cover
    main()
