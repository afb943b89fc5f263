"""Custom ``_routing``: which shard a stream's documents live on, for writes and deletes alike.

With ``routing_field`` every bulk action of the stream carries ``routing`` = that record
field's value, so the cluster places (and finds) the document by it instead of by ``_id``.
Writes and deletes must agree: a delete sent with another routing reaches another shard, which
answers ``not_found`` — indistinguishable from deleting a document that never existed — and the
document stays. A tombstone has a key but no fields, so its routing comes from:

- the key itself when ``routing_field`` is the ``id_field`` (the key is the id, hence the
  routing value);
- otherwise the Kafka header named by ``routing_header``, which the producer sets on the
  tombstone; a tombstone without it is dead-lettered, never deleted on a guessed shard.

Settings refuse ``routing_field`` with ``tombstones = "delete"`` when neither applies.

Values: a string (or enum symbol) as is, an integer in decimal; the field must be one of
those types in the stream's schema (checked at start, :func:`schema_problem`), so the native
fast path and the Python path always derive the same routing. A record whose value is null or
empty is dead-lettered: it would otherwise be routed by ``_id`` and become unreachable by
routed reads and deletes. The routing field must not change across versions of a document
(as for ``_id``): a new value would put a second copy on another shard.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

_ROUTABLE = {"string", "int", "long", "enum"}


def routing_value(value: Any) -> str | None:
    """The routing string of a field value, or ``None`` if it cannot route (null, empty...)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def routing_from_body(body: bytes, field: str) -> str | None:
    """The routing value of a rendered JSON document (the fast path's output)."""
    doc = orjson.loads(body)
    return routing_value(doc.get(field)) if isinstance(doc, dict) else None


def schema_problem(schema: Mapping[str, Any], field: str) -> str | None:
    """Why ``field`` of a record schema cannot be a routing field, or ``None`` if it can."""
    for entry in schema.get("fields", ()):
        if entry.get("name") != field:
            continue
        kinds = entry["type"] if isinstance(entry["type"], list) else [entry["type"]]
        names = {_type_name(kind) for kind in kinds} - {"null"}
        if names and names <= _ROUTABLE:
            return None
        return f"is {'/'.join(sorted(names)) or 'null'}; routing needs a string, enum or integer"
    return "is not a top-level field of the schema"


def _type_name(kind: Any) -> str:
    if isinstance(kind, Mapping):
        if "logicalType" in kind:
            return str(kind["logicalType"])
        return str(kind.get("type"))
    return str(kind)
