"""A small Avro binary writer of the model's own, able to write what the product must refuse.

The model checker must not trust the product's codec to build its inputs: if both shared a
bug, the checker would agree with it. So records are written here from the ``.avsc`` files
alone, with the Avro 1.11 binary rules (zig-zag varints, length-prefixed strings and bytes,
blocked arrays and maps, unions by branch index, decimals as big-endian two's complement).

It writes exactly what it is given and checks nothing: an ``int`` beyond 32 bits is written as
the varint it is, a ``str`` given as ``bytes`` goes out as those raw bytes (bad UTF-8), and an
array can start with any block count (``RawBlock``). That is how poison records are made.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

#: The Confluent wire format's first byte.
MAGIC = 0


@dataclass(frozen=True)
class RawBlock:
    """An array written as one block of ``count`` with a byte size, then ``items`` verbatim."""

    count: int
    size: int
    tail: bytes


def zigzag_varint(n: int) -> bytes:
    """Avro's long encoding for any Python int (no 64-bit range check on purpose)."""
    z = n << 1 if n >= 0 else ((-n) << 1) - 1
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _decimal_bytes(value: Decimal, scale: int) -> bytes:
    unscaled = int(value.scaleb(scale).to_integral_value())
    length = max(1, (unscaled.bit_length() + 8) // 8)
    return unscaled.to_bytes(length, "big", signed=True)


class Schema:
    """One parsed ``.avsc``, with named types resolved."""

    def __init__(self, path: Path) -> None:
        self.doc: dict[str, Any] = json.loads(path.read_text())
        self.named: dict[str, Any] = {}
        self._collect(self.doc)

    def _collect(self, node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                self._collect(branch)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in {"record", "enum", "fixed"}:
                self.named[node["name"]] = node
            if kind == "record":
                for f in node["fields"]:
                    self._collect(f["type"])
            elif kind == "array":
                self._collect(node["items"])
            elif kind == "map":
                self._collect(node["values"])
            elif isinstance(kind, (dict, list)):
                self._collect(kind)

    def field_names(self) -> list[str]:
        return [f["name"] for f in self.doc["fields"]]

    def defaults(self) -> dict[str, Any]:
        """Top-level fields with a default, and that default (as JSON gives it)."""
        return {f["name"]: f["default"] for f in self.doc["fields"] if "default" in f}

    def encode(self, record: dict[str, Any]) -> bytes:
        out = bytearray()
        self._write(self.doc, record, out)
        return bytes(out)

    def _write(self, schema: Any, value: Any, out: bytearray) -> None:
        if isinstance(schema, str):
            if schema in self.named:
                self._write(self.named[schema], value, out)
                return
            schema = {"type": schema}
        if isinstance(schema, list):
            index = self._branch(schema, value)
            out += zigzag_varint(index)
            self._write(schema[index], value, out)
            return
        kind = schema["type"]
        if isinstance(kind, (dict, list)):
            self._write(kind, value, out)
            return
        logical = schema.get("logicalType")
        if kind == "null":
            return
        if kind == "boolean":
            out.append(1 if value else 0)
        elif kind in {"int", "long"}:
            if logical == "timestamp-millis" and isinstance(value, dt.datetime):
                value = int(value.timestamp() * 1000)
            out += zigzag_varint(int(value))
        elif kind == "double":
            out += struct.pack("<d", float(value))
        elif kind == "string":
            raw = value if isinstance(value, bytes) else str(value).encode()
            out += zigzag_varint(len(raw)) + raw
        elif kind == "bytes":
            raw = _decimal_bytes(value, schema.get("scale", 0)) if logical == "decimal" else value
            out += zigzag_varint(len(raw)) + raw
        elif kind == "enum":
            out += zigzag_varint(schema["symbols"].index(value))
        elif kind == "record":
            for f in schema["fields"]:
                self._write(f["type"], value.get(f["name"], f.get("default")), out)
        elif kind == "array":
            if isinstance(value, RawBlock):
                out += zigzag_varint(value.count) + zigzag_varint(value.size) + value.tail
                out += zigzag_varint(0)
                return
            if value:
                out += zigzag_varint(len(value))
                for item in value:
                    self._write(schema["items"], item, out)
            out += zigzag_varint(0)
        elif kind == "map":
            if value:
                out += zigzag_varint(len(value))
                for key, item in value.items():
                    self._write("string", key, out)
                    self._write(schema["values"], item, out)
            out += zigzag_varint(0)
        else:
            raise ValueError(f"the model's writer has no rule for {kind!r}")

    def _branch(self, union: list[Any], value: Any) -> int:
        if value is None:
            return union.index("null")
        return next(i for i, b in enumerate(union) if b != "null")


def frame(schema_id: int, body: bytes) -> bytes:
    """Confluent wire format: magic byte, 4-byte big-endian schema id, Avro binary."""
    return bytes([MAGIC]) + struct.pack(">I", schema_id) + body
