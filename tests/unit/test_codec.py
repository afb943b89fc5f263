"""The codec: round trips, schema evolution, and a typed RecordError for any bad input."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools
import json
import re
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro import _write_py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import HEADER_SIZE, AvroCodec, frame
from ingest.avro.reader import ReadFailure, compile_reader
from ingest.avro.registry import HttpSchemaRegistry, _schema_from
from ingest.dev.samples import sample_orders, to_version
from ingest.errors import (
    DecodeError,
    FatalError,
    FramingError,
    RecordError,
    RecordValidationError,
    TransientError,
    UnknownSchemaError,
    UnusableSchemaError,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CATALOG = SchemaCatalog.load(SCHEMAS)
V1, V2 = CATALOG.versions("orders")
#: One codec for the property tests: building one compiles a reader (milliseconds).
SHARED = AvroCodec(CATALOG, "orders")


@pytest.fixture
def codec() -> AvroCodec:
    return AvroCodec(CATALOG, "orders")


def orders(n: int, seed: int = 1, version: int = 2) -> list[dict[str, Any]]:
    return list(itertools.islice(sample_orders(seed, version=version), n))


# ------------------------------------------------------------------ record strategies

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MIN_MS = -62_135_596_800_000  # 0001-01-01
_MAX_MS = 253_402_300_799_999  # 9999-12-31 23:59:59.999


def _named(schema: dict[str, Any]) -> dict[str, Any]:
    return dict(schema.get("__named_schemas") or {})


def strategy_for(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for ``schema`` (fastavro-parsed), as fastavro decodes them back."""
    if isinstance(schema, list):
        return st.one_of([strategy_for(b, named) for b in schema])
    if isinstance(schema, str):
        if schema in named:
            return strategy_for(named[schema], named)
        schema = {"type": schema}
    kind, logical = schema["type"], schema.get("logicalType")
    if isinstance(kind, dict | list):
        return strategy_for(kind, named)
    if logical == "timestamp-millis":
        return st.integers(_MIN_MS, _MAX_MS).map(lambda ms: _EPOCH + dt.timedelta(milliseconds=ms))
    if logical == "decimal":
        limit = Decimal(10) ** (schema["precision"] - schema["scale"]) - Decimal(1).scaleb(
            -schema["scale"]
        )
        return st.decimals(
            min_value=-limit, max_value=limit, places=schema["scale"], allow_nan=False
        )
    simple: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": st.text(max_size=12),
        "bytes": st.binary(max_size=12),
    }
    if kind in simple:
        return simple[kind]
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(strategy_for(schema["items"], named), max_size=3)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=6), strategy_for(schema["values"], named), max_size=3
        )
    assert kind == "record", kind
    return st.fixed_dictionaries(
        {f["name"]: strategy_for(f["type"], named) for f in schema["fields"]}
    )


V2_RECORDS = strategy_for(V2.schema, _named(V2.schema))
V1_RECORDS = strategy_for(V1.schema, _named(V1.schema))


# ------------------------------------------------------------------------ round trips


def test_sample_orders_round_trip(codec: AvroCodec) -> None:
    records = orders(200)
    framed = [codec.encode(r) for r in records]
    assert all(f[:HEADER_SIZE] == b"\x00\x00\x00\x00\x02" for f in framed)
    assert [codec.decode(f) for f in framed] == records
    assert codec.decode_batch(framed) == records


def test_v1_records_decode_with_v2_defaults(codec: AvroCodec) -> None:
    for record in orders(50, version=1):
        framed = codec.encode(record, schema_id=1)
        assert framed[1:HEADER_SIZE] == b"\x00\x00\x00\x01"
        decoded = codec.decode(framed)
        assert decoded == dict(record, priority=False, coupon_code=None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=V2_RECORDS)
def test_every_valid_record_round_trips(record: dict[str, Any]) -> None:
    codec = SHARED
    framed = codec.encode(record)
    assert codec.decode(framed) == record
    # The compiled reader agrees with fastavro's own reader, value for value.
    fastavro_view = fastavro.schemaless_reader(io.BytesIO(framed[HEADER_SIZE:]), V2.schema, None)
    assert codec.decode(framed) == fastavro_view


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=V1_RECORDS)
def test_every_v1_record_reads_as_v2_like_fastavro_resolves_it(record: dict[str, Any]) -> None:
    codec = SHARED
    framed = codec.encode(record, schema_id=1)
    decoded = codec.decode(framed)
    assert decoded == dict(record, priority=False, coupon_code=None)
    resolved = fastavro.schemaless_reader(io.BytesIO(framed[HEADER_SIZE:]), V1.schema, V2.schema)
    assert decoded == resolved


