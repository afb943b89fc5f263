"""The native transcoder against the Python path it accelerates.

Properties, on generated schemas and records:

- agreement: for every valid record both paths give the same id, version and document;
- refusal: whatever bytes it is given, the transcoder accepts nothing the Python path
  refuses (a refusal sends the record down the Python path, which names the problem);
- malformed numbers: an ``int`` beyond 32 bits or a ``long`` beyond 64 bits, written where
  the schema has one, is refused by both paths;
- hostile blocks: array and map block counts that are negative, INT64_MIN, huge, or add up
  to more items than a record may hold are refused by both paths (or taken by both alike).

Plus the edges by name: UTF-8, floats, time ranges, big decimals, duplicate map keys,
and which streams get the fast path at all.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import math
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from fastavro import _write_py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.check import RecordChecker
from ingest.avro.codec import AvroCodec, frame
from ingest.avro.reader import MAX_ITEMS_PER_RECORD, ReadFailure, compile_reader
from ingest.avro.transcode import Unsupported, compile_program, fast_path_for, native_available
from ingest.dev.samples import sample_orders
from ingest.errors import RecordError
from ingest.pipeline.transform import Transformer
from ingest.settings import StreamSettings
from ingest.types import RawRecord

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CATALOG = SchemaCatalog.load(SCHEMAS)
SCHEMA_ID = 7
HEADER = frame(SCHEMA_ID, b"")
_MIN_MS = -62_135_596_800_000  # 0001-01-01
_MAX_MS = 253_402_300_799_999  # 9999-12-31 23:59:59.999
_EPOCH_DATE = dt.date(1970, 1, 1)


def test_the_extension_is_built() -> None:
    """Installs on this project's machines have a C compiler: the fast path must exist."""
    assert native_available()


def stream(id_field: str | None = "id", version_field: str | None = "v") -> StreamSettings:
    return StreamSettings(
        name="s",
        topic="t",
        subject="orders",
        alias="a",
        id_field=id_field,
        version_field=version_field,
    )


class Paths:
    """The two paths for one writer schema and one stream's id/version settings."""

    def __init__(self, schema: dict[str, Any], settings: StreamSettings) -> None:
        from ingest.avro._transcode import Transcoder

        parsed = fastavro.parse_schema(schema, named_schemas={})
        self.parsed = parsed
        self.read = compile_reader(parsed, decimals_as_float=True)
        self.transformer = Transformer(settings)
        names = [f["name"] for f in parsed["fields"]]

        def index(name: str | None) -> int:
            return names.index(name) if name in names else -1

        self.native = Transcoder(
            compile_program(parsed),
            HEADER,
            index(settings.id_field),
            index(settings.version_field),
            max_items=MAX_ITEMS_PER_RECORD,
            max_document_bytes=settings.max_document_bytes,
        )

    def encode(self, record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self.parsed, record)
        return HEADER + out.getvalue()

    def encode_unchecked(self, record: dict[str, Any]) -> bytes:
        """``record`` as fastavro's pure-Python writer writes it: ints of any size as the
        varints they make, so out-of-range numbers reach the readers."""
        out = io.BytesIO()
        _write_py.schemaless_writer(out, self.parsed, record)
        return HEADER + out.getvalue()

    def slow(self, value: bytes, key: bytes | None, offset: int) -> tuple[str, int, Any]:
        """The Python path; raises RecordError (or a reader failure) for a bad record."""
        doc, end = self.read(value, len(HEADER))
        if end != len(value):
            raise RecordError("trailing bytes")
        action = self.transformer.to_action(doc, RawRecord("t", 0, offset, key, value))
        assert action is not None and action.body is not None
        return action.doc_id, action.version, orjson.loads(action.body)

    def fast(self, value: bytes, key: bytes | None, offset: int) -> tuple[str, int, Any] | None:
        parts = self.native.transcode(value, key, offset)
        if parts is None:
            return None
        return parts[0], parts[1], orjson.loads(parts[2])


# --------------------------------------------------------------- schema generation

_names = itertools.count()


def _name(stem: str) -> str:
    return f"{stem}{next(_names)}"


