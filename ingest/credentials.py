"""Secrets read from files, re-read when the file changes or the server refuses them, audited.

A credential given as a file (``INGEST_*_FILE``, ``<key>_file`` in TOML, ``[kafka.client_files]``)
is usually written by an agent that rotates it: a Vault or Kubernetes sidecar, a cron job
renewing a short-lived token. :class:`FileSecret` is one such file: it hands out the value
in force and re-reads the file

- when the file changes — its ``(inode, size, mtime)`` is compared at most once per
  ``check_every_s``, so asking for the value on every request costs one clock read, and one
  ``stat`` per interval;
- when the caller was refused (:meth:`FileSecret.reload`, after a 401/403 from the search
  server, an authentication failure from PostgreSQL or a SASL failure from Kafka); the
  caller retries with the new value only if the value really changed — an unchanged value
  refused again is the same authentication error as before, not something to retry.

Every load that puts a new value in force (the first one included) is a
:class:`CredentialLoad`: logged at once as ``credential_loaded`` (name, source file, file
mtime, fingerprint — never the value), handed to the listeners (the log redactor learns the
new value), and queued for the ledger, which writes the queue when it is reachable
(:func:`take_pending_loads`), so a rotated ledger DSN is logged first and recorded once
connected.

**Fingerprint.** The first 12 hex digits (48 bits) of HMAC-SHA256 over the value, keyed with
the constant :data:`FINGERPRINT_KEY`. It tells an auditor whether two loads, on any host and
in any process, put the same value in force; it must therefore be deterministic, which
rules out a random per-process salt. A plain unsalted SHA-256 of a short password would be
found in precomputed tables of common passwords in seconds; the keyed HMAC makes every such
table useless, so an attacker with the ledger has to run a dictionary through this very
scheme, and the 48-bit prefix leaves a long random token (what rotated credentials are)
with countless preimages. A weak password stays guessable by such a dictionary run — no
deterministic fingerprint can prevent that without a key kept secret from the ledger's
readers; the defence is a strong secret.

This module imports nothing from the project, so every layer may use it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

#: Key of the fingerprint HMAC: constant, so fingerprints compare across hosts and processes.
FINGERPRINT_KEY = b"ingest credential fingerprint v1"
#: Hex digits of the fingerprint kept (48 bits).
FINGERPRINT_HEX = 12
#: How often a credential's file is checked for a change by default.
DEFAULT_CHECK_EVERY_S = 1.0
#: Loads kept for the ledger while it is unreachable; the oldest are dropped beyond this
#: (each was logged when it happened).
MAX_PENDING_LOADS = 1000


def fingerprint(value: str) -> str:
    """A short, non-reversible fingerprint of a secret value (see the module docstring)."""
    digest = hmac.new(FINGERPRINT_KEY, value.encode(), hashlib.sha256).hexdigest()
    return digest[:FINGERPRINT_HEX]


@dataclass(frozen=True, slots=True)
class CredentialLoad:
    """One load of a credential that put a (new) value in force. Holds no secret."""

    name: str
    source: str
    file_mtime: dt.datetime
    fingerprint: str
    loaded_at: dt.datetime
    #: ``start`` (first load), ``changed`` (the file changed) or ``refused`` (re-read after
    #: the server refused the value in force).
    reason: str


class Secret(Protocol):
    """A secret value that may change while the process runs."""

    name: str

    def current(self) -> str:
        """The value in force; cheap enough to call on every request. Never blocks long."""
        ...

    def reload(self) -> bool:
        """Re-read the source now (the server refused the value); True if the value changed."""
        ...


class StaticSecret:
    """A secret given inline: it never changes, so a refusal is final."""

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value

    def current(self) -> str:
        return self._value

    def reload(self) -> bool:
        return False


class CredentialError(Exception):
    """A credential file cannot be read at its first load (later failures keep the old value)."""


Stat = tuple[int, int, int]


class FileSecret:
    """One file-backed secret; thread-safe. The value is the file's text, stripped.

    The first :meth:`current` reads the file (:class:`CredentialError` if it cannot). Later,
    a file that cannot be read or is empty (an agent in the middle of replacing it) keeps
    the value in force and is tried again at the next check.
    """

    def __init__(
        self,
        name: str,
        path: str | Path,
        *,
        check_every_s: float = DEFAULT_CHECK_EVERY_S,
        registry: CredentialRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.path = Path(path)
        self._check_every_s = check_every_s
        self._registry = registry if registry is not None else REGISTRY
        self._clock = clock
        self._lock = threading.Lock()
        self._value: str | None = None
        self._stat: Stat | None = None
        self._checked_at = 0.0

    def current(self) -> str:
        now = self._clock()
        value = self._value
        if value is not None and now - self._checked_at < self._check_every_s:
            return value
        with self._lock:
            if self._value is None:
                self._load("start", first=True)
            elif now - self._checked_at >= self._check_every_s:
                self._checked_at = now
                stat = self._stat_now()
                if stat is not None and stat != self._stat:
                    self._load("changed")
            assert self._value is not None
            return self._value

    def reload(self) -> bool:
        with self._lock:
            before = self._value
            self._load("refused", first=before is None)
            return self._value != before

    def _stat_now(self) -> Stat | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self, reason: str, *, first: bool = False) -> None:
        """Read the file; a new value is put in force and recorded. Holds ``_lock``."""
        self._checked_at = self._clock()
        try:
            st = os.stat(self.path)
            value = self.path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            if first:
                reason_text = getattr(exc, "strerror", None) or type(exc).__name__
                raise CredentialError(
                    f"cannot read {self.name} file {str(self.path)!r}: {reason_text}"
                ) from None
            log.warning("credential_unreadable", name=self.name, source=str(self.path))
            return
        if not value and not first:
            log.warning("credential_empty", name=self.name, source=str(self.path))
            return
        self._stat = (st.st_ino, st.st_size, st.st_mtime_ns)
        if value == self._value:
            return
        self._value = value
        self._registry.record(
            CredentialLoad(
                name=self.name,
                source=str(self.path),
                file_mtime=dt.datetime.fromtimestamp(st.st_mtime, dt.UTC),
                fingerprint=fingerprint(value),
                loaded_at=dt.datetime.now(dt.UTC),
                reason=reason,
            ),
            value,
        )


#: Told of every new value put in force (e.g. the log redactor); must not block.
ValueListener = Callable[[str], None]


class CredentialRegistry:
    """The process's file-backed secrets, their audit queue and value listeners."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[tuple[str, Path], FileSecret] = {}
        self._pending: list[CredentialLoad] = []
        self._listeners: list[ValueListener] = []

    def secret(
        self, name: str, path: str | Path, *, check_every_s: float = DEFAULT_CHECK_EVERY_S
    ) -> FileSecret:
        """The one :class:`FileSecret` for ``name`` at ``path`` in this process."""
        key = (name, Path(path))
        with self._lock:
            found = self._secrets.get(key)
            if found is None:
                found = FileSecret(name, path, check_every_s=check_every_s, registry=self)
                self._secrets[key] = found
            return found

    def on_new_value(self, listener: ValueListener) -> None:
        """Call ``listener`` with every value put in force from now on."""
        with self._lock:
            self._listeners.append(listener)

    def record(self, load: CredentialLoad, value: str) -> None:
        """Log ``load``, tell the listeners the value, queue the load for the ledger."""
        with self._lock:
            listeners = list(self._listeners)
            self._pending.append(load)
            del self._pending[:-MAX_PENDING_LOADS]
        for listener in listeners:
            listener(value)
        log.info(
            "credential_loaded",
            name=load.name,
            source=load.source,
            file_mtime=load.file_mtime.isoformat(),
            fingerprint=load.fingerprint,
            reason=load.reason,
        )

    def take_pending_loads(self) -> list[CredentialLoad]:
        """The loads not yet in the ledger, oldest first; the queue is emptied."""
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def put_back(self, loads: list[CredentialLoad]) -> None:
        """Loads the ledger could not take: queued again, ahead of newer ones."""
        with self._lock:
            self._pending[:0] = loads
            del self._pending[:-MAX_PENDING_LOADS]


#: The process-wide registry: one FileSecret per file, one audit queue.
REGISTRY = CredentialRegistry()


def file_secret(
    name: str, path: str | Path, *, check_every_s: float = DEFAULT_CHECK_EVERY_S
) -> FileSecret:
    """The process's :class:`FileSecret` for ``name`` at ``path``."""
    return REGISTRY.secret(name, path, check_every_s=check_every_s)


def take_pending_loads() -> list[CredentialLoad]:
    """The loads not yet written to the ledger (see :meth:`CredentialRegistry.put_back`)."""
    return REGISTRY.take_pending_loads()