@settings(max_examples=300, deadline=None)
@given(value=st.binary(max_size=64))
def test_arbitrary_bytes_give_a_record_error_or_a_record(value: bytes) -> None:
    codec = SHARED
    with contextlib.suppress(RecordError):
        assert isinstance(codec.decode(value), dict)


@settings(max_examples=400, deadline=None)
@given(schema_id=st.sampled_from([1, 2]), body=st.binary(max_size=200))
def test_arbitrary_avro_after_a_valid_header_never_escapes(schema_id: int, body: bytes) -> None:
    codec = SHARED
    try:
        assert isinstance(codec.decode(frame(schema_id, body)), dict)
    except RecordError as exc:
        assert exc.stage in ("decode", "validation")


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 50),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 10_000),
)
def test_corrupted_records_never_escape(seed: int, flips: list[tuple[int, int]], cut: int) -> None:
    """Bytes flipped inside a real record exercise every decoder branch with bad data."""
    codec = SHARED
    data = bytearray(codec.encode(orders(1, seed)[0]))
    for where, byte in flips:
        data[HEADER_SIZE + where % (len(data) - HEADER_SIZE)] = byte
    data = data[: max(HEADER_SIZE, len(data) - cut % 8)]
    with contextlib.suppress(RecordError):
        assert isinstance(codec.decode(bytes(data)), dict)


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("value", "message", "detail"),
    [
        pytest.param(b"", "shorter than the 5-byte", {"length": 0}, id="empty"),
        pytest.param(b"\x00\x00\x00\x02", "shorter than the 5-byte", {"length": 4}, id="short"),
        pytest.param(b"\x01\x00\x00\x00\x02\x00", "magic byte is 0x01", {"offset": 0}, id="magic"),
        pytest.param(b'{"order_id": 1}', "looks like JSON", {"offset": 0}, id="json"),
    ],
)
def test_framing_errors(codec: AvroCodec, value: bytes, message: str, detail: dict) -> None:
    with pytest.raises(FramingError, match=message) as info:
        codec.decode(value)
    assert info.value.detail == detail
    assert str(info.value).startswith("framing: ")


def test_none_is_a_framing_error(codec: AvroCodec) -> None:
    with pytest.raises(FramingError):
        codec.decode(None)  # type: ignore[arg-type]


def test_unknown_schema_id(codec: AvroCodec) -> None:
    good = codec.encode(orders(1)[0])
    with pytest.raises(UnknownSchemaError) as info:
        codec.decode(frame(77, good[HEADER_SIZE:]))
    assert info.value.detail == {"schema_id": 77}


@pytest.mark.parametrize("schema_id", [1, 2])
def test_truncated_avro_is_a_decode_error_with_offset(codec: AvroCodec, schema_id: int) -> None:
    record = to_version(orders(1)[0], schema_id)
    good = codec.encode(record, schema_id=schema_id)
    for cut in range(1, len(good) - HEADER_SIZE):
        with pytest.raises(DecodeError) as info:
            codec.decode(good[:-cut])
        offset = info.value.detail["offset"]
        assert isinstance(offset, int)
        assert HEADER_SIZE <= offset <= len(good) - cut
        assert info.value.detail["schema_id"] == schema_id


def test_trailing_bytes_are_a_validation_error(codec: AvroCodec) -> None:
    good = codec.encode(orders(1)[0])
    with pytest.raises(RecordValidationError, match="3 trailing bytes") as info:
        codec.decode(good + b"abc")
    assert info.value.detail == {"schema_id": 2, "offset": len(good)}


def test_invalid_utf8_is_a_decode_error(codec: AvroCodec) -> None:
    # order_id: length 2 (zigzag 4), then bytes that are not UTF-8.
    with pytest.raises(DecodeError, match="UnicodeDecodeError") as info:
        codec.decode(frame(2, b"\x04\xff\xfe" + b"\x00" * 40))
    assert info.value.detail["offset"] == HEADER_SIZE + 1  # just after the length
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


