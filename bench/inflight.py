"""Requests in flight: the daemon's docs/s for ``max_in_flight`` 1, 2, 4 and auto, near and far.

On one loopback search node a bulk request's answer comes back as soon as the server is done,
so one request at a time already keeps the server busy. A real cluster is a network hop away:
:class:`~bench.latency_proxy.LatencyProxy` adds a fixed delay to every answer, serving
requests in parallel, to make the local server look remote. The delay is set to a bulk
request's own service time, measured by the raw ceiling pass (so the far cluster answers one
request at a time at half the ceiling).

One run, one backlog: every daemon pass drains the same records, first straight to the server
(0 ms), then through the proxy. Each pass's steady docs/s (from its first ledger commit) is
reported as a ratio of the **no-delay** raw ceiling (:func:`bench.endtoend.ceiling`), the
median of three ceiling passes taken before, between and after the blocks, since the server's
own speed drifts. CPU per record and peak RSS come from the same passes.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import embedded_stack, fresh_settings, save
from bench.endtoend import ceiling, drain
from bench.latency_proxy import LatencyProxy
from bench.pipeline import encoded_records
from ingest.dev.stack import StackEndpoints
from ingest.settings import SearchSettings

SETTINGS: tuple[int | str, ...] = (1, 2, 4, "auto")


def _pass(
    endpoints: StackEndpoints,
    records: list[Any],
    workdir: Path,
    *,
    max_in_flight: int | str,
    batch: int,
    delay_s: float,
) -> dict[str, Any]:
    settings = fresh_settings(endpoints, max_in_flight=max_in_flight, max_batch_records=batch)
    workdir.mkdir()
    if delay_s <= 0:
        result = drain(settings, records, workdir)
    else:
        with LatencyProxy(endpoints.search_url, delay_s) as proxy:
            far = SearchSettings(url=proxy.url, request_timeout_s=120)
            result = drain(settings.model_copy(update={"search": far}), records, workdir)
    if max_in_flight == "auto":
        result["auto_limits"] = limit_moves(workdir / "daemon.log")
    return result


def limit_moves(log: Path) -> list[int]:
    """The adaptive limit's values in order, from the daemon's ``in_flight_limit_changed``."""
    moves = []
    for line in log.read_text(errors="replace").splitlines():
        if "in_flight_limit_changed" in line and line.startswith("{"):
            moves.append(int(json.loads(line)["limit"]))
    return moves


def run(
    endpoints: StackEndpoints, *, n: int = 30_000, batch: int = 1000, delay_s: float | None = None
) -> dict[str, Any]:
    """Ceiling, then 1/2/4/auto at 0 ms, ceiling, the same at the delay, ceiling."""
    records, _ = encoded_records(n, seed=3)
    ceilings = [ceiling(endpoints, records, per_request=batch)]
    delay = delay_s if delay_s is not None else round(batch / ceilings[0], 2)
    passes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in (0.0, delay):
            if d > 0:
                ceilings.append(ceiling(endpoints, records, per_request=batch))
            for setting in SETTINGS:
                workdir = Path(tmp) / f"{setting}-{round(d * 1000)}ms"
                result = _pass(
                    endpoints, records, workdir, max_in_flight=setting, batch=batch, delay_s=d
                )
                passes.append({"delay_ms": round(d * 1000), "max_in_flight": setting, **result})
                print("inflight pass:", json.dumps(passes[-1]), flush=True)
    ceilings.append(ceiling(endpoints, records, per_request=batch))
    reference = statistics.median(ceilings)
    for p in passes:
        p["ratio"] = round(p["steady_records_per_s"] / reference, 3)
    return {
        "records": n,
        "batch_records": batch,
        "delay_ms": round(delay * 1000),
        "raw_ceiling_docs_per_s": [round(c) for c in ceilings],
        "raw_ceiling_median": round(reference),
        "passes": passes,
        "table": {
            f"{p['max_in_flight']}@{p['delay_ms']}ms": [
                p["steady_records_per_s"],
                p["ratio"],
                p["cpu_us_per_record"],
                p["peak_rss_mb"],
            ]
            for p in passes
        },
    }


def main() -> None:
    n = int(os.environ.get("BENCH_INFLIGHT_N", "30000"))
    delay = os.environ.get("BENCH_INFLIGHT_DELAY_S")
    with tempfile.TemporaryDirectory() as tmp, embedded_stack(Path(tmp)) as endpoints:
        result = run(endpoints, n=n, delay_s=float(delay) if delay else None)
    save("inflight", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
