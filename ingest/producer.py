"""Producing framed Avro records to a stream's topic: a small library and ``ingest produce``.

:class:`RecordProducer` is what an upstream team would use: every record is validated
against the subject's latest schema before it leaves the process (a bad one raises
RecordValidationError naming the fields, and nothing is sent), framed with that schema's
id and keyed by the stream's id field, through an idempotent producer (``acks=all``), so a
retry inside librdkafka never duplicates or reorders records of a partition.

:func:`run_produce` drives it with sample orders for demos, tests and benchmarks. It is
deterministic for a seed and can mix in deliberately bad payloads and newer versions of
earlier orders; it returns what the index should hold afterwards, so a test can check the
end state without re-deriving it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ingest.catalog import SchemaCatalog
from ingest.codec import HEADER_SIZE, AvroCodec, frame
from ingest.errors import ConfigError, OversizeError, TransientError
from ingest.samples import millis, next_version, sample_orders
from ingest.settings import Settings, StreamSettings

log = structlog.get_logger(__name__)

_MAX_ERRORS_KEPT = 20
#: Kinds of deliberately bad payloads ``run_produce`` mixes in.
INVALID_KINDS = ("random_bytes", "bad_magic", "unknown_schema", "truncated")


@dataclass
class ProduceSummary:
    """What a producer achieved, and what the index should hold once it is all ingested.

    ``sent``/``failed`` count delivery reports; records still unconfirmed when ``flush``
    timed out count as failed. ``errors`` holds distinct error messages (the first 20).
    ``expected`` maps each valid order id to its newest ``updated_at`` in epoch ms;
    ``invalid_positions`` are the 0-based send positions of the bad payloads.
    """

    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    expected: dict[str, int] = field(default_factory=dict)
    invalid_positions: list[int] = field(default_factory=list)
    duplicates: int = 0

    @property
    def invalid(self) -> int:
        return len(self.invalid_positions)


class RecordProducer:
    """Validating, framing, idempotent producer for one stream.

    Not thread-safe: one per thread. Delivery reports are served by :meth:`produce` and
    :meth:`flush` in the calling thread.
    """

    def __init__(
        self,
        settings: Settings,
        stream: StreamSettings,
        catalog: SchemaCatalog,
        *,
        connect_timeout_s: float = 10.0,
        delivery_timeout_s: float = 30.0,
        **producer_conf: Any,
    ) -> None:
        self.stream = stream
        self.codec = AvroCodec(catalog, stream.subject)
        self._delivery_timeout_s = delivery_timeout_s
        conf: dict[str, Any] = settings.kafka.client_config()
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                # A typo in a topic name must fail, not create a topic nobody reads.
                "allow.auto.create.topics": False,
                "linger.ms": 5,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "error_cb": self._on_error,
                "logger": logging.getLogger("ingest.producer.librdkafka"),
            }
        )
        conf.update(producer_conf)
        self._bootstrap = str(conf.get("bootstrap.servers"))
        try:
            self._producer = Producer(conf)
        except KafkaException as exc:
            raise ConfigError(f"kafka producer config error: {exc.args[0].str()}") from None
        self._check_topic(connect_timeout_s)
        self._summary = ProduceSummary()

    def _check_topic(self, timeout_s: float) -> None:
        """Fail fast, in bounded time, when the cluster is unreachable or the topic absent."""
        topic = self.stream.topic
        try:
            meta = self._producer.list_topics(topic=topic, timeout=timeout_s)
        except KafkaException as exc:
            raise ConfigError(
                f"cannot reach Kafka at {self._bootstrap} within {timeout_s:g} s:"
                f" {exc.args[0].str()}"
            ) from None
        info = meta.topics.get(topic)
        if info is None or (info.error is not None and info.error.code() != KafkaError.NO_ERROR):
            reason = info.error.str() if info is not None and info.error else "not in metadata"
            raise ConfigError(f"kafka topic {topic!r} is not usable on {self._bootstrap}: {reason}")

    def _on_error(self, err: KafkaError) -> None:
        log.warning("kafka_client_error", error=err.str(), fatal=err.fatal())

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self._summary.sent += 1
            return
        self._summary.failed += 1
        text = err.str()
        if text not in self._summary.errors and len(self._summary.errors) < _MAX_ERRORS_KEPT:
            self._summary.errors.append(text)

    def produce(
        self, record: dict[str, Any], *, key: str | None = None, timestamp_ms: int | None = None
    ) -> None:
        """Validate, frame and queue ``record``; may block briefly while the queue is full.

        The key is ``key`` if given, else the record's ``id_field`` as UTF-8 (so every
        version of a document lands in the same partition, in order), else none.
        """
        value = self.codec.encode(record)
        if key is None and self.stream.id_field is not None:
            ident = record.get(self.stream.id_field)
            key = None if ident is None else str(ident)
        self.produce_raw(None if key is None else key.encode(), value, timestamp_ms)

    def produce_raw(
        self, key: bytes | None, value: bytes | None, timestamp_ms: int | None = None
    ) -> None:
        """Queue bytes as they are, unvalidated: tombstones, or bad payloads for tests."""
        extra: dict[str, Any] = {} if timestamp_ms is None else {"timestamp": timestamp_ms}
        deadline = time.monotonic() + self._delivery_timeout_s
        while True:
            try:
                self._producer.produce(
                    self.stream.topic, value=value, key=key, on_delivery=self._on_delivery, **extra
                )
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                if time.monotonic() > deadline:
                    raise TransientError(
                        f"kafka producer queue stayed full for {self._delivery_timeout_s:g} s"
                    ) from None
                self._producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise OversizeError(
                        "record is larger than the producer's message.max.bytes",
                        detail={"bytes": len(value or b"")},
                    ) from None
                raise TransientError(f"kafka produce failed: {err.str()}") from None
        self._producer.poll(0)

    @property
    def delivery_timeout_s(self) -> float:
        """How long librdkafka tries to deliver a record before reporting it failed."""
        return self._delivery_timeout_s

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery reports, waiting up to ``timeout_s``."""
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 30) -> ProduceSummary:
        """Wait up to ``timeout_s`` for every delivery report; the totals so far.

        Records still unconfirmed at the timeout count as failed in the returned summary
        (librdkafka keeps trying until its ``message.timeout.ms``).
        """
        remaining = self._producer.flush(timeout_s)
        summary = ProduceSummary(
            sent=self._summary.sent, failed=self._summary.failed, errors=list(self._summary.errors)
        )
        if remaining:
            summary.failed += remaining
            summary.errors.append(f"{remaining} records not confirmed within {timeout_s:g} s")
        return summary


