"""The line ``ingest run`` prints when it stops, from the daemon's own metrics."""

from __future__ import annotations

from ingest.daemon.metrics import Metrics
from ingest.daemon.summary import summary_line


def test_summary_sums_streams_stages_and_partitions() -> None:
    """Counts add up over streams and dead-letter stages; lag over partitions."""
    m = Metrics(process_metrics=False)
    m.consumed("orders", 10)
    m.consumed("users", 5)
    m.flushed(
        "orders",
        indexed=7,
        deleted=1,
        dead={"decode": 1, "validate": 1},
        batch_records=10,
        took_s=0.1,
    )
    m.flushed("users", indexed=4, dead={"transform": 1}, batch_records=5, took_s=0.1)
    m.lag("orders", 0, 3)
    m.lag("orders", 1, 2)
    assert summary_line(m) == "stopped: consumed=15 indexed=11 deleted=1 dead-lettered=3 lag=5"


def test_summary_of_an_idle_daemon_is_all_zero() -> None:
    assert summary_line(Metrics(process_metrics=False)) == (
        "stopped: consumed=0 indexed=0 deleted=0 dead-lettered=0 lag=0"
    )