def _leaf_types() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(["null", "boolean", "int", "long", "float", "double", "string", "bytes"]),
        st.sampled_from(
            [
                {"type": "long", "logicalType": "timestamp-millis"},
                {"type": "long", "logicalType": "timestamp-micros"},
                {"type": "long", "logicalType": "local-timestamp-millis"},
                {"type": "long", "logicalType": "local-timestamp-micros"},
                {"type": "int", "logicalType": "date"},
                {"type": "string", "logicalType": "no-such-type"},
            ]
        ),
        st.integers(1, 15).flatmap(
            lambda precision: st.integers(0, precision).map(
                lambda scale: {
                    "type": "bytes",
                    "logicalType": "decimal",
                    "precision": precision,
                    "scale": scale,
                }
            )
        ),
        st.integers(0, 6).map(lambda size: {"type": "fixed", "name": _name("F"), "size": size}),
        st.lists(st.sampled_from(["A", "B", "C_d", "e9"]), min_size=1, max_size=4, unique=True).map(
            lambda symbols: {"type": "enum", "name": _name("E"), "symbols": symbols}
        ),
    )


def _types(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return _leaf_types()
    inner = _types(depth - 1)
    return st.one_of(
        _leaf_types(),
        inner.map(lambda t: {"type": "array", "items": t}),
        inner.map(lambda t: {"type": "map", "values": t}),
        inner.filter(lambda t: t != "null").map(lambda t: ["null", t]),
        st.lists(inner, min_size=0, max_size=3).map(
            lambda ts: {
                "type": "record",
                "name": _name("R"),
                "fields": [{"name": f"f{i}", "type": t} for i, t in enumerate(ts)],
            }
        ),
    )


_ID_TYPES = ["string", "long", "int", ["null", "string"]]
_VERSION_TYPES = [
    "long",
    {"type": "long", "logicalType": "timestamp-millis"},
    {"type": "long", "logicalType": "timestamp-micros"},
    {"type": "int", "logicalType": "date"},
    ["null", "long"],
]


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, Any], StreamSettings]:
    """A top-level record schema with an id and a version field, and the stream's settings."""
    fields = [
        {"name": f"x{i}", "type": t}
        for i, t in enumerate(draw(st.lists(_types(2), min_size=0, max_size=5)))
    ]
    for name, types in (("id", _ID_TYPES), ("v", _VERSION_TYPES)):
        field = {"name": name, "type": draw(st.sampled_from(types))}
        fields.insert(draw(st.integers(0, len(fields))), field)
    schema = {"type": "record", "name": _name("Top"), "fields": fields}
    settings = stream(
        id_field=draw(st.sampled_from(["id", None])),
        version_field=draw(st.sampled_from(["v", None])),
    )
    return schema, settings


_FLOATS = st.one_of(
    st.floats(),  # NaN and infinities included: both paths write null
    st.sampled_from([0.0, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 0.1, 12.99, 1e15]),
)


#: Numbers beyond what an Avro int / long holds (fastavro's Python writer still writes them).
_BEYOND: dict[str, st.SearchStrategy[int]] = {
    "int": st.one_of(
        st.integers(2**31, 2**63 - 1),
        st.integers(-(2**63), -(2**31) - 1),
        st.sampled_from([2**31, -(2**31) - 1, 2**32, 2**63 - 1, -(2**63)]),
    ),
    "long": st.one_of(
        st.integers(2**63, 2**80),
        st.integers(-(2**80), -(2**63) - 1),
        st.sampled_from([2**63, -(2**63) - 1, 2**64, 2**64 - 1]),
    ),
}


def values(schema: Any, named: dict[str, Any], *, beyond: bool = False) -> st.SearchStrategy[Any]:
    """Values fastavro can write for ``schema`` (raw JSON form); with ``beyond``, ints and
    longs outside their range too (except in unions, where the writer would pick no branch).
    """
    if isinstance(schema, list):
        return st.one_of([values(b, named) for b in schema])
    if isinstance(schema, str):
        if schema in named:
            return values(named[schema], named, beyond=beyond)
        schema = {"type": schema}
    kind, logical = schema["type"], schema.get("logicalType")
    if logical in ("timestamp-millis", "local-timestamp-millis"):
        return st.integers(_MIN_MS, _MAX_MS)
    if logical in ("timestamp-micros", "local-timestamp-micros"):
        return st.integers(_MIN_MS * 1000, _MAX_MS * 1000 + 999)
    if logical == "date":
        return st.dates()
    if logical == "decimal":
        scale, precision = schema["scale"], schema["precision"]
        return st.integers(-(10**precision) + 1, 10**precision - 1).map(
            lambda n: Decimal(n).scaleb(-scale)
        )
    simple: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32),
        "double": _FLOATS,
        "string": st.text(max_size=10),
        "bytes": st.binary(max_size=10),
    }
    if kind in simple:
        if beyond and kind in _BEYOND:
            return st.one_of(simple[kind], _BEYOND[kind])
        return simple[kind]
    if kind == "fixed":
        named[schema["name"]] = schema
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "enum":
        named[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(values(schema["items"], named, beyond=beyond), max_size=3)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=5), values(schema["values"], named, beyond=beyond), max_size=3
        )
    assert kind == "record", kind
    named[schema["name"]] = schema
    return st.fixed_dictionaries(
        {f["name"]: values(f["type"], named, beyond=beyond) for f in schema["fields"]}
    )