# ------------------------------------------------------------------------ run_produce


@dataclass(frozen=True)
class _Outgoing:
    position: int
    record: dict[str, Any] | None = None
    key: bytes | None = None
    value: bytes | None = None


class _Plan:
    """The deterministic sequence of messages ``run_produce`` sends, and its end state."""

    def __init__(
        self,
        codec: AvroCodec,
        count: int,
        seed: int,
        invalid_ratio: float,
        duplicate_ratio: float,
    ) -> None:
        # Orders come from their own generator so a seed yields the same orders whatever
        # the ratios; positions, duplicates and bad payloads come from a second one.
        self.codec = codec
        self.orders = sample_orders(seed)
        self.filler = sample_orders(-1 - seed)  # bodies of bad payloads
        self.rng = random.Random(f"produce-{seed}")  # noqa: S311 - reproducible test data
        positions = range(count)
        n_invalid = round(count * invalid_ratio)
        self.invalid = set(self.rng.sample(positions, n_invalid))
        valid = [p for p in positions if p not in self.invalid]
        n_dup = min(round(count * duplicate_ratio), max(len(valid) - 1, 0))
        self.duplicates = set(self.rng.sample(valid[1:], n_dup))
        self.count = count
        self.latest: dict[str, dict[str, Any]] = {}
        self.ids: list[str] = []
        self.unused_id = 2**31 - 1 - self.rng.randrange(1000)

    def messages(self) -> Iterator[_Outgoing]:
        for position in range(self.count):
            if position in self.invalid:
                key, value = self.bad_payload(position)
                yield _Outgoing(position, key=key, value=value)
                continue
            if position in self.duplicates:
                record = next_version(self.rng, self.latest[self.rng.choice(self.ids)])
            else:
                record = next(self.orders)
                self.ids.append(record["order_id"])
            self.latest[record["order_id"]] = record
            yield _Outgoing(position, record=record)

    def bad_payload(self, position: int) -> tuple[bytes, bytes]:
        kind = self.rng.choice(INVALID_KINDS)
        good = self.codec.encode(next(self.filler))
        if kind == "random_bytes":
            value = bytes([self.rng.randrange(1, 256)]) + self.rng.randbytes(self.rng.randrange(64))
        elif kind == "bad_magic":
            value = bytes([self.rng.randrange(1, 256)]) + good[1:]
        elif kind == "unknown_schema":
            value = frame(self.unused_id, good[HEADER_SIZE:])
        else:
            value = good[: self.rng.randrange(HEADER_SIZE, len(good))]
        return f"invalid-{position}-{kind}".encode(), value

    def expected(self) -> dict[str, int]:
        return {ident: millis(rec["updated_at"]) for ident, rec in self.latest.items()}


def run_produce(
    settings: Settings,
    stream_name: str,
    count: int,
    rate: float | None = None,
    seed: int = 0,
    invalid_ratio: float = 0.0,
    duplicate_ratio: float = 0.0,
    **producer_conf: Any,
) -> ProduceSummary:
    """Send ``count`` messages of sample orders to the stream's topic; blocks until flushed.

    ``invalid_ratio`` of them are bad payloads (random bytes, a wrong magic byte, an unknown
    schema id, truncated Avro) and ``duplicate_ratio`` are newer versions of earlier orders
    (strictly newer ``updated_at``, moved-on status). ``rate`` caps records per second.
    """
    if count < 0:
        raise ConfigError("produce: count must not be negative")
    if not (0 <= invalid_ratio <= 1 and 0 <= duplicate_ratio <= 1):
        raise ConfigError("produce: ratios must lie between 0 and 1")
    if rate is not None and rate <= 0:
        raise ConfigError("produce: rate must be positive")
    stream = settings.stream(stream_name)
    catalog = SchemaCatalog.load(settings.schemas_dir)
    producer = RecordProducer(settings, stream, catalog, **producer_conf)
    plan = _Plan(producer.codec, count, seed, invalid_ratio, duplicate_ratio)
    started = time.monotonic()
    for message in plan.messages():
        if rate is not None:
            due = started + message.position / rate
            while (ahead := due - time.monotonic()) > 0:
                producer.poll(ahead)  # returns early whenever it serves a delivery report
        if message.record is not None:
            producer.produce(message.record)
        else:
            producer.produce_raw(message.key, message.value)
    summary = producer.flush(producer.delivery_timeout_s + 5)
    summary.expected = plan.expected()
    summary.invalid_positions = sorted(plan.invalid)
    summary.duplicates = len(plan.duplicates)
    log.info(
        "produce_finished",
        topic=stream.topic,
        sent=summary.sent,
        failed=summary.failed,
        invalid=summary.invalid,
        duplicates=summary.duplicates,
        took_s=round(time.monotonic() - started, 3),
    )
    return summary
