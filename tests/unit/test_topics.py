"""Topic settings, the comparison of a topic with them, and the lines ``ingest topics`` prints.

The admin client is a fake at its seam here; tests/integration/test_topics.py runs the same
commands against the embedded broker.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from ingest.errors import ConfigError
from ingest.kafka.topics import (
    CONFIGS_NOT_READABLE,
    KafkaTopicAdmin,
    TopicReport,
    TopicSpec,
    differences,
    missing_topic_message,
    topic_specs,
)
from ingest.settings import Settings, parse_settings

_STREAM = {"name": "orders", "topic": "orders", "subject": "orders", "alias": "orders"}


def _settings(**topic_settings: Any) -> Settings:
    stream = dict(_STREAM, topic_settings=topic_settings) if topic_settings else dict(_STREAM)
    return parse_settings({"streams": [stream]})


def _spec(partitions: int = 4, rf: int | None = None, **configs: str) -> TopicSpec:
    return TopicSpec("orders", "orders", partitions, rf, configs)


# -- settings ------------------------------------------------------------------------------


def test_topic_settings_default_to_one_partition_and_broker_replication() -> None:
    """Without a [streams.topic_settings] table: 1 partition, the broker's replication."""
    wanted = _settings().streams[0].topic_settings
    assert (wanted.partitions, wanted.replication_factor, wanted.configs) == (1, None, {})


def test_topic_configs_become_strings() -> None:
    """TOML integers and booleans are carried as the strings Kafka's admin API takes."""
    configs = {"retention.ms": 604800000, "unclean.leader.election.enable": False}
    wanted = _settings(configs=configs).streams[0].topic_settings
    assert wanted.configs == {
        "retention.ms": "604800000",
        "unclean.leader.election.enable": "false",
    }


@pytest.mark.parametrize(
    ("topic_settings", "message"),
    [
        pytest.param({"partitions": 0}, "partitions", id="no-partitions"),
        pytest.param({"shards": 2}, "topic_settings.shards: unknown key", id="unknown-key"),
        pytest.param(
            {"configs": {"retention_ms": 1}}, "unknown Kafka topic config 'retention_ms'", id="typo"
        ),
        pytest.param(
            {"configs": {"cleanup.policy": "keep"}}, "cleanup.policy 'keep'", id="bad-policy"
        ),
        pytest.param(
            {"replication_factor": 1, "configs": {"min.insync.replicas": 2}},
            "min.insync.replicas 2 exceeds replication_factor 1",
            id="min-isr-above-rf",
        ),
        pytest.param(
            {"configs": {"retention.ms": "a week"}}, "retention.ms 'a week'", id="bad-retention"
        ),
    ],
)
def test_bad_topic_settings_fail_with_one_line(
    topic_settings: dict[str, Any], message: str
) -> None:
    """A bad [streams.topic_settings] fails at load, naming the key."""
    with pytest.raises(ConfigError) as info:
        _settings(**topic_settings)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_specs_cover_record_and_dead_letter_topics() -> None:
    """A stream's dead-letter topic is ensured too, with one partition and its replication."""
    stream = dict(
        _STREAM,
        dead_letter_topic="orders-dlq",
        topic_settings={"partitions": 6, "replication_factor": 3, "configs": {"retention.ms": 1}},
    )
    specs = topic_specs(parse_settings({"streams": [stream]}).streams)
    assert [
        (s.name, s.partitions, s.replication_factor, dict(s.configs), s.role) for s in specs
    ] == [
        ("orders", 6, 3, {"retention.ms": "1"}, "records"),
        ("orders-dlq", 1, 3, {}, "dead letters"),
    ]


