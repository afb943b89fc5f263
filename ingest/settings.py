"""The one settings object: TOML file + environment, validated once, frozen.

This is the only module that reads ``os.environ``. Settings say *where* (hosts, DSNs,
credentials); what to do comes from the command line or Luigi parameters, and secrets never
travel as either. Every credential may be given inline, as ``<name>_file`` (a path whose
content is the secret) or through the matching ``INGEST_*`` / ``INGEST_*_FILE`` variable.

A bad file fails with one :class:`~ingest.errors.ConfigError` line naming the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from ingest.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("ingest.toml")

_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_STREAM_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
_INDEX_FORBIDDEN = set('\\/*?"<>| ,#:')
_HOOK = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def check_topic_name(name: str) -> str:
    """Kafka's rule: 1-249 of ``[A-Za-z0-9._-]``, and not ``.`` or ``..``."""
    if name in {".", ".."} or not _KAFKA_TOPIC.match(name):
        raise ValueError(
            f"invalid Kafka topic name {name!r}: use 1-249 letters, digits, '.', '_' or '-'"
        )
    return name


def check_index_name(name: str) -> str:
    """Elasticsearch's rule for index and alias names."""
    problem = None
    if not name or name in {".", ".."}:
        problem = "must not be empty, '.' or '..'"
    elif name != name.lower():
        problem = "must be lowercase"
    elif name[0] in "-_+":
        problem = "must not start with '-', '_' or '+'"
    elif _INDEX_FORBIDDEN & set(name):
        problem = 'must not contain spaces or any of \\ / * ? " < > | , # :'
    elif len(name.encode()) > 255:
        problem = "must be at most 255 bytes"
    if problem:
        raise ValueError(f"invalid index/alias name {name!r}: {problem}")
    return name


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret_file(path: str, key: str) -> SecretStr:
    try:
        return SecretStr(Path(path).read_text().strip())
    except OSError as exc:
        raise ValueError(f"cannot read {key} file {path!r}: {exc.strerror}") from None


class KafkaSettings(_Frozen):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "ingest"
    #: tansu's group join waits half of this; short on the embedded stack, raise in production.
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    #: eager ``range`` works on every broker; ``cooperative-sticky`` is fine on Apache Kafka.
    assignment_strategy: str = "range"
    #: Raw librdkafka properties (TLS, SASL, OAUTHBEARER ...), passed through untouched.
    client: dict[str, str | int | bool] = Field(default_factory=dict)
    #: Files holding raw librdkafka secret properties, e.g. {"sasl.password" = "/run/secret"}.
    client_files: dict[str, str] = Field(default_factory=dict)

    def client_config(self) -> dict[str, Any]:
        """librdkafka properties including secrets read from ``client_files``."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        conf.update(self.client)
        for prop, path in self.client_files.items():
            conf[prop] = _read_secret_file(path, f"kafka.client_files.{prop}").get_secret_value()
        return conf


class SearchSettings(_Frozen):
    """Where the search cluster is and how to reach it (see :attr:`urls`)."""

    url: str = "http://127.0.0.1:9200"
    #: Several nodes of one cluster: requests spread over the healthy ones. Excludes ``url``.
    hosts: tuple[str, ...] | None = None
    #: ``auto`` asks ``GET /`` for ``version.distribution``.
    kind: Literal["auto", "elasticsearch", "opensearch"] = "auto"
    username: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    bearer_token: SecretStr | None = None
    #: Where ``password`` / ``api_key`` / ``bearer_token`` came from, when a file: re-read
    #: when it changes or the server answers 401/403 (see :mod:`ingest.credentials`).
    password_file: Path | None = None
    api_key_file: Path | None = None
    bearer_token_file: Path | None = None
    ca_file: Path | None = None
    verify_certs: bool = True
    #: Client-certificate authentication (PEM); the key may be in the certificate file.
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    client_key_password: SecretStr | None = None
    #: ``http(s)://[user:password@]host:port`` of a forwarding proxy; a secret (credentials).
    proxy_url: SecretStr | None = None
    #: ``gzip`` compresses bulk bodies (``Content-Encoding: gzip``): worth it on slow links.
    compression: Literal["none", "gzip"] = "none"
    request_timeout_s: float = Field(default=30.0, gt=0)
    #: Bulk requests are split at this size; a single document over it is dead-lettered.
    #: Keep it under the server's ``http.max_content_length`` (100 MB by default).
    max_bulk_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)

    @field_validator("hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        """``INGEST_SEARCH_HOSTS`` arrives as one comma-separated string."""
        if isinstance(v, str):
            return tuple(part.strip() for part in v.split(",") if part.strip())
        return v

    @model_validator(mode="after")
    def _check_reach(self) -> SearchSettings:
        if self.hosts is not None:
            if "url" in self.model_fields_set:
                raise ValueError("give url or hosts, not both")
            if not self.hosts:
                raise ValueError("hosts is empty")
        schemes = {_http_url_scheme(u, "hosts" if self.hosts else "url") for u in self.urls}
        if len(schemes) > 1:
            raise ValueError("hosts mixes http:// and https:// URLs")
        if self.client_key_file is not None and self.client_cert_file is None:
            raise ValueError("client_key_file needs client_cert_file")
        if self.client_cert_file is not None and schemes != {"https"}:
            raise ValueError("client_cert_file needs https:// URLs")
        if self.proxy_url is not None:
            _http_url_scheme(self.proxy_url.get_secret_value(), "proxy_url")
        return self

    @property
    def urls(self) -> tuple[str, ...]:
        """Every configured node URL: ``hosts``, else the single ``url``."""
        return self.hosts if self.hosts is not None else (self.url,)


def _http_url_scheme(url: str, key: str) -> str:
    """The scheme of an ``http(s)://host[:port]`` URL; ValueError naming ``key`` otherwise."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key}: {redact_dsn(url)!r} is not an http:// or https:// URL")
    return parts.scheme


