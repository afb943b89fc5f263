"""The reindex state machine against fakes of the ledger, the search cluster and the fill.

A "kill" is a :class:`Killed` raised from the pause hook: nothing after it runs, exactly as
after ``kill -9``. A fresh :class:`Reindexer` then resumes from what the fake ledger holds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backfill.reindex import (
    PAUSE_POINTS,
    FillJob,
    FillResult,
    Reindexer,
    ReindexError,
    ReindexOptions,
    ReindexState,
)
from ingest.avro.catalog import SchemaCatalog
from ingest.ledger import IndexVersionRow, RunRow
from ingest.settings import Settings, StreamSettings

ALIAS = "orders"
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


class Killed(BaseException):
    """Stands for kill -9: not an Exception, so no handler in the code under test sees it."""


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeLedger:
    def __init__(self) -> None:
        self.rows: dict[int, IndexVersionRow] = {}
        self.committed: dict[int, int] = {}
        self.daemons: list[RunRow] = []
        self.tick = datetime(2024, 1, 1, tzinfo=UTC)

    def _now(self) -> datetime:
        self.tick += timedelta(milliseconds=1)
        return self.tick

    def index_versions(self, alias: str) -> list[IndexVersionRow]:
        return [self.rows[v] for v in sorted(self.rows)]

    def add_index_version(
        self,
        alias: str,
        version: int,
        index_name: str,
        fingerprint: str,
        state: str = "building",
        *,
        details: Mapping[str, Any] | None = None,
    ) -> IndexVersionRow:
        if version not in self.rows:
            if state == "live":
                self._retire_live(version)
            now = self._now()
            self.rows[version] = IndexVersionRow(
                alias,
                version,
                index_name,
                fingerprint,
                state,
                now,
                now,
                {},
                copy.deepcopy(dict(details or {})),
            )
        return self.rows[version]

    def set_index_state(
        self, alias: str, version: int, state: str, details: Mapping[str, Any] | None = None
    ) -> IndexVersionRow:
        if version not in self.rows:
            raise LookupError(version)
        if state == "live":
            self._retire_live(version)
        row = self.rows[version]
        merged = {**row.details, **copy.deepcopy(dict(details or {}))}
        self.rows[version] = replace(row, state=state, details=merged, updated_at=self._now())
        return self.rows[version]

    def _retire_live(self, version: int) -> None:
        for v, row in self.rows.items():
            if row.state == "live" and v != version:
                self.rows[v] = replace(row, state="retired")

    def _one(self, state: str) -> IndexVersionRow | None:
        found = [r for r in self.rows.values() if r.state == state]
        return max(found, key=lambda r: r.version) if found else None

    def building_version(self, alias: str) -> IndexVersionRow | None:
        return self._one("building")

    def live_version(self, alias: str) -> IndexVersionRow | None:
        return self._one("live")

    def offsets(self, group: str, topic: str) -> dict[int, int]:
        return dict(self.committed)

    def runs(
        self,
        kind: str | None = None,
        limit: int = 20,
        *,
        stream: str | None = None,
        status: str | None = None,
    ) -> list[RunRow]:
        return list(self.daemons)

    def heartbeat(self, run_id: int, counters: Mapping[str, int] | None = None) -> bool:
        return True

    def state(self, version: int) -> str:
        return self.rows[version].state


class FakeSearch:
    """Indices as dicts of id -> (version, source); refresh_interval as a plain setting."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
        self.settings: dict[str, dict[str, Any]] = {}
        self.aliases: dict[str, dict[str, Any]] = {}
        self.alias_requests: list[list[dict[str, Any]]] = []
        self.created: list[str] = []

    def add_index(self, name: str, docs: dict[str, int], refresh: str = "1s") -> None:
        self.docs[name] = {k: (v, {"v": v}) for k, v in docs.items()}
        self.settings[name] = {"refresh_interval": refresh, "number_of_replicas": 0}

    def create_index(self, name: str, body: Mapping[str, Any]) -> None:
        assert name not in self.docs, "index exists"
        self.created.append(name)
        self.docs[name] = {}
        self.settings[name] = dict(body["settings"]["index"])

    def delete_index(self, name: str, *, missing_ok: bool = False) -> None:
        self.docs.pop(name, None)
        self.settings.pop(name, None)
        self.aliases.pop(name, None)

    def index_exists(self, name: str) -> bool:
        return name in self.docs

    def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        self.alias_requests.append(actions)
        for action in actions:
            ((kind, spec),) = action.items()
            if kind == "remove":
                self.aliases.pop(spec["index"], None)
            else:
                self.aliases[spec["index"]] = {"is_write_index": spec.get("is_write_index", False)}

    def get_alias(self, alias: str) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.aliases)

    def count(self, index: str) -> int:
        return len(self.docs[index])

    def refresh(self, index: str) -> None:
        assert index in self.docs

    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None:
        self.settings[index].update(settings["index"])

    def get_settings(self, index: str) -> dict[str, Any]:
        return {"index": dict(self.settings[index])}

    def write(self, index: str, docs: Mapping[str, int]) -> None:
        for doc_id, version in docs.items():
            have = self.docs[index].get(doc_id)
            if have is None or have[0] < version:
                self.docs[index][doc_id] = (version, {"v": version})

    def versions(self, index: str) -> dict[str, int]:
        return {k: v for k, (v, _s) in self.docs[index].items()}


