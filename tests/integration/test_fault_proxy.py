"""The fault proxies against the real servers: each fault really happens, and then stops."""

from __future__ import annotations

import contextlib
import json
import json as _json
import time
from collections.abc import Iterator

import psycopg
import pytest
import urllib3

from tests.support.fault_proxy import (
    DELAY,
    FAIL,
    PASS,
    REJECT_ITEMS,
    HttpFaultProxy,
    TcpFaultProxy,
)
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
def proxy(search_url: str) -> Iterator[HttpFaultProxy]:
    with HttpFaultProxy(search_url) as p:
        yield p


class Http:
    """A tiny HTTP client for these tests: no retries, explicit timeouts, JSON answers."""

    def __init__(self) -> None:
        self.pool = urllib3.PoolManager(timeout=10.0, retries=False)

    def request(
        self,
        method: str,
        url: str,
        *,
        json: object = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> urllib3.BaseHTTPResponse:
        if json is not None:
            content = _json.dumps(json).encode()
            headers = JSON
        return self.pool.request(method, url, body=content, headers=headers, timeout=timeout)

    def get(self, url: str, **kw: object) -> urllib3.BaseHTTPResponse:
        return self.request("GET", url, **kw)  # type: ignore[arg-type]

    def put(self, url: str, **kw: object) -> urllib3.BaseHTTPResponse:
        return self.request("PUT", url, **kw)  # type: ignore[arg-type]

    def post(self, url: str, **kw: object) -> urllib3.BaseHTTPResponse:
        return self.request("POST", url, **kw)  # type: ignore[arg-type]


def _ok(response: urllib3.BaseHTTPResponse) -> urllib3.BaseHTTPResponse:
    assert 200 <= response.status < 300, (response.status, response.data[:300])
    return response


@pytest.fixture
def http() -> Iterator[Http]:
    client = Http()
    yield client
    client.pool.clear()


def _bulk_body(index: str, ids: list[str]) -> bytes:
    lines = []
    for doc_id in ids:
        lines.append(json.dumps({"index": {"_index": index, "_id": doc_id}}))
        lines.append(json.dumps({"n": doc_id}))
    return ("\n".join(lines) + "\n").encode()


def _count(http: Http, search_url: str, index: str) -> int:
    _ok(http.post(f"{search_url}/{index}/_refresh"))
    response = _ok(http.get(f"{search_url}/{index}/_count"))
    return int(response.json()["count"])


def test_pass_through_matches_direct(proxy: HttpFaultProxy, http: Http, search_url: str) -> None:
    """Through the proxy the server answers as it does directly, headers included."""
    direct = http.get(search_url + "/")
    via = http.get(proxy.url + "/")
    assert via.status == direct.status == 200
    assert via.json()["version"] == direct.json()["version"]
    assert via.headers.get("x-elastic-product") == direct.headers.get("x-elastic-product")
    proxy.wait_for(PASS, 1)  # recorded just after the answer is sent
    assert proxy.counts[PASS] == 1


def test_fail_for_n_requests_then_pass(proxy: HttpFaultProxy, http: Http) -> None:
    """fail(429, count=2) answers two requests with an ES-style 429, then passes again."""
    proxy.fail(429, count=2, retry_after_s=1)
    first = http.get(proxy.url + "/")
    second = http.get(proxy.url + "/")
    third = http.get(proxy.url + "/")
    assert [first.status, second.status, third.status] == [429, 429, 200]
    assert first.json()["error"]["type"] == "es_rejected_execution_exception"
    assert first.headers["retry-after"] == "1"
    proxy.wait_for(FAIL, 2)  # recorded just after the answer is sent
    assert proxy.counts[FAIL] == 2
    proxy.wait_for(PASS, 1)  # recorded just after the answer is sent
    assert proxy.counts[PASS] == 1
    assert proxy.active == PASS


def test_fail_for_a_duration_and_only_matching_paths(
    proxy: HttpFaultProxy, http: Http, unique: str
) -> None:
    """fail(503, duration_s, path) hits only matching paths, and ends by itself."""
    proxy.fail(503, duration_s=0.5, path=r"_bulk")
    assert http.get(proxy.url + "/").status == 200
    body = _bulk_body(unique, ["1"])
    assert http.post(proxy.url + "/_bulk", content=body, headers=NDJSON).status == 503
    wait_for(lambda: proxy.active == PASS, timeout_s=5, what="the 503 window to end")
    after = http.post(proxy.url + "/_bulk", content=body, headers=NDJSON)
    assert after.status == 200
    assert after.json()["errors"] is False
    proxy.wait_for(FAIL, 1)  # recorded just after the answer is sent
    assert proxy.counts[FAIL] == 1


def test_delay_outlasts_client_timeout_but_is_applied(
    proxy: HttpFaultProxy, http: Http, search_url: str, unique: str
) -> None:
    """delay(forward=True): the client times out although the server applied the request."""
    _ok(http.put(f"{search_url}/{unique}", json={}))
    proxy.delay(0.8, count=1)
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        _ok(http.put(f"{proxy.url}/{unique}/_doc/1", json={"n": 1}, timeout=0.2))
    assert time.monotonic() - started < 0.8
    assert _count(http, search_url, unique) == 1
    proxy.wait_for(DELAY, 1, timeout_s=5)
    assert http.get(proxy.url + "/", timeout=2).status == 200


def test_delay_without_forward_never_reaches_the_server(
    proxy: HttpFaultProxy, http: Http, search_url: str, unique: str
) -> None:
    """delay(forward=False) holds the request and finally answers 504; nothing is applied."""
    _ok(http.put(f"{search_url}/{unique}", json={}))
    proxy.delay(0.3, count=1, forward=False)
    response = http.put(f"{proxy.url}/{unique}/_doc/1", json={"n": 1})
    assert response.status == 504
    assert _count(http, search_url, unique) == 0


@pytest.mark.parametrize(("withhold", "indexed"), [(True, 2), (False, 4)])
def test_reject_items_in_a_200_bulk(
    proxy: HttpFaultProxy,
    http: Http,
    search_url: str,
    unique: str,
    withhold: bool,
    indexed: int,
) -> None:
    """reject_items answers 200 + errors:true with item-level 429s at the chosen positions."""
    _ok(http.put(f"{search_url}/{unique}", json={}))
    proxy.reject_items(429, every=2, count=1, withhold=withhold)
    response = http.post(
        proxy.url + "/_bulk", content=_bulk_body(unique, ["a", "b", "c", "d"]), headers=NDJSON
    )
    assert response.status == 200
    answer = response.json()
    assert answer["errors"] is True
    items = [item["index"] for item in answer["items"]]
    assert [i["_id"] for i in items] == ["a", "b", "c", "d"]
    assert [i["status"] for i in items] == [429, 201, 429, 201]
    assert items[0]["error"]["type"] == "es_rejected_execution_exception"
    assert _count(http, search_url, unique) == indexed
    assert proxy.items_rejected == 2
    # The fault was for one bulk request only: the retry goes through.
    retry = http.post(proxy.url + "/_bulk", content=_bulk_body(unique, ["a"]), headers=NDJSON)
    assert retry.json()["errors"] is False
    proxy.wait_for(REJECT_ITEMS, 1)  # recorded just after the answer is sent
    assert proxy.counts[REJECT_ITEMS] == 1


def test_reject_every_item_answers_without_upstream(
    proxy: HttpFaultProxy, http: Http, search_url: str, unique: str
) -> None:
    """With every item rejected nothing is forwarded and the answer is still a bulk 200."""
    _ok(http.put(f"{search_url}/{unique}", json={}))
    http.get(proxy.url + "/")  # learn the product header
    proxy.reject_items(503, count=1)
    response = http.post(proxy.url + "/_bulk", content=_bulk_body(unique, ["a"]), headers=NDJSON)
    assert response.status == 200
    assert response.headers.get("x-elastic-product") == "Elasticsearch"
    assert response.json()["items"][0]["index"]["status"] == 503
    assert _count(http, search_url, unique) == 0


def test_tcp_proxy_in_front_of_postgres(ledger_dsn: str) -> None:
    """The TCP proxy relays PostgreSQL, resets connections, refuses and blackholes."""
    conninfo = psycopg.conninfo.conninfo_to_dict(ledger_dsn)
    if not str(conninfo.get("host", "")).startswith("127."):
        pytest.skip("INGEST_LEDGER_DSN is not a loopback TCP address")
    with TcpFaultProxy(str(conninfo["host"]), int(conninfo.get("port") or 5432)) as tcp:
        dsn = psycopg.conninfo.make_conninfo(ledger_dsn, port=tcp.port, connect_timeout=1)
        conn = psycopg.connect(dsn, autocommit=True)
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)

        assert tcp.drop_connections() == 1
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()

        tcp.refuse()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn)
        assert tcp.connections_refused >= 1

        tcp.blackhole()
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn)
        assert time.monotonic() - started < 5
        assert tcp.connections_held >= 1

        tcp.pass_through()
        with psycopg.connect(dsn) as again:
            assert again.execute("SELECT 1").fetchone() == (1,)