class LedgerSettings(_Frozen):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    #: Where ``dsn`` came from, when a file: re-read when it changes or PostgreSQL refuses it.
    dsn_file: Path | None = None
    schema_name: str = Field(default="ingest", alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    #: How long a delete is remembered in the ledger (30 days). A write older than a delete
    #: that was forgotten re-creates its document: no backfill or replay may reach back
    #: further than this (``backfill kafka`` refuses such a window).
    delete_marker_retention_s: float = Field(default=30 * 86400.0, gt=0)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RegistrySettings(_Frozen):
    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None


class IndexSettings(_Frozen):
    """Per-stream overrides merged into the schema-derived index definition."""

    shards: int = Field(default=1, ge=1)
    replicas: int = Field(default=1, ge=0)
    refresh_interval: str = "1s"
    settings: dict[str, Any] = Field(default_factory=dict)
    #: Field path -> mapping fragment replacing the derived one, e.g. {"note" = {type="text"}}.
    field_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)


#: Kafka's topic-level configs (``kafka-configs --entity-type topics``); a key outside them
#: (or Confluent's ``confluent.*``) is a typo that Apache Kafka would refuse at creation.
TOPIC_CONFIG_KEYS = frozenset(
    {
        "cleanup.policy",
        "compression.gzip.level",
        "compression.lz4.level",
        "compression.type",
        "compression.zstd.level",
        "delete.retention.ms",
        "file.delete.delay.ms",
        "flush.messages",
        "flush.ms",
        "follower.replication.throttled.replicas",
        "index.interval.bytes",
        "leader.replication.throttled.replicas",
        "local.retention.bytes",
        "local.retention.ms",
        "max.compaction.lag.ms",
        "max.message.bytes",
        "message.downconversion.enable",
        "message.format.version",
        "message.timestamp.after.max.ms",
        "message.timestamp.before.max.ms",
        "message.timestamp.difference.max.ms",
        "message.timestamp.type",
        "min.cleanable.dirty.ratio",
        "min.compaction.lag.ms",
        "min.insync.replicas",
        "preallocate",
        "remote.log.copy.disable",
        "remote.log.delete.on.disable",
        "remote.storage.enable",
        "retention.bytes",
        "retention.ms",
        "segment.bytes",
        "segment.index.bytes",
        "segment.jitter.ms",
        "segment.ms",
        "unclean.leader.election.enable",
    }
)
_CLEANUP_POLICIES = {"delete", "compact", "compact,delete", "delete,compact"}


