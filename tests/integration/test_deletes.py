"""Deleted documents stay deleted once the search server has forgotten the delete.

External versions guard a delete only while the index keeps its tombstone
(``index.gc_deletes``). These tests give the index a 2 s retention so it forgets quickly,
then send older versions of the deleted document down every write path — a Kafka backfill
over the window holding them, an archive file, a replayed dead letter, the daemon reading a
re-sent record — and check the document stays absent, while a genuinely newer version still
re-creates it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer

from backfill.runner import RunOptions, run_file_backfill, run_kafka_backfill
from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.dev.samples import sample_orders
from ingest.ledger import PostgresLedger
from ingest.ops.replay import replay_dead_letters
from ingest.pipeline.wiring import open_components
from ingest.settings import Settings
from ingest.types import DeadLetter, DeleteMarker, RawRecord
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    end_offsets,
    index_versions,
    wait_for,
    write_config,
)
from tests.support.procs import run_cli

pytestmark = pytest.mark.integration

MIN_MS = 60_000
#: How long the test indices remember a delete; runtime.max_retry_s must be at most half.
GC_DELETES_S = 2.0


@dataclass
class Deleted:
    """A document indexed at two versions, then deleted, its delete since forgotten."""

    settings: Settings
    doc_id: str
    v1: dict[str, Any]
    v2: dict[str, Any]
    other_id: str
    now_ms: int
    tombstone_ms: int


def _settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        index={"shards": 1, "replicas": 0, "settings": {"gc_deletes": f"{GC_DELETES_S:g}s"}},
        runtime={"max_retry_s": GC_DELETES_S / 2},
        linger_s=0.2,
    )


def _at(order: dict[str, Any], ms: int) -> dict[str, Any]:
    return {**order, "updated_at": dt.datetime.fromtimestamp(ms / 1000, dt.UTC)}


def _send(settings: Settings, items: list[tuple[str, dict[str, Any] | None, int]]) -> None:
    """Produce (key, order or None for a tombstone, Kafka timestamp) to partition 0."""
    stream = settings.streams[0]
    codec = AvroCodec(SchemaCatalog.load(settings.schemas_dir), stream.subject)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "acks": "all"})
    for key, order, ts in items:
        value = None if order is None else codec.encode(order)
        producer.produce(stream.topic, value=value, key=key.encode(), partition=0, timestamp=ts)
    assert producer.flush(30) == 0, "records not delivered"


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _deleted(make_settings: Callable[..., Settings]) -> Deleted:
    """Two versions of a document and a control document, then its tombstone, all applied by
    a backfill; then the index's delete retention passes."""
    settings = _settings(make_settings)
    now_ms = int(time.time() * 1000)
    gen = sample_orders(71)
    base, other = next(gen), next(gen)
    v1, v2 = _at(base, now_ms - 120 * MIN_MS), _at(base, now_ms - 90 * MIN_MS)
    doc_id, other_id = str(base["order_id"]), str(other["order_id"])
    tombstone_ms = now_ms - 60 * MIN_MS
    _send(
        settings,
        [
            (doc_id, v1, now_ms - 120 * MIN_MS),
            (other_id, _at(other, now_ms - 120 * MIN_MS), now_ms - 120 * MIN_MS),
            (doc_id, v2, now_ms - 90 * MIN_MS),
            (doc_id, None, tombstone_ms),
        ],
    )
    summary = run_kafka_backfill(
        settings,
        "orders",
        since=_iso(now_ms - 180 * MIN_MS),
        until=_iso(now_ms - 45 * MIN_MS),
        chunk=dt.timedelta(hours=3),
        options=RunOptions(retry_delay_s=0.5),
    )
    assert summary.ok, summary.render()
    assert doc_id not in index_versions(settings), "the tombstone deleted the document"
    assert other_id in index_versions(settings)
    time.sleep(GC_DELETES_S + 1.5)  # the index forgets the delete
    return Deleted(settings, doc_id, v1, v2, other_id, now_ms, tombstone_ms)


def _newer_version_recreates(d: Deleted) -> None:
    """A version newer than the delete is a real update: the document comes back with it."""
    newer_ms = d.tombstone_ms + 10 * MIN_MS
    _send(d.settings, [(d.doc_id, _at(d.v2, newer_ms), newer_ms)])
    summary = run_kafka_backfill(
        d.settings,
        "orders",
        since=_iso(d.tombstone_ms + 5 * MIN_MS),
        until=_iso(d.tombstone_ms + 15 * MIN_MS),
        chunk=dt.timedelta(hours=1),
    )
    assert summary.ok, summary.render()
    assert index_versions(d.settings).get(d.doc_id) == newer_ms