def test_hostile_lengths_fail_fast(codec: AvroCodec) -> None:
    """A huge length or block count is refused, not allocated or looped over."""
    huge = b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f"  # zigzag of a number near 2**62
    with pytest.raises(DecodeError, match="does not fit"):
        codec.decode(frame(2, huge))
    for items, problem in (("long", "block count too large"), ("null", "per-record limit")):
        schema = fastavro.parse_schema(
            {
                "type": "record",
                "name": "A",
                "fields": [{"name": "xs", "type": {"type": "array", "items": items}}],
            },
            named_schemas={},
        )
        with pytest.raises(ReadFailure, match=problem):
            compile_reader(schema)(huge + b"\x02" * 10, 0)


def zigzag(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    return bytes(out) + bytes([z])


def test_an_int_beyond_32_bits_is_a_decode_error_naming_the_field(codec: AvroCodec) -> None:
    """The varint of an int can carry 64 bits; beyond 32 the record is malformed Avro."""
    order = orders(1)[0]
    order["items"][0]["quantity"] = 2**40
    out = io.BytesIO()
    _write_py.schemaless_writer(out, V2.schema, order)  # writes what codec.encode refuses
    with pytest.raises(DecodeError, match=r"items\[\]\.quantity: int value outside the signed 32"):
        codec.decode(frame(V2.schema_id, out.getvalue()))
    order["items"][0]["quantity"] = 2**31 - 1
    assert codec.decode(codec.encode(order))["items"][0]["quantity"] == 2**31 - 1


@pytest.mark.parametrize(
    ("avro", "problem"),
    [
        pytest.param(zigzag(2**31) + b"\x00", "int value outside the signed 32", id="int"),
        pytest.param(zigzag(1) + zigzag(2**20) * 3 + b"\x00", "per-record limit", id="bomb"),
    ],
)
def test_fastavros_resolving_path_refuses_what_the_compiled_reader_refuses(
    tmp_path: Path, avro: bytes, problem: str
) -> None:
    """Resolution (an int read as a long) goes through fastavro, which would take an int
    beyond 32 bits and follow any number of blocks; the writer's compiled reader checks
    the bytes first."""
    xs = {"name": "xs", "type": {"type": "array", "items": "null"}}
    catalog = write_catalog(
        tmp_path,
        {
            "old": {"type": "record", "name": "P", "fields": [{"name": "a", "type": "int"}, xs]},
            "new": {"type": "record", "name": "P", "fields": [{"name": "a", "type": "long"}, xs]},
        },
    )
    codec = AvroCodec(catalog, "new")
    assert codec.decode(frame(1, zigzag(5) + zigzag(2) + b"\x00")) == {"a": 5, "xs": [None] * 2}
    with pytest.raises(DecodeError, match=problem):
        codec.decode(frame(1, avro))


def write_catalog(root: Path, schemas: dict[str, dict[str, Any]]) -> SchemaCatalog:
    entries = []
    for n, (subject, schema) in enumerate(schemas.items(), start=1):
        (root / subject).mkdir(parents=True)
        (root / subject / "v1.avsc").write_text(json.dumps(schema))
        entries.append({"subject": subject, "version": 1, "id": n})
    (root / "manifest.json").write_text(json.dumps({"schemas": entries}))
    return SchemaCatalog.load(root)


def test_writer_incompatible_with_reader_is_a_validation_error(tmp_path: Path) -> None:
    catalog = write_catalog(
        tmp_path,
        {
            "people": {"type": "record", "name": "P", "fields": [{"name": "a", "type": "int"}]},
            "changed": {"type": "record", "name": "P", "fields": [{"name": "a", "type": "string"}]},
            "other": {"type": "record", "name": "Q", "fields": [{"name": "a", "type": "int"}]},
        },
    )
    codec = AvroCodec(catalog, "people")
    assert codec.decode(codec.encode({"a": 5})) == {"a": 5}
    for schema_id in (2, 3):
        framed = AvroCodec(catalog, catalog.by_id(schema_id).subject).encode(
            {"a": "x" if schema_id == 2 else 1}
        )
        with pytest.raises(RecordValidationError, match="cannot be read as") as info:
            codec.decode(framed)
        assert info.value.detail == {"schema_id": schema_id}


def test_promotion_and_resolution_use_fastavro(tmp_path: Path) -> None:
    """An int written, a long read: not a simple addition, so fastavro resolves it."""
    catalog = write_catalog(
        tmp_path,
        {
            "old": {"type": "record", "name": "P", "fields": [{"name": "a", "type": "int"}]},
            "new": {
                "type": "record",
                "name": "P",
                "fields": [
                    {"name": "a", "type": "long"},
                    {"name": "b", "type": {"type": "array", "items": "int"}, "default": []},
                ],
            },
        },
    )
    codec = AvroCodec(catalog, "new")
    old = AvroCodec(catalog, "old")
    assert codec.decode(old.encode({"a": 7})) == {"a": 7, "b": []}


def test_decode_batch_keeps_order_and_errors_in_place(codec: AvroCodec) -> None:
    good = [codec.encode(r) for r in orders(3)]
    results = codec.decode_batch([good[0], b"junk!", good[1], frame(99, b""), good[2]])
    assert [type(r).__name__ for r in results] == [
        "dict",
        "FramingError",
        "dict",
        "UnknownSchemaError",
        "dict",
    ]


# ------------------------------------------------------------------------ encoding


def test_encode_lists_every_bad_field_path(codec: AvroCodec) -> None:
    record = orders(1)[0]
    record["items"] = [
        {"sku": "A-1", "quantity": 1, "unit_price": 2.5},
        {"sku": 5, "quantity": "2", "unit_price": 1.0},
    ]
    record["shipping_address"] = dict(record["shipping_address"], city=None)
    record["status"] = "LOST"
    record["tags"] = {"a": 1}
    del record["currency"]
    with pytest.raises(RecordValidationError) as info:
        codec.encode(record)
    assert info.value.detail["fields"] == [
        "status",
        "currency",
        "items[1].sku",
        "items[1].quantity",
        "shipping_address.city",
        "tags['a']",
    ]
    text = str(info.value)
    assert "items[1].quantity: expected int, got str" in text
    assert "currency: missing" in text
    assert "LOST" not in text  # values stay out of messages


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        pytest.param("total_amount", Decimal("1.005"), "more than 2 decimal places", id="scale"),
        pytest.param(
            "total_amount", Decimal("12345678901.5"), "more than 12 digits", id="precision"
        ),
        pytest.param("total_amount", Decimal("NaN"), "finite", id="nan"),
        pytest.param("created_at", "2024-01-01", "expected long (timestamp-millis)", id="ts-str"),
        pytest.param("priority", 1, "expected boolean, got int", id="bool"),
        pytest.param("discount", "5", "expected one of [null, double], got str", id="union"),
        pytest.param("items", "abc", "expected array, got str", id="array"),
        pytest.param("order_id", 2**40, "expected string, got int", id="string"),
    ],
)
def test_encode_names_the_problem(codec: AvroCodec, field: str, value: Any, problem: str) -> None:
    record = dict(orders(1)[0], **{field: value})
    with pytest.raises(RecordValidationError, match=rf"{field}: .*{re.escape(problem)}"):
        codec.encode(record)


