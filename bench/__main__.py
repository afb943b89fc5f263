"""``make bench``: every benchmark in one run on a freshly started embedded stack.

Environment: BENCH_N (records for ceiling/end-to-end, default 40000), BENCH_ROUNDS (ceiling +
daemon rounds, default 5), BENCH_BACKLOG (records for the peak-RSS drain, default 500000),
BENCH_INFLIGHT_N (records for the requests-in-flight passes, default 30000),
BENCH_INFLIGHT_DELAY_S (the injected answer delay; default: one bulk request's service time),
BENCH_SKIP (comma list of sections: pipeline, compression, endtoend, freshness, inflight,
backfill).
Results are printed and written to bench/results/*.json.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench import pipeline
from bench.common import embedded_stack, save


def main() -> None:
    n = int(os.environ.get("BENCH_N", "40000"))
    backlog = int(os.environ.get("BENCH_BACKLOG", "500000"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    skip = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))
    results: dict[str, Any] = {}
    if "pipeline" not in skip:
        results["pipeline"] = pipeline.run()
        print("pipeline:", json.dumps(results["pipeline"]), flush=True)
    if "compression" not in skip:
        from bench import compression

        results["compression"] = compression.run()
        print("compression:", json.dumps(results["compression"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp, embedded_stack(Path(tmp)) as endpoints:
        if "endtoend" not in skip:
            from bench import endtoend

            results["endtoend"] = endtoend.run(endpoints, n=n, backlog=backlog, rounds=rounds)
            print("endtoend:", json.dumps(results["endtoend"]), flush=True)
        if "freshness" not in skip:
            from bench import freshness
            from bench.endtoend import ceiling
            from bench.pipeline import encoded_records

            rounds_run = results.get("endtoend", {}).get("rounds", [])
            ceilings = sorted(r["raw_bulk_ceiling_docs_per_s"] for r in rounds_run)
            if not ceilings:
                ceilings = [ceiling(endpoints, encoded_records(10_000)[0], per_request=2000)]
            results["freshness"] = freshness.run(
                endpoints, ceiling_docs_per_s=ceilings[len(ceilings) // 2]
            )
            print("freshness:", json.dumps(results["freshness"]), flush=True)
        if "inflight" not in skip:
            from bench import inflight

            delay = os.environ.get("BENCH_INFLIGHT_DELAY_S")
            results["inflight"] = inflight.run(
                endpoints,
                n=int(os.environ.get("BENCH_INFLIGHT_N", "30000")),
                delay_s=float(delay) if delay else None,
            )
            print("inflight:", json.dumps(results["inflight"]["table"]), flush=True)
        if "backfill" not in skip:
            try:
                from bench import backfill
            except ImportError:
                backfill = None  # type: ignore[assignment]
            if backfill is not None:
                results["backfill"] = backfill.run(endpoints, n=n)
                print("backfill:", json.dumps(results["backfill"]), flush=True)
    save("latest", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
