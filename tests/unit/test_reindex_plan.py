"""The reindex's decisions, free of I/O: settings, acknowledgements, offsets, counts, swaps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backfill.reindex import (
    ReindexState,
    bulk_load_definition,
    count_problem,
    daemon_acks,
    end_offsets,
    handoff_gaps,
    next_version,
    prune_plan,
    rollback_target,
    split_settings,
    swap_actions,
)
from ingest.ledger import IndexVersionRow, RunRow
from ingest.settings import IndexSettings

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def version_row(
    version: int, state: str, *, alias: str = "orders", details: dict[str, Any] | None = None
) -> IndexVersionRow:
    return IndexVersionRow(
        alias=alias,
        version=version,
        index_name=f"{alias}-v{version}",
        schema_fingerprint="fp",
        state=state,
        created_at=NOW,
        updated_at=NOW,
        details=details or {},
    )


def run_row(run_id: int, *, age_s: float, counters: dict[str, Any]) -> RunRow:
    return RunRow(
        id=run_id,
        kind="stream",
        stream="orders",
        params={},
        status="running",
        host="h",
        pid=1,
        started_at=NOW - timedelta(hours=1),
        heartbeat_at=NOW - timedelta(seconds=age_s),
        finished_at=None,
        counters=counters,
        error=None,
    )


@pytest.mark.parametrize(
    ("settings", "others", "picked"),
    [
        pytest.param(
            {"number_of_shards": 2, "number_of_replicas": 1, "refresh_interval": "5s"},
            {"number_of_shards": 2},
            {"number_of_replicas": 1, "refresh_interval": "5s"},
            id="plain",
        ),
        pytest.param(
            {"index.refresh_interval": "30s", "index.gc_deletes": "1m", "analysis": {"a": 1}},
            {"analysis": {"a": 1}},
            {"refresh_interval": "30s", "gc_deletes": "1m"},
            id="dotted",
        ),
        pytest.param(
            {"index": {"number_of_replicas": 2, "codec": "best_compression"}},
            {"index": {"codec": "best_compression"}},
            {"number_of_replicas": 2},
            id="nested",
        ),
    ],
)
def test_split_settings_recognises_every_spelling(
    settings: dict[str, Any], others: dict[str, Any], picked: dict[str, Any]
) -> None:
    """refresh_interval/number_of_replicas are found plain, dotted or nested under index."""
    assert split_settings(settings) == (others, picked)


def test_bulk_load_definition_turns_refresh_and_replicas_off_and_remembers_them() -> None:
    """The create body loads fast; restore holds what the stream's index should have."""
    definition = {
        "settings": {"number_of_shards": 1, "number_of_replicas": 2, "refresh_interval": "2s"},
        "mappings": {"dynamic": "strict", "properties": {}},
    }
    body, restore = bulk_load_definition(definition, IndexSettings())
    assert body["settings"] == {
        "number_of_shards": 1,
        "index": {"refresh_interval": "-1", "number_of_replicas": 0, "gc_deletes": "24h"},
    }
    assert body["mappings"] == definition["mappings"]
    assert restore == {"refresh_interval": "2s", "number_of_replicas": 2, "gc_deletes": None}
    assert definition["settings"]["refresh_interval"] == "2s", "input left untouched"


def test_bulk_load_definition_falls_back_to_stream_settings() -> None:
    _body, restore = bulk_load_definition(
        {"settings": {}}, IndexSettings(replicas=3, refresh_interval="9s")
    )
    assert restore == {"refresh_interval": "9s", "number_of_replicas": 3, "gc_deletes": None}


def test_next_version_never_reuses_failed_or_deleted_numbers() -> None:
    rows = [version_row(1, "retired"), version_row(2, "live"), version_row(3, "deleted")]
    assert next_version(rows) == 4
    assert next_version([]) == 1


def test_daemon_acks_needs_the_version_in_a_heartbeat_after_the_mark() -> None:
    """Old heartbeats and other versions wait; stale runs (dead processes) are ignored."""
    since = NOW - timedelta(seconds=10)
    runs = [
        run_row(1, age_s=1, counters={"dual_write_version": 5}),  # acked
        run_row(2, age_s=1, counters={"dual_write_version": 4}),  # older reindex
        run_row(3, age_s=1, counters={}),  # not switched yet
        run_row(4, age_s=12, counters={"dual_write_version": 5}),  # heartbeat before mark
        run_row(5, age_s=600, counters={}),  # dead process
    ]
    acked, waiting = daemon_acks(runs, want=5, since=since, now=NOW, stale_s=30)
    assert acked == [1]
    assert waiting == [2, 3, 4]


def test_daemon_acks_zero_means_not_dual_writing() -> None:
    runs = [
        run_row(1, age_s=1, counters={"dual_write_version": 0}),
        run_row(2, age_s=1, counters={}),
    ]
    assert daemon_acks(runs, want=0, since=None, now=NOW, stale_s=30) == ([1, 2], [])


def test_daemon_acks_with_no_daemons_waits_for_nobody() -> None:
    assert daemon_acks([], want=2, since=NOW, now=NOW, stale_s=30) == ([], [])


def test_end_offsets_are_the_committed_ones_while_daemons_dual_write() -> None:
    assert end_offsets({0: 50, 1: 90}, None) == {0: 50, 1: 90}


