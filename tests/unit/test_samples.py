"""Sample orders are reproducible per seed, realistic, and valid for their schema version."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from decimal import Decimal
from pathlib import Path

import pytest
from fastavro.validation import validate

from ingest.avro.catalog import SchemaCatalog
from ingest.dev.samples import STATUSES, V2_FIELDS, millis, next_version, sample_orders, to_version

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load(SCHEMAS)


def take(seed: int, n: int, version: int = 2) -> list[dict]:
    return list(itertools.islice(sample_orders(seed, version=version), n))


def test_same_seed_same_orders_other_seed_other_orders() -> None:
    assert take(7, 50) == take(7, 50)
    assert take(7, 50) != take(8, 50)


def test_orders_are_valid_for_v2_and_v1_shapes_for_v1(catalog: SchemaCatalog) -> None:
    v1, v2 = catalog.versions("orders")
    for order in take(1, 300):
        assert validate(order, v2.schema)
    for order in take(1, 100, version=1):
        assert not set(V2_FIELDS) & set(order)
        assert validate(order, v1.schema)
    assert take(1, 20, version=1) == [to_version(o, 1) for o in take(1, 20)]


def test_orders_look_real() -> None:
    orders = take(3, 500)
    assert len({o["order_id"] for o in orders}) == 500
    assert {o["status"] for o in orders} == {"PENDING"}
    for order in orders:
        subtotal = sum(Decimal(str(i["unit_price"])) * i["quantity"] for i in order["items"])
        discount = Decimal(str(order["discount"] or 0))
        assert order["total_amount"] == (subtotal - discount).quantize(Decimal("0.01"))
        assert order["total_amount"].as_tuple().exponent == -2
        assert order["updated_at"] >= order["created_at"]
        assert order["created_at"].tzinfo is dt.UTC
        assert order["created_at"].microsecond % 1000 == 0
        assert 1 <= len(order["items"]) <= 4
        assert len(order["currency"]) == 3
    created = [o["created_at"] for o in orders]
    assert created == sorted(created)
    # Optional fields are sometimes set, sometimes not.
    assert any(o["discount"] is None for o in orders)
    assert any(o["discount"] is not None for o in orders)
    assert any(o["priority"] for o in orders)
    assert any(o["tags"] for o in orders)


def test_next_version_is_strictly_newer_and_moves_status_on() -> None:
    rng = random.Random(5)
    order = take(2, 1)[0]
    for _ in range(20):
        later = next_version(rng, order)
        assert later["order_id"] == order["order_id"]
        assert later["updated_at"] > order["updated_at"]
        old, new = STATUSES.index(order["status"]), STATUSES.index(later["status"])
        assert new > old or order["status"] in ("DELIVERED", "CANCELLED")
        order = later


def test_millis_is_epoch_milliseconds() -> None:
    assert millis(dt.datetime(1970, 1, 1, 0, 0, 1, 5000, tzinfo=dt.UTC)) == 1005


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="not 3"):
        to_version(take(1, 1)[0], 3)
