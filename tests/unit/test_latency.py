"""Ingestion latency: one flush's timestamps become exact bucket counts, windows of flushes
add up, quantiles are estimated as histogram_quantile does, and the writer labels them."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from ingest.daemon.metrics import Metrics
from ingest.errors import ConfigError
from ingest.latency import (
    BUCKETS_S,
    EventTime,
    add_counts,
    event_time_for,
    measure_flush,
    quantile,
    summarise,
)
from ingest.pipeline.process import BatchWriter
from ingest.types import IndexAction, RawRecord
from tests.unit.test_pipeline import STREAM, FakeLedger, FakeSink, process

ACKED_MS = 1_700_000_000_000


def _reference(latencies_s: list[float]) -> list[int]:
    """Bucket counts the slow, obvious way (a latency on a bound belongs to that bucket)."""
    counts = [0] * (len(BUCKETS_S) + 1)
    for lat in latencies_s:
        index = next((i for i, b in enumerate(BUCKETS_S) if max(0.0, lat) <= b), len(BUCKETS_S))
        counts[index] += 1
    return counts


@pytest.mark.parametrize("seed", range(5))
def test_summarise_matches_per_record_bucketing(seed: int) -> None:
    """Binary search over sorted timestamps gives the same counts as bucketing each record."""
    rng = random.Random(seed)
    latencies_ms = [
        rng.choice([0, 10, 25, 999, 1000, 1001, 3_600_000, 3_600_001]) for _ in range(50)
    ]
    latencies_ms += [int(rng.expovariate(1 / 2000)) for _ in range(500)]
    latencies_ms += [-5, -1000]  # stamped in the future: count as 0 s
    timestamps = [ACKED_MS - lat for lat in latencies_ms]
    sample = summarise("kafka_timestamp", timestamps, ACKED_MS)
    assert sample is not None
    assert list(sample.counts) == _reference([lat / 1000 for lat in latencies_ms])
    assert sample.count == len(latencies_ms)
    assert sample.sum_s == pytest.approx(sum(max(0, lat) for lat in latencies_ms) / 1000)
    assert sample.newest_ms == ACKED_MS + 1000


def test_records_without_a_timestamp_are_left_out() -> None:
    """A producer that set no timestamp (0 or -1) gives no latency, not a 54-year one."""
    assert summarise("kafka_timestamp", [0, -1, 0], ACKED_MS) is None
    sample = summarise("kafka_timestamp", [0, ACKED_MS - 40], ACKED_MS)
    assert sample is not None and sample.count == 1 and sample.counts[2] == 1  # (25, 50] ms


@pytest.mark.parametrize(
    ("latencies_s", "q", "expected"),
    [
        pytest.param([0.3] * 100, 0.5, 0.375, id="middle-of-one-bucket"),
        pytest.param([0.005] * 99 + [20.0], 0.99, 0.01, id="p99-in-the-first-bucket"),
        pytest.param([0.005] * 98 + [20.0] * 2, 0.99, 20.0, id="p99-in-a-late-bucket"),
        pytest.param([7200.0], 0.5, 3600.0, id="over-an-hour-answers-the-last-bound"),
    ],
)
def test_quantile_interpolates_inside_the_bucket(
    latencies_s: list[float], q: float, expected: float
) -> None:
    counts = _reference(latencies_s)
    assert quantile(q, counts) == pytest.approx(expected)


def test_quantile_of_nothing_is_none_and_windows_add_bucket_by_bucket() -> None:
    assert quantile(0.5, [0] * (len(BUCKETS_S) + 1)) is None
    a = summarise("kafka_timestamp", [ACKED_MS - 300] * 3, ACKED_MS)
    b = summarise("kafka_timestamp", [ACKED_MS - 300, ACKED_MS - 20_000], ACKED_MS)
    assert a is not None and b is not None
    total = add_counts([a.counts, b.counts])
    assert total == _reference([0.3] * 4 + [20.0])


def _action(doc: dict[str, Any], version: int, ts_ms: int) -> IndexAction:
    record = RawRecord("t", 0, 0, b"k", b"v", ts_ms)
    return IndexAction("index", str(doc.get("id", "x")), version, orjson.dumps(doc), record)


def test_event_time_comes_from_the_version_or_from_the_document() -> None:
    """A field that is also the version costs nothing; another is read from the body."""
    actions = [
        _action({"id": "a", "at": "2023-11-14T22:13:19.500Z"}, 1_699_999_999_000, 5),
        _action({"id": "b"}, 7, 5),  # no event time in the document: left out
    ]
    assert EventTime("v", from_version=True).timestamps_ms(actions) == [1_699_999_999_000, 7]
    assert EventTime("at", from_version=False).timestamps_ms(actions) == [1_699_999_999_500]


def test_event_time_field_must_be_a_top_level_timestamp() -> None:
    schema = {
        "name": "Order",
        "fields": [
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {
                "name": "maybe",
                "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}],
            },
            {"name": "n", "type": "long"},
        ],
    }
    assert event_time_for(None, None, schema) is None
    reader = event_time_for("at", "at", schema)
    assert reader is not None and reader.from_version
    other = event_time_for("maybe", "at", schema)
    assert other is not None and not other.from_version
    for bad in ("n", "missing"):
        with pytest.raises(ConfigError, match="event_time_field"):
            event_time_for(bad, None, schema)


def test_measure_flush_gives_one_sample_per_clock() -> None:
    actions = [_action({"id": "a"}, ACKED_MS - 2_000, ACKED_MS - 500)]
    latency = measure_flush("s", "live", actions, ACKED_MS, EventTime("v", from_version=True))
    assert [s.source for s in latency.samples] == ["kafka_timestamp", "event_time"]
    assert [s.sum_s for s in latency.samples] == [0.5, 2.0]


def test_the_writer_measures_at_the_acknowledgement_and_skips_rejected_records() -> None:
    """Latency is taken when the sink answered, labelled with the writer's path, handed to
    the ledger commit, and leaves out records the server refused (they are dead letters)."""
    batch = process(b"a:1", b"b:2", b"c:3")
    for i, action in enumerate(batch.actions):
        action.record.timestamp_ms = ACKED_MS - 1000 * (i + 1)
    ledger = FakeLedger()
    seen: list[Any] = []
    original = ledger.commit

    def commit(*args: Any, latency: Any = None, **kwargs: Any) -> None:
        seen.append(latency)
        original(*args, **kwargs)

    ledger.commit = commit  # type: ignore[method-assign]
    writer = BatchWriter(
        STREAM, FakeSink(reject_ids={"b"}), ledger, path="backfill", wall_clock=lambda: 1.7e9
    )
    outcome = writer.flush(batch, ["a"])
    assert outcome.latency is not None and seen == [outcome.latency]
    assert outcome.latency.path == "backfill"
    (sample,) = outcome.latency.samples
    assert sample.count == 2 and sample.sum_s == pytest.approx(1.0 + 3.0)


def test_metrics_render_flush_samples_as_a_cumulative_histogram() -> None:
    m = Metrics(process_metrics=False)
    m.register_stream("orders")
    name = "ingest_ingestion_latency_seconds"
    zero = {"stream": "orders", "source": "kafka_timestamp", "path": "live"}
    assert m.value(f"{name}_count", zero) == 0
    one = summarise("kafka_timestamp", [ACKED_MS - 300, ACKED_MS - 20_000], ACKED_MS)
    two = summarise("event_time", [ACKED_MS - 300], ACKED_MS)
    assert one is not None and two is not None
    m.ingestion_latency("orders", "live", [one, two])
    m.ingestion_latency("orders", "live", [one])
    assert m.value(f"{name}_count", zero) == 4
    assert m.value(f"{name}_sum", zero) == pytest.approx(2 * 20.3)
    assert m.value(f"{name}_bucket", {**zero, "le": "0.5"}) == 2
    assert m.value(f"{name}_bucket", {**zero, "le": "10.0"}) == 2
    assert m.value(f"{name}_bucket", {**zero, "le": "30.0"}) == 4
    assert m.value(f"{name}_bucket", {**zero, "le": "+Inf"}) == 4
    event = {**zero, "source": "event_time"}
    assert m.value(f"{name}_count", event) == 1
    assert b'le="3600.0"' in m.render()


def test_ready_gauge_asks_at_each_scrape_and_heartbeat_holds_the_time() -> None:
    m = Metrics(process_metrics=False)
    state = {"ready": False}
    m.readiness(lambda: state["ready"])
    assert m.value("ingest_ready") == 0
    state["ready"] = True
    assert m.value("ingest_ready") == 1
    m.heartbeat("orders", at=1_700_000_000.0)
    assert m.value("ingest_heartbeat_timestamp_seconds", {"stream": "orders"}) == 1_700_000_000.0
