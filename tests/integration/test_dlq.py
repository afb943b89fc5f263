"""``ingest dlq`` list/show/replay/purge against the real ledger and search server.

Dead letters are planted in the ledger as an earlier run would have left them (a valid
order refused by a since-fixed transform, bytes that are not Avro at all, a record of a
stream no longer configured); the CLI then runs in-process through click's runner.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.cli import main
from ingest.dev.samples import sample_orders
from ingest.ledger import PostgresLedger
from ingest.search.client import connect_search
from ingest.settings import Settings
from ingest.types import DeadLetter, RawRecord
from tests.support.daemon import write_config

pytestmark = pytest.mark.integration

#: rich wraps tables to the terminal width; give the runner a wide one.
WIDE = {"COLUMNS": "200"}


@pytest.fixture
def setup(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[Settings, Path, PostgresLedger]]:
    settings = make_settings(partitions=None)
    config = write_config(settings, tmp_path / "c.toml")
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        yield settings, config, ledger


def _cli(*args: str, input: str | None = None) -> Result:
    return CliRunner(env=WIDE).invoke(main, list(args), input=input, catch_exceptions=False)


def _plant(settings: Settings, ledger: PostgresLedger) -> dict[str, Any]:
    """Three dead letters; returns their ids by name and the valid order."""
    stream = settings.streams[0]
    codec = AvroCodec(SchemaCatalog.load(settings.schemas_dir), stream.subject)
    order = next(sample_orders(seed=3))
    good = RawRecord(
        topic=stream.topic,
        partition=0,
        offset=10,
        key=str(order["order_id"]).encode(),
        value=codec.encode(order),
        timestamp_ms=1_700_000_000_000,
        headers=[("trace", b"abc"), ("bin", b"\xff\x00")],
    )
    junk = RawRecord(stream.topic, 1, 20, b"k-junk", b"not avro at all", 0, [])
    orphan = RawRecord("old-topic", 0, 5, None, b"\x00\x00\x00\x00\x02zz", 0, [])
    ledger.store_dead_letters(
        [
            DeadLetter(good, "transform", "transform: hook raised KeyError 'x'", stream.name),
            DeadLetter(junk, "framing", "framing: magic byte is 0x6e", stream.name),
            DeadLetter(orphan, "decode", "decode: truncated", "retired-stream"),
        ]
    )
    rows = ledger.dead_letters(limit=10)
    by_offset = {(r.topic, r.offset): r.id for r in rows}
    return {
        "good": by_offset[(stream.topic, 10)],
        "junk": by_offset[(stream.topic, 20)],
        "orphan": by_offset[("old-topic", 5)],
        "order": order,
    }


def test_list_filters_and_json(setup: tuple[Settings, Path, PostgresLedger]) -> None:
    settings, config, ledger = setup
    ids = _plant(settings, ledger)
    cfg = ("--config", str(config))

    everything = json.loads(_cli("dlq", "list", *cfg, "--json").stdout)
    assert [d["id"] for d in everything] == sorted([ids["good"], ids["junk"], ids["orphan"]])
    assert set(everything[0]) >= {"id", "stream", "stage", "reason", "topic", "partition"}

    framing = json.loads(
        _cli("dlq", "list", *cfg, "--stream", "orders", "--stage", "framing", "--json").stdout
    )
    assert [d["id"] for d in framing] == [ids["junk"]]

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert json.loads(_cli("dlq", "list", *cfg, "--since", future, "--json").stdout) == []
    assert len(json.loads(_cli("dlq", "list", *cfg, "--since", "1h", "--json").stdout)) == 3

    table = _cli("dlq", "list", *cfg)
    assert table.exit_code == 0
    assert "magic byte is 0x6e" in table.output
    assert f"{settings.streams[0].topic}[1]@20" in table.output


def test_show_dumps_and_decodes(setup: tuple[Settings, Path, PostgresLedger]) -> None:
    """The hex dump always; a decoded record when it decodes, the failing stage when not."""
    settings, config, ledger = setup
    ids = _plant(settings, ledger)
    cfg = ("--config", str(config))

    junk = _cli("dlq", "show", *cfg, str(ids["junk"]))
    assert junk.exit_code == 0
    assert "6e 6f 74 20 61 76 72 6f" in junk.output  # "not avro"
    assert "|not avro at all|" in junk.output
    assert "not Confluent wire format" in junk.output
    assert "FAILS: framing:" in junk.output

    good = _cli("dlq", "show", *cfg, str(ids["good"]))
    assert good.exit_code == 0
    assert "stage transform" in good.output
    assert "trace: abc" in good.output
    assert "bin: b'\\xff\\x00'" in good.output
    assert "schema id 2" in good.output
    assert str(ids["order"]["order_id"]) in good.output
    assert "transform:  ok: index" in good.output

    data = json.loads(_cli("dlq", "show", *cfg, "--json", str(ids["good"])).stdout)
    assert data["decoded_view"]["decoded"]["order_id"] == ids["order"]["order_id"]
    assert data["headers"] == [["trace", "abc"], ["bin", "b'\\xff\\x00'"]]
    assert bytes.fromhex(data["value_hex"])[0] == 0

    orphan = json.loads(_cli("dlq", "show", *cfg, "--json", str(ids["orphan"])).stdout)
    assert "unknown stream 'retired-stream'" in orphan["decoded_view"]["error"]

    missing = CliRunner().invoke(main, ["dlq", "show", *cfg, "999999"])
    assert missing.exit_code == 1
    assert "no dead letter with id 999999" in missing.output


def test_replay_marks_what_passes_and_keeps_the_rest(
    setup: tuple[Settings, Path, PostgresLedger],
) -> None:
    settings, config, ledger = setup
    ids = _plant(settings, ledger)
    cfg = ("--config", str(config))

    dry = json.loads(_cli("dlq", "replay", *cfg, "--dry-run", "--json").stdout)
    assert (dry["selected"], dry["passed"], dry["failed"], dry["skipped"]) == (3, 1, 1, 1)
    assert ledger.dead_letter(ids["good"]).replayed_at is None  # type: ignore[union-attr]

    result = _cli("dlq", "replay", *cfg, "--stream", "orders")
    assert result.exit_code == 0, result.output
    assert "orders: 2 selected, 1 replayed, 1 still failing (framing=1)" in result.output

    good = ledger.dead_letter(ids["good"])
    junk = ledger.dead_letter(ids["junk"])
    assert good is not None and good.replayed_at is not None
    assert junk is not None and junk.replayed_at is None
    assert junk.attempts == 2 and junk.stage == "framing"
    assert junk.reason.startswith("framing: magic byte is 0x6e")

    client = connect_search(settings.search)
    try:
        client.refresh(settings.streams[0].alias)
        hits = list(client.scan(settings.streams[0].alias))
    finally:
        client.close()
    assert [h["_id"] for h in hits] == [str(ids["order"]["order_id"])]

    runs = ledger.runs("replay", stream="orders")
    assert runs[0].status == "succeeded"
    assert runs[0].counters["replayed"] == 1 and runs[0].counters["still_failing"] == 1

    again = json.loads(_cli("dlq", "replay", *cfg, "--ids", str(ids["good"]), "--json").stdout)
    assert again["selected"] == 0  # already replayed: not selected again

    remaining = json.loads(_cli("dlq", "list", *cfg, "--json").stdout)
    assert sorted(d["id"] for d in remaining) == sorted([ids["junk"], ids["orphan"]])


def test_purge_asks_first(setup: tuple[Settings, Path, PostgresLedger]) -> None:
    settings, config, ledger = setup
    _plant(settings, ledger)
    cfg = ("--config", str(config))
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()

    refused = CliRunner().invoke(main, ["dlq", "purge", *cfg, "--before", later], input="n\n")
    assert refused.exit_code == 1
    assert "Delete every dead letter last seen before" in refused.output
    assert len(ledger.dead_letters(limit=10)) == 3

    old = _cli("dlq", "purge", *cfg, "--before", "2000-01-01", "--yes")
    assert "purged 0 dead letter(s)" in old.output

    done = _cli("dlq", "purge", *cfg, "--before", later, input="y\n")
    assert done.exit_code == 0
    assert "purged 3 dead letter(s)" in done.output
    assert ledger.dead_letters(limit=10, include_replayed=True) == []


def test_bad_arguments_are_one_line_errors(setup: tuple[Settings, Path, PostgresLedger]) -> None:
    _settings, config, _ledger = setup
    cfg = ("--config", str(config))
    bad_since = CliRunner().invoke(main, ["dlq", "list", *cfg, "--since", "yesterday"])
    assert bad_since.exit_code == 2 and "--since" in bad_since.output
    bad_ids = CliRunner().invoke(main, ["dlq", "replay", *cfg, "--ids", "1,x"])
    assert bad_ids.exit_code == 2 and "--ids" in bad_ids.output
    unknown = CliRunner().invoke(main, ["dlq", "replay", *cfg, "--stream", "nope"])
    assert unknown.exit_code == 2
    assert unknown.output.strip().splitlines() == [
        "error: unknown stream 'nope' (configured: orders)"
    ]
