"""Prometheus metrics of the ingester: what it consumed, indexed, dead-lettered, how far behind.

A :class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry` instead of the
process-global default one, so tests, benchmarks and several pipelines in one process never
clash over metric names. The daemon calls a few small typed methods (``consumed``, ``flushed``,
``retry``, ``lag``, ``buffered``); :mod:`ingest.daemon.health` serves :meth:`Metrics.render` on
``/metrics``.

The methods sit on the hot path (``consumed`` may run once per fetched batch), so the labelled
children for each stream are looked up once and cached: a call costs a dict lookup plus the
metric's own lock, never a label-tuple validation.

Every metric name starts with the namespace (``ingest_`` by default)::

    ingest_records_consumed_total{stream}          records read from Kafka
    ingest_records_indexed_total{stream}           documents written (created or updated)
    ingest_records_deleted_total{stream}           tombstones applied as deletes
    ingest_records_dead_lettered_total{stream,stage}  records sent to the dead-letter store
    ingest_conflicts_total{stream}                 409s = already applied (newer version held)
    ingest_retries_total{stream}                   transient-failure retry attempts
    ingest_bulk_latency_seconds{stream}            wall time of one flush's bulk write
    ingest_batch_size_records{stream}              records per flushed batch
    ingest_lag_records{stream,partition}           high watermark minus next offset
    ingest_buffered_bytes{stream}                  bytes held in memory, not yet flushed
                                                   (the open batch and the batches in flight)
    ingest_in_flight_requests{stream}              batches written or being written, not yet
                                                   committed
    ingest_in_flight_limit{stream}                 how many may be (max_in_flight; moves
                                                   with "auto")
    ingest_last_flush_timestamp_seconds{stream}    unix time of the last successful flush
    ingest_in_retry{stream}                        1 while a transient failure is being retried
    ingest_search_host_up{host}                    1 while the node is in its pool's rotation
    ingest_search_host_latency_seconds{host}       wall time of each request to the node
    ingest_ingestion_latency_seconds{stream,source,path}
                                                   record timestamp -> bulk acknowledged
    ingest_heartbeat_timestamp_seconds{stream}     unix time of the last ledger heartbeat
    ingest_ready                                   1 while /readyz answers 200, else 0

``host`` is ``scheme://host:port`` of a configured search node, never its credentials.

The ingestion latency histogram is fed one flush at a time (bucket counts computed by
:mod:`ingest.latency`), not one ``observe()`` per record: a custom collector keeps the
cumulative counts, so a 2,000-record flush costs one short update under a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from ingest.latency import BUCKETS_S as INGESTION_BUCKETS_S
from ingest.latency import LatencySample

#: Content type of :meth:`Metrics.render` (the text format ``generate_latest`` writes).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Bulk round trips: a few ms on an idle local server up to the client's 30 s timeout.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Batch sizes around the 1,000-5,000 docs Elasticsearch recommends per bulk.
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 50000)


class _Common(TypedDict):
    """Arguments every metric of one :class:`Metrics` shares."""

    namespace: str
    registry: CollectorRegistry


@dataclass
class _StreamChildren:
    """The labelled children of one stream, resolved once so the hot path skips ``labels()``."""

    consumed: Counter
    indexed: Counter
    deleted: Counter
    conflicts: Counter
    retries: Counter
    latency: Histogram
    batch: Histogram
    buffered: Gauge
    last_flush: Gauge
    in_retry: Gauge
    python_path: Counter
    in_flight: Gauge
    in_flight_limit: Gauge
    dead: dict[str, Counter] = field(default_factory=dict)
    lag: dict[int, Gauge] = field(default_factory=dict)


class _LatencyHistograms(Collector):
    """``ingestion_latency_seconds{stream,source,path}``, fed with whole flushes.

    prometheus_client's Histogram takes one observation at a time; a flush brings its
    bucket counts at once, so this collector keeps the cumulative counts itself and renders
    them as an ordinary histogram family.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        #: (stream, source, path) -> [per-bucket counts incl. +Inf, sum of seconds]
        self._series: dict[tuple[str, str, str], tuple[list[int], list[float]]] = {}

    def add(self, stream: str, path: str, sample: LatencySample) -> None:
        key = (stream, sample.source, path)
        with self._lock:
            counts, total = self._series.setdefault(
                key, ([0] * (len(INGESTION_BUCKETS_S) + 1), [0.0])
            )
            for i, c in enumerate(sample.counts):
                counts[i] += c
            total[0] += sample.sum_s

    def touch(self, stream: str, source: str, path: str) -> None:
        """Create the series at zero (so dashboards see it before the first flush)."""
        with self._lock:
            self._series.setdefault(
                (stream, source, path), ([0] * (len(INGESTION_BUCKETS_S) + 1), [0.0])
            )

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = self._family()
        with self._lock:
            snapshot = [(k, list(c), t[0]) for k, (c, t) in sorted(self._series.items())]
        # The ``le`` labels prometheus_client's own Histogram writes: "0.01", "10.0", "+Inf".
        bounds = [*(repr(float(b)) for b in INGESTION_BUCKETS_S), "+Inf"]
        for labels, counts, total in snapshot:
            cumulative, running = [], 0
            for bound, c in zip(bounds, counts, strict=True):
                running += c
                cumulative.append((bound, float(running)))
            family.add_metric(list(labels), cumulative, total)
        yield family

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            self._name,
            "Time from a record's timestamp (source: kafka_timestamp or event_time) to the"
            " search server acknowledging its batch; path: live, backfill or replay.",
            labels=["stream", "source", "path"],
        )


