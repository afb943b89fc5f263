"""What ``ingest status`` knows: positions, lag, processes, dead letters, indices and runs.

This module gathers and shapes the data; :mod:`ingest.cli.status` renders it. Keeping
the two apart lets the rendering be tested without servers and gives ``--json`` one stable
shape (:meth:`StatusReport.to_json`) that scripts can rely on.

Sources: the ledger (offsets, runs, dead-letter counts, index versions, backfill chunks,
flush latency) and the broker's high watermarks, read through
:class:`~ingest.kafka.consumer.KafkaRangeReader` because only a real fetch gives a right
watermark on every broker (see docs/local-stack.md). The broker is
optional: when it cannot be reached the report still shows the ledger's side and says so in
``problems``. A process counts as stale when its heartbeat is older than
``STALE_FACTOR * runtime.heartbeat_s``, measured on this machine's clock.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ingest.errors import IngestError
from ingest.latency import quantile
from ingest.ledger import ChunkRow, IndexVersionRow, LatencyWindow, OffsetRow, RunRow
from ingest.settings import Settings, StreamSettings, group_id_for

#: A running process whose heartbeat is older than this many heartbeat intervals is stale.
STALE_FACTOR = 3
#: How many finished non-streaming runs (backfill, reindex, replay ...) the report lists.
RECENT_RUNS = 10
#: Runs looked at to find those; stream runs in between are skipped.
RUNS_SCANNED = 200
#: Version of the ``--json`` document; bumped when a key changes meaning or goes away.
JSON_VERSION = 1
#: Ingestion latency quantiles are estimated over the flushes of this last window.
LATENCY_WINDOW_S = 300.0

#: Topic -> partition -> high watermark (the next offset the broker will assign).
Watermarks = Callable[[str], Mapping[int, int]]


class StatusLedger(Protocol):
    """The part of :class:`~ingest.ledger.PostgresLedger` the report reads."""

    def all_offsets(self) -> list[OffsetRow]: ...

    def runs(
        self,
        kind: str | None = None,
        limit: int = 20,
        *,
        stream: str | None = None,
        status: str | None = None,
    ) -> list[RunRow]: ...

    def dead_letter_counts(self) -> dict[tuple[str, str], int]: ...

    def index_versions(self, alias: str) -> list[IndexVersionRow]: ...

    def chunks(self, family: str | None = None, stream: str | None = None) -> list[ChunkRow]: ...

    def latency_windows(
        self, window_s: float, streams: Sequence[str] | None = None
    ) -> list[LatencyWindow]: ...


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One partition of one stream: where the ledger stands against the broker's end."""

    stream: str
    topic: str
    group: str
    partition: int
    #: The ledger's next offset to read; None when claimed but never committed.
    next_offset: int | None
    #: The broker's high watermark; None when the broker was not asked or not reachable.
    high_watermark: int | None
    #: ``high_watermark - next_offset`` when both are known. Negative means the ledger is
    #: beyond the log (topic recreated or truncated): the daemon refuses to start then.
    lag: int | None
    #: When the ledger row last changed (the last flush or claim).
    last_flush: datetime | None
    owner: str | None
    generation: int | None


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """A run still marked ``running`` in the ledger (a daemon worker, backfill, reindex)."""

    run_id: int
    kind: str
    stream: str | None
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float
    stale: bool
    counters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeadLetterCount:
    stream: str
    stage: str
    count: int


@dataclass(frozen=True, slots=True)
class IndexVersionStatus:
    alias: str
    version: int
    index_name: str
    state: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """A recent backfill, reindex or replay run and how it ended (or that it still runs)."""

    run_id: int
    kind: str
    stream: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    counters: dict[str, Any]
    error: str | None


@dataclass(frozen=True, slots=True)
class ChunkSummary:
    """Backfill chunks of one stream and task family, counted by status."""

    stream: str
    family: str
    pending: int
    running: int
    done: int
    failed: int
    last_finished_at: datetime | None
    #: The error of the most recently finished failed chunk, if any.
    last_error: str | None