class TopicSettings(_Frozen):
    """How ``ingest topics ensure`` creates the stream's topic when it is missing.

    An existing topic is only compared with these, never changed: repartitioning moves keys
    between partitions (breaking per-key order) and is an operator's decision.
    """

    partitions: int = Field(default=1, ge=1, le=100_000)
    #: Unset means the broker's ``default.replication.factor``.
    replication_factor: int | None = Field(default=None, ge=1, le=32_767)
    #: Topic-level configs, e.g. {"retention.ms" = 604800000, "cleanup.policy" = "delete"}.
    configs: dict[str, str] = Field(default_factory=dict)

    @field_validator("configs", mode="before")
    @classmethod
    def _configs(cls, v: Any) -> Any:
        """TOML numbers and booleans become the strings Kafka's admin API carries."""
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for key, value in v.items():
            if key not in TOPIC_CONFIG_KEYS and not str(key).startswith("confluent."):
                raise ValueError(f"unknown Kafka topic config {key!r}")
            if isinstance(value, bool):
                out[key] = "true" if value else "false"
            elif isinstance(value, int | float):
                out[key] = str(value)
            else:
                out[key] = value
        return out

    @model_validator(mode="after")
    def _consistent(self) -> TopicSettings:
        policy = self.configs.get("cleanup.policy")
        if policy is not None and policy.replace(" ", "") not in _CLEANUP_POLICIES:
            raise ValueError(
                f"cleanup.policy {policy!r}: expected 'delete', 'compact' or 'compact,delete'"
            )
        min_isr = self.configs.get("min.insync.replicas")
        if min_isr is not None:
            if not min_isr.isdigit() or int(min_isr) < 1:
                raise ValueError(f"min.insync.replicas {min_isr!r}: expected an integer >= 1")
            rf = self.replication_factor
            if rf is not None and int(min_isr) > rf:
                raise ValueError(
                    f"min.insync.replicas {min_isr} exceeds replication_factor {rf}:"
                    " no write could ever be acknowledged"
                )
        for key in ("retention.ms", "retention.bytes"):
            value = self.configs.get(key)
            if value is not None and not (value.lstrip("-").isdigit() and int(value) >= -1):
                raise ValueError(f"{key} {value!r}: expected an integer >= -1 (-1 = unlimited)")
        return self


