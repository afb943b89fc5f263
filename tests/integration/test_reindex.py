"""Zero-downtime reindex on the real stack, beside a running daemon and a running producer.

The daemon is a real ``ingest run`` process and so is every reindex (``python -m
backfill reindex``), so ``kill -9`` means what it says. A producer thread keeps sending new
orders and newer versions of earlier ones the whole time; a watcher thread keeps counting
documents through the alias. The end state is read from the ledger and the search server.

Runtime settings make the daemon heartbeat and look for a building version every 0.5 s, so
the reindex's wait for the dual-write acknowledgement is short.
"""

from __future__ import annotations

import itertools
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest

from backfill.reindex import PAUSE_POINTS
from backfill.reindex.plan import stale_after_s
from ingest.avro.catalog import SchemaCatalog
from ingest.dev.samples import millis, next_version, sample_orders
from ingest.kafka.producer import RecordProducer
from ingest.ledger import PostgresLedger
from ingest.search.client import connect_search
from ingest.search.mapping import index_definition, time_value
from ingest.settings import Settings
from tests.support.daemon import caught_up, end_offsets, index_versions, wait_for
from tests.support.procs import Proc, kill_9, run_cli, start_cli, stop_quietly

pytestmark = pytest.mark.integration

REINDEX = (sys.executable, "-m", "backfill", "reindex")
RUNTIME = {"heartbeat_s": 0.5, "index_poll_s": 0.5, "summary_every_s": 5.0}


class Producer(threading.Thread):
    """Sends new orders and newer versions of earlier ones until stopped (~40 records/s)."""

    def __init__(self, settings: Settings, seed: int) -> None:
        super().__init__(name="producer", daemon=True)
        catalog = SchemaCatalog.load(settings.schemas_dir)
        self.producer = RecordProducer(settings, settings.streams[0], catalog)
        self.orders = sample_orders(seed)
        self.rng = random.Random(seed)
        self.latest: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def send(self, count: int) -> None:
        for _ in range(count):
            if self.latest and self.rng.random() < 0.2:
                order = next_version(self.rng, self.latest[self.rng.choice(list(self.latest))])
            else:
                order = next(self.orders)
            self.latest[order["order_id"]] = order
            self.producer.produce(order)
        summary = self.producer.flush(30)
        assert summary.failed == 0, summary.errors

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.send(4)
                time.sleep(0.1)
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def finish(self) -> dict[str, int]:
        """Stop sending; every order id -> its newest ``updated_at`` in epoch ms."""
        self.stop.set()
        self.join(30)
        assert not self.is_alive() and self.error is None, self.error
        return self.expected()

    def expected(self) -> dict[str, int]:
        return {i: millis(o["updated_at"]) for i, o in self.latest.items()}