@st.composite
def encoded(draw: st.DrawFn) -> tuple[Paths, bytes, bytes | None, int]:
    schema, settings = draw(cases())
    paths = Paths(schema, settings)
    record = draw(values(schema, {}))
    key = draw(st.one_of(st.none(), st.binary(max_size=6), st.text(max_size=6).map(str.encode)))
    return paths, paths.encode(record), key, draw(st.integers(0, 2**62))


# ----------------------------------------------------------------------- properties

#: Examples per property. ``make sanitize`` asks for fewer (``TRANSCODE_EXAMPLES``): there
#: every allocation goes through AddressSanitizer, several times slower.
EXAMPLES = int(os.environ.get("TRANSCODE_EXAMPLES", "400"))
PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY
@given(case=encoded())
def test_both_paths_agree_on_every_valid_record(
    case: tuple[Paths, bytes, bytes | None, int],
) -> None:
    paths, value, key, offset = case
    try:
        expected = paths.slow(value, key, offset)
    except RecordError:
        # Only the id and version can make a written record unusable (empty id, no key,
        # a null version, ...): the transcoder must refuse it too.
        assert paths.fast(value, key, offset) is None
        return
    got = paths.fast(value, key, offset)
    assert got is not None, "the transcoder refused a record the Python path takes"
    assert got[:2] == expected[:2]
    assert got[2] == expected[2]  # NaN never occurs: both write null


#: Damage to a valid value: byte flips, a cut, bytes appended (see :func:`mutate`).
MUTATIONS: dict[str, st.SearchStrategy[Any]] = {
    "flips": st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=3),
    "cut": st.integers(0, 10_000),
    "extra": st.binary(max_size=3),
}


def mutate(value: bytes, flips: list[tuple[int, int]], cut: int, extra: bytes) -> bytes:
    """``value`` with its Avro body (not its 5-byte header) flipped, cut and extended."""
    body = bytearray(value[5:])
    for at, mask in flips:
        if body:
            body[at % len(body)] ^= mask
    return value[:5] + bytes(body[: cut % (len(body) + 1)]) + extra


@PROPERTY
@given(case=encoded(), **MUTATIONS)
def test_the_transcoder_accepts_nothing_the_python_path_refuses(
    case: tuple[Paths, bytes, bytes | None, int],
    flips: list[tuple[int, int]],
    cut: int,
    extra: bytes,
) -> None:
    paths, value, key, offset = case
    mutated = mutate(value, flips, cut, extra)
    got = paths.fast(mutated, key, offset)
    if got is None:
        return
    try:
        expected = paths.slow(mutated, key, offset)
    except Exception as exc:  # any refusal at all is the point
        pytest.fail(f"the transcoder took bytes the Python path refuses: {exc!r}")
    assert got[:2] == expected[:2]
    assert got[2] == expected[2]


@st.composite
def encoded_beyond(
    draw: st.DrawFn,
) -> tuple[Paths, dict[str, Any], bytes, bytes | None, int]:
    """Like :func:`encoded`, but ints and longs may lie beyond their Avro type's range."""
    schema, settings = draw(cases())
    paths = Paths(schema, settings)
    record = draw(values(schema, {}, beyond=True))
    key = draw(st.one_of(st.none(), st.binary(max_size=6)))
    return paths, record, paths.encode_unchecked(record), key, draw(st.integers(0, 2**62))


