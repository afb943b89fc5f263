"""The one code path from raw records to the index, shared by the daemon and the backfills.

``RecordProcessor`` turns raw records into bulk actions or dead letters (decode + validate ->
transform), appending to a :class:`~ingest.pipeline.batch.Batch`. ``BatchWriter`` flushes a batch in
the one order that makes every write idempotent::

    0. delete check    drop index writes a recorded delete supersedes (one ledger read)
    1. sink write      bulk-index the newest version per _id (409 = already applied;
                       400 = dead letter, and the next-newest version is sent instead:
                       :mod:`ingest.pipeline.write`)
    2. ledger commit   ONE PostgreSQL transaction: next offsets (fenced by generation)
                       + dead letters + delete markers + run counters
    3. Kafka commit    by the caller, for lag tooling only; the ledger is the truth

A crash before 2 replays the batch: external versions make the re-sent documents no-ops and
dead letters are unique per record, so the index and the dead-letter store converge.

With requests in flight (:mod:`ingest.pipeline.inflight`) steps 0-1 of a few batches overlap
while 2-3 run strictly in batch order. Batch k+1's delete check may then run before batch k's
markers are committed; the index still orders the two writes by external version, since it
remembers a delete (``index.gc_deletes``) far longer than a batch is in flight.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ingest.errors import OversizeError, RecordError, TombstoneError
from ingest.latency import EventTime, FlushLatency, IngestPath, measure_flush
from ingest.pipeline.batch import Batch
from ingest.pipeline.deletes import applied_deletes, drop_superseded
from ingest.pipeline.routing import routing_from_body
from ingest.pipeline.transform import Transformer
from ingest.pipeline.write import write_newest_accepted
from ingest.settings import StreamSettings
from ingest.types import DeadLetter, DeleteMarker, FastPath, IndexAction, RawRecord


class Decoder(Protocol):
    def decode(self, value: bytes) -> dict[str, Any]:
        """The record in the reader schema's shape; a RecordError for bad input."""
        ...


class Sink(Protocol):
    def write(self, actions: Sequence[IndexAction], targets: Sequence[str]) -> Any:
        """Bulk-write; the result has indexed, deleted, conflicts, rejected, retries."""
        ...


class LedgerCommitter(Protocol):
    def commit(
        self,
        offsets: Sequence[Any],
        dead_letters: Sequence[DeadLetter],
        run_id: int | None = None,
        counters: Mapping[str, int] | None = None,
        flush: tuple[str, int] | None = None,
        deletes: Sequence[DeleteMarker] = (),
        *,
        latency: FlushLatency | None = None,
    ) -> None: ...

    def delete_markers(self, alias: str, doc_ids: Sequence[str]) -> Mapping[str, int]: ...


DeadLetterPublisher = Callable[[Sequence[DeadLetter]], None]