class StreamSettings(_Frozen):
    name: str
    topic: str
    subject: str
    alias: str
    #: Record field giving the document ``_id``; unset means the Kafka key.
    id_field: str | None = None
    #: Record field (long or timestamp) giving the external version; unset means the offset.
    version_field: str | None = None
    #: Optional top-level timestamp field: ingestion latency is also measured from it
    #: (``source="event_time"``), besides the Kafka timestamp.
    event_time_field: str | None = None
    tombstones: Literal["delete", "ignore", "dead-letter"] = "delete"
    #: Record header holding a tombstone's version (ASCII digits, in the version field's
    #: unit), for streams whose version field is not a timestamp (see the README's rule).
    tombstone_version_header: str | None = None
    #: Optional ``module:function`` receiving (document dict, RawRecord) and returning a dict.
    transform: str | None = None
    max_batch_records: int = Field(default=2000, ge=1)
    max_batch_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    linger_s: float = Field(default=0.5, gt=0)
    max_record_bytes: int = Field(default=1024 * 1024, ge=16)
    #: A rendered JSON document above this is dead-lettered (stage transform): a few bytes
    #: of Avro can render megabytes. The default stays below ``search.max_bulk_bytes``'s, so a
    #: document the transform accepts fits a default bulk request on its own; one that does not
    #: fit is dead-lettered by the sink (stage index) instead.
    max_document_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    #: Bulk requests of this stream in flight at once, committed in order; ``"auto"`` adapts
    #: between 1 and 8 to the cluster's latency (AIMD). 1 is one request at a time. 4 by
    #: measurement: it recovers a remote cluster's round trips and costs nothing locally.
    max_in_flight: StrictInt | Literal["auto"] = 4
    dead_letter_topic: str | None = None
    #: Ingest pipeline every index action of this stream names (``pipeline`` in the action).
    pipeline: str | None = None
    #: Record field whose value becomes every action's ``_routing`` (deletes included).
    routing_field: str | None = None
    #: Kafka header carrying the routing value of a tombstone, which has no record fields.
    routing_header: str | None = None
    index: IndexSettings = Field(default_factory=IndexSettings)
    #: ``[streams.topic_settings]``: partitions, replication and configs for `ingest topics`.
    topic_settings: TopicSettings = Field(default_factory=TopicSettings)

    @model_validator(mode="after")
    def _routing_of_deletes(self) -> StreamSettings:
        """A delete routed elsewhere than its document deletes nothing, and says so quietly.

        The server answers ``not_found`` for a delete sent to the wrong shard, which is
        indistinguishable from deleting a document that never existed, and the document stays.
        So a tombstone must know its routing: either the routing field is the id field (the
        tombstone's key is the id, hence the routing) or the producer puts it in a header.
        """
        if self.routing_header is not None and self.routing_field is None:
            raise ValueError("routing_header needs routing_field")
        if (
            self.routing_field is not None
            and self.tombstones == "delete"
            and self.routing_field != self.id_field
            and self.routing_header is None
        ):
            raise ValueError(
                f"routing_field {self.routing_field!r} with tombstones = 'delete' needs"
                " routing_header (a tombstone has no fields to route by) or routing_field ="
                " id_field"
            )
        return self

    @field_validator("max_in_flight")
    @classmethod
    def _max_in_flight(cls, v: int | str) -> int | str:
        if v != "auto" and not (isinstance(v, int) and 1 <= v <= 64):
            raise ValueError(f"max_in_flight must be 1..64 or 'auto', got {v!r}")
        return v

    @field_validator("pipeline")
    @classmethod
    def _pipeline(cls, v: str | None) -> str | None:
        if v is not None and (not v or v.strip() != v or "/" in v):
            raise ValueError(f"invalid ingest pipeline name {v!r}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _STREAM_NAME.match(v):
            raise ValueError(f"invalid stream name {v!r}: use lowercase letters, digits, _ or -")
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        return check_topic_name(v)

    @field_validator("dead_letter_topic")
    @classmethod
    def _dlt(cls, v: str | None) -> str | None:
        return None if v is None else check_topic_name(v)

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        return check_index_name(v)

    @field_validator("transform")
    @classmethod
    def _hook(cls, v: str | None) -> str | None:
        if v is not None and not _HOOK.match(v):
            raise ValueError(f"invalid transform hook {v!r}: expected 'package.module:function'")
        return v

    @model_validator(mode="after")
    def _tombstone_header(self) -> StreamSettings:
        if self.tombstone_version_header is not None and self.version_field is None:
            raise ValueError(
                f"stream {self.name!r}: tombstone_version_header needs a version_field (without"
                " one, records and tombstones are both versioned by the offset)"
            )
        return self


class RuntimeSettings(_Frozen):
    #: Total bytes buffered across partitions before fetching pauses.
    max_buffered_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    #: Transient failures retried this long before the daemon exits non-zero.
    max_retry_s: float = Field(default=300.0, gt=0)
    #: How long a graceful shutdown may take before giving up on the flush.
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    summary_every_s: float = Field(default=15.0, gt=0)
    #: How often a daemon looks in the ledger for an index version being built.
    index_poll_s: float = Field(default=2.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    #: How often a credential file is checked for a change (one ``stat``); a refusal by the
    #: server re-reads it at once whatever this says.
    credential_check_s: float = Field(default=1.0, gt=0)
    #: Loopback by default; ``0.0.0.0`` in a container so probes and Prometheus reach it.
    metrics_host: str = "127.0.0.1"

    @property
    def min_gc_deletes_s(self) -> float:
        """The shortest time a live index may remember a delete (``index.gc_deletes``).

        A write checked against the ledger's delete markers may reach the index up to
        ``max_retry_s`` later (sink retries), and a delete applied to the index may wait up
        to ``max_retry_s`` for its ledger commit (and marker): the index must remember a
        delete across both, or an older write slips between the check and the marker.
        """
        return 2 * self.max_retry_s

    @property
    def gc_deletes_s(self) -> float:
        """``index.gc_deletes`` of live indices unless a stream sets its own: at least an
        hour, and three times ``max_retry_s`` (the minimum with a margin)."""
        return max(3600.0, 3 * self.max_retry_s)


class Settings(_Frozen):
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    schema_registry: RegistrySettings = Field(default_factory=RegistrySettings)
    schemas_dir: Path = Path("schemas")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    streams: tuple[StreamSettings, ...] = ()

    @model_validator(mode="after")
    def _unique_streams(self) -> Settings:
        seen: set[str] = set()
        for s in self.streams:
            if s.name in seen:
                raise ValueError(f"stream {s.name!r} is defined twice")
            seen.add(s.name)
        return self

    @model_validator(mode="after")
    def _gc_deletes(self) -> Settings:
        floor = self.runtime.min_gc_deletes_s
        for s in self.streams:
            value = gc_deletes_setting(s.index.settings)
            if value is None:
                continue
            seconds = time_value_s(value)
            if seconds < floor:
                raise ValueError(
                    f"stream {s.name!r}: index gc_deletes {value!r} is shorter than 2 x"
                    f" runtime.max_retry_s ({floor:g}s): the index would forget a delete while"
                    " an older write may still be retried; raise it or leave it unset"
                )
        return self

    def gc_deletes_s(self, stream: StreamSettings) -> float:
        """How long ``stream``'s live indices remember a delete: its own setting, else the
        default derived from ``runtime.max_retry_s``."""
        value = gc_deletes_setting(stream.index.settings)
        return self.runtime.gc_deletes_s if value is None else time_value_s(value)

    def stream(self, name: str) -> StreamSettings:
        """The stream called ``name``; :class:`ConfigError` naming the known ones otherwise."""
        for s in self.streams:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.streams) or "none"
        raise ConfigError(f"unknown stream {name!r} (configured: {known})")

    def secrets(self) -> list[str]:
        """Every secret value in force, so log redaction and tests can look for them."""
        found = [
            s.get_secret_value()
            for s in (
                self.search.password,
                self.search.api_key,
                self.search.bearer_token,
                self.search.client_key_password,
                self.schema_registry.password,
            )
            if s is not None and s.get_secret_value()
        ]
        urls = list(self.search.urls)
        if self.search.proxy_url is not None:
            urls.append(self.search.proxy_url.get_secret_value())
        found += [pw for pw in map(dsn_secret, urls) if pw]
        dsn_password = dsn_secret(self.ledger.dsn.get_secret_value())
        if dsn_password:
            # Drivers quote a URL DSN's password decoded (``p%40ss`` is ``p@ss``).
            found += {dsn_password, unquote(dsn_password)}
        client = self.kafka.client_config()
        found += [str(v) for k, v in client.items() if is_secret_key(k) and v]
        return found


_TIME_VALUE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>nanos|micros|ms|s|m|h|d)\s*$")
_TIME_UNITS_S = {
    "nanos": 1e-9,
    "micros": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def time_value_s(value: Any) -> float:
    """An Elasticsearch time value (``"90s"``, ``"24h"``, ``"500ms"``) in seconds."""
    m = _TIME_VALUE.match(str(value))
    if not m:
        raise ValueError(
            f"{value!r} is not a time value: use a number with a unit (ms, s, m, h, d), e.g. '2h'"
        )
    return float(m.group("n")) * _TIME_UNITS_S[m.group("unit")]


def gc_deletes_setting(index_settings: Mapping[str, Any]) -> Any | None:
    """``gc_deletes`` in index settings written plain, dotted (``index.gc_deletes``) or nested
    (``{"index": {"gc_deletes": ...}}``); None when not set."""
    for key in ("gc_deletes", "index.gc_deletes"):
        if key in index_settings:
            return index_settings[key]
    nested = index_settings.get("index")
    if isinstance(nested, Mapping) and "gc_deletes" in nested:
        return nested["gc_deletes"]
    return None


#: Parts of a setting's name (lower case, ``.`` and ``-`` read as ``_``) that mark its value
#: as a secret. Beyond the obvious words: librdkafka's ``sasl.oauthbearer.config`` carries
#: the OAuth client secret, ``ssl.key.pem`` / ``ssl_key`` a private key in the clear, and
#: every ``ssl.keystore.*`` property belongs to the keystore holding one.
_SECRET_WORDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "credential",
    "private_key",
    "oauthbearer_config",
    "key_pem",
    "ssl_key",
    "keystore",
)


