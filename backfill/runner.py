"""Running a whole backfill: plan its chunks, run them with Luigi, summarize from the ledger.

This is the programmatic API (the ``backfill`` CLI and the reindexer call it):

- :func:`run_kafka_backfill` — a time range of a stream's topic, or (for a reindex) every
  record from the earliest offset up to given per-partition end offsets;
- :func:`run_file_backfill` — Avro object container files.

Each call starts a ledger run (kind ``backfill``) whose counters every chunk's flushes add to,
runs the chunk tasks with Luigi (in-process scheduler by default, or a central ``luigid``),
and returns a :class:`BackfillSummary` built from the ledger: which chunks this run copied,
which were already done (skipped), which failed and why, and which were skewed — far slower
per record than the run's median (:mod:`backfill.skew`; the verdict is also stored in the
chunk rows, logged as ``chunk_skewed`` and sent to the scheduler as the task's status
message). Chunks already done are not run again; ``force`` marks them for re-run first.

The settings passed in are installed for the tasks of this process and its forked workers
(:func:`backfill.context.use_settings`); they never become Luigi parameters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import luigi
import luigi.configuration
import luigi.interface
import structlog

from backfill.chunk import owner_suffix
from backfill.context import use_settings
from backfill.files import check_stream_for_files
from backfill.kafka_range import parse_instant
from backfill.progress import LedgerProgress, ProgressMode, make_view
from backfill.skew import ChunkCost, SkewPolicy, SkewReport, format_rate, judge_skew, render_report
from backfill.tasks import ChunkTask, file_tasks, kafka_offset_tasks, kafka_time_tasks
from ingest.avro.catalog import SchemaCatalog
from ingest.errors import ConfigError
from ingest.ledger import ChunkRow, ChunkSkew, PostgresLedger
from ingest.search.client import connect_search
from ingest.settings import Settings, StreamSettings

log = structlog.get_logger(__name__)

BackfillKind = Literal["kafka", "kafka-offsets", "files"]


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run the chunks (not what they are).

    ``retries``: re-runs of a failed chunk by Luigi, ``retry_delay_s`` apart (the in-process
    scheduler's ``retry_delay``; a central luigid uses its own). ``lock_wait_s``: how long a
    chunk another backfill holds is waited for. ``config_path`` is handed to the tasks for
    workers that do not inherit this process's settings (other machines on a luigid).
    ``skew``: which chunks the summary flags as skewed.
    """

    workers: int = 1
    scheduler_url: str | None = None
    force: bool = False
    retries: int = 1
    retry_delay_s: float = 5.0
    lock_wait_s: float = 3600.0
    progress: ProgressMode = "none"
    config_path: str = ""
    skew: SkewPolicy = field(default_factory=SkewPolicy)


@dataclass(frozen=True, slots=True)
class ChunkFailure:
    task_id: str
    label: str
    error: str


@dataclass(slots=True)
class BackfillSummary:
    """The outcome of one backfill run, for the closing lines and for callers.

    ``chunks_done`` were copied by this run; ``chunks_skipped`` were done before (or by a
    concurrent backfill); ``chunks_failed`` did not finish, each listed in ``failures``.
    Record counts are this run's: ``records_read`` includes ``records_outside_window``
    (records of a chunk's offset range stamped outside its time window, skipped);
    ``conflicts`` are writes the index already had at an equal or newer version. ``skew``
    judges the chunks this run ran (None when it ran none).
    """

    stream: str
    kind: BackfillKind
    run_id: int | None
    chunks_total: int
    chunks_done: int = 0
    chunks_skipped: int = 0
    chunks_failed: int = 0
    records_read: int = 0
    records_indexed: int = 0
    records_deleted: int = 0
    records_dead_lettered: int = 0
    records_outside_window: int = 0
    conflicts: int = 0
    duration_s: float = 0.0
    failures: list[ChunkFailure] = field(default_factory=list)
    skew: SkewReport | None = None

    @property
    def ok(self) -> bool:
        return self.chunks_failed == 0

    def render(self) -> list[str]:
        """The closing summary, one fact per line."""
        lines = [
            f"backfill {self.kind} {self.stream}: {self.chunks_total} chunks: "
            f"{self.chunks_done} done, {self.chunks_skipped} skipped (already done), "
            f"{self.chunks_failed} failed in {self.duration_s:.1f}s",
            f"records: {self.records_read} read, {self.records_indexed} indexed, "
            f"{self.records_deleted} deleted (tombstones), "
            f"{self.records_dead_lettered} dead-lettered, "
            f"{self.records_outside_window} outside the time window, "
            f"{self.conflicts} no-ops (the index already had that version or a newer one)",
        ]
        if self.failures:
            lines.append("failed chunks:")
            lines += [f"  {f.label} [{f.task_id}]: {f.error}" for f in self.failures]
        if self.skew is not None:
            lines += render_report(self.skew)
        return lines