class AliasWatcher(threading.Thread):
    """Counts the documents visible through the alias every 50 ms until stopped."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="alias-watcher", daemon=True)
        self.client = connect_search(settings.search)
        self.alias = settings.streams[0].alias
        self.counts: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    self.counts.append(self.client.count(self.alias))
                except Exception as exc:  # an empty or missing alias would land here
                    self.errors.append(str(exc))
                time.sleep(0.05)
        finally:
            self.client.close()

    def finish(self) -> list[int]:
        self.stop.set()
        self.join(10)
        return self.counts


def alias_indices(settings: Settings) -> dict[str, dict[str, Any]]:
    with connect_search(settings.search) as client:
        return client.get_alias(settings.streams[0].alias)


def version_states(settings: Settings) -> dict[int, str]:
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        return {int(v.version): v.state for v in ledger.index_versions(settings.streams[0].alias)}


def reindex(settings: Settings, workdir: Path, *args: str, name: str = "reindex") -> str:
    code, output = run_cli(
        "--stream",
        "orders",
        *args,
        settings=settings,
        workdir=workdir,
        name=name,
        command=REINDEX,
        timeout_s=120,
    )
    assert code == 0, output[-4000:]
    return output


@pytest.fixture
def running(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[Settings, Proc, Producer]]:
    """A daemon caught up on 300 records (v1 live) and a producer ready to start."""
    settings = make_settings(partitions=2, runtime=RUNTIME, linger_s=0.2)
    producer = Producer(settings, seed=11)
    producer.send(300)
    daemon = start_cli("run", settings=settings, workdir=tmp_path, name="daemon")
    try:
        wait_for(caught_up(settings, end_offsets(settings)), 90, "the daemon to catch up")
        yield settings, daemon, producer
    finally:
        producer.stop.set()
        stop_quietly(daemon, 30)


def settle(settings: Settings, producer: Producer, daemon: Proc) -> dict[str, int]:
    """Stop producing, wait until the daemon committed everything; the expected documents."""
    expected = producer.finish()
    wait_for(caught_up(settings, end_offsets(settings)), 60, "the daemon to catch up")
    assert daemon.alive(), daemon.tail()
    return expected


def test_reindex_rollback_and_keep_beside_a_live_stream(
    running: tuple[Settings, Proc, Producer], tmp_path: Path
) -> None:
    """Build v2 from Kafka while producing, roll back to v1, then build v3 and prune.

    Each time the live version holds exactly the produced set at the newest versions, and
    the alias count never drops below what it was before the reindex began.
    """
    settings, daemon, producer = running
    alias = settings.streams[0].alias
    assert set(alias_indices(settings)) == {f"{alias}-v1"}
    with connect_search(settings.search) as client:
        client.refresh(alias)
        before = client.count(alias)
    assert before == len(producer.expected())

    watcher = AliasWatcher(settings)
    watcher.start()
    producer.start()
    try:
        out = reindex(settings, tmp_path, "--source", "kafka")
        assert f"live={alias}-v2" in out
        time.sleep(1.0)  # some records after the swap, while daemons stop dual-writing
        assert alias_indices(settings) == {f"{alias}-v2": {"is_write_index": True}}
        assert version_states(settings) == {1: "retired", 2: "live"}

        out = reindex(settings, tmp_path, "--rollback", name="rollback")
        assert f"live={alias}-v1" in out and "source=kafka" in out
        time.sleep(1.0)
    finally:
        expected = settle(settings, producer, daemon)
        counts = watcher.finish()

    assert watcher.errors == []
    assert len(counts) > 20, "the watcher ran throughout"
    assert min(counts) >= before, "the alias never shows fewer documents"
    assert alias_indices(settings) == {f"{alias}-v1": {"is_write_index": True}}
    assert version_states(settings) == {1: "live", 2: "retired"}
    assert index_versions(settings, f"{alias}-v1") == expected, "rollback caught v1 up"
    assert index_versions(settings, f"{alias}-v2").keys() <= expected.keys()

    # A third version from the live index, then retention: no retired version kept.
    out = reindex(settings, tmp_path, "--source", "index", "--keep", "0", name="keep")
    assert "deleted=" in out
    assert version_states(settings) == {1: "deleted", 2: "deleted", 3: "live"}
    assert set(alias_indices(settings)) == {f"{alias}-v3"}
    assert index_versions(settings) == expected
    with connect_search(settings.search) as client:
        assert not client.index_exists(f"{alias}-v1")
        assert not client.index_exists(f"{alias}-v2")
        index_settings = client.get_settings(f"{alias}-v3")["index"]
    assert index_settings.get("refresh_interval") in (None, "1s"), "bulk-load settings restored"
    assert int(index_settings.get("number_of_replicas", 0)) == 0
    assert index_settings.get("gc_deletes") == time_value(
        settings.gc_deletes_s(settings.streams[0])
    ), "tombstone retention of a live index, not the bulk load's"


def test_kill_9_at_every_step_then_rerun_converges(
    running: tuple[Settings, Proc, Producer], tmp_path: Path
) -> None:
    """A reindex killed at each pause point in turn, resumed each time, ends exactly right;
    until the swap the alias stays on v1."""
    settings, daemon, producer = running
    alias = settings.streams[0].alias
    producer.start()
    try:
        for point in PAUSE_POINTS:
            proc = start_cli(
                "--stream",
                "orders",
                "--source",
                "index",
                settings=settings,
                workdir=tmp_path,
                name=f"reindex-{point}",
                command=REINDEX,
                extra_env={"INGEST_REINDEX_PAUSE_AT": point},
            )
            try:
                proc.wait_output(r"reindex_paused", timeout_s=60)
            finally:
                kill_9(proc)
            on = set(alias_indices(settings))
            assert on == ({f"{alias}-v2"} if point == "swapped" else {f"{alias}-v1"}), point
            assert version_states(settings).get(2) in (None, "building"), point
        reindex(settings, tmp_path, name="reindex-final")

        # An unswapped build given up while the daemon dual-writes to it: the index is
        # deleted only once the daemon stopped writing there, and the daemon lives on.
        proc = start_cli(
            "--stream",
            "orders",
            settings=settings,
            workdir=tmp_path,
            name="reindex-v3",
            command=REINDEX,
            extra_env={"INGEST_REINDEX_PAUSE_AT": "filled"},
        )
        try:
            proc.wait_output(r"reindex_paused", timeout_s=60)
        finally:
            kill_9(proc)
        assert "aborted build of" in reindex(settings, tmp_path, "--abort", name="abort")
    finally:
        expected = settle(settings, producer, daemon)
    assert version_states(settings) == {1: "retired", 2: "live", 3: "deleted"}
    assert alias_indices(settings) == {f"{alias}-v2": {"is_write_index": True}}
    assert index_versions(settings, f"{alias}-v2") == expected
    with connect_search(settings.search) as client:
        assert not client.index_exists(f"{alias}-v3")


def test_reindex_without_a_daemon_and_a_second_run_refused_while_one_runs(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """No daemon: no acknowledgement to wait for. A concurrent run is refused by the lock."""
    settings = make_settings(partitions=1, runtime=RUNTIME)
    producer = Producer(settings, seed=5)
    producer.send(120)
    expected = producer.expected()
    paused = start_cli(
        "--stream",
        "orders",
        settings=settings,
        workdir=tmp_path,
        name="first",
        command=REINDEX,
        extra_env={"INGEST_REINDEX_PAUSE_AT": "acked"},
    )
    try:
        paused.wait_output(r"reindex_paused", timeout_s=60)
        code, output = run_cli(
            "--stream",
            "orders",
            settings=settings,
            workdir=tmp_path,
            name="second",
            command=REINDEX,
            timeout_s=60,
        )
        assert code == 1 and "another reindex" in output
    finally:
        kill_9(paused)
    reindex(settings, tmp_path, name="third")
    alias = settings.streams[0].alias
    # v1 was created empty by the reindex itself (no daemon ever ran); v2 is from Kafka.
    assert version_states(settings) == {1: "retired", 2: "live"}
    assert index_versions(settings, f"{alias}-v2") == expected


def test_reindex_from_archive_files(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """An index filled from archive files is rebuilt from the same files."""
    from backfill.runner import run_file_backfill
    from ingest.pipeline.wiring import open_components
    from ingest.search.indices import ensure_live_index

    settings = make_settings(partitions=1)
    orders = list(itertools.islice(sample_orders(21), 40))
    schema = SchemaCatalog.load(settings.schemas_dir).latest("orders")
    archive = tmp_path / "lake" / "part-0.avro"
    archive.parent.mkdir(parents=True)
    with archive.open("wb") as fo:
        fastavro.writer(fo, schema.schema, orders)
    with open_components(settings) as c:
        stream = settings.streams[0]
        ensure_live_index(
            c.search, c.ledger, stream, c.catalog, gc_deletes_s=settings.gc_deletes_s(stream)
        )
    assert run_file_backfill(settings, "orders", str(archive)).ok
    expected = {o["order_id"]: millis(o["updated_at"]) for o in orders}
    alias = settings.streams[0].alias
    assert index_versions(settings, f"{alias}-v1") == expected

    out = reindex(settings, tmp_path, "--source", "files", "--path", str(tmp_path / "lake"))
    assert "source=files" in out and "old_count=40 new_count=40" in out
    assert version_states(settings) == {1: "retired", 2: "live"}
    assert index_versions(settings) == expected


def test_rollback_and_abort_refusals(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Nothing to roll back to is an error; --abort deletes an unswapped build."""
    settings = make_settings(partitions=1, runtime=RUNTIME)
    Producer(settings, seed=3).send(30)
    code, output = run_cli(
        "--stream",
        "orders",
        "--rollback",
        settings=settings,
        workdir=tmp_path,
        name="rollback",
        command=REINDEX,
    )
    assert code == 1 and "no retired version" in output
    killed = start_cli(
        "--stream",
        "orders",
        settings=settings,
        workdir=tmp_path,
        name="build",
        command=REINDEX,
        extra_env={"INGEST_REINDEX_PAUSE_AT": "verified"},
    )
    try:
        killed.wait_output(r"reindex_paused", timeout_s=60)
    finally:
        kill_9(killed)
    out = reindex(settings, tmp_path, "--abort", name="abort")
    assert "aborted build of" in out
    alias = settings.streams[0].alias
    assert version_states(settings) == {1: "live", 2: "deleted"}
    with connect_search(settings.search) as client:
        assert not client.index_exists(f"{alias}-v2")
        assert set(client.get_alias(alias)) == {f"{alias}-v1"}


