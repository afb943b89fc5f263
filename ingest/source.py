"""Kafka as a record source: the only consumer-side module that imports confluent_kafka.

``KafkaSource`` is the daemon's group member: it subscribes, and on every assignment asks a
callback (the ledger) where each partition continues — the ledger, not Kafka's committed
offsets, is the truth. ``KafkaRangeReader`` reads bounded offset ranges with ``assign()`` for
backfills: it never joins a group and never commits.

Offsets: a message's ``offset`` is its own position; ``next_offset`` is where to read next.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from ingest.errors import ConfigError, FatalError, OffsetResetError, TransientError
from ingest.settings import Settings
from ingest.types import RawRecord

log = structlog.get_logger(__name__)

#: Called on assignment with the partitions; returns partition -> next_offset (None = start).
AssignHandler = Callable[[list[int]], Mapping[int, int | None]]
#: Called on revocation (flush and commit) or loss (drop) with the partitions.
RevokeHandler = Callable[[list[int]], None]


def consumer_config(settings: Settings, group_id: str, **extra: Any) -> dict[str, Any]:
    """librdkafka consumer properties: settings' pass-through client config plus ours."""
    max_poll_ms = int(max(300_000, (settings.runtime.max_retry_s + 120) * 1000))
    conf = settings.kafka.client_config()
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # A stored position outside the log means the topic was recreated or truncated:
            # surface it as an error instead of silently jumping (PITFALLS #3).
            "auto.offset.reset": "error",
            "session.timeout.ms": settings.kafka.session_timeout_ms,
            "heartbeat.interval.ms": max(100, settings.kafka.session_timeout_ms // 4),
            "partition.assignment.strategy": settings.kafka.assignment_strategy,
            "max.poll.interval.ms": max_poll_ms,
            # Bound what librdkafka prefetches so memory does not grow with the backlog.
            "queued.max.messages.kbytes": max(
                1024, settings.runtime.max_buffered_bytes // 2 // 1024
            ),
            "fetch.max.bytes": 16 * 1024 * 1024,
            "error_cb": _log_client_error,
        }
    )
    conf.update(extra)
    return conf


_ERROR_LOG_EVERY_S = 10.0
_last_logged: dict[str, tuple[float, int]] = {}


def _log_client_error(err: KafkaError) -> None:
    """librdkafka reports a down broker many times a second: log each kind once per 10 s."""
    if err.fatal():
        log.error("kafka_fatal_error", error=err.str())
        return
    now = time.monotonic()
    last, suppressed = _last_logged.get(err.name(), (-_ERROR_LOG_EVERY_S, 0))
    if now - last < _ERROR_LOG_EVERY_S:
        _last_logged[err.name()] = (last, suppressed + 1)
        return
    _last_logged[err.name()] = (now, 0)
    log.warning("kafka_client_error", error=err.str(), code=err.name(), suppressed=suppressed)


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _headers(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(str(k), _as_bytes(v) or b"") for k, v in items]


def _offset(msg: Message) -> int:
    offset = msg.offset()
    return -1 if offset is None else offset


def _to_record(msg: Message) -> RawRecord:
    ts_type, ts = msg.timestamp()
    headers = msg.headers()
    return RawRecord(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=_offset(msg),
        key=_as_bytes(msg.key()),
        value=_as_bytes(msg.value()),
        timestamp_ms=ts if ts_type else 0,
        headers=_headers(headers),
    )


def _check_message_error(msg: Message) -> bool:
    """True for a usable record; raises for errors that must stop the consumer."""
    err = msg.error()
    if err is None:
        return True
    code = err.code()
    if code == KafkaError._PARTITION_EOF:
        return False
    if code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
        raise OffsetResetError(
            f"{msg.topic()}[{msg.partition()}]: stored offset is beyond the log or below "
            "its start (topic recreated, offsets reset or retention deleted unread records); "
            "refusing to skip or re-read silently"
        )
    if err.fatal():
        raise FatalError(f"Kafka consumer fatal error: {err.str()}")
    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED):
        raise FatalError(f"Kafka: {err.str()}")
    log.warning("kafka_consume_error", error=err.str(), topic=msg.topic())
    return False


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
        return [_to_record(m) for m in msgs if _check_message_error(m)]

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
            if position > high:
                raise OffsetResetError(
                    f"{self.topic}[{tp.partition}]: stored offset {position} is beyond the "
                    f"log end {high} (topic recreated or truncated); refusing to skip or "
                    "re-read silently"
                )
            out[tp.partition] = high - position
        return out

    def close(self) -> None:
        """Leave the group (runs the revoke callback) and release the client."""
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("kafka_close_failed", error=str(exc))


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Records ``start <= offset < end`` of one partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