def run_kafka_backfill(
    settings: Settings,
    stream: str,
    *,
    index: str | None = None,
    since: dt.datetime | str | None = None,
    until: dt.datetime | str | None = None,
    end_offsets: Mapping[int, int] | None = None,
    start_offsets: Mapping[int, int] | None = None,
    partitions: Sequence[int] | None = None,
    chunk: dt.timedelta = dt.timedelta(hours=1),
    lateness: dt.timedelta = dt.timedelta(minutes=1),
    max_chunk_offsets: int | None = None,
    workers: int = 1,
    options: RunOptions | None = None,
) -> BackfillSummary:
    """Copy records of ``stream``'s topic into ``index`` (default: the stream's alias).

    Two modes; give exactly one:

    - **time range**: ``since`` and ``until`` (aware datetimes or ISO 8601 strings; naive
      means UTC). One chunk per partition x ``chunk`` window; a record is copied when its
      Kafka timestamp is in ``[since, until)``. Records up to ``lateness`` out of timestamp
      order are still found.
    - **offsets** (the reindex handoff): ``end_offsets`` maps partition -> end offset
      (exclusive); every record from ``start_offsets`` (default: the earliest, 0) up to it is
      copied, with no timestamp filter. One chunk per partition, or pieces of at most
      ``max_chunk_offsets`` offsets. Partitions missing from ``end_offsets`` (or with
      nothing to copy) get no chunk. The same end offsets name the same chunks, so calling
      again after a crash resumes: finished chunks are skipped.

    ``partitions`` limits either mode. ``index``, if given, must exist (a reindex creates
    it first); writes to it carry the records' external versions like the daemon's, so they
    never overwrite a newer document the daemon dual-wrote. ``workers`` parallel Luigi
    worker processes (forked; each chunk opens its own connections).

    Blocks until every chunk finished or failed. Raises ConfigError (nothing run) for an
    unknown stream, topic, partition or index, or a bad range; chunk failures do not raise —
    they are in the summary (``summary.ok`` is False).
    """
    started = time.monotonic()
    opts = _with_workers(options, workers)
    spec = settings.stream(stream)
    _check_index(settings, index)
    time_mode = since is not None or until is not None
    if time_mode == (end_offsets is not None):
        raise ConfigError("give either since and until, or end_offsets")
    tasks: Sequence[ChunkTask]
    if end_offsets is not None:
        ends = {
            int(p): int(o)
            for p, o in end_offsets.items()
            if partitions is None or int(p) in set(partitions)
        }
        tasks = kafka_offset_tasks(
            spec,
            ends,
            start_offsets=start_offsets,
            max_chunk_offsets=max_chunk_offsets,
            index=index or "",
            config=opts.config_path,
        )
        kind: BackfillKind = "kafka-offsets"
    else:
        if since is None or until is None:
            raise ConfigError("a time backfill needs both since and until")
        since_ms = _instant_ms(since)
        _check_delete_retention(settings, since_ms)
        tasks = kafka_time_tasks(
            settings,
            spec,
            since_ms=since_ms,
            until_ms=_instant_ms(until),
            chunk_ms=_duration_ms(chunk),
            partitions=list(partitions) if partitions is not None else None,
            lateness_ms=_duration_ms(lateness, allow_zero=True),
            index=index or "",
            config=opts.config_path,
        )
        kind = "kafka"
    return _execute(settings, spec, kind, tasks, opts, started)


