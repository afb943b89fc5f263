"""Writer schemas from the registry through the real daemon: one that cannot be used
dead-letters its records (and is not asked for again), an outage that passes is waited out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.avro.codec import HEADER_SIZE, frame
from ingest.ledger import PostgresLedger
from ingest.settings import RegistrySettings, Settings
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    end_offsets,
    index_versions,
    ledger_offsets,
    wait_for,
    write_config,
)
from tests.support.records import codec_for, orders, produce
from tests.support.registry import LoopbackRegistry, nested_schema_text

pytestmark = pytest.mark.integration

DEEP_JSON, DEEP_SCHEMA, FLAKY = 9001, 9002, 9003


def test_unusable_schemas_are_dead_lettered_once_and_an_outage_is_retried(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Ids 9001 (JSON nested 100 000 deep) and 9002 (a schema 3 000 arrays deep): their
    records are dead-lettered at stage decode naming the id, each id fetched once. Id 9003
    answers 503 three times, then the orders schema: its records are all indexed."""
    with LoopbackRegistry() as registry:
        registry.put(DEEP_JSON, "[" * 100_000 + "]" * 100_000)
        registry.put(DEEP_SCHEMA, nested_schema_text(3_000))
        base = make_settings(partitions=1)
        registry.put(FLAKY, json.dumps(codec_for(base).reader.raw), fail_first=3)
        settings = base.model_copy(update={"schema_registry": RegistrySettings(url=registry.url)})
        codec = codec_for(settings)
        batch = orders(51, 8)
        plain = [(o["order_id"].encode(), codec.encode(o)) for o in batch]
        body = [value[HEADER_SIZE:] for _k, value in plain]
        messages = [
            plain[0],
            (b"d1", frame(DEEP_JSON, body[1])),
            (b"d2", frame(DEEP_SCHEMA, body[2])),
            (batch[3]["order_id"].encode(), frame(FLAKY, body[3])),
            (b"d4", frame(DEEP_JSON, body[4])),
            (b"d5", frame(DEEP_SCHEMA, body[5])),
            (batch[6]["order_id"].encode(), frame(FLAKY, body[6])),
            plain[7],
        ]
        produce(settings, messages)
        daemon = DaemonProcess(write_config(settings, tmp_path / "c.toml"), tmp_path / "d.log")
        try:
            wait_for(caught_up(settings, end_offsets(settings)), 120, "catch-up")
            assert daemon.alive(), daemon.output()
        finally:
            code = daemon.stop()
        assert code == 0, daemon.output()
        assert registry.requests[DEEP_JSON] == 1 and registry.requests[DEEP_SCHEMA] == 1
        assert registry.requests[FLAKY] == 4
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        rows = ledger.dead_letters(stream="orders", limit=100)
    assert [(r.offset, r.stage) for r in rows] == [(o, "decode") for o in (1, 2, 4, 5)]
    assert [r.value for r in rows] == [messages[o][1] for o in (1, 2, 4, 5)]
    for row in rows:
        schema_id = DEEP_JSON if row.offset in (1, 4) else DEEP_SCHEMA
        assert f"writer schema {schema_id} cannot be used" in row.reason, row.reason
    assert set(index_versions(settings)) == {batch[i]["order_id"] for i in (0, 3, 6, 7)}
    assert ledger_offsets(settings) == {0: 8}