class KafkaRangeReader:
    """Reads bounded offset ranges with ``assign()``: no group membership, no commits."""

    def __init__(self, settings: Settings, *, timeout_s: float = 30.0) -> None:
        conf = settings.kafka.client_config()
        conf.update(
            {
                "group.id": "ingest-backfill-reader",  # required by librdkafka, never joined
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "error_cb": _log_client_error,
            }
        )
        self._conf = conf
        self._timeout_s = timeout_s

    def _consumer(self) -> Consumer:
        return Consumer(self._conf)

    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions; ConfigError if it does not exist."""
        consumer = self._consumer()
        try:
            md = consumer.list_topics(topic, timeout=self._timeout_s)
        except KafkaException as exc:
            raise TransientError(f"Kafka metadata for {topic!r} failed: {exc}") from exc
        finally:
            consumer.close()
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise ConfigError(f"topic {topic!r} does not exist on the broker")
        return sorted(meta.partitions)

    def end_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """Each partition's high watermark as seen by a real fetch.

        Reads from the start until end-of-partition and takes the fetch response's high
        watermark, which is right on every broker (tansu's ListOffsets "latest" is not for
        batched produce, see LOCAL-STACK.md). Cheap on Apache Kafka too: the last fetch
        carries it.
        """
        consumer = self._consumer()
        try:
            out: dict[int, int] = {}
            for p in partitions:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=self._timeout_s, cached=False
                )
                out[p] = high
            tps = [TopicPartition(topic, p, max(0, out[p] - 1)) for p in partitions]
            consumer.assign(tps)
            pending = set(partitions)
            deadline = time.monotonic() + self._timeout_s
            while pending and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=1000, timeout=0.5):
                    err = msg.error()
                    p = msg.partition() or 0
                    if err is not None and err.code() == KafkaError._PARTITION_EOF:
                        _low, high = consumer.get_watermark_offsets(
                            TopicPartition(topic, p), cached=True
                        )
                        out[p] = max(out[p], high, _offset(msg))
                        pending.discard(p)
                    elif err is None:
                        out[p] = max(out[p], _offset(msg) + 1)
            if pending:
                raise TransientError(f"no end-of-partition from {topic} {sorted(pending)}")
            return out
        except KafkaException as exc:
            raise TransientError(f"Kafka watermarks for {topic!r} failed: {exc}") from exc
        finally:
            consumer.close()

    def offsets_for_times(
        self, topic: str, partitions: Sequence[int], timestamp_ms: int
    ) -> dict[int, int | None]:
        """Earliest offset with timestamp >= T per partition (None: none, i.e. the end).

        A lower bound only: timestamps need not be monotonic, so readers still filter
        records by timestamp.
        """
        consumer = self._consumer()
        try:
            tps = [TopicPartition(topic, p, timestamp_ms) for p in partitions]
            found = consumer.offsets_for_times(tps, timeout=self._timeout_s)
        except KafkaException as exc:
            raise TransientError(f"offsets_for_times on {topic!r} failed: {exc}") from exc
        finally:
            consumer.close()
        return {tp.partition: (None if tp.offset < 0 else tp.offset) for tp in found}

    def read(
        self, rng: OffsetRange, *, batch_records: int = 2000, idle_timeout_s: float | None = None
    ) -> Iterator[list[RawRecord]]:
        """Yield lists of records of ``rng`` in offset order until its end offset.

        Raises TransientError when the broker gives nothing for ``idle_timeout_s`` before the
        end is reached, so a task never hangs forever.
        """
        if rng.size == 0:
            return
        idle_limit = self._timeout_s if idle_timeout_s is None else idle_timeout_s
        consumer = self._consumer()
        try:
            consumer.assign([TopicPartition(rng.topic, rng.partition, rng.start)])
            position = rng.start
            last_progress = time.monotonic()
            while position < rng.end:
                want = min(batch_records, rng.end - position)
                msgs = consumer.consume(num_messages=want, timeout=0.5)
                out: list[RawRecord] = []
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            # Past the log end: offsets in a gap (compaction, transaction
                            # markers) up to here hold no records.
                            if _offset(msg) >= rng.end:
                                position = rng.end
                            continue
                        _check_message_error(msg)
                        continue
                    if _offset(msg) >= rng.end:
                        position = rng.end
                        break
                    out.append(_to_record(msg))
                    position = _offset(msg) + 1
                if out:
                    last_progress = time.monotonic()
                    yield out
                elif time.monotonic() - last_progress > idle_limit:
                    raise TransientError(
                        f"{rng.topic}[{rng.partition}] gave no records for {idle_limit:.0f}s "
                        f"at offset {position} (range ends at {rng.end})"
                    )
        except KafkaException as exc:
            raise TransientError(f"reading {rng.topic}[{rng.partition}] failed: {exc}") from exc
        finally:
            consumer.close()


__all__ = [
    "KafkaRangeReader",
    "KafkaSource",
    "OffsetRange",
    "consumer_config",
]
