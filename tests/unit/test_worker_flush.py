"""The stream worker's flush and revoke paths, with fakes at the ledger, writer and source.

No Kafka, search server or PostgreSQL: the worker is built on the real pipeline wiring over
fakes, and its writer is swapped for one that records (or fails) each flush.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest.avro.catalog import SchemaCatalog
from ingest.daemon.worker import StreamWorker
from ingest.errors import FencedError, TransientError
from ingest.ledger.models import IndexVersionRow
from ingest.pipeline.batch import Batch
from ingest.pipeline.process import FlushOutcome, Written
from ingest.pipeline.wiring import Components
from ingest.retry import RetryEvent, retrying
from ingest.settings import Settings, parse_settings
from ingest.types import DeadLetter, IndexAction, RawRecord

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
TOPIC = "orders"


@dataclass
class FakeLedger:
    """The ledger calls a worker makes outside its flush transaction."""

    building: IndexVersionRow | None = None
    handoff_failures: int = 0
    handoffs: list[dict[int, int]] = field(default_factory=list)
    beats: list[dict[str, int]] = field(default_factory=list)

    def building_version(self, alias: str) -> IndexVersionRow | None:
        return self.building

    def heartbeat(self, run_id: int, counters: Mapping[str, int] | None = None) -> bool:
        self.beats.append(dict(counters or {}))
        return True

    def set_handoff(self, alias: str, version: int, offsets: Mapping[int, int]) -> dict[int, int]:
        if self.handoff_failures:
            self.handoff_failures -= 1
            raise TransientError("ledger: server closed the connection unexpectedly")
        self.handoffs.append(dict(offsets))
        return dict(offsets)


@dataclass
class FakeWriter:
    """Records each committed batch; its commits raise the queued errors first."""

    errors: list[BaseException] = field(default_factory=list)
    flushed: list[Batch] = field(default_factory=list)
    run_id: int | None = None
    _batches: dict[int, Batch] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, batch: Batch, targets: Sequence[str]) -> Written:
        written = Written(FlushOutcome(records=batch.records), list(batch.dead_letters), 0.0)
        with self._lock:
            self._batches[id(written)] = batch
        return written

    def commit(self, written: Written, offsets: Sequence[Any]) -> FlushOutcome:
        if self.errors:
            raise self.errors.pop(0)
        with self._lock:
            self.flushed.append(self._batches.pop(id(written)))
        return written.outcome


@dataclass
class FakeSource:
    commits: list[dict[int, int]] = field(default_factory=list)

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        self.commits.append(dict(next_offsets))


def _settings(max_in_flight: int = 1) -> Settings:
    return parse_settings(
        {
            "schemas_dir": str(SCHEMAS),
            "kafka": {"bootstrap_servers": "127.0.0.1:9"},
            "search": {"url": "http://127.0.0.1:9"},
            "ledger": {"dsn": "postgresql://ingest@127.0.0.1:9/ingest"},
            "runtime": {"max_retry_s": 30},
            "streams": [
                {
                    "name": "orders",
                    "topic": TOPIC,
                    "subject": "orders",
                    "alias": "o",
                    "max_in_flight": max_in_flight,
                }
            ],
        }
    )


def _worker(ledger: FakeLedger, writer: FakeWriter, max_in_flight: int = 1) -> StreamWorker:
    settings = _settings(max_in_flight)
    components = Components(settings, SchemaCatalog.load(SCHEMAS), ledger, object())  # type: ignore[arg-type]
    worker = StreamWorker(
        settings, settings.streams[0], components=components, stop=threading.Event()
    )
    worker._writer = writer  # type: ignore[assignment]
    worker._source = FakeSource()  # type: ignore[assignment]
    # The worker's own retry policy for ledger calls, without real sleeps.
    worker._retry_ledger = retrying(max_total_s=30, what="ledger", sleep=lambda _s: None)
    worker.run_id = 1
    return worker


def _fill(batch: Batch, partition: int, offsets: range) -> None:
    """Per offset: even ones become index actions, odd ones dead letters."""
    for offset in offsets:
        record = RawRecord(TOPIC, partition, offset, b"k", b"v")
        batch.note(record, 0.0)
        if offset % 2:
            batch.add_dead_letter(DeadLetter(record, "decode", "truncated", "orders"))
        else:
            batch.add_action(IndexAction("index", f"{partition}-{offset}", offset, b"{}", record))


def test_handoff_is_retried_through_a_ledger_blip() -> None:
    """During a reindex, a transient ledger error on the handoff is retried, not fatal."""
    now = datetime.now(UTC)
    building = IndexVersionRow("o", 2, "o-v2", "fp", "building", now, now)
    ledger = FakeLedger(building=building, handoff_failures=1)
    writer = FakeWriter()
    worker = _worker(ledger, writer)
    worker._router.refresh()
    worker._generations = {0: 1}
    _fill(worker._batch, 0, range(10, 14))

    worker._flush()

    assert ledger.handoffs == [{0: 10}]
    assert len(writer.flushed) == 1
    assert worker._source.commits == [{0: 14}]  # type: ignore[union-attr]


@pytest.mark.parametrize("fenced_before_write", [False, True])
def test_fence_on_revoke_keeps_the_partitions_kept(fenced_before_write: bool) -> None:
    """Cooperative revoke of partition 0 fails fenced: partition 1's actions and dead
    letters stay buffered and go out with the next flush; partition 0's are dropped."""
    writer = FakeWriter(errors=[FencedError("orders[0]: generation 3 is newer than 2")])
    worker = _worker(FakeLedger(), writer)
    worker._generations = {0: 2, 1: 2}
    if fenced_before_write:  # fenced by the worker's own check: partition 0 not ours
        writer.errors.clear()
        del worker._generations[0]
    _fill(worker._batch, 0, range(0, 4))
    _fill(worker._batch, 1, range(20, 24))

    worker._on_revoke([0])

    kept = worker._batch
    assert {d.record.partition for d in kept.dead_letters} == {1}
    assert {a.record.partition for a in kept.actions} == {1}
    assert kept.next_offsets() == {(TOPIC, 1): 24}
    assert 0 not in worker._generations

    worker._flush()
    [flushed] = writer.flushed
    assert [d.record.offset for d in flushed.dead_letters] == [21, 23]
    assert [a.record.offset for a in flushed.actions] == [20, 22]
    assert worker._source.commits == [{1: 24}]  # type: ignore[union-attr]