@dataclass(frozen=True, slots=True)
class LatencyStatus:
    """Ingestion latency of one stream, path (live/backfill/replay) and clock source.

    ``p50_s``/``p99_s`` are estimated from the histogram buckets of the flushes acknowledged
    in the last ``window_s`` seconds (None without any); the newest record is the newest
    indexed one the ledger still knows of, however old.
    """

    stream: str
    path: str
    source: str
    window_s: float
    flushes: int
    records: int
    p50_s: float | None
    p99_s: float | None
    newest_record_at: datetime | None
    newest_record_age_s: float | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Everything ``ingest status`` shows, in one value."""

    generated_at: datetime
    ledger_schema: str
    heartbeat_s: float
    partitions: list[PartitionStatus] = field(default_factory=list)
    processes: list[ProcessStatus] = field(default_factory=list)
    dead_letters: list[DeadLetterCount] = field(default_factory=list)
    index_versions: list[IndexVersionStatus] = field(default_factory=list)
    recent_runs: list[RunOutcome] = field(default_factory=list)
    chunks: list[ChunkSummary] = field(default_factory=list)
    ingestion_latency: list[LatencyStatus] = field(default_factory=list)
    #: Things an operator should look at, one sentence each.
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with stable keys; datetimes as ISO 8601 strings in UTC."""
        return {
            "version": JSON_VERSION,
            "generated_at": _iso(self.generated_at),
            "ledger_schema": self.ledger_schema,
            "heartbeat_s": self.heartbeat_s,
            "partitions": [_plain(p) for p in self.partitions],
            "processes": [_plain(p) for p in self.processes],
            "dead_letters": [_plain(d) for d in self.dead_letters],
            "index_versions": [_plain(v) for v in self.index_versions],
            "recent_runs": [_plain(r) for r in self.recent_runs],
            "chunks": [_plain(c) for c in self.chunks],
            "ingestion_latency": [_plain(x) for x in self.ingestion_latency],
            "problems": list(self.problems),
        }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(item: Any) -> dict[str, Any]:
    return {k: _iso(v) if isinstance(v, datetime) else v for k, v in asdict(item).items()}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def gather_status(
    settings: Settings,
    ledger: StatusLedger,
    *,
    ledger_schema: str,
    watermarks: Watermarks | None,
    streams: Sequence[StreamSettings] | None = None,
    now: datetime | None = None,
) -> StatusReport:
    """Read the ledger (and the broker, if ``watermarks`` is given) into a report.

    Blocks for a handful of short ledger queries plus, per topic, one watermark lookup.
    A broker that cannot be reached is noted in ``problems`` once and not asked again.
    """
    now = now or datetime.now(UTC)
    chosen = list(settings.streams if streams is None else streams)
    problems: list[str] = []
    heartbeat_s = settings.runtime.heartbeat_s

    partitions = _partitions(settings, ledger, chosen, watermarks, problems)
    for p in partitions:
        if p.lag is not None and p.lag < 0:
            problems.append(
                f"{p.stream}: {p.topic}[{p.partition}] ledger next offset {p.next_offset} is "
                f"beyond the broker's end {p.high_watermark} (topic recreated or truncated?)"
            )

    names = {s.name for s in chosen}
    processes = _processes(ledger, now, heartbeat_s, names if streams is not None else None)
    for proc in processes:
        if proc.stale:
            problems.append(
                f"run {proc.run_id} ({proc.kind} {proc.stream or '-'} on {proc.host} pid "
                f"{proc.pid}) has not sent a heartbeat for {proc.heartbeat_age_s:.0f}s"
            )

    dead = [
        DeadLetterCount(stream, stage, count)
        for (stream, stage), count in sorted(ledger.dead_letter_counts().items())
        if streams is None or stream in names
    ]
    versions = [
        IndexVersionStatus(
            alias=v.alias,
            version=int(v.version),
            index_name=v.index_name,
            state=v.state,
            created_at=_aware(v.created_at),
            updated_at=_aware(v.updated_at),
        )
        for alias in dict.fromkeys(s.alias for s in chosen)
        for v in ledger.index_versions(alias)
    ]
    runs = _recent_runs(ledger, names if streams is not None else None)
    chunks = _chunks(ledger.chunks(), names if streams is not None else None)
    latency = _latency(ledger.latency_windows(LATENCY_WINDOW_S, sorted(names)), now)
    for c in chunks:
        if c.failed:
            problems.append(f"{c.stream}: {c.failed} {c.family} chunk(s) failed")
    return StatusReport(
        generated_at=now,
        ledger_schema=ledger_schema,
        heartbeat_s=heartbeat_s,
        partitions=partitions,
        processes=processes,
        dead_letters=dead,
        index_versions=versions,
        recent_runs=runs,
        chunks=chunks,
        ingestion_latency=latency,
        problems=problems,
    )


