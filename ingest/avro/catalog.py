"""The schema catalog: every Avro schema the ingester knows, loaded once from ``schemas/``.

Layout: ``schemas/manifest.json`` lists each ``(subject, version)`` with a stable integer
schema id — the id written in the Confluent wire-format header — and the schema itself lives
in ``schemas/<subject>/v<version>.avsc``. Ids never change and are never reused; a change is
a new version. Loading is all-or-nothing: a missing, unparsable or unlisted file is a
:class:`~ingest.errors.ConfigError` naming the file, so a bad deploy fails at start and not
on the first record that happens to use the broken schema.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from ingest.errors import ConfigError, UnknownSchemaError

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one subject.

    ``schema`` is fastavro's parsed form (what its readers and writers want); ``raw`` the JSON
    as written (what mappings and the registry use); ``fingerprint`` the sha256 of the Parsing
    Canonical Form, equal for schemas that differ only in docs, defaults or formatting.
    """

    subject: str
    version: int
    schema_id: int
    schema: dict[str, Any] = field(repr=False, compare=False)
    raw: dict[str, Any] = field(repr=False, compare=False)
    fingerprint: str = field(compare=False)
    path: Path | None = field(default=None, compare=False)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _structure_problems(node: Any) -> Iterator[str]:
    """What fastavro lets through but Avro forbids: records without fields, bad names."""
    if isinstance(node, list):
        for branch in node:
            yield from _structure_problems(branch)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in ("record", "error", "enum", "fixed"):
        name = node.get("name")
        if not isinstance(name, str) or not all(_NAME.match(p) for p in name.split(".")):
            yield f"{kind} name {name!r} is not a valid Avro name"
    if kind in ("record", "error"):
        fields = node.get("fields")
        if not isinstance(fields, list):
            yield f"record {node.get('name')!r} has no 'fields' list"
            return
        for f in fields:
            if not isinstance(f, dict) or not _NAME.match(str(f.get("name", ""))):
                yield f"record {node.get('name')!r} has a field without a valid name"
            else:
                yield from _structure_problems(f.get("type"))
        return
    for key in ("type", "items", "values"):
        if isinstance(node.get(key), dict | list):
            yield from _structure_problems(node[key])


def parse_avro(raw: Any, *, source: str) -> tuple[dict[str, Any], str]:
    """Parse a schema JSON value: (fastavro parsed schema, sha256 fingerprint).

    Each call gets its own named-type table, so two versions that both define ``Order`` do
    not collide. Raises ConfigError mentioning ``source``.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"schema error in {source}: top level must be a JSON object (a record)")
    problem = next(_structure_problems(raw), None)
    if problem:
        raise ConfigError(f"schema error in {source}: {problem}")
    try:
        parsed: dict[str, Any] = fastavro.parse_schema(raw, named_schemas={})  # type: ignore[assignment]
        canonical = to_parsing_canonical_form(raw)
    except Exception as exc:  # fastavro raises many types (SchemaParseException, KeyError, ...)
        detail = " ".join(str(exc).split())  # one line, whatever fastavro put in it
        raise ConfigError(f"schema error in {source}: {type(exc).__name__}: {detail}") from exc
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
    return parsed, fingerprint


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"schema error: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"schema error: cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"schema error in {path}: not valid JSON: {exc}") from None


def _positive_int(entry: dict[str, Any], key: str, where: str) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 2**31:
        raise ConfigError(f"schema error in {where}: {key!r} must be an integer in 1..2^31-1")
    return value


def _manifest_entries(manifest_path: Path) -> list[tuple[str, int, int]]:
    data = _load_json(manifest_path)
    entries = data.get("schemas") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f'schema error in {manifest_path}: expected {{"schemas": [...]}}')
    result: list[tuple[str, int, int]] = []
    for n, entry in enumerate(entries):
        where = f"{manifest_path}: schemas[{n}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"schema error in {where}: expected an object")
        subject = entry.get("subject")
        if not isinstance(subject, str) or not subject or "/" in subject or subject[0] == ".":
            raise ConfigError(f"schema error in {where}: 'subject' must be a plain name")
        version = _positive_int(entry, "version", where)
        schema_id = _positive_int(entry, "id", where)
        result.append((subject, version, schema_id))
    return result


class SchemaCatalog:
    """Schema versions by id and by subject; immutable after :meth:`load`."""

    def __init__(self, versions: list[SchemaVersion]) -> None:
        self._by_id: dict[int, SchemaVersion] = {}
        self._by_subject: dict[str, list[SchemaVersion]] = {}
        for sv in versions:
            if sv.schema_id in self._by_id:
                other = self._by_id[sv.schema_id]
                raise ConfigError(
                    f"schema error: id {sv.schema_id} is used by {other.subject} v{other.version}"
                    f" and {sv.subject} v{sv.version}"
                )
            known = self._by_subject.setdefault(sv.subject, [])
            if any(k.version == sv.version for k in known):
                raise ConfigError(f"schema error: {sv.subject} v{sv.version} is listed twice")
            self._by_id[sv.schema_id] = sv
            known.append(sv)
        for known in self._by_subject.values():
            known.sort(key=lambda s: s.version)

    @classmethod
    def load(cls, directory: Path) -> SchemaCatalog:
        """Read the manifest and every schema file it lists; ConfigError naming a bad file.

        Called once at start. An ``.avsc`` file that the manifest does not list is refused
        too: it would otherwise be silently ignored and its records dead-lettered as unknown.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError(f"schema error: schemas directory {directory} does not exist")
        manifest_path = directory / MANIFEST_NAME
        versions: list[SchemaVersion] = []
        listed: set[Path] = set()
        for subject, version, schema_id in _manifest_entries(manifest_path):
            path = directory / subject / f"v{version}.avsc"
            listed.add(path.resolve())
            raw = _load_json(path)
            parsed, fingerprint = parse_avro(raw, source=str(path))
            versions.append(
                SchemaVersion(subject, version, schema_id, parsed, raw, fingerprint, path)
            )
        catalog = cls(versions)
        for path in sorted(directory.rglob("*.avsc")):
            if path.resolve() not in listed:
                raise ConfigError(f"schema error: {path} is not listed in {manifest_path}")
        return catalog

    def by_id(self, schema_id: int) -> SchemaVersion:
        """The version with this wire-format id; UnknownSchemaError (a record error) if none."""
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(
                "schema id is not in the catalog", detail={"schema_id": schema_id}
            ) from None

    def get(self, schema_id: int) -> SchemaVersion | None:
        """The version with this id, or None; the decoder's lookup without an exception."""
        return self._by_id.get(schema_id)

    def latest(self, subject: str) -> SchemaVersion:
        """The newest version of ``subject``: the reader schema and the producer's writer."""
        return self.versions(subject)[-1]

    def versions(self, subject: str) -> list[SchemaVersion]:
        """Every version of ``subject``, oldest first; ConfigError for an unknown subject."""
        try:
            return list(self._by_subject[subject])
        except KeyError:
            known = ", ".join(sorted(self._by_subject)) or "none"
            raise ConfigError(f"unknown schema subject {subject!r} (known: {known})") from None

    def subjects(self) -> list[str]:
        """Subject names, sorted."""
        return sorted(self._by_subject)
