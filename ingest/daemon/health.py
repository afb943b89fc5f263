"""Liveness and readiness of the daemon, and the small HTTP server that exposes them.

:class:`Health` is the daemon's progress record, written by the processing loop and read by
the HTTP thread (hence the lock). Readiness reflects *progress*, not liveness (a task that says
RUNNING while stuck, docs/design.md#readiness): the daemon is ready only while it is connected and
not stuck retrying a transient failure for longer than a threshold. Liveness only says the
processing loop is still turning; a supervisor restarts the process when it is not.

Time is always passed in (``now`` arguments, or the ``clock`` given to :class:`Health`), so
tests drive it with plain numbers and never sleep. Use one clock for every call -- the
default, :func:`time.monotonic`, is right for durations.

:func:`serve` starts a stdlib ``ThreadingHTTPServer`` on a daemon thread with three paths::

    /metrics   Prometheus text format of a :class:`~ingest.daemon.metrics.Metrics` registry
    /healthz   200 while the processing loop is alive, else 503
    /readyz    200 when ready, else 503; body: one JSON line {"ready": ..., "reason": "..."}
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast

import structlog

from ingest.daemon.metrics import CONTENT_TYPE, Metrics
from ingest.errors import ConfigError

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class HealthSnapshot:
    """A consistent copy of :class:`Health` at one moment (times from the Health's clock)."""

    started_at: float
    connected: bool
    #: stream ("" when the caller gives none) -> start of its current retry loop
    retrying: Mapping[str, float]
    last_flush_at: float | None
    last_progress_at: float | None
    last_beat_at: float | None
    shutting_down: bool
    exited: str | None

    @property
    def retrying_since(self) -> float | None:
        """Start of the longest-running retry loop of any stream, or None."""
        return min(self.retrying.values(), default=None)


class Health:
    """Thread-safe progress state written by the processing loop, read by ``/readyz``.

    The loop calls :meth:`set_connected` once it has reached Kafka, the search server and
    the ledger, :meth:`retry_started` when a transient failure is retried, :meth:`flushed`
    after each successful flush (which ends the retry), and optionally :meth:`beat` once per
    iteration so ``/healthz`` can notice a wedged loop.
    None of these block beyond a short lock.

    Retry state is kept per ``stream`` (default ``""``) so that, with one worker thread per
    stream, a flush on one stream does not hide another stream stuck in retry.
    """

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._started_at = clock()
        self._connected = False
        self._retrying: dict[str, float] = {}
        self._last_flush_at: float | None = None
        self._last_progress_at: float | None = None
        self._last_beat_at: float | None = None
        self._shutting_down = False
        self._exited: str | None = None

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    # -- written by the processing loop ------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def set_connected(self, connected: bool) -> None:
        """Whether every backend (Kafka, search, ledger) is reachable right now."""
        with self._lock:
            self._connected = connected

    def retry_started(self, now: float | None = None, *, stream: str = "") -> None:
        """A transient failure is being retried; repeated calls keep the first start time,
        so the stuck duration covers the whole retry loop."""
        now = self._now(now)
        with self._lock:
            self._retrying.setdefault(stream, now)

    def flushed(self, now: float | None = None, *, stream: str = "") -> None:
        """A flush of ``stream`` completed (sink written, ledger committed): ends its retry."""
        now = self._now(now)
        with self._lock:
            self._last_flush_at = now
            self._last_progress_at = now
            self._retrying.pop(stream, None)

    def beat(self, now: float | None = None) -> None:
        """The processing loop completed an iteration (idle or not)."""
        now = self._now(now)
        with self._lock:
            self._last_beat_at = now

    def shutting_down(self) -> None:
        """A graceful stop began: not ready any more, still alive while it flushes."""
        with self._lock:
            self._shutting_down = True

    def loop_exited(self, reason: str) -> None:
        """The processing loop ended (fatal error or stop): neither alive nor ready."""
        with self._lock:
            self._exited = reason

    # -- read by the HTTP thread -------------------------------------------------------------

    @property
    def retrying_since(self) -> float | None:
        """Start of the longest-running retry loop of any stream, or None."""
        with self._lock:
            return min(self._retrying.values(), default=None)

    @property
    def last_flush_at(self) -> float | None:
        with self._lock:
            return self._last_flush_at

    @property
    def last_progress_at(self) -> float | None:
        with self._lock:
            return self._last_progress_at

    def snapshot(self) -> HealthSnapshot:
        """Every field read under one lock acquisition."""
        with self._lock:
            return HealthSnapshot(
                started_at=self._started_at,
                connected=self._connected,
                retrying=dict(self._retrying),
                last_flush_at=self._last_flush_at,
                last_progress_at=self._last_progress_at,
                last_beat_at=self._last_beat_at,
                shutting_down=self._shutting_down,
                exited=self._exited,
            )

    def alive(self, now: float, *, max_silence_s: float | None = None) -> tuple[bool, str]:
        """Liveness: the loop has not exited and, if ``max_silence_s`` is given and the loop
        sends beats, its last beat (or the start) is at most that old."""
        s = self.snapshot()
        if s.exited is not None:
            return False, f"processing loop exited: {s.exited}"
        if max_silence_s is not None and s.last_beat_at is not None:
            silent_s = now - s.last_beat_at
            if silent_s > max_silence_s:
                return False, f"no loop heartbeat for {silent_s:.1f}s (limit {max_silence_s:g}s)"
        return True, "alive"

    def ready(self, now: float, *, max_retry_stuck_s: float) -> tuple[bool, str]:
        """Readiness: connected, not shutting down, not retrying for over ``max_retry_stuck_s``.

        The reason is one short line for ``/readyz`` and ``ingest status``.
        """
        s = self.snapshot()
        if s.exited is not None:
            return False, f"processing loop exited: {s.exited}"
        if s.shutting_down:
            return False, "shutting down"
        if not s.connected:
            return False, "not connected"
        if s.retrying:
            stream, since = min(s.retrying.items(), key=lambda item: item[1])
            stuck_s = now - since
            if stuck_s > max_retry_stuck_s:
                where = f" on stream {stream}" if stream else ""
                return False, f"retrying{where} for {stuck_s:.1f}s (limit {max_retry_stuck_s:g}s)"
        if s.last_flush_at is None:
            return True, "ok: no flush yet"
        return True, f"ok: last flush {now - s.last_flush_at:.1f}s ago"


class _Server(ThreadingHTTPServer):
    """Carries what the handler needs; daemon threads so a slow client never blocks exit."""

    daemon_threads = True
    metrics: Metrics
    health: Health
    max_retry_stuck_s: float
    max_silence_s: float | None


class _Handler(BaseHTTPRequestHandler):
    #: Socket timeout per request: a client that stalls cannot pin a thread for ever.
    timeout = 10
    server_version = "ingest"

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, *, send_body: bool) -> None:
        srv = cast(_Server, self.server)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, ctype, body = HTTPStatus.OK, CONTENT_TYPE, srv.metrics.render()
        elif path in ("/healthz", "/readyz"):
            now = srv.health.clock()
            if path == "/healthz":
                ok, reason = srv.health.alive(now, max_silence_s=srv.max_silence_s)
                payload: dict[str, object] = {"alive": ok, "reason": reason}
            else:
                ok, reason = srv.health.ready(now, max_retry_stuck_s=srv.max_retry_stuck_s)
                payload = {"ready": ok, "reason": reason}
            status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            ctype, body = "application/json", (json.dumps(payload) + "\n").encode()
        else:
            status, ctype, body = HTTPStatus.NOT_FOUND, "text/plain", b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would flood stderr; keep them at debug level."""
        log.debug("http_request", client=self.client_address[0], request=self.requestline)


class MetricsServer:
    """A running metrics/health server; :meth:`close` stops it (idempotent)."""

    def __init__(self, httpd: _Server, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self._closed = False
        address = httpd.server_address
        self.host: str = str(address[0])
        self.port: int = int(address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving, release the port and wait up to ``timeout_s`` for the thread."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout_s)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    port: int,
    metrics: Metrics,
    health: Health,
    *,
    host: str = "127.0.0.1",
    max_retry_stuck_s: float = 60.0,
    max_silence_s: float | None = None,
) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` in a daemon thread.

    Returns at once with the server listening; port 0 picks a free port (see ``.port``).
    Binds to loopback by default: pass ``host="0.0.0.0"`` in a container so Prometheus and
    the orchestrator's probes can reach it. A port that cannot be bound is a ConfigError.
    """
    try:
        httpd = _Server((host, port), _Handler)
    except OSError as exc:
        raise ConfigError(f"cannot listen for metrics on {host}:{port}: {exc.strerror}") from None
    httpd.metrics = metrics
    httpd.health = health
    httpd.max_retry_stuck_s = max_retry_stuck_s
    httpd.max_silence_s = max_silence_s
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.1},
        name="metrics-http",
        daemon=True,
    )
    thread.start()
    server = MetricsServer(httpd, thread)
    log.info("metrics_listening", host=server.host, port=server.port)
    return server
