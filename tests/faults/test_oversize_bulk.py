"""A document too large for the search server's request limit is dead-lettered, not retried
forever: the real daemon behind the fault proxy answering 413 over a body size."""

from __future__ import annotations

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
from tests.support.fault_proxy import TOO_LARGE, HttpFaultProxy
from tests.support.records import codec_for, orders, produce

pytestmark = pytest.mark.faults

LIMIT = 6_000


def test_a_413_splits_the_batch_and_dead_letters_the_document_too_large_alone(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Twenty orders of ~600 bytes and one of ~9 kB in one batch, a server refusing bodies
    over 6 kB with 413: the batch is split until it fits, the big order is dead-lettered
    with the sizes in its reason, the others are indexed and the stream goes on."""
    direct = make_settings(partitions=None)
    with HttpFaultProxy(direct.search.url) as proxy:
        settings = make_settings(partitions=1, search={"url": proxy.url})
        codec = codec_for(settings)
        batch = orders(61, 21)
        batch[10]["notes"] = "x" * 9_000
        messages = [(o["order_id"].encode(), codec.encode(o)) for o in batch]
        produce(settings, messages)
        proxy.limit_body(LIMIT)
        daemon = DaemonProcess(write_config(settings, tmp_path / "c.toml"), tmp_path / "d.log")
        try:
            wait_for(caught_up(settings, end_offsets(settings)), 120, "catch-up")
            assert daemon.alive(), daemon.output()
        finally:
            code = daemon.stop()
        assert code == 0, daemon.output()
        assert proxy.counts[TOO_LARGE] >= 2  # the whole batch, then the big order alone
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        rows = ledger.dead_letters(stream="orders", limit=100)
    assert [(r.offset, r.stage) for r in rows] == [(10, "index")]
    assert rows[0].value == messages[10][1]
    assert "HTTP 413" in rows[0].reason and "bytes" in rows[0].reason, rows[0].reason
    assert set(index_versions(direct)) == {o["order_id"] for i, o in enumerate(batch) if i != 10}
    assert ledger_offsets(settings) == {0: 21}


def test_a_document_over_max_bulk_bytes_is_dead_lettered_without_sending_it(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """With ``search.max_bulk_bytes`` below one order's size, that order is dead-lettered
    with both sizes in the reason and never reaches the server."""
    settings = make_settings(partitions=1, search={"max_bulk_bytes": 4_096})
    codec = codec_for(settings)
    batch = orders(62, 3)
    batch[1]["notes"] = "y" * 6_000
    messages = [(o["order_id"].encode(), codec.encode(o)) for o in batch]
    produce(settings, messages)
    daemon = DaemonProcess(write_config(settings, tmp_path / "c.toml"), tmp_path / "d.log")
    try:
        wait_for(caught_up(settings, end_offsets(settings)), 120, "catch-up")
    finally:
        assert daemon.stop() == 0, daemon.output()
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        rows = ledger.dead_letters(stream="orders", limit=100)
    assert [(r.offset, r.stage) for r in rows] == [(1, "index")]
    assert "over the bulk request limit of 4096 bytes" in rows[0].reason, rows[0].reason
    assert set(index_versions(settings)) == {batch[0]["order_id"], batch[2]["order_id"]}