def _check_delete_retention(
    settings: Settings, since_ms: int, *, now_s: float | None = None
) -> None:
    """Refuse a window reaching back past the ledger's memory of deletes.

    Delete markers are purged after ``[ledger] delete_marker_retention_s``; a record older
    than that may be an older version of a document deleted and forgotten since, which the
    backfill would re-create. Refused (not warned) because the damage is silent: raise the
    retention, or start the window later.
    """
    retention_s = settings.ledger.delete_marker_retention_s
    horizon_ms = int(((time.time() if now_s is None else now_s) - retention_s) * 1000)
    if since_ms < horizon_ms:
        since = dt.datetime.fromtimestamp(since_ms / 1000, dt.UTC).isoformat(timespec="seconds")
        raise ConfigError(
            f"backfill window starts at {since}, further back than the ledger remembers deletes"
            f" ([ledger] delete_marker_retention_s = {retention_s:g}s): older versions of"
            " documents deleted before then would be indexed again; start later or raise the"
            " retention"
        )


def run_file_backfill(
    settings: Settings,
    stream: str,
    path: str,
    *,
    index: str | None = None,
    workers: int = 1,
    options: RunOptions | None = None,
) -> BackfillSummary:
    """Copy the records of the Avro object container files at ``path`` (a directory searched
    for ``*.avro``, a glob, or one file) into ``index`` (default: the stream's alias).

    One chunk per file, named by path and sha256: an unchanged file that was done is skipped,
    a changed one runs again. ConfigError (nothing run) for a stream versioned by the Kafka
    offset or keyed by the Kafka key, no files found, or a missing index.
    """
    started = time.monotonic()
    opts = _with_workers(options, workers)
    spec = settings.stream(stream)
    check_stream_for_files(spec)
    SchemaCatalog.load(settings.schemas_dir).latest(spec.subject)
    _check_index(settings, index)
    tasks = file_tasks(spec, path, index=index or "", config=opts.config_path)
    return _execute(settings, spec, "files", tasks, opts, started)


def _with_workers(options: RunOptions | None, workers: int) -> RunOptions:
    opts = options or RunOptions()
    if workers != 1 and opts.workers == 1:
        opts = dataclasses.replace(opts, workers=workers)
    if opts.workers < 1:
        raise ConfigError("workers must be at least 1")
    return opts


