"""One chunk's run with fakes at the ledger and search seams: lock, copy, retry, record."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from backfill.chunk import ChunkBusyError, ChunkSpec, run_chunk
from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.dev.samples import sample_orders
from ingest.errors import ConfigError, RetriesExhausted, TransientError
from ingest.ledger import ChunkRow, ChunkTiming
from ingest.pipeline.wiring import Components
from ingest.settings import RuntimeSettings, Settings, StreamSettings
from ingest.types import DeadLetter, RawRecord

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
STREAM = StreamSettings(
    name="orders",
    topic="orders",
    subject="orders",
    alias="orders",
    id_field="order_id",
    version_field="updated_at",
    max_batch_records=5,
)


class FakeLedger:
    """The chunk and commit calls of PostgresLedger, in memory."""

    def __init__(self, *, locked_by_other: int = 0, status: str | None = None) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.commits: list[tuple[list[DeadLetter], int | None, dict[str, int]]] = []
        self.locked_by_other = locked_by_other  # refuse this many lock attempts
        self.other_status = status  # the row's status while another process holds it
        self.lock_attempts = 0

    def try_lock_chunk(
        self, task_id: str, family: str, stream: str, params: Mapping[str, Any], owner: str
    ) -> bool:
        self.lock_attempts += 1
        row = self.rows.get(task_id)
        if row is not None and row["status"] == "done":
            return False
        if self.lock_attempts <= self.locked_by_other:
            self.rows[task_id] = {"status": self.other_status or "running", "owner": "other"}
            return False
        attempts = (row or {}).get("attempts", 0) + 1
        self.rows[task_id] = {"status": "running", "owner": owner, "attempts": attempts}
        return True

    def chunk(self, task_id: str) -> ChunkRow | None:
        row = self.rows.get(task_id)
        if row is None:
            return None
        return ChunkRow(
            task_id, "F", "orders", {}, row["status"], row.get("attempts", 0),
            row.get("counts", {}), None, None, row.get("error"), row["owner"],
        )  # fmt: skip

    def finish_chunk(
        self,
        task_id: str,
        status: str,
        counts: Mapping[str, int] | None = None,
        error: str | None = None,
        *,
        timing: ChunkTiming | None = None,
        run_id: int | None = None,
    ) -> None:
        self.rows[task_id].update(
            status=status, counts=dict(counts or {}), error=error, timing=timing, run_id=run_id
        )

    def release_chunk(self, task_id: str) -> None:
        return None

    def commit(
        self,
        offsets: Sequence[Any],
        dead_letters: Sequence[DeadLetter] = (),
        run_id: int | None = None,
        counters: Mapping[str, int] | None = None,
        flush: tuple[str, int] | None = None,
        deletes: Sequence[Any] = (),
        *,
        latency: Any = None,
    ) -> None:
        assert not offsets, "a backfill never moves the daemon's offsets"
        self.commits.append((list(dead_letters), run_id, dict(counters or {})))

    def delete_markers(self, alias: str, doc_ids: Sequence[str]) -> dict[str, int]:
        return {}


class FakeSearch:
    """Bulk with external versions: 201 for newer, 409 for an equal or older version."""

    def __init__(self, *, index_exists: bool = True) -> None:
        self.versions: dict[str, int] = {}
        self.requests = 0
        self._exists = index_exists

    def index_exists(self, name: str) -> bool:
        return self._exists

    def bulk(self, body: bytes) -> dict[str, Any]:
        self.requests += 1
        items = []
        for line in body.splitlines():
            meta = orjson.loads(line)
            if "index" not in meta or "_index" not in meta["index"]:
                continue
            doc_id, version = meta["index"]["_id"], meta["index"]["version"]
            if self.versions.get(doc_id, -1) >= version:
                items.append({"index": {"_id": doc_id, "status": 409}})
            else:
                self.versions[doc_id] = version
                items.append({"index": {"_id": doc_id, "status": 201}})
        return {"errors": False, "items": items}


class ListSource:
    """Records in memory; raises TransientError once per entry of ``fail_at`` when a read
    reaches that offset (every time from ``fail_from`` on); keeps records with timestamps in
    ``window``."""

    def __init__(
        self,
        records: list[RawRecord],
        *,
        fail_at: Sequence[int] = (),
        always_fail: bool = False,
        fail_from: int | None = None,
        window: tuple[int, int] | None = None,
    ) -> None:
        self.records = records
        self.fail_at = list(fail_at)
        self.always_fail = always_fail
        self.fail_from = fail_from
        self.window = window
        self.start = 0
        self.size = len(records)
        self.reads: list[int] = []

    def read(self, position: int, batch_records: int) -> Iterator[list[RawRecord]]:
        self.reads.append(position)
        rest = [r for r in self.records if r.offset >= position]
        for i in range(0, len(rest), batch_records):
            batch = rest[i : i + batch_records]
            if self.fail_from is not None and batch[-1].offset >= self.fail_from:
                raise TransientError("broker went away for good")
            if self.always_fail or (self.fail_at and batch[-1].offset >= self.fail_at[0]):
                if self.fail_at:
                    self.fail_at.pop(0)
                raise TransientError("broker went away")
            yield batch

    def keep(self, record: RawRecord) -> bool:
        return self.window is None or self.window[0] <= record.timestamp_ms < self.window[1]


def _records(n: int, *, corrupt: Sequence[int] = ()) -> list[RawRecord]:
    codec = AvroCodec(SchemaCatalog.load(SCHEMAS), "orders")
    out = []
    for i, order in zip(range(n), sample_orders(3), strict=False):
        value = b"\x00garbage" if i in corrupt else codec.encode(order)
        out.append(RawRecord("orders", 0, i, order["order_id"].encode(), value, timestamp_ms=i))
    return out


def _components(ledger: FakeLedger, search: FakeSearch, max_retry_s: float = 5.0) -> Components:
    settings = Settings(
        schemas_dir=SCHEMAS,
        streams=(STREAM,),
        runtime=RuntimeSettings(max_retry_s=max_retry_s),
    )
    return Components(settings, SchemaCatalog.load(SCHEMAS), ledger, search)  # type: ignore[arg-type]


SPEC = ChunkSpec("task-1", "KafkaTimeChunk", STREAM, {"partition": "0"}, "orders p0", "idx-v2")


def _run(components: Components, source: ListSource, **kw: Any) -> Any:
    kw.setdefault("sleep", lambda s: None)
    return run_chunk(components, SPEC, source, run_id=7, **kw)


def test_copies_the_window_in_batches_and_records_done_with_counts() -> None:
    """Records outside the window are skipped (not dead-lettered); counts land in the row."""
    ledger, search = FakeLedger(), FakeSearch()
    progress: list[int] = []
    result = _run(
        _components(ledger, search),
        ListSource(_records(12, corrupt=[4]), window=(2, 10)),
        on_progress=lambda read, size, counts: progress.append(read),
    )
    assert result.status == "done"
    row = ledger.rows["task-1"]
    assert row["status"] == "done" and row["owner"].endswith(" run 7")
    assert row["counts"]["consumed"] == 8
    assert row["counts"]["indexed"] == 7
    assert row["counts"]["dead_lettered"] == 1
    assert row["counts"]["skipped"] == 4
    assert len(search.versions) == 7
    [dead] = [d for dls, _, _ in ledger.commits for d in dls]
    assert dead.record.offset == 4 and dead.stage in {"framing", "schema", "decode"}
    assert {c[1] for c in ledger.commits} == {7}
    assert sum(c[2].get("skipped", 0) for c in ledger.commits) == 4
    assert progress == sorted(progress) and progress[-1] == 12


class StepClock:
    """A monotonic clock that moves ``step_s`` on every reading."""

    def __init__(self, step_s: float) -> None:
        self.now = 100.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def test_the_finished_row_records_duration_records_and_bytes_read() -> None:
    """Records outside the window count as read (reading them took time); bytes are raw
    key + value bytes; the duration is the copy's, from the injected clock."""
    ledger, search = FakeLedger(), FakeSearch()
    records = _records(12, corrupt=[4])
    result = _run(
        _components(ledger, search),
        ListSource(records, window=(2, 10)),
        clock=StepClock(1.5),
    )
    row = ledger.rows["task-1"]
    expected = ChunkTiming(1.5, 12, sum(len(r.key or b"") + len(r.value or b"") for r in records))
    assert row["timing"] == expected and result.timing == expected
    assert row["run_id"] == 7