class RecordProcessor:
    """Decode, validate and transform records of one stream into a batch.

    ``fast`` (the native transcoder) turns a valid record straight into its action; a
    record it does not accept takes the Python path, decode then transform, which also
    names what is wrong with a bad one. Either way records stay in offset order.
    """

    def __init__(
        self,
        stream: StreamSettings,
        decoder: Decoder,
        transformer: Transformer,
        fast: FastPath | None = None,
    ) -> None:
        self.stream = stream
        self._decoder = decoder
        self._transformer = transformer
        self._fast = fast
        self._max_record_bytes = stream.max_record_bytes
        #: On the fast path a routing field other than the id is read back from the rendered
        #: document (the transcoder yields id, version and body only).
        self._route_body = stream.routing_field if stream.routing_field != stream.id_field else None
        self._route_by_id = stream.routing_field is not None and self._route_body is None

    @property
    def fast_path_on(self) -> bool:
        """True when valid records go through the native transcoder."""
        return self._fast is not None

    def process(self, records: Sequence[RawRecord], batch: Batch, now: float) -> None:
        """Append an action or a dead letter for every record; never raises for bad records."""
        fast = self._fast
        max_record_bytes = self._max_record_bytes
        for record in records:
            batch.note(record, now)
            value = record.value
            if value is None:
                self._tombstone(record, batch)
            elif record.size_bytes > max_record_bytes:
                self._dead(
                    batch,
                    record,
                    OversizeError(
                        "record is over the stream's size limit",
                        detail={"bytes": record.size_bytes, "limit": max_record_bytes},
                    ),
                )
            elif fast is not None and (parts := fast(value, record.key, record.offset)):
                if self._route_body is None and not self._route_by_id:
                    batch.add_action(IndexAction("index", parts[0], parts[1], parts[2], record))
                else:
                    self._fast_routed(parts, record, value, batch)
            else:
                self._decode_and_transform(record, value, batch)

    def _fast_routed(
        self, parts: tuple[str, int, bytes], record: RawRecord, value: bytes, batch: Batch
    ) -> None:
        doc_id, version, body = parts
        routing = doc_id if self._route_by_id else routing_from_body(body, self._route_body or "")
        if routing is None:  # the Python path names what is wrong in the dead letter
            self._decode_and_transform(record, value, batch)
        else:
            batch.add_action(IndexAction("index", doc_id, version, body, record, routing))

    def _decode_and_transform(self, record: RawRecord, value: bytes, batch: Batch) -> None:
        batch.python_path += 1
        try:
            action = self._transformer.to_action(self._decoder.decode(value), record)
        except RecordError as exc:
            self._dead(batch, record, exc)
            return
        if action is None:
            batch.filtered += 1
        else:
            batch.add_action(action)

    def _tombstone(self, record: RawRecord, batch: Batch) -> None:
        mode = self.stream.tombstones
        if mode == "ignore":
            batch.filtered += 1
        elif mode == "dead-letter":
            self._dead(batch, record, TombstoneError("null value (tombstone) on this stream"))
        else:
            try:
                batch.add_action(self._transformer.tombstone(record))
            except RecordError as exc:
                self._dead(batch, record, exc)

    def _dead(self, batch: Batch, record: RawRecord, error: RecordError) -> None:
        batch.add_dead_letter(DeadLetter(record, error.stage, str(error), self.stream.name))


@dataclass(slots=True)
class FlushOutcome:
    """What one flush did, for counters, metrics and logs."""

    records: int = 0
    indexed: int = 0
    deleted: int = 0
    conflicts: int = 0
    #: Index writes dropped because a delete of their document is as new or newer (also
    #: counted in ``conflicts``: the index would have answered 409 while it remembered it).
    superseded: int = 0
    filtered: int = 0
    retries: int = 0
    python_path: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    took_s: float = 0.0
    #: Ingestion latency of the records the server acknowledged (empty without any).
    latency: FlushLatency | None = None

    def counters(self) -> dict[str, int]:
        return {
            "consumed": self.records,
            "indexed": self.indexed,
            "deleted": self.deleted,
            "conflicts": self.conflicts,
            "filtered": self.filtered,
            "retried": self.retries,
            "dead_lettered": sum(self.dead_letters.values()),
        }


@dataclass(slots=True)
class Written:
    """A batch after its sink write and before its ledger commit."""

    outcome: FlushOutcome
    #: The batch's dead letters plus the documents the index refused.
    dead: list[DeadLetter]
    #: Wall time of the write phase.
    write_s: float
    #: Deletes the write applied, recorded as markers in the batch's ledger transaction.
    deletes: list[DeleteMarker] = field(default_factory=list)


