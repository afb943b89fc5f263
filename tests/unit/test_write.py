"""A refused newest version falls back to the next-newest at the batch/writer seam, so a
document's end state does not depend on where the batch boundaries fell."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from ingest.pipeline.batch import Batch
from ingest.pipeline.process import BatchWriter, RecordProcessor
from ingest.pipeline.transform import Transformer
from ingest.pipeline.write import write_newest_accepted
from ingest.types import IndexAction
from tests.unit.test_pipeline import STREAM, FakeDecoder, FakeLedger, Result, records


@dataclass
class VersionSink:
    """An index with external versions that refuses the (id, version) pairs in ``refuse``."""

    refuse: set[tuple[str, int]] = field(default_factory=set)
    held: dict[str, int] = field(default_factory=dict)
    rounds: list[list[tuple[str, int]]] = field(default_factory=list)

    def write(self, actions: Sequence[IndexAction], targets: Sequence[str]) -> Result:
        self.rounds.append([(a.doc_id, a.version) for a in actions])
        result = Result()
        for a in actions:
            if (a.doc_id, a.version) in self.refuse:
                result.rejected.append((a, "mapper_parsing_exception: failed to parse"))
            elif self.held.get(a.doc_id, -1) >= a.version:
                result.conflicts += 1
            else:
                self.held[a.doc_id] = a.version
                result.indexed += 1
        return result


def flush(values: Sequence[bytes], sink: VersionSink, first_offset: int = 0) -> FakeLedger:
    batch = Batch()
    recs = records(*values)
    for r in recs:
        r.offset += first_offset
    RecordProcessor(STREAM, FakeDecoder(), Transformer(STREAM)).process(recs, batch, now=0.0)
    ledger = FakeLedger()
    BatchWriter(STREAM, sink, ledger).flush(batch, ["idx"])
    return ledger


def dead_offsets(ledger: FakeLedger) -> list[int]:
    return [d.record.offset for _o, dead, _c in ledger.commits for d in dead]


def test_a_refused_newest_version_falls_back_to_the_older_one_in_the_same_flush() -> None:
    """v1 valid, v2 refused, one batch: the document ends at v1 and v2 is dead-lettered."""
    sink = VersionSink(refuse={("a", 2)})
    ledger = flush([b"a:1", b"a:2", b"b:1"], sink)
    assert sink.held == {"a": 1, "b": 1}
    assert dead_offsets(ledger) == [1]
    assert sink.rounds == [[("a", 2), ("b", 1)], [("a", 1)]]
    _offsets, dead, counters = ledger.commits[0]
    assert dead[0].stage == "index" and "failed to parse" in dead[0].reason
    assert counters is not None
    assert (counters["indexed"], counters["conflicts"], counters["dead_lettered"]) == (2, 0, 1)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_the_end_state_does_not_depend_on_the_batch_boundary(split: int) -> None:
    """The same four versions flushed as one batch or split anywhere give the same index
    and the same dead letters: the newest accepted version wins, every refused one is dead."""
    values = [b"a:1", b"a:3", b"a:2", b"a:4"]
    refuse = {("a", 4), ("a", 3)}
    whole = VersionSink(refuse=set(refuse))
    one = flush(values, whole)
    parts = VersionSink(refuse=set(refuse))
    first = flush(values[:split], parts)
    second = flush(values[split:], parts, first_offset=split)
    assert parts.held == whole.held == {"a": 2}
    assert sorted(dead_offsets(first) + dead_offsets(second)) == sorted(dead_offsets(one))
    assert sorted(dead_offsets(one)) == [1, 3]


def test_every_version_refused_dead_letters_them_all() -> None:
    """Nothing accepted: each version is dead-lettered once and the id stays absent."""
    sink = VersionSink(refuse={("a", 1), ("a", 2), ("a", 3)})
    ledger = flush([b"a:2", b"a:1", b"a:3"], sink)
    assert sink.held == {}
    assert sorted(dead_offsets(ledger)) == [0, 1, 2]
    assert len(sink.rounds) == 3


def test_without_refusals_one_round_and_superseded_versions_count_as_conflicts() -> None:
    """The common case stays one bulk round with only the newest version per id."""
    sink = VersionSink()
    outcome = write_newest_accepted(
        sink,
        [IndexAction("index", "a", v, b"{}", records(b"")[0]) for v in (1, 3, 2)],
        ["idx"],
    )
    assert sink.rounds == [[("a", 3)]]
    assert (outcome.indexed, outcome.conflicts, outcome.rounds, outcome.rejected) == (1, 2, 1, [])
