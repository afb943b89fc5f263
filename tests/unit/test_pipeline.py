"""The shared pipeline with fakes at its seams: every record leaves into the index or the
dead-letter store, and the ledger commit follows the sink write in one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from ingest.errors import DecodeError, FramingError, RetriesExhausted
from ingest.pipeline.batch import Batch
from ingest.pipeline.process import BatchWriter, RecordProcessor
from ingest.pipeline.transform import Transformer
from ingest.settings import StreamSettings
from ingest.types import DeadLetter, DeleteMarker, IndexAction, RawRecord

STREAM = StreamSettings(
    name="s",
    topic="t",
    subject="orders",
    alias="a",
    id_field="id",
    version_field="v",
    max_record_bytes=64,
)


class FakeDecoder:
    """Decodes b"id:version"; b"!" is a framing error, b"?" a decode error."""

    def decode(self, value: bytes) -> dict[str, Any]:
        if value == b"!":
            raise FramingError("bad magic byte", detail={"byte": 0})
        if value == b"?":
            raise DecodeError("truncated")
        doc_id, version = value.decode().split(":")
        return {"id": doc_id, "v": int(version)}


@dataclass
class Result:
    indexed: int = 0
    deleted: int = 0
    conflicts: int = 0
    rejected: list[tuple[IndexAction, str]] = field(default_factory=list)
    retries: int = 0


@dataclass
class FakeSink:
    reject_ids: set[str] = field(default_factory=set)
    fail: bool = False
    calls: list[tuple[list[IndexAction], list[str]]] = field(default_factory=list)

    def write(self, actions: Sequence[IndexAction], targets: Sequence[str]) -> Result:
        if self.fail:
            raise RetriesExhausted("search down")
        self.calls.append((list(actions), list(targets)))
        rejected = [(a, "mapper_parsing_exception") for a in actions if a.doc_id in self.reject_ids]
        ok = [a for a in actions if a.doc_id not in self.reject_ids]
        return Result(
            indexed=sum(a.op == "index" for a in ok),
            deleted=sum(a.op == "delete" for a in ok),
            rejected=rejected,
        )


@dataclass
class FakeLedger:
    commits: list[tuple[list[Any], list[DeadLetter], Mapping[str, int] | None]] = field(
        default_factory=list
    )
    marks: list[tuple[str, int] | None] = field(default_factory=list)
    #: (alias, doc id) -> newest delete version committed, as the delete_markers table.
    markers: dict[tuple[str, str], int] = field(default_factory=dict)
    #: The ids each delete_markers query asked for.
    marker_queries: list[list[str]] = field(default_factory=list)

    def commit(
        self,
        offsets: Sequence[Any],
        dead_letters: Sequence[DeadLetter],
        run_id: int | None = None,
        counters: Mapping[str, int] | None = None,
        flush: tuple[str, int] | None = None,
        deletes: Sequence[DeleteMarker] = (),
        *,
        latency: Any = None,
    ) -> None:
        self.marks.append(flush)
        self.commits.append((list(offsets), list(dead_letters), counters))
        for m in deletes:
            key = (m.alias, m.doc_id)
            self.markers[key] = max(self.markers.get(key, m.version), m.version)

    def delete_markers(self, alias: str, doc_ids: Sequence[str]) -> dict[str, int]:
        self.marker_queries.append(list(doc_ids))
        return {i: v for (a, i), v in self.markers.items() if a == alias and i in doc_ids}


def records(*values: bytes | None) -> list[RawRecord]:
    """Records at offsets 0, 1 ... with broker timestamps 5000, 5001 ... (tombstones'
    version on a stream versioned by a record field)."""
    return [RawRecord("t", 0, i, b"key", v, timestamp_ms=5_000 + i) for i, v in enumerate(values)]


def process(*values: bytes | None, stream: StreamSettings = STREAM) -> Batch:
    batch = Batch()
    RecordProcessor(stream, FakeDecoder(), Transformer(stream)).process(
        records(*values), batch, now=0.0
    )
    return batch


def test_every_record_becomes_an_action_or_a_dead_letter() -> None:
    """Good records become actions; bad ones dead letters with their stage and raw bytes."""
    batch = process(b"a:1", b"!", b"?", b"b:2", b"x" * 100)
    assert [(a.doc_id, a.version) for a in batch.actions] == [("a", 1), ("b", 2)]
    stages = [(d.record.offset, d.stage) for d in batch.dead_letters]
    assert stages == [(1, "framing"), (2, "decode"), (4, "size")]
    assert batch.dead_letters[0].record.value == b"!"
    assert "bad magic byte" in batch.dead_letters[0].reason
    assert batch.records == 5 and batch.next_offsets() == {("t", 0): 5}


def test_fast_path_results_are_used_and_refusals_take_the_python_path_in_order() -> None:
    """The transcoder's parts become the action as is; whatever it refuses is decoded
    and transformed by the Python path (which names bad records), offset order kept."""
    seen: list[bytes] = []

    def fast(value: bytes, key: bytes | None, offset: int) -> tuple[str, int, bytes] | None:
        seen.append(value)
        if value.startswith(b"fast"):
            return f"f{offset}", offset * 10, b'{"fast":true}'
        return None

    batch = Batch()
    processor = RecordProcessor(STREAM, FakeDecoder(), Transformer(STREAM), fast=fast)
    processor.process(records(b"fast", b"a:1", b"?", b"fast", None), batch, now=0.0)
    assert [(a.doc_id, a.version, a.body) for a in batch.actions] == [
        ("f0", 0, b'{"fast":true}'),
        ("a", 1, b'{"id":"a","v":1}'),
        ("f3", 30, b'{"fast":true}'),
        ("key", 5_004, None),  # a tombstone (broker-time version) never reaches it
    ]
    assert [(d.record.offset, d.stage) for d in batch.dead_letters] == [(2, "decode")]
    assert seen == [b"fast", b"a:1", b"?", b"fast"]
    assert processor.fast_path_on and batch.python_path == 2
    outcome = BatchWriter(STREAM, FakeSink(), FakeLedger()).flush(batch, ["a"])
    assert outcome.python_path == 2


@pytest.mark.parametrize(
    ("mode", "actions", "dead", "filtered"),
    [("delete", 1, 0, 0), ("ignore", 0, 0, 1), ("dead-letter", 0, 1, 0)],
)
def test_tombstone_modes(mode: str, actions: int, dead: int, filtered: int) -> None:
    stream = STREAM.model_copy(update={"tombstones": mode})
    batch = process(None, stream=stream)
    assert (len(batch.actions), len(batch.dead_letters), batch.filtered) == (
        actions,
        dead,
        filtered,
    )
    if actions:
        assert batch.actions[0].op == "delete"


def test_flush_writes_sink_then_commits_offsets_and_all_dead_letters_once() -> None:
    """Rejected documents join the decode failures in the same ledger commit."""
    batch = process(b"a:1", b"!", b"b:2", b"a:3")
    sink, ledger = FakeSink(reject_ids={"b"}), FakeLedger()
    outcome = BatchWriter(STREAM, sink, ledger, run_id=7).flush(batch, ["a"], offsets=["off"])
    ((sent, targets),) = sink.calls
    assert sorted((a.doc_id, a.version) for a in sent) == [("a", 3), ("b", 2)]
    assert targets == ["a"]
    ((offsets, dead, counters),) = ledger.commits
    assert offsets == ["off"]
    assert sorted(d.stage for d in dead) == ["framing", "index"]
    assert counters is not None
    assert counters["consumed"] == 4 and counters["dead_lettered"] == 2
    assert outcome.indexed == 1 and outcome.conflicts == 1


def test_sink_failure_commits_nothing() -> None:
    """When the sink gives up, the ledger is not touched: the batch will be replayed."""
    ledger = FakeLedger()
    with pytest.raises(RetriesExhausted):
        BatchWriter(STREAM, FakeSink(fail=True), ledger).flush(process(b"a:1"), ["a"], ["off"])
    assert ledger.commits == []


def test_dead_letters_are_published_before_the_ledger_commit() -> None:
    order: list[str] = []
    ledger = FakeLedger()

    def publish(dead: Sequence[DeadLetter]) -> None:
        order.append(f"publish:{len(dead)}")
        assert ledger.commits == []

    BatchWriter(STREAM, FakeSink(), ledger, publish_dead_letters=publish).flush(
        process(b"!", b"a:1"), ["a"]
    )
    assert order == ["publish:1"] and len(ledger.commits) == 1


def test_a_transient_ledger_failure_is_retried_and_the_commit_lands_once() -> None:
    """PostgreSQL briefly unreachable: the commit is retried by the policy, not given up."""
    from ingest.errors import TransientError
    from ingest.retry import retrying

    class FlakyLedger(FakeLedger):
        failures = 2

        def commit(self, *args: Any, **kwargs: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise TransientError("connection refused")
            super().commit(*args, **kwargs)

    ledger = FlakyLedger()
    policy = retrying(max_total_s=5, initial_s=0.001, max_s=0.002)
    BatchWriter(STREAM, FakeSink(), ledger, retry=policy).flush(process(b"a:1"), ["a"], ["o"])
    assert ledger.failures == 0 and len(ledger.commits) == 1


def test_each_flush_is_numbered_and_a_retried_commit_resends_the_same_number() -> None:
    """The ledger counts a run's counters once per (writer, flush number); a commit re-sent
    after a lost reply must carry the number it had, the next flush the next one."""
    from ingest.errors import TransientError
    from ingest.retry import retrying

    class LostReply(FakeLedger):
        lost = 1

        def commit(self, *args: Any, **kwargs: Any) -> None:
            super().commit(*args, **kwargs)  # it landed ...
            if self.lost:
                self.lost -= 1
                raise TransientError("server closed the connection")  # ... but no reply

    ledger = LostReply()
    policy = retrying(max_total_s=5, initial_s=0.001, max_s=0.002)
    writer = BatchWriter(STREAM, FakeSink(), ledger, retry=policy)
    writer.flush(process(b"a:1"), ["a"], ["o"])
    writer.flush(process(b"b:2"), ["a"], ["o"])
    other = BatchWriter(STREAM, FakeSink(), ledger, retry=policy)
    other.flush(process(b"c:3"), ["a"], ["o"])
    assert all(mark is not None for mark in ledger.marks)
    (w, n1), (w_again, n1_again), (w2, n2), (o, m1) = ledger.marks  # type: ignore[misc]
    assert w == w_again == w2 and (n1, n1_again, n2) == (1, 1, 2)
    assert o != w and m1 == 1


# -- deleted documents stay deleted (the check every write path shares) -------------------


def _batch(*actions: tuple[str, str, int]) -> Batch:
    """A batch of (op, id, version) actions, one record each, in offset order."""
    batch = Batch()
    for offset, (op, doc_id, version) in enumerate(actions):
        record = RawRecord("t", 0, offset, doc_id.encode(), None if op == "delete" else b"x")
        batch.note(record, 0.0)
        body = None if op == "delete" else b"{}"
        batch.add_action(IndexAction(op, doc_id, version, body, record))  # type: ignore[arg-type]
    return batch


def test_a_write_not_newer_than_a_recorded_delete_is_dropped_as_a_conflict() -> None:
    """A delete committed by an earlier flush (any process, any path) outlives the index's
    memory of it: equal and older versions never reach the sink, newer ones do."""
    ledger = FakeLedger()
    sink = FakeSink()
    writer = BatchWriter(STREAM, sink, ledger)
    writer.flush(_batch(("delete", "a", 5)), ["a"])
    assert ledger.markers == {("a", "a"): 5}

    outcome = writer.flush(_batch(("index", "a", 4), ("index", "a", 5), ("index", "b", 1)), ["a"])
    ((sent, _),) = sink.calls[1:]
    assert [(a.doc_id, a.version) for a in sent] == [("b", 1)]
    assert (outcome.superseded, outcome.conflicts, outcome.indexed) == (2, 2, 1)
    assert ledger.commits[-1][1] == [], "superseded writes are not dead letters"
    assert ledger.marker_queries[-1] == ["a", "b"], "one query for the batch's ids"

    writer.flush(_batch(("index", "a", 6)), ["a"])
    assert [(a.doc_id, a.version) for a in sink.calls[-1][0]] == [("a", 6)]


def test_a_delete_in_the_same_batch_supersedes_older_writes_and_is_recorded() -> None:
    ledger = FakeLedger()
    sink = FakeSink()
    outcome = BatchWriter(STREAM, sink, ledger).flush(
        _batch(("index", "a", 3), ("delete", "a", 4), ("index", "a", 2)), ["a"]
    )
    ((sent, _),) = sink.calls
    assert [(a.op, a.version) for a in sent] == [("delete", 4)]
    assert outcome.conflicts == 2
    assert ledger.markers == {("a", "a"): 4}


def test_a_delete_the_index_refuses_is_not_recorded_and_markers_keep_the_newest() -> None:
    ledger = FakeLedger()
    writer = BatchWriter(STREAM, FakeSink(reject_ids={"r"}), ledger)
    writer.flush(_batch(("delete", "r", 9), ("delete", "a", 7)), ["a"])
    writer.flush(_batch(("delete", "a", 3)), ["a"])
    assert ledger.markers == {("a", "a"): 7}


def test_a_batch_of_deletes_only_asks_the_ledger_nothing() -> None:
    ledger = FakeLedger()
    BatchWriter(STREAM, FakeSink(), ledger).flush(_batch(("delete", "a", 1)), ["a"])
    assert ledger.marker_queries == []
