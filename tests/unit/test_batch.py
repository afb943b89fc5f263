"""Micro-batch bookkeeping: flush triggers, next offsets, dropping lost partitions."""

from __future__ import annotations

import pytest

from ingest.pipeline.batch import Batch, FlushPolicy, newest_per_document
from ingest.types import DeadLetter, IndexAction, RawRecord

POLICY = FlushPolicy(max_records=3, max_bytes=100, linger_s=1.0)


def rec(offset: int, partition: int = 0, size: int = 10) -> RawRecord:
    return RawRecord("t", partition, offset, b"k", b"x" * (size - 1))


def act(doc_id: str, version: int, offset: int = 0) -> IndexAction:
    return IndexAction("index", doc_id, version, b"{}", rec(offset))


def test_empty_batch_is_never_due() -> None:
    """An empty batch does not flush, however long it waited."""
    assert not Batch().is_due(POLICY, now=1e9)


@pytest.mark.parametrize(
    ("records", "size", "now", "due"),
    [
        pytest.param(3, 10, 0.0, True, id="max-records"),
        pytest.param(1, 100, 0.0, True, id="max-bytes"),
        pytest.param(1, 10, 1.0, True, id="linger"),
        pytest.param(2, 10, 0.5, False, id="none-yet"),
    ],
)
def test_flush_on_whichever_limit_comes_first(
    records: int, size: int, now: float, due: bool
) -> None:
    """Records, bytes or linger time: the first limit reached makes the batch due."""
    batch = Batch()
    for i in range(records):
        batch.note(rec(i, size=size), now=0.0)
    assert batch.is_due(POLICY, now) is due


def test_next_offsets_are_last_offset_plus_one_per_partition() -> None:
    """After a flush each partition continues right after its highest offset."""
    batch = Batch()
    for r in (rec(5, 0), rec(7, 0), rec(6, 0), rec(2, 1)):
        batch.note(r, now=0.0)
    assert batch.next_offsets() == {("t", 0): 8, ("t", 1): 3}
    assert batch.first_offsets == {("t", 0): 5, ("t", 1): 2}


def test_time_left_counts_from_first_record() -> None:
    batch = Batch()
    assert batch.time_left_s(POLICY, now=5.0) == 1.0
    batch.note(rec(0), now=5.0)
    assert batch.time_left_s(POLICY, now=5.25) == pytest.approx(0.75)


def test_records_waiting_through_a_flush_count_their_linger_from_its_start() -> None:
    """Fetched while the previous flush ran (from 10.0 to 10.8): due at 11.0, one linger
    after they started waiting, not at 11.8; an empty batch and a later start change nothing."""
    empty = Batch()
    empty.waiting_since(10.0)
    assert empty.opened_at is None
    batch = Batch()
    batch.note(rec(0), now=10.8)
    batch.waiting_since(10.0)
    assert not batch.is_due(POLICY, now=10.9)
    assert batch.is_due(POLICY, now=11.0)
    batch.waiting_since(10.5)
    assert batch.opened_at == 10.0


def test_drop_partitions_forgets_their_records_only() -> None:
    """A lost partition's buffered work is dropped; others stay."""
    batch = Batch()
    r0, r1 = rec(1, 0), rec(1, 1)
    for r in (r0, r1):
        batch.note(r, now=0.0)
    batch.add_action(IndexAction("index", "a", 1, b"{}", r0))
    batch.add_dead_letter(DeadLetter(r1, "decode", "bad", "s"))
    batch.drop_partitions({("t", 1)})
    assert [a.doc_id for a in batch.actions] == ["a"]
    assert batch.dead_letters == []
    assert batch.next_offsets() == {("t", 0): 2}
    batch.drop_partitions({("t", 0)})
    assert batch.is_empty()


def test_newest_per_document_keeps_highest_version_first_on_tie() -> None:
    """Only the newest version of a document is sent; on a tie the first, as the index does."""
    actions = [act("a", 1, 0), act("b", 5, 1), act("a", 3, 2), act("a", 3, 3), act("b", 4, 4)]
    kept = newest_per_document(actions)
    assert sorted((a.doc_id, a.version, a.record.offset) for a in kept) == [
        ("a", 3, 2),
        ("b", 5, 1),
    ]


def test_newest_per_document_returns_input_when_ids_unique() -> None:
    actions = [act("a", 1), act("b", 1)]
    assert newest_per_document(actions) is actions


def test_absorb_appends_a_later_batch() -> None:
    """Batches put back together (a fenced revoke re-buffers those in flight) keep read
    order, the widest offsets per partition and every count."""
    first, later = Batch(), Batch()
    for batch, offsets in ((first, (1, 2)), (later, (3, 4))):
        for offset in offsets:
            batch.note(rec(offset), now=float(offset))
            batch.add_action(act(f"d{offset}", 1, offset))
    later.add_dead_letter(DeadLetter(rec(5, 1), "decode", "bad", "s"))
    later.note(rec(5, 1), now=5.0)
    first.absorb(later)
    assert [a.doc_id for a in first.actions] == ["d1", "d2", "d3", "d4"]
    assert len(first.dead_letters) == 1
    assert first.next_offsets() == {("t", 0): 5, ("t", 1): 6}
    assert first.first_offsets == {("t", 0): 1, ("t", 1): 5}
    assert first.records == 5 and first.size_bytes == 50 and first.opened_at == 1.0


def test_held_bytes_count_records_and_rendered_documents() -> None:
    """A batch in flight holds its raw records and the documents rendered from them."""
    batch = Batch()
    batch.note(rec(1, size=10), now=0.0)
    batch.add_action(IndexAction("index", "a", 1, b'{"x":1}', rec(1)))
    batch.add_action(IndexAction("delete", "b", 1, None, rec(1)))
    assert batch.held_bytes() == 10 + 7
