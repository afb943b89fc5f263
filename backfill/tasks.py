"""Thin Luigi shells over :mod:`backfill.chunk`: one task per chunk, complete in the ledger.

Run them through ``backfill kafka|files`` or directly::

    luigi --module backfill.tasks KafkaBackfill --stream orders \\
        --since 2026-01-01 --until 2026-01-02 --chunk 1h --local-scheduler
    luigi --module backfill.tasks FileBackfill --stream orders --path /data/orders \\
        --scheduler-url http://luigid:8082 --workers 4

Parameters say *what* to copy — stream name, ranges, index, the config file's path — and are
shown by luigid and stored in its task history, so they never hold a credential: a task
loads its settings at run time (:func:`backfill.context.task_settings`). Parameters that do
not change what a chunk is (offset hints, run id, config path) are ``significant=False``, so
they do not change the task id that names the chunk's ledger row.

The ``[backfill]`` section of luigi.cfg (or ``--backfill-retries`` etc.) sets the retry
policy: ``retries`` re-runs of a failed chunk by Luigi (after the scheduler's
``retry_delay``) and ``lock_wait_s``, how long a chunk another backfill holds is waited for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import luigi

from backfill.chunk import (
    ChunkSource,
    ChunkSpec,
    FileChunkSource,
    KafkaChunkSource,
    run_chunk,
)
from backfill.context import task_settings
from backfill.files import check_stream_for_files, count_records, describe_files, find_files
from backfill.kafka_range import (
    KafkaChunkPlan,
    TimeWindow,
    choose_partitions,
    format_instant,
    parse_duration,
    parse_instant,
    parse_partitions,
    plan_offset_chunks,
    plan_time_chunks,
    split_windows,
)
from backfill.skew import format_rate
from backfill.targets import LedgerChunkTarget
from ingest.kafka.ranges import KafkaRangeReader
from ingest.ledger import ChunkTiming
from ingest.pipeline.wiring import Components, open_components
from ingest.settings import Settings, StreamSettings

#: Seconds between two progress reports of a running chunk to the scheduler.
PROGRESS_EVERY_S = 1.0


class BackfillConfig(luigi.Config):
    """The ``[backfill]`` luigi.cfg section: retry policy shared by every chunk task."""

    @classmethod
    def get_task_family(cls) -> str:
        """Luigi names a config section after the class; this one's section is ``[backfill]``."""
        return "backfill"

    retries = luigi.IntParameter(
        default=1, description="Times Luigi re-runs a failed chunk (after retry_delay)."
    )
    lock_wait_s = luigi.FloatParameter(
        default=3600.0,
        description="Seconds to wait for a chunk another backfill is running.",
    )


class InstantParameter(luigi.Parameter):
    """An ISO 8601 instant normalized to canonical UTC, so ``+00:00`` and ``Z`` are one chunk."""

    def normalize(self, x: Any) -> str:
        return format_instant(parse_instant(str(x)))


class ChunkTask(luigi.Task):
    """One chunk of one stream; complete when its ledger row is ``done``."""

    stream = luigi.Parameter(description="Stream name in the settings.")
    index = luigi.Parameter(
        default="", description="Physical index to write; empty: the stream's alias."
    )
    config = luigi.Parameter(
        default="", significant=False, description="Settings file path (never secrets)."
    )
    run_id = luigi.IntParameter(
        default=-1, significant=False, description="Ledger run to add counters to."
    )

    @property
    def retry_count(self) -> int:
        """Failures before the scheduler disables the task: the first run plus the retries."""
        return int(BackfillConfig().retries) + 1  # type: ignore[no-untyped-call]

    @property
    def size(self) -> int:
        """Records this chunk is expected to read (for progress)."""
        return 0

    def label(self) -> str:
        raise NotImplementedError

    def output(self) -> LedgerChunkTarget:
        return LedgerChunkTarget(self.task_id, self.config)

    def make_source(
        self, settings: Settings, stream: StreamSettings, components: Components
    ) -> ChunkSource:
        raise NotImplementedError

    def run(self) -> None:
        settings = task_settings(self.config)
        stream = settings.stream(self.stream)
        spec = ChunkSpec(
            task_id=self.task_id,
            family=self.get_task_family(),  # type: ignore[no-untyped-call]
            stream=stream,
            params=self.to_str_params(),  # type: ignore[no-untyped-call]
            label=self.label(),
            index=self.index or None,
        )
        progress = _LuigiProgress(self)
        with open_components(settings) as components:
            source = self.make_source(settings, stream, components)
            result = run_chunk(
                components,
                spec,
                source,
                run_id=self.run_id if self.run_id >= 0 else None,
                lock_wait_s=float(BackfillConfig().lock_wait_s),  # type: ignore[no-untyped-call]
                on_progress=progress,
            )
        if result.timing is not None:
            progress.finished(result.timing)


