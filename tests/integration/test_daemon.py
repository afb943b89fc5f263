"""The streaming daemon end to end on the real broker, search server and PostgreSQL.

Each test produces with the upstream producer library, runs ``ingest run`` as a real
process, and checks the end state in the index, the dead-letter table and the ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingest.dev.demo import run_produce
from ingest.search.hosts import host_label
from ingest.settings import Settings
from tests.support.compat_proxy import CompatProxy
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    dead_letter_offsets,
    end_offsets,
    index_documents,
    index_versions,
    ledger_offsets,
    metrics_port,
    scrape,
    stream_runs,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration


def test_duplicates_and_corrupt_payloads_converge_to_exact_state(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Unique valid ids at their newest versions; every corrupt record dead-lettered once."""
    settings = make_settings(partitions=3)
    summary = run_produce(settings, "orders", 600, seed=7, invalid_ratio=0.05, duplicate_ratio=0.2)
    assert summary.failed == 0 and summary.invalid > 0
    ends = end_offsets(settings)
    assert sum(ends.values()) == summary.sent

    daemon = DaemonProcess(write_config(settings, tmp_path / "c.toml"), tmp_path / "d.log")
    try:
        wait_for(caught_up(settings, ends), 120, "the ledger to reach the end offsets")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output()

    assert index_versions(settings) == summary.expected
    assert len(dead_letter_offsets(settings)) == summary.invalid
    assert ledger_offsets(settings) == {p: e for p, e in ends.items() if e > 0}


