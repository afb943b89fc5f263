"""Loopback servers between the client and the search server, recording what passed (tests only).

:class:`ForwardProxy` is a forwarding HTTP proxy as a client's ``proxy_url`` reaches it:
absolute-form requests (``GET http://host:port/path``) are relayed and recorded with their
headers and body bytes exactly as the client sent them (still gzip-compressed, say), and
``CONNECT host:port`` opens a blind tunnel (recorded as the target only, as a real proxy
sees nothing inside TLS). With ``credentials`` it answers 407 to requests without the right
``Proxy-Authorization``. Only loopback targets are relayed.

:class:`TlsGateway` terminates TLS in front of a plain-HTTP upstream and requires a client
certificate signed by its CA (``ssl.CERT_REQUIRED``), like a cluster with PKI auth; refused
handshakes are counted.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import selectors
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Passed:
    """One request as the proxy received it (for CONNECT: the tunnel's target only)."""

    method: str
    target: str
    #: Header names lowercased.
    headers: dict[str, str]
    body: bytes


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _relay(handler: BaseHTTPRequestHandler, host: str, port: int, path: str, body: bytes) -> None:
    """Send the handler's request to ``host:port`` and its answer back, bytes untouched."""
    headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(handler.command, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        handler.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
    finally:
        conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: Any


class _Base:
    """Start/stop plumbing shared by both servers."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.owner = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Any:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""

    def _authorized(self) -> bool:
        proxy: ForwardProxy = self.server.owner
        if proxy.credentials is None:
            return True
        expected = "Basic " + base64.b64encode(proxy.credentials.encode()).decode()
        if self.headers.get("Proxy-Authorization") == expected:
            return True
        proxy.refused += 1
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_CONNECT(self) -> None:
        proxy: ForwardProxy = self.server.owner
        proxy.record(
            Passed("CONNECT", self.path, {k.lower(): v for k, v in self.headers.items()}, b"")
        )
        if not self._authorized():
            return
        host, _, port = self.path.rpartition(":")
        if host.strip("[]") not in _LOOPBACK:
            self.send_error(403, "loopback targets only")
            return
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        _pump(self.connection, upstream)
        self.close_connection = True

    def _forward(self) -> None:
        proxy: ForwardProxy = self.server.owner
        body = _read_body(self)
        proxy.record(
            Passed(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        if not self._authorized():
            return
        target = urlsplit(self.path)
        if target.scheme != "http" or target.hostname not in _LOOPBACK:
            self.send_error(400, "absolute-form http:// loopback URL expected")
            return
        path = target.path + ("?" + target.query if target.query else "")
        _relay(self, target.hostname, target.port or 80, path, body)

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def do_PUT(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    peer = {a: b, b: a}
    sel = selectors.DefaultSelector()
    try:
        for sock in peer:
            sel.register(sock, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select(timeout=30):
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                data = src.recv(65536)
                if not data:
                    return
                peer[src].sendall(data)
    except OSError:
        return
    finally:
        sel.close()
        with contextlib.suppress(OSError):
            b.close()


class ForwardProxy(_Base):
    """A forwarding proxy on 127.0.0.1; ``url`` is what a client's ``proxy_url`` names."""

    def __init__(self, *, credentials: str | None = None) -> None:
        super().__init__(_ProxyHandler)
        #: ``user:password`` the proxy requires, or ``None`` for an open proxy.
        self.credentials = credentials
        self.refused = 0
        self._passed: list[Passed] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, passed: Passed) -> None:
        with self._lock:
            self._passed.append(passed)

    def passed(self, method: str | None = None) -> list[Passed]:
        """Requests received so far, optionally only one method."""
        with self._lock:
            found = list(self._passed)
        return [p for p in found if method is None or p.method == method]


class _GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""

    def setup(self) -> None:
        super().setup()
        gateway: TlsGateway = self.server.owner
        try:
            self.connection.do_handshake()  # type: ignore[attr-defined]
        except (ssl.SSLError, OSError):
            gateway.handshakes_refused += 1
            raise
        cert = self.connection.getpeercert()  # type: ignore[attr-defined]
        gateway.client_subjects.append(dict(x[0] for x in cert.get("subject", ())))

    def _forward(self) -> None:
        gateway: TlsGateway = self.server.owner
        _relay(self, gateway.upstream_host, gateway.upstream_port, self.path, _read_body(self))

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def do_PUT(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()


class _TlsServer(_Server):
    context: ssl.SSLContext

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # the handshake runs in the handler's thread, so a refused client blocks no one
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Refused handshakes are expected here; they are counted, not printed."""


class TlsGateway(_Base):
    """TLS on 127.0.0.1 requiring a client certificate from ``client_ca``, then plain HTTP."""

    def __init__(self, upstream_url: str, *, cert: str, key: str, client_ca: str) -> None:
        super().__init__(_GatewayHandler)
        self._server.server_close()
        self._server = _TlsServer(("127.0.0.1", 0), _GatewayHandler)
        self._server.owner = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
        self._server.context = context
        parts = urlsplit(upstream_url)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.handshakes_refused = 0
        #: The subject of each accepted client certificate, e.g. ``{"commonName": "ingest"}``.
        self.client_subjects: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"
