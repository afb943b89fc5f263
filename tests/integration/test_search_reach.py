"""Reaching a cluster the way production does: client certificates, a proxy, gzip, options.

Loopback servers stand in for the network: a TLS gateway requiring a client certificate in
front of osmem, and a forwarding proxy recording each request as the client sent it. Every
test runs through both client libraries (the Elasticsearch one via the media-type proxy).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from ingest.errors import ConfigError
from ingest.search.bulk import BulkSink
from ingest.search.client import SearchClient, connect_search
from ingest.settings import SearchSettings, parse_settings
from ingest.types import IndexAction, RawRecord
from tests.support.certs import KEY_PASSWORD, Pki, make_pki
from tests.support.compat_proxy import CompatProxy
from tests.support.forward_proxy import ForwardProxy, TlsGateway
from tests.support.procs import wait_for
from tests.support.search_fixtures import *  # noqa: F403 (fixtures)

pytestmark = pytest.mark.integration

KINDS = ("opensearch", "elasticsearch")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _upstream(kind: str, search_url: str, request: pytest.FixtureRequest) -> str:
    """Where a client of ``kind`` reaches osmem: directly, or through the media-type proxy."""
    if kind == "elasticsearch":
        proxy: CompatProxy = request.getfixturevalue("compat_proxy")
        return proxy.url
    return search_url


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def upstream(kind: str, search_url: str, request: pytest.FixtureRequest) -> str:
    return _upstream(kind, search_url, request)


@pytest.fixture
def gateway(upstream: str, pki: Pki) -> Iterator[TlsGateway]:
    with TlsGateway(upstream, cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca) as server:
        yield server


def _order(doc_id: str, version: int, routing: str | None = None) -> IndexAction:
    body = orjson.dumps({"order_id": doc_id, "qty": version})
    record = RawRecord(topic="orders", partition=0, offset=version, key=None, value=b"")
    return IndexAction("index", doc_id, version, body, record, routing)


def _delete(doc_id: str, version: int, routing: str | None = None) -> IndexAction:
    record = RawRecord(topic="orders", partition=0, offset=version, key=None, value=None)
    return IndexAction("delete", doc_id, version, None, record, routing)


def _ids(client: SearchClient, index: str) -> dict[str, str | None]:
    client.refresh(index)
    return {hit["_id"]: hit.get("_routing") for hit in client.scan(index)}


def test_client_certificate_is_presented(
    kind: str, gateway: TlsGateway, pki: Pki, unique: str, drop_indices: list[str]
) -> None:
    """With client_cert_file/client_key_file (and ca_file) both clients pass a gateway that
    requires a certificate, and bulk writes go through; an encrypted key opens with its
    password."""
    drop_indices.append(unique)
    settings = SearchSettings(
        url=gateway.url,
        kind=kind,  # type: ignore[arg-type]
        ca_file=Path(pki.ca),
        client_cert_file=Path(pki.client_cert),
        client_key_file=Path(pki.client_key),
    )
    with connect_search(settings) as client:
        result = BulkSink(client, max_retry_s=5).write([_order("a", 1), _order("b", 1)], [unique])
        assert (result.indexed, result.rejected) == (2, [])
        assert sorted(_ids(client, unique)) == ["a", "b"]
    encrypted = settings.model_copy(
        update={
            "client_key_file": Path(pki.client_key_encrypted),
            "client_key_password": SecretStr(KEY_PASSWORD),
        }
    )
    with connect_search(encrypted) as client:
        assert client.count(unique) == 2
    assert {"commonName": "client"} in gateway.client_subjects
    assert gateway.handshakes_refused == 0


@pytest.mark.parametrize(
    "certificate",
    [pytest.param(None, id="no-certificate"), pytest.param("stranger", id="untrusted-ca")],
)
def test_refused_client_certificate_is_one_config_line(
    kind: str, gateway: TlsGateway, pki: Pki, certificate: str | None
) -> None:
    """Without a certificate, or with one from a CA the server does not trust, start-up
    fails with one ConfigError line naming the server."""
    extra = {}
    if certificate == "stranger":
        extra = {
            "client_cert_file": Path(pki.stranger_cert),
            "client_key_file": Path(pki.stranger_key),
        }
    settings = SearchSettings(url=gateway.url, kind=kind, ca_file=Path(pki.ca), **extra)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=f"search server {gateway.url} is unreachable") as info:
        connect_search(settings)
    assert "\n" not in str(info.value)
    # Under TLS 1.3 the client may give up before the gateway's thread has counted its refusal.
    wait_for(lambda: gateway.handshakes_refused >= 1, 10, what="the gateway to refuse")
    assert gateway.client_subjects == []


def test_unloadable_client_key_fails_without_the_password(pki: Pki, gateway: TlsGateway) -> None:
    """A wrong key password is one line naming the files, never the password."""
    settings = SearchSettings(
        url=gateway.url,
        ca_file=Path(pki.ca),
        client_cert_file=Path(pki.client_cert),
        client_key_file=Path(pki.client_key_encrypted),
        client_key_password="not-the-password",  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigError, match=r"client certificate .* cannot be loaded") as info:
        connect_search(settings)
    assert "not-the-password" not in str(info.value)
    assert pki.client_key_encrypted in str(info.value)


def test_proxy_forwards_absolute_form_with_credentials_kept_secret(
    kind: str, upstream: str, unique: str, drop_indices: list[str]
) -> None:
    """With proxy_url every request goes to the proxy in absolute form with the proxy's
    credentials as Proxy-Authorization; the password is in no log line, and wrong
    credentials fail at start with one line."""
    drop_indices.append(unique)
    with ForwardProxy(credentials="relay:pr0xy-pw") as proxy:
        proxy_url = f"http://relay:pr0xy-pw@127.0.0.1:{proxy.port}"
        settings = SearchSettings(url=upstream, kind=kind, proxy_url=proxy_url)  # type: ignore[arg-type]
        with capture_logs() as logs, connect_search(settings) as client:
            BulkSink(client, max_retry_s=5).write([_order("a", 1)], [unique])
            assert sorted(_ids(client, unique)) == ["a"]
        seen = proxy.passed()
        assert {p.method for p in seen} >= {"GET", "POST"}
        assert all(p.target.startswith(upstream + "/") for p in seen), [p.target for p in seen]
        assert any(p.target == f"{upstream}/_bulk" for p in seen)
        assert all(p.headers.get("proxy-authorization", "").startswith("Basic ") for p in seen)
        assert proxy.refused == 0
        assert "pr0xy-pw" not in repr(logs)
        assert "pr0xy-pw" not in repr(settings)
        assert "pr0xy-pw" in parse_settings({"search": {"proxy_url": proxy_url}}).secrets()

        wrong = settings.model_copy(
            update={"proxy_url": SecretStr(f"http://relay:wrong@127.0.0.1:{proxy.port}")}
        )
        with pytest.raises(ConfigError) as info:
            connect_search(wrong)
        assert "407" in str(info.value)
        assert "wrong" not in str(info.value).replace("wrong@", "")
        assert "\n" not in str(info.value)


def test_proxy_tunnels_tls_with_client_certificate(
    kind: str, gateway: TlsGateway, pki: Pki
) -> None:
    """An https:// cluster behind the proxy is reached by CONNECT; TLS and the client
    certificate run end to end, so the proxy sees only the tunnel's target."""
    with ForwardProxy() as proxy:
        settings = SearchSettings(
            url=gateway.url,
            kind=kind,  # type: ignore[arg-type]
            ca_file=Path(pki.ca),
            client_cert_file=Path(pki.client_cert),
            client_key_file=Path(pki.client_key),
            proxy_url=proxy.url,  # type: ignore[arg-type]
        )
        with connect_search(settings) as client:
            assert client.info()["version"]
        seen = proxy.passed()
        assert seen and {p.method for p in seen} == {"CONNECT"}
        assert {p.target for p in seen} == {f"127.0.0.1:{gateway.port}"}
        assert {"commonName": "client"} in gateway.client_subjects


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_bulk_bodies_are_gzipped_on_the_wire(
    kind: str, upstream: str, unique: str, drop_indices: list[str], compression: str
) -> None:
    """compression = "gzip" sends every bulk body gzip-compressed with Content-Encoding:
    gzip (and the server indexes it); "none" sends it plain."""
    drop_indices.append(unique)
    with ForwardProxy() as proxy:
        settings = SearchSettings(
            url=upstream,
            kind=kind,  # type: ignore[arg-type]
            proxy_url=proxy.url,  # type: ignore[arg-type]
            compression=compression,  # type: ignore[arg-type]
        )
        actions = [_order(f"d{n}", 1) for n in range(200)]
        with connect_search(settings) as client:
            result = BulkSink(client, max_retry_s=5).write(actions, [unique])
            assert result.indexed == 200
            assert len(_ids(client, unique)) == 200
        bulks = [p for p in proxy.passed("POST") if p.target.endswith("/_bulk")]
        assert len(bulks) == 1
        encoding = bulks[0].headers.get("content-encoding")
        if compression == "gzip":
            assert encoding == "gzip"
            plain = gzip.decompress(bulks[0].body)
            assert len(bulks[0].body) < len(plain) / 3
        else:
            assert encoding is None
            plain = bulks[0].body
        assert plain.count(b'"index"') == 200


