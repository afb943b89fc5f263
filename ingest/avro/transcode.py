"""The pipeline's fast path: a framed Avro value straight to the index action's parts, in C.

The Python path decodes a record into a dict (:mod:`ingest.avro.reader`), then
:mod:`ingest.pipeline.transform` derives the id and version and serialises the dict with
orjson: about 15 µs a record, most of it building Python objects only to take them apart
again. The native transcoder (``ingest/avro/_transcode.c``) reads the Avro binary and writes
the same JSON document directly, and reads the id and version fields on the way: about 2 µs.

It is only an accelerator, never a second source of truth:

- It runs for values framed with the reader schema's id, or with an older version's whose
  records the codec reads by only dropping fields and appending plain defaults (the usual
  evolution: v2 adds ``priority`` with a default), on streams without a transform hook (a
  hook needs the dict), when every type in the schema is one it renders exactly as the
  Python path does.
  :func:`fast_path_for` says which and, if not, why not.
- For any value it does not accept as plainly valid it returns None, and the caller takes
  the Python path for that record, which produces the dead letter and its reason. That
  includes records over a limit: more array and map items than
  :data:`~ingest.avro.reader.MAX_ITEMS_PER_RECORD` (refused at decode) or a document over the
  stream's ``max_document_bytes`` (refused at transform, where the Python path renders it),
  and memory running out, which never escapes as an exception. The unit
  tests check on generated schemas and records that both paths give equal documents, ids
  and versions, and that the transcoder accepts nothing the Python path refuses.
- Without a C compiler at install time the extension is missing and everything takes the
  Python path (slower, same results).
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import orjson
from fastavro._logical_readers_py import LOGICAL_READERS

from ingest.avro.catalog import SchemaVersion
from ingest.avro.codec import AvroCodec, frame, plain_evolution
from ingest.avro.reader import MAX_ITEMS_PER_RECORD, register_named
from ingest.settings import StreamSettings
from ingest.types import FastPath

try:
    from ingest.avro._transcode import Transcoder
except ImportError:  # built without a C compiler: the Python path does all the work
    Transcoder = None  # type: ignore[assignment,misc]

#: Node kinds a field used as the document id / the external version may decode to.
_ID_KINDS = {"null", "string", "int", "long"}
_VERSION_KINDS = {"null", "int", "long", "timestamp-millis", "timestamp-micros", "date"}


class Unsupported(ValueError):
    """The schema holds something the transcoder does not render as the Python path does."""


@dataclass(frozen=True, slots=True)
class FastPathChoice:
    """The transcoder for a stream, or None and the reason it takes the Python path.

    ``slow_writers`` names the older writer schemas whose records still take the Python
    path, and why (the reader schema's own records are on the fast path when
    ``transcode`` is set).
    """

    transcode: FastPath | None
    reason: str
    slow_writers: tuple[str, ...] = ()


def native_available() -> bool:
    """True when the C extension was built at install time."""
    return Transcoder is not None


def fast_path_for(codec: AvroCodec, stream: StreamSettings) -> FastPathChoice:
    """The fast path for ``stream``'s records written with ``codec``'s reader schema, and
    with each older version of its subject in the catalog whose fields the reader only drops
    or adds with plain defaults (documents without the dropped fields, ending with the
    defaults, as :func:`plain_evolution` gives)."""
    if Transcoder is None:
        return FastPathChoice(None, "the native transcoder was not built (no C compiler?)")
    if stream.transform:
        return FastPathChoice(None, "the stream has a transform hook, which needs the record")
    if not codec.decimals_as_float:
        return FastPathChoice(None, "the codec reads decimals as Decimal, not float")
    reader = codec.reader
    older: Transcoder | None = None
    slow: list[str] = []
    for writer in codec.catalog.versions(codec.subject):
        if writer.schema_id == reader.schema_id:
            continue
        try:
            older = _transcoder(codec, writer, stream, older)
        except Unsupported as exc:
            slow.append(f"schema id {writer.schema_id} (v{writer.version}): {exc}")
    try:
        native = _transcoder(codec, reader, stream, older)
    except Unsupported as exc:
        return FastPathChoice(None, str(exc))
    return FastPathChoice(native.transcode, "native", tuple(slow))


def _transcoder(
    codec: AvroCodec, writer: SchemaVersion, stream: StreamSettings, older: Transcoder | None
) -> Transcoder:
    """The transcoder for records framed with ``writer``'s id, handing others to ``older``.

    Raises Unsupported when that writer's records must take the Python path.
    """
    reader = codec.reader
    if writer.fingerprint == reader.fingerprint:  # the codec reads equal layouts as the reader
        schema, suffix = reader.schema, b"}"
        program = compile_program(schema)
    else:
        evolution = plain_evolution(writer.schema, reader.schema)
        if evolution is None:
            raise Unsupported("reading it as the reader schema needs Avro's full resolution")
        schema, suffix = writer.schema, _defaults_suffix(evolution.defaults)
        program = _without(compile_program(schema), schema, set(evolution.dropped))
    id_index = _field_index(program, schema, stream.id_field, _ID_KINDS, "id_field")
    version_index = _field_index(
        program, schema, stream.version_field, _VERSION_KINDS, "version_field"
    )
    return Transcoder(
        program,
        frame(writer.schema_id, b""),
        id_index,
        version_index,
        suffix,
        older,
        max_items=MAX_ITEMS_PER_RECORD,
        max_document_bytes=stream.max_document_bytes,
    )


def _without(
    program: tuple[Any, ...], schema: dict[str, Any], dropped: set[str]
) -> tuple[Any, ...]:
    """``program`` reading but not writing the top-level fields in ``dropped`` (empty texts),
    the first field still written opening the document."""
    names = [f["name"] for f in schema["fields"]]
    if dropped and dropped.issuperset(names):
        raise Unsupported("the reader schema drops all of its fields")
    texts = _field_texts(names, dropped)
    nodes = [node for _, node in program[1]]
    return ("record", tuple(zip(texts, nodes, strict=True)))


def _field_texts(names: list[str], dropped: AbstractSet[str] = frozenset()) -> list[bytes]:
    """What the transcoder writes before each field's value: ``{"name":`` for the first
    field written, ``,"name":`` after it, and nothing for a dropped field (read, unwritten)."""
    texts = []
    opened = False
    for name in names:
        if name in dropped:
            texts.append(b"")
            continue
        texts.append((b"," if opened else b"{") + orjson.dumps(name) + b":")
        opened = True
    return texts


def _defaults_suffix(defaults: tuple[tuple[str, Any], ...]) -> bytes:
    """``,"name":default,...}``: the fields the codec appends to an older writer's record.

    Plain defaults (null, booleans, numbers, strings, ``[]``, ``{}``) are put in the
    document as they are, so orjson renders them here exactly as the Python path does.
    """
    try:
        parts = [b"," + orjson.dumps(name) + b":" + orjson.dumps(value) for name, value in defaults]
    except orjson.JSONEncodeError as exc:  # e.g. an integer default beyond 64 bits
        raise Unsupported(f"a default does not render as JSON: {exc}") from None
    return b"".join(parts) + b"}"


def _field_index(
    program: tuple[Any, ...],
    schema: dict[str, Any],
    name: str | None,
    kinds: set[str],
    setting: str,
) -> int:
    """Position of top-level field ``name`` (-1 for none) if its values are usable as is."""
    if name is None:
        return -1
    names = [f["name"] for f in schema["fields"]]
    if name not in names:
        raise Unsupported(f"{setting} {name!r} is not a field of the schema")
    index = names.index(name)
    node = program[1][index][1]
    leaves = node[1] if node[0] == "union" else (node,)
    found = {leaf[0] for leaf in leaves}
    if not found <= kinds:
        raise Unsupported(f"{setting} {name!r} has a type the fast path does not derive")
    return index


def compile_program(schema: dict[str, Any]) -> tuple[Any, ...]:
    """The transcoder's program for records written with ``schema`` (fastavro's parsed form).

    Mirrors :class:`ingest.avro.reader._Gen` type by type: where that reader gives a value the
    fast path cannot render identically (``Decimal``, ``UUID``, ``time``, recursion), this
    raises Unsupported and the stream keeps the Python path.
    """
    named: dict[str, Any] = {}
    register_named(schema, named)
    return _node(schema, named, ())


_PRIMITIVE_NODES: dict[str, tuple[str, ...]] = {
    "null": ("null",),
    "boolean": ("boolean",),
    "int": ("int",),  # a long refused beyond 32 bits, as the Python reader refuses it
    "long": ("long",),
    "float": ("float",),
    "double": ("double",),
    "string": ("string",),
    "bytes": ("bytes",),
}


def _node(schema: Any, named: dict[str, Any], stack: tuple[str, ...]) -> tuple[Any, ...]:
    if isinstance(schema, str) and schema not in _PRIMITIVE_NODES:
        schema = named[schema]
    if isinstance(schema, list):
        return ("union", tuple(_node(branch, named, stack) for branch in schema))
    if isinstance(schema, str):
        return _PRIMITIVE_NODES[schema]
    kind = schema["type"]
    if isinstance(kind, dict | list):
        return _node(kind, named, stack)
    logical = schema.get("logicalType")
    if logical is not None:
        node = _logical(schema, kind, logical)
        if node is not None:
            return node
    if kind in _PRIMITIVE_NODES:
        return _PRIMITIVE_NODES[kind]
    if kind in ("record", "error"):
        name = schema["name"]
        if name in stack:
            raise Unsupported(f"recursive type {name} takes the Python path")
        texts = _field_texts([f["name"] for f in schema["fields"]])
        nodes = [_node(f["type"], named, (*stack, name)) for f in schema["fields"]]
        return ("record", tuple(zip(texts, nodes, strict=True)))
    if kind == "enum":
        return ("enum", tuple(orjson.dumps(symbol) for symbol in schema["symbols"]))
    if kind == "fixed":
        return ("fixed", int(schema["size"]))
    if kind == "array":
        return ("array", _node(schema["items"], named, stack))
    if kind == "map":
        return ("map", _node(schema["values"], named, stack))
    raise Unsupported(f"Avro type {kind!r} takes the Python path")


def _logical(schema: dict[str, Any], kind: str, logical: str) -> tuple[Any, ...] | None:
    """The node for a logical type; None where the reader ignores it (the plain type)."""
    if kind == "long" and logical in ("timestamp-millis", "local-timestamp-millis"):
        return ("timestamp-millis",)
    if kind == "long" and logical in ("timestamp-micros", "local-timestamp-micros"):
        return ("timestamp-micros",)
    if kind == "bytes" and logical == "decimal":
        return ("decimal", int(schema.get("scale", 0)))
    if f"{kind}-{logical}" not in LOGICAL_READERS:
        return None  # unknown logical type: the reader gives the underlying type
    if kind == "int" and logical == "date":
        return ("date",)
    raise Unsupported(f"logical type {logical} on {kind} takes the Python path")
