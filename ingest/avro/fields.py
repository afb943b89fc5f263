"""The stream's ``id_field`` and ``version_field`` checked against every schema version, at start.

Both name a top-level field of the subject's records. A typo, or a field of a type that gives
no id or no version, would dead-letter every record while the offsets move on; so every
process that builds a pipeline (daemon, backfills, reindex, replay) refuses to start instead,
with one line naming the stream, the field and the schema versions at fault.

The same check decides whether deletes can be ordered against records. A tombstone carries
no record fields, so its version is the broker timestamp in milliseconds (or the offset on a
stream versioned by offsets). That is comparable with the records' versions only when the
version field is a timestamp — ``timestamp-millis``, or ``timestamp-micros``, which records
are versioned by in milliseconds too. With a plain counter or a date, a delete would either
always lose (a 409 counted as applied) or always win; such a stream must take the tombstone's
version from a record header (``tombstone_version_header``, written by the producer in the
version field's unit) or not apply tombstones as deletes (``tombstones = "ignore"`` or
``"dead-letter"``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ingest.avro.catalog import SchemaCatalog, SchemaVersion
from ingest.errors import ConfigError
from ingest.settings import StreamSettings

__all__ = ["check_stream_fields", "field_kind"]

#: Kinds a document id may be rendered from (``str(value)``).
ID_KINDS = frozenset({"string", "int", "long", "enum"})
#: Kinds an external version may be read from (timestamps in epoch milliseconds).
VERSION_KINDS = frozenset({"int", "long", "date", "timestamp-millis", "timestamp-micros"})
#: Version kinds a tombstone's broker timestamp (milliseconds) is comparable with.
TIMESTAMP_KINDS = frozenset({"timestamp-millis", "timestamp-micros"})

_TIMESTAMPS = {
    "timestamp-millis": "timestamp-millis",
    "local-timestamp-millis": "timestamp-millis",
    "timestamp-micros": "timestamp-micros",
    "local-timestamp-micros": "timestamp-micros",
}
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def check_stream_fields(catalog: SchemaCatalog, stream: StreamSettings) -> None:
    """Raise ConfigError (one line) unless ``stream``'s id and version fields are usable in
    every catalog version of its subject, and its deletes are comparable with its records."""
    versions = catalog.versions(stream.subject)
    checks = (
        ("id_field", stream.id_field, ID_KINDS, "string, int, long or enum"),
        (
            "version_field",
            stream.version_field,
            VERSION_KINDS,
            "int, long, date or timestamp-millis/-micros",
        ),
    )
    for key, name, usable, wanted in checks:
        if name is None:
            continue
        kinds = {v.version: field_kind(v, name) for v in versions}
        missing = sorted(n for n, kind in kinds.items() if kind is None)
        if missing:
            raise ConfigError(
                f"stream {stream.name!r}: {key} {name!r} is not a field of"
                f" {stream.subject} {_versions(missing)}"
            )
        bad = {n: kind for n, kind in kinds.items() if kind not in usable}
        if bad:
            found = ", ".join(f"{kind} in v{n}" for n, kind in sorted(bad.items()))
            raise ConfigError(
                f"stream {stream.name!r}: {key} {name!r} has an unusable type ({found} of"
                f" {stream.subject}); it must be {wanted}"
            )
    _check_tombstones(stream, versions)


def _check_tombstones(stream: StreamSettings, versions: list[SchemaVersion]) -> None:
    if stream.tombstones != "delete" or stream.version_field is None:
        return
    if stream.tombstone_version_header is not None:
        return
    kinds = {v.version: field_kind(v, stream.version_field) for v in versions}
    other = {n: kind for n, kind in kinds.items() if kind not in TIMESTAMP_KINDS}
    if other:
        found = ", ".join(f"{kind} in v{n}" for n, kind in sorted(other.items()))
        raise ConfigError(
            f"stream {stream.name!r}: deletes are versioned by the broker timestamp (ms), which"
            f" cannot be ordered against version_field {stream.version_field!r} ({found}); use"
            " a timestamp-millis/-micros version field, set tombstone_version_header, or set"
            ' tombstones = "ignore" or "dead-letter"'
        )


def field_kind(version: SchemaVersion, name: str) -> str | None:
    """The kind of top-level field ``name`` in ``version`` (``long``, ``timestamp-millis``,
    ``enum``, ``union`` ...; a nullable union counts as its other branch), None if absent."""
    raw = version.raw
    for item in raw.get("fields") or ():
        if isinstance(item, Mapping) and item.get("name") == name:
            return _kind(item.get("type"), _named(raw))
    return None


def _kind(schema: Any, named: Mapping[str, Any]) -> str:
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        return _kind(branches[0], named) if len(branches) == 1 else "union"
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return schema
        definition = named.get(schema) or named.get(schema.rsplit(".", 1)[-1])
        return "unknown" if definition is None else _kind(definition, named)
    if not isinstance(schema, Mapping):
        return "unknown"
    base = schema.get("type")
    logical = schema.get("logicalType")
    if base == "long" and logical in _TIMESTAMPS:
        return _TIMESTAMPS[logical]
    if base == "int" and logical == "date":
        return "date"
    if base in ("record", "error", "enum", "array", "map", "fixed"):
        return "record" if base == "error" else str(base)
    return _kind(base, named)


def _named(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Named types defined anywhere in ``raw`` by short and full name."""
    found: dict[str, Any] = {}
    for node in _walk(raw):
        name = node.get("name")
        if node.get("type") in ("record", "error", "enum", "fixed") and isinstance(name, str):
            found[name] = node
            namespace = node.get("namespace")
            if isinstance(namespace, str) and "." not in name:
                found[f"{namespace}.{name}"] = node
    return found


def _walk(node: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(node, Mapping):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _versions(numbers: list[int]) -> str:
    return ", ".join(f"v{n}" for n in numbers)
