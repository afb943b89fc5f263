"""Running a reindex: wiring settings, ledger and search to the machine, and the CLI command."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import click
import structlog

from backfill.reindex.fills import (
    StreamFiller,
)
from backfill.reindex.machine import (
    Reindexer,
    ReindexOptions,
    ReindexResult,
)
from backfill.reindex.plan import (
    LOCK_FAMILY,
    PAUSE_POINTS,
    SOURCES,
    ReindexError,
)
from ingest.cli._common import config_option, fail_cleanly, load
from ingest.errors import ConfigError, IngestError
from ingest.settings import Settings

log = structlog.get_logger(__name__)


# ----------------------------------------------------------------------------- running


def reindex(settings: Settings, stream_name: str, options: ReindexOptions) -> ReindexResult:
    """Run one reindex (or rollback/abort/prune) of ``stream_name`` under the alias lock."""
    from ingest.kafka.ranges import KafkaRangeReader
    from ingest.pipeline.wiring import open_components
    from ingest.settings import group_id_for

    stream = settings.stream(stream_name)

    if options.pause_at is not None and options.pause_at not in PAUSE_POINTS:
        raise ConfigError(
            f"unknown pause point {options.pause_at!r} (use {', '.join(PAUSE_POINTS)})"
        )
    owner = f"{socket.gethostname()}:{os.getpid()}"
    task_id = f"reindex:{stream.alias}"
    with open_components(settings) as components:
        ledger = components.ledger
        # A finished lock row (done/failed) must not block the next reindex of the alias.
        ledger.reset_chunks(stream.name, family=LOCK_FAMILY)
        params = {k: v for k, v in asdict(options).items() if k not in {"pause_s"}}
        if not ledger.try_lock_chunk(task_id, LOCK_FAMILY, stream.name, params, owner):
            raise ReindexError(f"another reindex of alias {stream.alias!r} is running")
        run_id = ledger.start_run("reindex", stream.name, params)
        status, error = "failed", None
        result: ReindexResult | None = None
        try:
            reader = KafkaRangeReader(settings)

            def watermarks() -> Mapping[int, int]:
                return reader.high_watermarks(stream.topic)

            machine = Reindexer(
                settings=settings,
                stream=stream,
                ledger=ledger,
                search=components.search,
                catalog=components.catalog,
                filler=StreamFiller(components, stream, run_id),
                options=options,
                group=group_id_for(settings, stream),
                high_watermarks=watermarks,
                run_id=run_id,
            )
            result = machine.run()
            status = "succeeded"
            return result
        except IngestError as exc:
            error = str(exc)
            raise
        finally:
            counters = {k: int(v) for k, v in (result.fill if result else {}).items()}
            ledger.finish_run(run_id, status, error=error, counters=counters)
            ledger.finish_chunk(task_id, "done" if status == "succeeded" else "failed", error=error)


@click.command("reindex")
@config_option
@click.option("--stream", "stream_name", required=True, help="Stream whose alias to rebuild.")
@click.option(
    "--source",
    type=click.Choice(SOURCES),
    default=None,
    help="Where the new version is filled from (default: kafka; a rollback catches up "
    "from Kafka since the swap when it can, else copies the live index).",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    type=str,
    help="Avro archive file, directory or glob for --source files (repeatable).",
)
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=None,
    help="Afterwards delete retired versions beyond the newest N (and failed ones).",
)
@click.option("--rollback", is_flag=True, help="Swap back to the version the live one replaced.")
@click.option("--abort", is_flag=True, help="Give up a build that has not swapped yet.")
@click.option(
    "--tolerance",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Documents the new version may miss beyond deletions before the swap is refused.",
)
@click.option(
    "--ack-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="How long running daemons get to start dual-writing.",
)
@click.option(
    "--pause-at",
    type=click.Choice(PAUSE_POINTS),
    envvar="INGEST_REINDEX_PAUSE_AT",
    default=None,
    hidden=True,
)
@click.option("--pause-s", type=float, envvar="INGEST_REINDEX_PAUSE_S", default=600.0, hidden=True)
@click.option("--log-level", default="INFO", show_default=True)
@fail_cleanly
def reindex_command(
    config_path: Path | None,
    stream_name: str,
    source: str | None,
    paths: tuple[str, ...],
    keep: int | None,
    rollback: bool,
    abort: bool,
    tolerance: int,
    ack_timeout_s: float | None,
    pause_at: str | None,
    pause_s: float,
    log_level: str,
) -> None:
    """Rebuild a stream's index beside the live one and swap the alias atomically.

    Resumable: re-run the same command after any failure or kill.
    """
    if rollback and abort:
        raise ConfigError("--rollback and --abort exclude each other")
    options = ReindexOptions(
        source=source,
        paths=tuple(paths),
        keep=keep,
        rollback=rollback,
        abort=abort,
        tolerance=tolerance,
        ack_timeout_s=ack_timeout_s,
        pause_at=pause_at or None,
        pause_s=pause_s,
    )
    settings = load(config_path, log_level=log_level)
    click.echo(reindex(settings, stream_name, options).summary())