def group_id_for(settings: Settings, stream: StreamSettings) -> str:
    """One consumer group per stream, so streams rebalance independently."""
    return f"{settings.kafka.group_id}.{stream.name}"


def is_secret_key(key: str) -> bool:
    """True for names such as ``sasl.password`` or ``api_key`` whose values are redacted."""
    k = key.lower().replace("-", "_").replace(".", "_")
    return any(word in k for word in _SECRET_WORDS)


#: A URL DSN's password: after ``://user:``, up to the *last* ``@`` of the whitespace-
#: delimited token, so a password holding ``@`` (``postgresql://u:p@ss@host/db``) is masked
#: whole. A ``@`` later in the same token (in a query string) masks more than the password,
#: never less.
_DSN_PASSWORD = re.compile(r"(?P<pre>://[^:/@\s]+:)(?P<pw>\S+)(?=@[^@\s]*(?:\s|$))")
#: A key=value DSN's ``password`` or ``sslpassword`` (also ``PGPASSWORD=``), quoted with
#: backslash escapes as libpq allows (``password='a b\\'c'``) or bare up to whitespace.
_DSN_KV_PASSWORD = re.compile(
    r"(?P<pre>\b(?:ssl|pg)?password\s*=\s*)"
    r"(?P<pw>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s'\"]\S*)",
    re.IGNORECASE,
)
_ESCAPE = re.compile(r"\\(.)")


