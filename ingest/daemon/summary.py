"""The one line ``ingest run`` prints when it stops: what this process did, and what is left.

Read from the daemon's own :class:`~ingest.daemon.metrics.Metrics` (its registry, not the
process-global one), summed over streams, stages and partitions.
"""

from __future__ import annotations

from collections import defaultdict

from ingest.daemon.metrics import Metrics

#: Sample name (without the namespace) -> the word the summary uses for it.
_SHOWN = (
    ("records_consumed_total", "consumed"),
    ("records_indexed_total", "indexed"),
    ("records_deleted_total", "deleted"),
    ("records_dead_lettered_total", "dead-lettered"),
    ("lag_records", "lag"),
)


def totals(metrics: Metrics, namespace: str = "ingest") -> dict[str, int]:
    """Each shown sample summed over all its labels (0 when never set)."""
    sums: dict[str, float] = defaultdict(float)
    for family in metrics.registry.collect():
        for sample in family.samples:
            sums[sample.name] += sample.value
    return {word: int(sums.get(f"{namespace}_{name}", 0.0)) for name, word in _SHOWN}


def summary_line(metrics: Metrics) -> str:
    """``stopped: consumed=N indexed=N deleted=N dead-lettered=N lag=N``."""
    return "stopped: " + " ".join(f"{k}={v}" for k, v in totals(metrics).items())
