"""BulkSink on the real osmem-server through both client libraries.

The same outcomes the unit tests check against a fake — indexed, conflict, rejected,
deleted — checked against a real server, so the fake cannot drift from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from ingest.search.bulk import BulkSink
from ingest.search.client import SearchClient
from ingest.types import IndexAction, RawRecord
from tests.support.search_fixtures import *  # noqa: F403 (fixtures)

pytestmark = pytest.mark.integration


MAPPING = {
    "dynamic": "strict",
    "properties": {
        "order_id": {"type": "keyword"},
        "qty": {"type": "long"},
        "note": {"type": "text"},
    },
}


def order(doc_id: str, version: int, **fields: Any) -> IndexAction:
    body = orjson.dumps({"order_id": doc_id, "qty": version} | fields)
    record = RawRecord(topic="orders", partition=0, offset=version, key=None, value=b"")
    return IndexAction("index", doc_id, version, body, record)


def delete(doc_id: str, version: int) -> IndexAction:
    record = RawRecord(topic="orders", partition=0, offset=version, key=None, value=None)
    return IndexAction("delete", doc_id, version, None, record)


def create(client: SearchClient, name: str, drop: list[str], mapping: dict[str, Any]) -> str:
    drop.append(name)
    client.create_index(
        name,
        {"settings": {"number_of_shards": 1, "number_of_replicas": 0}, "mappings": mapping},
    )
    return name


def versions(client: SearchClient, index: str) -> dict[str, int]:
    client.refresh(index)
    return {hit["_id"]: hit["_version"] for hit in client.scan(index)}


@pytest.fixture
def index(search_client: SearchClient, unique: str, drop_indices: list[str]) -> Iterator[str]:
    yield create(search_client, unique, drop_indices, MAPPING)


def test_external_versions_conflicts_rejections_and_deletes(
    search_client: SearchClient, index: str
) -> None:
    """A stream's life on one index: writes, replays, stale versions, bad docs, deletes."""
    sink = BulkSink(search_client, max_retry_s=5, retry_initial_s=0.01)

    first = sink.write([order("a", 10), order("b", 10), order("c", 10)], [index])
    assert (first.indexed, first.conflicts, first.rejected) == (3, 0, [])

    # A replay of the same versions and an older one: already applied, not errors.
    replay = sink.write([order("a", 10), order("b", 5), order("c", 11, note="newer")], [index])
    assert (replay.indexed, replay.conflicts, replay.rejected) == (1, 2, [])

    # Documents that break the strict mapping are rejected with the server's reason.
    bad = sink.write(
        [order("d", 1, unknown_field=1), order("e", 1, qty="not a number"), order("f", 1)],
        [index],
    )
    assert bad.indexed == 1
    reasons = {action.doc_id: reason for action, reason in bad.rejected}
    assert sorted(reasons) == ["d", "e"]
    assert reasons["d"].startswith("strict_dynamic_mapping_exception: ")
    assert "unknown_field" in reasons["d"]
    assert reasons["e"].startswith("mapper_parsing_exception: ")
    assert f"[index {index}]" in reasons["e"]

    # Deletes carry external versions too: an older delete loses, a newer one wins,
    # and deleting what is not there is success.
    deletes = sink.write([delete("a", 9), delete("b", 11), delete("zz", 1)], [index])
    assert (deletes.deleted, deletes.conflicts) == (2, 1)

    assert versions(search_client, index) == {"a": 10, "c": 11, "f": 1}
    assert search_client.count(index) == 3
    doc = search_client.get(index, "c")
    assert doc is not None
    assert doc["_source"] == {"order_id": "c", "qty": 11, "note": "newer"}

    # A delete is a version too: re-indexing b at its old version stays a conflict.
    stale = sink.write([order("b", 10)], [index])
    assert (stale.indexed, stale.conflicts) == (0, 1)


def test_write_through_alias(
    search_client: SearchClient, unique: str, drop_indices: list[str]
) -> None:
    """The target may be an alias with a write index."""
    physical = create(search_client, unique + "_v1", drop_indices, MAPPING)
    search_client.update_aliases(
        [{"add": {"index": physical, "alias": unique, "is_write_index": True}}]
    )
    result = BulkSink(search_client, max_retry_s=5).write([order("a", 1)], [unique])
    assert result.indexed == 1
    assert versions(search_client, physical) == {"a": 1}


def test_dual_write_reports_a_rejection_by_one_target(
    search_client: SearchClient, unique: str, drop_indices: list[str]
) -> None:
    """During a reindex both indices get every write; a doc only the new one refuses is
    reported (once) while the old index still gets it."""
    old = create(search_client, unique + "_v1", drop_indices, MAPPING)
    new_mapping = {
        "dynamic": "strict",
        "properties": MAPPING["properties"] | {"qty": {"type": "integer"}},
    }
    new = create(search_client, unique + "_v2", drop_indices, new_mapping)
    sink = BulkSink(search_client, max_retry_s=5)
    result = sink.write([order("small", 1), order("huge", 1, qty=2**40)], [old, new])
    assert result.indexed == 3
    ((action, reason),) = result.rejected
    assert action.doc_id == "huge"
    assert f"[index {new}]" in reason
    assert f"[index {old}]" not in reason
    assert versions(search_client, old) == {"small": 1, "huge": 1}
    assert versions(search_client, new) == {"small": 1}


def test_batches_over_the_request_size_are_split(search_client: SearchClient, index: str) -> None:
    """A batch bigger than max_request_bytes is written in several requests, all of it."""
    actions = [order(f"o{n}", n + 1, note="x" * 400) for n in range(60)]
    result = BulkSink(search_client, max_retry_s=5, max_request_bytes=8 * 1024).write(
        actions, [index]
    )
    assert result.indexed == 60
    assert len(versions(search_client, index)) == 60
