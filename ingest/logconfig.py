"""Logging set-up: structlog, JSON lines off a TTY, readable lines on one, secrets redacted.

Called once by each entry point (``ingest``, ``backfill``) before any work. Standard-library
loggers (librdkafka callbacks, luigi, elastic_transport) go through the same processors so
nothing bypasses redaction.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import orjson
import structlog


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(
    *, level: str = "INFO", json: bool | None = None, secrets: Iterable[str] = ()
) -> None:
    """Route structlog and stdlib logging through one redacting renderer."""
    from ingest.redact import Redactor

    as_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        Redactor(secrets),
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
