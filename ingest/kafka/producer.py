"""Producing framed Avro records to a stream's topic: the library for upstream teams.

:class:`RecordProducer` is what an upstream team would use: every record is validated
against the subject's latest schema before it leaves the process (a bad one raises
RecordValidationError naming the fields, and nothing is sent), framed with that schema's
id and keyed by the stream's id field, through an idempotent producer (``acks=all``), so a
retry inside librdkafka never duplicates or reorders records of a partition.

:func:`ingest.dev.demo.run_produce` (``ingest produce``) drives it with sample orders.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.errors import ConfigError, OversizeError, TransientError
from ingest.kafka.topics import missing_topic_message
from ingest.settings import Settings, StreamSettings

log = structlog.get_logger(__name__)

_MAX_ERRORS_KEPT = 20


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
                "logger": logging.getLogger("ingest.kafka.producer.librdkafka"),
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
        if info is None or (
            info.error is not None and info.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        ):
            raise ConfigError(missing_topic_message(topic, self.stream.name, self._bootstrap))
        if info.error is not None and info.error.code() != KafkaError.NO_ERROR:
            raise ConfigError(
                f"kafka topic {topic!r} is not usable on {self._bootstrap}: {info.error.str()}"
            )

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