def test_a_backfill_over_older_versions_does_not_bring_a_deleted_document_back(
    make_settings: Callable[..., Settings],
) -> None:
    d = _deleted(make_settings)
    summary = run_kafka_backfill(
        d.settings,
        "orders",
        since=_iso(d.now_ms - 180 * MIN_MS),
        until=_iso(d.tombstone_ms - 5 * MIN_MS),  # the older versions, not the tombstone
        chunk=dt.timedelta(hours=3),
    )
    assert summary.ok, summary.render()
    assert summary.records_read - summary.records_outside_window == 3, "v1, v2 and the other"
    assert d.doc_id not in index_versions(d.settings), "an older version re-created it"
    assert summary.records_dead_lettered == 0, "superseded writes are not dead letters"
    _newer_version_recreates(d)


def test_an_archive_file_of_older_versions_does_not_bring_a_deleted_document_back(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d = _deleted(make_settings)
    schema = SchemaCatalog.load(d.settings.schemas_dir).latest("orders")
    archive = tmp_path / "archive" / "part-0.avro"
    archive.parent.mkdir(parents=True)
    with archive.open("wb") as fo:
        fastavro.writer(fo, schema.schema, [d.v1, d.v2])
    summary = run_file_backfill(d.settings, "orders", str(archive))
    assert summary.ok, summary.render()
    assert d.doc_id not in index_versions(d.settings), "the archive re-created it"
    assert summary.records_dead_lettered == 0
    _newer_version_recreates(d)


def test_replaying_an_old_dead_letter_does_not_bring_a_deleted_document_back(
    make_settings: Callable[..., Settings],
) -> None:
    d = _deleted(make_settings)
    stream = d.settings.streams[0]
    codec = AvroCodec(SchemaCatalog.load(d.settings.schemas_dir), stream.subject)
    # v1 refused by the index back then (say a mapping since fixed), kept as a dead letter.
    old = RawRecord(
        stream.topic,
        0,
        1_000,
        d.doc_id.encode(),
        codec.encode(d.v1),
        timestamp_ms=d.now_ms - 120 * MIN_MS,
    )
    with PostgresLedger.from_settings(d.settings.ledger) as ledger:
        ledger.migrate()
        ledger.store_dead_letters([DeadLetter(old, "index", "index: refused", stream.name)])
    with open_components(d.settings) as components:
        rows = components.ledger.dead_letters(stream.name)
        assert len(rows) == 1
        summary = replay_dead_letters(components, rows)
        ((result,),) = [summary.streams]
        assert result.passed == [rows[0].id], "superseded, not failed: nothing left to replay"
        assert components.ledger.dead_letters(stream.name) == []
    assert d.doc_id not in index_versions(d.settings), "the replay re-created it"
    _newer_version_recreates(d)


def test_the_daemon_drops_a_resent_older_version_of_a_deleted_document(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Upstream re-sends an old version (a producer replay) after the index forgot the
    delete: the daemon must not re-create the document; a newer version still does."""
    d = _deleted(make_settings)
    daemon = DaemonProcess(write_config(d.settings, tmp_path / "d.toml"), tmp_path / "d.log")
    try:
        wait_for(caught_up(d.settings, end_offsets(d.settings)), 120, "the first catch-up")
        time.sleep(GC_DELETES_S + 1.5)  # the daemon re-applied the delete: forgotten again
        _send(d.settings, [(d.doc_id, d.v2, int(time.time() * 1000))])
        wait_for(caught_up(d.settings, end_offsets(d.settings)), 60, "the re-sent version")
        assert d.doc_id not in index_versions(d.settings), "the daemon re-created it"
        newer_ms = d.tombstone_ms + 10 * MIN_MS
        _send(d.settings, [(d.doc_id, _at(d.v2, newer_ms), int(time.time() * 1000))])
        wait_for(caught_up(d.settings, end_offsets(d.settings)), 60, "the newer version")
        assert index_versions(d.settings).get(d.doc_id) == newer_ms
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output()


def test_delete_markers_keep_the_newest_version_and_are_purged_by_age(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The ledger keeps one marker per (alias, id) at its newest version; ``ingest ledger
    purge-deletes`` forgets those applied before the given age, nothing newer."""
    settings = make_settings(partitions=None)
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        ledger.record_deletes(
            [DeleteMarker("o", "a", 5, "orders"), DeleteMarker("o", "a", 9, "orders")]
        )
        ledger.record_deletes([DeleteMarker("o", "a", 7, "orders"), DeleteMarker("p", "a", 1, "x")])
        assert ledger.delete_markers("o", ["a", "b"]) == {"a": 9}
        assert ledger.delete_markers("p", ["a"]) == {"a": 1}
        assert ledger.delete_markers("o", []) == {}
    code, out = run_cli(
        "ledger", "purge-deletes", "--older-than", "1h", "--yes", settings=settings,
        workdir=tmp_path,
    )  # fmt: skip
    assert code == 0, out
    assert "purged 0 delete marker(s)" in out
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
    code, out = run_cli(
        "ledger", "purge-deletes", "--older-than", future, "--yes", settings=settings,
        workdir=tmp_path,
    )  # fmt: skip
    assert code == 0, out
    assert "purged 2 delete marker(s)" in out
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        assert ledger.delete_markers("o", ["a"]) == {}
