"""Why a record does not fit its Avro schema, as a list of field paths a person can act on.

fastavro's validator names fields by their schema type
(``com.example.orders.LineItem.quantity``), stops short of decimal precision (its writer then
stores more digits than the schema allows), and takes about 40 µs per order. This checker
reports every problem with its path inside the record — ``items[0].quantity: expected int,
got str`` — and builds a path string only for a problem, so a good order checks in about
the same time. Values never appear in the messages: records may hold personal data, and
these messages end up in logs.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def _named_types(schema: dict[str, Any]) -> dict[str, Any]:
    named: dict[str, Any] = dict(schema.get("__named_schemas") or {})

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in ("record", "error", "enum", "fixed"):
                named.setdefault(node["name"], node)
            for key in ("fields", "items", "values"):
                if key in node:
                    walk(node[key])
            if isinstance(kind, dict | list):
                walk(kind)

    walk(schema)
    return named


def _describe(schema: Any) -> str:
    if isinstance(schema, list):
        return "one of [" + ", ".join(_describe(b) for b in schema) + "]"
    if isinstance(schema, dict):
        kind = schema["type"]
        if isinstance(kind, dict | list):
            return _describe(kind)
        logical = schema.get("logicalType")
        if kind in ("record", "error", "enum", "fixed"):
            return f"{kind} {schema['name'].rsplit('.', 1)[-1]}"
        return f"{kind} ({logical})" if logical else str(kind)
    return str(schema).rsplit(".", 1)[-1]


#: A field path as a linked list ``(parent, segment)``, rendered only for a problem.
_Path = tuple[Any, str] | None


def _render(path: _Path) -> str:
    parts: list[str] = []
    while path is not None:
        path, segment = path
        parts.append(segment)
    text = ""
    for segment in reversed(parts):
        text += segment if segment.startswith("[") or not text else "." + segment
    return text or "(record)"


class RecordChecker:
    """Checks records against one schema; build once per schema, call per record."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.named = _named_types(schema)

    def problems(self, record: Any) -> list[tuple[str, str]]:
        """Every ``(field path, problem)`` of ``record``; empty when it fits."""
        errors: list[tuple[str, str]] = []
        self.check(record, self.schema, None, errors)
        return errors

    def check(self, datum: Any, schema: Any, path: _Path, errors: list[tuple[str, str]]) -> None:
        if isinstance(schema, str):
            if schema in self.named:
                schema = self.named[schema]
            else:
                self.primitive(datum, schema, None, schema, path, errors)
                return
        if isinstance(schema, list):
            self.union(datum, schema, path, errors)
            return
        kind = schema["type"]
        if isinstance(kind, dict | list) or kind in self.named:
            self.check(datum, kind, path, errors)
        elif kind in ("record", "error"):
            self.record(datum, schema, path, errors)
        elif kind == "enum":
            if not isinstance(datum, str):
                errors.append(
                    (
                        _render(path),
                        f"expected {_describe(schema)} symbol, got {type(datum).__name__}",
                    )
                )
            elif datum not in schema["symbols"]:
                errors.append(
                    (_render(path), f"not a symbol of {_describe(schema)}: {schema['symbols']}")
                )
        elif kind == "array":
            if isinstance(datum, str | bytes) or not isinstance(datum, Sequence):
                errors.append((_render(path), f"expected array, got {type(datum).__name__}"))
                return
            items = schema["items"]
            for n, item in enumerate(datum):
                self.check(item, items, (path, f"[{n}]"), errors)
        elif kind == "map":
            if not isinstance(datum, Mapping):
                errors.append((_render(path), f"expected map, got {type(datum).__name__}"))
                return
            values = schema["values"]
            for key, item in datum.items():
                if not isinstance(key, str):
                    errors.append(
                        (_render(path), f"map keys must be strings, got {type(key).__name__}")
                    )
                    continue
                self.check(item, values, (path, f"[{key!r}]"), errors)
        else:
            self.primitive(datum, kind, schema.get("logicalType"), schema, path, errors)

    def record(
        self, datum: Any, schema: dict[str, Any], path: _Path, errors: list[tuple[str, str]]
    ) -> None:
        if not isinstance(datum, Mapping):
            errors.append(
                (_render(path), f"expected {_describe(schema)}, got {type(datum).__name__}")
            )
            return
        for field in schema["fields"]:
            name = field["name"]
            if name in datum:
                self.check(datum[name], field["type"], (path, name), errors)
            elif "default" not in field:
                errors.append((_render((path, name)), "missing (the field has no default)"))

    def union(
        self, datum: Any, branches: list[Any], path: _Path, errors: list[tuple[str, str]]
    ) -> None:
        for branch in branches:
            if branch == "null":
                if datum is None:
                    return
                continue
            probe: list[tuple[str, str]] = []
            self.check(datum, branch, path, probe)
            if not probe:
                return
        records = [
            b
            for b in (self.named.get(b, b) if isinstance(b, str) else b for b in branches)
            if isinstance(b, dict) and b.get("type") in ("record", "error")
        ]
        if isinstance(datum, Mapping) and len(records) == 1:
            self.record(datum, records[0], path, errors)  # the one record branch: look inside
            return
        errors.append(
            (_render(path), f"expected {_describe(branches)}, got {type(datum).__name__}")
        )

    def primitive(
        self,
        datum: Any,
        kind: str,
        logical: str | None,
        schema: Any,
        path: _Path,
        errors: list[tuple[str, str]],
    ) -> None:
        problem = _primitive_problem(datum, kind, logical, schema)
        if problem:
            errors.append((_render(path), problem))


