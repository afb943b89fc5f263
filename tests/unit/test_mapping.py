"""Index mappings derived from Avro schemas, and diffs between live and wanted mappings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastavro
import pytest

from ingest.avro.catalog import SchemaCatalog
from ingest.errors import ConfigError
from ingest.search.mapping import DATE_FORMAT, derive_mapping, diff_mappings, index_definition
from ingest.settings import IndexSettings

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
DATE = {"type": "date", "format": DATE_FORMAT}


def one_field(avro_type: Any) -> dict[str, Any]:
    return {"type": "record", "name": "R", "fields": [{"name": "f", "type": avro_type}]}


@pytest.mark.parametrize(
    ("avro_type", "expected"),
    [
        pytest.param("string", {"type": "keyword"}, id="string"),
        pytest.param("boolean", {"type": "boolean"}, id="boolean"),
        pytest.param("int", {"type": "integer"}, id="int"),
        pytest.param("long", {"type": "long"}, id="long"),
        pytest.param("float", {"type": "float"}, id="float"),
        pytest.param("double", {"type": "double"}, id="double"),
        pytest.param("bytes", {"type": "binary"}, id="bytes"),
        pytest.param({"type": "fixed", "name": "F", "size": 4}, {"type": "binary"}, id="fixed"),
        pytest.param({"type": "long", "logicalType": "timestamp-millis"}, DATE, id="ts-millis"),
        pytest.param({"type": "long", "logicalType": "timestamp-micros"}, DATE, id="ts-micros"),
        pytest.param(
            {"type": "long", "logicalType": "local-timestamp-millis"}, DATE, id="local-ts"
        ),
        pytest.param({"type": "int", "logicalType": "date"}, DATE, id="date"),
        pytest.param(
            {"type": "int", "logicalType": "time-millis"}, {"type": "keyword"}, id="time-millis"
        ),
        pytest.param(
            {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2},
            {"type": "double"},
            id="decimal-bytes",
        ),
        pytest.param(
            {"type": "fixed", "name": "D", "size": 8, "logicalType": "decimal", "precision": 9},
            {"type": "double"},
            id="decimal-fixed",
        ),
        pytest.param({"type": "string", "logicalType": "uuid"}, {"type": "keyword"}, id="uuid"),
        pytest.param(
            {"type": "long", "logicalType": "time-micros"}, {"type": "keyword"}, id="time-micros"
        ),
        pytest.param(
            {"type": "string", "logicalType": "made-up"}, {"type": "keyword"}, id="unknown-logical"
        ),
        pytest.param(
            {"type": "enum", "name": "E", "symbols": ["A", "B"]}, {"type": "keyword"}, id="enum"
        ),
        pytest.param(["null", "string"], {"type": "keyword"}, id="nullable"),
        pytest.param(["long", "null"], {"type": "long"}, id="null-second"),
        pytest.param({"type": "array", "items": "int"}, {"type": "integer"}, id="array"),
        pytest.param(
            {"type": "array", "items": ["null", "double"]}, {"type": "double"}, id="array-nullable"
        ),
        pytest.param(
            {"type": "map", "values": "string"}, {"type": "object", "dynamic": True}, id="map"
        ),
        pytest.param(
            {"type": "record", "name": "In", "fields": [{"name": "x", "type": "int"}]},
            {"type": "object", "properties": {"x": {"type": "integer"}}},
            id="record",
        ),
        pytest.param(
            {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "It",
                    "fields": [{"name": "s", "type": "string"}],
                },
            },
            {"type": "object", "properties": {"s": {"type": "keyword"}}},
            id="array-of-records",
        ),
        pytest.param(["string", "null", "string"], {"type": "keyword"}, id="same-type-union"),
    ],
)
def test_each_avro_type_maps(avro_type: Any, expected: dict[str, Any]) -> None:
    mapping = derive_mapping(one_field(avro_type))
    assert mapping == {"dynamic": "strict", "properties": {"f": expected}}


def test_always_null_fields_are_left_out() -> None:
    assert derive_mapping(one_field("null")) == {"dynamic": "strict", "properties": {}}


def test_orders_mapping() -> None:
    catalog = SchemaCatalog.load(SCHEMAS)
    mapping = derive_mapping(catalog.latest("orders"))
    props = mapping["properties"]
    assert mapping["dynamic"] == "strict"
    assert props["order_id"] == {"type": "keyword"}
    assert props["updated_at"] == DATE
    assert props["status"] == {"type": "keyword"}
    assert props["total_amount"] == {"type": "double"}
    assert props["discount"] == {"type": "double"}
    assert props["items"]["properties"]["quantity"] == {"type": "integer"}
    assert props["shipping_address"]["properties"]["country"] == {"type": "keyword"}
    assert props["tags"] == {"type": "object", "dynamic": True}
    assert props["priority"] == {"type": "boolean"}
    assert props["coupon_code"] == {"type": "keyword"}
    # The parsed form gives the same mapping as the JSON as written.
    assert derive_mapping(catalog.latest("orders").schema) == mapping


def test_named_types_are_resolved_where_reused() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "namespace": "a.b",
        "fields": [
            {
                "name": "home",
                "type": {
                    "type": "record",
                    "name": "Addr",
                    "fields": [{"name": "city", "type": "string"}],
                },
            },
            {"name": "work", "type": ["null", "Addr"]},
            {"name": "other", "type": "a.b.Addr"},
        ],
    }
    props = derive_mapping(schema)["properties"]
    assert props["home"] == props["work"] == props["other"]
    assert props["work"]["properties"] == {"city": {"type": "keyword"}}
    parsed = fastavro.parse_schema(schema, named_schemas={})
    assert derive_mapping(parsed) == derive_mapping(schema)


def test_overrides_replace_by_dotted_path() -> None:
    catalog = SchemaCatalog.load(SCHEMAS)
    overrides = {
        "notes": {"type": "text"},
        "shipping_address.city": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
        "items.sku": {"type": "keyword", "ignore_above": 64},
        "items": {"type": "nested"},
    }
    # "items" overrides the whole array field, so "items.sku" names nothing: refused.
    with pytest.raises(ConfigError, match=r"name no schema field: items\.sku"):
        derive_mapping(catalog.latest("orders"), overrides)
    del overrides["items.sku"]
    props = derive_mapping(catalog.latest("orders"), overrides)["properties"]
    assert props["notes"] == {"type": "text"}
    assert props["shipping_address"]["properties"]["city"]["type"] == "text"
    assert props["shipping_address"]["properties"]["street"] == {"type": "keyword"}
    assert props["items"] == {"type": "nested"}
    # A nested path inside an array of records works too.
    props = derive_mapping(catalog.latest("orders"), {"items.sku": {"type": "text"}})["properties"]
    assert props["items"]["properties"]["sku"] == {"type": "text"}


def test_override_does_not_alias_the_callers_dict() -> None:
    override = {"type": "text"}
    mapping = derive_mapping(one_field("string"), {"f": override})
    mapping["properties"]["f"]["type"] = "keyword"
    assert override == {"type": "text"}


def test_a_union_of_several_types_needs_an_override() -> None:
    schema = one_field(["null", "string", "long"])
    with pytest.raises(ConfigError, match=r"field 'f' is a union of several types"):
        derive_mapping(schema)
    assert derive_mapping(schema, {"f": {"type": "keyword"}})["properties"]["f"] == {
        "type": "keyword"
    }


def test_top_level_must_be_a_record() -> None:
    with pytest.raises(ConfigError, match="must be a record"):
        derive_mapping({"type": "string"})


def test_index_definition_merges_settings_and_overrides() -> None:
    catalog = SchemaCatalog.load(SCHEMAS)
    index = IndexSettings(
        shards=3,
        replicas=0,
        refresh_interval="5s",
        settings={"max_result_window": 50000, "refresh_interval": "10s"},
        field_overrides={"notes": {"type": "text"}},
    )
    body = index_definition(catalog.latest("orders"), index)
    assert body["settings"] == {
        "number_of_shards": 3,
        "number_of_replicas": 0,
        "refresh_interval": "10s",
        "max_result_window": 50000,
    }
    assert body["mappings"]["dynamic"] == "strict"
    assert body["mappings"]["properties"]["notes"] == {"type": "text"}


# ----------------------------------------------------------------------------- diffs


def orders(version: int) -> dict[str, Any]:
    return derive_mapping(SchemaCatalog.load(SCHEMAS).by_id(version))


def test_v1_to_v2_only_adds_fields() -> None:
    diff = diff_mappings(orders(1), orders(2))
    assert diff.added == ["coupon_code", "priority"]
    assert diff.changed == diff.removed == []
    assert diff.in_place_ok
    assert not diff.empty
    assert diff_mappings(orders(2), orders(2)).empty


def test_v2_to_v1_removes_fields() -> None:
    diff = diff_mappings(orders(2), orders(1))
    assert diff.removed == ["coupon_code", "priority"]
    assert not diff.in_place_ok


def test_a_changed_type_needs_a_new_index() -> None:
    wanted = derive_mapping(
        SchemaCatalog.load(SCHEMAS).latest("orders"), {"notes": {"type": "text"}}
    )
    diff = diff_mappings(orders(2), wanted)
    assert diff.changed == ["notes"]
    assert diff.added == diff.removed == []
    assert not diff.in_place_ok


def test_live_mapping_as_the_server_returns_it() -> None:
    """Objects without ``type``, ``dynamic`` as a string, no default date format, and fields
    the server added under a map (as osmem answered GET _mapping after indexing orders)."""
    wanted = orders(2)
    live_body: dict[str, Any] = {"dynamic": "strict", "properties": {}}
    for name, wanted_attrs in wanted["properties"].items():
        attrs = dict(wanted_attrs)
        if attrs.get("type") == "object":
            del attrs["type"]
        if attrs.get("format") == DATE_FORMAT:
            del attrs["format"]  # the default: osmem and Elasticsearch leave it out
        if "dynamic" in attrs:
            attrs["dynamic"] = "true"
            attrs["properties"] = {"campaign": {"type": "text"}}
        live_body["properties"][name] = attrs
    for live in (live_body, {"mappings": live_body}, {"orders-v1": {"mappings": live_body}}):
        diff = diff_mappings(live, wanted)
        assert diff.empty, diff


def test_nested_changes_are_reported_by_path() -> None:
    live = orders(2)
    wanted = orders(2)
    wanted["properties"]["shipping_address"]["properties"]["city"] = {"type": "text"}
    wanted["properties"]["items"]["properties"]["weight"] = {"type": "float"}
    del wanted["properties"]["items"]["properties"]["sku"]
    diff = diff_mappings(live, wanted)
    assert diff.changed == ["shipping_address.city"]
    assert diff.added == ["items.weight"]
    assert diff.removed == ["items.sku"]


def test_root_dynamic_change_is_a_change() -> None:
    live = dict(orders(2), dynamic="true")
    assert diff_mappings(live, orders(2)).changed == ["(root).dynamic"]


def test_a_different_date_format_is_a_change() -> None:
    live = orders(2)
    live["properties"]["created_at"] = {"type": "date", "format": "epoch_millis"}
    assert diff_mappings(live, orders(2)).changed == ["created_at"]
