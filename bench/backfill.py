"""Backfill throughput from Kafka with 1 and 2 Luigi workers, against the raw bulk ceiling.

The same sample orders as the end-to-end benchmark are produced to a 4-partition topic, then
``run_kafka_backfill`` copies one time window covering all of them (4 chunks: one per
partition) into a fresh physical index, once with one worker and once with two (each run
into its own index, so both really write). Reported: records/s from the start of the call
(planning included) to its end, CPU time per record of the one-worker run (everything runs in
this process then), and the ratio to the raw bulk ceiling measured here on the same documents.

Run alone: ``python -m bench.backfill`` (starts its own embedded stack; BENCH_N records).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import embedded_stack, fresh_settings
from bench.endtoend import ceiling, produce_raw
from bench.pipeline import encoded_records
from ingest.avro.catalog import SchemaCatalog
from ingest.dev.stack import StackEndpoints
from ingest.logging import configure_logging
from ingest.search.client import connect_search
from ingest.search.mapping import index_definition
from ingest.settings import Settings


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _one_run(
    settings: Settings, workers: int, since: dt.datetime, until: dt.datetime, n: int
) -> dict[str, Any]:
    from backfill.runner import RunOptions, run_kafka_backfill

    stream = settings.streams[0]
    index = f"{stream.alias}-bf{workers}"
    client = connect_search(settings.search)
    catalog = SchemaCatalog.load(settings.schemas_dir)
    client.create_index(index, index_definition(catalog.latest(stream.subject), stream.index))
    try:
        cpu0, t0 = _cpu_s(), time.perf_counter()
        summary = run_kafka_backfill(
            settings,
            stream.name,
            index=index,
            since=since,
            until=until,
            chunk=until - since,
            workers=workers,
            options=RunOptions(retry_delay_s=1.0),
        )
        took, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        assert summary.ok, summary.render()
        assert summary.records_indexed == n, summary.render()
        client.refresh(index)
        assert client.count(index) == n
    finally:
        client.delete_index(index, missing_ok=True)
        client.close()
    result: dict[str, Any] = {
        "workers": workers,
        "chunks": summary.chunks_total,
        "records": n,
        "wall_s": round(took, 2),
        "records_per_s": round(n / took),
    }
    if workers == 1:
        # One worker runs the chunks in this process, so its CPU time is all of it; forked
        # workers are reaped lazily by Luigi, so their CPU time is not reliably counted.
        result["cpu_s"] = round(cpu, 2)
        result["cpu_us_per_record"] = round(cpu / n * 1e6, 1)
    return result


def run(endpoints: StackEndpoints, *, n: int = 40_000) -> dict[str, Any]:
    configure_logging(level="WARNING", json=True)
    records, _ = encoded_records(n)
    raw = ceiling(endpoints, records, per_request=2000)
    settings = fresh_settings(endpoints, partitions=4)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    produce_raw(settings, records)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    one = _one_run(settings, 1, since, until, n)
    two = _one_run(settings, 2, since, until, n)
    return {
        "raw_bulk_ceiling_docs_per_s": round(raw),
        "workers_1": one,
        "workers_2": two,
        "workers_1_vs_ceiling": round(one["records_per_s"] / raw, 3),
        "workers_2_vs_ceiling": round(two["records_per_s"] / raw, 3),
    }


def main() -> None:
    n = int(os.environ.get("BENCH_N", "40000"))
    with tempfile.TemporaryDirectory() as tmp, embedded_stack(Path(tmp)) as endpoints:
        result = run(endpoints, n=n)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
