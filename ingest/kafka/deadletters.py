"""Optionally mirroring dead letters to a Kafka dead-letter topic, error in the headers.

The ledger's dead-letter table is the store of record; a stream with ``dead_letter_topic``
also gets each dead letter on that topic, for teams that consume errors with Kafka tools.
Publishing happens before the ledger commit and waits for delivery, so a crash replays the
batch and the topic may see a record twice (at least once) while the ledger stays exact.
Raw key and value bytes are sent untouched; the headers say where the record came from and
why it failed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from ingest.errors import ConfigError, TransientError
from ingest.settings import Settings
from ingest.types import DeadLetter


def dead_letter_headers(dead: DeadLetter) -> list[tuple[str, str | bytes | None]]:
    """The record's own headers plus ``ingest.*`` headers naming origin, stage and reason."""
    record = dead.record
    ours = [
        ("ingest.stream", dead.stream),
        ("ingest.stage", dead.stage),
        ("ingest.reason", dead.reason[:4000]),
        ("ingest.kafka.consumer", record.source),
        ("ingest.topic", record.topic),
        ("ingest.partition", str(record.partition)),
        ("ingest.offset", str(record.offset)),
        ("ingest.timestamp_ms", str(record.timestamp_ms)),
    ]
    return [*record.headers, *((k, v.encode()) for k, v in ours)]


class DeadLetterTopic:
    """Publishes dead letters of one stream to its dead-letter topic; call per flush."""

    def __init__(self, settings: Settings, topic: str, *, timeout_s: float = 30.0) -> None:
        self.topic = topic
        self._timeout_s = timeout_s
        conf: dict[str, Any] = settings.kafka.client_config()
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "allow.auto.create.topics": False,
                "linger.ms": 5,
                "message.timeout.ms": int(timeout_s * 1000),
                "logger": logging.getLogger("ingest.kafka.deadletters.librdkafka"),
            }
        )
        try:
            self._producer = Producer(conf)
            meta = self._producer.list_topics(topic=topic, timeout=timeout_s)
        except KafkaException as exc:
            raise ConfigError(f"dead-letter topic {topic!r}: {exc.args[0].str()}") from None
        info = meta.topics.get(topic)
        if info is None or (info.error is not None and info.error.code() != KafkaError.NO_ERROR):
            raise ConfigError(
                f"dead-letter topic {topic!r} does not exist on the broker;"
                " run `ingest topics ensure`"
            )

    def __call__(self, dead_letters: Sequence[DeadLetter]) -> None:
        """Send and wait for every delivery; TransientError (batch retried) if any failed."""
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                failures.append(err.str())

        for dead in dead_letters:
            while True:
                try:
                    self._producer.produce(
                        self.topic,
                        value=dead.record.value,
                        key=dead.record.key,
                        headers=dead_letter_headers(dead),
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)
        remaining = self._producer.flush(self._timeout_s)
        if remaining or failures:
            raise TransientError(
                f"dead-letter topic {self.topic!r}: {remaining} undelivered, "
                f"errors: {sorted(set(failures))[:3]}"
            )
