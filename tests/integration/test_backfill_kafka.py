"""Kafka time-range backfills on the real broker, search server and PostgreSQL.

The broker is tansu, which does not implement ListOffsets by timestamp (it answers 0 for
every timestamp): the planner detects that and reads whole partitions, so these tests check
the timestamp filter — the part that must be right on every broker. Planning against a
broker that answers lookups is covered by the unit tests with a fake lookup.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from backfill.kafka_range import format_instant
from backfill.runner import RunOptions, run_kafka_backfill
from ingest.settings import Settings
from tests.integration.backfill_support import (
    BASE_MS,
    HOUR_MS,
    Produced,
    chunk_rows,
    dead_letters,
    orders,
    produce,
    run_backfill,
    spread,
    start_backfill,
)
from tests.support.daemon import index_versions
from tests.support.fault_proxy import DELAY, FAIL, HttpFaultProxy

pytestmark = pytest.mark.integration

SINCE = format_instant(BASE_MS)
UNTIL = format_instant(BASE_MS + 2 * HOUR_MS)


def _window_records(seed: int = 11) -> list[Produced]:
    """Valid orders before, inside (2 partitions x 2 hours) and after the window, plus
    corrupt payloads inside and outside it."""
    before = spread(seed, 20, 2, BASE_MS - HOUR_MS, 60_000)
    inside = spread(seed + 1, 120, 2, BASE_MS, 59_000)  # 0 .. ~1h58m
    after = spread(seed + 2, 20, 2, BASE_MS + 2 * HOUR_MS, 1_000)
    bad_inside = [
        Produced(0, BASE_MS + 30 * 60_000, None),
        Produced(1, BASE_MS + 90 * 60_000, None),
    ]
    bad_outside = [Produced(1, BASE_MS - 5, None)]
    return before + inside + bad_inside + after + bad_outside


def _summary_counts(output: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+) done, (\d+) skipped \(already done\), (\d+) failed", output)
    assert m, output[-3000:]
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def test_window_is_indexed_exactly_and_a_rerun_is_a_noop(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Exactly the window's valid records indexed, its bad ones dead-lettered; run 2 skips all."""
    settings = make_settings(partitions=2)
    produced = produce(settings, _window_records())
    inside = [p for p in produced if BASE_MS <= p.timestamp_ms < BASE_MS + 2 * HOUR_MS]
    expected_ids = {p.order["order_id"] for p in inside if p.order is not None}
    expected_dead = sorted((p.partition, p.offset) for p in inside if p.order is None)

    code, out = run_backfill(
        "kafka",
        "--stream",
        "orders",
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--chunk",
        "1h",
        settings=settings,
        workdir=tmp_path,
    )
    assert code == 0, out[-4000:]
    assert _summary_counts(out) == (4, 0, 0)
    first = index_versions(settings)
    assert set(first) == expected_ids
    assert sorted((d.partition, d.offset) for d in dead_letters(settings)) == expected_dead
    rows = chunk_rows(settings)
    assert len(rows) == 4 and {r.status for r in rows} == {"done"}
    assert sum(r.counts["indexed"] for r in rows) == len(expected_ids)

    code, out = run_backfill(
        "kafka",
        "--stream",
        "orders",
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--chunk",
        "1h",
        settings=settings,
        workdir=tmp_path,
        name="again",
    )
    assert code == 0, out[-4000:]
    assert _summary_counts(out) == (0, 4, 0)
    assert index_versions(settings) == first
    assert {r.attempts for r in chunk_rows(settings)} == {1}

    code, out = run_backfill(
        "kafka", "--stream", "orders", "--since", SINCE, "--until", UNTIL, "--chunk", "1h",
        "--force", settings=settings, workdir=tmp_path, name="forced",
    )  # fmt: skip
    assert code == 0, out[-4000:]
    assert _summary_counts(out) == (4, 0, 0)
    records_line = next(line for line in out.splitlines() if line.startswith("records: "))
    # same versions: all no-ops
    assert " 0 indexed, 0 deleted (tombstones), 2 dead-lettered" in records_line
    assert f"{len(expected_ids)} no-ops" in records_line
    assert index_versions(settings) == first
    assert {(r.status, r.attempts) for r in chunk_rows(settings)} == {("done", 2)}


