"""The reindex state machine: create, ack, fill, verify, swap, live — resumable from the ledger.

See :mod:`backfill.reindex` for the steps and why each is safe to repeat after a kill.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from ingest.errors import ConfigError
from ingest.settings import Settings, StreamSettings

if TYPE_CHECKING:  # the ledger pulls in psycopg: kept out of `backfill --help`
    from ingest.avro.catalog import SchemaCatalog
    from ingest.ledger import IndexVersionRow

from backfill.reindex.plan import (
    SOURCES,
    Filler,
    FillJob,
    FillResult,
    Outcome,
    ReindexError,
    ReindexLedger,
    ReindexSearch,
    ReindexState,
    Step,
    bulk_load_definition,
    bulk_load_settings,
    count_problem,
    daemon_acks,
    end_offsets,
    handoff_gaps,
    int_keys,
    next_version,
    prune_plan,
    restore_values,
    rollback_target,
    split_settings,
    stale_after_s,
    str_keys,
    swap_actions,
    write_index,
)

log = structlog.get_logger(__name__)


# ----------------------------------------------------------------------------- machine


@dataclass(frozen=True)
class ReindexOptions:
    source: str | None = None
    paths: tuple[str, ...] = ()
    keep: int | None = None
    rollback: bool = False
    abort: bool = False
    tolerance: int = 0
    ack_timeout_s: float | None = None
    pause_at: str | None = None
    pause_s: float = 600.0


@dataclass
class ReindexResult:
    alias: str
    action: Outcome
    version: int | None = None
    index: str | None = None
    previous_index: str | None = None
    source: str | None = None
    fill: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.action} {self.alias}"]
        if self.index:
            label = "live" if self.action in (Outcome.REINDEXED, Outcome.ROLLED_BACK) else "index"
            parts.append(f"{label}={self.index}")
        if self.previous_index:
            parts.append(f"previous={self.previous_index}")
        if self.source:
            parts.append(f"source={self.source}")
        parts += [f"{k}={v}" for k, v in self.counts.items()]
        parts += [f"{k}={v}" for k, v in self.fill.items() if v]
        if self.pruned:
            parts.append("deleted=" + ",".join(self.pruned))
        return " ".join(parts)


class Reindexer:
    """Drives one build, rollback, abort or prune of a stream's alias; see module docstring.

    The caller holds the per-alias lock. Every method blocks on the ledger and the search
    cluster; waits are bounded (``ack_timeout_s``, ``pause_s``).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        stream: StreamSettings,
        ledger: ReindexLedger,
        search: ReindexSearch,
        catalog: SchemaCatalog,
        filler: Filler,
        options: ReindexOptions,
        group: str,
        high_watermarks: Callable[[], Mapping[int, int]],
        run_id: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.alias = stream.alias
        self.ledger = ledger
        self.search = search
        self.catalog = catalog
        self.filler = filler
        self.options = options
        self.group = group
        self._high_watermarks = high_watermarks
        self.run_id = run_id
        self._sleep = sleep
        self._clock = clock
        #: (database time, local monotonic time) of the last ledger write we saw.
        self._anchor: tuple[datetime, float] | None = None
        self._gc_deletes_s = settings.gc_deletes_s(stream)
        rt = settings.runtime
        # A daemon heartbeats every heartbeat_s from its loop and, while a flush retries,
        # from the retries (one attempt lasts at most the search request timeout plus the
        # longest backoff). A run silent for several beats past that is gone -- killed --
        # and is not waited for: with no live daemon the handoff needs no acknowledgement.
        self.stale_s = stale_after_s(rt.heartbeat_s, settings.search.request_timeout_s)
        # A live daemon acknowledges when its flush in progress ends: allow a retry budget.
        self.ack_timeout_s = options.ack_timeout_s or rt.max_retry_s + self.stale_s + 30

    # -- entry points -----------------------------------------------------------------------

    def run(self) -> ReindexResult:
        """Abort, resume, roll back or build, then prune if ``keep`` is set."""
        if self.options.abort:
            result = self.abort()
        else:
            row = self.ledger.building_version(self.alias)
            if row is not None:
                result = self._resume(row)
            elif self.options.rollback:
                result = self._drive(*self._begin_rollback())
            else:
                result = self._drive(*self._begin_build())
        if self.options.keep is not None:
            result.pruned = self.prune(self.options.keep)
        return result

    def _resume(self, row: IndexVersionRow) -> ReindexResult:
        state = ReindexState.from_row(row)
        if state is None:
            raise ReindexError(
                f"{row.index_name} is 'building' but carries no reindex state (not started by "
                f"backfill reindex?); resolve it by hand or re-run with --abort"
            )
        if self.options.rollback != (state.mode == "rollback"):
            raise ReindexError(
                f"a {state.mode} to {row.index_name} is in progress (step {state.step}): re-run "
                f"{'with' if state.mode == 'rollback' else 'without'} --rollback to finish it, "
                f"or --abort it"
            )
        if self.options.source is not None and self.options.source != state.source:
            log.warning("reindex_source_kept", stored=state.source, requested=self.options.source)
        log.info(
            "reindex_resumed",
            alias=self.alias,
            index=row.index_name,
            step=state.step,
            mode=state.mode,
        )
        return self._drive(int(row.version), state)

    # -- starting ---------------------------------------------------------------------------

    def _live(self) -> IndexVersionRow:
        from ingest.search.indices import ensure_live_index

        live = self.ledger.live_version(self.alias)
        if live is None:
            ensure_live_index(
                self.search,
                self.ledger,
                self.stream,
                self.catalog,
                gc_deletes_s=self.settings.gc_deletes_s(self.stream),
            )
            live = self.ledger.live_version(self.alias)
        if live is None:
            raise ReindexError(f"alias {self.alias!r} has no live version in the ledger")
        current = self.search.get_alias(self.alias)
        if live.index_name not in current:
            raise ReindexError(
                f"the ledger's live version {live.index_name} is not behind alias "
                f"{self.alias!r} (which points at {sorted(current) or 'nothing'}); fix the "
                f"alias or the ledger by hand first"
            )
        return live

    def _begin_build(self) -> tuple[int, ReindexState]:
        from ingest.search.indices import physical_index_name
        from ingest.search.mapping import index_definition

        live = self._live()
        versions = self.ledger.index_versions(self.alias)
        version = next_version(versions)
        target = physical_index_name(self.alias, version)
        reader = self.catalog.latest(self.stream.subject)
        body, restore = bulk_load_definition(
            index_definition(reader, self.stream.index, gc_deletes_s=self._gc_deletes_s),
            self.stream.index,
        )
        source = self.options.source or "kafka"
        self._check_source(source)
        if self.search.index_exists(target):
            # Left by a run killed between creating it and recording it: nothing reads or
            # writes an index the ledger does not know, so it is rebuilt from scratch.
            if target in self.search.get_alias(self.alias):
                raise ReindexError(
                    f"{target} is behind alias {self.alias!r} but unknown to the ledger"
                )
            log.warning("reindex_orphan_deleted", index=target)
            self.search.delete_index(target, missing_ok=True)
        self.search.create_index(target, body)
        log.info("reindex_index_created", alias=self.alias, index=target, version=version)
        self._pause("index-created")
        state = ReindexState(
            mode="build",
            step=Step.CREATED,
            source=source,
            target_index=target,
            old_version=int(live.version),
            old_index=live.index_name,
            restore=restore,
            paths=list(self.options.paths),
        )
        row = self.ledger.add_index_version(
            self.alias,
            version,
            target,
            reader.fingerprint,
            "building",
            details=state.to_details(),
        )
        if row.index_name != target or row.state != "building":
            raise ReindexError(
                f"ledger already has version {version} as {row.index_name} ({row.state})"
            )
        state.marked_at = row.updated_at.isoformat()
        self._save(version, state)
        log.info("reindex_building", alias=self.alias, index=target, source=source)
        self._pause("created")
        return version, state

    def _begin_rollback(self) -> tuple[int, ReindexState]:
        from ingest.search.mapping import index_definition

        live = self._live()
        target = rollback_target(live, self.ledger.index_versions(self.alias))
        if target is None or not self.search.index_exists(target.index_name):
            raise ReindexError(f"alias {self.alias!r} has no retired version left to roll back to")
        live_state = ReindexState.from_row(live)
        swap = live_state.swap_offsets if live_state is not None else None
        by_live_swap = live_state is not None and int(live_state.old_version) == int(target.version)
        source = self.options.source
        if source is None:
            source = "kafka" if swap is not None and by_live_swap else "index"
        self._check_source(source)
        start = swap if (source == "kafka" and swap is not None and by_live_swap) else {}
        definition = index_definition(
            self.catalog.latest(self.stream.subject),
            self.stream.index,
            gc_deletes_s=self._gc_deletes_s,
        )
        _others, picked = split_settings(dict(definition["settings"]))
        restore = restore_values(picked, self.stream.index)
        state = ReindexState(
            mode="rollback",
            step=Step.CREATED,
            source=source,
            target_index=target.index_name,
            old_version=int(live.version),
            old_index=live.index_name,
            restore=restore,
            paths=list(self.options.paths),
            start_offsets=dict(start),
        )
        row = self.ledger.set_index_state(
            self.alias, int(target.version), "building", state.to_details()
        )
        state.marked_at = row.updated_at.isoformat()
        self._save(int(target.version), state)
        log.info(
            "reindex_rollback_building",
            alias=self.alias,
            index=target.index_name,
            live=live.index_name,
            source=source,
            from_offsets=start or "earliest",
        )
        self._pause("created")
        return int(target.version), state

    def _check_source(self, source: str) -> None:
        if source not in SOURCES:
            raise ConfigError(f"unknown reindex source {source!r} (use {', '.join(SOURCES)})")
        if source == "files" and not self.options.paths:
            raise ConfigError("--source files needs at least one --path")

    # -- the steps --------------------------------------------------------------------------

    def _drive(self, version: int, state: ReindexState) -> ReindexResult:
        """Run every step after the one recorded; each records itself when done."""
        after: dict[Step, Callable[[int, ReindexState], None]] = {
            Step.CREATED: self._acknowledge,
            Step.ACKED: self._fill,
            Step.FILLED: self._verify,
            Step.VERIFIED: self._swap,
            Step.SWAPPED: self._go_live,
        }
        for done, run_next in after.items():
            if state.step == done:
                run_next(version, state)
        return ReindexResult(
            alias=self.alias,
            action=Outcome.ROLLED_BACK if state.mode == "rollback" else Outcome.REINDEXED,
            version=version,
            index=state.target_index,
            previous_index=state.old_index,
            source=state.source,
            fill=dict(state.fill),
            counts=dict(state.counts),
        )

    def _acknowledge(self, version: int, state: ReindexState) -> None:
        since = datetime.fromisoformat(state.marked_at) if state.marked_at else None
        self._save(version, state)  # also reads the database clock
        acked = self._wait_for_daemons(version, since, "start dual-writing")
        committed = self.ledger.offsets(self.group, self.stream.topic)
        # The log end only matters to a Kafka fill with nobody dual-writing.
        to_log_end = state.source == "kafka" and not acked
        ends = end_offsets(committed, self._high_watermarks() if to_log_end else None)
        state.end_offsets = str_keys(ends)
        state.step = Step.ACKED
        self._save(version, state)
        log.info(
            "reindex_handoff",
            alias=self.alias,
            index=state.target_index,
            daemons=acked,
            committed=str_keys(committed),
            end_offsets=state.end_offsets,
        )
        self._pause("acked")

    def _fill(self, version: int, state: ReindexState) -> None:
        job = FillJob(
            source=state.source,
            target=state.target_index,
            source_index=state.old_index,
            start_offsets=int_keys(state.start_offsets),
            end_offsets=int_keys(state.end_offsets),
            paths=tuple(state.paths),
        )
        self.search.put_settings(
            state.target_index, {"index": bulk_load_settings(state.restore.get("gc_deletes"))}
        )
        batches = 0

        def progress(so_far: FillResult) -> None:
            nonlocal batches
            batches += 1
            if self.run_id is not None:
                self.ledger.heartbeat(self.run_id, so_far.counters())
            if batches == 1:
                self._pause("filling")

        log.info(
            "reindex_fill_started", alias=self.alias, index=state.target_index, source=job.source
        )
        try:
            result = self.filler.fill(job, progress)
            result.add(self._top_up(version, state, progress))
        finally:
            self._restore(state)
        state.fill = asdict(result)
        state.step = Step.FILLED
        self._save(version, state)
        log.info("reindex_filled", alias=self.alias, index=state.target_index, **state.fill)
        self._pause("filled")

    def _top_up(
        self, version: int, state: ReindexState, progress: Callable[[FillResult], None]
    ) -> FillResult:
        """Copy from Kafka what may have reached only the old index after the handoff."""
        row = self.ledger.building_version(self.alias)
        handoff = row.handoff if row is not None and int(row.version) == version else {}
        committed = self.ledger.offsets(self.group, self.stream.topic)
        gaps = handoff_gaps(int_keys(state.end_offsets), handoff, committed)
        if not gaps:
            return FillResult()
        log.warning(
            "reindex_handoff_gap",
            alias=self.alias,
            gaps={str(p): list(g) for p, g in gaps.items()},
            handoff=str_keys(handoff),
        )
        job = FillJob(
            source="kafka",
            target=state.target_index,
            source_index=state.old_index,
            start_offsets={p: g[0] for p, g in gaps.items()},
            end_offsets={p: g[1] for p, g in gaps.items()},
        )
        result = self.filler.fill(job, progress)
        ends = int_keys(state.end_offsets)
        ends.update({p: max(ends.get(p, 0), g[1]) for p, g in gaps.items()})
        state.end_offsets = str_keys(ends)
        return result

    def _restore(self, state: ReindexState) -> None:
        """Put back refresh and replicas; also run on resume, since kill -9 skips finally."""
        self.search.put_settings(state.target_index, {"index": dict(state.restore)})

    def _verify(self, version: int, state: ReindexState) -> None:
        self._restore(state)
        deletions = int(state.fill.get("deleted", 0))
        problem: str | None = None
        old = new = 0
        for attempt in range(5):
            if attempt:
                self._sleep(0.5)  # a dual-written bulk may be between its two items
            self.search.refresh(state.old_index)
            old = self.search.count(state.old_index)
            self.search.refresh(state.target_index)
            new = self.search.count(state.target_index)
            problem = count_problem(old, new, deletions=deletions, tolerance=self.options.tolerance)
            if problem is None:
                break
        state.counts = {"old_count": old, "new_count": new}
        if problem is not None:
            self._save(version, state)
            log.error("reindex_count_mismatch", alias=self.alias, old=old, new=new)
            hint = ""
            if state.source == "kafka":
                hint = (
                    " (records past the topic's retention exist only in the old index: "
                    "--abort, then reindex with --source index)"
                )
            raise ReindexError(
                f"count check failed for {state.target_index}: {problem}; the alias stays on "
                f"{state.old_index}. Re-run to check again or --abort{hint}"
            )
        state.step = Step.VERIFIED
        self._save(version, state)
        log.info("reindex_verified", alias=self.alias, old_count=old, new_count=new)
        self._pause("verified")

    def _swap(self, version: int, state: ReindexState) -> None:
        if state.swap_offsets is None:
            # Read before the swap and never re-read: everything committed below these
            # offsets is in the old index, which a later rollback catches up from.
            state.swap_offsets = str_keys(self.ledger.offsets(self.group, self.stream.topic))
            self._save(version, state)
        current = self.search.get_alias(self.alias)
        actions = swap_actions(self.alias, current, state.target_index)
        if actions is not None:
            self._freeze_old(version, state, current)
            self.search.refresh(state.target_index)
            self.search.update_aliases(actions)
            log.info(
                "reindex_alias_swapped", alias=self.alias, index=state.target_index, actions=actions
            )
        self._thaw_old(state)
        state.step = Step.SWAPPED
        self._save(version, state)
        self._pause("swapped")

    def _freeze_old(self, version: int, state: ReindexState, current: Mapping[str, Any]) -> None:
        """Stop refreshes of the old index so what readers see there is already visible in
        the new one (refreshed right after): the count through the alias never drops."""
        if state.old_frozen or state.old_index not in current:
            return
        index_settings = self.search.get_settings(state.old_index).get("index", {})
        _others, picked = split_settings(index_settings)
        state.old_refresh = picked.get("refresh_interval")
        state.old_frozen = True
        self._save(version, state)
        self.search.put_settings(state.old_index, {"index": {"refresh_interval": "-1"}})

    def _thaw_old(self, state: ReindexState) -> None:
        if state.old_frozen and self.search.index_exists(state.old_index):
            self.search.put_settings(
                state.old_index, {"index": {"refresh_interval": state.old_refresh}}
            )

    def _go_live(self, version: int, state: ReindexState) -> None:
        current = self.search.get_alias(self.alias)
        if write_index(current) != state.target_index:
            raise ReindexError(
                f"step 'swapped' recorded but alias {self.alias!r} points at {sorted(current)}"
            )
        self.ledger.set_index_state(self.alias, version, "live", state.to_details())
        log.info(
            "reindex_live",
            alias=self.alias,
            index=state.target_index,
            retired=state.old_index,
            mode=state.mode,
        )

    # -- daemons ----------------------------------------------------------------------------

    def _wait_for_daemons(self, want: int, since: datetime | None, what: str) -> list[int]:
        """Block until every live daemon of the stream reports ``dual_write_version == want``.

        A run whose heartbeat stops while it is waited for (a daemon killed) drops out
        after ``stale_s``; the wait goes on without it.
        """
        deadline = self._clock() + self.ack_timeout_s
        logged = False
        waited: set[int] = set()
        while True:
            runs = self.ledger.runs("stream", 200, stream=self.stream.name, status="running")
            acked, waiting = daemon_acks(
                runs, want=want, since=since, now=self._db_now(), stale_s=self.stale_s
            )
            gone = waited - set(acked) - set(waiting)
            if gone:
                log.warning(
                    "reindex_daemons_presumed_dead",
                    runs=sorted(gone),
                    silent_s=round(self.stale_s, 1),
                    what=what,
                )
            waited = (waited - gone) | set(waiting)
            if not waiting:
                return acked
            if self._clock() >= deadline:
                raise ReindexError(
                    f"daemon runs {waiting} of stream {self.stream.name!r} did not "
                    f"{what} within {self.ack_timeout_s:g}s; re-run to wait again"
                )
            if not logged:
                log.info("reindex_waiting_for_daemons", runs=waiting, what=what, want=want)
                logged = True
            if self.run_id is not None:
                self.ledger.heartbeat(self.run_id)
            self._sleep(0.2)

    # -- abort and prune --------------------------------------------------------------------

    def abort(self) -> ReindexResult:
        """Give up the version being built (or rolled back to) unless the alias moved already."""
        row = self.ledger.building_version(self.alias)
        if row is None:
            return ReindexResult(alias=self.alias, action=Outcome.NOTHING_TO_ABORT)
        state = ReindexState.from_row(row)
        current = self.search.get_alias(self.alias)
        if row.index_name in current:
            raise ReindexError(
                f"the alias already points at {row.index_name}: re-run without --abort to finish"
            )
        if state is not None:
            self._thaw_old(state)
        version = int(row.version)
        if state is not None and state.mode == "rollback":
            self.search.put_settings(row.index_name, {"index": dict(state.restore)})
            self.ledger.set_index_state(self.alias, version, "retired")
            return ReindexResult(
                alias=self.alias, action=Outcome.ABORTED_ROLLBACK, index=row.index_name
            )
        marked = self._note(self.ledger.set_index_state(self.alias, version, "failed"))
        log.warning("reindex_aborted", alias=self.alias, index=row.index_name)
        try:
            self._wait_for_daemons(0, marked.updated_at, "stop dual-writing")
        except ReindexError as exc:
            log.warning("reindex_abort_index_kept", index=row.index_name, error=str(exc))
            return ReindexResult(
                alias=self.alias, action=Outcome.ABORTED_KEPT, index=row.index_name
            )
        self.search.delete_index(row.index_name, missing_ok=True)
        self.ledger.set_index_state(self.alias, version, "deleted")
        return ReindexResult(alias=self.alias, action=Outcome.ABORTED, index=row.index_name)

    def prune(self, keep: int) -> list[str]:
        """Delete retired versions beyond the newest ``keep`` and failed ones; their names."""
        current = self.search.get_alias(self.alias)
        deleted = []
        for row in prune_plan(self.ledger.index_versions(self.alias), keep, current):
            self.search.delete_index(row.index_name, missing_ok=True)
            self.ledger.set_index_state(self.alias, int(row.version), "deleted")
            log.info("reindex_version_deleted", alias=self.alias, index=row.index_name)
            deleted.append(row.index_name)
        return deleted

    # -- plumbing ---------------------------------------------------------------------------

    def _save(self, version: int, state: ReindexState) -> IndexVersionRow:
        return self._note(
            self.ledger.set_index_state(self.alias, version, "building", state.to_details())
        )

    def _note(self, row: IndexVersionRow) -> IndexVersionRow:
        """Remember the database's clock: heartbeats are judged by it, not by ours."""
        self._anchor = (row.updated_at, self._clock())
        return row

    def _db_now(self) -> datetime:
        if self._anchor is None:
            return datetime.now(UTC)
        at, mono = self._anchor
        return at + timedelta(seconds=self._clock() - mono)

    def _pause(self, point: str) -> None:
        if self.options.pause_at != point:
            return
        log.warning("reindex_paused", point=point, pid=os.getpid(), max_s=self.options.pause_s)
        deadline = self._clock() + self.options.pause_s
        while self._clock() < deadline:
            self._sleep(0.1)
        log.warning("reindex_pause_over", point=point)
