"""The registry client over real HTTP on loopback: found, missing, down, slow, refused."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import HEADER_SIZE, AvroCodec, frame
from ingest.avro.registry import HttpSchemaRegistry
from ingest.dev.samples import sample_orders
from ingest.errors import FatalError, TransientError, UnknownSchemaError

pytestmark = pytest.mark.integration

CATALOG = SchemaCatalog.load(Path(__file__).resolve().parents[2] / "schemas")
V1 = CATALOG.by_id(1)
SLOW_S = 3.0


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(b"reader:s3cret").decode()
        if self.headers.get("Authorization") != expected:
            self.send_error(401)
            return
        if self.path == "/schemas/ids/500":
            body = json.dumps({"schema": json.dumps(V1.raw)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/schemas/ids/503":
            self.send_error(503)
        elif self.path == "/schemas/ids/504":
            time.sleep(SLOW_S)
            with contextlib.suppress(OSError):  # the client gave up long ago
                self.send_error(504)
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def registry(url: str, password: str = "s3cret", timeout_s: float = 5.0) -> HttpSchemaRegistry:
    return HttpSchemaRegistry(url, username="reader", password=password, timeout_s=timeout_s)


def test_fetch_known_id(registry_url: str) -> None:
    assert registry(registry_url).fetch(500) == V1.raw


def test_codec_decodes_through_the_registry(registry_url: str) -> None:
    codec = AvroCodec(
        CATALOG,
        "orders",
        registry_url=registry_url,
        registry_username="reader",
        registry_password="s3cret",
    )
    record = next(sample_orders(9, version=1))
    body = codec.encode(record, schema_id=1)[HEADER_SIZE:]
    assert codec.decode(frame(500, body)) == dict(record, priority=False, coupon_code=None)
    with pytest.raises(UnknownSchemaError, match="nor in the registry"):
        codec.decode(frame(404, body))


@pytest.mark.parametrize(
    ("schema_id", "password", "error", "match"),
    [
        pytest.param(404, "s3cret", UnknownSchemaError, "nor in the registry", id="missing"),
        pytest.param(503, "s3cret", TransientError, "HTTP 503", id="down"),
        pytest.param(500, "wrong", FatalError, "refused the credentials", id="bad-password"),
    ],
)
def test_answers_are_classified(
    registry_url: str, schema_id: int, password: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        registry(registry_url, password).fetch(schema_id)
    assert "s3cret" not in str(info.value)


def test_a_slow_registry_times_out_as_transient(registry_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError, match="unreachable"):
        registry(registry_url, timeout_s=0.5).fetch(504)
    assert time.monotonic() - started < SLOW_S


def test_nobody_listening_is_transient() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientError, match="unreachable"):
        registry(f"http://127.0.0.1:{port}", timeout_s=2).fetch(1)
