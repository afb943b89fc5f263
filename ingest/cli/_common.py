"""What every command shares: one-line errors with exit codes, ``--config``, settings loading.

Command modules import this module, never :mod:`ingest.cli` itself, so the package has no
import cycle and each command module imports on its own.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ingest.errors import ConfigError, IngestError

if TYPE_CHECKING:
    from ingest.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_RUNTIME = 1
EXIT_CONFIG = 2


#: The secret values of the settings this command loaded (:func:`load`), masked in its error
#: line as the log redactor masks them in log lines.
_loaded_secrets: list[str] = []


def error_line(exc: BaseException) -> str:
    """``exc`` as the one line a command prints: known secrets and DSN passwords masked.

    Errors quote what they were given (a URL, a server's answer, a driver's message), and
    this line goes to a terminal or a CI log, where a secret must not appear any more than
    in the structured logs.
    """
    from ingest.logging import Redactor

    return Redactor(_loaded_secrets).redact_text(f"error: {exc}")


def fail_cleanly(func: F) -> F:
    """Turn IngestErrors into one redacted line on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(error_line(exc), err=True)
            sys.exit(EXIT_CONFIG)
        except IngestError as exc:
            click.echo(error_line(exc), err=True)
            sys.exit(EXIT_RUNTIME)

    return wrapper  # type: ignore[return-value]


def config_option(func: F) -> F:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="TOML settings file (default: ./ingest.toml, or $INGEST_CONFIG).",
    )(func)


def load(config_path: Path | None, *, log_level: str = "INFO") -> Settings:
    """Settings plus logging configured with the secrets they hold."""
    from ingest.logging import configure_logging
    from ingest.settings import load_settings

    settings = load_settings(config_path)
    secrets = settings.secrets()
    _loaded_secrets[:] = secrets
    configure_logging(level=log_level, secrets=secrets)
    return settings