def test_schemas_diff_tells_in_place_from_reindex(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """An index from schema v1 lacks v2's fields: in place. A changed type: reindex."""
    settings = make_settings(partitions=None)
    alias = settings.streams[0].alias
    catalog = SchemaCatalog.load(settings.schemas_dir)
    stream = settings.streams[0]
    index = f"{alias}-v1"
    with connect_search(settings.search) as client:
        client.create_index(index, index_definition(catalog.versions("orders")[0], stream.index))
        client.update_aliases([{"add": {"index": index, "alias": alias, "is_write_index": True}}])

    def diff(*args: str, s: Settings = settings) -> str:
        code, output = run_cli(
            "schemas", "diff", "--stream", "orders", *args, settings=s, workdir=tmp_path
        )
        assert code == 0, output
        return output

    out = diff()
    assert "added    priority" in out and "added    coupon_code" in out
    assert "can be applied in place" in out
    out = diff("--apply")
    assert "applied in place: 2 field(s)" in out
    assert "up to date" in diff()

    changed = make_settings(
        partitions=None, index={"replicas": 0, "field_overrides": {"notes": {"type": "text"}}}
    )
    out = diff(s=changed)
    assert "changed  notes" in out and "needs a reindex" in out

    code, output = run_cli("schemas", "list", settings=settings, workdir=tmp_path)
    assert code == 0 and "orders v2" in output and "(latest)" in output


def test_reindex_after_the_daemon_was_killed_goes_on_within_heartbeats(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The only daemon is killed -9 just before a reindex: its run stays ``running`` with a
    heartbeat that stops. The reindex notices the silence after a few heartbeats and goes
    on without an acknowledgement (reading to the log end) -- though the retry budget and
    the acknowledgement timeout are an hour, so waiting them out would fail this test."""
    runtime = {**RUNTIME, "max_retry_s": 3600}
    settings = make_settings(partitions=1, runtime=runtime, search={"request_timeout_s": 5})
    producer = Producer(settings, seed=23)
    producer.send(80)
    daemon = start_cli("run", settings=settings, workdir=tmp_path, name="daemon")
    try:
        wait_for(caught_up(settings, end_offsets(settings)), 90, "the daemon to catch up")
    finally:
        kill_9(daemon)
    producer.send(20)  # reached Kafka only: the fill must read to the log end
    expected = producer.expected()

    silent_s = stale_after_s(0.5, 5)
    code, output = run_cli(
        "--stream",
        "orders",
        "--ack-timeout-s",
        "3600",
        settings=settings,
        workdir=tmp_path,
        name="reindex",
        command=REINDEX,
        timeout_s=silent_s + 60,  # the silence, then the reindex's own work
    )
    assert code == 0, output[-4000:]
    assert "reindex_daemons_presumed_dead" in output
    alias = settings.streams[0].alias
    assert version_states(settings) == {1: "retired", 2: "live"}
    assert index_versions(settings, f"{alias}-v2") == expected
