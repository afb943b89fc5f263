"""Loopback proxies that inject faults in front of the real servers, switchable at run time.

:class:`HttpFaultProxy` sits in front of the search server and can, per request:

- pass through (the default);
- answer 429/503 itself, for N requests or T seconds (``fail``);
- hold the response past a client's timeout, after forwarding or instead of it (``delay``);
- hold chosen requests (the n-th matching one onwards) until the test releases them, while
  every other request passes (``hold``: out-of-order completion of requests in flight);
- answer a ``_bulk`` request with HTTP 200, ``errors: true`` and item-level 429/503 for some
  items (``reject_items``, docs/design.md#item-results). The rejected items are *withheld* from the
  server by default, so the index really lacks them — as when Elasticsearch rejects them — and a
  client that does not retry them loses them visibly. The items' error reason can be set,
  e.g. to text with a NUL character, as a server may echo a field value;
- answer 413 to requests whose body is over a size (``limit_body``), as a server or a
  gateway with ``http.max_content_length`` does.

:class:`TcpFaultProxy` relays raw TCP (PostgreSQL; Kafka only when the broker advertises
the proxy's address) and can refuse new connections, blackhole traffic (accept and read,
never answer) or drop every open connection.

Both count what they saw per mode so a test can assert that a fault actually happened.
Threads are daemons, every wait is bounded and ``close()`` stops everything.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import re
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

PASS = "pass"
FAIL = "fail"
DELAY = "delay"
HOLD = "hold"
REJECT_ITEMS = "reject_items"
TOO_LARGE = "too_large"

#: A held request is answered after this long even if never released: nothing hangs forever.
HOLD_MAX_S = 120.0

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}
_ERROR_TYPES = {
    429: "es_rejected_execution_exception",
    503: "unavailable_shards_exception",
}


def _error_body(status: int, reason: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "injected_fault_exception")
    cause = {"type": kind, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


@dataclass
class Fault:
    """One active fault: what to do, for how many matching requests or until when."""

    mode: str
    status: int = 429
    delay_s: float = 0.0
    forward: bool = True
    every: int = 1
    withhold: bool = True
    path: re.Pattern[str] | None = None
    #: Only requests whose body contains these bytes (e.g. one marked record's bulk).
    body: bytes | None = None
    remaining: int | None = None
    until: float | None = None
    retry_after_s: float | None = None
    #: The error reason of items rejected by ``reject_items`` (None: a generic one).
    reason: str | None = None
    #: ``limit_body``: bodies longer than this get 413.
    max_body_bytes: int = 0
    #: Matching requests let through untouched before the fault applies.
    skip: int = 0

    def matches(self, method: str, path: str, body: bytes = b"") -> bool:
        if self.body is not None and self.body not in body:
            return False
        if self.mode == TOO_LARGE:
            return len(body) > self.max_body_bytes
        if self.mode == REJECT_ITEMS:
            return method == "POST" and urlsplit(path).path.rstrip("/").endswith("_bulk")
        return self.path is None or bool(self.path.search(path))

    def expired(self, now: float) -> bool:
        return (self.remaining is not None and self.remaining <= 0) or (
            self.until is not None and now >= self.until
        )


@dataclass
class _Hold:
    """Held requests: after ``skip`` matching ones, the next ``count`` wait for ``released``."""

    path: re.Pattern[str]
    skip: int
    count: int
    forward: bool
    released: threading.Event = field(default_factory=threading.Event)


@dataclass
class SeenRequest:
    """One request as the proxy handled it."""

    method: str
    path: str
    mode: str
    status: int
    at: float = field(default_factory=time.monotonic)


@dataclass
class _BulkItem:
    op: str
    meta: dict[str, Any]
    lines: list[bytes]


def parse_bulk(body: bytes) -> list[_BulkItem]:
    """Split a ``_bulk`` NDJSON body into items (``delete`` has no source line)."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    items: list[_BulkItem] = []
    i = 0
    while i < len(lines):
        action = json.loads(lines[i])
        op = next(iter(action))
        if op == "delete":
            items.append(_BulkItem(op, action[op] or {}, [lines[i]]))
            i += 1
        else:
            items.append(_BulkItem(op, action[op] or {}, lines[i : i + 2]))
            i += 2
    return items


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        hold = proxy._take_hold(self.command, self.path, body)
        fault = None if hold is not None else proxy._take_fault(self.command, self.path, body)
        mode = HOLD if hold is not None else PASS if fault is None else fault.mode
        try:
            if hold is not None:
                status = self._held(hold, body)
            elif fault is None:
                status = self._forward(body)
            elif fault.mode == FAIL:
                status = self._answer_error(fault)
            elif fault.mode == DELAY:
                status = self._delayed(fault, body)
            elif fault.mode == TOO_LARGE:
                status = self._answer_error(Fault(FAIL, status=413))
            else:
                status = self._reject_items(fault, body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout) while we held the answer: expected in DELAY.
            status = -1
            self.close_connection = True
        except OSError as exc:  # the upstream failed mid-fault: tell the client, like a gateway
            reason = f"fault proxy: upstream failed: {exc}"
            with contextlib.suppress(OSError):
                self._send(502, [], json.dumps(_error_body(502, reason)).encode())
            status = 502
            self.close_connection = True
        proxy._record(SeenRequest(self.command, self.path, mode, status))

    # ---------------------------------------------------------------- upstream

    def _upstream(
        self, body: bytes, *, plain: bool = False
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request upstream; ``plain`` asks for an uncompressed answer."""
        proxy = self.server.proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.pop("Host", None)
        headers["Host"] = proxy.upstream_netloc
        if plain:
            headers = {k: v for k, v in headers.items() if k.lower() != "accept-encoding"}
        conn = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout_s
        )
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> int:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()
        return status

    def _forward(self, body: bytes) -> int:
        try:
            status, headers, data = self._upstream(body)
        except OSError as exc:
            return self._send(
                502,
                [("Content-Type", "application/json")],
                json.dumps(_error_body(502, f"fault proxy: upstream unreachable: {exc}")).encode(),
            )
        self.server.proxy._remember_product(headers)
        return self._send(status, headers, data)

    # ---------------------------------------------------------------- faults

    def _answer_error(self, fault: Fault) -> int:
        headers = [("Content-Type", "application/json; charset=UTF-8")]
        if fault.retry_after_s is not None:
            headers.append(("Retry-After", str(round(fault.retry_after_s))))
        reason = f"rejected by fault proxy (HTTP {fault.status})"
        return self._send(
            fault.status, headers, json.dumps(_error_body(fault.status, reason)).encode()
        )

    def _delayed(self, fault: Fault, body: bytes) -> int:
        proxy = self.server.proxy
        if not fault.forward:
            proxy._stopping.wait(fault.delay_s)
            return self._answer_error(Fault(FAIL, status=504))
        status, headers, data = self._upstream(body)
        proxy._stopping.wait(fault.delay_s)
        return self._send(status, headers, data)

    def _held(self, hold: _Hold, body: bytes) -> int:
        """Forward (the server applies it) or not, then answer only once released."""
        proxy = self.server.proxy
        answer = self._upstream(body) if hold.forward else None
        deadline = time.monotonic() + HOLD_MAX_S
        while not hold.released.wait(0.05):
            if proxy._stopping.is_set() or time.monotonic() > deadline:
                break
        if answer is None:
            status, headers, data = self._upstream(body)
        else:
            status, headers, data = answer
        return self._send(status, headers, data)

    def _reject_items(self, fault: Fault, body: bytes) -> int:
        proxy = self.server.proxy
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
            del self.headers["Content-Encoding"]
        items = parse_bulk(body)
        rejected = {i for i in range(len(items)) if i % fault.every == 0}
        if fault.withhold:
            sent = [item for i, item in enumerate(items) if i not in rejected]
        else:
            sent = items
        upstream_items: list[dict[str, Any]] = []
        headers: list[tuple[str, str]] = [("Content-Type", "application/json; charset=UTF-8")]
        took = 0
        if sent:
            forwarded = b"".join(line + b"\n" for item in sent for line in item.lines)
            status, headers, data = self._upstream(forwarded, plain=True)
            if status != 200:
                return self._send(status, headers, data)
            proxy._remember_product(headers)
            answer = json.loads(data)
            upstream_items = answer.get("items", [])
            took = answer.get("took", 0)
        elif proxy._product_header is not None:
            headers.append(proxy._product_header)
        merged: list[dict[str, Any]] = []
        upstream_iter = iter(upstream_items)
        for i, item in enumerate(items):
            if i in rejected:
                if not fault.withhold:
                    next(upstream_iter, None)
                reason = fault.reason or f"rejected by fault proxy (item-level {fault.status})"
                merged.append(
                    {
                        item.op: {
                            "_index": item.meta.get("_index"),
                            "_id": item.meta.get("_id"),
                            "status": fault.status,
                            "error": {
                                "type": _ERROR_TYPES.get(fault.status, "injected_fault_exception"),
                                "reason": reason,
                            },
                        }
                    }
                )
            else:
                merged.append(next(upstream_iter))
        proxy._count_items(len(rejected))
        data = json.dumps({"took": took, "errors": True, "items": merged}).encode()
        return self._send(200, headers, data)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: HttpFaultProxy

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        super().__init__(address, handler)
        self.client_socks: set[socket.socket] = set()
        self.socks_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.socks_lock:
            self.client_socks.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.socks_lock:
            self.client_socks.discard(request)
        super().shutdown_request(request)

    def drop_clients(self) -> None:
        """Close idle keep-alive connections so no handler thread outlives the proxy."""
        with self.socks_lock:
            socks = list(self.client_socks)
            self.client_socks.clear()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class HttpFaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream_url`` with switchable faults.

    Use as a context manager (or ``start()``/``close()``); point clients at ``.url``.
    Faults apply to requests arriving after the switch; one fault is active at a time and
    reverts to pass-through when its ``count`` or ``duration_s`` runs out.
    """

    def __init__(self, upstream_url: str, *, upstream_timeout_s: float = 60.0) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"fault proxy needs an http:// upstream, got {upstream_url!r}")
        self.upstream_host: str = parts.hostname
        self.upstream_port: int = parts.port or 80
        self.upstream_netloc = parts.netloc
        self.upstream_timeout_s = upstream_timeout_s
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._hold: _Hold | None = None
        #: Bodies of the requests held so far, in arrival order.
        self.held: list[bytes] = []
        #: Bodies of the requests failed by ``fail`` so far, in arrival order.
        self.failed: list[bytes] = []
        self._stopping = threading.Event()
        self._product_header: tuple[str, str] | None = None
        self.counts: Counter[str] = Counter()
        #: Faults applied so far, counted when a request is caught (before it is answered,
        #: so a request still held by ``delay`` shows here, not yet in ``counts``).
        self.taken: Counter[str] = Counter()
        self.items_rejected = 0
        self.requests: list[SeenRequest] = []
        self._server = _ProxyServer(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HttpFaultProxy:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="http-fault-proxy",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; held (delayed) responses are released at once."""
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.drop_clients()
        self._server.server_close()

    def __enter__(self) -> HttpFaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- switching

    def _set(self, fault: Fault | None, count: int | None, duration_s: float | None) -> None:
        if fault is not None:
            fault.remaining = count
            fault.until = None if duration_s is None else time.monotonic() + duration_s
        with self._lock:
            self._fault = fault

    def pass_through(self) -> None:
        """Forward everything untouched (ends any active fault)."""
        self._set(None, None, None)

    def fail(
        self,
        status: int = 429,
        *,
        count: int | None = None,
        duration_s: float | None = None,
        path: str | None = None,
        body: bytes | None = None,
        retry_after_s: float | None = None,
        skip: int = 0,
    ) -> None:
        """Answer ``status`` without forwarding, to ``count`` requests / for ``duration_s``.

        ``path`` is a regex the request path must match (e.g. ``r"_bulk"``); ``body`` bytes
        the request body must contain (fail exactly the bulk holding one marked record);
        others pass, and so do the first ``skip`` matching ones. Neither count nor duration
        means until switched back.
        """
        fault = Fault(
            FAIL,
            status=status,
            path=re.compile(path) if path else None,
            body=body,
            retry_after_s=retry_after_s,
            skip=skip,
        )
        self._set(fault, count, duration_s)

    def delay(
        self,
        delay_s: float,
        *,
        count: int | None = None,
        duration_s: float | None = None,
        path: str | None = None,
        body: bytes | None = None,
        forward: bool = True,
    ) -> None:
        """Hold matching responses ``delay_s`` seconds (past the client's timeout).

        ``forward=True`` sends the request upstream first — the server *applies* it and the
        client never hears — the nastiest timeout for idempotency; ``False`` never forwards
        and finally answers 504.
        """
        fault = Fault(
            DELAY,
            delay_s=delay_s,
            forward=forward,
            path=re.compile(path) if path else None,
            body=body,
        )
        self._set(fault, count, duration_s)

    def hold(
        self, *, skip: int = 0, count: int = 1, path: str = r"_bulk", forward: bool = True
    ) -> None:
        """Hold requests whose path matches: the first ``skip`` pass, the next ``count`` are
        answered only after :meth:`release` (at most ``HOLD_MAX_S``), later ones pass again.

        Other faults keep applying to requests not held, so later requests can complete (or
        fail) while an earlier one is held. ``forward=True`` sends the request upstream at
        once — applied by the server, unacknowledged to the client until released.
        """
        with self._lock:
            if self._hold is not None:
                self._hold.released.set()
            self._hold = _Hold(re.compile(path), skip, count, forward)

    def release(self) -> None:
        """Answer every held request now; the hold ends."""
        with self._lock:
            hold, self._hold = self._hold, None
        if hold is not None:
            hold.released.set()

    def wait_held(self, n: int = 1, timeout_s: float = 30.0) -> None:
        """Block until ``n`` requests are being (or were) held; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while self.taken[HOLD] < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fault proxy held {self.taken[HOLD]} requests, wanted {n}")
            time.sleep(0.02)

    def reject_items(
        self,
        status: int = 429,
        *,
        every: int = 1,
        count: int | None = None,
        duration_s: float | None = None,
        withhold: bool = True,
        reason: str | None = None,
    ) -> None:
        """Answer ``_bulk`` with HTTP 200, ``errors: true`` and item-level ``status``.

        Items 0, ``every``, ``2*every``... of each affected bulk request are rejected;
        ``count`` counts bulk requests. With ``withhold`` the rejected items never reach
        the server (a true rejection); without it they are applied and only the answer lies.
        ``reason`` replaces the items' error reason. Non-bulk requests pass through.
        """
        if every < 1:
            raise ValueError("every must be >= 1")
        fault = Fault(REJECT_ITEMS, status=status, every=every, withhold=withhold, reason=reason)
        self._set(fault, count, duration_s)

    def limit_body(
        self, max_body_bytes: int, *, count: int | None = None, duration_s: float | None = None
    ) -> None:
        """Answer 413 (without forwarding) to requests whose body is over ``max_body_bytes``;
        smaller ones pass. ``count`` counts the 413 answers."""
        self._set(Fault(TOO_LARGE, max_body_bytes=max_body_bytes), count, duration_s)

    # ---------------------------------------------------------------- bookkeeping

    def _take_hold(self, method: str, path: str, body: bytes) -> _Hold | None:
        with self._lock:
            hold = self._hold
            if hold is None or hold.count <= 0 or not hold.path.search(path):
                return None
            if hold.skip > 0:
                hold.skip -= 1
                return None
            hold.count -= 1
            self.taken[HOLD] += 1
            self.held.append(body)
            return hold

    def _take_fault(self, method: str, path: str, body: bytes = b"") -> Fault | None:
        with self._lock:
            fault = self._fault
            if fault is None:
                return None
            if fault.expired(time.monotonic()):
                self._fault = None
                return None
            if not fault.matches(method, path, body):
                return None
            if fault.skip > 0:
                fault.skip -= 1
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
            self.taken[fault.mode] += 1
            if fault.mode == FAIL:
                self.failed.append(body)
            return fault

    def _record(self, seen: SeenRequest) -> None:
        with self._lock:
            self.counts[seen.mode] += 1
            self.requests.append(seen)

    def _count_items(self, n: int) -> None:
        with self._lock:
            self.items_rejected += n

    def _remember_product(self, headers: list[tuple[str, str]]) -> None:
        for name, value in headers:
            if name.lower() == "x-elastic-product":
                self._product_header = (name, value)

    @property
    def active(self) -> str:
        """The mode new requests currently get."""
        with self._lock:
            fault = self._fault
            if fault is None or fault.expired(time.monotonic()):
                return PASS
            return fault.mode

    def seen(self, mode: str | None = None, path: str | None = None) -> list[SeenRequest]:
        """Requests handled so far, optionally only one mode / paths matching a regex."""
        with self._lock:
            found = list(self.requests)
        if mode is not None:
            found = [r for r in found if r.mode == mode]
        if path is not None:
            pattern = re.compile(path)
            found = [r for r in found if pattern.search(r.path)]
        return found

    def wait_for(self, mode: str, n: int = 1, timeout_s: float = 10.0) -> None:
        """Block until ``n`` requests were handled in ``mode``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while self.counts[mode] < n:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"fault proxy saw {self.counts[mode]} {mode!r} requests, wanted {n}"
                    f" within {timeout_s} s (all: {dict(self.counts)})"
                )
            time.sleep(0.02)


# =========================================================================== raw TCP

TCP_PASS = "pass"
TCP_BLACKHOLE = "blackhole"
TCP_REFUSE = "refuse"


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a firewall reset would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _abort(sock: socket.socket) -> None:
    """Make a socket another thread is using fail now; that thread closes it (with RST)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class TcpFaultProxy:
    """A TCP relay on 127.0.0.1 in front of ``(host, port)`` that can misbehave.

    Modes: ``pass_through()``; ``blackhole()`` — a network partition: connections stay
    open (new ones are accepted but not relayed), nothing moves either way and nothing is
    lost; ``pass_through()`` heals it and the held bytes flow on, as TCP retransmission
    would deliver them. ``refuse()`` — new connections are reset at once.
    ``drop_connections()`` resets every open connection now, whatever the mode.

    For Kafka the broker must advertise the proxy's address, otherwise clients reconnect
    straight to the broker after the first metadata request.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = TCP_PASS
        self.connections_seen = 0
        self.connections_refused = 0
        #: Connections that met the blackhole (held while the partition lasted).
        self.connections_held = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        #: client socket -> upstream socket (None until the upstream connection exists).
        self._links: dict[socket.socket, socket.socket | None] = {}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpFaultProxy:
        thread = threading.Thread(target=self._accept_loop, name="tcp-fault-proxy", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def close(self) -> None:
        self._stopping.set()
        self.drop_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> TcpFaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def pass_through(self) -> None:
        self.mode = TCP_PASS

    def blackhole(self) -> None:
        self.mode = TCP_BLACKHOLE

    def refuse(self) -> None:
        self.mode = TCP_REFUSE

    def drop_connections(self) -> int:
        """Reset every open connection (both sides); returns how many were dropped."""
        with self._lock:
            links = list(self._links.items())
            self._links.clear()
        for client, upstream in links:
            _abort(client)
            if upstream is not None:
                _abort(upstream)
        return len(links)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == TCP_REFUSE:
                self.connections_refused += 1
                _reset(client)
                continue
            self.connections_seen += 1
            with self._lock:
                self._links[client] = None
            thread = threading.Thread(
                target=self._connect_and_pump, args=(client,), name="tcp-fault-pump", daemon=True
            )
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def _hold(self) -> bool:
        """Wait out a blackhole; False if the proxy is closing."""
        while self.mode == TCP_BLACKHOLE:
            if self._stopping.wait(0.02):
                return False
        return not self._stopping.is_set()

    def _connect_and_pump(self, client: socket.socket) -> None:
        if self.mode == TCP_BLACKHOLE:
            self.connections_held += 1
        upstream = None
        if self._hold():
            with contextlib.suppress(OSError):
                upstream = socket.create_connection(self.upstream, timeout=5)
        with self._lock:
            linked = upstream is not None and client in self._links
            if linked:
                self._links[client] = upstream
            else:
                self._links.pop(client, None)
        if not linked or upstream is None:  # closing, dropped meanwhile or upstream down
            _reset(client)
            if upstream is not None:
                _reset(upstream)
            return
        self._pump(client, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peer = {client: upstream, upstream: client}
        sel = selectors.DefaultSelector()
        try:
            for sock in peer:
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if self.mode == TCP_BLACKHOLE:
                    self.connections_held += 1
                    if not self._hold():
                        return
                for key, _ in sel.select(timeout=0.05):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        return
                    peer[src].setblocking(True)
                    peer[src].settimeout(5)
                    peer[src].sendall(data)
                    peer[src].setblocking(False)
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            with self._lock:
                self._links.pop(client, None)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
