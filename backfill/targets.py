"""Luigi completion backed by the ledger: a chunk is complete when its row is ``done``.

No marker files: the ledger is the one record of what was copied, shared by every machine
running backfills and by the daemon's operators (``ingest status``). Marking a chunk for
re-run (``--force``) is a ledger update, and a chunk that failed stays incomplete, so a
re-run of the same command retries exactly the chunks that are not done.
"""

from __future__ import annotations

import luigi

from backfill.context import shared_ledger, task_settings


class LedgerChunkTarget(luigi.Target):
    """Exists when ``backfill_chunks[task_id].status = 'done'``.

    ``exists()`` is called by Luigi while scheduling (once per task, in the scheduling
    process) and blocks for one short ledger query on this process's shared pool.
    """

    def __init__(self, task_id: str, config_path: str = "") -> None:
        self.task_id = task_id
        self.config_path = config_path

    def exists(self) -> bool:
        ledger = shared_ledger(task_settings(self.config_path))
        row = ledger.chunk(self.task_id)
        return row is not None and row.status == "done"

    def __repr__(self) -> str:
        return f"LedgerChunkTarget({self.task_id!r})"
