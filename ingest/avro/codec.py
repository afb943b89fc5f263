"""Confluent wire format <-> Python dicts: the decoder on the hot path and the encoder.

A framed value is ``0x00`` (magic), a 4-byte big-endian schema id, then Avro binary written
with that schema. Decoding resolves the *writer* schema (the id) to the stream's *reader*
schema (the subject's latest version), so a v1 record comes out with v2's defaults filled.

Every failure is a :class:`~ingest.errors.RecordError` naming its stage and what is known —
never a bare exception, whatever the bytes:

- :class:`FramingError`: shorter than the 5-byte header, or a magic byte other than 0;
- :class:`UnknownSchemaError`: the id is neither in the catalog nor in the registry;
- :class:`UnusableSchemaError` (a DecodeError): the registry's schema for the id cannot be
  used (not Avro, not parsable, nested too deeply); remembered for good, per id;
- :class:`DecodeError`: the Avro binary does not decode (with the byte offset);
- :class:`RecordValidationError`: bytes left over after the record, or a writer schema the
  reader cannot resolve.

Speed: a record written with the reader's own schema (the common case) is read by a reader
compiled for that schema (:mod:`ingest.avro.reader`); an older version that only lacks fields
with plain defaults is read by a reader compiled for it, then filled in; anything else goes
through fastavro's resolving reader. Plans are built once per schema id and cached.
"""

from __future__ import annotations

import copy
import json
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import fastavro

from ingest.avro.catalog import SchemaCatalog, SchemaVersion, parse_avro
from ingest.avro.check import PLAIN_VALUES, RecordChecker
from ingest.avro.reader import ReadFailure, compile_reader
from ingest.avro.registry import HttpSchemaRegistry, SchemaSource
from ingest.errors import (
    ConfigError,
    DecodeError,
    FatalError,
    FramingError,
    RecordError,
    RecordValidationError,
    TransientError,
    UnknownSchemaError,
    UnusableSchemaError,
)
from ingest.retry import retrying
from ingest.settings import Settings, StreamSettings

MAGIC = 0
HEADER_SIZE = 5
_HEADER = struct.Struct(">bI")
_SCHEMA_ID = struct.Struct(">I")
#: Unknown ids are remembered this long so garbage with a 0 first byte cannot make every
#: record a registry request; a schema registered meanwhile is found after this delay.
UNKNOWN_ID_TTL_S = 60.0
_MAX_UNKNOWN_IDS = 10_000

#: ``read(framed value, HEADER_SIZE) -> (record, end offset)``; a compiled reader is one.
_Plan = Callable[[bytes, int], tuple[dict[str, Any], int]]


def frame(schema_id: int, avro: bytes) -> bytes:
    """``avro`` behind the Confluent header for ``schema_id``."""
    return _HEADER.pack(MAGIC, schema_id) + avro


#: Defaults taken as they are written: bytes and fixed defaults are JSON strings, not bytes.
_PLAIN_DEFAULTS = {
    kind: types for kind, types in PLAIN_VALUES.items() if kind not in ("bytes", "fixed")
}


def _plain_default(schema: Any, default: Any) -> bool:
    """True if fastavro would hand out ``default`` itself, with no conversion."""
    if isinstance(schema, list):
        return bool(schema) and _plain_default(schema[0], default)
    if isinstance(schema, dict):
        if "logicalType" in schema:
            return False
        if schema["type"] == "enum":
            return isinstance(default, str)
        if schema["type"] in ("array", "map"):
            return bool(default == [] if schema["type"] == "array" else default == {})
        schema = schema["type"]
    plain = _PLAIN_DEFAULTS.get(schema) if isinstance(schema, str) else None
    if plain is None or (isinstance(default, bool) and schema != "boolean"):
        return False
    return isinstance(default, plain)


@dataclass(frozen=True, slots=True)
class Evolution:
    """How a writer's record becomes the reader's: fields only dropped or added."""

    #: Writer fields the reader does not have, removed after reading.
    dropped: tuple[str, ...]
    #: Reader fields the writer does not have, appended in reader order with these values.
    defaults: tuple[tuple[str, Any], ...]


