"""The reference model: what the index and the dead-letter store must hold, computed alone.

Nothing here imports the product. The model knows the records it produced (it wrote their
bytes itself, :mod:`tests.model.avro`) and applies the product's documented promise to them:

- a document's ``_id`` is ``order_id``; its version is ``updated_at`` in epoch milliseconds;
  a tombstone deletes the Kafka key's document at the record's timestamp in milliseconds;
- each id ends at its newest *applied* event: a valid write or a delete. Refused writes (the
  index said 400, or the record is malformed) are never applied, so the document ends at the
  newest version the index accepts (issue 11, defect 2); a delete stays a delete whatever
  older version arrives later, by any path, however long after (defect 1);
- the document is the record rendered as JSON: timestamps as ISO-8601 UTC, the decimal as a
  number, the enum as its symbol, a union as its value, and a record written with orders v1
  ends with v2's defaults for the fields v1 lacks;
- each bad Kafka record is dead-lettered once, at its stage, whatever re-reads it.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.model.avro import RawBlock, Schema, frame
from tests.model.ops import POISON_STAGES, Op

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = REPO_ROOT / "schemas" / "orders"
V1 = Schema(SCHEMAS / "v1.avsc")
V2 = Schema(SCHEMAS / "v2.avsc")
#: Ids in ``schemas/manifest.json``; 99 is in no catalog.
V1_ID, V2_ID, UNKNOWN_ID = 1, 2, 99

#: 2026-01-01T00:00:00Z: version ``N`` is this plus N seconds.
BASE_MS = 1_767_225_600_000
#: ``discount`` is mapped as ``integer`` (a field override the model's config sets), so a
#: discount past 2^31 is a value the index refuses with a 400.
REFUSED_DISCOUNT = 3.0e9
#: The stream's ``max_record_bytes`` until a ``replay`` raises it; ``big`` records exceed it.
SMALL_LIMIT_BYTES = 4096
BIG_NOTES = "n" * 6000


def version_ms(n: int) -> int:
    return BASE_MS + n * 1000


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")


def order(key: str, n: int, *, v1: bool = False) -> dict[str, Any]:
    """The valid order a ``put``/``put1`` of ``key@n`` carries: deterministic in (key, n),
    so a duplicate is the same record and a shrunk sequence keeps each record's content."""
    rng = random.Random(f"{key}@{n}")
    record: dict[str, Any] = {
        "order_id": key,
        "customer_id": f"c{rng.randint(1, 999)}",
        "created_at": BASE_MS - 86_400_000 + int(key[1:]) * 1000,
        "updated_at": version_ms(n),
        "status": rng.choice(["PENDING", "PAID", "SHIPPED", "DELIVERED", "CANCELLED"]),
        "total_amount": Decimal(rng.randint(100, 999_999)) / 100,
        "currency": rng.choice(["EUR", "USD", "GBP"]),
        "discount": rng.choice([None, float(rng.randint(0, 50))]),
        "items": [
            {"sku": f"s{rng.randint(1, 99)}", "quantity": rng.randint(1, 9), "unit_price": 9.5}
            for _ in range(rng.randint(0, 3))
        ],
        "shipping_address": {
            "street": f"{rng.randint(1, 200)} Main St",
            "city": rng.choice(["Lyon", "Oslo", "Porto"]),
            "postal_code": f"{rng.randint(1000, 9999)}",
            "country": rng.choice(["FR", "NO", "PT"]),
        },
        "tags": {f"t{i}": f"v{rng.randint(0, 9)}" for i in range(rng.randint(0, 2))},
        "channel": rng.choice(["web", "app", "store", "phone"]),
        "notes": rng.choice([None, f"note {rng.randint(0, 99)}"]),
    }
    if not v1:
        record["priority"] = rng.random() < 0.3
        record["coupon_code"] = None
    return record


def document(record: dict[str, Any]) -> dict[str, Any]:
    """The JSON document the product promises for a valid record (see the module doc)."""
    doc = dict(record)
    for name in ("created_at", "updated_at"):
        doc[name] = _iso(doc[name])
    doc["total_amount"] = float(doc["total_amount"])
    for name, default in V2.defaults().items():
        doc.setdefault(name, default)
    return doc


@dataclass(frozen=True)
class Payload:
    """What one record op puts on the topic."""

    key: bytes | None
    value: bytes | None
    timestamp_ms: int