def _instant_ms(value: dt.datetime | str) -> int:
    if isinstance(value, str):
        return parse_instant(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def _duration_ms(value: dt.timedelta, *, allow_zero: bool = False) -> int:
    ms = int(value.total_seconds() * 1000)
    if ms < 0 or (ms == 0 and not allow_zero):
        raise ConfigError(f"invalid duration {value}: must be positive")
    return ms


def _check_index(settings: Settings, index: str | None) -> None:
    if not index:
        return
    client = connect_search(settings.search)
    try:
        if not client.index_exists(index):
            raise ConfigError(f"index {index!r} does not exist (create it before backfilling)")
    finally:
        client.close()


# -- running the tasks --------------------------------------------------------------------


def _execute(
    settings: Settings,
    stream: StreamSettings,
    kind: BackfillKind,
    planned: Sequence[ChunkTask],
    opts: RunOptions,
    started: float,
) -> BackfillSummary:
    """Run the planned chunk tasks as one ledger run; ``started`` is when planning began."""
    ledger = PostgresLedger.from_settings(settings.ledger, max_size=2)
    try:
        ledger.migrate()
        ids = [t.task_id for t in planned]
        if opts.force:
            ledger.reset_chunks(stream.name, task_ids=ids)
        rows = _rows(ledger, stream.name, ids)
        done_before = {tid for tid, row in rows.items() if row.status == "done"}
        run_id = ledger.start_run(
            "backfill",
            stream.name,
            {"kind": kind, "chunks": len(ids), "workers": opts.workers, "force": opts.force},
        )
        tasks: list[ChunkTask] = [t.clone(run_id=run_id) for t in planned]  # type: ignore[no-untyped-call]
        total = sum(t.size for t in tasks if t.task_id not in done_before)
        log.info(
            "backfill_started",
            stream=stream.name,
            kind=kind,
            run_id=run_id,
            chunks=len(tasks),
            already_done=len(done_before),
        )
        progress = None
        if opts.progress != "none":
            progress = LedgerProgress(
                ledger,
                make_view(opts.progress),
                run_id=run_id,
                stream=stream.name,
                task_ids=[tid for tid in ids if tid not in done_before],
                records_total=total,
            ).start()
        status = "stopped"
        try:
            with use_settings(settings):
                scheduler = _build(tasks, opts)
            summary = _summarize(ledger, stream.name, kind, run_id, tasks, scheduler)
            summary.skew = _judge_chunks(ledger, stream.name, run_id, tasks, opts.skew, scheduler)
            status = "succeeded" if summary.ok else "failed"
        finally:
            if progress is not None:
                progress.stop()
            ledger.finish_run(
                run_id, status, error=None if status != "failed" else "some chunks failed"
            )
        summary.duration_s = time.monotonic() - started
        log.info(
            "backfill_finished",
            stream=stream.name,
            run_id=run_id,
            done=summary.chunks_done,
            skipped=summary.chunks_skipped,
            failed=summary.chunks_failed,
            skewed=len(summary.skew.skewed) if summary.skew is not None else 0,
            duration_s=round(summary.duration_s, 3),
        )
        return summary
    finally:
        ledger.close()


def _rows(ledger: PostgresLedger, stream: str, ids: Sequence[str]) -> dict[str, ChunkRow]:
    wanted = set(ids)
    return {r.task_id: r for r in ledger.chunks(stream=stream) if r.task_id in wanted}


class _Factory(luigi.interface._WorkerSchedulerFactory):
    """Luigi's default factory, keeping the scheduler to ask it for task errors afterwards."""

    scheduler: Any = None

    def create_local_scheduler(self) -> Any:
        self.scheduler = super().create_local_scheduler()  # type: ignore[no-untyped-call]
        return self.scheduler

    def create_remote_scheduler(self, url: str) -> Any:
        self.scheduler = super().create_remote_scheduler(url)  # type: ignore[no-untyped-call]
        return self.scheduler


def _configure_luigi(opts: RunOptions) -> None:
    """Process-wide Luigi settings for this run (Luigi reads them when the worker starts)."""
    cfg = luigi.configuration.get_config()  # type: ignore[no-untyped-call]
    values = {
        # Our logging (structlog, redacted) is already set up: Luigi must not add handlers.
        "core": {"no_configure_logging": "true"},
        # Stay alive while a failed chunk waits for its retry, but not forever.
        "worker": {
            "keep_alive": "true",
            "max_keep_alive_idle_duration": f"{int(opts.retry_delay_s) + 10} seconds",
            "wait_interval": "0.2",
            "wait_jitter": "0.3",
        },
        "scheduler": {"retry_delay": str(opts.retry_delay_s)},
        "backfill": {"retries": str(opts.retries), "lock_wait_s": str(opts.lock_wait_s)},
    }
    for section, items in values.items():
        if not cfg.has_section(section):
            cfg.add_section(section)
        for key, value in items.items():
            cfg.set(section, key, value)


def _build(tasks: list[ChunkTask], opts: RunOptions) -> Any:
    """Run ``tasks`` with Luigi; the scheduler used (to ask it why tasks failed), if any."""
    if not tasks:
        return None
    _configure_luigi(opts)
    factory = _Factory()
    env: dict[str, Any] = {"workers": opts.workers, "log_level": "WARNING"}
    if opts.scheduler_url:
        env.update(local_scheduler=False, scheduler_url=opts.scheduler_url)
    else:
        env["local_scheduler"] = True
    luigi.build(tasks, worker_scheduler_factory=factory, detailed_summary=True, **env)  # type: ignore[no-untyped-call]
    return factory.scheduler


def _luigi_error(scheduler: Any, task_id: str) -> str | None:
    """The last line of the error Luigi recorded for a task (its exception), if any."""
    if scheduler is None:
        return None
    try:
        found = scheduler.fetch_error(task_id)
    except Exception as exc:  # noqa: BLE001 - the scheduler may be gone; errors are a nicety
        log.debug("fetch_error_failed", error=str(exc))
        return None
    text = str((found or {}).get("error") or "").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _judge_chunks(
    ledger: PostgresLedger,
    stream: str,
    run_id: int,
    tasks: Sequence[ChunkTask],
    policy: SkewPolicy,
    scheduler: Any,
) -> SkewReport | None:
    """Judge the chunks this run finished for skew; store, log and report the verdicts.

    Only chunks this run copied count (``done`` by this run, with timing): a chunk skipped
    as already done was measured by another run, against another median, and a failed
    chunk's time is mostly its retry budget running out — it is listed with its error
    instead, its timing kept in its row but not judged. The verdicts go to
    the ledger rows, to the log (``chunk_skewed``) and, for the skewed ones, to the
    scheduler as the task's status message — luigid shows it in its UI and API (its task
    history database keeps only task events and parameters, never status messages).
    """
    labels = {t.task_id: t.label() for t in tasks}
    rows = _rows(ledger, stream, list(labels))
    costs = [
        ChunkCost(tid, labels[tid], row.duration_s, row.records, row.read_bytes or 0)
        for tid, row in rows.items()
        if row.run_id == run_id
        and row.status == "done"
        and row.duration_s is not None
        and row.records is not None
    ]
    if not costs:
        return None
    report = judge_skew(costs, policy)
    ledger.record_chunk_skew(
        run_id, [ChunkSkew(v.chunk.task_id, v.ratio, v.skewed) for v in report.verdicts]
    )
    for verdict in report.skewed:
        chunk, params = verdict.chunk, rows[verdict.chunk.task_id].params
        log.warning(
            "chunk_skewed",
            stream=stream,
            run_id=run_id,
            task_id=chunk.task_id,
            chunk=chunk.label,
            partition=params.get("partition"),
            window=_window(params),
            duration_s=round(chunk.duration_s, 3),
            records=chunk.records,
            read_bytes=chunk.read_bytes,
            s_per_record=chunk.s_per_record,
            median_s_per_record=report.median_s_per_record,
            ratio=round(verdict.ratio or 0.0, 2),
            factor=policy.factor,
        )
        _tell_scheduler(
            scheduler,
            chunk.task_id,
            f"SKEWED: {format_rate(chunk.s_per_record)}, {verdict.ratio or 0.0:.1f}x the run's"
            f" median of {format_rate(report.median_s_per_record)} (factor {policy.factor:g});"
            f" {chunk.records} records in {chunk.duration_s:.2f}s",
        )
    return report


def _window(params: Mapping[str, Any]) -> str | None:
    """A chunk's window as ``since..until`` (time chunks) or ``offsets a..b``; else None."""
    if params.get("since") and params.get("until"):
        return f"{params['since']}..{params['until']}"
    if "start_offset" in params and "end_offset" in params:
        return f"offsets {params['start_offset']}..{params['end_offset']}"
    return None


def _tell_scheduler(scheduler: Any, task_id: str, message: str) -> None:
    """Set a finished task's status message in the scheduler; a gone scheduler is logged."""
    if scheduler is None:
        return
    try:
        scheduler.set_task_status_message(task_id, message)
    except Exception as exc:  # noqa: BLE001 - luigid may be gone; the ledger has the verdict
        log.warning("scheduler_status_message_failed", task_id=task_id, error=str(exc))


def _summarize(
    ledger: PostgresLedger,
    stream: str,
    kind: BackfillKind,
    run_id: int,
    tasks: Sequence[ChunkTask],
    scheduler: Any,
) -> BackfillSummary:
    rows = _rows(ledger, stream, [t.task_id for t in tasks])
    run = ledger.run(run_id)
    counters = run.counters if run is not None else {}
    summary = BackfillSummary(stream=stream, kind=kind, run_id=run_id, chunks_total=len(tasks))
    mine = owner_suffix(run_id)
    for task in tasks:
        row = rows.get(task.task_id)
        if row is not None and row.status == "done":
            if (row.locked_by or "").endswith(mine):
                summary.chunks_done += 1
            else:
                summary.chunks_skipped += 1
            continue
        summary.chunks_failed += 1
        error = (row.error if row is not None else None) or _luigi_error(scheduler, task.task_id)
        if not error:
            error = (
                "still running in another backfill"
                if row is not None and row.status == "running"
                else "not run (see the log above)"
            )
        summary.failures.append(ChunkFailure(task.task_id, task.label(), error))
    summary.records_indexed = int(counters.get("indexed", 0))
    summary.records_deleted = int(counters.get("deleted", 0))
    summary.records_dead_lettered = int(counters.get("dead_lettered", 0))
    summary.records_outside_window = int(counters.get("skipped", 0))
    summary.records_read = int(counters.get("consumed", 0)) + summary.records_outside_window
    summary.conflicts = int(counters.get("conflicts", 0))
    return summary


__all__ = [
    "BackfillSummary",
    "ChunkFailure",
    "RunOptions",
    "run_file_backfill",
    "run_kafka_backfill",
]
