"""Versioned indices behind an alias, and where the daemon writes.

Each stream's alias points at a physical index ``<alias>-v<N>`` created from the mapping
derived from the stream's reader schema plus per-stream overrides. The first start creates
v1 and the alias; the ledger's index-versions table tracks every version and its state.

While a reindex builds v(N+1) (ledger state ``building``) the router makes running daemons
write every batch to both the live alias and the new index, and records per partition the
first offset so dual-written (the handoff) for the backfill that fills the new index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from ingest.avro.catalog import SchemaCatalog
from ingest.ledger import IndexVersionRow, PostgresLedger
from ingest.search.client import SearchRequestError
from ingest.search.mapping import index_definition, time_value
from ingest.settings import StreamSettings, gc_deletes_setting, time_value_s

log = structlog.get_logger(__name__)


class IndexAdmin(Protocol):
    """What creating the live index needs of :class:`~ingest.search.client.SearchClient`."""

    def get_alias(self, alias: str) -> dict[str, dict[str, Any]]: ...
    def create_index(self, name: str, body: Mapping[str, Any]) -> None: ...
    def update_aliases(self, actions: list[dict[str, Any]]) -> None: ...
    def get_settings(self, index: str) -> dict[str, Any]: ...
    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None: ...


class IndexVersionBook(Protocol):
    """What creating the live index needs of :class:`~ingest.ledger.PostgresLedger`."""

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
    ) -> object: ...


def physical_index_name(alias: str, version: int) -> str:
    return f"{alias}-v{version}"


def ensure_live_index(
    client: IndexAdmin,
    ledger: IndexVersionBook,
    stream: StreamSettings,
    catalog: SchemaCatalog,
    *,
    gc_deletes_s: float,
) -> str:
    """Make sure the stream's alias exists with a write index; returns the live index name.

    Safe when several daemons start at once: whoever loses the race to create the index
    finds the alias in place. The index remembers deletes for at least ``gc_deletes_s``
    (``Settings.gc_deletes_s``): set at creation, raised on an index created with less.
    """
    alias = stream.alias
    existing = client.get_alias(alias)
    reader = catalog.latest(stream.subject)
    if existing:
        live = _write_index(existing)
        if not any(v.index_name == live for v in ledger.index_versions(alias)):
            version = _version_of(alias, live) or 1
            ledger.add_index_version(alias, version, live, reader.fingerprint, "live")
        keep_deletes(client, live, gc_deletes_s)
        return live
    known = ledger.index_versions(alias)
    version = max((int(v.version) for v in known), default=0) + 1
    index = physical_index_name(alias, version)
    try:
        client.create_index(
            index, index_definition(reader, stream.index, gc_deletes_s=gc_deletes_s)
        )
    except SearchRequestError as exc:
        # Another process (daemon or backfill worker) created it a moment ago: same index.
        if exc.error_type != "resource_already_exists_exception":
            raise
    client.update_aliases([{"add": {"index": index, "alias": alias, "is_write_index": True}}])
    ledger.add_index_version(alias, version, index, reader.fingerprint, "live")
    log.info("index_created", alias=alias, index=index)
    return index


#: The server's default ``index.gc_deletes``.
DEFAULT_GC_DELETES_S = 60.0


def keep_deletes(client: IndexAdmin, index: str, gc_deletes_s: float) -> None:
    """Raise ``index``'s ``gc_deletes`` to ``gc_deletes_s`` if it is lower (never lower it).

    Indices created before delete retention was set keep the server's 60 s. A cluster that
    refuses the update (no ``manage`` privilege) is logged, not fatal: the ledger's delete
    markers still guard every write; only a write racing a delete's ledger commit is then
    left to the shorter retention.
    """
    try:
        current = gc_deletes_setting(client.get_settings(index).get("index") or {})
        current_s = DEFAULT_GC_DELETES_S if current is None else time_value_s(current)
        if current_s >= gc_deletes_s:
            return
        client.put_settings(index, {"index": {"gc_deletes": time_value(gc_deletes_s)}})
    except (SearchRequestError, ValueError) as exc:
        log.warning("index_gc_deletes_not_raised", index=index, error=str(exc))
        return
    log.info("index_gc_deletes_raised", index=index, gc_deletes_s=gc_deletes_s)


def _write_index(aliases: Mapping[str, Any]) -> str:
    for index, info in aliases.items():
        if isinstance(info, Mapping) and info.get("is_write_index"):
            return index
    return sorted(aliases)[-1]


def _version_of(alias: str, index: str) -> int | None:
    prefix = f"{alias}-v"
    if index.startswith(prefix) and index[len(prefix) :].isdigit():
        return int(index[len(prefix) :])
    return None


class IndexRouter:
    """Targets of each flush: the alias, plus the index being built during a reindex."""

    def __init__(self, stream: StreamSettings, ledger: PostgresLedger | None = None) -> None:
        self.alias = stream.alias
        self._ledger = ledger
        self._building: tuple[int, str] | None = None
        self._handed_off: set[int] = set()

    @property
    def dual_write_version(self) -> int | None:
        return self._building[0] if self._building else None

    def targets(self) -> list[str]:
        if self._building is None:
            return [self.alias]
        return [self.alias, self._building[1]]

    def refresh(self) -> None:
        """Look in the ledger for a version being built; called every ``index_poll_s``."""
        if self._ledger is None:
            return
        row = self._ledger.building_version(self.alias)
        building = (int(row.version), str(row.index_name)) if row is not None else None
        if building != self._building:
            log.info(
                "dual_write_changed",
                alias=self.alias,
                building=building[1] if building else None,
            )
            self._building = building
            self._handed_off.clear()

    def note_flush(self, first_offsets: Mapping[tuple[str, int], int]) -> None:
        """Record the first dual-written offset of each partition not yet handed off."""
        if self._building is None or self._ledger is None:
            return
        fresh = {
            partition: offset
            for (_topic, partition), offset in first_offsets.items()
            if partition not in self._handed_off
        }
        if fresh:
            self._ledger.set_handoff(self.alias, self._building[0], fresh)
            self._handed_off.update(fresh)
