"""librdkafka client properties built from the settings, and the client error callback."""

from __future__ import annotations

import time
from typing import Any

import structlog
from confluent_kafka import (
    KafkaError,
)

from ingest.settings import Settings

log = structlog.get_logger(__name__)


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
            # surface it as an error instead of silently jumping (docs/design.md#recreated-topics).
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
            "error_cb": log_client_error,
        }
    )
    conf.update(extra)
    return conf


_ERROR_LOG_EVERY_S = 10.0
_last_logged: dict[str, tuple[float, int]] = {}


def log_client_error(err: KafkaError) -> None:
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
