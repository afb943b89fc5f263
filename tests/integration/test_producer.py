"""The producer against the real tansu broker, read back with a plain consumer and decoded.

Consumers use ``assign()`` at offset 0 with no group (tansu's group joins are slow) and
stop at partition EOF. Watermarks come from fetches, not ListOffsets: tansu answers
ListOffsets "latest" wrongly for batched produce (see docs/local-stack.md).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.dev.demo import run_produce
from ingest.dev.samples import millis, sample_orders
from ingest.errors import ConfigError, RecordError, RecordValidationError
from ingest.kafka.producer import RecordProducer
from ingest.settings import Settings

pytestmark = pytest.mark.integration

READ_TIMEOUT_S = 20.0


def read_all(bootstrap: str, topic: str, partitions: int = 1) -> list[Message]:
    """Every message of ``topic`` from offset 0 to the end, partition by partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",  # required by the client; assign() never joins it
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        messages: list[Message] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + READ_TIMEOUT_S
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"no partition EOF within {READ_TIMEOUT_S} s"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                at_end.add(msg.partition())
                continue
            messages.append(msg)
        return messages
    finally:
        consumer.close()


@pytest.fixture
def catalog(make_settings: Callable[..., Settings]) -> SchemaCatalog:
    return SchemaCatalog.load(make_settings(partitions=None).schemas_dir)


def test_run_produce_end_state_matches_what_was_consumed(
    make_settings: Callable[..., Settings], kafka_bootstrap: str, catalog: SchemaCatalog
) -> None:
    settings = make_settings()
    stream = settings.streams[0]
    summary = run_produce(
        settings, "orders", 400, seed=11, invalid_ratio=0.05, duplicate_ratio=0.25
    )
    assert (summary.sent, summary.failed, summary.errors) == (400, 0, [])
    assert summary.invalid == 20
    assert summary.duplicates == 100
    assert len(summary.expected) == 400 - 20 - 100

    codec = AvroCodec(catalog, stream.subject)
    messages = read_all(kafka_bootstrap, stream.topic)
    assert len(messages) == 400
    newest: dict[str, int] = {}
    bad_offsets: list[int] = []
    stages: set[str] = set()
    for msg in messages:
        decoded = codec.decode_batch([msg.value()])[0]
        if isinstance(decoded, RecordError):
            bad_offsets.append(msg.offset())
            stages.add(decoded.stage)
            continue
        assert msg.key() == decoded["order_id"].encode()
        version = millis(decoded["updated_at"])
        assert version > newest.get(decoded["order_id"], -1), "versions of an id must rise"
        newest[decoded["order_id"]] = version
    # One partition, one idempotent producer: offsets are send positions.
    assert bad_offsets == summary.invalid_positions
    assert newest == summary.expected
    assert stages <= {"framing", "schema", "decode"}
    assert len(stages) >= 2


def test_run_produce_is_deterministic_for_a_seed(
    make_settings: Callable[..., Settings], kafka_bootstrap: str, unique: str
) -> None:
    first = make_settings()
    second = make_settings(topic=unique + "-again")
    kwargs: dict[str, Any] = {"seed": 4, "invalid_ratio": 0.1, "duplicate_ratio": 0.1}
    a = run_produce(first, "orders", 60, **kwargs)
    b = run_produce(second, "orders", 60, **kwargs)
    assert a.expected == b.expected
    assert a.invalid_positions == b.invalid_positions
    values_a = [(m.key(), m.value()) for m in read_all(kafka_bootstrap, first.streams[0].topic)]
    values_b = [(m.key(), m.value()) for m in read_all(kafka_bootstrap, second.streams[0].topic)]
    assert values_a == values_b
    assert len(values_a) == 60


def test_record_producer_keys_timestamps_and_refuses_invalid_records(
    make_settings: Callable[..., Settings], kafka_bootstrap: str, catalog: SchemaCatalog
) -> None:
    settings = make_settings()
    stream = settings.streams[0]
    producer = RecordProducer(settings, stream, catalog)
    good = next(sample_orders(5))
    bad = dict(good, items=[{"sku": "x", "quantity": "many", "unit_price": 1.0}])
    with pytest.raises(RecordValidationError, match=r"items\[0\]\.quantity") as info:
        producer.produce(bad)
    assert info.value.detail["fields"] == ["items[0].quantity"]
    producer.produce(good, timestamp_ms=1_700_000_000_000)
    producer.produce(good, key="explicit")
    producer.produce_raw(good["order_id"].encode(), None)  # a tombstone
    summary = producer.flush(10)
    assert (summary.sent, summary.failed) == (3, 0)

    messages = read_all(kafka_bootstrap, stream.topic)
    assert [m.key() for m in messages] == [
        good["order_id"].encode(),
        b"explicit",
        good["order_id"].encode(),
    ]
    assert messages[0].timestamp()[1] == 1_700_000_000_000
    codec = AvroCodec(catalog, stream.subject)
    assert codec.decode(messages[0].value()) == good
    assert codec.decode(messages[0].value()) == codec.decode(messages[1].value())
    assert messages[2].value() is None


def test_unreachable_broker_fails_fast_with_one_line(
    make_settings: Callable[..., Settings],
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = make_settings(partitions=None, kafka={"bootstrap_servers": f"127.0.0.1:{port}"})
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        run_produce(settings, "orders", 5, connect_timeout_s=2)
    assert time.monotonic() - started < 10
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in str(info.value)
    assert "\n" not in str(info.value)


def test_rate_limits_records_per_second(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    started = time.monotonic()
    summary = run_produce(settings, "orders", 30, rate=50)
    took = time.monotonic() - started
    assert summary.sent == 30
    assert took >= 29 / 50 * 0.9


def test_a_missing_topic_is_refused_not_created(
    make_settings: Callable[..., Settings], kafka_bootstrap: str, unique: str
) -> None:
    from confluent_kafka.admin import AdminClient

    settings = make_settings(partitions=None, topic=unique + "-missing")
    with pytest.raises(
        ConfigError,
        match=r"topic '.*-missing' of stream 'orders' does not exist on .*;"
        r" run `ingest topics ensure --stream orders`$",
    ):
        run_produce(settings, "orders", 5, connect_timeout_s=5)
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=5).topics
    assert unique + "-missing" not in topics
