"""Producing hand-made records for a test's stream: chosen keys, values and headers.

``run_produce`` makes realistic traffic; the tests of single hostile records (a NUL in a
key, a refused version, an unusable schema id) need exact bytes instead.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Producer

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.dev.samples import millis, sample_orders
from ingest.settings import Settings

Message = tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, list[Any]]


def codec_for(settings: Settings) -> AvroCodec:
    return AvroCodec(SchemaCatalog.load(settings.schemas_dir), settings.streams[0].subject)


def orders(seed: int, count: int) -> list[dict[str, Any]]:
    """``count`` sample orders (schema v2) for ``seed``."""
    return list(itertools.islice(sample_orders(seed), count))


def version_of(order: dict[str, Any]) -> int:
    """The external version the stream gives ``order`` (``updated_at`` in epoch ms)."""
    value = order["updated_at"]
    return millis(value) if isinstance(value, dt.datetime) else int(value)


def produce(settings: Settings, messages: Iterable[Message], partition: int = 0) -> int:
    """Send ``(key, value[, headers])`` messages in order to one partition; how many."""
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "acks": "all", "linger.ms": 5}
    )
    n = 0
    for message in messages:
        key, value = message[0], message[1]
        headers = message[2] if len(message) > 2 else None  # type: ignore[misc]
        producer.produce(
            settings.streams[0].topic, value=value, key=key, partition=partition, headers=headers
        )
        n += 1
    assert producer.flush(30) == 0
    return n
