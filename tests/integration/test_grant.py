"""Least privilege: the daemon runs under a role given only ``ingest ledger grant``'s rights.

The owner (the stack's superuser) applies the migrations and the grants; a fresh LOGIN role
(embedded PostgreSQL uses trust auth, so no password is needed) then runs the real daemon
end to end, dead letters included, and is refused every DDL statement in the schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ingest.cli import main
from ingest.dev.demo import run_produce
from ingest.ledger import PostgresLedger
from ingest.settings import Settings
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    dead_letter_offsets,
    end_offsets,
    index_versions,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def worker_role(ledger_dsn: str, unique: str) -> Iterator[str]:
    """A LOGIN role with no rights of its own; dropped (with its grants) afterwards."""
    role = f"{unique}_worker"
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with psycopg.connect(ledger_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _as_role(dsn: str, role: str) -> str:
    return make_conninfo(dsn, user=role)


def test_grant_prints_without_applying(
    make_settings: Callable[..., Settings], tmp_path: Path, worker_role: str
) -> None:
    settings = make_settings(partitions=None)
    config = write_config(settings, tmp_path / "c.toml")
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
    result = CliRunner().invoke(
        main, ["ledger", "grant", "--config", str(config), "--role", worker_role]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    schema = settings.ledger.schema_name
    assert f'GRANT USAGE ON SCHEMA "{schema}" TO "{worker_role}";' in lines
    assert f'GRANT DELETE ON TABLE "{schema}"."dead_letters" TO "{worker_role}";' in lines
    assert not any("CREATE" in line or "ALL PRIVILEGES" in line for line in lines)
    # Printing changes nothing: the role still cannot read the schema.
    with (
        psycopg.connect(_as_role(settings.ledger.dsn.get_secret_value(), worker_role)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(sql.SQL("SELECT 1 FROM {}").format(sql.Identifier(schema, "runs")))


def test_grant_to_missing_role_is_one_line(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    config = write_config(make_settings(partitions=None), tmp_path / "c.toml")
    result = CliRunner().invoke(
        main, ["ledger", "grant", "--config", str(config), "--role", f"{unique}_nobody", "--apply"]
    )
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "create it first" in errors[0]


def test_daemon_runs_under_the_granted_role(
    make_settings: Callable[..., Settings], tmp_path: Path, worker_role: str
) -> None:
    owner = make_settings(partitions=2)
    schema = owner.ledger.schema_name
    owner_config = write_config(owner, tmp_path / "owner.toml")
    applied = CliRunner().invoke(
        main, ["ledger", "grant", "--config", str(owner_config), "--role", worker_role, "--apply"]
    )
    assert applied.exit_code == 0, applied.output
    assert "-- applied" in applied.stdout

    worker_dsn = _as_role(owner.ledger.dsn.get_secret_value(), worker_role)
    assert conninfo_to_dict(worker_dsn)["user"] == worker_role
    worker = make_settings(partitions=None, ledger={"dsn": worker_dsn})
    summary = run_produce(worker, "orders", 120, seed=11, invalid_ratio=0.05)
    ends = end_offsets(worker)

    daemon = DaemonProcess(write_config(worker, tmp_path / "worker.toml"), tmp_path / "d.log")
    try:
        wait_for(caught_up(worker, ends), 90, "the worker role's daemon to catch up")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output()
    assert index_versions(worker) == summary.expected
    assert len(dead_letter_offsets(worker)) == summary.invalid > 0

    # The worker role's writes really went through as that role.
    with PostgresLedger(worker_dsn, schema) as ledger:
        run = ledger.runs("stream", stream="orders")[0]
        assert run.status == "stopped" and run.counters["consumed"] == summary.sent
        assert ledger.purge_dead_letters(before=run.started_at) == 0  # DELETE is allowed

    forbidden = [
        sql.SQL("CREATE TABLE {} (i integer)").format(sql.Identifier(schema, "evil")),
        sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "runs")),
        sql.SQL("ALTER TABLE {} ADD COLUMN x integer").format(sql.Identifier(schema, "runs")),
        sql.SQL("TRUNCATE {}").format(sql.Identifier(schema, "partition_offsets")),
        sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, "runs")),
        sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(f"{schema}_evil")),
        sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)),
    ]
    with psycopg.connect(worker_dsn, autocommit=True) as conn:
        for statement in forbidden:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
