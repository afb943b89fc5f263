"""Several search hosts: requests spread over the healthy ones, failed ones rest, nothing lost.

One osmem stands behind several loopback proxies, each a "node" with its own address (osmem
instances would be separate stores). A node that refuses connections, or holds them without
answering, is taken out by the client library's node pool and the write goes on elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ingest.daemon.metrics import Metrics
from ingest.dev.stack import free_port
from ingest.errors import ConfigError
from ingest.search.bulk import BulkSink
from ingest.search.client import SearchClient, connect_search
from ingest.search.hosts import host_label
from ingest.settings import SearchSettings
from ingest.types import IndexAction, RawRecord
from tests.support.compat_proxy import CompatProxy
from tests.support.fault_proxy import HttpFaultProxy, TcpFaultProxy
from tests.support.search_fixtures import *  # noqa: F403 (fixtures)

pytestmark = pytest.mark.integration

BATCHES = 16
PER_BATCH = 50


@pytest.fixture(params=("opensearch", "elasticsearch"))
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def upstream(kind: str, search_url: str, request: pytest.FixtureRequest) -> str:
    """Where a client of ``kind`` reaches osmem: directly, or through the media-type proxy."""
    if kind == "elasticsearch":
        proxy: CompatProxy = request.getfixturevalue("compat_proxy")
        return proxy.url
    return search_url


@pytest.fixture
def reader(search_url: str) -> Iterator[SearchClient]:
    """A single-node client straight to osmem for reading back (only bulk writes retry)."""
    with connect_search(SearchSettings(url=search_url)) as client:
        yield client


def _batch(n: int) -> list[IndexAction]:
    actions = []
    for k in range(n * PER_BATCH, (n + 1) * PER_BATCH):
        record = RawRecord(topic="orders", partition=0, offset=k, key=None, value=b"")
        body = b'{"order_id":"o%d","qty":%d}' % (k, k)
        actions.append(IndexAction("index", f"o{k}", k, body, record))
    return actions


def _versions(client: SearchClient, index: str) -> dict[str, int]:
    client.refresh(index)
    return {hit["_id"]: hit["_version"] for hit in client.scan(index)}


def _bulks(proxy: HttpFaultProxy) -> int:
    return len(proxy.seen(path=r"/_bulk"))


def test_dead_host_and_host_killed_mid_run(
    kind: str, upstream: str, unique: str, drop_indices: list[str], reader: SearchClient
) -> None:
    """Of three hosts one is dead from the start and one is killed half-way: start-up
    succeeds, writes spread over the live hosts, every document arrives once with its
    version, and the per-host metric shows which hosts are down."""
    drop_indices.append(unique)
    dead = f"http://127.0.0.1:{free_port()}"
    metrics = Metrics(process_metrics=False)
    with HttpFaultProxy(upstream) as steady, HttpFaultProxy(upstream) as doomed:
        settings = SearchSettings(
            hosts=(dead, steady.url, doomed.url),
            kind=kind,  # type: ignore[arg-type]
            request_timeout_s=5,
        )
        with connect_search(settings) as client:
            client.hosts.watch(metrics.search_request)
            sink = BulkSink(client, max_retry_s=30, retry_initial_s=0.05, retry_max_s=0.5)
            indexed = conflicts = 0
            for n in range(BATCHES):
                if n == BATCHES // 2:
                    before_kill = (_bulks(steady), _bulks(doomed))
                    doomed.close()
                result = sink.write(_batch(n), [unique])
                assert result.rejected == []
                indexed += result.indexed
                conflicts += result.conflicts
            after_kill = _bulks(steady) - before_kill[0]
            up = client.hosts.up()
    versions = _versions(reader, unique)

    total = BATCHES * PER_BATCH
    assert versions == {f"o{k}": k for k in range(total)}
    assert indexed + conflicts == total  # a conflict = a retried write that had landed
    assert before_kill[0] > 0 and before_kill[1] > 0, before_kill  # spread over both
    assert after_kill >= BATCHES // 2  # the survivor took every later batch
    assert up == {
        host_label(dead): False,
        host_label(steady.url): True,
        host_label(doomed.url): False,
    }
    assert sink.retries_total >= 1  # the failures really happened
    for host, value in ((dead, 0.0), (steady.url, 1.0), (doomed.url, 0.0)):
        label = {"host": host_label(host)}
        assert metrics.value("ingest_search_host_up", label) == value, host
    steady_requests = metrics.value(
        "ingest_search_host_latency_seconds_count", {"host": host_label(steady.url)}
    )
    assert steady_requests is not None and steady_requests >= after_kill


def test_host_that_stops_answering_is_rested(
    kind: str, upstream: str, unique: str, drop_indices: list[str], reader: SearchClient
) -> None:
    """A host that accepts connections but never answers (a partition) times out, is taken
    out, and the writes complete on the other host."""
    drop_indices.append(unique)
    parts = upstream.rsplit(":", 1)
    with (
        TcpFaultProxy(parts[0].removeprefix("http://"), int(parts[1])) as silent,
        HttpFaultProxy(upstream) as steady,
    ):
        silent_url = f"http://{silent.address}"
        settings = SearchSettings(
            hosts=(steady.url, silent_url),
            kind=kind,  # type: ignore[arg-type]
            request_timeout_s=1,
        )
        with connect_search(settings) as client:
            silent.blackhole()
            sink = BulkSink(client, max_retry_s=30, retry_initial_s=0.05, retry_max_s=0.5)
            for n in range(4):
                assert sink.write(_batch(n), [unique]).rejected == []
            up = client.hosts.up()
        silent.pass_through()
    assert _versions(reader, unique) == {f"o{k}": k for k in range(4 * PER_BATCH)}
    assert up[host_label(silent_url)] is False
    assert silent.connections_held >= 1


def test_start_fails_in_one_line_when_no_host_answers() -> None:
    """With every host refusing connections, start-up is one ConfigError line naming each."""
    hosts = tuple(f"http://127.0.0.1:{free_port()}" for _ in range(2))
    with pytest.raises(ConfigError, match="no search host is reachable") as info:
        connect_search(SearchSettings(hosts=hosts, request_timeout_s=2))
    message = str(info.value)
    assert "\n" not in message
    assert all(host in message for host in hosts)