def test_fence_on_eager_revoke_drops_everything() -> None:
    """Eager revoke (every partition): a fenced flush leaves an empty batch."""
    writer = FakeWriter(errors=[FencedError("fenced")])
    worker = _worker(FakeLedger(), writer)
    worker._generations = {0: 2, 1: 2}
    _fill(worker._batch, 0, range(0, 4))
    _fill(worker._batch, 1, range(20, 24))

    worker._on_revoke([0, 1])

    assert worker._batch.is_empty()
    assert not worker._batch.dead_letters and not worker._batch.actions
    assert worker._generations == {}


def test_a_flush_in_retries_keeps_heartbeating() -> None:
    """While a flush retries, the worker beats (at most every heartbeat_s) with the
    dual-write version its flush writes to, so a reindex does not take it for dead."""
    now = datetime.now(UTC)
    ledger = FakeLedger(building=IndexVersionRow("o", 2, "o-v2", "fp", "building", now, now))
    worker = _worker(ledger, FakeWriter())
    worker._router.refresh()
    event = RetryEvent(attempt=1, wait_s=0.1, elapsed_s=0.1, started_at=0.0, error=OSError("x"))

    worker._on_retry(event)
    worker._on_retry(event)  # within heartbeat_s of the first: no second beat

    assert ledger.beats == [{"dual_write_version": 2}]


def _in_flight_over_two_partitions(writer: FakeWriter) -> StreamWorker:
    """A worker allowed 4 in flight with one batch of partitions 0 and 1 submitted."""
    worker = _worker(FakeLedger(), writer, max_in_flight=4)
    worker._generations = {0: 2, 1: 2}
    _fill(worker._batch, 0, range(0, 4))
    _fill(worker._batch, 1, range(20, 24))
    worker._submit()
    return worker


def test_fence_on_revoke_keeps_the_kept_partitions_of_batches_in_flight() -> None:
    """With two batches in flight, the first commit of a cooperative revoke of partition 0
    fails fenced: neither batch is committed, partition 1's records of both stay buffered
    in read order, and partition 0's are dropped."""
    writer = FakeWriter()
    worker = _in_flight_over_two_partitions(writer)
    _fill(worker._batch, 0, range(4, 8))
    _fill(worker._batch, 1, range(24, 28))
    worker._submit()
    writer.errors.append(FencedError("orders[0]: generation 3 is newer than 2"))

    worker._on_revoke([0])

    assert writer.flushed == [] and worker._inflight.count == 0
    kept = worker._batch
    assert [d.record.offset for d in kept.dead_letters] == [21, 23, 25, 27]
    assert [a.record.offset for a in kept.actions] == [20, 22, 24, 26]
    assert kept.next_offsets() == {(TOPIC, 1): 28}
    worker._flush()
    [flushed] = writer.flushed
    assert [a.record.offset for a in flushed.actions] == [20, 22, 24, 26]
    assert worker._source.commits == [{1: 28}]  # type: ignore[union-attr]


def test_lost_partitions_are_never_committed_from_batches_in_flight() -> None:
    """Partition 0 is lost while a batch holding it is in flight: the batch still commits
    partition 1's offsets, never partition 0's."""
    worker = _in_flight_over_two_partitions(FakeWriter())

    worker._on_lost([0])
    worker._inflight.drain()

    assert worker._source.commits == [{1: 24}]  # type: ignore[union-attr]


def test_handoff_is_marked_by_the_first_batch_written_to_the_new_index() -> None:
    """A reindex starts while a batch written to the alias alone is in flight: the handoff
    is the first offset of the first batch that also went to the index being built."""
    now = datetime.now(UTC)
    ledger = FakeLedger()
    writer = FakeWriter()
    worker = _worker(ledger, writer, max_in_flight=4)
    worker._generations = {0: 1}
    _fill(worker._batch, 0, range(10, 14))
    worker._submit()
    ledger.building = IndexVersionRow("o", 2, "o-v2", "fp", "building", now, now)
    worker._router.refresh()
    _fill(worker._batch, 0, range(14, 18))
    worker._submit()

    worker._inflight.drain()

    assert ledger.handoffs == [{0: 14}]
    assert worker._source.commits == [{0: 14}, {0: 18}]  # type: ignore[union-attr]
