"""Avro record -> search document: id, external version and JSON body.

The decoded record (fastavro gives ``datetime`` for timestamps, ``Decimal`` for decimals, ``str``
for enums, dicts for nested records) becomes a JSON document: timestamps as ISO-8601 UTC
strings, dates as ``YYYY-MM-DD``, decimals as JSON numbers. An optional user hook
``module:function`` may reshape the document; returning ``None`` filters the record out.

The ``_id`` is the configured record field, else the Kafka key; the external version is the
configured field (timestamps in epoch milliseconds), else the Kafka offset — so replays and
out-of-order writes never overwrite newer data.

The rendered JSON is measured here, after the hook, because only then is it known: a
document over the stream's ``max_document_bytes`` is this record's fault (a few bytes of
Avro can render megabytes) and a TransformError, never a bulk request the server refuses.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from ingest.errors import ConfigError, TransformError
from ingest.pipeline.routing import routing_value
from ingest.settings import StreamSettings
from ingest.types import IndexAction, RawRecord

UserHook = Callable[[dict[str, Any], RawRecord], dict[str, Any] | None]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)
_DUMPS_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        # Avro bytes map to the `binary` field type, which takes base64.
        return base64.b64encode(value).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def load_hook(spec: str) -> UserHook:
    """Import ``package.module:function``; a ConfigError naming the spec if it is not there."""
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"transform hook {spec!r}: cannot import {module_name}: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(
            f"transform hook {spec!r}: {func_name} is not a function in {module_name}"
        )
    hook: UserHook = func
    return hook


def to_version(value: Any) -> int:
    """External version from a record value: ints as is, timestamps as epoch milliseconds."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a version")
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int((value - _EPOCH) // _MS)
    if isinstance(value, dt.date):
        return (value - dt.date(1970, 1, 1)).days
    raise TypeError(f"a {type(value).__name__} is not a version")


class Transformer:
    """Turns decoded records of one stream into bulk actions."""

    def __init__(self, stream: StreamSettings, hook: UserHook | None = None) -> None:
        self.stream = stream
        self._id_field = stream.id_field
        self._version_field = stream.version_field
        self._routing_field = stream.routing_field
        self._max_document_bytes = stream.max_document_bytes
        self._tombstone_header = stream.tombstone_version_header
        self._hook = (
            hook
            if hook is not None
            else (load_hook(stream.transform) if stream.transform else None)
        )

    def to_action(self, doc: dict[str, Any], record: RawRecord) -> IndexAction | None:
        """The index action for ``doc``; ``None`` when the user hook filtered it out.

        Raises TransformError naming the field when id or version cannot be derived.
        """
        doc_id = self._doc_id(doc, record)
        version = self._version(doc, record)
        routing = self._routing(doc) if self._routing_field is not None else None
        if self._hook is not None:
            try:
                shaped = self._hook(doc, record)
            except Exception as exc:
                raise TransformError(
                    f"transform hook raised {type(exc).__name__}: {exc}",
                    detail={"hook": self.stream.transform},
                ) from exc
            if shaped is None:
                return None
            doc = shaped
        try:
            body = orjson.dumps(doc, default=_json_default, option=_DUMPS_OPTS)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise TransformError(f"document is not JSON-serializable: {exc}") from exc
        except MemoryError:
            raise TransformError("document is too large to render in memory") from None
        if len(body) > self._max_document_bytes:
            raise TransformError(
                f"rendered document is {len(body):,} bytes, over max_document_bytes"
                f" ({self._max_document_bytes:,})",
                detail={"bytes": len(body), "limit": self._max_document_bytes},
            )
        return IndexAction("index", doc_id, version, body, record, routing)

    def tombstone(self, record: RawRecord) -> IndexAction:
        """A delete for a null-valued record, keyed by the Kafka key.

        Tombstones carry no record fields. On a stream versioned by offsets the offset is
        the delete's version; on one versioned by a record field, the configured
        ``tombstone_version_header`` if any, else the broker timestamp in milliseconds —
        comparable with timestamp versions only, which :mod:`ingest.avro.fields` checks at
        start. A tombstone without that version is dead-lettered: versioned 0 it would never
        delete anything, and a 409 would count it as applied.
        """
        if record.key is None:
            raise TransformError("tombstone without a key cannot name a document")
        try:
            doc_id = record.key.decode()
        except UnicodeDecodeError as exc:
            raise TransformError("tombstone key is not UTF-8") from exc
        if self._version_field is None:
            version = record.offset
        elif self._tombstone_header is not None:
            version = self._header_version(record, self._tombstone_header)
        elif record.timestamp_ms > 0:
            version = record.timestamp_ms
        else:
            raise TransformError("tombstone has no broker timestamp to version the delete")
        routing = None if self._routing_field is None else self._tombstone_routing(record, doc_id)
        return IndexAction("delete", doc_id, version, None, record, routing)

    def _routing(self, doc: dict[str, Any]) -> str:
        """The record's routing value (taken before the hook: it is a record field)."""
        routing = routing_value(doc.get(self._routing_field or ""))
        if routing is None:
            raise TransformError(
                "routing field is missing or empty", detail={"field": self._routing_field}
            )
        return routing

    def _tombstone_routing(self, record: RawRecord, doc_id: str) -> str:
        """The key when it is the routing value, else the routing header (see routing)."""
        if self._routing_field == self._id_field:
            return doc_id
        header = self.stream.routing_header
        values = [value for name, value in record.headers if name == header]
        try:
            routing = values[-1].decode() if values and values[-1] is not None else ""
        except UnicodeDecodeError as exc:
            raise TransformError("tombstone routing header is not UTF-8") from exc
        if not routing:
            raise TransformError(
                "tombstone has no routing header, so it cannot name the document's shard",
                detail={"header": header},
            )
        return routing

    @staticmethod
    def _header_version(record: RawRecord, header: str) -> int:
        """The version in the record's last ``header`` header: ASCII digits."""
        values = [value for name, value in record.headers if name == header]
        last = values[-1] if values else None
        text = last.decode("ascii", "replace").strip() if last is not None else ""
        if not text.isdigit() or not text.isascii():
            problem = "missing" if not values else "not a non-negative integer"
            raise TransformError(
                f"tombstone version header is {problem}", detail={"header": header}
            )
        return int(text)

    def _doc_id(self, doc: dict[str, Any], record: RawRecord) -> str:
        if self._id_field is None:
            if record.key is None:
                raise TransformError("record has no key and the stream has no id_field")
            try:
                return record.key.decode()
            except UnicodeDecodeError as exc:
                raise TransformError("record key is not UTF-8") from exc
        value = doc.get(self._id_field)
        if value is None or value == "":
            raise TransformError(
                "document id field is missing or empty", detail={"field": self._id_field}
            )
        return str(value)

    def _version(self, doc: dict[str, Any], record: RawRecord) -> int:
        if self._version_field is None:
            return record.offset
        try:
            return to_version(doc.get(self._version_field))
        except TypeError as exc:
            raise TransformError(
                f"version field is unusable: {exc}", detail={"field": self._version_field}
            ) from exc