# -- comparison ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "partitions", "rf", "reported", "problems", "notes"),
    [
        pytest.param(_spec(), 4, 1, {}, [], [], id="same-no-configs"),
        pytest.param(
            _spec(4, None, **{"retention.ms": "1000"}),
            4,
            1,
            {"retention.ms": "1000", "segment.ms": "5"},
            [],
            [],
            id="same-with-configs",
        ),
        pytest.param(
            _spec(4), 2, 1, {}, ["partitions: configured 4, topic has 2"], [], id="partitions"
        ),
        pytest.param(
            _spec(4, 3),
            4,
            1,
            {},
            ["replication_factor: configured 3, topic has 1"],
            [],
            id="replication",
        ),
        pytest.param(_spec(4, None), 4, 3, {}, [], [], id="replication-unset-is-not-compared"),
        pytest.param(
            _spec(4, None, **{"retention.ms": "1000"}),
            4,
            1,
            {"retention.ms": "5"},
            ["retention.ms: configured 1000, topic has 5"],
            [],
            id="config-differs",
        ),
        pytest.param(
            _spec(4, None, **{"cleanup.policy": "compact,delete"}),
            4,
            1,
            {"cleanup.policy": "delete,compact"},
            [],
            [],
            id="policy-order-is-not-a-difference",
        ),
        pytest.param(
            _spec(2, None, **{"retention.ms": "1000"}),
            4,
            1,
            None,
            ["partitions: configured 2, topic has 4"],
            [CONFIGS_NOT_READABLE],
            id="configs-not-readable",
        ),
        pytest.param(
            _spec(4, None, **{"retention.ms": "1", "min.insync.replicas": "1"}),
            4,
            1,
            {"retention.ms": "1"},
            [],
            ["not reported by the broker: min.insync.replicas"],
            id="key-not-reported",
        ),
    ],
)
def test_differences(
    spec: TopicSpec,
    partitions: int,
    rf: int | None,
    reported: dict[str, str] | None,
    problems: list[str],
    notes: list[str],
) -> None:
    """Only what the broker reports is compared; unreported configs are notes, not drift."""
    assert differences(spec, partitions, rf, reported) == (problems, notes)


def test_missing_report_names_the_command_that_fixes_it() -> None:
    line = TopicReport(_spec(), "missing").line()
    assert line.split()[:2] == ["orders", "MISSING"]
    assert line.endswith("create it with `ingest topics ensure --stream orders`")


def test_missing_topic_message_is_one_line_with_the_fix() -> None:
    message = missing_topic_message("orders", "orders", "127.0.0.1:9092")
    assert "\n" not in message
    assert message.endswith("run `ingest topics ensure --stream orders`")


# -- the admin seam ------------------------------------------------------------------------


class _Future:
    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def result(self, timeout: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class _Partition:
    replicas = [1]


class _TopicMeta:
    def __init__(self, partitions: int) -> None:
        self.error = None
        self.partitions = {p: _Partition() for p in range(partitions)}


class _Metadata:
    def __init__(self, topics: dict[str, int]) -> None:
        self.topics = {name: _TopicMeta(n) for name, n in topics.items()}


class FakeAdmin:
    """An AdminClient whose DescribeConfigs fails, as on brokers without it."""

    def __init__(self, topics: dict[str, int]) -> None:
        self.topics = dict(topics)
        self.created: list[tuple[str, int]] = []

    def list_topics(self, timeout: float) -> _Metadata:
        return _Metadata(self.topics)

    def describe_configs(self, resources: list[Any], request_timeout: float) -> dict[Any, Any]:
        error = KafkaException(KafkaError(KafkaError._UNSUPPORTED_FEATURE))
        return {r: _Future(error=error) for r in resources}

    def create_topics(self, new: list[Any], **_kw: Any) -> dict[str, _Future]:
        for topic in new:
            self.topics[topic.topic] = topic.num_partitions
            self.created.append((topic.topic, topic.num_partitions))
        return {t.topic: _Future() for t in new}


def test_ensure_creates_only_missing_and_never_changes_existing() -> None:
    """An existing topic with other partitions is reported, not recreated or altered."""
    admin = FakeAdmin({"orders": 2})
    settings = parse_settings(
        {
            "streams": [
                dict(_STREAM, topic_settings={"partitions": 4}),
                dict(_STREAM, name="users", topic="users", topic_settings={"partitions": 3}),
            ]
        }
    )
    reports = KafkaTopicAdmin(settings, admin=admin).ensure(topic_specs(settings.streams))
    assert [(r.spec.name, r.state, r.partitions) for r in reports] == [
        ("orders", "differs", 2),
        ("users", "created", 3),
    ]
    assert admin.created == [("users", 3)]
    assert admin.topics["orders"] == 2


def test_configs_not_readable_is_said_not_failed() -> None:
    """A broker refusing DescribeConfigs gets a note, not an error or a false difference."""
    settings = _settings(partitions=1, configs={"retention.ms": 1000})
    admin = FakeAdmin({"orders": 1})
    [report] = KafkaTopicAdmin(settings, admin=admin).describe(topic_specs(settings.streams))
    assert report.state == "ok"
    assert CONFIGS_NOT_READABLE in report.line()
