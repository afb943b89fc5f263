"""Logging: structlog set-up (JSON lines off a TTY, readable lines on one) and redaction.

Called once by each entry point (``ingest``, ``backfill``) before any work. Standard-library
loggers (librdkafka callbacks, luigi, elastic_transport) go through the same processors so
nothing bypasses redaction.

Log redaction: a structlog processor that keeps secrets out of every log line.

Secrets reach logs in three ways, and :class:`Redactor` handles each:

1. a field whose *name* looks secret (``password=...``, ``sasl.password``, ``api_key``) --
   decided by :func:`ingest.settings.is_secret_key`; the value becomes ``***``;
2. a DSN with an inline password inside any text (``postgresql://u:pw@host/db``, or
   ``password=pw`` in a key=value DSN) -- :func:`ingest.settings.redact_dsn`;
3. a known secret value anywhere in any text, such as a password quoted by a driver's
   exception message -- the values come from :meth:`ingest.settings.Settings.secrets`.

Every string in the event dict is checked: ``event``, the formatted ``exception`` text,
strings nested in dicts, lists and tuples, and the ``str()`` of exceptions and other objects
passed as field values (replaced by their redacted text only when something was found). An
``exc_info`` not yet formatted is rendered and, if it holds a secret, replaced by a redacted
``exception`` string. Place the processor after ``format_exc_info`` / ``dict_tracebacks``
and before the renderer.

Cost when nothing matches: per string one precompiled regex search plus two substring tests;
the daemon logs summaries every few seconds, not per record, so this is far off the hot path.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from ingest.credentials import REGISTRY
from ingest.settings import dsn_secret, is_secret_key, redact_dsn

MASK = "***"

#: Containers nested deeper than this are checked through their ``str()`` only.
_MAX_DEPTH = 6
_KEY_CACHE_MAX = 4096
_PLAIN = (int, float, bool, type(None))


def _variants(secret: str) -> set[str]:
    """The forms a secret takes in text: as is, escaped by ``repr``/JSON, URL-encoded."""
    forms = {secret, repr(secret)[1:-1], quote(secret, safe=""), quote(secret)}
    forms.add(secret.replace("\\", "\\\\").replace('"', '\\"'))
    return {f for f in forms if f}


def _has_value(value: Any) -> bool:
    """Whether a secret-named field holds something to mask (None and "" say "unset")."""
    return value is not None and not (isinstance(value, str) and not value)


class Redactor:
    """structlog processor masking secret-named fields, DSN passwords and known secret values.

    ``secrets`` are the values in force (empty strings are ignored). A very short secret
    is masked wherever it occurs, which can make logs ugly but never leaks it.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._bytes: tuple[bytes, ...] = ()
        self._key_cache: dict[str, bool] = {}
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Also mask these values from now on (e.g. a credential read after start-up)."""
        new = {s for s in secrets if isinstance(s, str) and s}
        if not new - self._secrets:
            return
        self._secrets |= new
        forms = set().union(*(_variants(s) for s in self._secrets))
        # Longest first, so a secret containing another is masked whole.
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        self._pattern = re.compile("|".join(re.escape(f) for f in ordered))
        self._bytes = tuple(s.encode() for s in self._secrets)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        exc_info = event_dict.get("exc_info")
        if exc_info:
            self._redact_exc_info(event_dict, exc_info)
        for key, value in event_dict.items():
            if key == "exc_info":
                continue
            if self._is_secret_key(key):
                if _has_value(value):
                    event_dict[key] = MASK
                continue
            if key.startswith("_"):
                # structlog/stdlib plumbing such as ``_record``: leave objects alone, but
                # still mask plain text.
                if isinstance(value, str):
                    event_dict[key] = self.redact_text(value)
                continue
            new = self._value(value, 0)
            if new is not value:
                event_dict[key] = new
        return event_dict

    def redact_text(self, text: str) -> str:
        """``text`` with known secrets and DSN passwords masked; the same object if clean."""
        pattern = self._pattern
        if pattern is not None and pattern.search(text):
            text = pattern.sub(MASK, text)
        if "@" in text or "password" in text:
            text = redact_dsn(text)
        return text

    def _is_secret_key(self, key: str) -> bool:
        hit = self._key_cache.get(key)
        if hit is None:
            hit = is_secret_key(key)
            if len(self._key_cache) < _KEY_CACHE_MAX:
                self._key_cache[key] = hit
        return hit

    def _value(self, value: Any, depth: int) -> Any:
        """The redacted value, or ``value`` itself (same object) when nothing was masked."""
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, str):
            new = self.redact_text(value)
            return value if new == value else new
        if isinstance(value, bytes | bytearray):
            return self._bytes_value(value)
        if depth < _MAX_DEPTH and isinstance(value, Mapping):
            return self._mapping(value, depth)
        if depth < _MAX_DEPTH and isinstance(value, list | tuple | set | frozenset):
            return self._sequence(value, depth)
        return self._object(value)

    def _bytes_value(self, value: bytes | bytearray) -> Any:
        if any(s in value for s in self._bytes) or b"@" in value or b"password" in value:
            text = bytes(value).decode("utf-8", "replace")
            new = self.redact_text(text)
            if new != text:
                return new
        return value

    def _object(self, value: Any) -> Any:
        """Exceptions and other objects are rendered via str()/repr() later: check that text."""
        try:
            text = str(value)
        except Exception:  # noqa: BLE001 - a broken __str__ must not break logging
            return value
        new = self.redact_text(text)
        return value if new == text else new

    def _mapping(self, value: Mapping[Any, Any], depth: int) -> Any:
        changed = False
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and self._is_secret_key(k) and _has_value(v):
                new: Any = MASK
            else:
                new = self._value(v, depth + 1)
            changed = changed or new is not v
            out[k] = new
        return out if changed else value

    def _sequence(self, value: Any, depth: int) -> Any:
        items = [self._value(v, depth + 1) for v in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return type(value)(items) if not isinstance(value, list) else items

    def _redact_exc_info(self, event_dict: EventDict, exc_info: Any) -> None:
        """Render an unformatted ``exc_info``; swap it for redacted text if it leaks."""
        if isinstance(exc_info, BaseException):
            info: Any = (type(exc_info), exc_info, exc_info.__traceback__)
        elif isinstance(exc_info, tuple):
            info = exc_info
        else:  # True: the exception being handled
            info = sys.exc_info()
        if info[0] is None:
            return
        text = "".join(traceback.format_exception(*info)).rstrip("\n")
        new = self.redact_text(text)
        if new != text:
            del event_dict["exc_info"]
            event_dict["exception"] = new


#: The redactor in use (the last one configured), told of every credential value put in
#: force after start-up: a rotated password must be masked like the one the settings held.
_REDACTOR: list[Redactor] = []


def _learn_secret(value: str) -> None:
    for redactor in _REDACTOR:
        redactor.add_secrets([value, dsn_secret(value) or ""])


REGISTRY.on_new_value(_learn_secret)


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(
    *, level: str = "INFO", json: bool | None = None, secrets: Iterable[str] = ()
) -> None:
    """Route structlog and stdlib logging through one redacting renderer."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    redactor = Redactor(secrets)
    _REDACTOR[:] = [redactor]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # The clients log every non-2xx answer (a 404 for a missing alias is normal here);
    # their failures reach us as exceptions, which we classify and log ourselves.
    for noisy in ("elastic_transport", "opensearch", "elasticsearch", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
