"""Deterministic, realistic ``orders`` records for tests, benchmarks and ``ingest produce``.

Everything comes from one ``random.Random(seed)``, so a seed names a data set: the same seed
gives the same orders on every machine and Python version (only ``Random``'s documented
reproducible methods are used). Records are valid for the latest ``orders`` schema (v2);
``version=1`` leaves out the fields v2 added. Timestamps are UTC ``datetime`` values with
millisecond precision and amounts are ``Decimal`` with two places, so a record survives an
Avro round trip unchanged and compares equal to what the codec decodes.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

STATUSES = ("PENDING", "PAID", "SHIPPED", "DELIVERED", "CANCELLED")
#: Fields that ``orders`` v2 added; dropped for ``version=1``.
V2_FIELDS = ("priority", "coupon_code")

_START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_CENTS = Decimal("0.01")
_CHANNELS = ("web", "web", "web", "app", "app", "store", "phone")
_CURRENCIES = ("EUR", "EUR", "USD", "GBP", "SEK", "CHF")
_CITIES = (
    ("Berlin", "DE", "10115"),
    ("Hamburg", "DE", "20095"),
    ("Paris", "FR", "75001"),
    ("Lyon", "FR", "69001"),
    ("Amsterdam", "NL", "1012"),
    ("Madrid", "ES", "28001"),
    ("Stockholm", "SE", "111 20"),
    ("London", "GB", "EC1A 1BB"),
    ("New York", "US", "10001"),
    ("Zürich", "CH", "8001"),
)
_STREETS = ("Main St", "Hauptstraße", "Rue de la Paix", "Kerkstraat", "Calle Mayor", "Storgatan")
_PRODUCTS = ("TSHIRT", "MUG", "BOOK", "LAMP", "CHAIR", "SOCKS", "PEN", "BAG", "CABLE", "PLANT")
_NOTES = ("leave at the door", "gift wrap please", "call before delivery", "fragile")
_TAG_KEYS = ("campaign", "source", "segment", "ab_test")
_TAG_VALUES = ("spring", "newsletter", "vip", "returning", "b", "a", "partner")


def _millis(value: dt.datetime) -> dt.datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def make_order(rng: random.Random, created_at: dt.datetime, *, version: int = 2) -> dict[str, Any]:
    """One new order created at ``created_at``, drawing every choice from ``rng``."""
    items: list[dict[str, Any]] = [
        {
            "sku": f"{rng.choice(_PRODUCTS)}-{rng.randrange(1000):03d}",
            "quantity": rng.randint(1, 5),
            "unit_price": rng.randrange(199, 19999) / 100,
        }
        for _ in range(rng.randint(1, 4))
    ]
    subtotal = sum((Decimal(str(i["unit_price"])) * i["quantity"] for i in items), Decimal(0))
    discount = (
        round(float(subtotal) * rng.choice((0.05, 0.1, 0.2)), 2) if rng.random() < 0.2 else None
    )
    total = (subtotal - Decimal(str(discount or 0))).quantize(_CENTS)
    city, country, postal = rng.choice(_CITIES)
    created_at = _millis(created_at)
    order: dict[str, Any] = {
        "order_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "customer_id": f"cust-{rng.randrange(1, 50_000):06d}",
        "created_at": created_at,
        "updated_at": created_at,
        "status": "PENDING",
        "total_amount": total,
        "currency": rng.choice(_CURRENCIES),
        "discount": discount,
        "items": items,
        "shipping_address": {
            "street": f"{rng.randint(1, 200)} {rng.choice(_STREETS)}",
            "city": city,
            "postal_code": postal,
            "country": country,
        },
        "tags": {k: rng.choice(_TAG_VALUES) for k in rng.sample(_TAG_KEYS, rng.randint(0, 2))},
        "channel": rng.choice(_CHANNELS),
        "notes": rng.choice(_NOTES) if rng.random() < 0.15 else None,
        "priority": rng.random() < 0.1,
        "coupon_code": f"SAVE{rng.choice((5, 10, 15, 20))}" if rng.random() < 0.1 else None,
    }
    return to_version(order, version)


def next_version(rng: random.Random, order: dict[str, Any]) -> dict[str, Any]:
    """The same order later on: a strictly newer ``updated_at`` and a moved-on status.

    ``updated_at`` is the stream's version field, so the re-sent record must win against
    the one before it.
    """
    later = dict(order)
    later["updated_at"] = order["updated_at"] + dt.timedelta(milliseconds=rng.randint(1, 3_600_000))
    current = STATUSES.index(order["status"])
    if order["status"] in ("DELIVERED", "CANCELLED"):
        later["notes"] = rng.choice(_NOTES)
    elif rng.random() < 0.1:
        later["status"] = "CANCELLED"
    else:
        later["status"] = STATUSES[current + 1]
    return later


def to_version(order: dict[str, Any], version: int) -> dict[str, Any]:
    """``order`` shaped for schema ``version`` of ``orders`` (1 drops the v2 fields)."""
    if version == 2:
        return order
    if version == 1:
        return {k: v for k, v in order.items() if k not in V2_FIELDS}
    raise ValueError(f"orders has versions 1 and 2, not {version}")


def sample_orders(seed: int, *, version: int = 2) -> Iterator[dict[str, Any]]:
    """An endless stream of new orders, a few seconds apart, reproducible for ``seed``."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    now = _START
    while True:
        now += dt.timedelta(milliseconds=rng.randint(1, 5_000))
        yield make_order(rng, now, version=version)


def millis(value: dt.datetime) -> int:
    """Epoch milliseconds of a UTC datetime: how the ingester versions documents."""
    return (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)
