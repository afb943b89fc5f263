"""The fault-test process helpers: config files that round-trip, waits that give up clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.settings import (
    IndexSettings,
    KafkaSettings,
    LedgerSettings,
    SearchSettings,
    Settings,
    StreamSettings,
    load_settings,
)
from tests.support.fault_proxy import parse_bulk
from tests.support.procs import WaitTimeout, settings_to_toml, stack_env, wait_for, write_config


def _settings() -> Settings:
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers="127.0.0.1:1234",
            group_id="g",
            session_timeout_ms=6000,
            client={"security.protocol": "PLAINTEXT", "socket.keepalive.enable": True},
        ),
        search=SearchSettings(url="http://127.0.0.1:9", password='s3cr"et', request_timeout_s=2.5),
        ledger=LedgerSettings(dsn="postgresql://u:pw@127.0.0.1:5/db", schema="t0abc"),
        schemas_dir=Path("/abs/schemas"),
        streams=(
            StreamSettings(
                name="orders",
                topic="t0abc",
                subject="orders",
                alias="t0abc",
                id_field="order_id",
                version_field="updated_at",
                index=IndexSettings(replicas=0, field_overrides={"note": {"type": "text"}}),
            ),
        ),
    )


def test_settings_round_trip_through_toml(tmp_path: Path) -> None:
    """A config written for a subprocess loads back equal, secrets and nested tables included."""
    settings = _settings()
    path = write_config(settings, tmp_path / "ingest.toml")
    assert load_settings(path, env={}) == settings


def test_toml_writes_secret_values_not_masks() -> None:
    """SecretStr values are written out (the subprocess needs them), never as '**********'."""
    text = settings_to_toml(_settings())
    assert "**********" not in text
    assert "pw@127.0.0.1" in text


def test_stack_env_drops_ambient_ingest_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """An INGEST_* variable in the test runner's shell cannot leak into a subprocess."""
    monkeypatch.setenv("INGEST_SEARCH_URL", "http://elsewhere:9200")
    env = stack_env(config=Path("/x.toml"), extra={"INGEST_MAX_RETRY_S": "3"})
    assert "INGEST_SEARCH_URL" not in env
    assert env["INGEST_CONFIG"] == "/x.toml"
    assert env["INGEST_MAX_RETRY_S"] == "3"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_wait_for_returns_the_truthy_value() -> None:
    """wait_for hands back what the predicate returned, so callers need not recompute it."""
    values = iter([None, 0, "ready"])
    assert wait_for(lambda: next(values), timeout_s=5, interval_s=0) == "ready"


def test_wait_for_names_what_it_waited_for() -> None:
    """A timed-out wait says what it was waiting for and adds the caller's diagnostics."""
    with pytest.raises(WaitTimeout, match=r"waiting for the moon\nlog tail"):
        wait_for(lambda: False, timeout_s=0, what="the moon", on_timeout=lambda: "log tail")


def test_parse_bulk_handles_delete_without_source() -> None:
    """Bulk items are split correctly when deletes (no source line) mix with index ops."""
    body = (
        b'{"index":{"_index":"a","_id":"1"}}\n{"x":1}\n'
        b'{"delete":{"_index":"a","_id":"2"}}\n'
        b'{"create":{"_index":"a","_id":"3"}}\n{"x":3}\n'
    )
    items = parse_bulk(body)
    assert [(i.op, i.meta["_id"], len(i.lines)) for i in items] == [
        ("index", "1", 2),
        ("delete", "2", 1),
        ("create", "3", 2),
    ]
