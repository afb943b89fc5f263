"""Health: readiness follows progress and retry state; the HTTP server exposes it on loopback."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from ingest.daemon.health import Health, MetricsServer, serve
from ingest.daemon.metrics import Metrics
from ingest.errors import ConfigError


class FakeClock:
    """A settable clock so readiness can be driven without sleeping."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- readiness and liveness decisions ----------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "now", "ready", "reason"),
    [
        pytest.param([], 1000.0, False, "not connected", id="fresh"),
        pytest.param(["connect"], 1000.0, True, "ok: no flush yet", id="connected"),
        pytest.param(
            ["connect", "flush@990"], 1000.0, True, "ok: last flush 10.0s ago", id="flushed"
        ),
        pytest.param(["connect", "retry@980"], 1000.0, True, "ok: no flush yet", id="short-retry"),
        pytest.param(
            ["connect", "retry@970"], 1000.0, True, "ok: no flush yet", id="retry-at-limit"
        ),
        pytest.param(
            ["connect", "retry@960"],
            1000.0,
            False,
            "retrying for 40.0s (limit 30s)",
            id="stuck-retry",
        ),
        pytest.param(
            ["connect", "retry@900", "flush@950"],
            1000.0,
            True,
            "ok: last flush 50.0s ago",
            id="flush-ends-retry",
        ),
        pytest.param(["connect", "disconnect"], 1000.0, False, "not connected", id="lost"),
        pytest.param(["connect", "stopping"], 1000.0, False, "shutting down", id="stopping"),
        pytest.param(
            ["connect", "exit"], 1000.0, False, "processing loop exited: boom", id="exited"
        ),
    ],
)
def test_ready(setup: list[str], now: float, ready: bool, reason: str) -> None:
    """ready() is false when disconnected, stopping, exited or retrying past the limit."""
    h = Health(clock=FakeClock(0.0))
    for step in setup:
        name, _, at = step.partition("@")
        t = float(at) if at else None
        if name == "connect":
            h.set_connected(True)
        elif name == "disconnect":
            h.set_connected(False)
        elif name == "flush":
            h.flushed(t)
        elif name == "retry":
            h.retry_started(t)
        elif name == "stopping":
            h.shutting_down()
        elif name == "exit":
            h.loop_exited("boom")
    assert h.ready(now, max_retry_stuck_s=30) == (ready, reason)


def test_retry_keeps_first_start() -> None:
    """Repeated retry_started calls do not reset the stuck timer."""
    h = Health()
    h.set_connected(True)
    h.retry_started(100.0)
    h.retry_started(125.0)
    assert h.retrying_since == 100.0
    assert h.ready(131.0, max_retry_stuck_s=30)[0] is False


def test_retry_state_is_per_stream() -> None:
    """A flush on one stream does not hide another stream stuck in retry."""
    h = Health()
    h.set_connected(True)
    h.retry_started(100.0, stream="orders")
    h.retry_started(110.0, stream="users")
    h.flushed(120.0, stream="users")
    assert h.snapshot().retrying == {"orders": 100.0}
    assert h.ready(140.0, max_retry_stuck_s=30) == (
        False,
        "retrying on stream orders for 40.0s (limit 30s)",
    )
    h.flushed(140.0, stream="orders")
    assert h.retrying_since is None
    assert h.ready(140.0, max_retry_stuck_s=30)[0] is True


def test_flush_records_progress() -> None:
    """flushed() sets both the last flush and the last progress."""
    h = Health()
    h.flushed(10.0)
    assert (h.last_flush_at, h.last_progress_at) == (10.0, 10.0)
    snap = h.snapshot()
    assert snap.last_flush_at == 10.0
    assert snap.retrying_since is None


def test_default_times_come_from_the_clock() -> None:
    """Calls without ``now`` use the Health's clock."""
    clock = FakeClock(50.0)
    h = Health(clock=clock)
    h.retry_started()
    clock.t = 55.0
    h.flushed()
    assert h.last_flush_at == 55.0
    assert h.snapshot().started_at == 50.0


@pytest.mark.parametrize(
    ("beat_at", "max_silence_s", "alive"),
    [
        pytest.param(None, 5.0, True, id="never-beat"),
        pytest.param(98.0, 5.0, True, id="recent-beat"),
        pytest.param(90.0, 5.0, False, id="silent-loop"),
        pytest.param(0.0, None, True, id="check-off"),
    ],
)
def test_alive(beat_at: float | None, max_silence_s: float | None, alive: bool) -> None:
    """alive() fails only when beats stopped for longer than the limit."""
    h = Health()
    if beat_at is not None:
        h.beat(beat_at)
    ok, reason = h.alive(100.0, max_silence_s=max_silence_s)
    assert ok is alive
    if not alive:
        assert reason == "no loop heartbeat for 10.0s (limit 5s)"