def _unquote(value: str) -> str:
    """A libpq key=value value without its quotes and backslash escapes."""
    if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
        return _ESCAPE.sub(r"\1", value[1:-1])
    return value


def dsn_secret(dsn: str) -> str | None:
    """The password inside a URL or key=value DSN, if any (unquoted)."""
    m = _DSN_PASSWORD.search(dsn)
    if m:
        return m.group("pw")
    m = _DSN_KV_PASSWORD.search(dsn)
    return _unquote(m.group("pw")) if m else None


def redact_dsn(text: str) -> str:
    """``text`` with any DSN password replaced by ``***``."""
    text = _DSN_PASSWORD.sub(r"\g<pre>***", text)
    return _DSN_KV_PASSWORD.sub(r"\g<pre>***", text)


# Environment variable -> dotted settings key. ``*_FILE`` forms are derived.
ENV_OVERRIDES: dict[str, str] = {
    "INGEST_KAFKA_BOOTSTRAP_SERVERS": "kafka.bootstrap_servers",
    "INGEST_KAFKA_GROUP_ID": "kafka.group_id",
    "INGEST_KAFKA_SESSION_TIMEOUT_MS": "kafka.session_timeout_ms",
    "INGEST_SEARCH_URL": "search.url",
    "INGEST_SEARCH_HOSTS": "search.hosts",
    "INGEST_SEARCH_PROXY_URL": "search.proxy_url",
    "INGEST_SEARCH_COMPRESSION": "search.compression",
    "INGEST_SEARCH_CLIENT_CERT_FILE": "search.client_cert_file",
    "INGEST_SEARCH_CLIENT_KEY_FILE": "search.client_key_file",
    "INGEST_SEARCH_CLIENT_KEY_PASSWORD": "search.client_key_password",
    "INGEST_SEARCH_KIND": "search.kind",
    "INGEST_SEARCH_USERNAME": "search.username",
    "INGEST_SEARCH_PASSWORD": "search.password",
    "INGEST_SEARCH_API_KEY": "search.api_key",
    "INGEST_SEARCH_BEARER_TOKEN": "search.bearer_token",
    "INGEST_SEARCH_CA_FILE": "search.ca_file",
    "INGEST_LEDGER_DSN": "ledger.dsn",
    "INGEST_LEDGER_SCHEMA": "ledger.schema",
    "INGEST_SCHEMA_REGISTRY_URL": "schema_registry.url",
    "INGEST_SCHEMA_REGISTRY_USERNAME": "schema_registry.username",
    "INGEST_SCHEMA_REGISTRY_PASSWORD": "schema_registry.password",
    "INGEST_SCHEMAS_DIR": "schemas_dir",
    "INGEST_MAX_RETRY_S": "runtime.max_retry_s",
}

#: Keys whose value may instead be given as ``<key>_file`` in TOML.
_FILE_KEYS = {
    ("search", "password"),
    ("search", "api_key"),
    ("search", "bearer_token"),
    ("search", "client_key_password"),
    ("search", "proxy_url"),
    ("ledger", "dsn"),
    ("schema_registry", "password"),
}


