"""The one error line of a command: secrets masked, and grants to PUBLIC refused."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ingest.cli import main
from ingest.cli._common import config_option, fail_cleanly, load
from ingest.errors import ConfigError, FatalError
from ingest.ledger.migrator import grant_statements

SEARCH_PASSWORD = "s3arch-Pa55"
LEDGER_PASSWORD = "p@ss phrase"


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "ingest.toml"
    path.write_text(
        f"""
schemas_dir = "{Path(__file__).resolve().parents[2] / "schemas"}"
[kafka]
bootstrap_servers = "127.0.0.1:9"
[search]
url = "http://127.0.0.1:9"
username = "elastic"
password = "{SEARCH_PASSWORD}"
[ledger]
dsn = "host=127.0.0.1 port=9 user=ingest password='{LEDGER_PASSWORD}'"
[[streams]]
name = "orders"
topic = "orders"
subject = "orders"
alias = "orders"
"""
    )
    return path


@click.command()
@config_option
@click.option("--kind", type=click.Choice(["config", "runtime"]))
@fail_cleanly
def echoing(config_path: Path | None, kind: str) -> None:
    """A command whose failure quotes what it was given, as drivers and servers do."""
    settings = load(config_path, log_level="WARNING")
    dsn = settings.ledger.dsn.get_secret_value()
    said = f"server said: bad credentials {SEARCH_PASSWORD!r}; tried {dsn}"
    raise (ConfigError if kind == "config" else FatalError)(said)


@pytest.mark.parametrize(("kind", "code"), [("config", 2), ("runtime", 1)])
def test_error_line_masks_known_secrets_and_dsn_passwords(
    tmp_path: Path, kind: str, code: int
) -> None:
    """The printed line keeps the message but neither the search nor the ledger password."""
    result = CliRunner().invoke(echoing, ["--config", str(_config(tmp_path)), "--kind", kind])
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: server said: bad credentials")
    assert SEARCH_PASSWORD not in result.output
    assert "p@ss" not in result.output and "phrase" not in result.output
    assert "password=***" in lines[0]


@pytest.mark.parametrize(
    "role", ["public", "PUBLIC", "Public", '"public"', "'public'", ' "PUBLIC" ', " public "]
)
def test_grant_to_public_is_refused(role: str) -> None:
    """``--role public`` in any case or quoting is refused with one line, nothing printed."""
    result = CliRunner().invoke(main, ["ledger", "grant", "--role", role])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "PUBLIC" in lines[0] and "GRANT" not in lines[0]
    with pytest.raises(ConfigError):
        grant_statements("ingest", role)


@pytest.mark.parametrize("role", ["ingest_worker", "public_reader", '"Publican"'])
def test_grant_to_an_ordinary_role_is_built(role: str) -> None:
    """Roles merely containing the word are ordinary roles."""
    assert grant_statements("ingest", role)