def test_a_failed_chunk_records_what_it_read_before_failing() -> None:
    """Only flushed records count, so a re-read after a retry is not counted twice."""
    ledger, search = FakeLedger(), FakeSearch()
    records = _records(12)
    with pytest.raises(RetriesExhausted):
        _run(
            _components(ledger, search, max_retry_s=0.05),
            ListSource(records, fail_from=7),
            clock=StepClock(2.0),
        )
    row = ledger.rows["task-1"]
    assert row["status"] == "failed"
    timing = row["timing"]
    assert timing.records == 5 and timing.duration_s == 2.0
    assert timing.read_bytes == sum(r.size_bytes for r in records[:5])


def test_a_transient_failure_resumes_from_the_last_flush() -> None:
    """The re-read starts at the last flushed record, so nothing is counted twice."""
    ledger, search = FakeLedger(), FakeSearch()
    source = ListSource(_records(12), fail_at=[7, 11])
    _run(_components(ledger, search), source)
    assert source.reads == [0, 5, 10]
    counts = ledger.rows["task-1"]["counts"]
    assert counts["consumed"] == 12 and counts["indexed"] == 12
    assert ledger.rows["task-1"]["status"] == "done"


def test_failures_past_the_budget_are_recorded_and_raised() -> None:
    ledger, search = FakeLedger(), FakeSearch()
    with pytest.raises(RetriesExhausted):
        _run(
            _components(ledger, search, max_retry_s=0.05), ListSource(_records(3), always_fail=True)
        )
    row = ledger.rows["task-1"]
    assert row["status"] == "failed"
    assert row["error"].startswith("RetriesExhausted: ")


