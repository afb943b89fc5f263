"""The fast path for records written with an older schema version.

The codec reads an older writer's record as the reader's by appending the fields the
reader added, with their defaults (``ingest.avro.codec.plain_evolution``). The transcoder does the
same for those writer ids: it transcodes the writer's fields and ends the document with the
defaults. These tests check, as for the reader's own records, that both paths give the same
documents, and that each older writer the transcoder cannot serve is named with a reason.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.avro.catalog import SchemaCatalog, SchemaVersion, parse_avro
from ingest.avro.codec import AvroCodec, frame
from ingest.avro.transcode import fast_path_for
from ingest.dev.samples import sample_orders
from ingest.errors import RecordError
from ingest.pipeline.transform import Transformer
from ingest.settings import StreamSettings
from ingest.types import RawRecord
from tests.unit.test_transcode import MUTATIONS, PROPERTY, cases, mutate, stream, values

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
ORDERS = SchemaCatalog.load(SCHEMAS)

#: Plain defaults of each kind the codec appends as they are (see ingest.avro.codec._plain_default).
_ADDED = [
    ("null", None),
    ("boolean", False),
    ("boolean", True),
    ("int", -7),
    ("long", 2**62),
    ("float", 0),
    ("double", 1.5),
    ("double", -0.0),
    ("string", ""),
    ("string", 'é "quoted" \\ \n'),
    (["null", "string"], None),
    (["string", "null"], "x"),
    ({"type": "array", "items": "long"}, []),
    ({"type": "map", "values": "string"}, {}),
    ({"type": "enum", "name": "Added", "symbols": ["A", "B"]}, "B"),
]


def catalog_of(*schemas: dict[str, Any], subject: str = "s") -> SchemaCatalog:
    """A catalog holding ``schemas`` as versions 1, 2, ... of ``subject`` (ids 11, 12, ...)."""
    versions = []
    for n, raw in enumerate(schemas, start=1):
        parsed, fingerprint = parse_avro(raw, source=f"v{n}")
        versions.append(SchemaVersion(subject, n, 10 + n, parsed, raw, fingerprint))
    return SchemaCatalog(versions)


def python_path(
    codec: AvroCodec, settings: StreamSettings, value: bytes, key: bytes | None, offset: int
) -> tuple[str, int, bytes]:
    action = Transformer(settings).to_action(
        codec.decode(value), RawRecord("t", 0, offset, key, value)
    )
    assert action is not None and action.body is not None
    return action.doc_id, action.version, action.body


def older_orders(
    writer: SchemaVersion, *, seed: int, n: int, legacy: bool = False
) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Sample orders without v2's fields (plus a ``legacy`` list), framed as ``writer``."""
    for i, v2_order in enumerate(itertools.islice(sample_orders(seed), n)):
        order = {k: v for k, v in v2_order.items() if k not in ("priority", "coupon_code")}
        if legacy:
            order["legacy"] = [None, "x" * (i % 7)][: i % 3]
        out = io.BytesIO()
        fastavro.schemaless_writer(out, writer.schema, order)
        yield order, frame(writer.schema_id, out.getvalue())


def test_v1_sample_orders_are_on_the_fast_path_with_v2s_defaults() -> None:
    codec = AvroCodec(ORDERS, "orders", decimals_as_float=True)
    settings = stream("order_id", "updated_at")
    choice = fast_path_for(codec, settings)
    assert choice.transcode is not None and choice.slow_writers == ()
    v1 = ORDERS.versions("orders")[0]
    for offset, (order, value) in enumerate(older_orders(v1, seed=9, n=2000)):
        key = order["order_id"].encode()
        got = choice.transcode(value, key, offset)
        assert got is not None, "a valid v1 record took the Python path"
        assert got == python_path(codec, settings, value, key, offset)
        assert got[2].endswith(b',"priority":false,"coupon_code":null}')


@pytest.mark.parametrize("at", [0, 5, 13])
def test_a_field_the_reader_dropped_is_read_but_not_written(at: int) -> None:
    v1, v2 = ORDERS.versions("orders")
    legacy = {"name": "legacy", "type": {"type": "array", "items": ["null", "string"]}}
    fields = list(v1.raw["fields"])
    fields.insert(at, legacy)
    catalog = catalog_of(dict(v1.raw, fields=fields), v2.raw, subject="orders")
    codec = AvroCodec(catalog, "orders", decimals_as_float=True)
    settings = stream("order_id", "updated_at")
    choice = fast_path_for(codec, settings)
    assert choice.transcode is not None and choice.slow_writers == ()
    writer = catalog.versions("orders")[0]
    for offset, (_, value) in enumerate(older_orders(writer, seed=4, n=300, legacy=True)):
        got = choice.transcode(value, b"k", offset)
        assert got is not None, "a valid record took the Python path"
        assert got == python_path(codec, settings, value, b"k", offset)
        assert b"legacy" not in got[2]
    assert choice.transcode(frame(writer.schema_id, b"\x02\x02\xff"), b"k", 0) is None


@st.composite
def evolutions(draw: st.DrawFn) -> tuple[SchemaCatalog, StreamSettings, bytes, bytes | None, int]:
    """A writer schema, a reader that drops some of its fields and appends others with plain
    defaults, and one record."""
    writer, settings = draw(cases())
    added = draw(st.lists(st.sampled_from(_ADDED), max_size=4))
    droppable = [f["name"] for f in writer["fields"] if f["name"] not in ("id", "v")]
    dropped = draw(st.sets(st.sampled_from(droppable))) if droppable else set()
    reader = dict(writer, fields=[f for f in writer["fields"] if f["name"] not in dropped])
    for n, (kind, default) in enumerate(added):
        is_enum = isinstance(kind, dict) and kind["type"] == "enum"
        named = dict(kind, name=f"Added{n}") if is_enum else kind
        reader["fields"].append({"name": f"added{n}", "type": named, "default": default})
    catalog = catalog_of(writer, reader, subject="orders")
    record = draw(values(writer, {}))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(writer, named_schemas={}), record)
    key = draw(st.one_of(st.none(), st.binary(max_size=6)))
    return catalog, settings, frame(11, out.getvalue()), key, draw(st.integers(0, 2**62))