def test_pipeline_and_routing_on_every_action(
    kind: str, upstream: str, unique: str, drop_indices: list[str]
) -> None:
    """Index actions name the stream's pipeline and their routing, deletes their routing; the
    server stores the routing and a delete routed the same way removes the document."""
    drop_indices.append(unique)
    with ForwardProxy() as proxy:
        settings = SearchSettings(url=upstream, kind=kind, proxy_url=proxy.url)  # type: ignore[arg-type]
        with connect_search(settings) as client:
            client.create_index(unique, {"settings": {"number_of_shards": 3}})
            plain = BulkSink(client, max_retry_s=5)
            written = plain.write([_order("a", 1, "r-1"), _order("b", 1, "r-2")], [unique])
            assert written.indexed == 2
            assert _ids(client, unique) == {"a": "r-1", "b": "r-2"}
            gone = plain.write([_delete("a", 2, "r-1")], [unique])
            assert gone.deleted == 1
            assert _ids(client, unique) == {"b": "r-2"}

            piped = BulkSink(client, max_retry_s=5, pipeline="enrich-orders")
            result = piped.write([_order("c", 1, "r-3"), _delete("b", 2, "r-2")], [unique])
        bulks = [p for p in proxy.passed("POST") if p.target.endswith("/_bulk")]
        last = [orjson.loads(line) for line in bulks[-1].body.splitlines()]
        assert last[0] == {
            "index": {
                "_index": unique,
                "_id": "c",
                "version": 1,
                "version_type": "external",
                "routing": "r-3",
                "pipeline": "enrich-orders",
            }
        }
        assert last[2] == {
            "delete": {
                "_index": unique,
                "_id": "b",
                "version": 2,
                "version_type": "external",
                "routing": "r-2",
            }
        }
        # osmem has no ingest pipelines, but reads the option: it refuses the unknown one
        # per item, which the sink reports with the server's reason.
        assert [(a.doc_id, reason) for a, reason in result.rejected] == [
            (
                "c",
                "illegal_argument_exception: pipeline with id [enrich-orders] does not exist"
                f" [index {unique}]",
            )
        ]
        assert result.deleted == 1