def _latency(windows: Sequence[LatencyWindow], now: datetime) -> list[LatencyStatus]:
    out = []
    for w in windows:
        newest = None if w.newest_record_at is None else _aware(w.newest_record_at)
        out.append(
            LatencyStatus(
                stream=w.stream,
                path=w.path,
                source=w.source,
                window_s=LATENCY_WINDOW_S,
                flushes=w.flushes,
                records=w.records,
                p50_s=_rounded(quantile(0.5, w.counts)),
                p99_s=_rounded(quantile(0.99, w.counts)),
                newest_record_at=newest,
                newest_record_age_s=None
                if newest is None
                else round(max(0.0, (now - newest).total_seconds()), 3),
            )
        )
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _partitions(
    settings: Settings,
    ledger: StatusLedger,
    streams: Sequence[StreamSettings],
    watermarks: Watermarks | None,
    problems: list[str],
) -> list[PartitionStatus]:
    rows: dict[tuple[str, str], dict[int, OffsetRow]] = defaultdict(dict)
    for offset_row in ledger.all_offsets():
        key = (offset_row.consumer_group, offset_row.topic)
        rows[key][int(offset_row.partition)] = offset_row
    broker_ok = watermarks is not None
    out: list[PartitionStatus] = []
    for stream in streams:
        group = group_id_for(settings, stream)
        ledger_rows = rows.get((group, stream.topic), {})
        highs: Mapping[int, int] = {}
        if broker_ok and watermarks is not None:
            try:
                highs = watermarks(stream.topic)
            except IngestError as exc:
                problems.append(f"{stream.name}: broker high watermarks unavailable: {exc}")
                highs = {}
                broker_ok = False
        for partition in sorted(set(ledger_rows) | set(highs)):
            row = ledger_rows.get(partition)
            next_offset = None if row is None or row.next_offset is None else int(row.next_offset)
            high = highs.get(partition)
            lag = None if next_offset is None or high is None else int(high) - next_offset
            out.append(
                PartitionStatus(
                    stream=stream.name,
                    topic=stream.topic,
                    group=group,
                    partition=partition,
                    next_offset=next_offset,
                    high_watermark=None if high is None else int(high),
                    lag=lag,
                    last_flush=None if row is None else _aware(row.updated_at),
                    owner=None if row is None else row.owner,
                    generation=None if row is None else int(row.generation),
                )
            )
    return out


def _processes(
    ledger: StatusLedger, now: datetime, heartbeat_s: float, names: set[str] | None
) -> list[ProcessStatus]:
    out = []
    for run in ledger.runs(status="running", limit=RUNS_SCANNED):
        if names is not None and run.stream not in names:
            continue
        beat = _aware(run.heartbeat_at)
        age = max(0.0, (now - beat).total_seconds())
        out.append(
            ProcessStatus(
                run_id=int(run.id),
                kind=run.kind,
                stream=run.stream,
                host=run.host,
                pid=int(run.pid),
                started_at=_aware(run.started_at),
                heartbeat_at=beat,
                heartbeat_age_s=round(age, 3),
                stale=age > STALE_FACTOR * heartbeat_s,
                counters=dict(run.counters),
            )
        )
    out.sort(key=lambda p: (p.stream or "", p.kind, p.run_id))
    return out


def _recent_runs(ledger: StatusLedger, names: set[str] | None) -> list[RunOutcome]:
    out = []
    for run in ledger.runs(limit=RUNS_SCANNED):
        if run.kind == "stream" or (names is not None and run.stream not in names):
            continue
        out.append(
            RunOutcome(
                run_id=int(run.id),
                kind=run.kind,
                stream=run.stream,
                status=run.status,
                started_at=_aware(run.started_at),
                finished_at=None if run.finished_at is None else _aware(run.finished_at),
                counters=dict(run.counters),
                error=run.error,
            )
        )
        if len(out) >= RECENT_RUNS:
            break
    return out


def _chunks(rows: Sequence[ChunkRow], names: set[str] | None) -> list[ChunkSummary]:
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    last: dict[tuple[str, str], datetime] = {}
    last_error: dict[tuple[str, str], tuple[datetime, str]] = {}
    for row in rows:
        if names is not None and row.stream not in names:
            continue
        key = (row.stream, row.family)
        counts[key][row.status] += 1
        if row.finished_at is not None:
            finished = _aware(row.finished_at)
            if key not in last or finished > last[key]:
                last[key] = finished
            if row.status == "failed" and row.error:
                seen = last_error.get(key)
                if seen is None or finished > seen[0]:
                    last_error[key] = (finished, row.error)
    return [
        ChunkSummary(
            stream=stream,
            family=family,
            pending=c["pending"],
            running=c["running"],
            done=c["done"],
            failed=c["failed"],
            last_finished_at=last.get((stream, family)),
            last_error=last_error[(stream, family)][1] if (stream, family) in last_error else None,
        )
        for (stream, family), c in sorted(counts.items())
    ]


class KafkaWatermarks:
    """High watermarks per topic through a real fetch (right on tansu and on Apache Kafka).

    ``timeout_s`` bounds each broker call, so an unreachable broker costs one timeout.
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 5.0) -> None:
        from ingest.kafka.ranges import KafkaRangeReader

        self._reader = KafkaRangeReader(settings, timeout_s=timeout_s)

    def __call__(self, topic: str) -> dict[int, int]:
        return self._reader.high_watermarks(topic)