def test_a_failed_chunk_fails_the_run_and_a_rerun_completes_only_it(
    make_settings: Callable[..., Settings], tmp_path: Path, search_url: str, unique: str
) -> None:
    """One chunk's bulk writes fail: exit 1 naming it, ledger says failed (after Luigi's
    retry); the re-run copies only that chunk."""
    marker = f"POISON-{unique}"
    proxy = HttpFaultProxy(search_url).start()
    proxy.fail(503, path=r"_bulk", body=marker.encode())
    try:
        settings = make_settings(
            partitions=2, search={"url": proxy.url}, runtime={"max_retry_s": 1.0}
        )
        records = spread(21, 40, 2, BASE_MS, 170_000)  # ~1h53m, both partitions
        poison = dict(next(iter(orders(99))), notes=marker)
        records.append(Produced(1, BASE_MS + HOUR_MS + 60_000, poison))
        produce(settings, records)
        args = ("kafka", "--stream", "orders", "--since", SINCE, "--until", UNTIL)
        args += ("--chunk", "1h", "--retries", "1", "--retry-delay", "0.5")

        code, out = run_backfill(*args, settings=settings, workdir=tmp_path)
        assert code == 1, out[-4000:]
        assert _summary_counts(out) == (3, 0, 1)
        label = f"orders p1 {format_instant(BASE_MS + HOUR_MS)}..{UNTIL}"
        failed_lines = out.split("failed chunks:\n", 1)[1].splitlines()
        assert failed_lines[0].startswith(f"  {label} [KafkaTimeChunk_"), out[-3000:]
        assert "RetriesExhausted" in failed_lines[0]
        rows = {r.params["partition"] + r.params["since"]: r for r in chunk_rows(settings)}
        bad = rows["1" + format_instant(BASE_MS + HOUR_MS)]
        assert bad.status == "failed" and bad.attempts == 2  # first run + one Luigi retry
        assert "RetriesExhausted" in (bad.error or "")
        assert proxy.counts[FAIL] > 0
        assert poison["order_id"] not in index_versions(settings)
        code, listed = run_backfill(
            "chunks", "--stream", "orders", "--failed", settings=settings, workdir=tmp_path
        )
        assert code == 0, listed
        [failed_row] = [line for line in listed.splitlines() if line.startswith("failed")]
        assert bad.task_id in failed_row and "error=RetriesExhausted" in failed_row

        proxy.pass_through()
        code, out = run_backfill(*args, settings=settings, workdir=tmp_path, name="rerun")
        assert code == 0, out[-4000:]
        assert _summary_counts(out) == (1, 3, 0)
        after = {r.task_id: r for r in chunk_rows(settings)}
        assert after[bad.task_id].status == "done" and after[bad.task_id].attempts == 3
        assert {r.attempts for tid, r in after.items() if tid != bad.task_id} == {1}
        assert len(index_versions(settings)) == 41
    finally:
        proxy.close()