def test_exited_loop_is_not_alive() -> None:
    """After loop_exited the process is neither alive nor ready, whatever else holds."""
    h = Health()
    h.set_connected(True)
    h.loop_exited("FencedError")
    assert h.alive(0.0) == (False, "processing loop exited: FencedError")


def test_concurrent_writers_and_readers() -> None:
    """Writers and readers on several threads never corrupt the snapshot."""
    h = Health()
    h.set_connected(True)
    errors: list[BaseException] = []

    def write() -> None:
        for i in range(2000):
            h.retry_started(float(i))
            h.flushed(float(i))

    def read() -> None:
        try:
            for _ in range(2000):
                ok, _ = h.ready(1e9, max_retry_stuck_s=1e12)
                assert ok
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (write, write, read, read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert h.last_flush_at == 1999.0
    assert h.retrying_since is None


# -- the HTTP server, with real requests on loopback ------------------------------------


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def health(clock: FakeClock) -> Health:
    return Health(clock=clock)


@pytest.fixture
def server(health: Health) -> Iterator[MetricsServer]:
    metrics = Metrics()
    metrics.consumed("orders", 7)
    srv = serve(0, metrics, health, max_retry_stuck_s=30, max_silence_s=60)
    try:
        yield srv
    finally:
        srv.close()


def test_metrics_endpoint(server: MetricsServer) -> None:
    """/metrics serves the registry in Prometheus text format."""
    assert server.host == "127.0.0.1"
    assert server.port > 0
    status, ctype, body = _get(server.url + "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    assert 'ingest_records_consumed_total{stream="orders"} 7.0' in body


def test_readyz_follows_state(server: MetricsServer, health: Health, clock: FakeClock) -> None:
    """/readyz is 503 until connected, 200 while progressing, 503 when stuck retrying."""
    status, ctype, body = _get(server.url + "/readyz")
    assert (status, ctype) == (503, "application/json")
    assert body.endswith("\n") and body.count("\n") == 1
    assert json.loads(body) == {"ready": False, "reason": "not connected"}

    health.set_connected(True)
    health.flushed(995.0)
    status, _, body = _get(server.url + "/readyz")
    assert status == 200
    assert json.loads(body) == {"ready": True, "reason": "ok: last flush 5.0s ago"}

    health.retry_started(1000.0)
    clock.t = 1031.0
    status, _, body = _get(server.url + "/readyz")
    assert status == 503
    assert json.loads(body)["reason"] == "retrying for 31.0s (limit 30s)"

    health.flushed()
    assert _get(server.url + "/readyz")[0] == 200


def test_healthz_follows_loop(server: MetricsServer, health: Health, clock: FakeClock) -> None:
    """/healthz stays 200 while disconnected, 503 once the loop is silent or exited."""
    status, _, body = _get(server.url + "/healthz")
    assert status == 200
    assert json.loads(body) == {"alive": True, "reason": "alive"}

    health.beat(1000.0)
    clock.t = 1061.0
    status, _, body = _get(server.url + "/healthz")
    assert status == 503
    assert "no loop heartbeat" in json.loads(body)["reason"]

    health.beat()
    assert _get(server.url + "/healthz")[0] == 200
    health.loop_exited("stopped")
    assert _get(server.url + "/healthz")[0] == 503


def test_unknown_path_is_404(server: MetricsServer) -> None:
    """Paths other than the three known ones answer 404; query strings are ignored."""
    assert _get(server.url + "/nope")[0] == 404
    assert _get(server.url + "/metrics?x=1")[0] == 200


def test_head_has_no_body(server: MetricsServer) -> None:
    """HEAD answers the status with an empty body (some probes use it)."""
    req = urllib.request.Request(server.url + "/healthz", method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
        assert resp.read() == b""


def test_close_releases_the_port(health: Health) -> None:
    """After close() the port is free again and close() may be called twice."""
    srv = serve(0, Metrics(process_metrics=False), health)
    port = srv.port
    srv.close()
    srv.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_port_in_use_is_config_error(server: MetricsServer, health: Health) -> None:
    """A port that is taken fails at start with one ConfigError line."""
    with pytest.raises(ConfigError, match=r"cannot listen for metrics on 127\.0\.0\.1:\d+"):
        serve(server.port, Metrics(process_metrics=False), health)


def test_context_manager_closes() -> None:
    """``with serve(...)`` closes the server on exit."""
    with serve(0, Metrics(process_metrics=False), Health()) as srv:
        assert _get(srv.url + "/healthz")[0] == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(srv.url + "/healthz", timeout=2)