#: File-backed keys whose file stays known after loading, so the secret can be re-read
#: while the process runs (the others are used once, when a client is built).
_ROTATING_FILE_KEYS = {
    ("search", "password"),
    ("search", "api_key"),
    ("search", "bearer_token"),
    ("ledger", "dsn"),
}


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config error: {p}: expected a table")
    node[leaf] = value


def _resolve_file_keys(data: dict[str, Any]) -> None:
    for section, key in _FILE_KEYS:
        table = data.get(section)
        if not isinstance(table, dict) or f"{key}_file" not in table:
            continue
        path = table.pop(f"{key}_file")
        if not isinstance(path, str):
            raise ConfigError(f"config error: {section}.{key}_file: expected a path string")
        try:
            table[key] = _read_secret_file(path, f"{section}.{key}").get_secret_value()
        except ValueError as exc:
            raise ConfigError(f"config error: {section}.{key}_file: {exc}") from None
        if (section, key) in _ROTATING_FILE_KEYS:
            table[f"{key}_file"] = path


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, dotted in ENV_OVERRIDES.items():
        rotating = tuple(dotted.split(".")) in _ROTATING_FILE_KEYS
        if var in env:
            _set_dotted(data, dotted, env[var])
            if rotating:  # an inline value wins over a file named in the TOML file
                section, key = dotted.split(".")
                data[section].pop(f"{key}_file", None)
        elif f"{var}_FILE" in env:
            path = env[f"{var}_FILE"]
            try:
                _set_dotted(data, dotted, Path(path).read_text().strip())
            except OSError as exc:
                raise ConfigError(
                    f"config error: {var}_FILE: cannot read {path!r}: {exc.strerror}"
                ) from None
            if rotating:
                _set_dotted(data, f"{dotted}_file", path)


def _format_loc(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            name = None
            if isinstance(node, list | tuple) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    name = node["name"]
            parts[-1] = f"{parts[-1]}[{name or item}]" if parts else f"[{item}]"
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def parse_settings(data: dict[str, Any], *, source: str = "<config>") -> Settings:
    """Validate a raw mapping; the first problem becomes one ConfigError line."""
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _format_loc(tuple(err["loc"]), data) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        line = f"config error in {source}: {loc}: {msg}"
        raise ConfigError(" ".join(line.split())) from None


def external_ledger_dsn(env: Mapping[str, str] | None = None) -> str | None:
    """``INGEST_LEDGER_DSN`` when set: ``ingest dev up`` then uses that PostgreSQL."""
    env = os.environ if env is None else env
    return env.get("INGEST_LEDGER_DSN") or None


def load_settings(
    path: Path | str | None = None, *, env: Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (default ``ingest.toml`` if present), apply environment overrides."""
    env = os.environ if env is None else env
    explicit = path is not None or "INGEST_CONFIG" in env
    cfg_path = Path(path or env.get("INGEST_CONFIG") or DEFAULT_CONFIG_PATH)
    data: dict[str, Any] = {}
    exists = _exists(cfg_path)
    if exists:
        try:
            data = tomllib.loads(cfg_path.read_bytes().decode("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config error in {cfg_path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config error in {cfg_path}: not UTF-8 text (byte {exc.start})"
            ) from None
        except OSError as exc:
            raise ConfigError(f"config error: cannot read {cfg_path}: {exc.strerror}") from None
    elif explicit:
        raise ConfigError(f"config error: file {cfg_path} does not exist")
    _resolve_file_keys(data)
    _apply_env(data, env)
    settings = parse_settings(data, source=str(cfg_path))
    if not settings.schemas_dir.is_absolute() and exists:
        candidate = cfg_path.resolve().parent / settings.schemas_dir
        if _exists(candidate):
            settings = settings.model_copy(update={"schemas_dir": candidate})
    try:
        settings.kafka.client_config()  # reads kafka.client_files now, not mid-run
    except ValueError as exc:
        raise ConfigError(f"config error in {cfg_path}: {exc}") from None
    return settings


def _exists(path: Path) -> bool:
    """``path.exists()`` that treats unusable paths (too long, bad bytes) as absent."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False