def payload(op: Op) -> Payload:
    """The Kafka record for a record op, bytes written by the model's own Avro writer."""
    key = op.key.encode()
    ts = version_ms(op.n)
    if op.kind == "put":
        return Payload(key, frame(V2_ID, V2.encode(order(op.key, op.n))), ts)
    if op.kind == "put1":
        return Payload(key, frame(V1_ID, V1.encode(order(op.key, op.n, v1=True))), ts)
    if op.kind == "big":
        return Payload(key, frame(V2_ID, V2.encode(big_order(op))), ts)
    if op.kind == "del":
        return Payload(key, None, ts)
    if op.kind == "refuse":
        return Payload(key, frame(V2_ID, V2.encode(refused_order(op))), ts)
    valid = order(op.key, op.n)
    body = V2.encode(valid)
    poison = op.poison
    if poison == "magic":
        return Payload(key, bytes([1]) + frame(V2_ID, body)[1:], ts)
    if poison == "short":
        return Payload(key, b"\x00\x00", ts)
    if poison == "nulkey":
        return Payload(key + b"\x00x", bytes([1]) + frame(V2_ID, body)[1:], ts)
    if poison == "schemaid":
        return Payload(key, frame(UNKNOWN_ID, body), ts)
    if poison == "truncated":
        return Payload(key, frame(V2_ID, body[: len(body) // 2]), ts)
    if poison == "trailing":
        return Payload(key, frame(V2_ID, body + b"\x02\x02\x02"), ts)
    if poison == "nokey":
        return Payload(None, None, ts)
    mutated = dict(valid)
    if poison == "utf8":
        mutated["customer_id"] = b"c\xff\xfe\xfd"
    elif poison == "int32":
        mutated["items"] = [{"sku": "s1", "quantity": 2**33, "unit_price": 1.0}]
    elif poison == "blockmin":
        mutated["items"] = RawBlock(count=-(2**63), size=0, tail=b"")
    elif poison == "emptyid":
        mutated["order_id"] = ""
    elif poison == "nulreason":
        mutated["coupon_code"] = "1\x002"  # coupon_code is mapped as integer: refused
    else:
        raise ValueError(f"no payload for {op}")
    return Payload(key, frame(V2_ID, V2.encode(mutated)), ts)


def big_order(op: Op) -> dict[str, Any]:
    return {**order(op.key, op.n), "notes": BIG_NOTES}


def refused_order(op: Op) -> dict[str, Any]:
    return {**order(op.key, op.n), "discount": REFUSED_DISCOUNT}


def stage_of(op: Op, limit_raised: bool) -> str | None:
    """The dead-letter stage the record of ``op`` must get, or None for a good record."""
    if op.base == "bad":
        return POISON_STAGES[op.poison]
    if op.kind == "refuse":
        return "index"
    if op.kind == "big" and not limit_raised:
        return "size"
    return None


def written_order(op: Op) -> dict[str, Any]:
    """The record a write op (put, put1, big) carries."""
    if op.kind == "big":
        return big_order(op)
    return order(op.key, op.n, v1=op.kind == "put1")


@dataclass
class Event:
    """One thing that happened to an id, as the model sees it."""

    n: int
    op: Op
    applied: bool  # False: refused or malformed, never part of the document's history
    via: str = ""  # how it reached the index when not straight from Kafka: " via archive" ...


@dataclass
class Model:
    """Feeds on what the runner did; answers what the end state must be."""

    events: dict[str, list[Event]] = field(default_factory=dict)
    #: (partition, offset) -> (op, stage) of every bad Kafka record.
    bad: dict[tuple[int, int], tuple[Op, str]] = field(default_factory=dict)
    limit_raised: bool = False
    #: ``big`` records dead-lettered for size, applied once a replay raised the limit.
    waiting_for_replay: list[Op] = field(default_factory=list)

    def _event(self, op: Op, applied: bool, via: str = "") -> None:
        self.events.setdefault(op.key, []).append(Event(op.n, op, applied, via))

    def produced(self, op: Op, partition: int, offset: int) -> None:
        stage = stage_of(op, self.limit_raised)
        if stage is not None:
            self.bad[(partition, offset)] = (op, stage)
        if op.kind == "big" and stage is not None:
            self.waiting_for_replay.append(op)
            self._event(op, applied=False)
            return
        carries_id = op.base != "bad" or op.poison in ("int32", "blockmin", "nulreason")
        if op.key and carries_id:
            self._event(op, applied=stage is None)

    def archived(self, op: Op) -> None:
        """A valid version re-sent from an archive file (``backfill files``)."""
        self._event(op, applied=True, via=" via archive")

    def replayed(self) -> None:
        """The size limit is raised and the dead letters replayed: big records now apply."""
        self.limit_raised = True
        for op in self.waiting_for_replay:
            self._event(op, applied=True, via=" via replay")
        self.waiting_for_replay.clear()

    def winner(self, key: str) -> Event | None:
        applied = [e for e in self.events.get(key, []) if e.applied]
        return max(applied, key=lambda e: e.n) if applied else None

    def expected(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """id -> (version in ms, document) of every document the index must hold."""
        out = {}
        for key in self.events:
            win = self.winner(key)
            if win is not None and win.op.kind != "del":
                out[key] = (version_ms(win.n), document(written_order(win.op)))
        return out