def test_encode_checks_int_ranges(codec: AvroCodec) -> None:
    record = orders(1)[0]
    record["items"][0]["quantity"] = 2**31
    with pytest.raises(RecordValidationError, match=r"items\[0\]\.quantity: out of range for int"):
        codec.encode(record)


def test_encode_accepts_int_timestamps_and_unknown_extra_fields(codec: AvroCodec) -> None:
    record = orders(1)[0]
    record["created_at"] = 1_700_000_000_123
    framed = codec.encode(dict(record, extra="ignored"))
    decoded = codec.decode(framed)
    assert decoded["created_at"] == dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC)
    assert "extra" not in decoded


# ------------------------------------------------------------------------ registry


class FakeRegistry:
    def __init__(self, schemas: dict[int, dict[str, Any]], fail: Exception | None = None) -> None:
        self.schemas = schemas
        self.fail = fail
        self.calls: list[int] = []

    def fetch(self, schema_id: int) -> dict[str, Any]:
        self.calls.append(schema_id)
        if self.fail is not None:
            raise self.fail
        if schema_id not in self.schemas:
            raise UnknownSchemaError("not registered", detail={"schema_id": schema_id})
        return self.schemas[schema_id]


def test_registry_ids_are_fetched_once_and_resolved() -> None:
    registry = FakeRegistry({500: V1.raw})
    codec = AvroCodec(CATALOG, "orders", registry=registry)
    record = orders(1, version=1)[0]
    body = codec.encode(record, schema_id=1)[HEADER_SIZE:]
    for _ in range(3):
        assert codec.decode(frame(500, body)) == dict(record, priority=False, coupon_code=None)
    assert registry.calls == [500]


