"""The README's SQL recipes, read from README.md and run against a populated real ledger.

The ledger is filled through the product's own calls (runs started, committed and finished;
dead letters and latency rows committed with flushes; backfill chunks locked and finished),
then only timestamps are moved through SQL, to spread runs over two days and give one
chunk ten times the others' time per record. Each recipe must run and return what that
history implies, so the README cannot drift from the schema.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from ingest.credentials import CredentialRegistry, FileSecret, fingerprint
from ingest.latency import measure_flush
from ingest.ledger import ChunkSkew, ChunkTiming, PostgresLedger
from ingest.settings import Settings
from ingest.types import DeadLetter, IndexAction, RawRecord
from tests.support.secrets import rotate_file

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### SQL recipes over the ledger"
_BLOCK = re.compile(r"```sql\n(.*?)```", re.S)
_NAME = re.compile(r"^-- recipe: (.+)$", re.M)


def readme_recipes() -> dict[str, str]:
    """Recipe name (its ``-- recipe:`` line) -> SQL, from the README section."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n#", start + len(SECTION))
    recipes = {}
    for block in _BLOCK.findall(text[start:end]):
        name = _NAME.search(block)
        assert name, f"a recipe without a '-- recipe:' line:\n{block}"
        recipes[name.group(1).strip()] = block
    return recipes


def test_the_readme_has_the_recipes_this_file_checks() -> None:
    assert set(readme_recipes()) == set(CHECKS)


def _record(offset: int, stream_topic: str = "orders-topic") -> RawRecord:
    return RawRecord(stream_topic, 0, offset, b"k", b"\x00bad", 1_700_000_000_000)


def _populate(ledger: PostgresLedger, dsn: str, secrets_dir: Path) -> dict[str, Any]:
    """Two days of history for stream "orders", through the ledger's own calls."""
    ids: dict[str, Any] = {}
    # a search password loaded at start, then rotated and re-read after a refusal
    registry = CredentialRegistry()
    password = secrets_dir / "search-password"
    password.write_text("first-secret\n")
    secret = FileSecret("search.password", password, registry=registry)
    secret.current()
    rotate_file(password, "second-secret")
    assert secret.reload()
    ledger.record_credential_loads(registry)
    ids.update(password_file=str(password))
    # yesterday: one daemon run that stopped cleanly
    old = ledger.start_run("stream", "orders", {"group": "g.orders"})
    ledger.commit([], [], old, {"consumed": 100, "indexed": 95, "dead_lettered": 5})
    ledger.finish_run(old, "stopped")
    # today: a daemon run still going, and a backfill that failed
    live = ledger.start_run("stream", "orders", {"group": "g.orders"})
    ledger.commit([], [], live, {"consumed": 40, "indexed": 40}, ("w", 1))
    failed = ledger.start_run("backfill", "orders", {"since": "2026-11-01"})
    ledger.finish_run(failed, "failed", error="search cluster unreachable: connection refused")
    ids.update(old=old, live=live, failed=failed)

    decode = [
        DeadLetter(_record(i), "decode", "decode: truncated Avro", "orders") for i in range(3)
    ]
    index = [DeadLetter(_record(10), "index", "index: mapper_parsing_exception", "orders")]
    ledger.commit([], decode + index, live)
    ledger.commit([], decode[:1], live)  # the same record refused again: attempts 2

    # The failed backfill's chunks: c3 took ten times the others' time per record, and
    # the run flagged it; c4 failed and has no timing (as a row from before timing existed).
    for n, task in enumerate(("c0", "c1", "c2", "c3")):
        assert ledger.try_lock_chunk(task, "KafkaRangeChunk", "orders", {"partition": n}, "w")
        timing = ChunkTiming(20.0 if task == "c3" else 2.0, 100, 6_400)
        ledger.finish_chunk(
            task, "done", {"consumed": 100, "indexed": 100}, timing=timing, run_id=failed
        )
    verdicts = [ChunkSkew(t, 1.0, False) for t in ("c0", "c1", "c2")]
    ledger.record_chunk_skew(failed, [*verdicts, ChunkSkew("c3", 10.0, True)])
    assert ledger.try_lock_chunk("c4", "KafkaRangeChunk", "orders", {"partition": 4}, "w")
    ledger.finish_chunk("c4", "failed", {"consumed": 10}, error="boom")

    now_ms = int(time.time() * 1000)
    record = RawRecord("orders-topic", 0, 0, b"k", b"v", now_ms - 500)
    actions = [IndexAction("index", "k", 1, b"{}", record)] * 4
    ledger.commit([], [], live, latency=measure_flush("orders", "live", actions, now_ms, None))

    with psycopg.connect(dsn, autocommit=True) as conn:
        runs = sql.Identifier(ledger.schema, "runs")
        conn.execute(
            sql.SQL(
                "UPDATE {} SET started_at = now() - interval '1 day 1 hour',"
                " finished_at = now() - interval '1 day', heartbeat_at = now() - interval '1 day'"
                " WHERE id = %s"
            ).format(runs),
            (old,),
        )
        conn.execute(
            sql.SQL(
                "UPDATE {} SET started_at = now() - interval '30 seconds' WHERE id = %s"
            ).format(runs),
            (failed,),
        )
        chunks = sql.Identifier(ledger.schema, "backfill_chunks")
        # c4 has no duration_s: the recipes fall back to its timestamps.
        conn.execute(
            sql.SQL("UPDATE {} SET started_at = finished_at - make_interval(secs => 2)").format(
                chunks
            )
        )
    return ids


