"""One stream's consumer loop (a thread of the ``ingest run`` daemon, see supervisor).

Each worker is a consumer-group member for its stream's topic. Scale-out is the group's
job: start more processes, on more machines, with the same group id.

The loop per worker::

    poll (bounded by the linger time left) -> process into the batch -> flush when due
    flush = sink write -> ledger transaction (offsets fenced by generation, dead letters,
            counters) -> Kafka commit (for lag tools)

With ``max_in_flight`` above 1 the sink writes of several batches overlap while the ledger
and Kafka commits still run on this thread one batch after the other, in offset order
(:mod:`ingest.pipeline.inflight`); batches in flight count against ``max_buffered_bytes``,
and polling waits for the oldest batch while the bound is reached.

On assignment the worker claims the partitions in the ledger (bumping their generation) and
seeks to the ledger's offsets. On revocation it flushes and commits everything in flight
before giving the partitions up; on loss it drops what it buffered for them and never
commits their offsets from batches still in flight. A FencedError (another process owns a
partition now) drops the buffer and every batch in flight, and rejoins the group. While the
oldest batch's sink write retries, the loop does not poll past the window, so nothing new is
buffered; librdkafka's prefetch queue is bounded by configuration. Transient failures past
``max_retry_s`` end the process non-zero with nothing committed past the failed batch, for a
supervisor to restart.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from ingest.daemon.health import Health
from ingest.daemon.metrics import Metrics
from ingest.errors import FencedError, IngestError, TransientError
from ingest.kafka.auth import KafkaCredentials
from ingest.kafka.config import consumer_config
from ingest.kafka.consumer import KafkaSource
from ingest.ledger import OffsetCommit
from ingest.pipeline.batch import Batch, FlushPolicy
from ingest.pipeline.inflight import InFlight, LimitChange, limit_for
from ingest.pipeline.process import Written
from ingest.pipeline.wiring import Components, build_pipeline
from ingest.retry import RetryEvent, retrying
from ingest.search.indices import IndexRouter, ensure_live_index
from ingest.settings import Settings, StreamSettings, group_id_for

log = structlog.get_logger(__name__)

#: How long flush latency rows stay in the ledger: well past the few minutes ``ingest
#: status`` summarises, short enough that the table stays a few thousand rows per stream.
LATENCY_KEEP_S = 3600.0


@dataclass(slots=True)
class _Submitted:
    """A batch handed to the writers, with what its commit needs (decided at submission)."""

    batch: Batch
    targets: list[str]
    offsets: list[OffsetCommit]
    next_offsets: dict[int, int] = field(default_factory=dict)

    def forget(self, partitions: set[int]) -> None:
        """Never commit these partitions' offsets (lost meanwhile); dead letters stay,
        unique per record, so a new owner replaying them adds nothing twice."""
        self.offsets = [o for o in self.offsets if o.partition not in partitions]
        self.next_offsets = {p: o for p, o in self.next_offsets.items() if p not in partitions}


class StreamWorker:
    """Consumes one stream until ``stop`` is set; see the module docstring for the loop."""

    def __init__(
        self,
        settings: Settings,
        stream: StreamSettings,
        *,
        components: Components,
        stop: threading.Event,
        metrics: Metrics | None = None,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.group = group_id_for(settings, stream)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{stream.name}"
        self._ledger = components.ledger
        self._search = components.search
        self._stop = stop
        # Without a metrics server the figures still go somewhere: a registry nobody scrapes.
        self._metrics = metrics if metrics is not None else Metrics(process_metrics=False)
        self._health = health if health is not None else Health()
        self._policy = FlushPolicy(
            max_records=stream.max_batch_records,
            max_bytes=min(stream.max_batch_bytes, settings.runtime.max_buffered_bytes),
            linger_s=stream.linger_s,
        )
        pipeline = build_pipeline(components, stream, on_retry=self._on_retry)
        self._processor = pipeline.processor
        self._metrics.register_stream(stream.name)
        self._metrics.fast_path(stream.name, self._processor.fast_path_on)
        self._writer = pipeline.writer
        self._inflight: InFlight[_Submitted, Written] = InFlight(
            lambda item: self._writer.write(item.batch, item.targets),
            self._commit,
            limit_for(stream.max_in_flight, on_change=self._limit_changed),
            backoff=lambda written: written.outcome.retries > 0,
            name=f"bulk-{stream.name}",
        )
        self._router = IndexRouter(stream, components.ledger)
        self._catalog = components.catalog
        self._batch = Batch()
        self._generations: dict[int, int] = {}
        self._source: KafkaSource | None = None
        self._kafka_auth = KafkaCredentials(settings)
        #: Cumulative flush counters of this worker (the ledger run row adds the same).
        self.totals: Counter[str] = Counter()
        self._summarised = 0
        self._retry_ledger = retrying(
            max_total_s=settings.runtime.max_retry_s,
            on_retry=self._on_retry,
            what=f"ledger ({stream.name})",
        )
        self.run_id: int | None = None
        self._retry_beat_at = float("-inf")

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Blocks until stop is set (then flushes and leaves the group) or a fatal error."""
        ensure_live_index(
            self._search,
            self._ledger,
            self.stream,
            self._catalog,
            gc_deletes_s=self.settings.gc_deletes_s(self.stream),
        )
        retention_s = self.settings.ledger.delete_marker_retention_s
        self._ledger.purge_delete_markers(datetime.now(UTC) - timedelta(seconds=retention_s))
        self.run_id = self._ledger.start_run(
            "stream",
            self.stream.name,
            {"group": self.group, "topic": self.stream.topic, "owner": self.owner},
        )
        self._writer.run_id = self.run_id
        log.info("stream_started", stream=self.stream.name, group=self.group, run_id=self.run_id)
        status, error = "failed", None
        try:
            self._loop()
            status = "stopped"
        except IngestError as exc:
            error = str(exc)
            raise
        finally:
            run_id = self.run_id
            self._tolerate_outage(
                "finish_run", lambda: self._ledger.finish_run(run_id, status, error=error)
            )

    def _new_source(self) -> KafkaSource:
        conf = consumer_config(self.settings, self.group, **{"client.id": self.owner})
        conf.update(self._kafka_auth.properties())
        conf["error_cb"] = self._kafka_auth.error_cb
        source = KafkaSource(
            conf,
            self.stream.topic,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        source.start()
        return source

    def _loop(self) -> None:
        self._source = self._new_source()
        clean = False
        last_beat = last_summary = last_route = time.monotonic()
        self._router.refresh()
        rt = self.settings.runtime
        # Start of the last flush, until the poll right after it: what that poll returns at
        # once was fetched while the flush ran, and has been waiting since it began.
        flushed_from: float | None = None
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self._health.beat(now)
                timeout = min(1.0, max(0.05, self._batch.time_left_s(self._policy, now)))
                if flushed_from is not None:
                    timeout = 0.0
                room = self._policy.max_records - self._batch.records
                try:
                    self._inflight.commit_ready()
                    self._inflight.make_room(self._batch.size_bytes, rt.max_buffered_bytes)
                    records = self._source.poll(room, timeout)
                    now = time.monotonic()
                    if records:
                        self._processor.process(records, self._batch, now)
                        if flushed_from is not None:
                            self._batch.waiting_since(flushed_from)
                        self._metrics.consumed(self.stream.name, len(records))
                        self._metrics.buffered(
                            self.stream.name, self._batch.size_bytes + self._inflight.bytes
                        )
                    flushed_from = None
                    if self._batch.is_due(self._policy, now):
                        self._submit()
                        flushed_from = now
                    if self._kafka_auth.renewal_due():
                        self._renew_source()
                except FencedError as exc:
                    self._rejoin(exc)
                if now - last_route >= rt.index_poll_s:
                    self._tolerate_outage("index_poll", self._router.refresh)
                    last_route = now
                if now - last_beat >= rt.heartbeat_s:
                    self._tolerate_outage("heartbeat", self._heartbeat)
                    last_beat = now
                if now - last_summary >= rt.summary_every_s:
                    self._summary(now - last_summary)
                    last_summary = now
            self._flush()
            clean = True
        finally:
            # After a failure, leave without flushing again: the buffer stays uncommitted.
            source, self._source = self._source, None
            if not clean:
                self._batch = Batch()
            self._inflight.close()  # after a failure, what is in flight stays uncommitted
            if source is not None:
                source.close()
        log.info("stream_stopped", stream=self.stream.name, **dict(self.totals))

    def _tolerate_outage(self, what: str, call: Callable[[], None]) -> None:
        """Periodic ledger calls skip a beat while PostgreSQL is unreachable; the flush's own
        commit is the one that retries (and gives up after max_retry_s)."""
        try:
            call()
        except TransientError as exc:
            log.warning("ledger_unavailable", stream=self.stream.name, during=what, error=str(exc))

    def _rejoin(self, exc: FencedError) -> None:
        """Another process owns our partitions now: drop the buffer, leave, join again."""
        log.warning("partition_fenced", stream=self.stream.name, error=str(exc))
        self._batch = Batch()
        self._inflight.abandon()
        self._generations.clear()
        source, self._source = self._source, None
        if source is not None:
            source.close()
        self._source = self._new_source()

    def _renew_source(self) -> None:
        """The broker refused our SASL credentials and their files hold new ones: rebuild
        the consumer, which librdkafka cannot re-key in place.

        What is buffered is flushed first, in the one order (sink write -> ledger -> Kafka
        commit, which may fail now and only matters to lag tools); a failed flush raises
        as any flush does, committing nothing. The new consumer joins the group and seeks
        to the ledger's offsets, so nothing is skipped, re-committed or committed early.
        """
        log.warning("kafka_client_rebuilt", stream=self.stream.name, reason="credentials")
        self._flush()
        source, self._source = self._source, None
        self._generations.clear()
        if source is not None:
            source.close()
        self._source = self._new_source()

    # -- rebalance callbacks (run inside poll, on this thread) -------------------------------

    def _on_assign(self, partitions: list[int]) -> Mapping[int, int | None]:
        claims = self._retry_ledger(
            self._ledger.claim_partitions, self.group, self.stream.topic, partitions, self.owner
        )
        positions: dict[int, int | None] = {}
        for p, claim in claims.items():
            self._generations[p] = claim.generation
            positions[p] = claim.next_offset
        return positions

    def _on_revoke(self, partitions: list[int]) -> None:
        if self._source is not None:
            try:
                self._flush()
            except FencedError as exc:
                # Only the revoked partitions' records go. Under cooperative assignment the
                # batches also hold partitions this worker keeps: their records and dead
                # letters, from the batches in flight too, stay for the next flush (which
                # fences again if they went too).
                log.warning("flush_on_revoke_fenced", partitions=partitions, error=str(exc))
                revoked = {(self.stream.topic, p) for p in partitions}
                kept = Batch()
                for left in [*(item.batch for item in self._inflight.abandon()), self._batch]:
                    left.drop_partitions(revoked)
                    kept.absorb(left)
                self._batch = kept if kept.last_offsets else Batch()
        for p in partitions:
            self._generations.pop(p, None)

    def _on_lost(self, partitions: list[int]) -> None:
        self._batch.drop_partitions({(self.stream.topic, p) for p in partitions})
        for item in self._inflight.items():
            item.forget(set(partitions))
        for p in partitions:
            self._generations.pop(p, None)

    # -- flushing -------------------------------------------------------------------------

    def _flush(self) -> None:
        """Submit the open batch and commit everything in flight (revoke, stop)."""
        self._submit()
        self._inflight.drain()
        self._in_flight_changed()

    def _submit(self) -> None:
        """Hand the open batch to the writers; its commit follows in order (see InFlight)."""
        batch = self._batch
        if batch.is_empty():
            return
        next_offsets = {p: o for (_t, p), o in batch.next_offsets().items()}
        missing = [p for p in next_offsets if p not in self._generations]
        if missing:
            raise FencedError(f"{self.stream.topic} partitions {missing} are no longer ours")
        offsets = [
            OffsetCommit(self.group, self.stream.topic, p, self._generations[p], o)
            for p, o in next_offsets.items()
        ]
        targets = self._router.targets()
        self._batch = Batch()
        self._inflight.submit(_Submitted(batch, targets, offsets, next_offsets), batch.held_bytes())
        self._in_flight_changed()

    def _commit(self, item: _Submitted, written: Written) -> None:
        """The commit phase of one batch, in offset order: ledger, then Kafka (lag tools)."""
        batch = item.batch
        outcome = self._writer.commit(written, item.offsets)
        if item.targets == self._router.targets():
            # The handoff of a reindex, marked only by a batch written to the index being
            # built: one submitted before the router saw the reindex may commit after.
            # A ledger call like the commit, retried the same way.
            self._retry_ledger(self._router.note_flush, batch.first_offsets)
        if self._source is not None and item.next_offsets:
            self._source.commit(item.next_offsets)
        self.totals.update(outcome.counters())
        self._health.flushed(stream=self.stream.name)
        self._metrics.flushed(
            self.stream.name,
            indexed=outcome.indexed,
            deleted=outcome.deleted,
            conflicts=outcome.conflicts,
            dead=dict(outcome.dead_letters),
            batch_records=outcome.records,
            took_s=outcome.took_s,
            python_path=outcome.python_path,
        )
        if outcome.latency:
            self._metrics.ingestion_latency(
                self.stream.name, outcome.latency.path, outcome.latency.samples
            )
        log.debug(
            "batch_flushed",
            stream=self.stream.name,
            records=outcome.records,
            indexed=outcome.indexed,
            dead=sum(outcome.dead_letters.values()),
            took_s=round(outcome.took_s, 4),
        )
        self._in_flight_changed()

    def _in_flight_changed(self) -> None:
        inflight = self._inflight
        self._metrics.in_flight(self.stream.name, inflight.count, inflight.limit)
        self._metrics.buffered(self.stream.name, self._batch.size_bytes + inflight.bytes)

    def _limit_changed(self, change: LimitChange) -> None:
        """The adaptive in-flight limit moved (on a writer thread)."""
        log.info(
            "in_flight_limit_changed",
            stream=self.stream.name,
            limit=change.limit,
            reason=change.reason,
            mean_s=None if change.mean_s is None else round(change.mean_s, 3),
            baseline_s=None if change.baseline_s is None else round(change.baseline_s, 3),
        )

    def _on_retry(self, event: RetryEvent) -> None:
        """Readiness and the retry counter; :func:`ingest.retry.retrying` logs the retry."""
        self._health.retry_started(event.started_at, stream=self.stream.name)
        self._metrics.retry(self.stream.name)
        self._beat_while_retrying()

    def _beat_while_retrying(self) -> None:
        """Heartbeat from inside a flush's retries, at most every ``heartbeat_s``.

        The loop cannot beat while a flush retries, and a reindex takes a run silent for a
        few beats (past one request timeout) for a killed daemon and stops waiting for it.
        A beat the ledger cannot take (PostgreSQL itself down) is skipped.
        """
        run_id = self.run_id
        now = time.monotonic()
        if run_id is None or now - self._retry_beat_at < self.settings.runtime.heartbeat_s:
            return
        self._retry_beat_at = now
        gauges = {"dual_write_version": self._router.dual_write_version or 0}

        def beat() -> None:
            self._ledger.heartbeat(run_id, gauges)

        self._tolerate_outage("heartbeat", beat)

    # -- observability --------------------------------------------------------------------

    def _heartbeat(self) -> None:
        assert self.run_id is not None
        # Flush counters are added in each ledger commit; the heartbeat carries gauges only.
        gauges = {"dual_write_version": self._router.dual_write_version or 0}
        if not self._ledger.heartbeat(self.run_id, gauges):
            log.warning("run_marked_stale", run_id=self.run_id)
        self._metrics.heartbeat(self.stream.name)
        self._ledger.prune_latency(self.stream.name, LATENCY_KEEP_S)
        lag = self._source.lag() if self._source is not None else {}
        for p, n in lag.items():
            self._metrics.lag(self.stream.name, p, n)

    def _summary(self, elapsed_s: float) -> None:
        """The periodic throughput/lag line; rates are over the time since the last one."""
        lag = self._source.lag() if self._source is not None else {}
        consumed = self.totals["consumed"]
        rate = (consumed - self._summarised) / elapsed_s if elapsed_s > 0 else 0.0
        self._summarised = consumed
        log.info(
            "stream_progress",
            stream=self.stream.name,
            partitions=sorted(self._generations),
            lag=sum(lag.values()),
            records_per_s=round(rate, 1),
            buffered_bytes=self._batch.size_bytes,
            **dict(self.totals),
        )