@PROPERTY
@given(case=evolutions())
def test_both_paths_agree_on_an_older_writers_records(
    case: tuple[SchemaCatalog, StreamSettings, bytes, bytes | None, int],
) -> None:
    catalog, settings, value, key, offset = case
    codec = AvroCodec(catalog, "orders", decimals_as_float=True)
    choice = fast_path_for(codec, settings)
    assert choice.transcode is not None, choice.reason
    assert choice.slow_writers == ()
    got = choice.transcode(value, key, offset)
    try:
        expected = python_path(codec, settings, value, key, offset)
    except RecordError:
        assert got is None  # e.g. an empty id: only the Python path names it
        return
    assert got is not None
    assert got[:2] == expected[:2]
    assert orjson.loads(got[2]) == orjson.loads(expected[2])
    assert list(orjson.loads(got[2])) == list(orjson.loads(expected[2])), "field order"


@PROPERTY
@given(case=evolutions(), **MUTATIONS)
def test_it_accepts_nothing_the_python_path_refuses_from_an_older_writer(
    case: tuple[SchemaCatalog, StreamSettings, bytes, bytes | None, int],
    flips: list[tuple[int, int]],
    cut: int,
    extra: bytes,
) -> None:
    catalog, settings, value, key, offset = case
    codec = AvroCodec(catalog, "orders", decimals_as_float=True)
    transcode = fast_path_for(codec, settings).transcode
    assert transcode is not None
    mutated = mutate(value, flips, cut, extra)
    got = transcode(mutated, key, offset)
    if got is None:
        return
    try:
        expected = python_path(codec, settings, mutated, key, offset)
    except Exception as exc:  # any refusal at all is the point
        pytest.fail(f"the transcoder took bytes the Python path refuses: {exc!r}")
    assert got[:2] == expected[:2]
    assert orjson.loads(got[2]) == orjson.loads(expected[2])


def _changed(fields: list[dict[str, Any]], name: str, new: dict[str, Any] | None) -> list[Any]:
    """``fields`` with field ``name`` replaced by ``new`` (dropped for None)."""
    return [new if f["name"] == name else f for f in fields if f["name"] != name or new]


@pytest.mark.parametrize(
    ("writer_fields", "id_field", "why"),
    [
        (
            lambda fs: _changed(fs, "channel", {"name": "channel", "type": ["null", "string"]}),
            "order_id",
            "full resolution",
        ),
        # an id the writer does not have would be the same default for every record
        (lambda fs: fs, "coupon_code", "id_field 'coupon_code' is not a field"),
    ],
)
def test_older_writers_it_cannot_serve_are_named(
    writer_fields: Any, id_field: str, why: str
) -> None:
    v1, v2 = ORDERS.versions("orders")
    catalog = catalog_of(
        dict(v1.raw, fields=writer_fields(v1.raw["fields"])), v2.raw, subject="orders"
    )
    codec = AvroCodec(catalog, "orders", decimals_as_float=True)
    choice = fast_path_for(codec, stream(id_field, "updated_at"))
    assert choice.transcode is not None, "the reader's own records stay on the fast path"
    assert len(choice.slow_writers) == 1
    assert choice.slow_writers[0].startswith("schema id 11 (v1): ")
    assert why in choice.slow_writers[0]
    assert choice.transcode(frame(11, b"\x00" * 40), b"k", 0) is None


def test_values_framed_with_an_unknown_id_take_the_python_path() -> None:
    codec = AvroCodec(ORDERS, "orders", decimals_as_float=True)
    settings = stream("order_id", "updated_at")
    transcode = fast_path_for(codec, settings).transcode
    assert transcode is not None
    order = next(sample_orders(1))
    value = AvroCodec(ORDERS, "orders").encode(order)
    assert transcode(value, b"k", 0) is not None
    assert transcode(frame(99, value[5:]), b"k", 0) is None


@pytest.mark.parametrize("added", [[], _ADDED[:1], _ADDED[3:6]])
def test_a_writer_with_no_fields_gets_just_the_defaults(added: list[tuple[Any, Any]]) -> None:
    writer = {"type": "record", "name": "E", "fields": []}
    reader = dict(
        writer,
        fields=[{"name": f"a{n}", "type": t, "default": d} for n, (t, d) in enumerate(added)],
    )
    codec = AvroCodec(catalog_of(writer, reader), "s", decimals_as_float=True)
    settings = stream(None, None)
    transcode = fast_path_for(codec, settings).transcode
    assert transcode is not None
    value = frame(11, b"")
    assert transcode(value, b"k", 4) == python_path(codec, settings, value, b"k", 4)


def test_a_writer_whose_fields_are_all_dropped_takes_the_python_path() -> None:
    writer = {"type": "record", "name": "E", "fields": [{"name": "gone", "type": "long"}]}
    reader = {"type": "record", "name": "E", "fields": []}
    codec = AvroCodec(catalog_of(writer, reader), "s", decimals_as_float=True)
    choice = fast_path_for(codec, stream(None, None))
    assert choice.transcode is not None
    assert choice.slow_writers == ("schema id 11 (v1): the reader schema drops all of its fields",)
    assert choice.transcode(frame(11, b"\x02"), b"k", 0) is None