#: Python values fastavro's writer accepts for a logical type besides the underlying one.
_LOGICAL_VALUES: dict[str, type | tuple[type, ...]] = {
    "timestamp-millis": dt.datetime,
    "timestamp-micros": dt.datetime,
    "local-timestamp-millis": dt.datetime,
    "local-timestamp-micros": dt.datetime,
    "date": dt.date,
    "time-millis": dt.time,
    "time-micros": dt.time,
    "uuid": uuid.UUID,
}
#: The Python type(s) a decoded value of each primitive Avro type has.
PLAIN_VALUES: dict[str, type | tuple[type, ...]] = {
    "null": type(None),
    "boolean": bool,
    "int": int,
    "long": int,
    "float": (int, float),
    "double": (int, float),
    "string": str,
    "bytes": (bytes, bytearray),
    "fixed": (bytes, bytearray),
}


def _primitive_problem(datum: Any, kind: str, logical: str | None, schema: Any) -> str | None:
    if logical == "decimal" and isinstance(datum, decimal.Decimal):
        return _decimal_problem(datum, schema)
    special = _LOGICAL_VALUES.get(logical or "")
    if special is not None and isinstance(datum, special):
        return None
    plain = PLAIN_VALUES.get(kind)
    if plain is None:
        return f"unsupported Avro type {kind}"
    if not isinstance(datum, plain) or (isinstance(datum, bool) and kind != "boolean"):
        return f"expected {_describe(schema)}, got {type(datum).__name__}"
    return _size_problem(datum, kind, schema)


def _size_problem(datum: Any, kind: str, schema: Any) -> str | None:
    if kind in ("int", "long"):
        low, high = _INT32 if kind == "int" else _INT64
        if not low <= datum <= high:
            return f"out of range for {kind}"
    elif kind == "fixed" and len(datum) != schema["size"]:
        return f"expected {schema['size']} bytes, got {len(datum)}"
    return None


def _decimal_problem(value: decimal.Decimal, schema: dict[str, Any]) -> str | None:
    if not value.is_finite():
        return "a decimal must be finite"
    scale = int(schema.get("scale", 0))
    precision = int(schema["precision"])
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    if exponent < -scale:
        return f"has more than {scale} decimal places"
    if len(digits) + (exponent + scale) > precision:
        return f"has more than {precision} digits"
    return None
