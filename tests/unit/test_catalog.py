"""The schema catalog loads all-or-nothing and names the file at fault."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ingest.avro.catalog import SchemaCatalog
from ingest.errors import ConfigError, UnknownSchemaError

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

PERSON_V1: dict[str, Any] = {
    "type": "record",
    "name": "Person",
    "fields": [{"name": "name", "type": "string"}],
}
PERSON_V2: dict[str, Any] = {
    "type": "record",
    "name": "Person",
    "fields": [
        {"name": "name", "type": "string"},
        {"name": "age", "type": ["null", "int"], "default": None},
    ],
}


def write_catalog(
    root: Path,
    files: dict[str, Any],
    entries: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``files`` (relative path -> JSON value or raw text) and a manifest."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    if entries is not None:
        (root / "manifest.json").write_text(json.dumps({"schemas": entries}))
    return root


def people(root: Path, **overrides: Any) -> Path:
    files: dict[str, Any] = {"people/v1.avsc": PERSON_V1, "people/v2.avsc": PERSON_V2}
    files.update(overrides)
    return write_catalog(
        root,
        files,
        [
            {"subject": "people", "version": 1, "id": 10},
            {"subject": "people", "version": 2, "id": 11},
        ],
    )


def test_repo_schemas_load_with_orders_in_two_versions() -> None:
    catalog = SchemaCatalog.load(REPO_SCHEMAS)
    assert "orders" in catalog.subjects()
    v1, v2 = catalog.versions("orders")
    assert (v1.version, v1.schema_id, v2.version, v2.schema_id) == (1, 1, 2, 2)
    assert catalog.latest("orders") is v2
    assert catalog.by_id(1) is v1
    assert len(v1.raw["fields"]) >= 12
    assert {f["name"] for f in v2.raw["fields"]} - {f["name"] for f in v1.raw["fields"]} == {
        "priority",
        "coupon_code",
    }


def test_v2_only_adds_fields_with_defaults() -> None:
    """Backward compatibility: every field v2 adds has a default, none is removed."""
    catalog = SchemaCatalog.load(REPO_SCHEMAS)
    v1, v2 = ({f["name"]: f for f in sv.raw["fields"]} for sv in catalog.versions("orders"))
    assert set(v1) <= set(v2)
    assert all("default" in v2[name] for name in set(v2) - set(v1))
    assert all(v1[name]["type"] == v2[name]["type"] for name in v1)


def test_fingerprint_is_sha256_of_canonical_form(tmp_path: Path) -> None:
    """Docs and formatting do not change the fingerprint; a new field does."""
    documented = dict(PERSON_V1, doc="someone")
    catalog = SchemaCatalog.load(
        write_catalog(
            tmp_path,
            {"a/v1.avsc": PERSON_V1, "b/v1.avsc": documented, "c/v1.avsc": PERSON_V2},
            [
                {"subject": "a", "version": 1, "id": 1},
                {"subject": "b", "version": 1, "id": 2},
                {"subject": "c", "version": 1, "id": 3},
            ],
        )
    )
    a, b, c = (catalog.by_id(i).fingerprint for i in (1, 2, 3))
    assert re.fullmatch(r"[0-9a-f]{64}", a)
    assert a == b
    assert a != c


def test_versions_are_sorted_and_parsed(tmp_path: Path) -> None:
    root = write_catalog(
        tmp_path,
        {"people/v1.avsc": PERSON_V1, "people/v2.avsc": PERSON_V2},
        [
            {"subject": "people", "version": 2, "id": 11},
            {"subject": "people", "version": 1, "id": 10},
        ],
    )
    catalog = SchemaCatalog.load(root)
    assert [sv.version for sv in catalog.versions("people")] == [1, 2]
    assert catalog.latest("people").schema["__fastavro_parsed"] is True
    assert catalog.latest("people").raw == PERSON_V2


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        pytest.param("{not json", "not valid JSON", id="bad-json"),
        pytest.param(
            {"type": "record", "name": "P", "fields": [{"name": "x", "type": "nope"}]},
            "nope",
            id="unknown-type",
        ),
        pytest.param({"type": "record", "name": "P"}, "schema error", id="no-fields"),
        pytest.param([1, 2], "must be a JSON object", id="not-an-object"),
        pytest.param(
            {"type": "record", "name": "1P", "fields": []}, "not a valid Avro name", id="bad-name"
        ),
    ],
)
def test_a_bad_schema_file_is_refused_naming_it(tmp_path: Path, content: Any, expect: str) -> None:
    root = people(tmp_path, **{"people/v2.avsc": content})
    with pytest.raises(ConfigError) as info:
        SchemaCatalog.load(root)
    message = str(info.value)
    assert str(root / "people" / "v2.avsc") in message
    assert expect in message
    assert "\n" not in message


def test_a_missing_schema_file_is_named(tmp_path: Path) -> None:
    root = write_catalog(
        tmp_path, {"people/v1.avsc": PERSON_V1}, [{"subject": "people", "version": 2, "id": 3}]
    )
    with pytest.raises(ConfigError, match=r"people/v2\.avsc does not exist"):
        SchemaCatalog.load(root)


def test_an_unlisted_schema_file_is_refused(tmp_path: Path) -> None:
    root = people(tmp_path, **{"people/v3.avsc": PERSON_V2})
    with pytest.raises(ConfigError, match=r"v3\.avsc is not listed in .*manifest\.json"):
        SchemaCatalog.load(root)


def test_a_missing_manifest_is_named(tmp_path: Path) -> None:
    write_catalog(tmp_path, {"people/v1.avsc": PERSON_V1})
    with pytest.raises(ConfigError, match=r"manifest\.json does not exist"):
        SchemaCatalog.load(tmp_path)


def test_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        SchemaCatalog.load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("entries", "expect"),
    [
        pytest.param(
            [
                {"subject": "people", "version": 1, "id": 5},
                {"subject": "people", "version": 2, "id": 5},
            ],
            "id 5 is used by people v1 and people v2",
            id="duplicate-id",
        ),
        pytest.param(
            [
                {"subject": "people", "version": 1, "id": 5},
                {"subject": "people", "version": 1, "id": 6},
            ],
            "people v1 is listed twice",
            id="duplicate-version",
        ),
        pytest.param([{"subject": "people", "version": 1, "id": 0}], "'id' must be", id="zero-id"),
        pytest.param(
            [{"subject": "people", "version": "1", "id": 1}], "'version' must be", id="str-version"
        ),
        pytest.param([{"subject": "../x", "version": 1, "id": 1}], "'subject'", id="path-subject"),
        pytest.param(
            [{"subject": "people", "version": 1, "id": 2**31}], "'id' must be", id="id-too-big"
        ),
    ],
)
def test_manifest_problems_are_config_errors(
    tmp_path: Path, entries: list[dict[str, Any]], expect: str
) -> None:
    root = write_catalog(
        tmp_path, {"people/v1.avsc": PERSON_V1, "people/v2.avsc": PERSON_V2}, entries
    )
    with pytest.raises(ConfigError, match=re.escape(expect)):
        SchemaCatalog.load(root)


def test_unknown_id_is_an_unknown_schema_record_error(tmp_path: Path) -> None:
    catalog = SchemaCatalog.load(people(tmp_path))
    with pytest.raises(UnknownSchemaError) as info:
        catalog.by_id(99)
    assert info.value.detail == {"schema_id": 99}
    assert info.value.stage == "schema"
    assert catalog.get(99) is None
    assert catalog.get(10) is catalog.by_id(10)


def test_unknown_subject_names_the_known_ones(tmp_path: Path) -> None:
    catalog = SchemaCatalog.load(people(tmp_path))
    with pytest.raises(ConfigError, match=r"unknown schema subject 'orders' \(known: people\)"):
        catalog.latest("orders")