def test_restart_resumes_where_the_ledger_says(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A second run after a clean stop reads only what was produced since
    (docs/design.md#restarts)."""
    settings = make_settings(partitions=2)
    config = write_config(settings, tmp_path / "c.toml")
    first = run_produce(settings, "orders", 200, seed=1)
    ends = end_offsets(settings)
    daemon = DaemonProcess(config, tmp_path / "d1.log")
    try:
        wait_for(caught_up(settings, ends), 120, "first catch-up")
    finally:
        assert daemon.stop() == 0, daemon.output()

    second = run_produce(settings, "orders", 100, seed=2)
    ends = end_offsets(settings)
    daemon = DaemonProcess(config, tmp_path / "d2.log")
    try:
        wait_for(caught_up(settings, ends), 120, "second catch-up")
    finally:
        assert daemon.stop() == 0, daemon.output()
    last_run = stream_runs(settings)[0]
    assert last_run.counters["consumed"] == 100
    assert last_run.status == "stopped"
    assert index_versions(settings) == {**first.expected, **second.expected}


def test_elasticsearch_client_path(
    make_settings: Callable[..., Settings], search_url: str, tmp_path: Path
) -> None:
    """The daemon through the official Elasticsearch client (kind forced), against osmem
    behind the media-type compat proxy: same exact end state."""
    with CompatProxy(search_url) as proxy:
        settings = make_settings(partitions=2, search={"url": proxy.url, "kind": "elasticsearch"})
        summary = run_produce(
            settings, "orders", 300, seed=9, invalid_ratio=0.05, duplicate_ratio=0.2
        )
        daemon = DaemonProcess(write_config(settings, tmp_path / "c.toml"), tmp_path / "d.log")
        try:
            wait_for(caught_up(settings, end_offsets(settings)), 120, "catch-up")
        finally:
            assert daemon.stop() == 0, daemon.output()
        assert '"kind":"elasticsearch"' in daemon.output()
        assert index_versions(settings) == summary.expected
    assert len(dead_letter_offsets(settings)) == summary.invalid


def test_dead_letters_also_go_to_the_dead_letter_topic(
    make_settings: Callable[..., Settings],
    create_topic: Callable[..., str],
    unique: str,
    tmp_path: Path,
) -> None:
    """With dead_letter_topic set, each bad record is on that topic with the error in its
    headers and its bytes untouched, besides the ledger's table."""
    from confluent_kafka import Consumer, TopicPartition

    dlt = create_topic(f"{unique}.dlq", 1)
    settings = make_settings(partitions=1, dead_letter_topic=dlt)
    summary = run_produce(settings, "orders", 120, seed=3, invalid_ratio=0.1)
    daemon = DaemonProcess(write_config(settings, tmp_path / "c.toml"), tmp_path / "d.log")
    try:
        wait_for(caught_up(settings, end_offsets(settings)), 120, "catch-up")
    finally:
        assert daemon.stop() == 0, daemon.output()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": unique,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(dlt, 0, 0)])
    got = []
    while True:
        msg = consumer.poll(10)
        assert msg is not None, "dead-letter topic ended without EOF"
        if msg.error():
            break
        got.append(msg)
    consumer.close()
    assert len(got) == summary.invalid
    stored = dead_letter_offsets(settings)
    headers = [dict(m.headers() or []) for m in got]
    assert sorted((0, int(h["ingest.offset"])) for h in headers) == stored
    assert all(
        h["ingest.stage"] in {b"framing", b"schema", b"decode", b"validation"} for h in headers
    )


def test_recreated_topic_stops_with_a_clear_error(
    make_settings: Callable[..., Settings], kafka_admin: Any, tmp_path: Path
) -> None:
    """When the ledger's offset lies beyond a recreated topic's log, the daemon refuses to go
    on (offset versions would silently lose) instead of swallowing 409s
    (docs/design.md#recreated-topics)."""
    from confluent_kafka.admin import NewTopic

    settings = make_settings(partitions=1, version_field=None, runtime={"heartbeat_s": 1})
    config = write_config(settings, tmp_path / "c.toml")
    run_produce(settings, "orders", 60, seed=4)
    daemon = DaemonProcess(config, tmp_path / "d1.log")
    try:
        wait_for(caught_up(settings, end_offsets(settings)), 120, "catch-up")
    finally:
        assert daemon.stop() == 0, daemon.output()

    topic = settings.streams[0].topic
    for fut in kafka_admin.delete_topics([topic]).values():
        fut.result(30)
    wait_for(lambda: topic not in kafka_admin.list_topics(timeout=10).topics, 30, "deletion")
    for fut in kafka_admin.create_topics([NewTopic(topic, 1, 1)]).values():
        fut.result(30)
    run_produce(settings, "orders", 10, seed=5)

    again = DaemonProcess(config, tmp_path / "d2.log")
    try:
        again.proc.wait(90)
    finally:
        if again.alive():
            again.kill9()
    assert again.proc.returncode == 1, again.output()
    assert "stored offset" in again.output() and "beyond the" in again.output()


def test_documents_the_index_rejects_are_dead_lettered_with_the_reason(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A 400 from the search server (here: an override maps `currency` as an integer) sends
    the record to the dead-letter table with stage `index`; offsets still advance."""
    settings = make_settings(
        partitions=1,
        index={"shards": 1, "replicas": 0, "field_overrides": {"currency": {"type": "integer"}}},
    )
    summary = run_produce(settings, "orders", 40, seed=8)
    daemon = DaemonProcess(write_config(settings, tmp_path / "c.toml"), tmp_path / "d.log")
    try:
        wait_for(caught_up(settings, end_offsets(settings)), 120, "catch-up")
    finally:
        assert daemon.stop() == 0, daemon.output()
    from ingest.ledger import PostgresLedger

    with PostgresLedger.from_settings(settings.ledger) as ledger:
        rows = ledger.dead_letters(stream="orders", limit=1000)
    assert len(rows) == summary.sent
    assert {row.stage for row in rows} == {"index"}
    assert all("currency" in row.reason for row in rows), rows[0].reason
    assert all(row.value for row in rows)
    assert index_versions(settings) == {}


def test_records_of_an_older_schema_version_get_the_newer_ones_defaults(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """v1 and v2 orders mixed on one topic (producers upgrade one by one): every record is
    indexed, v1 documents with the defaults v2 added, and nothing is dead-lettered."""
    import itertools

    from confluent_kafka import Producer

    from ingest.avro.catalog import SchemaCatalog
    from ingest.avro.codec import AvroCodec
    from ingest.dev.samples import sample_orders

    settings = make_settings(partitions=2)
    codec = AvroCodec(SchemaCatalog.load(settings.schemas_dir), "orders")
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "acks": "all"})
    orders = {o["order_id"]: o for o in itertools.islice(sample_orders(21), 80)}
    old = set(list(orders)[::2])
    for order_id, order in orders.items():
        if order_id in old:
            v1 = {k: v for k, v in order.items() if k not in ("priority", "coupon_code")}
            value = codec.encode(v1, schema_id=1)
        else:
            value = codec.encode(order)
        producer.produce(settings.streams[0].topic, value=value, key=order_id.encode())
    assert producer.flush(30) == 0

    daemon = DaemonProcess(
        write_config(settings, tmp_path / "c.toml"),
        tmp_path / "d.log",
        extra_args=("--metrics-port", "0"),
    )
    try:
        wait_for(caught_up(settings, end_offsets(settings)), 120, "catch-up")
        metrics = scrape(metrics_port(daemon))
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert "fast path off" not in daemon.output()
    # v1 records too went through the native transcoder, not the Python path
    assert metrics['ingest_records_consumed_total{stream="orders"}'] == len(orders)
    assert metrics['ingest_records_python_path_total{stream="orders"}'] == 0
    # the search node's state and latency, labelled without credentials
    node = host_label(settings.search.url)
    assert metrics[f'ingest_search_host_up{{host="{node}"}}'] == 1
    assert metrics[f'ingest_search_host_latency_seconds_count{{host="{node}"}}'] >= 1
    docs = index_documents(settings)
    assert set(docs) == set(orders)
    for order_id, doc in docs.items():
        if order_id in old:
            assert (doc["priority"], doc["coupon_code"]) == (False, None), doc
        else:
            wanted = orders[order_id]
            assert (doc["priority"], doc["coupon_code"]) == (
                wanted["priority"],
                wanted["coupon_code"],
            )
        assert doc["customer_id"] == orders[order_id]["customer_id"]
    assert dead_letter_offsets(settings) == []