def test_a_missing_index_fails_the_chunk() -> None:
    ledger = FakeLedger()
    with pytest.raises(ConfigError, match="does not exist"):
        _run(_components(ledger, FakeSearch(index_exists=False)), ListSource(_records(2)))
    assert ledger.rows["task-1"]["status"] == "failed"
    assert "ConfigError" in ledger.rows["task-1"]["error"]


def test_a_chunk_done_elsewhere_is_not_copied_again() -> None:
    """Held by another backfill that finishes it: wait, then report done elsewhere."""
    ledger, search = FakeLedger(locked_by_other=2), FakeSearch()
    clock = itertools.count()

    def finish_other(_s: float) -> None:
        ledger.rows["task-1"]["status"] = "done"

    result = _run(
        _components(ledger, search),
        ListSource(_records(3)),
        sleep=finish_other,
        clock=lambda: float(next(clock)),
    )
    assert result.status == "done_elsewhere"
    assert search.requests == 0


def test_a_chunk_held_too_long_raises_busy_without_touching_the_row() -> None:
    ledger, search = FakeLedger(locked_by_other=1000), FakeSearch()
    clock = itertools.count()
    with pytest.raises(ChunkBusyError, match="other"):
        _run(
            _components(ledger, search),
            ListSource(_records(3)),
            lock_wait_s=5,
            clock=lambda: float(next(clock)),
        )
    assert ledger.rows["task-1"]["status"] == "running"
    assert ledger.rows["task-1"]["owner"] == "other"


class FirstAnsweredLast(FakeSearch):
    """Bulk answers out of order: the first request is held until the third one is done."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.third_done = threading.Event()
        self.answered: list[int] = []

    def bulk(self, body: bytes) -> dict[str, Any]:
        with self._lock:
            self.requests += 1
            n = self.requests
        if n == 1:
            assert self.third_done.wait(10), "the third request never came"
        with self._lock:
            answer = super().bulk(body)
            self.requests -= 1  # super() counted it again
            self.answered.append(n)
        if n == 3:
            self.third_done.set()
        return answer


class ReadAfterThird(ListSource):
    """Yields the records from offset 15 on only once the third bulk request is answered, so
    the copy looks for commits while the first one is still held."""

    def __init__(self, records: list[RawRecord], search: FirstAnsweredLast) -> None:
        super().__init__(records)
        self._search = search

    def read(self, position: int, batch_records: int) -> Iterator[list[RawRecord]]:
        for batch in super().read(position, batch_records):
            if batch[0].offset >= 15:
                assert self._search.third_done.wait(10)
            yield batch


def test_batches_in_flight_commit_in_read_order() -> None:
    """With 4 in flight and the first bulk answered last, each batch's dead letters and the
    chunk's progress are still committed batch by batch in read order."""
    stream = STREAM.model_copy(update={"max_in_flight": 4})
    spec = ChunkSpec("task-1", "KafkaTimeChunk", stream, {"partition": "0"}, "orders p0", "idx")
    ledger, search = FakeLedger(), FirstAnsweredLast()
    progress: list[int] = []
    result = run_chunk(
        _components(ledger, search),
        spec,
        ReadAfterThird(_records(20, corrupt=[2, 12]), search),
        run_id=7,
        sleep=lambda s: None,
        on_progress=lambda read, size, counts: progress.append(read),
    )
    assert result.status == "done"
    assert search.answered[0] != 1 and 1 in search.answered
    assert [d.record.offset for dls, _, _ in ledger.commits for d in dls] == [2, 12]
    assert progress == [5, 10, 15, 20, 20]  # the last one: the end of the read
    assert ledger.rows["task-1"]["counts"]["indexed"] == 18
