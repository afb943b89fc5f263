"""Zero-downtime reindex of one stream's alias into a new physical index, and rollback.

``backfill reindex --stream S`` builds ``<alias>-v<N+1>`` beside the live ``<alias>-v<N>``
while the streaming daemons keep running, then swaps the alias in one ``_aliases`` request.
The steps, each recorded in the ledger row of the version being built (``details.reindex``)
so that a run killed anywhere resumes where it stopped::

    create    create the index (derived mapping + overrides, bulk-load settings: refresh off,
              no replicas) and mark it ``building`` in the ledger
    ack       wait (bounded) until every running daemon of the stream heartbeats
              ``dual_write_version == N+1``: from then on each of its flushes goes to the
              alias *and* the new index. Record the end offsets per partition: the ledger's
              committed next offset at that moment (everything below is in the old index;
              everything from it on is dual-written). With no daemon running, the log end
              instead (reading more is harmless: external versions make a rewrite a no-op)
    fill      (bulk-load settings again, plus delete tombstones kept 24 h) copy into the new
              index: ``kafka`` (earliest retained offset up to the end
              offsets, with the Luigi backfill), ``index`` (scroll the old index, keeping
              each ``_version`` as the external version) or ``files`` (archive files);
              then top up from Kafka any partition whose commits moved past its end offset
              without a dual-written handoff there (a daemon stuck in retries since before
              the switch); restore refresh/replicas in a ``finally``
    verify    refresh both, require ``new >= old - deletions seen by the fill - tolerance``
    swap      freeze the old index's refresh (so a reader cannot see a document there that the
              new index does not show yet), refresh the new one, move the alias in ONE
              ``_aliases`` request (remove old, add new as write index), restore the old
              index's refresh
    live      ledger: new version ``live``, the old one ``retired`` (one transaction); the
              daemons' routers see no building version and stop dual-writing

The alias only ever moves after ``verify``, so readers never see an empty or partial index,
and nothing produced during the reindex is lost: records below the end offsets are copied,
records above them are dual-written.

``--rollback`` is the same machine aimed at the version the live one replaced: it is marked
``building`` again (daemons dual-write to it), caught up from Kafka since the swap offsets
recorded when the live version went live (or copied from the live index with ``--source
index``, which cannot carry deletions over), verified and swapped back.
``--keep N`` deletes retired versions beyond the newest N, and failed ones. ``--abort``
gives up a build that has not swapped yet.

Only one reindex per alias runs at a time: the ledger's chunk lock ``reindex:<alias>`` is a
PostgreSQL session advisory lock, released by the server if the process dies.

A kill between freezing the old index's refresh and the swap leaves the live index not
refreshing until the re-run (or ``--abort``) thaws it: readers see no new documents, never
fewer.

For tests and drills, ``INGEST_REINDEX_PAUSE_AT=<point>`` (or the hidden ``--pause-at``)
makes the process log ``reindex_paused`` and wait (up to ``INGEST_REINDEX_PAUSE_S``, default
600 s) at one of :data:`PAUSE_POINTS`, so a test can ``kill -9`` it there deterministically.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import click
import orjson
import structlog

from ingest.errors import ConfigError, FatalError, IngestError
from ingest.settings import IndexSettings, Settings, StreamSettings
from ingest.types import IndexAction, RawRecord

if TYPE_CHECKING:  # the ledger pulls in psycopg: kept out of `backfill --help`
    from ingest.catalog import SchemaCatalog
    from ingest.ledger import IndexVersionRow, RunRow

log = structlog.get_logger(__name__)

Source = Literal["kafka", "index", "files"]
SOURCES: tuple[str, ...] = ("kafka", "index", "files")

#: Where ``INGEST_REINDEX_PAUSE_AT`` can stop the process, in the order they are reached.
#: ``index-created`` only on a fresh build (index exists, no ledger row yet); ``filling``
#: after the first batch of the fill is written.
PAUSE_POINTS: tuple[str, ...] = (
    "index-created",
    "created",
    "acked",
    "filling",
    "filled",
    "verified",
    "swapped",
)

#: Durable steps stored in ``details.reindex.step``: the last one completed.
STEPS: tuple[str, ...] = ("created", "acked", "filled", "verified", "swapped")

#: Settings of an index being filled: Elasticsearch's bulk-load guidance (no refresh, no
#: replicas), and delete tombstones kept long enough that a delete dual-written before the
#: fill copies an older version of the document still wins (the default keeps them 60 s).
BULK_LOAD = {"refresh_interval": "-1", "number_of_replicas": 0, "gc_deletes": "24h"}
_RESTORED_KEYS = ("refresh_interval", "number_of_replicas", "gc_deletes")

LOCK_FAMILY = "reindex"


class ReindexError(FatalError):
    """The reindex cannot go on safely (count check failed, daemons never acknowledged...).

    The version being built stays ``building``; re-run to resume, or ``--abort``.
    """


# ----------------------------------------------------------------------------- seams


class ReindexLedger(Protocol):
    """What the reindex needs from :class:`~ingest.ledger.PostgresLedger`."""

    def index_versions(self, alias: str) -> list[IndexVersionRow]: ...
    def add_index_version(
        self,
        alias: str,
        version: int,
        index_name: str,
        fingerprint: str,
        state: str = "building",
        *,
        details: Mapping[str, Any] | None = None,
    ) -> IndexVersionRow: ...
    def set_index_state(
        self, alias: str, version: int, state: str, details: Mapping[str, Any] | None = None
    ) -> IndexVersionRow: ...
    def building_version(self, alias: str) -> IndexVersionRow | None: ...
    def live_version(self, alias: str) -> IndexVersionRow | None: ...
    def offsets(self, group: str, topic: str) -> dict[int, int]: ...
    def runs(
        self,
        kind: str | None = None,
        limit: int = 20,
        *,
        stream: str | None = None,
        status: str | None = None,
    ) -> list[RunRow]: ...
    def heartbeat(self, run_id: int, counters: Mapping[str, int] | None = None) -> bool: ...


class ReindexSearch(Protocol):
    """What the reindex needs from :class:`~ingest.search.SearchClient`."""

    def create_index(self, name: str, body: Mapping[str, Any]) -> None: ...
    def delete_index(self, name: str, *, missing_ok: bool = False) -> None: ...
    def index_exists(self, name: str) -> bool: ...
    def update_aliases(self, actions: list[dict[str, Any]]) -> None: ...
    def get_alias(self, alias: str) -> dict[str, dict[str, Any]]: ...
    def count(self, index: str) -> int: ...
    def refresh(self, index: str) -> None: ...
    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None: ...
    def get_settings(self, index: str) -> dict[str, Any]: ...


@dataclass
class FillResult:
    """What a fill wrote into the target, counted per bulk item."""

    read: int = 0
    indexed: int = 0
    deleted: int = 0
    conflicts: int = 0
    rejected: int = 0
    dead_lettered: int = 0

    def add(self, other: FillResult) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def counters(self) -> dict[str, int]:
        return {f"fill_{k}": v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class FillJob:
    """One fill: copy ``source`` into ``target`` (offsets are partition -> offset)."""

    source: str
    target: str
    source_index: str
    start_offsets: Mapping[int, int]
    end_offsets: Mapping[int, int]
    paths: tuple[str, ...] = ()


class Filler(Protocol):
    def fill(self, job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
        """Write everything of ``job`` into its target; ``progress`` after every batch.

        Must be idempotent (external versions): a killed fill is simply run again.
        """
        ...


# ----------------------------------------------------------------------------- state


@dataclass
class ReindexState:
    """The resumable state of one build or rollback, kept in ``details.reindex``."""

    mode: Literal["build", "rollback"]
    step: str
    source: str
    target_index: str
    old_version: int
    old_index: str
    restore: dict[str, Any]
    paths: list[str] = field(default_factory=list)
    #: DB time the version was marked building: acknowledgements must be newer.
    marked_at: str | None = None
    start_offsets: dict[str, int] = field(default_factory=dict)
    end_offsets: dict[str, int] = field(default_factory=dict)
    fill: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    #: The old index's refresh_interval before the swap froze it (None: the default).
    old_refresh: str | None = None
    old_frozen: bool = False
    #: Committed offsets read just before the swap: everything below is in the old index.
    swap_offsets: dict[str, int] | None = None

    def to_details(self) -> dict[str, Any]:
        return {"reindex": asdict(self)}

    @classmethod
    def from_row(cls, row: IndexVersionRow) -> ReindexState | None:
        data = row.details.get("reindex") if isinstance(row.details, Mapping) else None
        if not isinstance(data, Mapping):
            return None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def int_keys(offsets: Mapping[str, int] | None) -> dict[int, int]:
    """JSON object keys are strings; partitions are ints everywhere else."""
    return {int(p): int(o) for p, o in (offsets or {}).items()}


def str_keys(offsets: Mapping[int, int]) -> dict[str, int]:
    return {str(p): int(o) for p, o in sorted(offsets.items())}


# ----------------------------------------------------------------------------- decisions


def split_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(others, picked)``: index settings without the bulk-load keys, and their values.

    Settings may name a key plain (``refresh_interval``), dotted (``index.refresh_interval``)
    or nested (``{"index": {"refresh_interval": ...}}``); all three are recognised.
    """
    others: dict[str, Any] = {}
    picked: dict[str, Any] = {}
    for key, value in settings.items():
        bare = key.removeprefix("index.")
        if bare in _RESTORED_KEYS:
            picked[bare] = value
        elif key == "index" and isinstance(value, Mapping):
            nested = {k: v for k, v in value.items() if k not in _RESTORED_KEYS}
            picked.update({k: v for k, v in value.items() if k in _RESTORED_KEYS})
            if nested:
                others["index"] = nested
        else:
            others[key] = value
    return others, picked