class KafkaTimeChunk(ChunkTask):
    """Records of one partition whose timestamps fall in ``[since, until)``."""

    partition = luigi.IntParameter()
    since = InstantParameter(description="Window start, ISO 8601 (UTC unless an offset).")
    until = InstantParameter(description="Window end (exclusive).")
    start_offset = luigi.IntParameter(
        default=-1, significant=False, description="Planned first offset; -1: look it up."
    )
    end_offset = luigi.IntParameter(
        default=-1, significant=False, description="Planned end offset; -1: look it up."
    )
    lateness = luigi.Parameter(
        default="1m", significant=False, description="Out-of-order allowance past the window."
    )

    @property
    def size(self) -> int:
        return max(0, int(self.end_offset) - int(self.start_offset))

    def label(self) -> str:
        return f"{self.stream} p{self.partition} {self.since}..{self.until}"

    def make_source(
        self, settings: Settings, stream: StreamSettings, components: Components
    ) -> ChunkSource:
        reader = KafkaRangeReader(settings)
        window = TimeWindow(parse_instant(self.since), parse_instant(self.until))
        if self.start_offset >= 0 and self.end_offset >= 0:
            plan = KafkaChunkPlan(
                stream.topic, self.partition, self.start_offset, self.end_offset, window
            )
        else:
            plans = plan_time_chunks(
                reader,
                stream.topic,
                [self.partition],
                [window],
                lateness_ms=parse_duration(self.lateness),
            )
            # A window the broker says holds no records plans no chunk: read nothing.
            plan = plans[0] if plans else KafkaChunkPlan(stream.topic, self.partition, 0, 0, window)
        return KafkaChunkSource(reader, plan)


class KafkaOffsetChunk(ChunkTask):
    """Every record of one partition in ``[start_offset, end_offset)`` (a reindex copy)."""

    partition = luigi.IntParameter()
    start_offset = luigi.IntParameter()
    end_offset = luigi.IntParameter()

    @property
    def size(self) -> int:
        return max(0, int(self.end_offset) - int(self.start_offset))

    def label(self) -> str:
        return f"{self.stream} p{self.partition} offsets {self.start_offset}..{self.end_offset}"

    def make_source(
        self, settings: Settings, stream: StreamSettings, components: Components
    ) -> ChunkSource:
        plan = KafkaChunkPlan(stream.topic, self.partition, self.start_offset, self.end_offset)
        return KafkaChunkSource(KafkaRangeReader(settings), plan)


class AvroFileChunk(ChunkTask):
    """One Avro object container file, named by path and content hash."""

    path = luigi.Parameter(description="Absolute path of the .avro file.")
    sha256 = luigi.Parameter(description="sha256 of the file's content when planned.")
    records = luigi.IntParameter(
        default=-1, significant=False, description="Records in the file (for progress)."
    )

    @property
    def size(self) -> int:
        return max(0, int(self.records))

    def label(self) -> str:
        return f"{self.stream} file {self.path} ({self.sha256[:12]})"

    def make_source(
        self, settings: Settings, stream: StreamSettings, components: Components
    ) -> ChunkSource:
        check_stream_for_files(stream)
        path = Path(self.path)
        records = self.records if self.records >= 0 else count_records(path)
        reader = components.catalog.latest(stream.subject)
        return FileChunkSource(path, self.sha256, reader, records)


