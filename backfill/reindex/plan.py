"""The reindex's pure part: constants, seams, the resumable state and every decision.

No I/O here: the machine (:mod:`backfill.reindex.machine`) asks these functions what to do,
so each rule is tested with plain values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from ingest.errors import FatalError
from ingest.settings import IndexSettings, time_value_s

if TYPE_CHECKING:  # the ledger pulls in psycopg: kept out of `backfill --help`
    from ingest.ledger import IndexVersionRow, RunRow


log = structlog.get_logger(__name__)


class Step(StrEnum):
    """The durable steps of a build or rollback, in order; the state stores the last one done."""

    CREATED = "created"
    ACKED = "acked"
    FILLED = "filled"
    VERIFIED = "verified"
    SWAPPED = "swapped"


class Outcome(StrEnum):
    """What a reindex command did, as its summary line begins."""

    REINDEXED = "reindexed"
    ROLLED_BACK = "rolled back"
    NOTHING_TO_ABORT = "nothing to abort for"
    ABORTED_ROLLBACK = "aborted rollback of"
    ABORTED_KEPT = "aborted (index kept) build of"
    ABORTED = "aborted build of"


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

#: Settings of an index being filled: Elasticsearch's bulk-load guidance (no refresh, no
#: replicas), and delete tombstones kept long enough that a delete dual-written before the
#: fill copies an older version of the document still wins (the default keeps them 60 s).
BULK_LOAD = {"refresh_interval": "-1", "number_of_replicas": 0, "gc_deletes": "24h"}
_RESTORED_KEYS = ("refresh_interval", "number_of_replicas", "gc_deletes")


def bulk_load_settings(live_gc_deletes: Any | None) -> dict[str, Any]:
    """:data:`BULK_LOAD`, keeping deletes at least as long as the live indices do.

    ``live_gc_deletes`` is the value the index gets back after the fill (its definition's,
    derived from ``runtime.max_retry_s``); should it exceed 24 h the fill keeps it, so the
    index never forgets a delete sooner while being filled than once live.
    """
    settings = dict(BULK_LOAD)
    if live_gc_deletes is not None and time_value_s(live_gc_deletes) > time_value_s(
        BULK_LOAD["gc_deletes"]
    ):
        settings["gc_deletes"] = live_gc_deletes
    return settings


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
    """What the reindex needs from :class:`~ingest.search.client.SearchClient`."""

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
    step: Step
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
        fields = {k: v for k, v in data.items() if k in known}
        fields["step"] = Step(fields["step"])
        return cls(**fields)


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
    nested.update(bulk_load_settings(restore["gc_deletes"]))
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


#: Heartbeats a daemon may miss before a reindex takes it for dead.
SILENT_BEATS = 4
#: The longest backoff between two retries of a flush (the retry policy's ``max_s``).
_RETRY_BACKOFF_MAX_S = 5.0


def stale_after_s(heartbeat_s: float, request_timeout_s: float) -> float:
    """How long a daemon's run may stay silent before it counts as gone (killed).

    Its loop beats every ``heartbeat_s``; a flush in retries beats between attempts, each
    at most one search request (``request_timeout_s``) plus a backoff. Beyond
    :data:`SILENT_BEATS` beats past that, the process is not running any more.
    """
    return SILENT_BEATS * heartbeat_s + request_timeout_s + _RETRY_BACKOFF_MAX_S


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