class BatchWriter:
    """Flushes batches: sink write, then one ledger transaction (see module docstring).

    :meth:`flush` is :meth:`write` then :meth:`commit`; callers with requests in flight run
    the two phases apart (:mod:`ingest.pipeline.inflight`).
    """

    def __init__(
        self,
        stream: StreamSettings,
        sink: Sink,
        ledger: LedgerCommitter,
        *,
        run_id: int | None = None,
        publish_dead_letters: DeadLetterPublisher | None = None,
        retry: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        path: IngestPath = "live",
        event_time: EventTime | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream
        self._sink = sink
        self._ledger = ledger
        self.run_id = run_id
        self._publish = publish_dead_letters
        #: Runs the ledger commit, retrying TransientErrors (PostgreSQL unreachable for a
        #: while): ``retry(fn, *args)``. Re-running a commit that did land is harmless:
        #: offsets only move forward, dead letters are unique per record, and the run's
        #: counters take each (writer, flush number) once.
        self._retry = retry
        self._clock = clock
        #: Latency is measured against the wall clock (record timestamps are wall-clock
        #: times) and labelled with ``path``, so backfills do not pollute the live figure.
        self._path = path
        self._event_time = event_time
        self._wall_clock = wall_clock
        self._writer_id = uuid.uuid4().hex
        self._flushes = 0

    def flush(
        self, batch: Batch, targets: Sequence[str], offsets: Sequence[Any] = ()
    ) -> FlushOutcome:
        """Write ``batch`` to ``targets`` and commit ``offsets`` with its dead letters.

        Blocks through the sink's retries; raises RetriesExhausted (nothing committed) when
        they run out and FencedError when another process owns a partition now.
        """
        return self.commit(self.write(batch, targets), offsets)

    def write(self, batch: Batch, targets: Sequence[str]) -> Written:
        """The write phase of :meth:`flush`: the sink write, nothing committed.

        Safe to run for several batches at once on several threads (requests in flight,
        :mod:`ingest.pipeline.inflight`); each result must then go to :meth:`commit` in the
        order the batches were read.
        """
        started = self._clock()
        outcome = FlushOutcome(
            records=batch.records, filtered=batch.filtered, python_path=batch.python_path
        )
        dead = list(batch.dead_letters)
        deletes: list[DeleteMarker] = []
        live, outcome.superseded = drop_superseded(
            self._ledger, self.stream.alias, batch.actions, call=self._retry
        )
        outcome.conflicts = len(batch.actions) - len(live)
        if live:
            result = write_newest_accepted(self._sink, live, targets)
            outcome.latency = self._latency(batch.actions, result.rejected)
            outcome.indexed = result.indexed
            outcome.deleted = result.deleted
            outcome.conflicts += result.conflicts
            outcome.retries = result.retries
            dead += [
                DeadLetter(action.record, "index", f"index: {reason}", self.stream.name)
                for action, reason in result.rejected
            ]
            deletes = applied_deletes(
                self.stream.name, self.stream.alias, result.sent, result.rejected
            )
        outcome.dead_letters.update(d.stage for d in dead)
        return Written(outcome, dead, self._clock() - started, deletes)

    def commit(self, written: Written, offsets: Sequence[Any] = ()) -> FlushOutcome:
        """The commit phase of :meth:`flush`: dead letters published, then ONE ledger
        transaction with ``offsets``, the dead letters and the counters. Runs on one thread,
        in the order the batches were read; raises FencedError for a stale generation."""
        started = self._clock()
        outcome, dead = written.outcome, written.dead
        if dead and self._publish is not None:
            self._publish(dead)
        self._flushes += 1
        commit_args = (
            offsets,
            dead,
            self.run_id,
            outcome.counters(),
            self._flush_mark(),
            written.deletes,
        )
        latency = outcome.latency or None
        if self._retry is None:
            self._ledger.commit(*commit_args, latency=latency)
        else:
            self._retry(self._ledger.commit, *commit_args, latency=latency)
        outcome.took_s = written.write_s + (self._clock() - started)
        return outcome

    def _latency(
        self, sent: Sequence[IndexAction], rejected: Sequence[tuple[IndexAction, str]]
    ) -> FlushLatency:
        """Latency of every action of the batch the server took, at the moment it answered.

        Versions superseded inside the batch count too: the newer version made them
        visible. Rejected actions are dead letters, not ingested.
        """
        acked_ms = int(self._wall_clock() * 1000)
        if rejected:
            refused = {id(action) for action, _ in rejected}
            sent = [a for a in sent if id(a) not in refused]
        return measure_flush(self.stream.name, self._path, sent, acked_ms, self._event_time)

    def _flush_mark(self) -> tuple[str, int]:
        return (self._writer_id, self._flushes)
