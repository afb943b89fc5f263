"""Running one backfill chunk: lock it in the ledger, copy its records, record the outcome.

A chunk is a bounded run of records (a partition's offset range in a time window, or one
archive file). :func:`run_chunk` is everything a Luigi task does, without Luigi::

    1. lock     ledger.try_lock_chunk — a session advisory lock, so two backfills over the
                same chunk never run it at once; a chunk another process holds is waited
                for (it usually ends ``done``, and then there is nothing to do)
    2. copy     read -> keep records of the chunk's window -> RecordProcessor -> Batch ->
                BatchWriter write, then commit (offsets=[]): the daemon's own pipeline, dead
                letters and run counters committed in the same ledger transaction; with the
                stream's ``max_in_flight`` above 1 several batches write at once and commit
                in read order (:mod:`ingest.pipeline.inflight`)
    3. finish   ledger.finish_chunk: ``done`` with its counts, or ``failed`` with the error;
                either way with what the copy cost (duration, records read, raw bytes read),
                which the run compares across its chunks (:mod:`backfill.skew`)

Transient errors (broker, ledger) are retried inside the chunk with the project's one retry
policy: the copy resumes from the last committed batch, and a fresh retry budget starts
whenever records were flushed since the last failure, so a long chunk is not failed by two
hiccups an hour apart. Re-writing a flushed record is harmless anyway: every write carries
the record's external version and dead letters are unique per record.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from backfill.files import read_records, sha256_of
from backfill.kafka_range import KafkaChunkPlan
from ingest.avro.catalog import SchemaVersion
from ingest.errors import ConfigError, FatalError, IngestError, TransientError
from ingest.kafka.ranges import KafkaRangeReader, OffsetRange
from ingest.ledger import ChunkTiming
from ingest.pipeline.batch import Batch, FlushPolicy
from ingest.pipeline.inflight import InFlight, limit_for
from ingest.pipeline.process import BatchWriter, RecordProcessor, Written
from ingest.pipeline.wiring import Components, build_pipeline
from ingest.retry import retrying
from ingest.search.indices import IndexRouter, ensure_live_index
from ingest.settings import StreamSettings
from ingest.types import RawRecord

log = structlog.get_logger(__name__)

#: How often a chunk held by another backfill is looked at again.
LOCK_POLL_S = 0.5

#: Called after each flush with (records read so far, records expected, counts so far).
ProgressFn = Callable[[int, int, Mapping[str, int]], None]


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    """Which chunk: its ledger identity (the Luigi task id) and where it writes.

    ``params`` are stored in the ledger row, so they hold no secret (the ledger scrubs
    secret-looking keys anyway). ``index`` is an explicit physical index; ``None`` writes
    to the stream's alias (and to an index a reindex is building, as the daemon does).
    """

    task_id: str
    family: str
    stream: StreamSettings
    params: Mapping[str, Any]
    label: str
    index: str | None = None


class ChunkSource(Protocol):
    """The records of one chunk, re-readable from any position (a record's ``offset``)."""

    #: Position of the first record.
    start: int
    #: Records expected (for progress; may over-count when the log has gaps).
    size: int

    def read(self, position: int, batch_records: int) -> Iterator[list[RawRecord]]:
        """Records with ``offset >= position`` in order, in lists; raises TransientError for
        broker trouble."""
        ...

    def keep(self, record: RawRecord) -> bool:
        """Whether ``record`` belongs to this chunk (its time window); others are skipped."""
        ...


class KafkaChunkSource:
    """A partition's offset range, read with ``assign()`` (never a consumer group)."""

    def __init__(self, reader: KafkaRangeReader, plan: KafkaChunkPlan) -> None:
        self._reader = reader
        self._plan = plan
        self.start = plan.start_offset
        self.size = plan.size

    def read(self, position: int, batch_records: int) -> Iterator[list[RawRecord]]:
        rng = OffsetRange(self._plan.topic, self._plan.partition, position, self._plan.end_offset)
        return self._reader.read(rng, batch_records=batch_records)

    def keep(self, record: RawRecord) -> bool:
        window = self._plan.window
        return window is None or window.contains(record.timestamp_ms)


class FileChunkSource:
    """One Avro object container file, refused if its content changed since it was planned.

    The file is checked on the first :meth:`read`, inside the chunk's copy, so a file gone,
    changed or unreadable fails its own chunk with the reason in the ledger row.
    """

    def __init__(self, path: Path, sha256: str, reader: SchemaVersion, records: int) -> None:
        self._path = path
        self._sha256 = sha256
        self._reader = reader
        self._checked = False
        self.start = 0
        self.size = records

    def _check(self) -> None:
        path = self._path
        if not path.is_file():
            raise FatalError(f"{path}: file is gone")
        actual = sha256_of(path)
        if actual != self._sha256:
            raise FatalError(
                f"{path}: content changed since the backfill was planned "
                f"(sha256 {actual[:12]}..., planned {self._sha256[:12]}...): run the backfill "
                "again"
            )
        self._checked = True

    def read(self, position: int, batch_records: int) -> Iterator[list[RawRecord]]:
        if not self._checked:
            self._check()
        return read_records(
            self._path, self._sha256, self._reader, start=position, batch_records=batch_records
        )

    def keep(self, record: RawRecord) -> bool:
        return True


@dataclass(slots=True)
class ChunkResult:
    """``done``: copied now; ``done_elsewhere``: another backfill finished it meanwhile.

    ``timing`` is what the copy cost (None when it was done elsewhere).
    """

    status: Literal["done", "done_elsewhere"]
    counts: dict[str, int] = field(default_factory=dict)
    timing: ChunkTiming | None = None


@dataclass(slots=True)
class _Read:
    """One batch of the chunk and where reading continues once it is committed."""

    batch: Batch
    skipped: int
    next_position: int
    #: Raw bytes read for this batch, skipped records included (the chunk's cost).
    read_bytes: int


class ChunkBusyError(FatalError):
    """Another process held the chunk for longer than this one was willing to wait."""


class _Progressed(IngestError):
    """A transient failure after records were flushed: retry with a fresh budget."""


def owner_suffix(run_id: int | None) -> str:
    """The end of ``locked_by`` for chunks run by ledger run ``run_id``."""
    return f" run {run_id}" if run_id is not None else ""


def owner_name(run_id: int | None = None) -> str:
    """How a chunk's ``locked_by`` names this process (and the backfill run it serves)."""
    return f"{socket.gethostname()}:{os.getpid()}{owner_suffix(run_id)}"


def describe_error(exc: BaseException) -> str:
    """One line for the ledger row and the summary: the error class and message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_chunk(
    components: Components,
    spec: ChunkSpec,
    source: ChunkSource,
    *,
    run_id: int | None = None,
    lock_wait_s: float = 3600.0,
    on_progress: ProgressFn | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ChunkResult:
    """Copy one chunk into the index (see the module docstring); blocks until done.

    Raises whatever made the chunk fail after recording it ``failed`` in the ledger;
    :class:`ChunkBusyError` (nothing recorded: the row is the other process's) when the
    chunk stayed locked by another backfill for ``lock_wait_s``.
    """
    copier = _ChunkCopy(components, spec, source, run_id=run_id, on_progress=on_progress)
    if not _lock(components, spec, lock_wait_s, owner_name(run_id), sleep=sleep, clock=clock):
        log.info("chunk_done_elsewhere", task_id=spec.task_id, chunk=spec.label)
        return ChunkResult("done_elsewhere")
    ledger = components.ledger
    started = clock()
    try:
        copier.copy(sleep=sleep)
    except BaseException as exc:
        error = describe_error(exc)
        timing = copier.timing(clock() - started)
        log.error(
            "chunk_failed",
            task_id=spec.task_id,
            chunk=spec.label,
            error=error,
            duration_s=round(timing.duration_s, 3),
        )
        try:
            ledger.finish_chunk(
                spec.task_id, "failed", copier.counts, error=error, timing=timing, run_id=run_id
            )
        except IngestError as finish_exc:
            log.error("chunk_failure_not_recorded", task_id=spec.task_id, error=str(finish_exc))
            ledger.release_chunk(spec.task_id)
        raise
    timing = copier.timing(clock() - started)
    ledger.finish_chunk(spec.task_id, "done", copier.counts, timing=timing, run_id=run_id)
    log.info(
        "chunk_done",
        task_id=spec.task_id,
        chunk=spec.label,
        duration_s=round(timing.duration_s, 3),
        read_bytes=timing.read_bytes,
        **copier.counts,
    )
    return ChunkResult("done", dict(copier.counts), timing)


def _lock(
    components: Components,
    spec: ChunkSpec,
    wait_s: float,
    owner: str,
    *,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> bool:
    """Take the chunk; False when it is (or became) done elsewhere."""
    ledger = components.ledger
    params = dict(spec.params)
    deadline = clock() + wait_s
    waited = False
    while True:
        if ledger.try_lock_chunk(spec.task_id, spec.family, spec.stream.name, params, owner):
            return True
        row = ledger.chunk(spec.task_id)
        if row is not None and row.status == "done":
            return False
        if clock() >= deadline:
            holder = row.locked_by if row is not None else "another backfill"
            raise ChunkBusyError(
                f"chunk {spec.label} is being run by {holder}; gave up waiting after {wait_s:g}s"
            )
        if not waited:
            log.info("chunk_locked_elsewhere", task_id=spec.task_id, chunk=spec.label)
            waited = True
        sleep(LOCK_POLL_S)


class _ChunkCopy:
    """The copy loop of one locked chunk; keeps the position of the last flush."""

    def __init__(
        self,
        components: Components,
        spec: ChunkSpec,
        source: ChunkSource,
        *,
        run_id: int | None,
        on_progress: ProgressFn | None,
    ) -> None:
        self._components = components
        self._spec = spec
        self._stream = spec.stream
        self._source = source
        self._run_id = run_id
        self._on_progress = on_progress
        self._settings = components.settings
        self.position = source.start
        self.counts: Counter[str] = Counter()
        #: Raw key + value bytes of the records flushed so far (read again after a retry,
        #: they are not counted twice).
        self.read_bytes = 0

    def timing(self, duration_s: float) -> ChunkTiming:
        """What the copy cost so far: records and bytes up to the last flush."""
        records = self.counts["consumed"] + self.counts["skipped"]
        return ChunkTiming(max(0.0, duration_s), records, self.read_bytes)

    def copy(self, *, sleep: Callable[[float], None]) -> None:
        targets = self._targets()
        pipeline = build_pipeline(
            self._components,
            self._stream,
            run_id=self._run_id,
            path="backfill",
        )
        budget_s = self._settings.runtime.max_retry_s
        while True:
            try:
                for attempt in retrying(
                    max_total_s=budget_s,
                    what=f"backfill chunk {self._spec.label}",
                    sleep=sleep,
                ):
                    with attempt:
                        before = self.position
                        try:
                            self._pump(pipeline.processor, pipeline.writer, targets)
                        except TransientError as exc:
                            if self.position > before:
                                raise _Progressed(str(exc)) from exc
                            raise
                return
            except _Progressed as exc:
                log.warning("chunk_retry_after_progress", chunk=self._spec.label, error=str(exc))
                continue

    def _targets(self) -> list[str]:
        """The explicit index (which must exist), else the alias plus any index being built."""
        search = self._components.search
        if self._spec.index:
            if not search.index_exists(self._spec.index):
                raise ConfigError(f"index {self._spec.index!r} does not exist")
            return [self._spec.index]
        ensure_live_index(
            search,
            self._components.ledger,
            self._stream,
            self._components.catalog,
            gc_deletes_s=self._settings.gc_deletes_s(self._stream),
        )
        router = IndexRouter(self._stream, self._components.ledger)
        router.refresh()
        return router.targets()

    def _pump(self, processor: RecordProcessor, writer: BatchWriter, targets: list[str]) -> None:
        """Read from ``self.position`` to the end, flushing full batches as they fill.

        Batches write ``max_in_flight`` at a time and commit in read order; the position
        moves with each commit, so a retry re-reads from the last committed batch.
        """
        stream = self._stream
        max_buffered = self._settings.runtime.max_buffered_bytes
        # A backfill reads as fast as it can: batches close on size alone, never on time.
        policy = FlushPolicy(
            max_records=stream.max_batch_records,
            max_bytes=min(stream.max_batch_bytes, max_buffered),
            linger_s=math.inf,
        )

        def write(read: _Read) -> Written | None:
            return None if read.batch.is_empty() else writer.write(read.batch, targets)

        def commit(read: _Read, written: Written | None) -> None:
            self._commit(writer, read, written)

        inflight: InFlight[_Read, Written | None] = InFlight(
            write,
            commit,
            limit_for(stream.max_in_flight),
            backoff=lambda w: w is not None and w.outcome.retries > 0,
            name=f"backfill-{self._spec.label}",
        )
        batch = Batch()
        skipped = read_bytes = 0
        next_position = self.position
        try:
            for records in self._source.read(self.position, policy.max_records):
                kept = [r for r in records if self._source.keep(r)]
                skipped += len(records) - len(kept)
                read_bytes += sum(r.size_bytes for r in records)
                if kept:
                    processor.process(kept, batch, time.monotonic())
                next_position = records[-1].offset + 1
                if batch.is_due(policy, time.monotonic()):
                    read = _Read(batch, skipped, next_position, read_bytes)
                    inflight.submit(read, batch.held_bytes())
                    batch, skipped, read_bytes = Batch(), 0, 0
                inflight.make_room(batch.size_bytes, max_buffered)
            inflight.submit(_Read(batch, skipped, next_position, read_bytes), batch.held_bytes())
            inflight.drain()
        except TransientError:
            # The source failed (the sink and the ledger retry on their own): what is in
            # flight is fine, so commit it and let the retry resume after it.
            inflight.drain()
            raise
        finally:
            inflight.close()

    def _commit(self, writer: BatchWriter, read: _Read, written: Written | None) -> None:
        if written is not None:
            outcome = writer.commit(written, offsets=())
            self.counts.update(outcome.counters())
        if read.skipped:
            self.counts["skipped"] += read.skipped
            if self._run_id is not None:
                self._components.ledger.commit([], [], self._run_id, {"skipped": read.skipped})
        self.read_bytes += read.read_bytes
        self.position = max(self.position, read.next_position)
        if self._on_progress is not None:
            read_so_far = self.counts["consumed"] + self.counts["skipped"]
            self._on_progress(read_so_far, self._source.size, self.counts)