def test_registry_misses_are_remembered_for_a_while() -> None:
    now = [1000.0]
    registry = FakeRegistry({})
    codec = AvroCodec(CATALOG, "orders", registry=registry, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(UnknownSchemaError):
            codec.decode(frame(600, b"\x00"))
    assert registry.calls == [600]
    now[0] += 61
    with pytest.raises(UnknownSchemaError):
        codec.decode(frame(600, b"\x00"))
    assert registry.calls == [600, 600]


def test_registry_outage_is_transient_not_a_record_error() -> None:
    registry = FakeRegistry({}, fail=TransientError("registry down"))
    codec = AvroCodec(CATALOG, "orders", registry=registry)
    with pytest.raises(TransientError):
        codec.decode(frame(700, b"\x00"))
    with pytest.raises(TransientError):
        codec.decode_batch([frame(700, b"\x00")])


def test_registry_schema_identical_to_reader_uses_the_fast_path() -> None:
    registry = FakeRegistry({800: V2.raw})
    codec = AvroCodec(CATALOG, "orders", registry=registry)
    record = orders(1)[0]
    assert codec.decode(frame(800, codec.encode(record)[HEADER_SIZE:])) == record


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param({"schema": json.dumps(V2.raw)}, None, id="avro"),
        pytest.param({"schema": "{}", "schemaType": "PROTOBUF"}, "not an Avro schema", id="proto"),
        pytest.param({"schema": "{nope"}, "not valid JSON", id="bad-json"),
        pytest.param({"schema": "[1]"}, "not a record schema", id="list"),
        pytest.param({"nothing": 1}, "not an Avro schema", id="missing"),
        pytest.param({"schema": "[" * 100_000 + "]" * 100_000}, "too deeply", id="deep-json"),
    ],
)
def test_registry_answers_are_checked(body: dict[str, Any], error: str | None) -> None:
    if error is None:
        assert _schema_from(body, 3) == V2.raw
    else:
        with pytest.raises(UnusableSchemaError, match=error) as info:
            _schema_from(body, 3)
        assert info.value.stage == "decode"


def nested_schema(depth: int) -> dict[str, Any]:
    """A record whose one field is an array of arrays ... ``depth`` levels deep."""
    node: Any = "int"
    for _ in range(depth):
        node = {"type": "array", "items": node}
    return {"type": "record", "name": "Deep", "fields": [{"name": "f", "type": node}]}


def test_an_unusable_registry_schema_dead_letters_its_records_and_is_remembered() -> None:
    """A schema nested too deeply for the parser makes its records decode errors naming the
    id — not a RecursionError that crashes the daemon — and the registry is asked once."""
    registry = FakeRegistry({900: nested_schema(3_000)})
    codec = AvroCodec(CATALOG, "orders", registry=registry)
    for _ in range(3):
        with pytest.raises(UnusableSchemaError, match="writer schema 900 cannot be used") as info:
            codec.decode(frame(900, b"\x00"))
        assert info.value.stage == "decode" and info.value.detail == {"schema_id": 900}
    assert registry.calls == [900]


def test_a_registry_outage_is_retried_within_the_budget() -> None:
    """Transient registry failures are retried (runtime.max_retry_s), then the id decodes."""

    class Flaky(FakeRegistry):
        def fetch(self, schema_id: int) -> dict[str, Any]:
            if len(self.calls) < 2:
                self.calls.append(schema_id)
                raise TransientError("registry answered HTTP 503")
            return super().fetch(schema_id)

    registry = Flaky({500: V2.raw})
    codec = AvroCodec(CATALOG, "orders", registry=registry, registry_retry_s=5)
    record = orders(1)[0]
    assert codec.decode(frame(500, codec.encode(record)[HEADER_SIZE:])) == record
    assert registry.calls == [500, 500, 500]


def test_registry_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpSchemaRegistry("ftp://example")
    assert issubclass(FatalError, Exception)


