"""Durable deletes, the pure parts: the shared check at the reindex's index copy, the
index's own delete retention (``gc_deletes``) and its bounds, and the backfill's refusal to
reach back past the ledger's memory of deletes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from backfill.reindex.fills import StreamFiller
from backfill.reindex.plan import BULK_LOAD, FillJob, bulk_load_definition, bulk_load_settings
from backfill.runner import _check_delete_retention
from ingest.avro.catalog import SchemaCatalog
from ingest.errors import ConfigError
from ingest.search.indices import keep_deletes
from ingest.search.mapping import index_definition
from ingest.settings import IndexSettings, Settings, StreamSettings, parse_settings, time_value_s

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
STREAM = StreamSettings(name="orders", topic="t", subject="orders", alias="orders")


class CopyClient:
    """The old index (hits) and the bulk endpoint of the new one, in memory."""

    def __init__(self, hits: list[tuple[str, int]]) -> None:
        self.hits = hits
        self.written: list[tuple[str, int]] = []

    def refresh(self, index: str) -> None:
        return None

    def scan(self, index: str, *, size: int = 1000) -> Iterator[dict[str, Any]]:
        for doc_id, version in self.hits:
            yield {"_id": doc_id, "_version": version, "_source": {"order_id": doc_id}}

    def bulk(self, body: bytes) -> dict[str, Any]:
        items = []
        for line in body.splitlines():
            meta = orjson.loads(line).get("index")
            if meta is not None:
                self.written.append((meta["_id"], meta["version"]))
                items.append({"index": {"_id": meta["_id"], "status": 201}})
        return {"errors": False, "items": items}


class Markers:
    def __init__(self, markers: Mapping[str, int]) -> None:
        self.markers = dict(markers)
        self.queries: list[list[str]] = []

    def delete_markers(self, alias: str, doc_ids: Sequence[str]) -> dict[str, int]:
        assert alias == "orders"
        self.queries.append(list(doc_ids))
        return {i: v for i, v in self.markers.items() if i in doc_ids}


def test_the_copy_from_the_old_index_drops_documents_a_recorded_delete_supersedes() -> None:
    """The reindex's ``--source index`` fill writes with the sink directly (no batch writer),
    so it runs the same check: a copy of a document deleted since the scroll saw it stays
    out of the new index. (The Kafka and file fills go through the batch writer.)"""
    client = CopyClient([("a", 3), ("b", 4), ("c", 9)])
    ledger = Markers({"a": 5, "c": 2})
    settings = SimpleNamespace(
        runtime=SimpleNamespace(max_retry_s=5.0), search=SimpleNamespace(max_bulk_bytes=10 << 20)
    )
    components = SimpleNamespace(search=client, ledger=ledger, settings=settings)
    filler = StreamFiller(components, STREAM, run_id=None)
    job = FillJob("index", "orders-v2", "orders-v1", {}, {})
    result = filler.fill(job, lambda _r: None)
    assert client.written == [("b", 4), ("c", 9)]
    assert (result.read, result.indexed, result.conflicts) == (3, 2, 1)
    assert ledger.queries == [["a", "b", "c"]]


# -- how long the index remembers a delete ---------------------------------------------------


def _settings(max_retry_s: float, **index: Any) -> Settings:
    return parse_settings(
        {
            "runtime": {"max_retry_s": max_retry_s},
            "streams": [
                {"name": "orders", "topic": "t", "subject": "orders", "alias": "o", "index": index}
            ],
        }
    )


@pytest.mark.parametrize(
    ("max_retry_s", "index", "expected_s"),
    [
        pytest.param(300, {}, 3600, id="default: an hour"),
        pytest.param(3000, {}, 9000, id="default: 3 x max_retry_s when longer"),
        pytest.param(1, {"settings": {"gc_deletes": "2s"}}, 2, id="own setting at 2 x"),
        pytest.param(300, {"settings": {"index.gc_deletes": "2h"}}, 7200, id="dotted"),
        pytest.param(300, {"settings": {"index": {"gc_deletes": "1d"}}}, 86400, id="nested"),
    ],
)
def test_live_indices_keep_deletes_past_twice_max_retry_s(
    max_retry_s: float, index: dict[str, Any], expected_s: float
) -> None:
    settings = _settings(max_retry_s, **index)
    assert settings.gc_deletes_s(settings.streams[0]) == expected_s


@pytest.mark.parametrize(
    ("max_retry_s", "value", "problem"),
    [
        pytest.param(300, "60s", "shorter than 2 x runtime.max_retry_s (600s)", id="too short"),
        pytest.param(300, "10", "not a time value", id="no unit"),
    ],
)
def test_a_gc_deletes_shorter_than_the_retry_window_is_refused(
    max_retry_s: float, value: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match="config error") as caught:
        _settings(max_retry_s, settings={"gc_deletes": value})
    message = str(caught.value)
    assert problem in message and "\n" not in message


def test_the_index_definition_carries_the_delete_retention_unless_the_stream_sets_it() -> None:
    reader = SchemaCatalog.load(SCHEMAS).latest("orders")
    assert index_definition(reader, IndexSettings(), gc_deletes_s=3600)["settings"][
        "gc_deletes"
    ] == ("3600000ms")
    own = IndexSettings(settings={"index.gc_deletes": "2h"})
    body = index_definition(reader, own, gc_deletes_s=3600)["settings"]
    assert "gc_deletes" not in body and body["index.gc_deletes"] == "2h"
    assert "gc_deletes" not in index_definition(reader, IndexSettings())["settings"]


def test_the_bulk_load_never_keeps_deletes_shorter_than_the_live_index() -> None:
    assert bulk_load_settings(None) == BULK_LOAD
    assert bulk_load_settings("3600000ms")["gc_deletes"] == "24h"
    assert bulk_load_settings("48h")["gc_deletes"] == "48h"
    body, restore = bulk_load_definition(
        {"settings": {"gc_deletes": "30h", "refresh_interval": "1s"}}, IndexSettings()
    )
    assert body["settings"]["index"]["gc_deletes"] == "30h"
    assert restore["gc_deletes"] == "30h"


class SettingsClient:
    def __init__(self, index_settings: dict[str, Any]) -> None:
        self.index_settings = index_settings
        self.puts: list[Mapping[str, Any]] = []

    def get_settings(self, index: str) -> dict[str, Any]:
        return {"index": self.index_settings}

    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None:
        self.puts.append(settings)

    def get_alias(self, alias: str) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def create_index(self, name: str, body: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("current", "raised"),
    [
        pytest.param({}, True, id="server default 60s"),
        pytest.param({"gc_deletes": "10m"}, True, id="shorter"),
        pytest.param({"gc_deletes": "2h"}, False, id="longer: never lowered"),
    ],
)
def test_an_existing_live_index_has_its_delete_retention_raised(
    current: dict[str, Any], raised: bool
) -> None:
    client = SettingsClient(current)
    keep_deletes(client, "orders-v1", 3600)
    assert client.puts == ([{"index": {"gc_deletes": "3600000ms"}}] if raised else [])


def test_time_values() -> None:
    assert [time_value_s(v) for v in ("500ms", "90s", "2m", "1.5h", "1d")] == [
        0.5,
        90,
        120,
        5400,
        86400,
    ]


# -- how far back a backfill may reach --------------------------------------------------------


def test_a_backfill_window_older_than_the_delete_retention_is_refused() -> None:
    settings = parse_settings({"ledger": {"delete_marker_retention_s": 86400}})
    now_s = 1_800_000_000.0
    _check_delete_retention(settings, int((now_s - 3600) * 1000), now_s=now_s)
    with pytest.raises(ConfigError, match="delete_marker_retention_s = 86400s") as caught:
        _check_delete_retention(settings, int((now_s - 2 * 86400) * 1000), now_s=now_s)
    assert "start later or raise the retention" in str(caught.value)
