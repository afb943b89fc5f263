"""SearchClient on the real osmem-server, through both client libraries."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import orjson
import pytest

from ingest.errors import ConfigError, TransientError
from ingest.search.client import (
    SearchClient,
    SearchNotFoundError,
    SearchRequestError,
    connect_search,
)
from ingest.settings import SearchSettings
from tests.support.compat_proxy import CompatProxy
from tests.support.search_fixtures import *  # noqa: F403 (fixtures)

pytestmark = pytest.mark.integration


MAPPING = {
    "dynamic": "strict",
    "properties": {"name": {"type": "keyword"}, "qty": {"type": "long"}},
}


def create(client: SearchClient, name: str, drop: list[str], **body: object) -> str:
    drop.append(name)
    client.create_index(
        name,
        {"settings": {"number_of_shards": 1, "number_of_replicas": 0}, "mappings": MAPPING} | body,
    )
    return name


def load(client: SearchClient, index: str, docs: dict[str, int]) -> None:
    """Index ``{id: version}`` with external versions through a raw bulk body."""
    lines = []
    for doc_id, version in docs.items():
        meta = {"_index": index, "_id": doc_id, "version": version, "version_type": "external"}
        lines += [orjson.dumps({"index": meta}), orjson.dumps({"name": doc_id, "qty": version})]
    response = client.bulk(b"\n".join(lines) + b"\n")
    assert response["errors"] is False
    client.refresh(index)


def test_auto_detects_opensearch_on_osmem(search_url: str) -> None:
    """osmem reports distribution=opensearch, so ``auto`` picks opensearch-py."""
    with connect_search(SearchSettings(url=search_url)) as client:
        assert client.kind == "opensearch"
        assert client.info()["version"]["distribution"] == "opensearch"


def test_forced_kind_wins_over_detection(compat_proxy: CompatProxy) -> None:
    """``kind=elasticsearch`` uses the elasticsearch client even though osmem says opensearch."""
    with connect_search(SearchSettings(url=compat_proxy.url, kind="elasticsearch")) as client:
        assert client.kind == "elasticsearch"
        assert client.info()["cluster_name"] == "osmem"


def test_elasticsearch_client_without_proxy_is_refused(search_url: str, unique: str) -> None:
    """Straight to osmem the elasticsearch client's vendor Content-Type gets 406 (why the
    compat proxy exists); the error is a typed request error, not a crash."""
    with connect_search(SearchSettings(url=search_url, kind="elasticsearch")) as client:
        with pytest.raises(SearchRequestError) as info:
            client.create_index(unique, {})
        assert info.value.status == 406


def test_unreachable_server_is_one_config_line_without_password() -> None:
    """A refused connection at start: ConfigError, one line, URL named, password hidden."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    settings = SearchSettings(url=f"http://ingest:hunter2@127.0.0.1:{port}", username="ingest")
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        connect_search(settings)
    message = str(info.value)
    assert time.monotonic() - start < 5
    assert f"127.0.0.1:{port}" in message
    assert "hunter2" not in message
    assert "\n" not in message