class Metrics:
    """The ingester's metrics in a registry of their own.

    ``process_metrics`` adds the standard ``process_*`` / ``python_info`` collectors (CPU,
    memory, open files) that dashboards expect from a production process; tests may leave
    them on, since each instance has a separate registry.
    """

    def __init__(self, *, namespace: str = "ingest", process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        kw: _Common = {"namespace": namespace, "registry": self.registry}
        stream = ["stream"]
        self._consumed = Counter("records_consumed", "Records read from Kafka.", stream, **kw)
        self._indexed = Counter(
            "records_indexed", "Documents created or updated in the search index.", stream, **kw
        )
        self._deleted = Counter("records_deleted", "Tombstones applied as deletes.", stream, **kw)
        self._dead = Counter(
            "records_dead_lettered",
            "Records sent to the dead-letter store, by the pipeline stage that refused them.",
            ["stream", "stage"],
            **kw,
        )
        self._conflicts = Counter(
            "conflicts",
            "Version conflicts (409): the index already holds this or a newer version.",
            stream,
            **kw,
        )
        self._retries = Counter("retries", "Retry attempts after transient failures.", stream, **kw)
        self._latency = Histogram(
            "bulk_latency_seconds",
            "Wall time of one flush's bulk write, retries included.",
            stream,
            buckets=LATENCY_BUCKETS_S,
            **kw,
        )
        self._batch = Histogram(
            "batch_size_records", "Records per flushed batch.", stream, buckets=BATCH_BUCKETS, **kw
        )
        self._lag = Gauge(
            "lag_records",
            "High watermark minus the next offset to read, per partition.",
            ["stream", "partition"],
            **kw,
        )
        self._buffered = Gauge(
            "buffered_bytes",
            "Bytes of fetched records held in memory, not yet flushed.",
            stream,
            **kw,
        )
        self._last_flush = Gauge(
            "last_flush_timestamp_seconds",
            "Unix time of the last successful flush.",
            stream,
            **kw,
        )
        self._in_retry = Gauge(
            "in_retry", "1 while a transient failure is being retried, else 0.", stream, **kw
        )
        self._python_path = Counter(
            "records_python_path",
            "Records the native transcoder left to the Python path: bad records, older writer"
            " schemas, or every record while the stream's fast path is off.",
            stream,
            **kw,
        )
        self._in_flight = Gauge(
            "in_flight_requests",
            "Batches whose bulk write started and whose ledger commit has not run yet.",
            stream,
            **kw,
        )
        self._in_flight_limit = Gauge(
            "in_flight_limit",
            "How many batches may be in flight: max_in_flight, or its current value when auto.",
            stream,
            **kw,
        )
        self._fast_path = Gauge(
            "fast_path",
            "1 when the stream's records go through the native transcoder, 0 when it is off.",
            stream,
            **kw,
        )
        self._host_up = Gauge(
            "search_host_up",
            "1 while the search node's last request was answered healthily (it stays in its"
            " pool's rotation), 0 after a refused connection, a timeout or a 5xx (it rests).",
            ["host"],
            **kw,
        )
        self._host_latency = Histogram(
            "search_host_latency_seconds",
            "Wall time of one request to the search node, failures included.",
            ["host"],
            buckets=LATENCY_BUCKETS_S,
            **kw,
        )
        self._ingestion = _LatencyHistograms(f"{namespace}_ingestion_latency_seconds")
        self.registry.register(self._ingestion)
        self._heartbeat = Gauge(
            "heartbeat_timestamp_seconds",
            "Unix time of the stream worker's last heartbeat written to the ledger.",
            stream,
            **kw,
        )
        self._ready = Gauge(
            "ready", "1 while the daemon is ready (/readyz answers 200), else 0.", **kw
        )
        self._streams: dict[str, _StreamChildren] = {}
        self._lock = threading.Lock()

    def _children(self, stream: str) -> _StreamChildren:
        children = self._streams.get(stream)
        if children is None:
            with self._lock:
                children = self._streams.get(stream)
                if children is None:
                    children = _StreamChildren(
                        consumed=self._consumed.labels(stream),
                        indexed=self._indexed.labels(stream),
                        deleted=self._deleted.labels(stream),
                        conflicts=self._conflicts.labels(stream),
                        retries=self._retries.labels(stream),
                        latency=self._latency.labels(stream),
                        batch=self._batch.labels(stream),
                        buffered=self._buffered.labels(stream),
                        last_flush=self._last_flush.labels(stream),
                        in_retry=self._in_retry.labels(stream),
                        python_path=self._python_path.labels(stream),
                        in_flight=self._in_flight.labels(stream),
                        in_flight_limit=self._in_flight_limit.labels(stream),
                    )
                    self._streams[stream] = children
        return children

    def register_stream(self, stream: str) -> None:
        """Create the stream's series at zero, so dashboards and ``rate()`` see them at start."""
        self._children(stream)
        self._ingestion.touch(stream, "kafka_timestamp", "live")

    def ingestion_latency(self, stream: str, path: str, samples: Sequence[LatencySample]) -> None:
        """One flush's ingestion latency samples (one per clock source)."""
        for sample in samples:
            self._ingestion.add(stream, path, sample)

    def heartbeat(self, stream: str, at: float | None = None) -> None:
        """The stream worker wrote its heartbeat to the ledger at unix time ``at`` (now)."""
        self._heartbeat.labels(stream).set(time.time() if at is None else at)

    def readiness(self, ready: Callable[[], bool]) -> None:
        """``ingest_ready`` asks ``ready`` at each scrape (the rule behind ``/readyz``)."""
        self._ready.set_function(lambda: 1.0 if ready() else 0.0)

    def fast_path(self, stream: str, on: bool) -> None:
        """Whether ``stream``'s processor has the native fast path (set once at start)."""
        self._fast_path.labels(stream).set(1 if on else 0)

    def consumed(self, stream: str, n: int) -> None:
        """``n`` records were read from Kafka (called per fetched batch; cheap)."""
        self._children(stream).consumed.inc(n)

    def flushed(
        self,
        stream: str,
        *,
        indexed: int = 0,
        deleted: int = 0,
        conflicts: int = 0,
        dead: Mapping[str, int] | None = None,
        batch_records: int,
        took_s: float,
        at: float | None = None,
        python_path: int = 0,
    ) -> None:
        """A batch was written and recorded; also ends any retry state of the stream.

        ``dead`` maps a pipeline stage (``RecordError.stage``) to how many records of the
        batch were dead-lettered there. ``at`` is the unix time of the flush (now if omitted).
        ``python_path``: records of the batch the native transcoder did not take.
        """
        c = self._children(stream)
        if indexed:
            c.indexed.inc(indexed)
        if deleted:
            c.deleted.inc(deleted)
        if conflicts:
            c.conflicts.inc(conflicts)
        if python_path:
            c.python_path.inc(python_path)
        if dead:
            for stage, n in dead.items():
                if n:
                    self._dead_child(stream, c, stage).inc(n)
        c.batch.observe(batch_records)
        c.latency.observe(took_s)
        c.last_flush.set(time.time() if at is None else at)
        c.in_retry.set(0)

    def _dead_child(self, stream: str, c: _StreamChildren, stage: str) -> Counter:
        child = c.dead.get(stage)
        if child is None:
            child = c.dead[stage] = self._dead.labels(stream, stage)
        return child

    def retry(self, stream: str) -> None:
        """One retry attempt after a transient failure; the stream counts as in retry until
        the next :meth:`flushed`."""
        c = self._children(stream)
        c.retries.inc()
        c.in_retry.set(1)

    def lag(self, stream: str, partition: int, n: int) -> None:
        """Records between the next offset to read and the partition's high watermark."""
        c = self._children(stream)
        child = c.lag.get(partition)
        if child is None:
            child = c.lag[partition] = self._lag.labels(stream, str(partition))
        child.set(n)

    def buffered(self, stream: str, n_bytes: int) -> None:
        """Bytes currently held in memory for the stream (set, not added)."""
        self._children(stream).buffered.set(n_bytes)

    def in_flight(self, stream: str, requests: int, limit: int) -> None:
        """Batches in flight now and the current limit (set, not added)."""
        c = self._children(stream)
        c.in_flight.set(requests)
        c.in_flight_limit.set(limit)

    def search_request(self, host: str, up: bool, took_s: float | None) -> None:
        """A request to search node ``host`` ended (``took_s``), or its state was reported.

        Shaped as a :data:`~ingest.search.hosts.HostListener`: pass it to ``HostStats.watch``.
        """
        self._host_up.labels(host).set(1 if up else 0)
        if took_s is not None:
            self._host_latency.labels(host).observe(took_s)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (see :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's current value by full name (``ingest_records_indexed_total``), or
        None; for tests and the status command, not the hot path."""
        return self.registry.get_sample_value(name, dict(labels or {}))
