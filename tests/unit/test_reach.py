"""Settings and pure pieces of reaching the cluster: hosts, compression, proxy, routing, pipeline.

No network: the settings rules, host labels and state, the gzip rule, the bulk action lines,
and routing through both paths of the record processor with fakes at the seams.
"""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from ingest.daemon.metrics import Metrics
from ingest.errors import ConfigError
from ingest.pipeline.batch import Batch
from ingest.pipeline.process import RecordProcessor
from ingest.pipeline.routing import routing_value, schema_problem
from ingest.pipeline.transform import Transformer
from ingest.search.bulk import action_lines
from ingest.search.client import SearchNotFoundError, SearchRequestError, check_pipeline
from ingest.search.hosts import HostStats, host_label
from ingest.search.transport import gzip_ndjson
from ingest.settings import StreamSettings, load_settings, parse_settings
from ingest.types import IndexAction, RawRecord

STREAM = {"name": "s", "topic": "t", "subject": "orders", "alias": "a"}


def _stream(**kw: Any) -> StreamSettings:
    return StreamSettings.model_validate(STREAM | kw)


@pytest.mark.parametrize(
    ("search", "message"),
    [
        pytest.param(
            {"url": "http://a:1", "hosts": ["http://b:1"]}, "give url or hosts", id="both"
        ),
        pytest.param({"hosts": []}, "hosts is empty", id="empty"),
        pytest.param({"hosts": ["ftp://a"]}, "not an http:// or https:// URL", id="scheme"),
        pytest.param({"hosts": ["http://a", "https://b"]}, "mixes http", id="mixed"),
        pytest.param({"client_key_file": "k.pem"}, "needs client_cert_file", id="key-only"),
        pytest.param({"client_cert_file": "c.pem"}, "needs https://", id="cert-on-http"),
        pytest.param({"proxy_url": "socks5://u:s3cr3t@p:1"}, "proxy_url", id="proxy-scheme"),
        pytest.param({"compression": "zstd"}, "compression", id="compression"),
    ],
)
def test_bad_search_reach_is_one_line(search: dict[str, Any], message: str) -> None:
    """Each misconfiguration fails with one ConfigError line naming the problem, and a
    password in a refused URL is not repeated."""
    with pytest.raises(ConfigError, match=message) as info:
        parse_settings({"search": search})
    assert "\n" not in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_hosts_from_file_and_environment(tmp_path: Any) -> None:
    """``hosts`` is a list in TOML and a comma-separated INGEST_SEARCH_HOSTS; credentials in
    host and proxy URLs count as secrets."""
    config = tmp_path / "i.toml"
    config.write_text('[search]\nhosts = ["http://u:h0st-pw@a:9200", "http://b:9200"]\n')
    settings = load_settings(config, env={"INGEST_SEARCH_PROXY_URL": "http://p:pr0xy@p:3128"})
    assert settings.search.urls == ("http://u:h0st-pw@a:9200", "http://b:9200")
    assert {"h0st-pw", "pr0xy"} <= set(settings.secrets())
    assert "pr0xy" not in repr(settings)
    env = load_settings(config, env={"INGEST_SEARCH_HOSTS": "http://c:1, http://d:2"})
    assert env.search.urls == ("http://c:1", "http://d:2")
    single = parse_settings({"search": {"url": "http://one:1"}})
    assert single.search.urls == ("http://one:1",)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        pytest.param({"routing_field": "r"}, "needs routing_header", id="tombstone-unroutable"),
        pytest.param({"routing_header": "h"}, "routing_header needs routing_field", id="header"),
        pytest.param({"pipeline": "a/b"}, "invalid ingest pipeline", id="pipeline"),
    ],
)
def test_bad_stream_options(stream: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({"streams": [STREAM | stream]})


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param({"routing_field": "id", "id_field": "id"}, id="routing-is-id"),
        pytest.param({"routing_field": "r", "routing_header": "route"}, id="header"),
        pytest.param({"routing_field": "r", "tombstones": "ignore"}, id="no-deletes"),
    ],
)
def test_routable_stream_options(stream: dict[str, Any]) -> None:
    assert parse_settings({"streams": [STREAM | stream]}).streams[0].routing_field


def test_host_label_drops_credentials_and_path() -> None:
    assert host_label("https://u:pw@Node-1:9243/prefix") == "https://node-1:9243"
    assert host_label("http://127.0.0.1") == "http://127.0.0.1:80"
    assert host_label("https://[::1]") == "https://[::1]:443"


def test_host_stats_report_state_and_latency_to_metrics() -> None:
    """A watcher sees every host at once (up, as the pools start them) and each request."""
    stats = HostStats(["http://a:1", "http://b:2"])
    metrics = Metrics(process_metrics=False)
    stats.watch(metrics.search_request)
    stats.record("http://b:2", False, 0.25)
    assert metrics.value("ingest_search_host_up", {"host": "http://a:1"}) == 1
    assert metrics.value("ingest_search_host_up", {"host": "http://b:2"}) == 0
    assert metrics.value("ingest_search_host_latency_seconds_sum", {"host": "http://b:2"}) == 0.25
    assert stats.up() == {"http://a:1": True, "http://b:2": False}


