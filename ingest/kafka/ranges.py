"""Bounded offset ranges read with ``assign()`` for backfills: no group membership, no commits."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import structlog
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from ingest.errors import ConfigError, OffsetResetError, TransientError
from ingest.kafka.config import log_client_error
from ingest.kafka.messages import check_message_error, message_offset, to_record
from ingest.settings import Settings
from ingest.types import RawRecord

log = structlog.get_logger(__name__)


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
                # A planned range whose start retention (or DeleteRecords) removed must
                # fail, not silently read from the new log start: see ``read``.
                "auto.offset.reset": "error",
                "error_cb": log_client_error,
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

    def high_watermarks(self, topic: str) -> dict[int, int]:
        """Every partition's high watermark (the next offset the broker will assign)."""
        return self.end_offsets(topic, self.partitions(topic))

    def end_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """Each partition's high watermark as seen by a real fetch.

        Reads from the start until end-of-partition and takes the fetch response's high
        watermark, which is right on every broker (tansu's ListOffsets "latest" is not for
        batched produce, see docs/local-stack.md). Cheap on Apache Kafka too: the last fetch
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
                        out[p] = max(out[p], high, message_offset(msg))
                        pending.discard(p)
                    elif err is None:
                        out[p] = max(out[p], message_offset(msg) + 1)
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
        end is reached, so a task never hangs forever, and OffsetResetError naming the
        missing offsets when the log no longer holds the range's start (retention or a
        deletion removed records since the range was planned): reading on from the new log
        start would skip them and the chunk would look done.
        """
        if rng.size == 0:
            return
        idle_limit = self._timeout_s if idle_timeout_s is None else idle_timeout_s
        consumer = self._consumer()
        try:
            low, _high = consumer.get_watermark_offsets(
                TopicPartition(rng.topic, rng.partition), timeout=self._timeout_s, cached=False
            )
            if low > rng.start:
                raise _gone(rng, rng.start, low, "the log now starts at offset " + str(low))
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
                            if message_offset(msg) >= rng.end:
                                position = rng.end
                            continue
                        try:
                            check_message_error(msg)
                        except OffsetResetError as exc:
                            raise _gone(rng, position, None, str(exc)) from exc
                        continue
                    if message_offset(msg) >= rng.end:
                        position = rng.end
                        break
                    out.append(to_record(msg))
                    position = message_offset(msg) + 1
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


def _gone(rng: OffsetRange, first: int, low: int | None, why: str) -> OffsetResetError:
    """The error for records of ``rng`` from ``first`` on that the log no longer holds."""
    last = min(rng.end, low) - 1 if low is not None else None
    missing = f"{first}..{last}" if last is not None else f"{first} on"
    return OffsetResetError(
        f"{rng.topic}[{rng.partition}] offsets {missing} of the planned range "
        f"{rng.start}..{rng.end - 1} are gone from the log ({why}); refusing to skip them"
    )
