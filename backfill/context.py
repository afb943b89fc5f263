"""Where a backfill task finds its settings and ledger at run time — never in its parameters.

Luigi shows every parameter in luigid and stores it in the task history, so a task carries at
most the path of its config file. At run time it asks :func:`task_settings`: the settings a
caller in this process installed with :func:`use_settings` (``backfill`` CLI, the reindexer,
tests — forked worker processes inherit them), else the config file and ``INGEST_*``
environment, exactly as every other entry point loads them.

:func:`shared_ledger` keeps one small ledger pool per process and database for the cheap,
frequent completion checks Luigi makes while scheduling; it is per process id, so a forked
worker never uses a connection it inherited from its parent.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ingest.ledger import PostgresLedger
from ingest.logging import configure_logging
from ingest.settings import Settings, load_settings

_lock = threading.Lock()
_installed: Settings | None = None
_ledgers: dict[tuple[int, str, str], PostgresLedger] = {}
_logging_pid: int | None = None


@contextmanager
def use_settings(settings: Settings) -> Iterator[None]:
    """Make every task run in this process (and its forks) use ``settings``."""
    global _installed  # noqa: PLW0603 - one process-wide setting is the point
    with _lock:
        previous, _installed = _installed, settings
    try:
        yield
    finally:
        with _lock:
            _installed = previous


def task_settings(config_path: str = "") -> Settings:
    """The installed settings, else those loaded from ``config_path`` (or the default).

    Loading from the file means no ``backfill`` entry point set this process up (a plain
    ``luigi --module backfill.tasks`` run), so logging is configured here, once per process,
    with the secrets just loaded redacted.
    """
    global _logging_pid  # noqa: PLW0603 - once per process
    with _lock:
        installed = _installed
    if installed is not None:
        return installed
    settings = load_settings(config_path or None)
    if _logging_pid != os.getpid():
        configure_logging(level="INFO", secrets=settings.secrets())
        _logging_pid = os.getpid()
    return settings


def shared_ledger(settings: Settings) -> PostgresLedger:
    """This process's ledger for ``settings`` (connected and migrated on first use)."""
    key = (
        os.getpid(),
        settings.ledger.dsn.get_secret_value(),
        settings.ledger.schema_name,
    )
    with _lock:
        ledger = _ledgers.get(key)
    if ledger is not None:
        return ledger
    ledger = PostgresLedger.from_settings(settings.ledger, max_size=2)
    ledger.migrate()
    with _lock:
        existing = _ledgers.setdefault(key, ledger)
    if existing is not ledger:
        ledger.close()
    return existing


def close_shared_ledgers() -> None:
    """Close the ledgers this process opened (not ones inherited through a fork)."""
    pid = os.getpid()
    with _lock:
        mine = [k for k in _ledgers if k[0] == pid]
        ledgers = [_ledgers.pop(k) for k in mine]
    for ledger in ledgers:
        ledger.close()


atexit.register(close_shared_ledgers)