@pytest.fixture
def recipe_results(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[dict[str, list[dict[str, Any]]]]:
    settings = make_settings(partitions=None)
    dsn = settings.ledger.dsn.get_secret_value()
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        ids = _populate(ledger, dsn, tmp_path)
        schema = ledger.schema
    results: dict[str, list[dict[str, Any]]] = {"_ids": [ids]}
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        for name, query in readme_recipes().items():
            results[name] = conn.execute(query).fetchall()  # type: ignore[call-overload]
    yield results


def _runs_per_day(rows: list[dict[str, Any]], ids: dict[str, Any]) -> None:
    by_key = {(r["kind"], r["day"].date()): r for r in rows}
    days = sorted({d for _, d in by_key}, reverse=True)
    assert len(days) == 2
    today, yesterday = days
    stream_today = by_key[("stream", today)]
    assert (stream_today["runs"], stream_today["consumed"], stream_today["indexed"]) == (1, 40, 40)
    stream_old = by_key[("stream", yesterday)]
    assert (stream_old["runs"], stream_old["dead_lettered"]) == (1, 5)
    assert stream_old["max_duration_s"] == Decimal("3600.0")
    backfill = by_key[("backfill", today)]
    assert backfill["failed"] == 1 and 29 <= backfill["max_duration_s"] <= 120


def _failed_runs(rows: list[dict[str, Any]], ids: dict[str, Any]) -> None:
    assert [r["id"] for r in rows] == [ids["failed"]]
    assert rows[0]["error"] == "search cluster unreachable: connection refused"
    assert rows[0]["params"] == {"since": "2026-11-01"}


def _dead_letters_over_time(rows: list[dict[str, Any]], ids: dict[str, Any]) -> None:
    by_stage = {r["stage"]: r for r in rows}
    assert set(by_stage) == {"decode", "index"}
    assert (by_stage["decode"]["records"], by_stage["decode"]["attempts"]) == (3, 4)
    assert by_stage["index"]["records"] == 1 and by_stage["index"]["replayed"] == 0


def _common_reasons(rows: list[dict[str, Any]], ids: dict[str, Any]) -> None:
    assert [(r["stage"], r["reason"], r["records"]) for r in rows] == [
        ("decode", "decode: truncated Avro", 3),
        ("index", "index: mapper_parsing_exception", 1),
    ]


def _chunk_durations(rows: list[dict[str, Any]], ids: dict[str, Any]) -> None:
    (row,) = rows
    assert (row["done"], row["failed"], row["records"], row["read_bytes"]) == (4, 1, 410, 25_600)
    assert row["p50_s"] == Decimal("2.00") and row["max_s"] == Decimal("20.00")


def _skewed_chunks(rows: list[dict[str, Any]], ids: dict[str, Any]) -> None:
    assert rows[0]["task_id"] == "c3"
    assert rows[0]["x_median"] == Decimal("10.0")
    assert {r["x_median"] for r in rows[1:]} == {Decimal("1.0")}
    assert rows[0]["params"] == {"partition": 3}
    assert rows[0]["run_id"] == ids["failed"] and rows[0]["read_bytes"] == 6_400
    assert [r["task_id"] for r in rows if r["skewed"]] == ["c3"]
    assert "c4" not in {r["task_id"] for r in rows}, "failed chunks have no meaningful time"


def _latency_per_hour(rows: list[dict[str, Any]], ids: dict[str, Any]) -> None:
    (row,) = rows
    assert (row["path"], row["source"], row["flushes"], row["records"]) == (
        "live",
        "kafka_timestamp",
        1,
        4,
    )
    assert row["mean_latency_s"] == Decimal("0.500")


def _credential_loads(rows: list[dict[str, Any]], ids: dict[str, Any]) -> None:
    assert [(r["name"], r["reason"], r["fingerprint"]) for r in rows] == [
        ("search.password", "refused", fingerprint("second-secret")),
        ("search.password", "start", fingerprint("first-secret")),
    ]
    assert {r["source"] for r in rows} == {ids["password_file"]}
    assert "first-secret" not in repr(rows) and "second-secret" not in repr(rows)


def _credentials_in_force(rows: list[dict[str, Any]], ids: dict[str, Any]) -> None:
    (row,) = rows
    assert (row["name"], row["fingerprint"], row["reason"]) == (
        "search.password",
        fingerprint("second-secret"),
        "refused",
    )


CHECKS: dict[str, Callable[[list[dict[str, Any]], dict[str, Any]], None]] = {
    "runs per stream and day": _runs_per_day,
    "failed runs and why": _failed_runs,
    "dead letters by stage over time": _dead_letters_over_time,
    "most common dead-letter reasons": _common_reasons,
    "backfill chunk durations": _chunk_durations,
    "skewed backfill chunks": _skewed_chunks,
    "ingestion latency per hour": _latency_per_hour,
    "credential loads": _credential_loads,
    "credentials in force per process": _credentials_in_force,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_recipe_returns_what_the_history_implies(
    name: str, recipe_results: dict[str, list[dict[str, Any]]]
) -> None:
    CHECKS[name](recipe_results[name], recipe_results["_ids"][0])
