"""A version the index refuses does not take the older valid versions of its ``_id`` with
it, wherever the batch boundary falls: the real daemon, broker, search server and ledger."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.ledger import PostgresLedger
from ingest.settings import Settings
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    end_offsets,
    index_versions,
    ledger_offsets,
    wait_for,
    write_config,
)
from tests.support.records import codec_for, orders, produce, version_of

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("same_batch", [True, False], ids=["one-batch", "two-batches"])
def test_the_newest_accepted_version_wins_and_the_refused_one_is_dead_lettered(
    make_settings: Callable[..., Settings], tmp_path: Path, same_batch: bool
) -> None:
    """Same id, v1 valid, v2 refused (an override maps ``currency`` as an integer: "978"
    is accepted, "EUR" is a 400): the id ends at v1 and v2 is dead-lettered once, whether
    both arrive in one batch or in two."""
    settings = make_settings(
        partitions=1,
        index={"shards": 1, "replicas": 0, "field_overrides": {"currency": {"type": "integer"}}},
    )
    codec = codec_for(settings)
    first, other = orders(31, 2)
    first["currency"], other["currency"] = "978", "840"
    second = dict(first, currency="EUR", updated_at=first["updated_at"] + dt.timedelta(seconds=1))
    key = first["order_id"].encode()
    v1 = (key, codec.encode(first))
    v2 = (key, codec.encode(second))
    bystander = (other["order_id"].encode(), codec.encode(other))
    config = write_config(settings, tmp_path / "c.toml")

    produce(settings, [v1, v2, bystander] if same_batch else [v1])
    daemon = DaemonProcess(config, tmp_path / "d.log")
    try:
        wait_for(caught_up(settings, end_offsets(settings)), 120, "catch-up")
        if not same_batch:
            produce(settings, [v2, bystander])
            wait_for(caught_up(settings, end_offsets(settings)), 120, "catch-up after v2")
    finally:
        assert daemon.stop() == 0, daemon.output()

    assert index_versions(settings) == {
        first["order_id"]: version_of(first),
        other["order_id"]: version_of(other),
    }
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        rows = ledger.dead_letters(stream="orders", limit=100)
    assert [(r.offset, r.stage) for r in rows] == [(1, "index")]
    assert rows[0].value == v2[1] and rows[0].key == key
    assert "currency" in rows[0].reason
    assert ledger_offsets(settings) == {0: 3}