def test_overlapping_concurrent_runs_copy_each_chunk_once(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Two backfills at once over overlapping windows: every chunk runs exactly once."""
    settings = make_settings(partitions=2)
    produce(settings, spread(31, 300, 2, BASE_MS, 35_000))  # ~2h55m
    first = start_backfill(
        "kafka",
        "--stream",
        "orders",
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--chunk",
        "1h",
        settings=settings,
        workdir=tmp_path,
        name="a",
    )
    second = start_backfill(
        "kafka",
        "--stream",
        "orders",
        "--since",
        format_instant(BASE_MS + HOUR_MS),
        "--until",
        format_instant(BASE_MS + 3 * HOUR_MS),
        "--chunk",
        "1h",
        settings=settings,
        workdir=tmp_path,
        name="b",
    )
    out_a, _ = first.communicate(timeout=180)
    out_b, _ = second.communicate(timeout=180)
    assert first.returncode == 0, out_a[-4000:]
    assert second.returncode == 0, out_b[-4000:]
    done_a, skipped_a, _ = _summary_counts(out_a)
    done_b, skipped_b, _ = _summary_counts(out_b)
    assert done_a + done_b == 6  # 3 distinct windows x 2 partitions, each copied once
    assert skipped_a + skipped_b == 2  # the shared window, once per partition
    rows = chunk_rows(settings)
    assert len(rows) == 6
    assert all(r.status == "done" and r.attempts == 1 for r in rows)
    assert len(index_versions(settings)) == 300


def test_offset_backfill_into_a_physical_index_api(
    make_settings: Callable[..., Settings], unique: str
) -> None:
    """The reindex handoff: every record below given end offsets, into a named index, with
    two worker processes; calling again skips every chunk."""
    from ingest.avro.catalog import SchemaCatalog
    from ingest.search.client import connect_search
    from ingest.search.mapping import index_definition
    from tests.support.daemon import end_offsets

    settings = make_settings(partitions=3)
    produced = produce(settings, spread(41, 90, 3, BASE_MS, 1_000))
    ends = end_offsets(settings)
    assert sum(ends.values()) == 90
    # Records past the handoff (produced later) must not be copied.
    produce(settings, [])
    stream = settings.streams[0]
    index = f"{unique}-v2"
    client = connect_search(settings.search)
    catalog = SchemaCatalog.load(settings.schemas_dir)
    client.create_index(index, index_definition(catalog.latest("orders"), stream.index))
    handoff = {0: 20, 1: 30, 2: 0}
    try:
        summary = run_kafka_backfill(
            settings,
            "orders",
            index=index,
            end_offsets=handoff,
            workers=2,
            options=RunOptions(retry_delay_s=0.5),
        )
        assert summary.ok, summary.render()
        assert (summary.chunks_total, summary.chunks_done) == (2, 2)  # partition 2: nothing
        assert summary.records_indexed == 50
        expected = {
            p.order["order_id"]
            for p in produced
            if p.order is not None and p.offset < handoff[p.partition]
        }
        assert set(index_versions(settings, index)) == expected

        again = run_kafka_backfill(settings, "orders", index=index, end_offsets=handoff)
        assert (again.chunks_done, again.chunks_skipped) == (0, 2)
    finally:
        client.delete_index(index, missing_ok=True)
        client.close()


def test_backfill_racing_the_daemon_never_overwrites_newer_documents(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The daemon has newer versions (and keeps receiving more) while a backfill re-sends the
    old ones: every backfilled write is a no-op conflict and the newest versions stay."""
    import random

    from ingest.dev.samples import millis, next_version
    from tests.support.daemon import DaemonProcess, caught_up, end_offsets, wait_for, write_config

    settings = make_settings(partitions=2)
    rng = random.Random(5)
    originals = spread(51, 100, 2, BASE_MS, 30_000)  # inside [BASE, BASE + 50 min)
    first = [
        Produced(o.partition, BASE_MS + 2 * HOUR_MS + i, next_version(rng, o.order or {}))
        for i, o in enumerate(originals)
    ]
    second = [
        Produced(u.partition, BASE_MS + 3 * HOUR_MS + i, next_version(rng, u.order or {}))
        for i, u in enumerate(first)
    ]
    daemon = DaemonProcess(write_config(settings, tmp_path / "daemon.toml"), tmp_path / "d.log")
    try:
        produce(settings, originals + first)
        wait_for(caught_up(settings, end_offsets(settings)), 120, "the daemon to catch up")
        backfill = start_backfill(
            "kafka",
            "--stream",
            "orders",
            "--since",
            SINCE,
            "--until",
            format_instant(BASE_MS + HOUR_MS),
            settings=settings,
            workdir=tmp_path,
        )
        produce(settings, second)  # the live stream moves on while the backfill runs
        out, _ = backfill.communicate(timeout=180)
        assert backfill.returncode == 0, out[-4000:]
        wait_for(caught_up(settings, end_offsets(settings)), 120, "the daemon to catch up again")
    finally:
        assert daemon.stop() == 0, daemon.output()[-3000:]
    newest = {u.order["order_id"]: millis(u.order["updated_at"]) for u in second if u.order}
    assert index_versions(settings) == newest
    assert "100 no-ops (the index already had that version or a newer one)" in out, out[-3000:]


def test_the_same_tasks_run_with_the_luigi_command(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """``luigi --module backfill.tasks KafkaBackfill ...`` plans and runs the same chunks the
    ``backfill`` command would, recorded in the ledger."""
    import os
    import subprocess
    import sys

    from tests.integration.backfill_support import REPO_ROOT
    from tests.support.daemon import write_config

    settings = make_settings(partitions=2)
    produce(settings, spread(81, 40, 2, BASE_MS, 60_000))
    config = write_config(settings, tmp_path / "luigi-run.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("luigi")),
            "--module", "backfill.tasks", "KafkaBackfill",
            "--stream", "orders", "--since", SINCE, "--until", UNTIL, "--chunk", "1h",
            "--config", str(config), "--local-scheduler", "--retcode-task-failed", "3",
        ],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = chunk_rows(settings)
    assert len(rows) == 4 and {r.status for r in rows} == {"done"}
    assert len(index_versions(settings)) == 40


def test_a_backfill_killed_mid_chunk_leaves_it_to_the_next_run(
    make_settings: Callable[..., Settings], tmp_path: Path, search_url: str, unique: str
) -> None:
    """kill -9 while a chunk writes: its row stays ``running`` but the lock dies with the
    connection, so the next run takes the chunk over and finishes it."""
    import signal

    from tests.support.daemon import wait_for

    marker = f"HANG-{unique}"
    proxy = HttpFaultProxy(search_url).start()
    proxy.delay(60, path=r"_bulk", body=marker.encode(), forward=False)
    try:
        settings = make_settings(partitions=1, search={"url": proxy.url})
        records = spread(91, 20, 1, BASE_MS, 60_000)
        records.append(
            Produced(0, BASE_MS + HOUR_MS + 1, dict(next(iter(orders(92))), notes=marker))
        )
        produce(settings, records)
        args = ("kafka", "--stream", "orders", "--since", SINCE, "--until", UNTIL)
        victim = start_backfill(*args, settings=settings, workdir=tmp_path, name="victim")
        try:
            wait_for(lambda: proxy.taken[DELAY] > 0, 60, "the chunk to hang in its bulk")
            hung = [r for r in chunk_rows(settings) if r.status == "running"]
            assert len(hung) == 1
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.communicate(timeout=30)
        proxy.pass_through()
        code, out = run_backfill(*args, settings=settings, workdir=tmp_path, name="after")
        assert code == 0, out[-4000:]
        rows = {r.task_id: r for r in chunk_rows(settings)}
        assert (rows[hung[0].task_id].status, rows[hung[0].task_id].attempts) == ("done", 2)
        assert len(index_versions(settings)) == 21
    finally:
        proxy.close()