class FakeFiller:
    """Copies the source index (every source behaves alike here); ``die_after`` batches."""

    def __init__(self, search: FakeSearch) -> None:
        self.search = search
        self.jobs: list[FillJob] = []

    def fill(self, job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
        self.jobs.append(job)
        total = FillResult()
        items = sorted(self.search.versions(job.source_index).items())
        for start in range(0, len(items), 3):
            chunk = dict(items[start : start + 3])
            self.search.write(job.target, chunk)
            total.add(FillResult(read=len(chunk), indexed=len(chunk)))
            progress(total)
        return total


@pytest.fixture
def world() -> dict[str, Any]:
    ledger = FakeLedger()
    search = FakeSearch()
    search.add_index("orders-v1", {f"d{i}": i for i in range(10)})
    search.aliases["orders-v1"] = {"is_write_index": True}
    ledger.add_index_version(ALIAS, 1, "orders-v1", "fp1", "live")
    return {"ledger": ledger, "search": search, "catalog": SchemaCatalog.load(SCHEMAS_DIR)}


def machine(
    world: dict[str, Any],
    sleep: Callable[[float], None] | None = None,
    runtime: dict[str, Any] | None = None,
    **options: Any,
) -> Reindexer:
    stream = StreamSettings(
        name="orders",
        topic="orders",
        subject="orders",
        alias=ALIAS,
        id_field="order_id",
        version_field="updated_at",
        index={"replicas": 0, "refresh_interval": "1s"},  # type: ignore[arg-type]
    )
    settings = Settings(streams=(stream,), runtime=runtime or {})  # type: ignore[arg-type]
    clock = FakeClock()

    def default_sleep(s: float) -> None:
        clock.t += s

    return Reindexer(
        settings=settings,
        stream=stream,
        ledger=world["ledger"],
        search=world["search"],
        catalog=world["catalog"],
        filler=FakeFiller(world["search"]),
        options=ReindexOptions(**options),
        group="g.orders",
        high_watermarks=lambda: {0: 10},
        sleep=sleep or default_sleep,
        clock=clock,
    )


def killing_sleep(_s: float) -> None:
    raise Killed


def assert_converged(world: dict[str, Any], live: int, retired: int) -> None:
    ledger: FakeLedger = world["ledger"]
    search: FakeSearch = world["search"]
    new, old = f"orders-v{live}", f"orders-v{retired}"
    assert ledger.state(live) == "live"
    assert ledger.state(retired) == "retired"
    assert ledger.building_version(ALIAS) is None
    assert search.aliases == {new: {"is_write_index": True}}
    assert search.versions(new) == search.versions(old)
    assert search.settings[new]["refresh_interval"] == "1s", "bulk-load settings restored"
    assert search.settings[new]["number_of_replicas"] == 0
    # Deletes are kept as long as on any live index (an hour with the default max_retry_s),
    # not the server's 60 s once the bulk load is over.
    assert search.settings[new]["gc_deletes"] == "3600000ms", "tombstone retention of a live index"
    assert search.settings[old]["refresh_interval"] == "1s", "old index thawed"


def test_build_moves_the_alias_in_one_request_after_the_fill(world: dict[str, Any]) -> None:
    result = machine(world).run()
    assert result.index == "orders-v2" and result.previous_index == "orders-v1"
    assert result.counts == {"old_count": 10, "new_count": 10}
    assert_converged(world, live=2, retired=1)
    assert world["search"].alias_requests == [
        [
            {"remove": {"index": "orders-v1", "alias": ALIAS}},
            {"add": {"index": "orders-v2", "alias": ALIAS, "is_write_index": True}},
        ]
    ]


@pytest.mark.parametrize("point", PAUSE_POINTS)
def test_killed_at_any_point_resumes_and_converges(world: dict[str, Any], point: str) -> None:
    """A run killed at ``point`` never leaves the alias on a partial index; a re-run finishes."""
    with pytest.raises(Killed):
        machine(world, sleep=killing_sleep, pause_at=point).run()
    search: FakeSearch = world["search"]
    alias_on = set(search.aliases)
    if point == "swapped":
        assert alias_on == {"orders-v2"}
    else:
        assert alias_on == {"orders-v1"}, "alias never moves before verify"
    result = machine(world).run()
    assert result.index == "orders-v2"
    assert_converged(world, live=2, retired=1)
    assert world["ledger"].state(2) == "live"


def test_orphan_index_from_a_kill_before_the_ledger_row_is_rebuilt(world: dict[str, Any]) -> None:
    with pytest.raises(Killed):
        machine(world, sleep=killing_sleep, pause_at="index-created").run()
    assert 2 not in world["ledger"].rows
    world["search"].docs["orders-v2"]["junk"] = (1, {})
    machine(world).run()
    assert "junk" not in world["search"].versions("orders-v2")
    assert world["search"].created == ["orders-v2", "orders-v2"]


def daemon_run(heartbeat_at: datetime, counters: dict[str, Any]) -> RunRow:
    return RunRow(
        7,
        "stream",
        "orders",
        {},
        "running",
        "h",
        1,
        heartbeat_at,
        heartbeat_at,
        None,
        counters,
        None,
    )


def test_waits_for_running_daemons_to_dual_write(world: dict[str, Any]) -> None:
    """No daemon acknowledging in time: an error, and the build stays resumable.

    The fake database's clock is years behind ours: a heartbeat is judged fresh by the
    database's clock, so the silent-looking daemon is still waited for.
    """
    ledger: FakeLedger = world["ledger"]
    ledger.daemons = [daemon_run(ledger.tick, {})]
    with pytest.raises(ReindexError, match=r"did not start dual-writing"):
        machine(world, ack_timeout_s=1).run()
    row = ledger.building_version(ALIAS)
    assert row is not None and ReindexState.from_row(row).step == "created"  # type: ignore[union-attr]
    # The daemon switches: heartbeat after the mark, reporting the version.
    ledger.daemons = [daemon_run(ledger.tick + timedelta(seconds=1), {"dual_write_version": 2})]
    ledger.committed = {0: 4, 1: 3}
    machine(world).run()
    state = ReindexState.from_row(ledger.rows[2])
    assert state is not None and state.end_offsets == {"0": 4, "1": 3}
    assert state.swap_offsets == {"0": 4, "1": 3}


def test_a_daemon_silent_beyond_its_retry_budget_is_not_waited_for(
    world: dict[str, Any],
) -> None:
    """A run silent for minutes (a live daemon beats even through retries) is a leftover
    of a kill."""
    ledger: FakeLedger = world["ledger"]
    ledger.daemons = [daemon_run(ledger.tick - timedelta(seconds=400), {})]
    assert machine(world, ack_timeout_s=1).run().index == "orders-v2"


def test_a_daemon_killed_mid_wait_is_noticed_within_a_few_heartbeats(
    world: dict[str, Any],
) -> None:
    """A daemon beat just before the build and then died: the wait ends once its heartbeat
    is a few ``heartbeat_s`` (past one request timeout) old -- not after the retry budget
    or the acknowledgement timeout, both an hour here."""
    ledger: FakeLedger = world["ledger"]
    ledger.daemons = [daemon_run(ledger.tick, {})]
    reindexer = machine(
        world, runtime={"heartbeat_s": 0.5, "max_retry_s": 3600}, ack_timeout_s=3600
    )
    assert reindexer.stale_s == 4 * 0.5 + 30 + 5  # four beats + request timeout + backoff

    assert reindexer.run().index == "orders-v2"
    assert reindexer._clock() <= reindexer.stale_s + 1
    state = ReindexState.from_row(ledger.rows[2])
    assert state is not None and state.end_offsets == {"0": 10}, "no daemon: to the log end"


def test_a_late_alias_only_commit_is_topped_up_from_kafka(world: dict[str, Any]) -> None:
    """Commits past the end offsets without a handoff are copied again from Kafka."""
    ledger: FakeLedger = world["ledger"]
    ledger.committed = {0: 4}
    reindexer = machine(world, source="index")
    filler: FakeFiller = reindexer.filler  # type: ignore[assignment]
    original = filler.fill

    def fill(job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
        if not filler.jobs:
            ledger.committed = {0: 9}  # a stuck daemon flushed its old batch meanwhile
        return original(job, progress)

    filler.fill = fill  # type: ignore[method-assign]
    reindexer.run()
    main, top_up = filler.jobs
    assert (main.source, main.end_offsets) == ("index", {0: 4})
    assert (top_up.source, top_up.start_offsets, top_up.end_offsets) == ("kafka", {0: 4}, {0: 9})
    state = ReindexState.from_row(ledger.rows[2])
    assert state is not None and state.end_offsets == {"0": 9}


def test_count_check_refuses_the_swap(world: dict[str, Any]) -> None:
    """A fill that misses documents leaves the alias where it was."""
    reindexer = machine(world)

    class Lossy(FakeFiller):
        def fill(self, job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
            result = super().fill(job, progress)
            del self.search.docs[job.target]["d3"]
            return result

    reindexer.filler = Lossy(world["search"])
    with pytest.raises(ReindexError, match="count check failed"):
        reindexer.run()
    assert set(world["search"].aliases) == {"orders-v1"}
    assert world["ledger"].state(2) == "building"
    # With a tolerance of one missing document the same build may go live.
    machine(world, tolerance=1).run()
    assert world["ledger"].state(2) == "live"


def test_rollback_swaps_back_and_catches_up_from_the_swap(world: dict[str, Any]) -> None:
    machine(world).run()
    world["ledger"].committed = {0: 10}
    world["search"].write("orders-v2", {"late": 99})  # written after the swap, v2 only
    reindexer = machine(world, rollback=True)
    result = reindexer.run()
    assert result.index == "orders-v1" and result.action == "rolled back"
    (job,) = reindexer.filler.jobs  # type: ignore[attr-defined]
    assert job.source == "kafka" and job.target == "orders-v1"
    assert job.start_offsets == {}, "no commit before the swap: from the earliest offset"
    ledger: FakeLedger = world["ledger"]
    assert ledger.state(1) == "live" and ledger.state(2) == "retired"
    assert world["search"].aliases == {"orders-v1": {"is_write_index": True}}


def test_rollback_with_index_source_copies_the_live_index(world: dict[str, Any]) -> None:
    machine(world).run()
    world["search"].write("orders-v2", {"late": 99})
    machine(world, rollback=True, source="index").run()
    assert world["search"].versions("orders-v1")["late"] == 99


def test_rollback_without_a_retired_version_fails(world: dict[str, Any]) -> None:
    with pytest.raises(ReindexError, match="no retired version"):
        machine(world, rollback=True).run()


def test_resume_refuses_a_different_mode(world: dict[str, Any]) -> None:
    with pytest.raises(Killed):
        machine(world, sleep=killing_sleep, pause_at="acked").run()
    with pytest.raises(ReindexError, match="without --rollback"):
        machine(world, rollback=True).run()


def test_abort_removes_the_unswapped_build(world: dict[str, Any]) -> None:
    with pytest.raises(Killed):
        machine(world, sleep=killing_sleep, pause_at="filled").run()
    result = machine(world, abort=True).run()
    assert result.action == "aborted build of"
    assert result.summary() == "aborted build of orders index=orders-v2"
    assert world["ledger"].state(2) == "deleted"
    assert "orders-v2" not in world["search"].docs
    assert set(world["search"].aliases) == {"orders-v1"}
    # The next build takes a new number.
    assert machine(world).run().index == "orders-v3"


def test_abort_after_the_swap_is_refused(world: dict[str, Any]) -> None:
    with pytest.raises(Killed):
        machine(world, sleep=killing_sleep, pause_at="swapped").run()
    with pytest.raises(ReindexError, match="without --abort"):
        machine(world, abort=True).run()


def test_keep_deletes_older_retired_versions(world: dict[str, Any]) -> None:
    """--keep N keeps the newest N retired versions (for rollback) and deletes the rest."""
    machine(world).run()
    result = machine(world, keep=1).run()
    assert result.index == "orders-v3"
    assert result.pruned == ["orders-v1"]
    result = machine(world, keep=0).run()
    assert result.pruned == ["orders-v2", "orders-v3"]
    ledger: FakeLedger = world["ledger"]
    assert [ledger.state(v) for v in (1, 2, 3, 4)] == ["deleted", "deleted", "deleted", "live"]
    assert set(world["search"].docs) == {"orders-v4"}