class _LuigiProgress:
    """Reports a chunk's progress to the scheduler (luigid's UI), at most once a second."""

    def __init__(self, task: luigi.Task) -> None:
        self._task = task
        self._last = 0.0

    def __call__(self, read: int, size: int, counts: Mapping[str, int]) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY_S and read < size:
            return
        self._last = now
        percent = 100 if size <= 0 else min(100, read * 100 // size)
        message = (
            f"{read}/{size} records read, {counts.get('indexed', 0)} indexed, "
            f"{counts.get('dead_lettered', 0)} dead-lettered"
        )
        self._report(percent, message)

    def finished(self, timing: ChunkTiming) -> None:
        """The chunk's last word in luigid: what it cost (the run may flag it skewed later)."""
        rate = timing.duration_s / timing.records if timing.records else None
        self._report(
            100,
            f"done: {timing.records} records ({timing.read_bytes} bytes) read in "
            f"{timing.duration_s:.2f}s, {format_rate(rate)}",
        )

    def _report(self, percent: int, message: str) -> None:
        set_percentage = getattr(self._task, "set_progress_percentage", None)
        set_message = getattr(self._task, "set_status_message", None)
        if callable(set_percentage):
            set_percentage(percent)
        if callable(set_message):
            set_message(message)


# -- planning: the chunk tasks of a whole backfill -------------------------------------------


def kafka_time_tasks(
    settings: Settings,
    stream: StreamSettings,
    *,
    since_ms: int,
    until_ms: int,
    chunk_ms: int,
    partitions: list[int] | None = None,
    lateness_ms: int = 60_000,
    index: str = "",
    config: str = "",
    run_id: int = -1,
) -> list[KafkaTimeChunk]:
    """One :class:`KafkaTimeChunk` per partition x window, offsets planned now (blocks for a
    few broker round trips)."""
    windows = split_windows(since_ms, until_ms, chunk_ms)
    reader = KafkaRangeReader(settings)
    parts = choose_partitions(reader.partitions(stream.topic), partitions)
    plans = plan_time_chunks(reader, stream.topic, parts, windows, lateness_ms=lateness_ms)
    lateness = f"{lateness_ms}ms"
    return [
        KafkaTimeChunk(  # type: ignore[no-untyped-call]
            stream=stream.name,
            partition=plan.partition,
            since=plan.window.since if plan.window else "",
            until=plan.window.until if plan.window else "",
            start_offset=plan.start_offset,
            end_offset=plan.end_offset,
            lateness=lateness,
            index=index,
            config=config,
            run_id=run_id,
        )
        for plan in plans
    ]


def kafka_offset_tasks(
    stream: StreamSettings,
    end_offsets: Mapping[int, int],
    *,
    start_offsets: Mapping[int, int] | None = None,
    max_chunk_offsets: int | None = None,
    index: str = "",
    config: str = "",
    run_id: int = -1,
) -> list[KafkaOffsetChunk]:
    """One :class:`KafkaOffsetChunk` per partition (or per ``max_chunk_offsets`` piece)."""
    plans = plan_offset_chunks(
        stream.topic,
        end_offsets,
        start_offsets=start_offsets,
        max_chunk_offsets=max_chunk_offsets,
    )
    return [
        KafkaOffsetChunk(  # type: ignore[no-untyped-call]
            stream=stream.name,
            partition=plan.partition,
            start_offset=plan.start_offset,
            end_offset=plan.end_offset,
            index=index,
            config=config,
            run_id=run_id,
        )
        for plan in plans
    ]


def file_tasks(
    stream: StreamSettings,
    path: str,
    *,
    index: str = "",
    config: str = "",
    run_id: int = -1,
) -> list[AvroFileChunk]:
    """One :class:`AvroFileChunk` per file found at ``path`` (hashes every file)."""
    check_stream_for_files(stream)
    return [
        AvroFileChunk(  # type: ignore[no-untyped-call]
            stream=stream.name,
            path=f.path,
            sha256=f.sha256,
            records=f.records,
            index=index,
            config=config,
            run_id=run_id,
        )
        for f in describe_files(find_files(path))
    ]


class KafkaBackfill(luigi.WrapperTask):
    """A whole time backfill for ``luigi --module backfill.tasks``: plans, then its chunks."""

    stream = luigi.Parameter()
    since = InstantParameter()
    until = InstantParameter()
    partitions = luigi.Parameter(default="", description="e.g. 0,1; empty: all.")
    chunk = luigi.Parameter(default="1h", description="Window length, e.g. 30m, 1h, 1d.")
    lateness = luigi.Parameter(default="1m", significant=False)
    index = luigi.Parameter(default="")
    config = luigi.Parameter(default="", significant=False)
    run_id = luigi.IntParameter(default=-1, significant=False)

    @cached_property
    def _chunks(self) -> list[KafkaTimeChunk]:
        settings = task_settings(self.config)
        stream = settings.stream(self.stream)
        return kafka_time_tasks(
            settings,
            stream,
            since_ms=parse_instant(self.since),
            until_ms=parse_instant(self.until),
            chunk_ms=parse_duration(self.chunk),
            partitions=parse_partitions(self.partitions),
            lateness_ms=parse_duration(self.lateness),
            index=self.index,
            config=self.config,
            run_id=self.run_id,
        )

    def requires(self) -> list[KafkaTimeChunk]:
        return self._chunks


class FileBackfill(luigi.WrapperTask):
    """A whole archive-file backfill for ``luigi --module backfill.tasks``."""

    stream = luigi.Parameter()
    path = luigi.Parameter(description="Directory (searched for *.avro) or glob.")
    index = luigi.Parameter(default="")
    config = luigi.Parameter(default="", significant=False)
    run_id = luigi.IntParameter(default=-1, significant=False)

    @cached_property
    def _chunks(self) -> list[AvroFileChunk]:
        settings = task_settings(self.config)
        return file_tasks(
            settings.stream(self.stream),
            self.path,
            index=self.index,
            config=self.config,
            run_id=self.run_id,
        )

    def requires(self) -> list[AvroFileChunk]:
        return self._chunks