def test_silent_server_times_out_within_the_request_timeout() -> None:
    """A server that accepts but never answers fails the start after the request timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = SearchSettings(url=f"http://127.0.0.1:{port}", request_timeout_s=0.5)
        start = time.monotonic()
        with pytest.raises(ConfigError, match="unreachable"):
            connect_search(settings)
        assert time.monotonic() - start < 3


@pytest.fixture
def proxied_client(search_url: str, search_kind: str) -> Iterator[tuple[SearchClient, CompatProxy]]:
    """A client of ``search_kind`` behind a private proxy the test may stop."""
    proxy = CompatProxy(search_url).start()
    kind = "elasticsearch" if search_kind == "elasticsearch" else "opensearch"
    client = connect_search(SearchSettings(url=proxy.url, kind=kind, request_timeout_s=2))
    try:
        yield client, proxy
    finally:
        client.close()
        proxy.stop()


def test_connection_lost_after_start_is_transient(
    proxied_client: tuple[SearchClient, CompatProxy],
) -> None:
    """Once running, a vanished server is a TransientError (retried), not a config error."""
    client, proxy = proxied_client
    assert client.index_exists("nothing-here") is False
    proxy.stop()
    with pytest.raises(TransientError):
        client.count("nothing-here")


def test_index_lifecycle_settings_and_mapping(
    search_client: SearchClient, unique: str, drop_indices: list[str]
) -> None:
    """Create, inspect, change and delete an index; errors carry the server's error type."""
    client = search_client
    name = create(client, unique, drop_indices)
    assert client.index_exists(name)
    assert not client.index_exists(name + "-missing")
    assert client.get_mapping(name) == MAPPING

    client.put_mapping(name, {"properties": {"note": {"type": "text"}}})
    assert client.get_mapping(name)["properties"]["note"] == {"type": "text"}

    client.put_settings(name, {"index": {"refresh_interval": "-1"}})
    assert client.get_settings(name)["index"]["refresh_interval"] == "-1"
    client.put_settings(name, {"index": {"refresh_interval": "1s"}})
    assert client.get_settings(name)["index"]["refresh_interval"] == "1s"

    with pytest.raises(SearchRequestError) as exists:
        client.create_index(name, {})
    assert exists.value.error_type == "resource_already_exists_exception"

    client.delete_index(name)
    assert not client.index_exists(name)
    with pytest.raises(SearchNotFoundError):
        client.delete_index(name)
    client.delete_index(name, missing_ok=True)
    with pytest.raises(SearchNotFoundError):
        client.get_mapping(name)


def test_aliases_swap_atomically(
    search_client: SearchClient, unique: str, drop_indices: list[str]
) -> None:
    """One ``_aliases`` call moves the alias and its write flag from v1 to v2."""
    client = search_client
    v1 = create(client, unique + "_v1", drop_indices)
    v2 = create(client, unique + "_v2", drop_indices)
    assert client.get_alias(unique) == {}

    client.update_aliases([{"add": {"index": v1, "alias": unique, "is_write_index": True}}])
    assert client.get_alias(unique) == {v1: {"is_write_index": True}}
    assert client.index_exists(unique), "an alias counts as existing"
    load(client, v1, {"a": 1})
    load(client, v2, {"a": 1, "b": 1})
    assert client.count(unique) == 1

    client.update_aliases(
        [
            {"remove": {"index": v1, "alias": unique}},
            {"add": {"index": v2, "alias": unique, "is_write_index": True}},
        ]
    )
    assert client.get_alias(unique) == {v2: {"is_write_index": True}}
    assert client.count(unique) == 2
    assert client.get_mapping(unique) == MAPPING, "an alias over one index resolves to it"


def test_count_refresh_get_and_scan_return_versions(
    search_client: SearchClient, unique: str, drop_indices: list[str]
) -> None:
    """Documents written with external versions come back with them from get and scan."""
    client = search_client
    name = create(client, unique, drop_indices)
    docs = {f"doc-{n}": 100 + n for n in range(23)}
    docs["needs/quoting?#"] = 7
    load(client, name, docs)
    assert client.count(name) == len(docs)

    hits = list(client.scan(name, size=5))  # several scroll pages
    assert {h["_id"]: h["_version"] for h in hits} == docs
    assert all(h["_source"]["name"] == h["_id"] for h in hits)

    some = list(client.scan(name, size=5, query={"range": {"qty": {"gte": 120}}}))
    assert sorted(h["_id"] for h in some) == ["doc-20", "doc-21", "doc-22"]

    doc = client.get(name, "needs/quoting?#")
    assert doc is not None
    assert (doc["_version"], doc["_source"]) == (7, {"name": "needs/quoting?#", "qty": 7})
    assert client.get(name, "absent") is None
    with pytest.raises(SearchNotFoundError):
        client.get(name + "-missing", "absent")


