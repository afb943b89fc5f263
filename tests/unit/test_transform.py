"""Record -> document: ids, external versions, JSON rendering, user hooks, tombstones."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
import pytest

from ingest.errors import ConfigError, TransformError
from ingest.pipeline.transform import Transformer, load_hook, to_version
from ingest.settings import StreamSettings
from ingest.types import RawRecord


def stream(**kw: Any) -> StreamSettings:
    base: dict[str, Any] = {"name": "s", "topic": "t", "subject": "orders", "alias": "a"}
    base.update(kw)
    return StreamSettings(**base)


def raw(offset: int = 7, key: bytes | None = b"k1", ts: int = 1000) -> RawRecord:
    return RawRecord("t", 0, offset, key, b"v", timestamp_ms=ts)


def test_id_and_version_from_fields_and_json_rendering() -> None:
    """Timestamps render as ISO UTC, decimals as numbers, version as epoch millis."""
    t = Transformer(stream(id_field="order_id", version_field="updated_at"))
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    action = t.to_action(
        {"order_id": "o-1", "updated_at": when, "amount": Decimal("12.50"), "status": "PAID"},
        raw(),
    )
    assert action is not None
    assert (action.doc_id, action.version, action.op) == ("o-1", 1767323045678, "index")
    body = orjson.loads(action.body or b"")
    assert body == {
        "order_id": "o-1",
        "updated_at": "2026-01-02T03:04:05.678000Z",
        "amount": 12.5,
        "status": "PAID",
    }


def test_key_and_offset_when_no_fields_configured() -> None:
    action = Transformer(stream()).to_action({"x": 1}, raw(offset=42, key=b"abc"))
    assert action is not None
    assert (action.doc_id, action.version) == ("abc", 42)


@pytest.mark.parametrize(
    ("doc", "record", "field"),
    [
        pytest.param({"updated_at": 1}, raw(), "order_id", id="missing-id"),
        pytest.param({"order_id": "", "updated_at": 1}, raw(), "order_id", id="empty-id"),
        pytest.param({"order_id": "a", "updated_at": "x"}, raw(), "updated_at", id="bad-version"),
        pytest.param({"order_id": "a", "updated_at": None}, raw(), "updated_at", id="null-version"),
    ],
)
def test_unusable_id_or_version_is_a_transform_error_naming_the_field(
    doc: dict[str, Any], record: RawRecord, field: str
) -> None:
    t = Transformer(stream(id_field="order_id", version_field="updated_at"))
    with pytest.raises(TransformError) as info:
        t.to_action(doc, record)
    assert info.value.stage == "transform"
    assert field in str(info.value)


def test_missing_key_without_id_field_is_a_transform_error() -> None:
    with pytest.raises(TransformError, match="no key"):
        Transformer(stream()).to_action({}, raw(key=None))


def test_hook_reshapes_filters_and_failures_are_record_errors() -> None:
    """A hook may reshape or drop a document; when it raises, only that record fails."""

    def hook(doc: dict[str, Any], record: RawRecord) -> dict[str, Any] | None:
        if doc.get("drop"):
            return None
        if doc.get("boom"):
            raise RuntimeError("kaput")
        return {**doc, "partition": record.partition}

    t = Transformer(stream(), hook=hook)
    kept = t.to_action({"a": 1}, raw())
    assert kept is not None and orjson.loads(kept.body or b"") == {"a": 1, "partition": 0}
    assert t.to_action({"drop": True}, raw()) is None
    with pytest.raises(TransformError, match="RuntimeError: kaput"):
        t.to_action({"boom": True}, raw())


def test_tombstone_deletes_by_key_with_offset_or_timestamp_version() -> None:
    by_offset = Transformer(stream()).tombstone(raw(offset=9, key=b"id9", ts=5))
    assert (by_offset.op, by_offset.doc_id, by_offset.version) == ("delete", "id9", 9)
    by_time = Transformer(stream(version_field="updated_at")).tombstone(raw(offset=9, ts=5))
    assert by_time.version == 5
    with pytest.raises(TransformError):
        Transformer(stream()).tombstone(raw(key=None))


def test_load_hook_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cannot import"):
        load_hook("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="not a function"):
        load_hook("json:NOPE")
    assert load_hook("json:dumps") is not None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5),
        (dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC), 1000),
        (dt.datetime(1970, 1, 1, 0, 0, 1), 1000),
        (dt.date(1970, 1, 11), 10),
    ],
)
def test_to_version(value: Any, expected: int) -> None:
    assert to_version(value) == expected


def test_boolean_is_not_a_version() -> None:
    with pytest.raises(TypeError):
        to_version(True)
