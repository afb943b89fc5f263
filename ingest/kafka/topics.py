"""The streams' topics: create the missing ones, report the ones that differ, never change them.

``ingest topics ensure`` and ``ingest dev up`` create a stream's topic (and its dead-letter
topic, when configured) with the partitions, replication factor and configs of its
``[streams.topic_settings]``. A topic that already exists is compared with those settings and
any difference is reported — repartitioning or reconfiguring a live topic is an operator's
decision, never a side effect (docs/design.md#topics).

The comparison (:func:`differences`) is pure; :class:`KafkaTopicAdmin` is the thin I/O
around confluent-kafka's ``AdminClient``. Brokers that answer DescribeConfigs with nothing
(the embedded tansu only reports configs given at creation, see docs/local-stack.md#tansu-kafka)
get "configs not readable on this broker" instead of a false difference.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from ingest.errors import ConfigError
from ingest.settings import Settings, StreamSettings

log = structlog.get_logger(__name__)

#: What a topic's state is against its settings.
State = Literal["created", "ok", "differs", "missing"]

CONFIGS_NOT_READABLE = "configs not readable on this broker"


@dataclass(frozen=True)
class TopicSpec:
    """One topic a stream needs, as its settings describe it."""

    name: str
    stream: str
    partitions: int
    #: None: the broker's default replication factor.
    replication_factor: int | None
    configs: Mapping[str, str] = field(default_factory=dict)
    role: Literal["records", "dead letters"] = "records"


@dataclass(frozen=True)
class TopicReport:
    """A topic as found (or made): its state, what the broker has, and every difference."""

    spec: TopicSpec
    state: State
    partitions: int | None = None
    replication_factor: int | None = None
    #: Configured keys as the broker reports them; None when it reported none at all.
    configs: Mapping[str, str] | None = None
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def line(self) -> str:
        """One aligned line for the CLI."""
        spec = self.spec
        label = self.state.upper() if self.state in ("differs", "missing") else self.state
        text = f"{spec.name:<24} {label:<8} stream={spec.stream}"
        if spec.role != "records":
            text += f" ({spec.role})"
        if self.partitions is not None:
            text += f" partitions={self.partitions}"
        if self.replication_factor is not None:
            text += f" replication={self.replication_factor}"
        shown = self.configs if self.configs is not None else {}
        text += "".join(f" {k}={v}" for k, v in sorted(shown.items()))
        details = [*self.problems, *self.notes]
        if self.state == "missing":
            details.append(f"create it with `{ensure_command(spec.stream)}`")
        return text + ("; " + "; ".join(details) if details else "")


def ensure_command(stream: str) -> str:
    """The command that creates ``stream``'s topics, for error messages to name."""
    return f"ingest topics ensure --stream {stream}"


def missing_topic_message(topic: str, stream: str, bootstrap: str) -> str:
    """One line for a command that needs a topic that does not exist."""
    return (
        f"kafka topic {topic!r} of stream {stream!r} does not exist on {bootstrap};"
        f" run `{ensure_command(stream)}`"
    )


def topic_specs(streams: Iterable[StreamSettings]) -> list[TopicSpec]:
    """Every topic the streams need: each record topic, then each dead-letter topic.

    A dead-letter topic takes one partition (its records are read rarely and in bulk) and
    the stream's replication factor, with the broker's default configs.
    """
    specs: list[TopicSpec] = []
    for stream in streams:
        wanted = stream.topic_settings
        specs.append(
            TopicSpec(
                name=stream.topic,
                stream=stream.name,
                partitions=wanted.partitions,
                replication_factor=wanted.replication_factor,
                configs=dict(wanted.configs),
            )
        )
        if stream.dead_letter_topic:
            specs.append(
                TopicSpec(
                    name=stream.dead_letter_topic,
                    stream=stream.name,
                    partitions=1,
                    replication_factor=wanted.replication_factor,
                    role="dead letters",
                )
            )
    return specs