def test_scan_of_empty_index_yields_nothing(
    search_client: SearchClient, unique: str, drop_indices: list[str]
) -> None:
    name = create(search_client, unique, drop_indices)
    assert list(search_client.scan(name)) == []
    assert search_client.count(name) == 0


def test_compat_proxy_reuses_connections_and_stops_cleanly(search_url: str) -> None:
    """Keep-alive on both sides (one client connection for many requests), and stop()
    closes open connections and joins every thread it started."""
    import threading

    before = {t.ident for t in threading.enumerate()}
    proxy = CompatProxy(search_url).start()
    with connect_search(SearchSettings(url=proxy.url, kind="elasticsearch")) as client:
        for _ in range(20):
            assert client.info()["cluster_name"] == "osmem"
        conns = [t for t in threading.enumerate() if t.name == "compat-proxy-conn"]
        # the start-up probe's connection may not have wound down yet
        assert 1 <= len(conns) <= 2, "20 requests over one kept-alive connection"
        proxy.stop()
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert [t.name for t in leftover if t.name.startswith("compat-proxy")] == []
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(1)
        s.connect((host, int(port)))


class _Recorder:
    """A loopback HTTP server answering GET / like a cluster and recording request headers;
    answers 401 when ``status`` says so. Stands in for a secured cluster (osmem has no auth)."""

    def __init__(
        self, distribution: str, status: int = 200, tls: tuple[str, str] | None = None
    ) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.headers: list[dict[str, str]] = []
        recorder = self
        info = {"version": {"number": "9.0.0", "distribution": distribution}}
        error = {"error": {"type": "security_exception", "reason": "unable to authenticate"}}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                recorder.headers.append({k.lower(): v for k, v in self.headers.items()})
                body = json.dumps(info if status == 200 else error).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.mark.parametrize("kind", ["opensearch", "elasticsearch"])
@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        pytest.param(
            {"username": "ingest", "password": "s3cret"}, "Basic aW5nZXN0OnMzY3JldA==", id="basic"
        ),
        pytest.param({"api_key": "a2V5OnZhbA=="}, "ApiKey a2V5OnZhbA==", id="api-key"),
        pytest.param({"bearer_token": "tok.en"}, "Bearer tok.en", id="bearer"),
    ],
)
def test_credentials_are_sent_by_both_clients(
    kind: str, auth: dict[str, str], expected: str
) -> None:
    """Basic, API key and bearer credentials reach the server as Authorization headers."""
    server = _Recorder(kind)
    try:
        settings = SearchSettings(url=server.url, **auth)  # type: ignore[arg-type]
        with connect_search(settings) as client:
            assert client.kind == kind
            client.info()
        assert [h.get("authorization") for h in server.headers] == [expected, expected]
    finally:
        server.close()


def test_refused_credentials_are_one_config_line_without_secret() -> None:
    """A 401 at start is a ConfigError that says so and does not echo the password."""
    server = _Recorder("opensearch", status=401)
    try:
        settings = SearchSettings(url=server.url, username="ingest", password="s3cret")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="refused the credentials") as info:
            connect_search(settings)
        assert "s3cret" not in str(info.value)
    finally:
        server.close()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM paths)."""
    import subprocess

    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.mark.parametrize("kind", ["opensearch", "elasticsearch"])
def test_tls_with_ca_file_and_verification(kind: str, self_signed: tuple[str, str]) -> None:
    """A private CA is trusted via ca_file; without it verification fails at start with a
    ConfigError; verify_certs=false connects anyway (the operator's explicit choice)."""
    server = _Recorder(kind, tls=self_signed)
    try:
        with connect_search(SearchSettings(url=server.url, ca_file=self_signed[0])) as client:
            assert client.kind == kind
            assert client.info()["version"]["distribution"] == kind
        with pytest.raises(ConfigError, match="unreachable") as refused:
            connect_search(SearchSettings(url=server.url))
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
        with connect_search(SearchSettings(url=server.url, verify_certs=False)) as client:
            assert client.info()["version"]["number"] == "9.0.0"
    finally:
        server.close()