def plain_evolution(writer: dict[str, Any], reader: dict[str, Any]) -> Evolution | None:
    """The drops and defaults that read ``writer``'s records as ``reader``'s, when fields
    were only added or removed; None for anything needing Avro's full resolution rules.

    That is how schemas usually evolve (v2 adds ``priority`` with a default). Changed types,
    aliases, promotions, enum changes and non-trivial defaults give None.
    """
    if writer.get("type") != "record" or reader.get("type") != "record":
        return None
    if writer["name"] != reader["name"]:
        return None
    writer_types = {f["name"]: json.dumps(f["type"], sort_keys=True) for f in writer["fields"]}
    reader_names = {f["name"] for f in reader["fields"]}
    defaults: list[tuple[str, Any]] = []
    for field in reader["fields"]:
        if field.get("aliases"):
            return None
        if field["name"] not in writer_types:
            if "default" not in field or not _plain_default(field["type"], field["default"]):
                return None
            defaults.append((field["name"], field["default"]))
        elif writer_types[field["name"]] != json.dumps(field["type"], sort_keys=True):
            return None
    dropped = tuple(name for name in writer_types if name not in reader_names)
    return Evolution(dropped, tuple(defaults))


def _evolution_plan(
    writer: dict[str, Any], reader: dict[str, Any], *, decimals_as_float: bool = False
) -> _Plan | None:
    """The compiled writer reader plus :func:`plain_evolution`'s drops and defaults.

    It reads about three times faster than fastavro's general resolution, which takes
    whatever this returns None for.
    """
    evolution = plain_evolution(writer, reader)
    if evolution is None:
        return None
    dropped, defaults = evolution.dropped, evolution.defaults
    read = compile_reader(writer, decimals_as_float=decimals_as_float)

    def plan(value: bytes, pos: int) -> tuple[dict[str, Any], int]:
        record, end = read(value, pos)
        for name in dropped:
            del record[name]
        for name, default in defaults:
            record[name] = copy.deepcopy(default) if isinstance(default, list | dict) else default
        return record, end

    return plan


def _resolving_plan(writer: dict[str, Any], reader: dict[str, Any]) -> _Plan:
    """fastavro's resolving reader, behind the compiled reader of the writer's schema.

    fastavro reads an ``int`` beyond 32 bits as a bigger int and follows block counts of
    zero-size items for as long as they go. The compiled reader refuses both (and bounds
    the items of a record), so it reads the value first, as a check, and fastavro only
    gets bytes that are valid for the writer. This path is rare (schema changes beyond
    added or removed fields), so reading twice costs little.
    """
    check = compile_reader(writer, decimals_as_float=True)

    def plan(value: bytes, pos: int) -> tuple[dict[str, Any], int]:
        check(value, pos)  # raises ReadFailure for malformed or oversized input
        stream = BytesIO(value)
        stream.seek(pos)
        try:
            record: dict[str, Any] = fastavro.schemaless_reader(stream, writer, reader)  # type: ignore[assignment]
        except fastavro.read.SchemaResolutionError:
            raise
        except Exception as exc:  # fastavro raises EOFError, IndexError, ValueError, ...
            raise ReadFailure(stream.tell(), exc) from exc
        return record, stream.tell()

    return plan


