"""KafkaSource's log-end check, with a fake confluent_kafka Consumer at the seam.

librdkafka keeps a partition's cached high watermark across assignments, so right after a
partition comes back to the same consumer the cache can be older than the ledger's offset.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TopicPartition

import ingest.kafka.consumer as consumer_module
from ingest.errors import OffsetResetError
from ingest.kafka.consumer import KafkaSource

TOPIC = "orders"
INVALID = -1001  # librdkafka's "no offset yet"


class FakeConsumer:
    """Cached watermarks as last fetched, and what the broker would answer now."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.cached: dict[int, int] = {}
        self.broker: dict[int, int] = {}
        self.fresh_queries = 0
        self.callbacks: dict[str, Any] = {}

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def assign(self, partitions: list[TopicPartition]) -> None:
        pass

    def unassign(self) -> None:
        pass

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        # Nothing consumed since the assignment: librdkafka reports no position yet.
        return [TopicPartition(TOPIC, tp.partition, INVALID) for tp in partitions]

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        if cached:
            return (INVALID, self.cached.get(tp.partition, INVALID))
        self.fresh_queries += 1
        return (0, self.broker[tp.partition])

    def close(self) -> None:
        pass


@pytest.fixture
def source(monkeypatch: pytest.MonkeyPatch) -> KafkaSource:
    monkeypatch.setattr(consumer_module, "Consumer", FakeConsumer)
    ledger: dict[int, int] = {}
    src = KafkaSource(
        {"group.id": "g"},
        TOPIC,
        on_assign=lambda parts: {p: ledger.get(p) for p in parts},
        on_revoke=lambda parts: None,
        on_lost=lambda parts: None,
    )
    src.ledger = ledger  # type: ignore[attr-defined]
    src.start()
    return src


def _fake(source: KafkaSource) -> FakeConsumer:
    return source._consumer  # type: ignore[return-value]


def _assign(source: KafkaSource, partition: int, next_offset: int) -> None:
    source.ledger[partition] = next_offset  # type: ignore[attr-defined]
    fake = _fake(source)
    fake.callbacks["on_assign"](fake, [TopicPartition(TOPIC, partition)])


def _revoke(source: KafkaSource, partition: int) -> None:
    fake = _fake(source)
    fake.callbacks["on_revoke"](fake, [TopicPartition(TOPIC, partition)])


def test_reassigned_partition_with_stale_cached_watermark_is_not_a_reset(
    source: KafkaSource,
) -> None:
    """p0 comes back at ledger offset 150 while the cache still says 100 from the last
    time: the broker (160) is asked, and the lag is 10, not an OffsetResetError."""
    fake = _fake(source)
    _assign(source, 0, 90)
    fake.cached[0] = 100  # fetched during the first assignment
    assert source.lag() == {0: 10}
    _revoke(source, 0)  # another member reads on to 150 meanwhile
    fake.broker[0] = 160
    _assign(source, 0, 150)

    assert source.lag() == {0: 10}
    assert fake.fresh_queries == 1


def test_reassigned_partition_beyond_the_real_log_end_is_a_reset(source: KafkaSource) -> None:
    """The broker confirms the log end is below the ledger's offset: the topic was
    recreated, and the check still refuses."""
    fake = _fake(source)
    _assign(source, 0, 90)
    fake.cached[0] = 100
    _revoke(source, 0)
    fake.broker[0] = 5
    _assign(source, 0, 150)

    with pytest.raises(OffsetResetError, match="beyond the log end 5"):
        source.lag()


def test_watermark_fetched_in_this_assignment_is_trusted(source: KafkaSource) -> None:
    """Once a fetch of this assignment updated the cache, its value decides, no query."""
    fake = _fake(source)
    _assign(source, 0, 150)
    fake.cached[0] = 3  # the first fetch answered: the log ends at 3
    with pytest.raises(OffsetResetError):
        source.lag()
    assert fake.fresh_queries == 0