@PROPERTY
@given(case=encoded_beyond())
def test_ints_beyond_32_bits_and_longs_beyond_64_are_refused_by_both_paths(
    case: tuple[Paths, dict[str, Any], bytes, bytes | None, int],
) -> None:
    """A zigzag varint can carry more than its type holds: that is malformed Avro, refused
    while decoding (naming the field), never a number for the index to refuse later."""
    paths, record, value, key, offset = case
    beyond = [
        path
        for path, why in RecordChecker(paths.parsed).problems(record)
        if why.startswith("out of range")
    ]
    got = paths.fast(value, key, offset)
    try:
        expected = paths.slow(value, key, offset)
    except ReadFailure as exc:
        assert got is None, "the transcoder took a record the Python reader refuses"
        assert beyond, f"a valid record failed to decode: {exc}"
        assert "32-bit range" in str(exc) or "64 bits" in str(exc) or "10 bytes" in str(exc)
        return
    except RecordError:  # an unusable id or version, as in the agreement property
        assert got is None and not beyond
        return
    assert not beyond, f"the Python path took numbers beyond their type at {beyond}"
    assert got is not None and got[:2] == expected[:2] and got[2] == expected[2]


#: Zero-size items cost no input bytes: only the per-record budget bounds their number.
_ITEM_TYPES: dict[str, Any] = {
    "null": "null",
    "empty record": {"type": "record", "name": "Empty", "fields": []},
    "empty fixed": {"type": "fixed", "name": "Nothing", "size": 0},
    "long": "long",
}
_BLOCK_COUNTS = st.one_of(
    st.integers(1, 4),
    st.sampled_from(
        [
            MAX_ITEMS_PER_RECORD // 2,
            MAX_ITEMS_PER_RECORD - 1,
            MAX_ITEMS_PER_RECORD,
            MAX_ITEMS_PER_RECORD + 1,
            2**62,
            2**63 - 1,
        ]
    ),
)
#: A block: (count, written negative with a byte size, or None for a raw INT64_MIN count).
_BLOCKS = st.lists(
    st.one_of(st.tuples(_BLOCK_COUNTS, st.booleans()), st.just((None, True))), max_size=4
)


def blocks_body(item: str, blocks: list[tuple[int | None, bool]]) -> tuple[bytes, int | None]:
    """The Avro array made of ``blocks`` and its total count (None if one is INT64_MIN).

    Long items are written as 0, 1, 2, ... for at most 4 of them: a larger count runs out
    of bytes, which both paths must refuse anyway.
    """
    body = bytearray()
    total: int | None = 0
    for count, negative in blocks:
        items = b"" if item != "long" or count is None else bytes(range(0, 2 * min(count, 4), 2))
        if count is None:
            body += zigzag(-(2**63)) + zigzag(len(items))
            total = None
        else:
            body += zigzag(-count) + zigzag(len(items)) if negative else zigzag(count)
            total = None if total is None else total + count
        body += items
    return bytes(body + zigzag(0)), total


