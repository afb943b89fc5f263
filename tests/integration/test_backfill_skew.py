"""A chunk slowed by the search server is flagged skewed — it alone, everywhere it is shown.

A fault proxy in front of the search server holds every bulk request carrying the slow
chunk's marker (a ``notes`` value only that partition's second window has) for a second,
so that chunk takes several seconds longer than its siblings for the same number of records.
The backfill runs through a real luigid with two workers; the chunk must be flagged in the
closing summary, by ``backfill chunks``, in the ledger row and in luigid's status message
for the task, and no other chunk may be.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from backfill.kafka_range import format_instant
from ingest.settings import Settings
from tests.integration.backfill_support import (
    BASE_MS,
    HOUR_MS,
    Produced,
    chunk_rows,
    orders,
    produce,
    run_backfill,
)
from tests.integration.test_luigid import history_db, luigid
from tests.support.daemon import index_versions
from tests.support.fault_proxy import DELAY, HttpFaultProxy

pytestmark = pytest.mark.integration

__all__ = ["history_db", "luigid"]  # fixtures shared with test_luigid

RECORDS_PER_CHUNK = 30
#: Records per bulk request, so the slow chunk sends several (each held ``HOLD_S``).
BATCH_RECORDS = 5
HOLD_S = 1.0


def _status_message(scheduler_url: str, task_id: str) -> str:
    """The status message luigid holds for ``task_id`` (its ``get_task_status_message`` API)."""
    query = urllib.parse.urlencode({"data": json.dumps({"task_id": task_id})})
    url = f"{scheduler_url}/api/get_task_status_message?{query}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(json.loads(resp.read())["response"]["statusMessage"] or "")


def test_the_chunk_the_search_server_slows_is_the_only_one_flagged_skewed(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    search_url: str,
    unique: str,
    luigid: str,
) -> None:
    marker = f"SLOW-{unique}"
    proxy = HttpFaultProxy(search_url).start()
    try:
        settings = make_settings(
            partitions=2, search={"url": proxy.url}, max_batch_records=BATCH_RECORDS
        )
        gen = iter(orders(71))
        step_ms = HOUR_MS // RECORDS_PER_CHUNK
        records = [
            Produced(
                partition,
                BASE_MS + window * HOUR_MS + i * step_ms,
                dict(next(gen), notes=marker) if (partition, window) == (1, 1) else next(gen),
            )
            for window in range(2)
            for partition in range(2)
            for i in range(RECORDS_PER_CHUNK)
        ]
        produce(settings, records)
        proxy.delay(HOLD_S, path=r"_bulk", body=marker.encode())

        code, out = run_backfill(
            "kafka",
            "--stream", "orders",
            "--since", format_instant(BASE_MS),
            "--until", format_instant(BASE_MS + 2 * HOUR_MS),
            "--chunk", "1h",
            "--workers", "2",
            "--scheduler-url", luigid,
            "--skew-min-records", "10",
            settings=settings,
            workdir=tmp_path,
        )  # fmt: skip
        assert code == 0, out[-4000:]
        # Every bulk of the slow chunk was held, and only those.
        assert proxy.counts[DELAY] == RECORDS_PER_CHUNK // BATCH_RECORDS
        assert len(index_versions(settings)) == 4 * RECORDS_PER_CHUNK
    finally:
        proxy.close()

    slow_label = (
        f"orders p1 {format_instant(BASE_MS + HOUR_MS)}..{format_instant(BASE_MS + 2 * HOUR_MS)}"
    )
    rows = chunk_rows(settings)
    assert len(rows) == 4
    [slow] = [
        r for r in rows if r.params["partition"] == "1" and r.params["since"].endswith("01:00:00Z")
    ]

    # The ledger: every row has its cost, the slow one alone is flagged.
    for row in rows:
        assert row.status == "done" and row.counts["consumed"] == RECORDS_PER_CHUNK, row
        # Records read: tansu ignores timestamp lookups, so each chunk reads its whole
        # partition and skips the other window's records — those count as read too.
        assert row.records == RECORDS_PER_CHUNK + row.counts.get("skipped", 0), row
        assert row.read_bytes is not None and row.read_bytes > RECORDS_PER_CHUNK * 50
        assert row.duration_s is not None and row.duration_s > 0
        assert row.run_id is not None and row.skew_ratio is not None
    assert [r.task_id for r in rows if r.skewed] == [slow.task_id], [
        (r.task_id, r.duration_s, r.skew_ratio) for r in rows
    ]
    # Its six held bulk requests overlap up to max_in_flight at a time.
    in_flight = settings.streams[0].max_in_flight
    rounds = math.ceil(6 / in_flight) if isinstance(in_flight, int) else 1
    assert slow.duration_s is not None and slow.duration_s >= HOLD_S * rounds

    # The summary: the skewed list names it alone; it heads the slowest chunks.
    lines = out.splitlines()
    start = lines.index("skewed chunks (1):")
    assert lines[start + 1].startswith(f"  {slow_label}: ")
    assert lines[start + 1].endswith(f" SKEWED [{slow.task_id}]")
    assert f"{slow.records} records" in lines[start + 1]
    top = lines.index("slowest chunks (top 3):")
    slowest = lines[top + 1 : top + 4]
    assert slowest[0].startswith(f"  {slow_label}: ") and slowest[0].endswith(" SKEWED")
    assert not any(line.endswith("SKEWED") for line in slowest[1:])
    # The structured log event, with the chunk's partition and window.
    [event] = [json.loads(line) for line in lines if '"event":"chunk_skewed"' in line]
    assert event["task_id"] == slow.task_id and event["partition"] == "1"
    assert event["window"] == f"{slow.params['since']}..{slow.params['until']}"
    assert event["records"] == slow.records and event["duration_s"] >= HOLD_S * rounds
    assert event["ratio"] > 3.0 and event["factor"] == 3.0

    # `backfill chunks`: one line per chunk with its cost, SKEWED on the slow one only.
    code, listed = run_backfill("chunks", "--stream", "orders", settings=settings, workdir=tmp_path)
    assert code == 0, listed
    chunk_lines = [line for line in listed.splitlines() if line.startswith("done")]
    assert len(chunk_lines) == 4
    assert all(re.search(r" duration=[\d.]+s records=\d+ bytes=\d+ ", line) for line in chunk_lines)
    assert [line for line in chunk_lines if line.endswith(" SKEWED")] == [
        line for line in chunk_lines if slow.task_id in line
    ]
    code, only = run_backfill(
        "chunks", "--stream", "orders", "--skewed", settings=settings, workdir=tmp_path
    )
    assert code == 0 and slow.task_id in only and len(only.strip().splitlines()) == 1, only

    # luigid: the slow task's status message says so; the others report their cost.
    messages = {r.task_id: _status_message(luigid, r.task_id) for r in rows}
    assert messages[slow.task_id].startswith("SKEWED: "), messages
    assert all(m.startswith("done: ") for t, m in messages.items() if t != slow.task_id), messages