def test_gzip_only_bulk_bodies() -> None:
    """NDJSON bodies are compressed with their headers saying so; JSON bodies are not."""
    body = b'{"index":{}}\n{"a":1}\n' * 100
    packed, headers = gzip_ndjson(body, {"content-type": "application/x-ndjson"})
    assert packed is not None and gzip.decompress(packed) == body
    assert headers == {
        "content-type": "application/x-ndjson",
        "content-encoding": "gzip",
        "accept-encoding": "gzip",
    }
    json_headers = {"Content-Type": "application/json"}
    assert gzip_ndjson(b"{}", json_headers) == (b"{}", json_headers)
    assert gzip_ndjson(None, None) == (None, None)


def _record(value: bytes | None, key: bytes = b"k1", **kw: Any) -> RawRecord:
    return RawRecord(topic="t", partition=0, offset=7, key=key, value=value, **kw)


def test_action_lines_carry_routing_and_pipeline() -> None:
    index = IndexAction("index", "a", 3, b'{"x":1}', _record(b""), "r1")
    delete = IndexAction("delete", "a", 4, None, _record(None), "r1")
    assert orjson.loads(action_lines(index, "i", "p").splitlines()[0]) == {
        "index": {
            "_index": "i",
            "_id": "a",
            "version": 3,
            "version_type": "external",
            "routing": "r1",
            "pipeline": "p",
        }
    }
    assert orjson.loads(action_lines(delete, "i", "p")) == {
        "delete": {
            "_index": "i",
            "_id": "a",
            "version": 4,
            "version_type": "external",
            "routing": "r1",
        }
    }
    plain = IndexAction("index", "a", 3, b'{"x":1}', _record(b""))
    assert b"routing" not in action_lines(plain, "i") and b"pipeline" not in action_lines(
        plain, "i"
    )


class _Decoder:
    """Decodes JSON values, standing in for Avro."""

    def decode(self, value: bytes) -> dict[str, Any]:
        doc: dict[str, Any] = orjson.loads(value)
        return doc


def _process(stream: StreamSettings, *records: RawRecord, fast: bool) -> Batch:
    def native(value: bytes, key: bytes | None, offset: int) -> tuple[str, int, bytes] | None:
        doc = orjson.loads(value)
        return (str(doc["id"]), offset, value)

    processor = RecordProcessor(
        stream, _Decoder(), Transformer(stream), fast=native if fast else None
    )
    batch = Batch()
    processor.process(list(records), batch, 0.0)
    return batch


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "python-path"])
def test_routing_from_a_record_field_on_both_paths(fast: bool) -> None:
    """Both paths route by the field (integers in decimal); a record without it and a
    tombstone without the header are dead letters; a tombstone takes the header's value."""
    stream = _stream(id_field="id", routing_field="shop", routing_header="route")
    batch = _process(
        stream,
        _record(b'{"id":"a","shop":"s-1"}'),
        _record(b'{"id":"b","shop":42}'),
        _record(b'{"id":"c","shop":""}'),
        _record(None, key=b"a", headers=[("route", b"s-1")]),
        _record(None, key=b"b"),
        fast=fast,
    )
    assert [(a.op, a.doc_id, a.routing) for a in batch.actions] == [
        ("index", "a", "s-1"),
        ("index", "b", "42"),
        ("delete", "a", "s-1"),
    ]
    reasons = [d.reason for d in batch.dead_letters]
    assert len(reasons) == 2
    assert "routing field is missing or empty" in reasons[0]
    assert "no routing header" in reasons[1]


def test_routing_by_id_routes_tombstones_by_key() -> None:
    stream = _stream(id_field="id", routing_field="id")
    batch = _process(stream, _record(b'{"id":"a"}'), _record(None, key=b"a"), fast=True)
    assert [(a.op, a.routing) for a in batch.actions] == [("index", "a"), ("delete", "a")]


@pytest.mark.parametrize(
    ("field_type", "ok"),
    [
        ("string", True),
        (["null", "long"], True),
        ({"type": "enum", "name": "E", "symbols": ["A"]}, True),
        ({"type": "long", "logicalType": "timestamp-millis"}, False),
        ("double", False),
    ],
)
def test_routing_field_types(field_type: Any, ok: bool) -> None:
    """Only types rendered alike by both paths may route (a timestamp would not be)."""
    schema = {"type": "record", "name": "R", "fields": [{"name": "r", "type": field_type}]}
    assert (schema_problem(schema, "r") is None) is ok
    assert schema_problem(schema, "missing") == "is not a top-level field of the schema"
    assert routing_value(True) is None and routing_value(7) == "7"


class _PipelineClient:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def request(self, method: str, path: str, **kw: Any) -> Any:
        if self.error is not None:
            raise self.error
        return {"p": {}}


def test_missing_pipeline_fails_at_start_and_an_unanswerable_check_is_logged() -> None:
    missing = SearchNotFoundError(
        "GET", "/_ingest/pipeline/p", status=404, error_type="", reason=""
    )
    with pytest.raises(ConfigError, match="ingest pipeline 'p' does not exist"):
        check_pipeline(_PipelineClient(missing), "s", "p")  # type: ignore[arg-type]
    forbidden = SearchRequestError("GET", "/", status=403, error_type="security", reason="no")
    with capture_logs() as logs:
        check_pipeline(_PipelineClient(forbidden), "s", "p")  # type: ignore[arg-type]
        check_pipeline(_PipelineClient(None), "s", "p")  # type: ignore[arg-type]
    assert [e["event"] for e in logs] == ["ingest_pipeline_not_checked"]