def differences(
    spec: TopicSpec,
    partitions: int,
    replication_factor: int | None,
    configs: Mapping[str, str] | None,
) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` of an existing topic against its spec.

    ``configs`` is what the broker reported (None: nothing). A configured key the broker
    does not report is a note, not a difference: it cannot be compared.
    """
    problems: list[str] = []
    notes: list[str] = []
    if partitions != spec.partitions:
        problems.append(f"partitions: configured {spec.partitions}, topic has {partitions}")
    wanted_rf = spec.replication_factor
    if wanted_rf is not None and replication_factor is not None and wanted_rf != replication_factor:
        problems.append(
            f"replication_factor: configured {wanted_rf}, topic has {replication_factor}"
        )
    if spec.configs and not configs:
        notes.append(CONFIGS_NOT_READABLE)
        return problems, notes
    unreported = []
    for key, value in sorted(spec.configs.items()):
        actual = (configs or {}).get(key)
        if actual is None:
            unreported.append(key)
        elif not _same(key, value, actual):
            problems.append(f"{key}: configured {value}, topic has {actual}")
    if unreported:
        notes.append(f"not reported by the broker: {', '.join(unreported)}")
    return problems, notes


def _same(key: str, wanted: str, actual: str) -> bool:
    if key == "cleanup.policy":  # a list: "compact,delete" == "delete,compact"
        return sorted(wanted.replace(" ", "").split(",")) == sorted(actual.split(","))
    return wanted == actual


class KafkaTopicAdmin:
    """Looks topics up and creates missing ones; every call is bounded by ``timeout_s``."""

    def __init__(self, settings: Settings, *, timeout_s: float = 15.0, admin: Any = None):
        self._bootstrap = settings.kafka.bootstrap_servers
        self._timeout_s = timeout_s
        conf = settings.kafka.client_config()
        conf["log_level"] = 0  # connection noise; failures surface as ConfigError here
        self._admin: Any = admin if admin is not None else AdminClient(conf)

    def describe(self, specs: Sequence[TopicSpec]) -> list[TopicReport]:
        """Each topic as the broker has it, compared with its spec; nothing is changed."""
        metadata = self._metadata()
        existing = [s for s in specs if s.name in metadata]
        configs = self._configs([s.name for s in existing])
        reports = []
        for spec in specs:
            if spec.name not in metadata:
                reports.append(TopicReport(spec, "missing"))
                continue
            partitions, rf = metadata[spec.name]
            reported = configs.get(spec.name)
            shown = (
                None if not reported else {k: reported[k] for k in spec.configs if k in reported}
            )
            problems, notes = differences(spec, partitions, rf, reported)
            reports.append(
                TopicReport(
                    spec,
                    "differs" if problems else "ok",
                    partitions=partitions,
                    replication_factor=rf,
                    configs=shown,
                    problems=tuple(problems),
                    notes=tuple(notes),
                )
            )
        return reports

    def ensure(self, specs: Sequence[TopicSpec]) -> list[TopicReport]:
        """Create every missing topic; report the others as :meth:`describe` does."""
        before = self.describe(specs)
        missing = [r.spec for r in before if r.state == "missing"]
        created = self._create(missing)
        self._wait_visible(created)
        after = {r.spec.name: r for r in self.describe(missing)} if missing else {}
        reports = []
        for report in before:
            if report.state != "missing":
                reports.append(report)
                continue
            now = after.get(report.spec.name, report)
            state: State = "created" if report.spec.name in created else now.state
            reports.append(
                TopicReport(
                    report.spec,
                    state,
                    partitions=now.partitions,
                    replication_factor=now.replication_factor,
                    configs=now.configs,
                    problems=now.problems,
                    notes=now.notes,
                )
            )
        return reports

    # -- I/O ---------------------------------------------------------------------------------

    def _metadata(self) -> dict[str, tuple[int, int | None]]:
        """Topic name -> (partitions, replication factor of partition 0)."""
        try:
            md = self._admin.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise ConfigError(
                f"cannot reach Kafka at {self._bootstrap} within {self._timeout_s:g} s:"
                f" {exc.args[0].str()}"
            ) from None
        out: dict[str, tuple[int, int | None]] = {}
        for name, meta in md.topics.items():
            if meta.error is not None or not meta.partitions:
                continue
            first = meta.partitions[min(meta.partitions)]
            out[name] = (len(meta.partitions), len(first.replicas) or None)
        return out

    def _wait_visible(self, names: set[str]) -> None:
        """Wait (bounded) until created topics show in metadata, so a producer or daemon
        started right after sees them."""
        deadline = time.monotonic() + self._timeout_s
        while names and not names <= set(self._metadata()):
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"kafka topics {sorted(names)} were created but did not appear in metadata"
                    f" within {self._timeout_s:g} s"
                )
            time.sleep(0.05)

    def _configs(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Each topic's configs as reported; an empty dict when the broker cannot say."""
        if not names:
            return {}
        resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
        out: dict[str, dict[str, str]] = {}
        try:
            futures = self._admin.describe_configs(resources, request_timeout=self._timeout_s)
            for resource, future in futures.items():
                entries = future.result(timeout=self._timeout_s)
                out[resource.name] = {
                    k: str(e.value) for k, e in entries.items() if e.value is not None
                }
        except (KafkaException, NotImplementedError, TypeError, ValueError) as exc:
            log.info("topic_configs_not_readable", error=str(exc))
        return out

    def _create(self, specs: Sequence[TopicSpec]) -> set[str]:
        """Create ``specs``; the names created here (one that appeared meanwhile is fine)."""
        if not specs:
            return set()
        new = [
            NewTopic(
                s.name,
                num_partitions=s.partitions,
                replication_factor=s.replication_factor or -1,
                config=dict(s.configs),
            )
            for s in specs
        ]
        futures = self._admin.create_topics(
            new, operation_timeout=self._timeout_s, request_timeout=self._timeout_s
        )
        created: set[str] = set()
        for name, future in futures.items():
            try:
                future.result(timeout=self._timeout_s)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise ConfigError(f"cannot create kafka topic {name!r}: {err.str()}") from None
            created.add(name)
            log.info("topic_created", topic=name)
        return created
