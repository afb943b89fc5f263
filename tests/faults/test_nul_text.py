"""A NUL character in text bound for the ledger (a server's reason, a hook's message, a key
or header shown as text) neither stops the stream nor loses the record's raw bytes.

PostgreSQL text cannot hold NUL; before the ledger cleaned its text, one such dead letter
failed every flush of its batch, at every restart. Real daemon, broker, search server (behind
the fault proxy) and ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.ledger import PostgresLedger
from ingest.ledger.models import DeadLetterRow
from ingest.settings import Settings
from ingest.types import DeadLetter, RawRecord
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    end_offsets,
    index_versions,
    ledger_offsets,
    wait_for,
    write_config,
)
from tests.support.fault_proxy import REJECT_ITEMS, HttpFaultProxy
from tests.support.records import codec_for, orders, produce

pytestmark = pytest.mark.faults

REPO_ROOT = Path(__file__).resolve().parents[2]


def dead_letters(settings: Settings) -> list[DeadLetterRow]:
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        return ledger.dead_letters(stream="orders", limit=1000)


def run_until_caught_up(
    settings: Settings, tmp_path: Path, more: list[tuple[bytes, bytes]], **kw: object
) -> DaemonProcess:
    """Start the daemon on what is in the topic, then send ``more`` (valid records) and
    wait until it has read them too: proof that it kept going after the NUL text."""
    daemon = DaemonProcess(write_config(settings, tmp_path / "c.toml"), tmp_path / "d.log", **kw)  # type: ignore[arg-type]
    try:
        wait_for(caught_up(settings, end_offsets(settings)), 90, "the records with NUL text")
        produce(settings, more)
        wait_for(caught_up(settings, end_offsets(settings)), 90, "the records after them")
    except BaseException:
        daemon.kill9()
        raise
    assert daemon.alive(), daemon.output()
    assert daemon.stop() == 0, daemon.output()
    assert "DataError" not in daemon.output()
    return daemon


def test_a_nul_in_a_server_reason(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """The search server refuses three documents with a reason holding NUL: each is
    dead-lettered once (NUL shown as U+FFFD, raw value intact) and the stream goes on."""
    direct = make_settings(partitions=None)
    with HttpFaultProxy(direct.search.url) as proxy:
        settings = make_settings(partitions=1, search={"url": proxy.url})
        codec = codec_for(settings)
        batch = orders(41, 5)
        refused = [(o["order_id"].encode(), codec.encode(o)) for o in batch[:3]]
        later = [(o["order_id"].encode(), codec.encode(o)) for o in batch[3:]]
        produce(settings, refused)
        proxy.reject_items(400, reason="field [currency] value [EUR\u0000] refused", count=1)
        run_until_caught_up(settings, tmp_path, later)
        assert proxy.counts[REJECT_ITEMS] == 1
    rows = dead_letters(settings)
    assert [(r.offset, r.stage) for r in rows] == [(0, "index"), (1, "index"), (2, "index")]
    assert [(r.key, r.value) for r in rows] == refused
    assert all("value [EUR\ufffd] refused" in r.reason for r in rows), rows[0].reason
    assert set(index_versions(direct)) == {o["order_id"] for o in batch[3:]}
    assert ledger_offsets(settings) == {0: 5}


@pytest.mark.parametrize("nul_in", ["hook", "key"])
def test_a_nul_in_a_hook_message_or_in_the_key_and_headers(
    make_settings: Callable[..., Settings], tmp_path: Path, nul_in: str
) -> None:
    """A transform hook's exception text holds NUL (its own, or the record's key with a NUL,
    as text); the records also carry a header value with NUL. Each refused record is
    dead-lettered once with key, value and headers byte for byte; the stream goes on."""
    settings = make_settings(partitions=1, transform="tests.support.hooks:refuse_with_nul")
    codec = codec_for(settings)
    batch = orders(43, 5)
    for order in batch[:2]:
        order["customer_id"] = "nul-" + order["customer_id"]
    # librdkafka passes header names as C strings (a NUL in a name ends it on the wire), so
    # here NUL is in a header value; NUL in a stored header name is covered below.
    headers = [("trace", b"\x00\x01raw"), ("plain", b"v")]
    keys = [
        (b"key\x00" if nul_in == "key" else b"key-") + o["order_id"].encode() for o in batch[:2]
    ]
    refused = [(k, codec.encode(o), headers) for k, o in zip(keys, batch[:2], strict=True)]
    later = [(o["order_id"].encode(), codec.encode(o)) for o in batch[2:]]
    produce(settings, refused)
    run_until_caught_up(settings, tmp_path, later, env={"PYTHONPATH": str(REPO_ROOT)})
    rows = dead_letters(settings)
    assert [(r.offset, r.stage) for r in rows] == [(0, "transform"), (1, "transform")]
    assert [(r.key, r.value) for r in rows] == [(k, v) for k, v, _h in refused]
    assert all(r.headers == headers for r in rows), rows[0].headers
    assert all("customer \ufffd refused" in r.reason for r in rows), rows[0].reason
    if nul_in == "key":
        assert all("key\ufffd" in r.reason for r in rows), rows[0].reason
    assert set(index_versions(settings)) == {o["order_id"] for o in batch[2:]}
    assert ledger_offsets(settings) == {0: 5}


def test_every_text_the_ledger_stores_is_cleaned_in_one_place(
    make_settings: Callable[..., Settings],
) -> None:
    """Reasons, header names (jsonb), run parameters and run errors with NUL are stored with
    U+FFFD in its place; key, value and header values keep their bytes."""
    settings = make_settings(partitions=None)
    record = RawRecord("t\x00", 0, 7, b"k\x00", b"v\x00", 5, [("h\x00", b"\x00")])
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        ledger.store_dead_letters([DeadLetter(record, "index", "why\x00not", "orders")])
        run_id = ledger.start_run("stream", "orders", {"note\x00": "a\x00b"})
        ledger.finish_run(run_id, "failed", error="boom\x00")
        (row,) = ledger.dead_letters(stream="orders")
        (run,) = ledger.runs("stream", stream="orders")
    assert (row.topic, row.reason, row.headers) == (
        "t\ufffd",
        "why\ufffdnot",
        [("h\ufffd", b"\x00")],
    )
    assert (row.key, row.value) == (b"k\x00", b"v\x00")
    assert run.error == "boom\ufffd" and run.params["note\ufffd"] == "a\ufffdb"
