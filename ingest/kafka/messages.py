"""confluent-kafka messages turned into :class:`~ingest.types.RawRecord` values, errors sorted.

Offsets: a message's ``offset`` is its own position; ``next_offset`` is where to read next.
"""

from __future__ import annotations

from typing import Any

import structlog
from confluent_kafka import (
    KafkaError,
    Message,
)

from ingest.errors import FatalError, OffsetResetError
from ingest.types import RawRecord

log = structlog.get_logger(__name__)


def as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def record_headers(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(str(k), as_bytes(v) or b"") for k, v in items]


def message_offset(msg: Message) -> int:
    offset = msg.offset()
    return -1 if offset is None else offset


def to_record(msg: Message) -> RawRecord:
    ts_type, ts = msg.timestamp()
    headers = msg.headers()
    return RawRecord(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=message_offset(msg),
        key=as_bytes(msg.key()),
        value=as_bytes(msg.value()),
        timestamp_ms=ts if ts_type else 0,
        headers=record_headers(headers),
    )


def check_message_error(msg: Message) -> bool:
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