@settings(PROPERTY, max_examples=max(20, EXAMPLES * 3 // 10))
@given(item=st.sampled_from(sorted(_ITEM_TYPES)), blocks=_BLOCKS)
def test_hostile_block_counts_are_refused_by_both_paths(
    item: str, blocks: list[tuple[int | None, bool]]
) -> None:
    """Negative counts (with their byte size), INT64_MIN (whose negation C cannot
    represent), counts beyond the input, and blocks adding up to more items than a record
    may hold: the transcoder accepts exactly what the Python path accepts."""
    paths = one_field({"type": "array", "items": _ITEM_TYPES[item]})
    avro, total = blocks_body(item, blocks)
    fast, slow = raw(paths, avro)
    if total is None or total > MAX_ITEMS_PER_RECORD:
        assert fast is None, "the transcoder took a record over the item budget"
        assert isinstance(slow, Exception)
    elif isinstance(slow, Exception):
        assert fast is None
    else:
        assert fast is not None and fast[:2] == slow[:2] and fast[2] == slow[2]


def test_sample_orders_give_byte_identical_documents() -> None:
    codec = AvroCodec(CATALOG, "orders", decimals_as_float=True)
    writer = AvroCodec(CATALOG, "orders")
    settings = stream("order_id", "updated_at")
    choice = fast_path_for(codec, settings)
    assert choice.transcode is not None, choice.reason
    transformer = Transformer(settings)
    for offset, order in enumerate(itertools.islice(sample_orders(5), 3000)):
        value = writer.encode(order)
        key = order["order_id"].encode()
        action = transformer.to_action(codec.decode(value), RawRecord("t", 0, offset, key, value))
        assert action is not None
        assert choice.transcode(value, key, offset) == (action.doc_id, action.version, action.body)


# --------------------------------------------------------------------- named edges


def one_field(kind: Any, settings: StreamSettings | None = None) -> Paths:
    schema = {"type": "record", "name": "One", "fields": [{"name": "x", "type": kind}]}
    return Paths(schema, settings or stream(None, None))


def raw(paths: Paths, avro: bytes, key: bytes | None = b"k") -> tuple[Any, Any]:
    """(fast result, slow result or the exception it raised) for hand-written Avro."""
    value = HEADER + avro
    try:
        slow: Any = paths.slow(value, key, 3)
    except Exception as exc:
        slow = exc
    return paths.fast(value, key, 3), slow


def zigzag(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    return bytes(out) + bytes([z])


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xc0\x80", id="overlong"),
        pytest.param(b"\xed\xa0\x80", id="surrogate"),
        pytest.param(b"\xf4\x90\x80\x80", id="beyond-U+10FFFF"),
        pytest.param(b"\xe2\x82", id="truncated"),
        pytest.param(b"\x80", id="lone-continuation"),
        pytest.param(b"ok\xff", id="invalid-byte"),
    ],
)
def test_invalid_utf8_takes_the_python_path_which_refuses_it(data: bytes) -> None:
    fast, slow = raw(one_field("string"), zigzag(len(data)) + data)
    assert fast is None
    assert isinstance(slow, Exception)


def test_strings_escape_like_orjson() -> None:
    text = 'q"b\\s/\n\r\t\b\f\x00\x1f\x7f é 漢 😀 \u2028'
    data = text.encode()
    paths = one_field("string")
    parts = paths.native.transcode(HEADER + zigzag(len(data)) + data, b"k", 0)
    assert parts is not None
    assert parts[2] == orjson.dumps({"x": text})


@pytest.mark.parametrize(
    "number",
    [
        0.0,
        -0.0,
        1.0,
        -2.5,
        0.1,
        12.99,
        1e15,
        1e16,
        123456789012345.6,
        1e-7,
        5e-324,
        2.2e-308,
        1.7976931348623157e308,
        math.pi,
        -1 / 3,
        math.nan,
        math.inf,
        -math.inf,
    ],
)
def test_doubles_parse_back_to_the_same_value(number: float) -> None:
    paths = one_field("double")
    out = io.BytesIO()
    fastavro.schemaless_writer(out, paths.parsed, {"x": number})
    parts = paths.native.transcode(HEADER + out.getvalue(), b"k", 0)
    assert parts is not None
    got = orjson.loads(parts[2])["x"]
    if math.isfinite(number):
        assert got == number and math.copysign(1, got) == math.copysign(1, number)
    else:
        assert got is None  # as orjson writes non-finite numbers


@pytest.mark.parametrize(
    ("ms", "accepted"),
    [
        (_MIN_MS, True),
        (_MAX_MS, True),
        (0, True),
        (-1, True),
        (_MIN_MS - 1, False),
        (_MAX_MS + 1, False),
        (2**33 * 1000, True),
    ],
)
def test_timestamp_range_is_pythons(ms: int, accepted: bool) -> None:
    fast, slow = raw(one_field({"type": "long", "logicalType": "timestamp-millis"}), zigzag(ms))
    assert (fast is not None) == accepted
    if accepted:
        assert fast == slow
    else:
        assert isinstance(slow, Exception)


@pytest.mark.parametrize(
    ("micros", "version"), [(-1, -1), (-999, -1), (-1000, -1), (-1001, -2), (1999, 1)]
)
def test_micros_versions_floor_to_milliseconds(micros: int, version: int) -> None:
    settings = stream(None, "x")
    fast, slow = raw(
        one_field({"type": "long", "logicalType": "timestamp-micros"}, settings), zigzag(micros)
    )
    assert fast is not None and fast == slow
    assert fast[1] == version


def test_decimals_beyond_two_to_the_53_take_the_python_path() -> None:
    paths = one_field({"type": "bytes", "logicalType": "decimal", "precision": 30, "scale": 4})
    for unscaled in (2**53, -(2**53) - 1, 10**25 + 7):
        data = unscaled.to_bytes(12, "big", signed=True)
        fast, slow = raw(paths, zigzag(len(data)) + data)
        assert fast is None
        assert slow[2] == {"x": unscaled / 10**4}
    for unscaled in (2**53 + 1, -(2**53) - 1):  # seven bytes, but not exact as a double
        data = unscaled.to_bytes(7, "big", signed=True)
        fast, slow = raw(paths, zigzag(7) + data)
        assert fast is None and slow[2] == {"x": unscaled / 10**4}
    for unscaled in (2**53, -(2**53), 2**53 - 1, 1, 0, -1):
        data = unscaled.to_bytes(7, "big", signed=True)
        fast, slow = raw(paths, zigzag(7) + data)
        assert fast is not None and fast == slow


def test_duplicate_map_keys_take_the_python_path() -> None:
    """A dict keeps the last value once; JSON text would hold the key twice."""
    paths = one_field({"type": "map", "values": "long"})
    entry = zigzag(1) + b"a" + zigzag(5)
    fast, slow = raw(paths, zigzag(2) + entry + zigzag(1) + b"a" + zigzag(6) + zigzag(0))
    assert fast is None and slow[2] == {"x": {"a": 6}}
    many = b"".join(zigzag(2) + f"{i:02d}".encode() + zigzag(i) for i in range(40))
    fast, slow = raw(paths, zigzag(40) + many + zigzag(0))
    assert fast is not None and fast == slow
    dup = many + zigzag(2) + b"07" + zigzag(1)
    fast, slow = raw(paths, zigzag(41) + dup + zigzag(0))
    assert fast is None and slow[2]["x"]["07"] == 1


def test_varints_beyond_64_bits_are_refused_by_both_paths() -> None:
    fast, slow = raw(one_field("long"), b"\xff" * 9 + b"\x7f")
    assert fast is None
    assert isinstance(slow, ReadFailure) and "beyond 64 bits" in str(slow)
    fast, slow = raw(one_field("long"), zigzag(-(2**63)))
    assert fast == slow and fast is not None and fast[2] == {"x": -(2**63)}


def test_ids_come_from_the_key_when_there_is_no_id_field() -> None:
    paths = one_field("long")
    assert raw(paths, zigzag(1), key="ключ".encode())[0][0] == "ключ"
    for key in (None, b"\xff"):
        fast, slow = raw(paths, zigzag(1), key=key)
        assert fast is None and isinstance(slow, RecordError)


def test_other_writer_ids_and_trailing_bytes_take_the_python_path() -> None:
    paths = one_field("long")
    assert paths.native.transcode(frame(SCHEMA_ID + 1, zigzag(1)), b"k", 0) is None
    assert paths.native.transcode(HEADER + zigzag(1) + b"\x00", b"k", 0) is None
    assert paths.native.transcode(b"\x00\x00", b"k", 0) is None


# ------------------------------------------------------------------ who gets it


def test_streams_with_a_hook_or_exotic_types_keep_the_python_path() -> None:
    codec = AvroCodec(CATALOG, "orders", decimals_as_float=True)
    orders = stream("order_id", "updated_at")
    assert fast_path_for(codec, orders).reason == "native"
    hooked = orders.model_copy(update={"transform": "json:dumps"})
    assert "hook" in fast_path_for(codec, hooked).reason
    assert "Decimal" in fast_path_for(AvroCodec(CATALOG, "orders"), orders).reason
    by_amount = orders.model_copy(update={"id_field": "total_amount"})
    assert "id_field 'total_amount'" in fast_path_for(codec, by_amount).reason
    by_status = orders.model_copy(update={"version_field": "status"})
    assert "version_field 'status'" in fast_path_for(codec, by_status).reason
    missing = orders.model_copy(update={"id_field": "nope"})
    assert "not a field" in fast_path_for(codec, missing).reason


@pytest.mark.parametrize(
    "kind",
    [
        {"type": "string", "logicalType": "uuid"},
        {"type": "int", "logicalType": "time-millis"},
        {"type": "long", "logicalType": "time-micros"},
        {
            "type": "fixed",
            "name": "D",
            "size": 8,
            "logicalType": "decimal",
            "precision": 10,
            "scale": 2,
        },
    ],
)
def test_types_rendered_differently_are_unsupported(kind: dict[str, Any]) -> None:
    schema = {"type": "record", "name": "U", "fields": [{"name": "x", "type": kind}]}
    with pytest.raises(Unsupported):
        compile_program(fastavro.parse_schema(schema, named_schemas={}))


def test_recursive_types_are_unsupported() -> None:
    schema = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "next", "type": ["null", "Node"]}],
    }
    with pytest.raises(Unsupported, match="recursive"):
        compile_program(fastavro.parse_schema(schema, named_schemas={}))