def bulk_load_definition(
    definition: Mapping[str, Any], index_settings: IndexSettings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(body, restore)``: the create-index body with bulk-load settings, and the values to
    put back once the fill is done (from the definition, else the stream's settings; ``None``
    resets a setting to the server's default)."""
    others, restore = split_settings(dict(definition.get("settings") or {}))
    restore = restore_values(restore, index_settings)
    nested = dict(others.get("index") or {})
    nested.update(BULK_LOAD)
    others["index"] = nested
    body = dict(definition)
    body["settings"] = others
    return body, restore


def restore_values(picked: Mapping[str, Any], index_settings: IndexSettings) -> dict[str, Any]:
    return {
        "refresh_interval": picked.get("refresh_interval", index_settings.refresh_interval),
        "number_of_replicas": picked.get("number_of_replicas", index_settings.replicas),
        "gc_deletes": picked.get("gc_deletes"),
    }


def next_version(versions: Iterable[IndexVersionRow]) -> int:
    """Versions are never reused, not even those of failed or deleted builds."""
    return max((int(v.version) for v in versions), default=0) + 1


def daemon_acks(
    runs: Iterable[RunRow],
    *,
    want: int,
    since: datetime | None,
    now: datetime,
    stale_s: float,
) -> tuple[list[int], list[int]]:
    """``(acknowledged, waiting)`` run ids among the stream's running daemons.

    A run counts when its heartbeat is fresher than ``stale_s`` (older ones are processes
    gone without saying so). It has acknowledged when a heartbeat newer than ``since``
    reports ``dual_write_version == want`` (0 or absent means: not dual-writing).
    """
    acked: list[int] = []
    waiting: list[int] = []
    for run in runs:
        if run.status != "running" or (now - run.heartbeat_at).total_seconds() > stale_s:
            continue
        version = run.counters.get("dual_write_version", 0) if run.counters else 0
        fresh = since is None or run.heartbeat_at > since
        if fresh and int(version or 0) == want:
            acked.append(run.id)
        else:
            waiting.append(run.id)
    return sorted(acked), sorted(waiting)


def end_offsets(
    committed: Mapping[int, int], high_watermarks: Mapping[int, int] | None
) -> dict[int, int]:
    """Where the fill stops per partition.

    With daemons dual-writing, their committed next offsets at acknowledgement time are
    exact: everything below went to the old index, everything from there on goes to both.
    Without a daemon (``high_watermarks`` given) the old index may hold what a backfill
    wrote beyond them, so the fill reads up to the log end too — more is harmless.
    """
    ends = {p: int(o) for p, o in committed.items()}
    for p, high in (high_watermarks or {}).items():
        ends[p] = max(ends.get(p, 0), int(high))
    return dict(sorted(ends.items()))


def handoff_gaps(
    ends: Mapping[int, int], handoff: Mapping[int, int], committed: Mapping[int, int]
) -> dict[int, tuple[int, int]]:
    """Offsets ``[start, stop)`` per partition that may be in the old index only.

    Normally every commit after the acknowledgement is dual-written, and the first
    dual-written offset a daemon records (the handoff) is at or below the end offset. A
    partition whose commits moved past its end with no handoff there — a daemon stuck in
    retries since before the switch flushed its old batch late — is copied up to the
    handoff, or up to the current commit when none is recorded yet.
    """
    gaps: dict[int, tuple[int, int]] = {}
    for p, now in committed.items():
        start = ends.get(p, 0)
        stop = handoff.get(p, now)
        if now > start and stop > start:
            gaps[p] = (start, min(stop, now))
    return gaps


def count_problem(old: int, new: int, *, deletions: int, tolerance: int) -> str | None:
    """Why the new index may not go live, or ``None`` when ``new >= old - deletions - tol``."""
    floor = old - deletions - tolerance
    if new >= floor:
        return None
    return (
        f"new index holds {new} documents, old {old}: at most {deletions} deletions and a "
        f"tolerance of {tolerance} allow no fewer than {floor}"
    )


def write_index(aliases: Mapping[str, Mapping[str, Any]]) -> str | None:
    for index, info in aliases.items():
        if info.get("is_write_index"):
            return index
    return sorted(aliases)[-1] if aliases else None


def swap_actions(
    alias: str, current: Mapping[str, Mapping[str, Any]], target: str
) -> list[dict[str, Any]] | None:
    """The one ``_aliases`` request moving ``alias`` onto ``target`` alone (``None``: done)."""
    if set(current) == {target} and current[target].get("is_write_index"):
        return None
    actions: list[dict[str, Any]] = [
        {"remove": {"index": index, "alias": alias}} for index in sorted(current) if index != target
    ]
    actions.append({"add": {"index": target, "alias": alias, "is_write_index": True}})
    return actions


def prune_plan(
    versions: Iterable[IndexVersionRow], keep: int, in_alias: Iterable[str]
) -> list[IndexVersionRow]:
    """Retired versions beyond the newest ``keep`` and failed ones; never one the alias uses."""
    used = set(in_alias)
    rows = [v for v in versions if v.index_name not in used]
    retired = sorted((v for v in rows if v.state == "retired"), key=lambda v: -int(v.version))
    failed = [v for v in rows if v.state == "failed"]
    return sorted(retired[keep:] + failed, key=lambda v: int(v.version))


def rollback_target(
    live: IndexVersionRow, versions: Iterable[IndexVersionRow]
) -> IndexVersionRow | None:
    """The version ``live`` replaced, if still retired; else the newest retired one."""
    retired = [v for v in versions if v.state == "retired"]
    state = ReindexState.from_row(live)
    if state is not None:
        for v in retired:
            if int(v.version) == int(state.old_version):
                return v
    return max(retired, key=lambda v: int(v.version), default=None)


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
    action: str
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
            label = "live" if self.action in ("reindexed", "rolled back") else "index"
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
        rt = settings.runtime
        # A daemon blocked in sink retries does not heartbeat, for up to max_retry_s, after
        # which it exits. Only a run silent for longer is surely gone; one silent for less
        # may still flush a batch it read before the switch, so it is waited for.
        self.stale_s = rt.max_retry_s + 4 * rt.heartbeat_s + 10
        self.ack_timeout_s = options.ack_timeout_s or self.stale_s + 30

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
        from ingest.indices import ensure_live_index

        live = self.ledger.live_version(self.alias)
        if live is None:
            ensure_live_index(self.search, self.ledger, self.stream, self.catalog)  # type: ignore[arg-type]
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
        from ingest.indices import physical_index_name
        from ingest.mapping import index_definition

        live = self._live()
        versions = self.ledger.index_versions(self.alias)
        version = next_version(versions)
        target = physical_index_name(self.alias, version)
        reader = self.catalog.latest(self.stream.subject)
        body, restore = bulk_load_definition(
            index_definition(reader, self.stream.index), self.stream.index
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
            step="created",
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
        from ingest.mapping import index_definition

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
        definition = index_definition(self.catalog.latest(self.stream.subject), self.stream.index)
        _others, picked = split_settings(dict(definition["settings"]))
        restore = restore_values(picked, self.stream.index)
        state = ReindexState(
            mode="rollback",
            step="created",
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
        if state.step == "created":
            self._acknowledge(version, state)
        if state.step == "acked":
            self._fill(version, state)
        if state.step == "filled":
            self._verify(version, state)
        if state.step == "verified":
            self._swap(version, state)
        if state.step == "swapped":
            self._go_live(version, state)
        return ReindexResult(
            alias=self.alias,
            action="rolled back" if state.mode == "rollback" else "reindexed",
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
        state.step = "acked"
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
        self.search.put_settings(state.target_index, {"index": dict(BULK_LOAD)})
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
        state.step = "filled"
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
        state.step = "verified"
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
        state.step = "swapped"
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
        """Block until every live daemon of the stream reports ``dual_write_version == want``."""
        deadline = self._clock() + self.ack_timeout_s
        logged = False
        while True:
            runs = self.ledger.runs("stream", 200, stream=self.stream.name, status="running")
            acked, waiting = daemon_acks(
                runs, want=want, since=since, now=self._db_now(), stale_s=self.stale_s
            )
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
            return ReindexResult(alias=self.alias, action="nothing to abort for")
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
                alias=self.alias, action="aborted rollback of", index=row.index_name
            )
        marked = self._note(self.ledger.set_index_state(self.alias, version, "failed"))
        log.warning("reindex_aborted", alias=self.alias, index=row.index_name)
        try:
            self._wait_for_daemons(0, marked.updated_at, "stop dual-writing")
        except ReindexError as exc:
            log.warning("reindex_abort_index_kept", index=row.index_name, error=str(exc))
            return ReindexResult(
                alias=self.alias, action="aborted (index kept) build of", index=row.index_name
            )
        self.search.delete_index(row.index_name, missing_ok=True)
        self.ledger.set_index_state(self.alias, version, "deleted")
        return ReindexResult(alias=self.alias, action="aborted build of", index=row.index_name)

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


# ----------------------------------------------------------------------------- fills


class StreamFiller:
    """The real fills: the Luigi Kafka and file backfills (:mod:`backfill.runner`) aimed at
    the new index, and a scroll copy of the old index."""

    def __init__(self, components: Any, stream: StreamSettings, run_id: int | None) -> None:
        self._components = components
        self._stream = stream
        self._run_id = run_id

    def fill(self, job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
        if job.source == "kafka":
            return self._from_kafka(job, progress)
        if job.source == "index":
            return self._from_index(job, progress)
        if job.source == "files":
            return self._from_files(job, progress)
        raise ConfigError(f"unknown reindex source {job.source!r}")

    def _from_kafka(self, job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
        """The Luigi offset backfill: every partition from ``start`` (default the earliest
        retained offset) up to the end offsets, through the stream's own pipeline.

        Its chunks are named by index and offsets, so a fill killed half-way resumes: the
        chunks already done are skipped. Bad records land in the stream's dead letters (the
        rows the daemon wrote, so nothing is counted twice).
        """
        from backfill.runner import run_kafka_backfill

        summary = run_kafka_backfill(
            self._components.settings,
            self._stream.name,
            index=job.target,
            end_offsets=dict(job.end_offsets),
            start_offsets=dict(job.start_offsets),
        )
        return self._summary_result(summary, progress)

    def _from_index(self, job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
        """Scroll the source index and write each hit with its ``_version`` as external version."""
        from ingest.sink import BulkSink

        client = self._components.search
        sink = BulkSink(client, max_retry_s=self._components.settings.runtime.max_retry_s)
        client.refresh(job.source_index)
        total = FillResult()
        page: list[IndexAction] = []

        def flush() -> None:
            result = sink.write(page, [job.target])
            for action, reason in result.rejected:
                log.error("reindex_document_rejected", doc_id=action.doc_id, reason=reason)
            total.add(
                FillResult(
                    read=len(page),
                    indexed=result.indexed,
                    conflicts=result.conflicts,
                    rejected=len(result.rejected),
                )
            )
            page.clear()
            progress(total)

        for n, hit in enumerate(client.scan(job.source_index, size=1000)):
            page.append(hit_action(hit, job.source_index, n))
            if len(page) >= 1000:
                flush()
        if page:
            flush()
        return total

    def _from_files(self, job: FillJob, progress: Callable[[FillResult], None]) -> FillResult:
        """The Luigi file backfill for each ``--path`` (file, directory or glob)."""
        from backfill.runner import run_file_backfill

        total = FillResult()
        for path in job.paths:
            summary = run_file_backfill(
                self._components.settings, self._stream.name, path, index=job.target
            )
            total.add(self._summary_result(summary, progress))
        return total

    @staticmethod
    def _summary_result(summary: Any, progress: Callable[[FillResult], None]) -> FillResult:
        if not summary.ok:
            failed = "; ".join(f"{f.label}: {f.error}" for f in summary.failures[:5])
            raise ReindexError(
                f"{summary.chunks_failed} backfill chunk(s) failed ({failed}); re-run to resume"
            )
        result = FillResult(
            read=summary.records_read,
            indexed=summary.records_indexed,
            conflicts=summary.conflicts,
            dead_lettered=summary.records_dead_lettered,
        )
        progress(result)
        return result


def hit_action(hit: Mapping[str, Any], source_index: str, n: int) -> IndexAction:
    """A search hit as an index action keeping its version (PITFALLS #3: never re-version)."""
    doc_id = str(hit["_id"])
    return IndexAction(
        op="index",
        doc_id=doc_id,
        version=int(hit.get("_version", 1)),
        body=orjson.dumps(hit.get("_source") or {}),
        record=RawRecord(
            topic=source_index,
            partition=0,
            offset=n,
            key=doc_id.encode(),
            value=None,
            source="index",
        ),
    )


# ----------------------------------------------------------------------------- running


def reindex(settings: Settings, stream_name: str, options: ReindexOptions) -> ReindexResult:
    """Run one reindex (or rollback/abort/prune) of ``stream_name`` under the alias lock."""
    from ingest.components import open_components
    from ingest.daemon import group_id_for
    from ingest.source import KafkaRangeReader

    stream = settings.stream(stream_name)
    if options.pause_at is not None and options.pause_at not in PAUSE_POINTS:
        raise ConfigError(
            f"unknown pause point {options.pause_at!r} (use {', '.join(PAUSE_POINTS)})"
        )
    owner = f"{socket.gethostname()}:{os.getpid()}"
    task_id = f"reindex:{stream.alias}"
    with open_components(settings) as components:
        ledger = components.ledger
        # A finished lock row (done/failed) must not block the next reindex of the alias.
        ledger.reset_chunks(stream.name, family=LOCK_FAMILY)
        params = {k: v for k, v in asdict(options).items() if k not in {"pause_s"}}
        if not ledger.try_lock_chunk(task_id, LOCK_FAMILY, stream.name, params, owner):
            raise ReindexError(f"another reindex of alias {stream.alias!r} is running")
        run_id = ledger.start_run("reindex", stream.name, params)
        status, error = "failed", None
        result: ReindexResult | None = None
        try:
            reader = KafkaRangeReader(settings)

            def watermarks() -> Mapping[int, int]:
                return reader.end_offsets(stream.topic, reader.partitions(stream.topic))

            machine = Reindexer(
                settings=settings,
                stream=stream,
                ledger=ledger,
                search=components.search,
                catalog=components.catalog,
                filler=StreamFiller(components, stream, run_id),
                options=options,
                group=group_id_for(settings, stream),
                high_watermarks=watermarks,
                run_id=run_id,
            )
            result = machine.run()
            status = "succeeded"
            return result
        except IngestError as exc:
            error = str(exc)
            raise
        finally:
            counters = {k: int(v) for k, v in (result.fill if result else {}).items()}
            ledger.finish_run(run_id, status, error=error, counters=counters)
            ledger.finish_chunk(task_id, "done" if status == "succeeded" else "failed", error=error)


@click.command("reindex")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML settings file (default: ./ingest.toml, or $INGEST_CONFIG).",
)
@click.option("--stream", "stream_name", required=True, help="Stream whose alias to rebuild.")
@click.option(
    "--source",
    type=click.Choice(SOURCES),
    default=None,
    help="Where the new version is filled from (default: kafka; a rollback catches up "
    "from Kafka since the swap when it can, else copies the live index).",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    type=str,
    help="Avro archive file, directory or glob for --source files (repeatable).",
)
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=None,
    help="Afterwards delete retired versions beyond the newest N (and failed ones).",
)
@click.option("--rollback", is_flag=True, help="Swap back to the version the live one replaced.")
@click.option("--abort", is_flag=True, help="Give up a build that has not swapped yet.")
@click.option(
    "--tolerance",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Documents the new version may miss beyond deletions before the swap is refused.",
)
@click.option(
    "--ack-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="How long running daemons get to start dual-writing.",
)
@click.option(
    "--pause-at",
    type=click.Choice(PAUSE_POINTS),
    envvar="INGEST_REINDEX_PAUSE_AT",
    default=None,
    hidden=True,
)
@click.option("--pause-s", type=float, envvar="INGEST_REINDEX_PAUSE_S", default=600.0, hidden=True)
@click.option("--log-level", default="INFO", show_default=True)
def reindex_command(
    config_path: Path | None,
    stream_name: str,
    source: str | None,
    paths: tuple[str, ...],
    keep: int | None,
    rollback: bool,
    abort: bool,
    tolerance: int,
    ack_timeout_s: float | None,
    pause_at: str | None,
    pause_s: float,
    log_level: str,
) -> None:
    """Rebuild a stream's index beside the live one and swap the alias atomically.

    Resumable: re-run the same command after any failure or kill.
    """
    from ingest.cli import EXIT_CONFIG, EXIT_RUNTIME, load

    if rollback and abort:
        click.echo("error: --rollback and --abort exclude each other", err=True)
        sys.exit(EXIT_CONFIG)
    options = ReindexOptions(
        source=source,
        paths=tuple(paths),
        keep=keep,
        rollback=rollback,
        abort=abort,
        tolerance=tolerance,
        ack_timeout_s=ack_timeout_s,
        pause_at=pause_at or None,
        pause_s=pause_s,
    )
    try:
        settings = load(config_path, log_level=log_level)
        result = reindex(settings, stream_name, options)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except IngestError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_RUNTIME)
    click.echo(result.summary())


if __name__ == "__main__":  # pragma: no cover
    reindex_command()
