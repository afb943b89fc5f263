"""The embedded stack: ``dev up`` / ``status`` / ``down`` and the session fixtures."""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from ingest.dev.stack import (
    DEFAULT_STATE_DIR,
    STATE_FILE,
    StackEndpoints,
    dev_down,
    dev_status,
    dev_up,
    env_exports,
    kafka_answers,
    postgres_answers,
    search_answers,
    status_lines,
)
from ingest.errors import ConfigError

pytestmark = pytest.mark.integration


def _running(pid: int) -> bool:
    """Alive and not a zombie (an unreaped zombie runs nothing)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _all_pids(state_dir: Path) -> list[int]:
    """Every recorded server pid plus its children (PostgreSQL's workers)."""
    state = json.loads((state_dir / STATE_FILE).read_text())
    pids = []
    for component in state["components"]:
        pids.append(component["pid"])
        with contextlib.suppress(psutil.NoSuchProcess):
            pids += [c.pid for c in psutil.Process(component["pid"]).children(recursive=True)]
    return pids


def test_dev_up_status_down_leaves_nothing(server_dir: Path) -> None:
    """dev_up starts three answering servers; dev_down stops every process and the state."""
    state_dir = server_dir / "dev"
    endpoints = dev_up(state_dir)
    try:
        pids = _all_pids(state_dir)
        assert len(pids) >= 3
        assert kafka_answers(endpoints.kafka_bootstrap)
        assert search_answers(endpoints.search_url)
        with psycopg.connect(endpoints.ledger_dsn, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

        status = dev_status(state_dir)
        assert status["running"] is True
        assert set(status["components"]) == {"kafka", "search", "postgres"}
        for name, component in status["components"].items():
            assert component["alive"] and component["answers"], name
            assert Path(component["log"]).exists(), name

        with pytest.raises(ConfigError, match="already running"):
            dev_up(state_dir)
        # The refused second start must not disturb the running stack.
        assert dev_status(state_dir)["running"] is True
    finally:
        stopped = dev_down(state_dir)

    assert sorted(stopped) == ["kafka", "postgres", "search"]
    assert [p for p in pids if _running(p)] == []
    assert not (state_dir / STATE_FILE).exists()
    assert not (state_dir / "pgdata").exists()
    assert dev_status(state_dir) == {"running": False, "endpoints": None, "components": {}}
    assert dev_down(state_dir) == []


def test_dev_status_reports_a_dead_server(server_dir: Path) -> None:
    """A server that died is reported as not alive, and dev_up then starts afresh."""
    state_dir = server_dir / "dev"
    dev_up(state_dir)
    try:
        state = json.loads((state_dir / STATE_FILE).read_text())
        search = next(c for c in state["components"] if c["name"] == "search")
        psutil.Process(search["pid"]).kill()
        status = dev_status(state_dir)
        assert status["running"] is False
        assert status["components"]["search"]["alive"] is False
        assert status["components"]["kafka"]["answers"] is True
    finally:
        dev_down(state_dir)
    # With every process gone, a stale record does not block a new start.
    state_dir.mkdir(exist_ok=True)
    (state_dir / STATE_FILE).write_text(json.dumps(state))
    endpoints = dev_up(state_dir)
    try:
        assert dev_status(state_dir)["running"] is True
        assert endpoints.kafka_bootstrap != ""
    finally:
        dev_down(state_dir)


def test_env_exports_are_shell_quoted() -> None:
    """The export lines survive shell parsing, even with characters a shell would expand."""
    endpoints = StackEndpoints(
        kafka_bootstrap="127.0.0.1:9092",
        search_url="http://127.0.0.1:9200",
        ledger_dsn="postgresql://u:p$w d@127.0.0.1:5432/db?sslmode=disable&x=1",
    )
    lines = env_exports(endpoints)
    parsed = dict(shlex.split(line)[1].split("=", 1) for line in lines)
    assert parsed == {
        "INGEST_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "INGEST_SEARCH_URL": "http://127.0.0.1:9200",
        "INGEST_LEDGER_DSN": endpoints.ledger_dsn,
    }
    assert all(line.startswith("export INGEST_") for line in lines)


def test_default_state_dir_is_local() -> None:
    """``ingest dev up`` keeps its state in ``.ingest-dev`` of the current directory."""
    assert Path(".ingest-dev") == DEFAULT_STATE_DIR


def test_session_fixtures_answer(
    stack: StackEndpoints, kafka_bootstrap: str, search_url: str, ledger_dsn: str
) -> None:
    """The session stack's three servers answer at the endpoints the fixtures hand out."""
    assert kafka_answers(kafka_bootstrap)
    assert search_answers(search_url)
    assert postgres_answers(ledger_dsn)
    assert stack == StackEndpoints(kafka_bootstrap, search_url, ledger_dsn)


def test_make_settings_is_unique_and_creates_topic(make_settings, unique, kafka_admin) -> None:  # type: ignore[no-untyped-def]
    """make_settings names topic, alias, group and schema after ``unique`` and makes the topic."""
    settings = make_settings(partitions=3, max_batch_records=10)
    stream = settings.stream("orders")
    assert stream.topic == stream.alias == settings.kafka.group_id == unique
    assert settings.ledger.schema_name == unique
    assert stream.max_batch_records == 10
    assert settings.kafka.session_timeout_ms == 6000
    assert (settings.schemas_dir / "orders").is_dir()
    topic = kafka_admin.list_topics(topic=unique, timeout=10).topics[unique]
    assert len(topic.partitions) == 3
    again = make_settings(search={"url": "http://127.0.0.1:1"})
    assert again.stream("orders").topic == unique
    assert again.search.url == "http://127.0.0.1:1"


def test_dev_up_names_the_failing_server(server_dir: Path) -> None:
    """An unusable PostgreSQL DSN fails dev_up with a clear error and leaves nothing running."""
    state_dir = server_dir / "dev"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ConfigError, match="INGEST_LEDGER_DSN"):
        dev_up(state_dir, postgres_dsn="postgresql://postgres@127.0.0.1:1/postgres")
    after = {p.pid for p in psutil.Process().children(recursive=True) if _running(p.pid)}
    assert after <= before
    assert not (state_dir / STATE_FILE).exists()


def test_private_postgres_survives_kill_9_and_restarts_in_place(
    private_server,  # type: ignore[no-untyped-def]
) -> None:
    """A private server can be killed -9 and restarted on the same port with its data."""
    from tests.support.procs import kill_9

    pg = private_server("postgres")
    with psycopg.connect(pg.endpoint, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    kill_9(pg)
    assert not postgres_answers(pg.endpoint, 1.0)
    port = int(pg.endpoint.rsplit(":", 1)[1].split("/")[0])
    again = private_server("postgres", port=port, workdir=Path(pg.log_path).parent)
    assert again.endpoint == pg.endpoint
    with psycopg.connect(again.endpoint) as conn:
        assert conn.execute("SELECT n FROM kept").fetchone() == (7,)


def test_proxied_kafka_partition_heals(proxied_kafka) -> None:  # type: ignore[no-untyped-def]
    """Behind the TCP proxy every client connection is cut by a blackhole and heals after."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    bootstrap, proxy = proxied_kafka
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    producer.produce("heal", b"one", partition=0)
    assert producer.flush(10) == 0
    brokers = producer.list_topics(timeout=5).brokers.values()
    assert [f"{b.host}:{b.port}" for b in brokers] == [bootstrap]  # advertises the proxy

    proxy.blackhole()
    with pytest.raises(KafkaException):
        producer.list_topics(timeout=1)
    producer.produce("heal", b"two", partition=0)
    assert producer.flush(1) == 1  # held by the partition

    proxy.pass_through()
    assert producer.flush(15) == 0
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "heal", "auto.offset.reset": "earliest"}
    )
    try:
        consumer.assign([TopicPartition("heal", 0, 0)])
        values = []
        deadline = time.monotonic() + 15
        while len(values) < 2 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
        assert values == [b"one", b"two"]
    finally:
        consumer.close()
    assert proxy.connections_held >= 1


def test_status_lines_say_which_server_is_down() -> None:
    """The printable status names each server's state, endpoint and log."""
    status = {
        "running": False,
        "endpoints": {},
        "components": {
            "kafka": {"pid": 1, "alive": True, "answers": True, "endpoint": "k:1", "log": "k.log"},
            "search": {"pid": 2, "alive": True, "answers": False, "endpoint": "s", "log": "s.log"},
            "postgres": {"pid": 3, "alive": False, "answers": False, "endpoint": "p", "log": "p"},
        },
    }
    lines = status_lines(status)
    assert lines[0].split()[:3] == ["kafka", "up", "k:1"]
    assert "NOT ANSWERING" in lines[1]
    assert lines[2].split()[:2] == ["postgres", "DOWN"]
    assert lines[-1] == "stack: NOT fully running"
    assert status_lines({"running": False, "components": {}})[0].startswith("no dev stack")