def test_end_offsets_without_daemons_reach_the_log_end() -> None:
    """Committed offsets stay the floor; partitions never committed still get read."""
    assert end_offsets({0: 50, 1: 90}, {0: 60, 1: 80, 2: 7}) == {0: 60, 1: 90, 2: 7}


@pytest.mark.parametrize(
    ("handoff", "committed", "gaps"),
    [
        pytest.param({0: 90, 1: 40}, {0: 120, 1: 80}, {}, id="dual-written-from-before-end"),
        pytest.param({0: 100}, {0: 130}, {}, id="idle-partition-handoff-at-end"),
        pytest.param({}, {0: 100, 1: 50}, {}, id="nothing-committed-since"),
        pytest.param({}, {0: 130}, {0: (100, 130)}, id="late-commit-no-handoff"),
        pytest.param({0: 115}, {0: 130}, {0: (100, 115)}, id="late-commit-then-dual"),
        pytest.param({}, {2: 9}, {2: (0, 9)}, id="partition-unknown-at-ack"),
    ],
)
def test_handoff_gaps(
    handoff: dict[int, int], committed: dict[int, int], gaps: dict[int, tuple[int, int]]
) -> None:
    """Only commits past the end offset that were not dual-written need a top-up."""
    assert handoff_gaps({0: 100, 1: 50}, handoff, committed) == gaps


@pytest.mark.parametrize(
    ("old", "new", "deletions", "tolerance", "ok"),
    [
        pytest.param(100, 100, 0, 0, True, id="equal"),
        pytest.param(100, 120, 0, 0, True, id="more-during-reindex"),
        pytest.param(100, 99, 0, 0, False, id="one-missing"),
        pytest.param(100, 99, 1, 0, True, id="one-deleted"),
        pytest.param(100, 97, 1, 2, True, id="tolerance"),
        pytest.param(100, 96, 1, 2, False, id="beyond-tolerance"),
        pytest.param(100, 0, 0, 0, False, id="empty"),
    ],
)
def test_count_problem(old: int, new: int, deletions: int, tolerance: int, ok: bool) -> None:
    problem = count_problem(old, new, deletions=deletions, tolerance=tolerance)
    assert (problem is None) == ok
    if not ok:
        assert str(new) in str(problem)


def test_swap_actions_remove_every_other_index_and_add_the_write_index() -> None:
    current = {"orders-v1": {"is_write_index": True}, "stray": {}}
    assert swap_actions("orders", current, "orders-v2") == [
        {"remove": {"index": "orders-v1", "alias": "orders"}},
        {"remove": {"index": "stray", "alias": "orders"}},
        {"add": {"index": "orders-v2", "alias": "orders", "is_write_index": True}},
    ]


def test_swap_actions_none_when_already_swapped() -> None:
    assert swap_actions("orders", {"orders-v2": {"is_write_index": True}}, "orders-v2") is None
    assert swap_actions("orders", {"orders-v2": {}}, "orders-v2") is not None


def test_prune_plan_keeps_the_newest_retired_and_never_what_the_alias_uses() -> None:
    rows = [
        version_row(1, "retired"),
        version_row(2, "retired"),
        version_row(3, "failed"),
        version_row(4, "retired"),
        version_row(5, "live"),
        version_row(6, "deleted"),
    ]
    assert [r.version for r in prune_plan(rows, 1, ["orders-v5"])] == [1, 2, 3]
    assert [r.version for r in prune_plan(rows, 0, ["orders-v5", "orders-v1"])] == [2, 3, 4]
    assert [r.version for r in prune_plan(rows, 5, ["orders-v5"])] == [3]


def test_rollback_target_is_the_version_the_live_one_replaced() -> None:
    state = ReindexState(
        mode="build",
        step="swapped",
        source="kafka",
        target_index="orders-v3",
        old_version=1,
        old_index="orders-v1",
        restore={},
    )
    live = version_row(3, "live", details=state.to_details())
    rows = [version_row(1, "retired"), version_row(2, "retired"), live]
    target = rollback_target(live, rows)
    assert target is not None and target.version == 1
    assert rollback_target(version_row(3, "live"), rows).version == 2  # type: ignore[union-attr]
    assert rollback_target(live, [live]) is None


def test_state_round_trips_through_details() -> None:
    state = ReindexState(
        mode="rollback",
        step="acked",
        source="index",
        target_index="a-v1",
        old_version=2,
        old_index="a-v2",
        restore={"refresh_interval": "1s", "number_of_replicas": 0},
        end_offsets={"0": 5},
        swap_offsets={"1": 3},
    )
    row = version_row(1, "building", alias="a", details={"other": 1, **state.to_details()})
    assert ReindexState.from_row(row) == state
    assert ReindexState.from_row(version_row(1, "building")) is None


def test_a_kafka_fill_result_carries_the_backfills_deletes() -> None:
    """The count check allows for deletions only if the fill reports the tombstones it applied."""
    from backfill.reindex.fills import StreamFiller
    from backfill.runner import BackfillSummary

    summary = BackfillSummary(
        stream="orders",
        kind="kafka",
        run_id=1,
        chunks_total=2,
        chunks_done=2,
        records_read=10,
        records_indexed=6,
        records_deleted=3,
        records_dead_lettered=1,
    )
    seen: list[Any] = []
    result = StreamFiller._summary_result(summary, seen.append)
    assert (result.read, result.indexed, result.deleted, result.dead_lettered) == (10, 6, 3, 1)
    assert seen == [result]
