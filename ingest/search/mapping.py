"""Index mappings derived from Avro schemas, and what changes between two of them.

Mappings are explicit and ``dynamic: "strict"``: a document with a field the schema does not
have is rejected (and dead-lettered) instead of silently growing the mapping toward the
1,000-field limit. Types follow how :mod:`ingest.pipeline.transform` renders values:

=============================  =================================================================
Avro                           mapping
=============================  =================================================================
string, enum, uuid             ``keyword`` (override with ``text`` for full-text fields)
boolean / int / long           ``boolean`` / ``integer`` / ``long``
float / double                 ``float`` / ``double``
timestamp-*, date              ``date``, format ``strict_date_optional_time||epoch_millis``
                               (transform writes ISO-8601 with milliseconds and ``Z``;
                               dates as ``YYYY-MM-DD``)
time-millis / time-micros      ``keyword``: rendered ``HH:MM:SS.ffffff``, which sorts as text
decimal                        ``double``: the transform writes JSON numbers. ``scaled_float``
                               would be exact to the scale but behaves differently across
                               Elasticsearch and OpenSearch versions; override per field if
                               exactness in the index matters (the source keeps the value).
bytes, fixed                   ``binary`` (base64 strings)
record                         ``object`` with ``properties``
array of T                     T's mapping (every field holds zero or more values)
map<T>                         ``{"type": "object", "dynamic": true}``: keys are data, not
                               schema. ``flattened`` would be better but is Elasticsearch-only.
union with null                the non-null branch
=============================  =================================================================

Unions of two or more non-null types have no single mapping: they need an override, or
loading fails with a ConfigError naming the field. Overrides replace a field's mapping by
dotted path (``shipping_address.city``; array items take the array field's path).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ingest.avro.catalog import SchemaVersion
from ingest.errors import ConfigError
from ingest.settings import IndexSettings, gc_deletes_setting

DATE_FORMAT = "strict_date_optional_time||epoch_millis"

_PRIMITIVE_MAPPINGS: dict[str, dict[str, Any]] = {
    "string": {"type": "keyword"},
    "boolean": {"type": "boolean"},
    "int": {"type": "integer"},
    "long": {"type": "long"},
    "float": {"type": "float"},
    "double": {"type": "double"},
    "bytes": {"type": "binary"},
}
_LOGICAL_MAPPINGS: dict[str, dict[str, Any]] = {
    "timestamp-millis": {"type": "date", "format": DATE_FORMAT},
    "timestamp-micros": {"type": "date", "format": DATE_FORMAT},
    "local-timestamp-millis": {"type": "date", "format": DATE_FORMAT},
    "local-timestamp-micros": {"type": "date", "format": DATE_FORMAT},
    "date": {"type": "date", "format": DATE_FORMAT},
    "decimal": {"type": "double"},
    "uuid": {"type": "keyword"},
    "time-millis": {"type": "keyword"},
    "time-micros": {"type": "keyword"},
}
_MAP_MAPPING: dict[str, Any] = {"type": "object", "dynamic": True}


class _Deriver:
    """Walks a schema (raw JSON or fastavro-parsed) resolving named types by full name."""

    def __init__(self, overrides: Mapping[str, dict[str, Any]]) -> None:
        self.overrides = dict(overrides)
        self.used: set[str] = set()
        self.named: dict[str, Any] = {}

    def fullname(self, name: str, namespace: str | None) -> str:
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def lookup(self, name: str, namespace: str | None) -> Any:
        for candidate in (self.fullname(name, namespace), name):
            if candidate in self.named:
                return self.named[candidate]
        short = name.rsplit(".", 1)[-1]
        matches = [v for k, v in self.named.items() if k.rsplit(".", 1)[-1] == short]
        if len(matches) == 1:
            return matches[0]
        raise ConfigError(f"mapping: schema refers to unknown type {name!r}")

    def define(self, schema: dict[str, Any], namespace: str | None) -> str | None:
        ns = schema.get("namespace", namespace)
        full = self.fullname(schema["name"], ns)
        self.named[full] = schema
        return full.rsplit(".", 1)[0] if "." in full else ns

    def field_mapping(self, schema: Any, path: str, namespace: str | None) -> dict[str, Any] | None:
        """The mapping of the value at ``path``; None for a field that is always null."""
        if path in self.overrides:
            self.used.add(path)
            self.walk_for_names(schema, namespace)
            return copy.deepcopy(self.overrides[path])
        return self.mapping(schema, path, namespace)

    def mapping(self, schema: Any, path: str, namespace: str | None) -> dict[str, Any] | None:
        if isinstance(schema, list):
            return self.union(schema, path, namespace)
        if isinstance(schema, str):
            if schema == "null":
                return None
            if schema in _PRIMITIVE_MAPPINGS:
                return dict(_PRIMITIVE_MAPPINGS[schema])
            return self.mapping(self.lookup(schema, namespace), path, namespace)
        if isinstance(schema["type"], dict | list):
            return self.mapping(schema["type"], path, namespace)
        return self.complex(schema, path, namespace)

    def complex(
        self, schema: dict[str, Any], path: str, namespace: str | None
    ) -> dict[str, Any] | None:
        kind, logical = schema["type"], schema.get("logicalType")
        result: dict[str, Any] | None
        if kind in ("record", "error"):
            result = self.record(schema, path, namespace)
        elif kind in ("enum", "fixed"):
            self.define(schema, namespace)
            if kind == "enum":
                result = {"type": "keyword"}
            else:
                result = dict(
                    _LOGICAL_MAPPINGS["decimal"] if logical == "decimal" else {"type": "binary"}
                )
        elif isinstance(logical, str) and logical in _LOGICAL_MAPPINGS:
            result = dict(_LOGICAL_MAPPINGS[logical])
        elif kind == "array":
            result = self.field_mapping(schema["items"], path, namespace)
        elif kind == "map":
            self.walk_for_names(schema["values"], namespace)
            result = dict(_MAP_MAPPING)
        else:
            result = self.mapping(kind, path, namespace)
        return result

    def record(self, schema: dict[str, Any], path: str, namespace: str | None) -> dict[str, Any]:
        inner_ns = self.define(schema, namespace)
        properties: dict[str, Any] = {}
        for f in schema["fields"]:
            child = f"{path}.{f['name']}" if path else f["name"]
            mapped = self.field_mapping(f["type"], child, inner_ns)
            if mapped is not None:
                properties[f["name"]] = mapped
        return {"type": "object", "properties": properties}

    def union(self, branches: list[Any], path: str, namespace: str | None) -> dict[str, Any] | None:
        mapped = [self.mapping(b, path, namespace) for b in branches if b != "null"]
        distinct = {json.dumps(m, sort_keys=True) for m in mapped if m is not None}
        if len(distinct) > 1:
            raise ConfigError(
                f"mapping: field {path!r} is a union of several types; give it a mapping in"
                f" [streams.index.field_overrides]"
            )
        return next((m for m in mapped if m is not None), None)

    def walk_for_names(self, schema: Any, namespace: str | None) -> None:
        """Register named types defined under an overridden or map field."""
        if isinstance(schema, list):
            for branch in schema:
                self.walk_for_names(branch, namespace)
        elif isinstance(schema, dict):
            kind = schema["type"]
            if kind in ("record", "error", "enum", "fixed"):
                ns = self.define(schema, namespace)
                for f in schema.get("fields", []):
                    self.walk_for_names(f["type"], ns)
            elif kind == "array":
                self.walk_for_names(schema["items"], namespace)
            elif kind == "map":
                self.walk_for_names(schema["values"], namespace)
            elif isinstance(kind, dict | list):
                self.walk_for_names(kind, namespace)


def derive_mapping(
    schema: SchemaVersion | dict[str, Any], overrides: Mapping[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``{"dynamic": "strict", "properties": {...}}`` for records of ``schema``.

    ``overrides`` maps dotted field paths to mapping fragments that replace the derived
    ones. An override naming no field is a ConfigError (a typo would silently do nothing).
    """
    raw = schema.raw if isinstance(schema, SchemaVersion) else schema
    if not isinstance(raw, dict) or raw.get("type") not in ("record", "error"):
        raise ConfigError("mapping: the top-level schema must be a record")
    deriver = _Deriver(overrides or {})
    root = deriver.record(raw, "", raw.get("namespace"))
    unused = sorted(set(deriver.overrides) - deriver.used)
    if unused:
        raise ConfigError(f"mapping: field_overrides name no schema field: {', '.join(unused)}")
    return {"dynamic": "strict", "properties": root["properties"]}


