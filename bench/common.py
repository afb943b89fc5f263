"""Shared set-up for benchmarks: the embedded stack, settings for a fresh stream, samples."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from ingest.dev.stack import StackEndpoints, start_stack
from ingest.settings import (
    IndexSettings,
    KafkaSettings,
    LedgerSettings,
    RuntimeSettings,
    SearchSettings,
    Settings,
    StreamSettings,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@contextmanager
def embedded_stack(workdir: Path) -> Iterator[StackEndpoints]:
    stack = start_stack(workdir)
    try:
        yield stack.endpoints
    finally:
        stack.stop()


def fresh_settings(endpoints: StackEndpoints, *, partitions: int = 4, **stream: Any) -> Settings:
    """Settings for a new topic/alias/ledger schema on the stack; the topic is created."""
    name = "b" + uuid.uuid4().hex[:10]
    fields: dict[str, Any] = {
        "name": "orders",
        "topic": name,
        "subject": "orders",
        "alias": name,
        "id_field": "order_id",
        "version_field": "updated_at",
        "index": IndexSettings(shards=1, replicas=0),
    }
    fields.update(stream)
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap_servers=endpoints.kafka_bootstrap,
            group_id=name,
            session_timeout_ms=6000,
        ),
        search=SearchSettings(url=endpoints.search_url, request_timeout_s=120),
        ledger=LedgerSettings(dsn=endpoints.ledger_dsn, schema=name),
        schemas_dir=ROOT / "schemas",
        runtime=RuntimeSettings(summary_every_s=5),
        streams=(StreamSettings(**fields),),
    )
    admin = AdminClient({"bootstrap.servers": endpoints.kafka_bootstrap})
    for fut in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        fut.result(30)
    time.sleep(0.5)
    return settings


def save(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))


def write_daemon_config(settings: Settings, workdir: Path) -> Path:
    """A TOML file for ``ingest run`` holding ``settings`` (the DSN in clear: bench only)."""
    import tomli_w

    config = workdir / f"{settings.streams[0].topic}.toml"
    data = settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["ledger"]["dsn"] = settings.ledger.dsn.get_secret_value()
    config.write_text(tomli_w.dumps(data))
    return config
