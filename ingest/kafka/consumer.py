"""Kafka as the daemon's record source: the only module that joins a consumer group.

``KafkaSource`` is the daemon's group member: it subscribes, and on every assignment asks a
callback (the ledger) where each partition continues — the ledger, not Kafka's committed
offsets, is the truth. Bounded reads for backfills live in :mod:`ingest.kafka.ranges`.

Offsets: a message's ``offset`` is its own position; ``next_offset`` is where to read next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    TopicPartition,
)

from ingest.errors import FatalError, OffsetResetError
from ingest.kafka.messages import check_message_error, to_record
from ingest.types import RawRecord

log = structlog.get_logger(__name__)

#: How long :meth:`KafkaSource.lag` waits for the broker to confirm a suspect watermark.
_WATERMARK_TIMEOUT_S = 5.0

#: Called on assignment with the partitions; returns partition -> next_offset (None = start).
AssignHandler = Callable[[list[int]], Mapping[int, int | None]]
#: Called on revocation (flush and commit) or loss (drop) with the partitions.
RevokeHandler = Callable[[list[int]], None]


class KafkaSource:
    """One consumer-group member reading one topic; positions come from the ledger."""

    def __init__(
        self,
        conf: dict[str, Any],
        topic: str,
        *,
        on_assign: AssignHandler,
        on_revoke: RevokeHandler,
        on_lost: RevokeHandler,
    ) -> None:
        self.topic = topic
        self._cooperative = "cooperative" in str(conf.get("partition.assignment.strategy", ""))
        self._consumer = Consumer(conf)
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._assigned: set[int] = set()
        #: Where each partition started: the position until the first record is consumed.
        self._starts: dict[int, int] = {}
        #: The client's cached high watermark of each partition when it was assigned. While
        #: the cache still holds that value no fetch of this assignment has answered yet,
        #: and it may be left from an earlier assignment of the same partition.
        self._high_at_assign: dict[int, int] = {}

    def start(self) -> None:
        """Join the group; assignment happens inside a later :meth:`poll`."""
        self._consumer.subscribe(
            [self.topic],
            on_assign=self._assign_cb,
            on_revoke=self._revoke_cb,
            on_lost=self._lost_cb,
        )

    @property
    def assigned(self) -> frozenset[int]:
        return frozenset(self._assigned)

    def _assign_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions]
        positions = self._on_assign(parts)
        for tp in partitions:
            next_offset = positions.get(tp.partition)
            tp.offset = OFFSET_BEGINNING if next_offset is None else next_offset
            self._starts[tp.partition] = -1 if next_offset is None else next_offset
            self._high_at_assign[tp.partition] = self._cached_high(consumer, tp.partition)
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        self._assigned.update(parts)
        log.info("partitions_assigned", topic=self.topic, positions=dict(positions))

    def _revoke_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions]
        self._on_revoke(parts)
        self._forget(consumer, partitions)
        log.info("partitions_revoked", topic=self.topic, partitions=parts)

    def _lost_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions]
        self._on_lost(parts)
        self._forget(consumer, partitions)
        log.warning("partitions_lost", topic=self.topic, partitions=parts)

    def _forget(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        for tp in partitions:
            self._assigned.discard(tp.partition)

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Up to ``max_records`` records; blocks at most ``timeout_s``. Runs rebalance callbacks."""
        try:
            msgs = self._consumer.consume(num_messages=max(1, max_records), timeout=timeout_s)
        except KafkaException as exc:
            raise FatalError(f"Kafka consume failed: {exc}") from exc
        return [to_record(m) for m in msgs if check_message_error(m)]

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Record positions in Kafka for lag tooling; asynchronous, failures only logged."""
        if not next_offsets:
            return
        tps = [TopicPartition(self.topic, p, o) for p, o in next_offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:
            log.warning("kafka_commit_failed", error=str(exc))

    def lag(self) -> dict[int, int]:
        """Per assigned partition: high watermark (as last fetched) minus position.

        Raises OffsetResetError when a position lies beyond the log's end: the topic was
        recreated or truncated under the ledger's offsets. Apache Kafka reports that as
        OFFSET_OUT_OF_RANGE on fetch; brokers that just answer empty (tansu) are caught
        here, from the high watermark the last fetch response carried.
        """
        out: dict[int, int] = {}
        if not self._assigned:
            return out
        positions = self._consumer.position(
            [TopicPartition(self.topic, p) for p in sorted(self._assigned)]
        )
        for tp in positions:
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            position = tp.offset if tp.offset >= 0 else self._starts.get(tp.partition, -1)
            if high < 0 or position < 0:
                continue
            if position > high and high == self._high_at_assign.get(tp.partition):
                # Nothing fetched since the assignment: the cached value may be stale (this
                # consumer had the partition before), so ask the broker before refusing.
                high = self._fresh_high(tp.partition, high)
            if position > high:
                raise OffsetResetError(
                    f"{self.topic}[{tp.partition}]: stored offset {position} is beyond the "
                    f"log end {high} (topic recreated or truncated); refusing to skip or "
                    "re-read silently"
                )
            out[tp.partition] = high - position
        return out

    def _cached_high(self, consumer: Consumer, partition: int) -> int:
        try:
            return int(
                consumer.get_watermark_offsets(TopicPartition(self.topic, partition), cached=True)[
                    1
                ]
            )
        except KafkaException:
            return -1

    def _fresh_high(self, partition: int, cached: int) -> int:
        """The broker's high watermark now; ``cached`` when it cannot say."""
        try:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=_WATERMARK_TIMEOUT_S, cached=False
            )
        except KafkaException as exc:
            log.warning(
                "kafka_watermark_failed", topic=self.topic, partition=partition, error=str(exc)
            )
            return cached
        return int(high)

    def close(self) -> None:
        """Leave the group (runs the revoke callback) and release the client."""
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("kafka_close_failed", error=str(exc))