def test_compiled_reader_handles_recursive_and_exotic_types() -> None:
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "Node",
            "fields": [
                {"name": "value", "type": {"type": "int", "logicalType": "date"}},
                {"name": "when", "type": {"type": "long", "logicalType": "timestamp-micros"}},
                {
                    "name": "local",
                    "type": {"type": "long", "logicalType": "local-timestamp-millis"},
                },
                {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
                {"name": "f", "type": {"type": "fixed", "name": "F4", "size": 4}},
                {"name": "g", "type": "F4"},
                {"name": "ratio", "type": "float"},
                {"name": "flags", "type": {"type": "map", "values": "boolean"}},
                {"name": "children", "type": {"type": "array", "items": "Node"}},
                {"name": "nothing", "type": {"type": "array", "items": "null"}},
            ],
        },
        named_schemas={},
    )
    leaf = {
        "value": dt.date(2024, 2, 29),
        "when": dt.datetime(1969, 7, 20, 20, 17, 40, 123456, tzinfo=dt.UTC),
        "local": dt.datetime(2030, 1, 1, 12, 0, 0, 1000),
        "uid": "b5c1e0a8-0c1c-4c5e-9a77-1d5b3e8e2a10",
        "f": b"abcd",
        "g": b"wxyz",
        "ratio": 0.5,
        "flags": {"x": True, "y": False},
        "children": [],
        "nothing": [None, None],
    }
    tree = dict(leaf, children=[leaf, dict(leaf, children=[leaf])])
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, tree)
    data = out.getvalue()
    decoded, end = compile_reader(schema)(data, 0)
    assert end == len(data)
    assert decoded == fastavro.schemaless_reader(io.BytesIO(data), schema, None)
    # Negative block counts (with a byte size) are valid Avro too.
    flat = fastavro.parse_schema(
        {
            "type": "record",
            "name": "A",
            "fields": [{"name": "xs", "type": {"type": "array", "items": "long"}}],
        },
        named_schemas={},
    )
    block = b"\x03\x04\x02\x04\x00"  # count -2, byte size 2, items 1 and 2, end
    decoded, _ = compile_reader(flat)(block, 0)
    assert decoded == {"xs": [1, 2]}
    assert decoded == fastavro.schemaless_reader(io.BytesIO(block), flat, None)


def test_timestamps_far_from_now_match_fastavro() -> None:
    """The fast timestamp path (fromtimestamp) and the exact one agree at the boundary."""
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "T",
            "fields": [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}],
        },
        named_schemas={},
    )
    read = compile_reader(schema)
    for ms in (0, 1, -1, 999, 2**33 * 1000 - 1, 2**33 * 1000, _MIN_MS, _MAX_MS, 1_700_000_000_001):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, {"t": ms})
        assert read(out.getvalue(), 0)[0] == fastavro.schemaless_reader(
            io.BytesIO(out.getvalue()), schema, None
        ), ms


def test_header_layout() -> None:
    assert frame(258, b"x") == b"\x00" + struct.pack(">I", 258) + b"x"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"\x00\x00", {"e": "A", "u": None}, id="first-symbol-null"),
        pytest.param(b"\x04\x02\x06", {"e": "C", "u": 3}, id="last-symbol-long"),
        pytest.param(b"\x80\x00\x00", {"e": "A", "u": None}, id="non-canonical-index"),
        pytest.param(b"\x06\x00", IndexError, id="enum-past-end"),
        pytest.param(b"\x01\x00", IndexError, id="enum-negative"),
        pytest.param(b"\x80\x01\x00", IndexError, id="enum-multibyte-past-end"),
        pytest.param(b"\x81\x01\x00", IndexError, id="enum-multibyte-negative"),
        pytest.param(b"\x00\x04", IndexError, id="union-past-end"),
        pytest.param(b"\x00\x01", IndexError, id="union-negative"),
        pytest.param(
            b"\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", ValueError, id="long-varint"
        ),
    ],
)
def test_compiled_reader_indexes(data: bytes, expected: Any) -> None:
    """Enum and union indexes: valid ones as fastavro reads them, bad ones refused."""
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "X",
            "fields": [
                {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
                {"name": "u", "type": ["null", "long"]},
            ],
        },
        named_schemas={},
    )
    read = compile_reader(schema)
    if isinstance(expected, dict):
        assert read(data, 0) == (expected, len(data))
        assert fastavro.schemaless_reader(io.BytesIO(data), schema, None) == expected
    else:
        with pytest.raises(ReadFailure) as info:
            read(data, 0)
        assert isinstance(info.value.cause, expected)


def test_decimals_as_float_give_the_nearest_double() -> None:
    """The pipeline's mode: each decimal becomes float(Decimal) exactly, nothing else changes."""
    import itertools
    import math

    from ingest.dev.samples import sample_orders

    catalog = CATALOG
    exact = AvroCodec(catalog, "orders")
    floats = AvroCodec(catalog, "orders", decimals_as_float=True)
    for order in itertools.islice(sample_orders(3), 300):
        value = exact.encode(order)
        want, got = exact.decode(value), floats.decode(value)
        assert isinstance(got["total_amount"], float)
        assert got["total_amount"] == float(want["total_amount"])
        assert math.isfinite(got["total_amount"])
        assert {k: v for k, v in got.items() if k != "total_amount"} == {
            k: v for k, v in want.items() if k != "total_amount"
        }
