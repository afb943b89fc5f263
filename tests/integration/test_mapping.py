"""Derived mappings on the real search server: accepted, strict, diffed as it reports them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from ingest.avro.catalog import SchemaCatalog
from ingest.dev.samples import sample_orders
from ingest.pipeline.transform import Transformer
from ingest.search.client import SearchClient, connect_search
from ingest.search.mapping import derive_mapping, diff_mappings, index_definition
from ingest.settings import IndexSettings, SearchSettings, StreamSettings
from ingest.types import RawRecord

pytestmark = pytest.mark.integration

CATALOG = SchemaCatalog.load(Path(__file__).resolve().parents[2] / "schemas")
STREAM = StreamSettings(
    name="orders",
    topic="orders",
    subject="orders",
    alias="orders",
    id_field="order_id",
    version_field="updated_at",
)


@pytest.fixture
def client(search_url: str) -> Iterator[SearchClient]:
    with connect_search(SearchSettings(url=search_url, request_timeout_s=10)) as c:
        yield c


def bulk_body(index: str, docs: list[bytes], ids: list[str]) -> bytes:
    lines: list[bytes] = []
    for doc_id, doc in zip(ids, docs, strict=True):
        lines.append(orjson.dumps({"index": {"_index": index, "_id": doc_id}}))
        lines.append(doc)
    return b"\n".join(lines) + b"\n"


def test_orders_index_accepts_transformed_orders_and_diffs_clean(
    client: SearchClient, unique: str
) -> None:
    reader = CATALOG.latest("orders")
    client.create_index(unique, index_definition(reader, IndexSettings(replicas=0)))
    try:
        transformer = Transformer(STREAM)
        actions = [
            transformer.to_action(order, RawRecord("orders", 0, n, None, b""))
            for n, order in enumerate(itertools.islice(sample_orders(21), 100))
        ]
        assert all(a is not None for a in actions)
        docs = [a.body for a in actions if a is not None and a.body is not None]
        ids = [a.doc_id for a in actions if a is not None]
        result = client.bulk(bulk_body(unique, docs, ids))
        assert result["errors"] is False, result["items"][:2]
        client.refresh(unique)
        assert client.count(unique) == 100

        # After indexing, map keys appear under ``tags``; defaults are left out: no diff.
        live = client.get_mapping(unique)
        assert diff_mappings(live, derive_mapping(reader)).empty
        older = diff_mappings(live, derive_mapping(CATALOG.by_id(1)))
        assert older.removed == ["coupon_code", "priority"]

        # dynamic: strict refuses a field the schema does not have.
        stray = orjson.dumps({"order_id": "x", "not_in_schema": 1})
        result = client.bulk(bulk_body(unique, [stray], ["x"]))
        item = result["items"][0]["index"]
        assert item["status"] == 400
        assert "strict" in item["error"]["type"]
    finally:
        client.delete_index(unique, missing_ok=True)
