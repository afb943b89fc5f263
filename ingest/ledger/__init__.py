"""The ledger: PostgreSQL state shared by the streaming daemon and the Luigi backfills.

Import :class:`PostgresLedger` and the row types from here; the submodules are
``postgres`` (the class, composed of one module per record kind: ``offsets``, ``runs``,
``dead_letters``, ``index_versions``, ``chunks``, ``deletes``, ``latency``, over ``base``:
connections, error translation, the WHERE builder), ``models`` (row dataclasses and their
stored form) and ``migrator`` (versioned migrations and worker privileges).
"""

from ingest.ledger.latency import LatencyWindow
from ingest.ledger.models import (
    ChunkRow,
    ChunkSkew,
    ChunkStatus,
    ChunkTiming,
    DeadLetterRow,
    IndexState,
    IndexVersionRow,
    OffsetCommit,
    OffsetRow,
    PartitionClaim,
    RunRow,
    RunStatus,
)
from ingest.ledger.postgres import PostgresLedger

__all__ = [
    "ChunkRow",
    "ChunkSkew",
    "ChunkStatus",
    "ChunkTiming",
    "DeadLetterRow",
    "IndexState",
    "IndexVersionRow",
    "LatencyWindow",
    "OffsetCommit",
    "OffsetRow",
    "PartitionClaim",
    "PostgresLedger",
    "RunRow",
    "RunStatus",
]