def index_definition(
    schema: SchemaVersion | dict[str, Any],
    index_settings: IndexSettings,
    *,
    gc_deletes_s: float | None = None,
) -> dict[str, Any]:
    """The body of a create-index request: settings (shards, replicas, refresh) + mapping.

    ``gc_deletes_s``: how long the index remembers a delete (``index.gc_deletes``), given for
    the indices the pipeline writes (see ``Settings.gc_deletes_s``); the stream's own
    ``settings`` win over it.
    """
    settings: dict[str, Any] = {
        "number_of_shards": index_settings.shards,
        "number_of_replicas": index_settings.replicas,
        "refresh_interval": index_settings.refresh_interval,
    }
    if gc_deletes_s is not None and gc_deletes_setting(index_settings.settings) is None:
        settings["gc_deletes"] = time_value(gc_deletes_s)
    settings.update(index_settings.settings)
    return {
        "settings": settings,
        "mappings": derive_mapping(schema, index_settings.field_overrides),
    }


def time_value(seconds: float) -> str:
    """``seconds`` as an Elasticsearch time value, whole milliseconds."""
    return f"{max(1, round(seconds * 1000))}ms"


# ----------------------------------------------------------------------------- diffs


@dataclass(frozen=True)
class MappingDiff:
    """Field paths that differ between a live mapping and the wanted one.

    ``in_place_ok``: only additions, which ``PUT _mapping`` can apply to the live index; any
    changed or removed field needs a new index and a reindex.
    """

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def in_place_ok(self) -> bool:
        return not self.changed and not self.removed

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def _unwrap(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept a mapping body, ``{"mappings": body}`` or ``{index: {"mappings": body}}``."""
    inner = mapping.get("mappings")
    if isinstance(inner, Mapping):
        return inner
    if len(mapping) == 1:
        (only,) = mapping.values()
        inner = only.get("mappings") if isinstance(only, Mapping) else None
        if isinstance(inner, Mapping):
            return inner
    return mapping


def _normalise(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Leaf attributes compared the way the server reports them.

    A field without ``type`` is an object (servers omit it), booleans such as
    ``dynamic: true`` come back as strings, and a date's default format is not shown.
    """
    out = {k: v for k, v in attrs.items() if k != "properties"}
    out.setdefault("type", "object")
    if out["type"] == "date" and out.get("format") == DATE_FORMAT:
        del out["format"]  # the servers' default date format: GET _mapping leaves it out
    for key, value in out.items():
        if isinstance(value, bool):
            out[key] = str(value).lower()
    return out


def _flatten(mapping: Mapping[str, Any], prefix: str, into: dict[str, dict[str, Any]]) -> None:
    for name, attrs in (mapping.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        into[path] = _normalise(attrs)
        if isinstance(attrs, Mapping) and "properties" in attrs:
            _flatten(attrs, path, into)


def diff_mappings(live: Mapping[str, Any], wanted: Mapping[str, Any]) -> MappingDiff:
    """What changes from ``live`` (as GET _mapping returns it) to ``wanted``."""
    live_body, wanted_body = _unwrap(live), _unwrap(wanted)
    old: dict[str, dict[str, Any]] = {}
    new: dict[str, dict[str, Any]] = {}
    _flatten(live_body, "", old)
    _flatten(wanted_body, "", new)
    # Inside a dynamic object (an Avro map) the server adds a field per key seen: data,
    # not schema, so those never count as removed.
    open_objects = tuple(p + "." for p, attrs in new.items() if attrs.get("dynamic") == "true")
    if open_objects:
        old = {p: a for p, a in old.items() if not p.startswith(open_objects)}
    changed = sorted(p for p in old.keys() & new.keys() if old[p] != new[p])
    root_old = _normalise({k: v for k, v in live_body.items() if k == "dynamic"})
    root_new = _normalise({k: v for k, v in wanted_body.items() if k == "dynamic"})
    if root_old.get("dynamic", "true") != root_new.get("dynamic", "true"):
        changed.insert(0, "(root).dynamic")
    return MappingDiff(
        added=sorted(new.keys() - old.keys()),
        changed=changed,
        removed=sorted(old.keys() - new.keys()),
    )
