"""Metrics: each daemon call moves the series it names, and instances never share state."""

from __future__ import annotations

import pytest

from ingest.daemon.metrics import CONTENT_TYPE, Metrics


def _v(m: Metrics, name: str, **labels: str) -> float | None:
    return m.value(f"ingest_{name}", labels)


def test_consumed_adds_per_stream() -> None:
    """consumed() accumulates per stream label."""
    m = Metrics(process_metrics=False)
    m.consumed("orders", 10)
    m.consumed("orders", 5)
    m.consumed("users", 1)
    assert _v(m, "records_consumed_total", stream="orders") == 15
    assert _v(m, "records_consumed_total", stream="users") == 1


def test_flushed_moves_every_counter_and_histogram() -> None:
    """flushed() records outcomes, dead letters by stage, batch size, latency and time."""
    m = Metrics(process_metrics=False)
    m.flushed(
        "orders",
        indexed=90,
        deleted=4,
        conflicts=3,
        dead={"decode": 2, "index": 1, "schema": 0},
        batch_records=100,
        took_s=0.2,
        at=1_700_000_000.0,
    )
    m.flushed("orders", indexed=10, batch_records=10, took_s=3.0, at=1_700_000_005.0, python_path=7)
    assert _v(m, "records_indexed_total", stream="orders") == 100
    assert _v(m, "records_python_path_total", stream="orders") == 7
    assert _v(m, "records_deleted_total", stream="orders") == 4
    assert _v(m, "conflicts_total", stream="orders") == 3
    assert _v(m, "records_dead_lettered_total", stream="orders", stage="decode") == 2
    assert _v(m, "records_dead_lettered_total", stream="orders", stage="index") == 1
    # a zero count creates no series
    assert _v(m, "records_dead_lettered_total", stream="orders", stage="schema") is None
    assert _v(m, "batch_size_records_count", stream="orders") == 2
    assert _v(m, "batch_size_records_sum", stream="orders") == 110
    assert _v(m, "batch_size_records_bucket", stream="orders", le="10.0") == 1
    assert _v(m, "bulk_latency_seconds_sum", stream="orders") == pytest.approx(3.2)
    assert _v(m, "bulk_latency_seconds_bucket", stream="orders", le="0.25") == 1
    assert _v(m, "last_flush_timestamp_seconds", stream="orders") == 1_700_000_005.0


def test_flushed_without_time_uses_wall_clock() -> None:
    """Without ``at`` the last-flush gauge holds a current unix time."""
    import time

    m = Metrics(process_metrics=False)
    before = time.time()
    m.flushed("orders", batch_records=1, took_s=0.01)
    value = _v(m, "last_flush_timestamp_seconds", stream="orders")
    assert value is not None
    assert before <= value <= time.time()


def test_retry_sets_in_retry_until_flush() -> None:
    """retry() counts attempts and raises in_retry; a flush clears it."""
    m = Metrics(process_metrics=False)
    m.retry("orders")
    m.retry("orders")
    assert _v(m, "retries_total", stream="orders") == 2
    assert _v(m, "in_retry", stream="orders") == 1
    m.flushed("orders", batch_records=1, took_s=0.1)
    assert _v(m, "in_retry", stream="orders") == 0
    assert _v(m, "retries_total", stream="orders") == 2


def test_lag_and_buffered_are_set_not_added() -> None:
    """lag() and buffered() are gauges: the last call wins."""
    m = Metrics(process_metrics=False)
    m.lag("orders", 0, 100)
    m.lag("orders", 0, 40)
    m.lag("orders", 1, 7)
    m.buffered("orders", 4096)
    m.buffered("orders", 1024)
    assert _v(m, "lag_records", stream="orders", partition="0") == 40
    assert _v(m, "lag_records", stream="orders", partition="1") == 7
    assert _v(m, "buffered_bytes", stream="orders") == 1024


def test_register_stream_exposes_zero_series() -> None:
    """A registered stream shows its counters at zero before any traffic."""
    m = Metrics(process_metrics=False)
    m.register_stream("orders")
    assert _v(m, "records_consumed_total", stream="orders") == 0
    assert _v(m, "in_retry", stream="orders") == 0
    assert _v(m, "records_python_path_total", stream="orders") == 0


def test_fast_path_gauge_says_on_or_off() -> None:
    m = Metrics(process_metrics=False)
    m.fast_path("orders", True)
    m.fast_path("audit", False)
    assert _v(m, "fast_path", stream="orders") == 1
    assert _v(m, "fast_path", stream="audit") == 0


def test_instances_do_not_share_a_registry() -> None:
    """Two Metrics in one process keep separate counts and never raise duplicate errors."""
    a, b = Metrics(), Metrics()
    a.consumed("orders", 3)
    assert _v(a, "records_consumed_total", stream="orders") == 3
    assert _v(b, "records_consumed_total", stream="orders") is None


def test_render_is_prometheus_text() -> None:
    """render() gives the text exposition with HELP/TYPE lines and the namespace prefix."""
    m = Metrics()
    m.consumed("orders", 2)
    text = m.render().decode()
    assert "# TYPE ingest_records_consumed_total counter" in text
    assert 'ingest_records_consumed_total{stream="orders"} 2.0' in text
    assert "process_cpu_seconds_total" in text or "python_info" in text
    assert CONTENT_TYPE.startswith("text/plain")


def test_namespace_prefixes_names() -> None:
    """A custom namespace renames every series, so two pipelines can share an endpoint."""
    m = Metrics(namespace="bf", process_metrics=False)
    m.consumed("orders", 1)
    assert m.value("bf_records_consumed_total", {"stream": "orders"}) == 1
