"""The range reader at its consumer seam: a planned range whose start the log no longer
holds fails naming the missing offsets instead of reading on from the new log start.

The embedded broker (tansu, in-memory) cannot remove the start of a log (no retention run,
no DeleteRecords), so the condition is made here with a fake consumer.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError

from ingest.errors import OffsetResetError
from ingest.kafka.ranges import KafkaRangeReader, OffsetRange
from ingest.settings import KafkaSettings, Settings


class FakeMessage:
    def __init__(self, offset: int, error: KafkaError | None = None) -> None:
        self._offset, self._error = offset, error

    def error(self) -> KafkaError | None:
        return self._error

    def offset(self) -> int:
        return self._offset

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)

    def headers(self) -> None:
        return None


class FakeConsumer:
    """A log holding offsets ``low..high-1``; reading below ``low`` is what a broker with
    ``auto.offset.reset=earliest`` would have silently skipped."""

    def __init__(self, low: int, high: int, reset_error: bool = False) -> None:
        self.low, self.high, self.reset_error = low, high, reset_error
        self.position = 0

    def get_watermark_offsets(self, tp: Any, timeout: float = 0, cached: bool = False) -> Any:
        return (0 if self.reset_error else self.low), self.high

    def assign(self, tps: list[Any]) -> None:
        self.position = tps[0].offset

    def consume(self, num_messages: int = 1, timeout: float = 0) -> list[FakeMessage]:
        if self.reset_error and self.position < self.low:
            return [FakeMessage(self.position, KafkaError(KafkaError._AUTO_OFFSET_RESET))]
        start = max(self.position, self.low)
        out = [FakeMessage(o) for o in range(start, min(self.high, start + num_messages))]
        self.position = start + len(out)
        return out

    def close(self) -> None:
        pass


def reader(consumer: FakeConsumer) -> KafkaRangeReader:
    r = KafkaRangeReader(Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1")))
    r._consumer = lambda: consumer  # type: ignore[method-assign]
    return r


def read_all(consumer: FakeConsumer, rng: OffsetRange) -> list[int]:
    return [rec.offset for part in reader(consumer).read(rng) for rec in part]


def test_a_range_whose_start_retention_removed_fails_naming_the_missing_offsets() -> None:
    """Planned 0..99, the log now starts at 40: offsets 0..39 are named, nothing is read."""
    with pytest.raises(
        OffsetResetError, match=r"t\[0\] offsets 0\.\.39 of the planned range 0\.\.99"
    ):
        read_all(FakeConsumer(low=40, high=100), OffsetRange("t", 0, 0, 100))


def test_a_reset_reported_while_reading_fails_too() -> None:
    """The broker reports the start gone only on fetch (retention ran after the check)."""
    with pytest.raises(OffsetResetError, match=r"offsets 10 on of the planned range 10\.\.99"):
        read_all(FakeConsumer(low=40, high=100, reset_error=True), OffsetRange("t", 0, 10, 100))


def test_a_range_inside_the_log_is_read_whole() -> None:
    assert read_all(FakeConsumer(low=40, high=100), OffsetRange("t", 0, 40, 60)) == list(
        range(40, 60)
    )


def test_the_reader_never_resets_to_the_earliest_offset() -> None:
    assert KafkaRangeReader(Settings())._conf["auto.offset.reset"] == "error"
