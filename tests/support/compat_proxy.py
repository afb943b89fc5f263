"""A loopback HTTP proxy that lets the Elasticsearch client talk to osmem-server (tests only).

The official ``elasticsearch`` client sends ``application/vnd.elasticsearch+json;
compatible-with=N`` (and ``+x-ndjson``) media types; osmem-server, like OpenSearch, answers
406 to them. This proxy rewrites exactly those media types in the ``Content-Type`` and
``Accept`` request headers to ``application/json`` / ``application/x-ndjson`` and forwards
everything else — method, path, other headers, body bytes, the response — unchanged. It
exists so the Elasticsearch-client code path can be exercised against the embedded server;
it is not part of the product and never runs in production.

It is threaded (one thread per client connection, at most ``max_connections`` at once),
keeps both the client and the upstream connection alive so it costs little in benchmarks,
and stops cleanly: :meth:`CompatProxy.stop` closes every open connection and joins threads.
Use it as a context manager::

    with CompatProxy(osmem_url) as proxy:
        settings = SearchSettings(url=proxy.url, kind="elasticsearch")
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_VND = re.compile(
    r"application/vnd\.elasticsearch\+(json|x-ndjson)\s*(;\s*compatible-with\s*=\s*\d+)?",
    re.IGNORECASE,
)
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


def plain_media_type(value: str) -> str:
    """``application/vnd.elasticsearch+json; compatible-with=9`` -> ``application/json``."""
    return _VND.sub(lambda m: "application/" + m.group(1).lower(), value)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive towards the client
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout_s)  # idle keep-alive bound
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body: bytes | None = self._read_chunked()
        else:
            body = self.rfile.read(length) if length else None
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower in {"host", "content-length"}:
                continue
            plain = lower in {"content-type", "accept"}
            headers[name] = plain_media_type(value) if plain else value
        if body is not None:
            headers["Content-Length"] = str(len(body))
        status, reason, resp_headers, resp_body = self._send_upstream(body, headers)
        self.send_response_only(status, reason)
        for name, value in resp_headers:
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        if self.command == "HEAD":
            length_header = next((v for n, v in resp_headers if n.lower() == "content-length"), "0")
            self.send_header("Content-Length", length_header)
        else:
            self.send_header("Content-Length", str(len(resp_body)))
        self.end_headers()
        if self.command != "HEAD" and resp_body:
            self.wfile.write(resp_body)

    def _send_upstream(
        self, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        # One retry on a fresh connection: the upstream may have closed an idle keep-alive.
        for attempt in (1, 2):
            if self._upstream is None:
                host, port = self.server.upstream
                self._upstream = http.client.HTTPConnection(
                    host, port, timeout=self.server.upstream_timeout_s
                )
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                resp = self._upstream.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
                continue
            if resp.will_close:
                self._upstream.close()
                self._upstream = None
            return resp.status, resp.reason, resp.getheaders(), data
        raise AssertionError("unreachable")

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _handle(self) -> None:
        try:
            self._forward()
        except (OSError, http.client.HTTPException) as exc:
            message = f"compat proxy: upstream failed: {type(exc).__name__}".encode()
            try:
                self.send_response_only(502, "Bad Gateway")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)
            except OSError:
                self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle  # noqa: N815


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        max_connections: int,
        idle_timeout_s: float,
        upstream_timeout_s: float,
    ) -> None:
        self.upstream = upstream
        self.idle_timeout_s = idle_timeout_s
        self.upstream_timeout_s = upstream_timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._conn_threads: list[threading.Thread] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=self.idle_timeout_s):
            self.shutdown_request(request)  # over the bound: refuse rather than queue forever
            return
        with self._lock:
            self._open.add(request)
            self._conn_threads = [t for t in self._conn_threads if t.is_alive()]
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="compat-proxy-conn",
            daemon=True,
        )
        with self._lock:
            self._conn_threads.append(thread)
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._open.discard(request)
            self._slots.release()

    def close_all(self, timeout_s: float) -> None:
        with self._lock:
            sockets = list(self._open)
            threads = list(self._conn_threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout_s)


class CompatProxy:
    """Forward ``127.0.0.1:<free port>`` to ``upstream_url`` with plain JSON media types."""

    def __init__(
        self,
        upstream_url: str,
        *,
        max_connections: int = 32,
        idle_timeout_s: float = 30.0,
        upstream_timeout_s: float = 60.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"compat proxy needs an http://host:port URL, got {upstream_url!r}")
        self._server = _ProxyServer(
            (parts.hostname, parts.port),
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
            upstream_timeout_s=upstream_timeout_s,
        )
        self._thread: threading.Thread | None = None
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def start(self) -> CompatProxy:
        """Start serving in a background thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="compat-proxy",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close every open connection and join the threads."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout_s)
            self._thread = None
        self._server.close_all(timeout_s)
        self._server.server_close()

    def __enter__(self) -> CompatProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