class AvroCodec:
    """Decoder and encoder for one subject; safe to share between threads.

    ``registry_url`` (or any ``registry`` source) is asked for ids the catalog lacks; those
    answers are cached for the life of the codec.
    """

    def __init__(
        self,
        catalog: SchemaCatalog,
        subject: str,
        registry_url: str | None = None,
        *,
        registry_username: str | None = None,
        registry_password: str | None = None,
        registry_timeout_s: float = 10.0,
        registry: SchemaSource | None = None,
        registry_retry_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        decimals_as_float: bool = False,
    ) -> None:
        self.catalog = catalog
        self.subject = subject
        self.reader: SchemaVersion = catalog.latest(subject)
        if registry is None and registry_url:
            try:
                registry = HttpSchemaRegistry(
                    registry_url,
                    username=registry_username,
                    password=registry_password,
                    timeout_s=registry_timeout_s,
                )
            except ValueError as exc:
                raise ConfigError(f"config error: schema_registry.url: {exc}") from None
        self._registry = registry
        #: A registry that is down, slow or answering 5xx is asked again for this long
        #: (``runtime.max_retry_s``) before the caller gets RetriesExhausted; None: at once.
        self._registry_retry_s = registry_retry_s
        self._clock = clock
        #: The pipeline decodes decimals straight to floats for its JSON documents.
        self._decimals_as_float = decimals_as_float
        self._reader_plan: _Plan = compile_reader(
            self.reader.schema, decimals_as_float=decimals_as_float
        )
        self._plans: dict[int, _Plan] = {self.reader.schema_id: self._reader_plan}
        #: The hot path's lookup: the 5 header bytes of a known id -> its plan.
        self._by_header: dict[bytes, _Plan] = {frame(self.reader.schema_id, b""): self._reader_plan}
        self._writers: dict[int, str] = {self.reader.schema_id: self._describe(self.reader)}
        self._unknown_until: dict[int, float] = {}
        self._checkers: dict[int, RecordChecker] = {}

    @property
    def decimals_as_float(self) -> bool:
        """True when decimals decode to the nearest float (what JSON documents hold)."""
        return self._decimals_as_float

    @classmethod
    def for_stream(
        cls,
        settings: Settings,
        stream: StreamSettings,
        catalog: SchemaCatalog,
        *,
        decimals_as_float: bool = False,
    ) -> AvroCodec:
        """The codec of ``stream`` with the registry and credentials from ``settings``."""
        reg = settings.schema_registry
        return cls(
            catalog,
            stream.subject,
            decimals_as_float=decimals_as_float,
            registry_url=reg.url,
            registry_username=reg.username,
            registry_password=reg.password.get_secret_value() if reg.password else None,
            registry_retry_s=settings.runtime.max_retry_s,
        )

    # -- decoding -----------------------------------------------------------------------

    def decode(self, value: bytes) -> dict[str, Any]:
        """One framed value as a dict in the reader schema's shape.

        Raises a RecordError subclass for any bad input; TransientError (not a record
        error) only when the registry must be asked and cannot answer.
        """
        try:
            plan = self._by_header.get(value[:HEADER_SIZE])
        except TypeError:  # None or not bytes: _plan_for says what is wrong
            plan = None
        if plan is None:
            plan = self._plan_for(value)
        try:
            record, end = plan(value, HEADER_SIZE)
        except Exception as exc:  # noqa: BLE001 - the boundary: classified in _read_error
            cause = exc.cause if isinstance(exc, ReadFailure) else exc
            raise self._read_error(value, exc) from cause
        if end != len(value):
            raise RecordValidationError(
                f"{len(value) - end} trailing bytes after the record",
                detail={"schema_id": _SCHEMA_ID.unpack_from(value, 1)[0], "offset": end},
            )
        return record

    def _plan_for(self, value: bytes) -> _Plan:
        """The plan for a header not seen yet, or the framing error it deserves."""
        if value is None or len(value) < HEADER_SIZE:
            raise FramingError(
                "shorter than the 5-byte Confluent header",
                detail={"length": 0 if value is None else len(value)},
            )
        if value[0] != MAGIC:
            hint = " (looks like JSON)" if value[:1] in (b"{", b"[") else ""
            raise FramingError(
                f"magic byte is 0x{value[0]:02x}, expected 0x00{hint}", detail={"offset": 0}
            )
        schema_id: int = _SCHEMA_ID.unpack_from(value, 1)[0]
        plan = self._plans.get(schema_id) or self._plan(schema_id)
        self._by_header[bytes(value[:HEADER_SIZE])] = plan
        return plan

    def _read_error(self, value: bytes, exc: Exception) -> RecordError:
        """Classify a failure of a plan: the record's fault, with what is known."""
        schema_id: int = _SCHEMA_ID.unpack_from(value, 1)[0]
        writer = self._writers.get(schema_id, f"writer schema {schema_id}")
        if isinstance(exc, RecordError):  # an unusable writer schema's plan
            return exc
        if isinstance(exc, ReadFailure):
            return DecodeError(
                f"Avro binary does not decode with {writer}: {exc}",
                detail={"schema_id": schema_id, "offset": exc.offset},
            )
        if isinstance(exc, fastavro.read.SchemaResolutionError):
            return RecordValidationError(
                f"{writer} cannot be read as {self._describe(self.reader)}: {exc}",
                detail={"schema_id": schema_id},
            )
        # The boundary: whatever else escapes is this record's.
        return DecodeError(
            f"Avro binary does not decode: {type(exc).__name__}: {exc}",
            detail={"schema_id": schema_id},
        )

    def decode_batch(self, values: Sequence[bytes]) -> list[dict[str, Any] | RecordError]:
        """Decode many values; each bad one becomes its RecordError in place."""
        decode = self.decode
        out: list[dict[str, Any] | RecordError] = []
        append = out.append
        for value in values:
            try:
                append(decode(value))
            except RecordError as exc:
                append(exc)
        return out

    def _plan(self, schema_id: int) -> _Plan:
        """Build (and cache) the reader for a writer id seen for the first time.

        A writer schema that cannot be used gets a plan that refuses every record with
        :class:`UnusableSchemaError` naming the id, cached like any plan, so neither the
        registry nor the parser sees that id again.
        """
        try:
            writer = self.catalog.get(schema_id)
            if writer is None:
                writer = self._from_registry(schema_id)
            if writer.fingerprint == self.reader.fingerprint:
                plan = self._reader_plan  # same binary layout: the compiled reader
            else:
                plan = _evolution_plan(
                    writer.schema, self.reader.schema, decimals_as_float=self._decimals_as_float
                ) or _resolving_plan(writer.schema, self.reader.schema)
        except UnusableSchemaError as exc:
            plan = self._unusable_plan(schema_id, exc.reason)
        except (UnknownSchemaError, TransientError, FatalError):
            raise
        except (RecursionError, MemoryError) as exc:  # a writer schema nested too deeply
            plan = self._unusable_plan(schema_id, f"{type(exc).__name__} while compiling it")
        else:
            self._writers[schema_id] = self._describe(writer)
        self._plans[schema_id] = plan
        return plan

    def _unusable_plan(self, schema_id: int, why: str) -> _Plan:
        reason = f"writer schema {schema_id} cannot be used: {why}"
        self._writers[schema_id] = f"writer schema {schema_id} (unusable)"

        def refuse(value: bytes, pos: int) -> tuple[dict[str, Any], int]:
            raise UnusableSchemaError(reason, detail={"schema_id": schema_id})

        return refuse

    def _from_registry(self, schema_id: int) -> SchemaVersion:
        now = self._clock()
        if self._registry is None or self._unknown_until.get(schema_id, 0.0) > now:
            raise UnknownSchemaError(
                "schema id is not in the catalog"
                + ("" if self._registry is None else " nor in the registry"),
                detail={"schema_id": schema_id},
            )
        try:
            if self._registry_retry_s is None:
                raw = self._registry.fetch(schema_id)
            else:
                policy = retrying(max_total_s=self._registry_retry_s, what="schema registry")
                raw = policy(self._registry.fetch, schema_id)
        except UnusableSchemaError:
            raise
        except UnknownSchemaError:
            if len(self._unknown_until) >= _MAX_UNKNOWN_IDS:
                self._unknown_until.clear()
            self._unknown_until[schema_id] = now + UNKNOWN_ID_TTL_S
            raise
        try:
            parsed, fingerprint = parse_avro(raw, source=f"registry schema id {schema_id}")
        except ConfigError as exc:
            raise UnusableSchemaError(
                f"registry schema does not parse: {exc}", detail={"schema_id": schema_id}
            ) from None
        except RecursionError:
            raise UnusableSchemaError(
                "registry schema is nested too deeply to parse", detail={"schema_id": schema_id}
            ) from None
        return SchemaVersion("(registry)", 0, schema_id, parsed, raw, fingerprint)

    @staticmethod
    def _describe(sv: SchemaVersion) -> str:
        if sv.version:
            return f"writer schema {sv.schema_id} ({sv.subject} v{sv.version})"
        return f"writer schema {sv.schema_id} (from the registry)"

    # -- encoding -----------------------------------------------------------------------

    def encode(self, record: dict[str, Any], schema_id: int | None = None) -> bytes:
        """``record`` framed with ``schema_id`` (default: the reader schema, the latest).

        Validates first: RecordValidationError listing every bad field path, such as
        ``items[0].quantity: expected int, got str``, in ``detail["fields"]``. The check is
        :mod:`ingest.avro.check`, not fastavro's validator: that one misses decimal precision,
        names no paths and is slower.
        """
        sv = self.reader if schema_id is None else self.catalog.by_id(schema_id)
        checker = self._checkers.get(sv.schema_id)
        if checker is None:
            checker = self._checkers[sv.schema_id] = RecordChecker(sv.schema)
        problems = checker.problems(record)
        if problems:
            raise self._invalid(sv, problems, None)
        out = BytesIO()
        out.write(_HEADER.pack(MAGIC, sv.schema_id))
        try:
            fastavro.schemaless_writer(out, sv.schema, record)
        except Exception as exc:  # the checker missed something: fastavro's word is final
            raise self._invalid(sv, [], exc) from exc
        return out.getvalue()

    @staticmethod
    def _invalid(
        sv: SchemaVersion, problems: list[tuple[str, str]], cause: Exception | None
    ) -> RecordValidationError:
        if problems:
            text = "; ".join(f"{path}: {why}" for path, why in problems[:10])
            more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        else:
            text, more = f"{type(cause).__name__}: {cause}", ""
        return RecordValidationError(
            f"record does not match {sv.subject} v{sv.version}: {text}{more}",
            detail={"schema_id": sv.schema_id, "fields": [path for path, _ in problems]},
        )
