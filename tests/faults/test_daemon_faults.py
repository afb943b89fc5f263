"""The daemon under real faults: kill -9, group churn, search-server errors, stalls, SIGTERM.

Every test checks the end state the issue promises — each valid id once at its newest
version, each bad record dead-lettered once, ledger offsets at the partitions' ends — in
the real index, ledger and broker.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.dev.demo import run_produce
from ingest.kafka.producer import ProduceSummary
from ingest.ledger import PostgresLedger
from ingest.settings import Settings
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    dead_letter_offsets,
    end_offsets,
    index_versions,
    ledger_offsets,
    metrics_port,
    scrape,
    wait_for,
    write_config,
)
from tests.support.fault_proxy import FAIL, REJECT_ITEMS, HttpFaultProxy, TcpFaultProxy

pytestmark = pytest.mark.faults


def merged(*summaries: ProduceSummary) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in summaries:
        for key, version in s.expected.items():
            out[key] = max(version, out.get(key, version))
    return out


def assert_converged(settings: Settings, expected: dict[str, int], invalid: int) -> None:
    assert index_versions(settings) == expected
    assert len(dead_letter_offsets(settings)) == invalid
    ends = {p: e for p, e in end_offsets(settings).items() if e > 0}
    assert ledger_offsets(settings) == ends


class Background:
    """Runs ``run_produce`` in a thread, so daemons are killed while records arrive."""

    def __init__(self, settings: Settings, count: int, seed: int, rate: float) -> None:
        self.summary: ProduceSummary | None = None
        self._thread = threading.Thread(
            target=self._run, args=(settings, count, seed, rate), daemon=True
        )
        self._thread.start()

    def _run(self, settings: Settings, count: int, seed: int, rate: float) -> None:
        self.summary = run_produce(
            settings,
            "orders",
            count,
            rate=rate,
            seed=seed,
            invalid_ratio=0.03,
            duplicate_ratio=0.2,
        )

    def join(self) -> ProduceSummary:
        self._thread.join(120)
        assert self.summary is not None and self.summary.failed == 0
        return self.summary


def test_kill_9_at_random_points_converges(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """Killed -9 three times mid-stream and restarted: same state as an undisturbed run."""
    settings = make_settings(partitions=2, max_batch_records=40, linger_s=0.2)
    config = write_config(settings, tmp_path / "c.toml")
    producer = Background(settings, 900, seed=11, rate=300)
    rng = random.Random(5)
    for _ in range(3):
        daemon = daemons(config)
        time.sleep(rng.uniform(4.0, 7.0))
        daemon.kill9()
    summary = producer.join()
    ends = end_offsets(settings)
    last = daemons(config)
    last.wait_assigned()
    wait_for(caught_up(settings, ends), 120, "catch-up after the kills")
    assert last.stop() == 0, last.output()
    assert_converged(settings, summary.expected, summary.invalid)


def test_group_of_two_then_three_with_one_killed(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """Members join and die while records arrive; the group still converges exactly."""
    settings = make_settings(partitions=4, max_batch_records=50, linger_s=0.2)
    config = write_config(settings, tmp_path / "c.toml")
    a, b = daemons(config), daemons(config)
    producer = Background(settings, 900, seed=21, rate=250)
    time.sleep(4)
    c = daemons(config)
    time.sleep(4)
    a.kill9()
    summary = producer.join()
    ends = end_offsets(settings)
    wait_for(caught_up(settings, ends), 150, "the remaining members to catch up")
    b.wait_assigned()
    c.wait_assigned()
    assert b.stop() == 0, b.output()
    assert c.stop() == 0, c.output()
    assert_converged(settings, summary.expected, summary.invalid)


def test_search_errors_delay_but_never_lose_or_commit_early(
    make_settings: Callable[..., Settings],
    search_url: str,
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """429s, 503s, item-level rejections and timeouts: nothing committed while failing,
    everything indexed once they stop."""
    with HttpFaultProxy(search_url) as proxy:
        settings = make_settings(
            partitions=2,
            search={"url": proxy.url, "request_timeout_s": 2.0},
            runtime={"max_retry_s": 120},
        )
        first = run_produce(settings, "orders", 300, seed=31, invalid_ratio=0.05)
        proxy.fail(503, path=r"_bulk")
        daemon = daemons(write_config(settings, tmp_path / "c.toml"))
        proxy.wait_for(FAIL, n=3, timeout_s=60)
        assert ledger_offsets(settings) == {}, "offsets committed while every bulk failed"

        proxy.fail(429, count=3, path=r"_bulk")
        proxy.wait_for(FAIL, n=6, timeout_s=30)
        proxy.reject_items(503, every=3, count=4)
        second = run_produce(settings, "orders", 300, seed=32, duplicate_ratio=0.2)
        proxy.wait_for(REJECT_ITEMS, n=1, timeout_s=30)
        proxy.delay(5.0, count=2, path=r"_bulk", forward=True)
        ends = end_offsets(settings)
        wait_for(caught_up(settings, ends), 150, "catch-up once faults stop")
        assert daemon.stop() == 0, daemon.output()
        assert proxy.items_rejected > 0
        proxy.pass_through()
        assert_converged(settings, merged(first, second), first.invalid + second.invalid)


def test_stalled_process_cannot_move_offsets_backwards(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """SIGSTOP a member holding a buffer until the group moves on, then SIGCONT it: the
    ledger fences it, offsets never go backwards, nothing is lost."""
    settings = make_settings(partitions=2, max_batch_records=100_000, linger_s=4.0)
    config = write_config(settings, tmp_path / "c.toml")
    stale = daemons(config)
    first = run_produce(settings, "orders", 200, seed=41)
    wait_for(caught_up(settings, end_offsets(settings)), 60, "first flush")
    second = run_produce(settings, "orders", 200, seed=42)
    time.sleep(1.0)  # the member buffers these, waiting out its 4 s linger
    os.kill(stale.pid, signal.SIGSTOP)
    try:
        fresh = daemons(config)
        ends = end_offsets(settings)
        wait_for(caught_up(settings, ends), 90, "the new member to take over")
        third = run_produce(settings, "orders", 100, seed=43)
        ends = end_offsets(settings)
        wait_for(caught_up(settings, ends), 60, "the new member to go on")
        before = ledger_offsets(settings)
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    observed = [before]
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        observed.append(ledger_offsets(settings))
        time.sleep(0.3)
    for earlier, later in itertools.pairwise(observed):
        for p, offset in earlier.items():
            assert later.get(p, 0) >= offset, f"partition {p} went back: {earlier} -> {later}"
    for d in (stale, fresh):
        d.stop()
    assert "partition_fenced" in stale.output() or "partitions_lost" in stale.output()
    assert_converged(settings, merged(first, second, third), 0)


def test_sigterm_flushes_the_buffer_and_exits_zero(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """Records buffered under a long linger are indexed and committed on SIGTERM."""
    settings = make_settings(partitions=2, max_batch_records=100_000, linger_s=600)
    daemon = daemons(
        write_config(settings, tmp_path / "c.toml"), extra_args=("--metrics-port", "0")
    )
    summary = run_produce(settings, "orders", 250, seed=51, duplicate_ratio=0.1)
    port = metrics_port(daemon)

    def consumed_all() -> bool:
        consumed = scrape(port).get('ingest_records_consumed_total{stream="orders"}', 0)
        return consumed >= summary.sent

    wait_for(consumed_all, 60, "the daemon to buffer every record")
    assert ledger_offsets(settings) == {}, "the long linger should have kept them buffered"
    assert scrape(port)['ingest_fast_path{stream="orders"}'] == 1.0
    assert daemon.stop(timeout_s=60) == 0, daemon.output()
    assert_converged(settings, summary.expected, 0)


def test_retry_budget_exhausted_exits_non_zero_without_committing(
    make_settings: Callable[..., Settings],
    search_url: str,
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """A search server down for longer than max_retry_s: exit 1 for the supervisor, with the
    ledger untouched and the records still there for the restart."""
    with HttpFaultProxy(search_url) as proxy:
        settings = make_settings(
            partitions=1, search={"url": proxy.url}, runtime={"max_retry_s": 3}
        )
        summary = run_produce(settings, "orders", 50, seed=61)
        proxy.fail(503, path=r"_bulk")
        daemon = daemons(write_config(settings, tmp_path / "c.toml"))
        assert daemon.proc.wait(90) == 1, daemon.output()
        assert proxy.counts[FAIL] >= 2
        assert "retries" in daemon.output().lower() or "gave up" in daemon.output().lower()
        assert ledger_offsets(settings) == {}
        proxy.pass_through()
        again = daemons(write_config(settings, tmp_path / "c.toml"))
        wait_for(caught_up(settings, end_offsets(settings)), 90, "catch-up after the restart")
        again.wait_assigned()
        assert again.stop() == 0, again.output()
        assert index_versions(settings) == summary.expected


def test_ledger_outage_is_ridden_out(
    make_settings: Callable[..., Settings],
    ledger_dsn: str,
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """PostgreSQL unreachable for a while (connections dropped, new ones refused): the daemon
    retries its commit and converges once the ledger is back, without exiting."""
    from urllib.parse import urlsplit

    pg = urlsplit(ledger_dsn)
    with TcpFaultProxy(pg.hostname or "127.0.0.1", pg.port or 5432) as proxy:
        proxied = ledger_dsn.replace(f":{pg.port}/", f":{proxy.port}/")
        settings = make_settings(
            partitions=2,
            # A short pool wait, so the 6 s outage outlasts it and the commit is retried.
            ledger={"dsn": proxied, "connect_timeout_s": 2},
            runtime={"max_retry_s": 120},
            max_batch_records=50,
        )
        first = run_produce(settings, "orders", 150, seed=71)
        daemon = daemons(write_config(settings, tmp_path / "c.toml"))
        daemon.wait_assigned()
        wait_for(caught_up(settings, end_offsets(settings)), 90, "first catch-up")
        proxy.refuse()
        proxy.drop_connections()
        second = run_produce(settings, "orders", 150, seed=72)
        time.sleep(6)
        assert daemon.alive(), daemon.output()
        proxy.pass_through()
        wait_for(caught_up(settings, end_offsets(settings)), 90, "catch-up after the outage")
        assert daemon.stop() == 0, daemon.output()
        assert "ledger commit" in daemon.output()
        assert_converged(settings, merged(first, second), 0)
        # Counters are exact too: a commit re-sent after the outage counts its flush once.
        with PostgresLedger.from_settings(settings.ledger) as ledger:
            (run,) = ledger.runs(kind="stream")
        assert run.counters["consumed"] == 300, run.counters
