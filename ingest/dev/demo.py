"""Sample orders sent through :class:`~ingest.kafka.producer.RecordProducer` (``ingest produce``).

For demos, tests and benchmarks. It is deterministic for a seed and can mix in deliberately
bad payloads and newer versions of earlier orders; it returns what the index should hold
afterwards, so a test can check the end state without re-deriving it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import HEADER_SIZE, AvroCodec, frame
from ingest.dev.samples import millis, next_version, sample_orders
from ingest.errors import ConfigError
from ingest.kafka.producer import ProduceSummary, RecordProducer
from ingest.settings import Settings

log = structlog.get_logger(__name__)


#: Kinds of deliberately bad payloads ``run_produce`` mixes in.
INVALID_KINDS = ("random_bytes", "bad_magic", "unknown_schema", "truncated")


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
