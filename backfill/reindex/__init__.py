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

from backfill.reindex.command import (
    reindex,
    reindex_command,
)
from backfill.reindex.fills import (
    StreamFiller,
    hit_action,
)
from backfill.reindex.machine import (
    Reindexer,
    ReindexOptions,
    ReindexResult,
)
from backfill.reindex.plan import (
    BULK_LOAD,
    LOCK_FAMILY,
    PAUSE_POINTS,
    SOURCES,
    Filler,
    FillJob,
    FillResult,
    ReindexError,
    ReindexLedger,
    ReindexSearch,
    ReindexState,
    Source,
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
    str_keys,
    swap_actions,
    write_index,
)

__all__ = [
    "BULK_LOAD",
    "LOCK_FAMILY",
    "PAUSE_POINTS",
    "SOURCES",
    "FillJob",
    "FillResult",
    "Filler",
    "ReindexError",
    "ReindexLedger",
    "ReindexOptions",
    "ReindexResult",
    "ReindexSearch",
    "ReindexState",
    "Reindexer",
    "Source",
    "StreamFiller",
    "bulk_load_definition",
    "bulk_load_settings",
    "count_problem",
    "daemon_acks",
    "end_offsets",
    "handoff_gaps",
    "hit_action",
    "int_keys",
    "next_version",
    "prune_plan",
    "reindex",
    "reindex_command",
    "restore_values",
    "rollback_target",
    "split_settings",
    "str_keys",
    "swap_actions",
    "write_index",
]