def test_close_releases_a_held_request_at_once(search_url: str) -> None:
    """close() does not wait out a long delay: held requests are released, threads end."""
    import threading

    proxy = HttpFaultProxy(search_url).start()
    proxy.delay(60, forward=False)
    results: list[int] = []

    def call() -> None:
        with contextlib.suppress(urllib3.exceptions.HTTPError):
            results.append(Http().get(proxy.url + "/", timeout=30).status)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    wait_for(lambda: proxy.active == DELAY and caller.is_alive(), timeout_s=5)
    time.sleep(0.2)  # let the request reach the proxy and be held
    started = time.monotonic()
    proxy.close()
    caller.join(timeout=5)
    assert not caller.is_alive()
    assert time.monotonic() - started < 3
    assert results in ([504], [])


def test_head_requests_pass_and_fail_without_a_body(
    proxy: HttpFaultProxy, http: Http, search_url: str, unique: str
) -> None:
    """HEAD (index_exists) works through the proxy, faulted or not."""
    _ok(http.put(f"{search_url}/{unique}", json={}))
    assert http.request("HEAD", f"{proxy.url}/{unique}").status == 200
    proxy.fail(503, count=1)
    assert http.request("HEAD", f"{proxy.url}/{unique}").status == 503
    assert http.request("HEAD", f"{proxy.url}/{unique}-missing").status == 404
