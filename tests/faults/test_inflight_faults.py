"""Requests in flight under real faults: held and failed bulk requests, a spent retry budget,
kill -9 and group churn with 4 in flight.

The daemon is a real ``ingest run`` behind the loopback fault proxy; what it committed is read
from the real ledger, what it wrote from the real index. The held and failed bulk bodies name
their documents, which the topic maps to offsets, so each test knows exactly where the oldest
unacknowledged batch starts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.dev.demo import run_produce
from ingest.kafka.ranges import KafkaRangeReader, OffsetRange
from ingest.settings import Settings
from tests.faults.test_daemon_faults import Background, assert_converged, merged
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    end_offsets,
    ledger_offsets,
    metrics_port,
    scrape,
    wait_for,
    write_config,
)
from tests.support.fault_proxy import DELAY, FAIL, HOLD, PASS, HttpFaultProxy, parse_bulk

pytestmark = pytest.mark.faults


def offsets_by_id(settings: Settings) -> dict[str, int]:
    """Document id (the record key) -> offset, for a one-partition topic of unique ids."""
    topic = settings.streams[0].topic
    end = end_offsets(settings)[0]
    found: dict[str, int] = {}
    for records in KafkaRangeReader(settings).read(OffsetRange(topic, 0, 0, end)):
        for r in records:
            assert r.key is not None
            found[r.key.decode()] = r.offset
    return found


def first_offset(bodies: list[bytes], offsets: dict[str, int]) -> int:
    """The lowest offset of any document in these bulk bodies."""
    return min(offsets[item.meta["_id"]] for body in bodies for item in parse_bulk(body))


def bulk_answered_since(proxy: HttpFaultProxy, since: float) -> int:
    return sum(1 for r in proxy.seen(path=r"_bulk") if r.at >= since and r.mode != HOLD)


def test_ledger_never_commits_past_a_held_request(
    make_settings: Callable[..., Settings],
    search_url: str,
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """The third of five bulk requests is applied by the server but held unanswered while the
    two later ones complete, one after two 503s: the ledger reaches the held batch's first
    offset and stays there, then catches up exactly once it is answered."""
    with HttpFaultProxy(search_url) as proxy:
        settings = make_settings(
            partitions=1,
            search={"url": proxy.url},
            max_batch_records=40,
            linger_s=5.0,
            max_in_flight=4,
        )
        summary = run_produce(settings, "orders", 200, seed=81)
        offsets = offsets_by_id(settings)
        proxy.hold(skip=2, count=1, forward=True)
        daemon = daemons(
            write_config(settings, tmp_path / "c.toml"), extra_args=("--metrics-port", "0")
        )
        port = metrics_port(daemon)
        proxy.wait_held(1, timeout_s=90)
        held_at = time.monotonic()
        proxy.fail(503, count=2, path=r"_bulk")
        wait_for(lambda: bulk_answered_since(proxy, held_at) >= 4, 60, "later requests to end")
        held_from = first_offset(proxy.held, offsets)
        assert held_from > 0
        wait_for(lambda: ledger_offsets(settings).get(0, 0) >= held_from, 30, "earlier commits")
        seen: list[int] = []
        for _ in range(10):
            seen.append(ledger_offsets(settings).get(0, 0))
            time.sleep(0.2)
        assert set(seen) == {held_from}, f"ledger {seen}, held batch starts at {held_from}"
        sample = scrape(port)
        assert sample['ingest_in_flight_limit{stream="orders"}'] == 4.0
        assert sample['ingest_in_flight_requests{stream="orders"}'] >= 1.0
        assert proxy.counts[FAIL] == 2
        proxy.release()
        wait_for(caught_up(settings, end_offsets(settings)), 60, "catch-up after the release")
        assert daemon.stop() == 0, daemon.output()
        assert_converged(settings, summary.expected, 0)


def test_spent_retry_budget_commits_nothing_past_the_failed_batch(
    make_settings: Callable[..., Settings],
    search_url: str,
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """With 4 in flight, the third of five batches fails until the budget is spent while the
    later ones are written: the daemon exits 1 with the ledger exactly at the failed batch's
    first offset, and a restart converges."""
    with HttpFaultProxy(search_url) as proxy:
        settings = make_settings(
            partitions=1,
            search={"url": proxy.url},
            runtime={"max_retry_s": 3},
            max_batch_records=40,
            linger_s=5.0,
            max_in_flight=4,
        )
        summary = run_produce(settings, "orders", 200, seed=82)
        offsets = offsets_by_id(settings)
        third = next(doc for doc, offset in offsets.items() if offset == 80)
        proxy.fail(503, path=r"_bulk", body=b'"_id":"' + third.encode() + b'"')
        daemon = daemons(write_config(settings, tmp_path / "c.toml"))
        assert daemon.proc.wait(90) == 1, daemon.output()
        assert len(proxy.failed) >= 2
        assert len(proxy.seen(PASS, path=r"_bulk")) >= 4
        assert ledger_offsets(settings) == {0: first_offset(proxy.failed, offsets)}
        proxy.pass_through()
        again = daemons(write_config(settings, tmp_path / "c.toml"))
        wait_for(caught_up(settings, end_offsets(settings)), 90, "catch-up after the restart")
        again.wait_assigned()
        assert again.stop() == 0, again.output()
        assert_converged(settings, summary.expected, 0)


def test_kill_9_with_four_in_flight_converges(
    make_settings: Callable[..., Settings],
    search_url: str,
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """Responses slowed so 4 requests are in flight; a second member churns the group and is
    killed -9 at random points three times while records arrive: every valid record ends in
    the index once at its newest version, every bad one dead-lettered once, offsets at the
    ends."""
    with HttpFaultProxy(search_url) as proxy:
        settings = make_settings(
            partitions=2,
            search={"url": proxy.url},
            max_batch_records=30,
            linger_s=0.2,
            max_in_flight=4,
        )
        proxy.delay(0.4, path=r"_bulk", forward=True)
        config = write_config(settings, tmp_path / "c.toml")
        steady = daemons(config)
        producer = Background(settings, 900, seed=83, rate=300)
        rng = random.Random(8)
        for _ in range(3):
            churn = daemons(config)
            time.sleep(rng.uniform(4.0, 8.0))
            churn.kill9()
            steady_kill = rng.random() < 0.5
            if steady_kill:
                steady.kill9()
                steady = daemons(config)
        summary = producer.join()
        ends = end_offsets(settings)
        wait_for(caught_up(settings, ends), 150, "catch-up after the kills")
        assert proxy.counts[DELAY] > 0
        steady.wait_assigned()
        assert steady.stop() == 0, steady.output()
        assert_converged(settings, merged(summary), summary.invalid)
