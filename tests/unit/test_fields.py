"""A stream's id and version fields against every schema version, and whether its deletes
can be ordered against its records: each refused and each accepted configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.fields import check_stream_fields
from ingest.errors import ConfigError, TransformError
from ingest.pipeline.transform import Transformer
from ingest.settings import StreamSettings, parse_settings
from ingest.types import RawRecord

MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
MICROS = {"type": "long", "logicalType": "timestamp-micros"}
STATUS = {"type": "enum", "name": "Status", "symbols": ["A", "B"]}


def catalog(tmp_path: Path, *field_sets: dict[str, Any]) -> SchemaCatalog:
    """Subject ``s`` with one version per ``field_sets`` entry (field name -> type)."""
    entries = []
    for n, fields in enumerate(field_sets, start=1):
        schema = {
            "type": "record",
            "name": "R",
            "namespace": "x",
            "fields": [{"name": k, "type": t} for k, t in fields.items()],
        }
        (tmp_path / "s").mkdir(exist_ok=True)
        (tmp_path / "s" / f"v{n}.avsc").write_text(json.dumps(schema))
        entries.append({"subject": "s", "version": n, "id": n})
    (tmp_path / "manifest.json").write_text(json.dumps({"schemas": entries}))
    return SchemaCatalog.load(tmp_path)


def stream(**kw: Any) -> StreamSettings:
    base: dict[str, Any] = {"name": "st", "topic": "t", "subject": "s", "alias": "a"}
    base.update(kw)
    return StreamSettings(**base)


BASE = {"id": "string", "n": "long", "at": MILLIS, "status": STATUS}


@pytest.mark.parametrize(
    ("versions", "settings"),
    [
        pytest.param([BASE], {"id_field": "id", "version_field": "at"}, id="string id, millis"),
        pytest.param([{**BASE, "at": MICROS}], {"version_field": "at"}, id="micros"),
        pytest.param(
            [BASE, {**BASE, "at": ["null", MILLIS]}], {"version_field": "at"}, id="nullable"
        ),
        pytest.param([BASE], {"id_field": "n"}, id="long id"),
        pytest.param([BASE], {"id_field": "status"}, id="enum id"),
        pytest.param([BASE], {}, id="key and offset"),
        pytest.param(
            [BASE], {"version_field": "n", "tombstones": "ignore"}, id="counter, no deletes"
        ),
        pytest.param(
            [BASE], {"version_field": "n", "tombstones": "dead-letter"}, id="counter, dead-letter"
        ),
        pytest.param(
            [BASE],
            {"version_field": "n", "tombstone_version_header": "version"},
            id="counter, header",
        ),
    ],
)
def test_accepted(tmp_path: Path, versions: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    check_stream_fields(catalog(tmp_path, *versions), stream(**settings))


@pytest.mark.parametrize(
    ("versions", "settings", "line"),
    [
        pytest.param(
            [BASE, BASE],
            {"id_field": "idd"},
            "stream 'st': id_field 'idd' is not a field of s v1, v2",
            id="typo in every version",
        ),
        pytest.param(
            [{"id": "string", "n": "long"}, BASE],
            {"id_field": "id", "version_field": "at", "tombstones": "ignore"},
            "stream 'st': version_field 'at' is not a field of s v1",
            id="missing in an older version",
        ),
        pytest.param(
            [{**BASE, "id": "double"}],
            {"id_field": "id"},
            "id_field 'id' has an unusable type (double in v1 of s)",
            id="float id",
        ),
        pytest.param(
            [{**BASE, "at": "string"}],
            {"version_field": "at"},
            "version_field 'at' has an unusable type (string in v1 of s)",
            id="string version",
        ),
        pytest.param(
            [{**BASE, "at": ["null", "long", "string"]}],
            {"version_field": "at"},
            "(union in v1 of s)",
            id="union version",
        ),
        pytest.param(
            [BASE],
            {"version_field": "n"},
            "deletes are versioned by the broker timestamp (ms), which cannot be ordered"
            " against version_field 'n' (long in v1)",
            id="counter with tombstone deletes",
        ),
        pytest.param(
            [{**BASE, "at": "long"}, BASE],
            {"version_field": "at"},
            "(long in v1)",
            id="a timestamp only in the newer version",
        ),
    ],
)
def test_refused_with_one_line(
    tmp_path: Path, versions: list[dict[str, Any]], settings: dict[str, Any], line: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_stream_fields(catalog(tmp_path, *versions), stream(**settings))
    message = str(caught.value)
    assert line in message and "\n" not in message


def test_the_repository_orders_stream_is_accepted() -> None:
    orders = SchemaCatalog.load(Path(__file__).resolve().parents[2] / "schemas")
    check_stream_fields(
        orders, stream(subject="orders", id_field="order_id", version_field="updated_at")
    )


def test_a_tombstone_header_needs_a_version_field() -> None:
    with pytest.raises(ConfigError, match="tombstone_version_header needs a version_field"):
        parse_settings(
            {
                "streams": [
                    {
                        "name": "st",
                        "topic": "t",
                        "subject": "s",
                        "alias": "a",
                        "tombstone_version_header": "v",
                    }
                ]
            }
        )


def _tombstone(headers: list[tuple[str, bytes]], ts: int = 1000) -> RawRecord:
    return RawRecord("t", 0, 7, b"k", None, timestamp_ms=ts, headers=headers)


def test_a_tombstone_takes_its_version_from_the_configured_header() -> None:
    t = Transformer(stream(version_field="n", tombstone_version_header="version"))
    assert t.tombstone(_tombstone([("version", b"1"), ("version", b"42")])).version == 42
    for headers in ([], [("version", b"-3")], [("version", b"x")]):
        with pytest.raises(TransformError, match="tombstone version header"):
            t.tombstone(_tombstone(headers))


def test_a_tombstone_without_a_broker_timestamp_is_dead_lettered_not_versioned_zero() -> None:
    t = Transformer(stream(version_field="at"))
    assert t.tombstone(_tombstone([], ts=5)).version == 5
    with pytest.raises(TransformError, match="no broker timestamp"):
        t.tombstone(_tombstone([], ts=0))
