"""A real central scheduler: luigid recording task history in the real PostgreSQL.

Luigi's task history has broken on some databases and SQLAlchemy versions
(docs/design.md#luigi-task-history), so this runs the venv's luigid (its SQLAlchemy, the
psycopg 3 dialect) against the embedded PostgreSQL, drives it with a ``backfill`` using two
worker processes, and reads Luigi's tables back. It also checks that no secret reaches them:
credentials are given to the backfill only through the environment, and parameters never
carry them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from backfill.history import luigi_cfg_value, sqlalchemy_url
from backfill.kafka_range import format_instant
from ingest.settings import Settings
from tests.integration.backfill_support import (
    BACKFILL,
    BASE_MS,
    HOUR_MS,
    REPO_ROOT,
    chunk_rows,
    produce,
    run_backfill,
    spread,
)
from tests.support.daemon import index_versions

pytestmark = pytest.mark.integration


def _luigid_binary() -> str:
    import sys

    return str(Path(sys.executable).with_name("luigid"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"luigid exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"luigid not listening on {port}:\n{log.read_text()[-3000:]}")


@pytest.fixture
def history_db(ledger_dsn: str, unique: str) -> Iterator[str]:
    """A fresh database for luigid's tables on the session's PostgreSQL; its libpq DSN."""
    name = f"luigi_{unique}"
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    params = psycopg.conninfo.conninfo_to_dict(ledger_dsn)
    params["dbname"] = name
    yield psycopg.conninfo.make_conninfo(**params)
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(name)
            )
        )


def _history_line(ledger_dsn: str, database: str, tmp_path: Path) -> str:
    """``backfill history-url``: the luigi.cfg line for the ledger's server, another database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update(PYTHONPATH=str(REPO_ROOT), INGEST_LEDGER_DSN=ledger_dsn)
    proc = subprocess.run(
        [*BACKFILL, "history-url", "--database", database],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def luigid(history_db: str, ledger_dsn: str, tmp_path: Path) -> Iterator[str]:
    """A running luigid recording task history in ``history_db``; its URL."""
    port = _free_port()
    line = _history_line(
        ledger_dsn, psycopg.conninfo.conninfo_to_dict(history_db)["dbname"], tmp_path
    )
    assert line == f"db_connection = {luigi_cfg_value(sqlalchemy_url(history_db))}"
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(
        "[scheduler]\n"
        "record_task_history = true\n"
        f"state_path = {tmp_path / 'luigid-state.pickle'}\n"
        "retry_delay = 1\n"
        "[task_history]\n"
        f"{line}\n"
    )
    log = tmp_path / "luigid.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env["LUIGI_CONFIG_PATH"] = str(cfg)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [_luigid_binary(), "--address", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        _wait_listening(port, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _history(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {
            "tasks": conn.execute("SELECT id, task_id, name, host FROM tasks").fetchall(),
            "events": conn.execute("SELECT task_id, event_name FROM task_events").fetchall(),
            "params": conn.execute("SELECT task_id, name, value FROM task_parameters").fetchall(),
        }


def test_luigid_with_two_workers_records_history_in_postgres_without_secrets(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    luigid: str,
    history_db: str,
    ledger_dsn: str,
) -> None:
    """Every chunk's history rows land in PostgreSQL; none holds the search password or the
    ledger DSN password."""
    search_password = "s3cret-search-pw-4711"
    ledger_password = "s3cret-ledger-pw-0815"
    assert ledger_dsn.startswith("postgresql://postgres@")
    dsn_with_password = ledger_dsn.replace(
        "postgresql://postgres@", f"postgresql://postgres:{ledger_password}@", 1
    )
    settings = make_settings(partitions=2)
    produce(settings, spread(61, 120, 2, BASE_MS, 50_000))  # ~1h40m
    code, out = run_backfill(
        "kafka",
        "--stream", "orders",
        "--since", format_instant(BASE_MS),
        "--until", format_instant(BASE_MS + 2 * HOUR_MS),
        "--chunk", "1h",
        "--workers", "2",
        "--scheduler-url", luigid,
        settings=settings,
        workdir=tmp_path,
        env={
            "INGEST_SEARCH_USERNAME": "ingest",
            "INGEST_SEARCH_PASSWORD": search_password,
            "INGEST_LEDGER_DSN": dsn_with_password,
        },
    )  # fmt: skip
    assert code == 0, out[-4000:]
    assert len(index_versions(settings)) == 120
    rows = chunk_rows(settings)
    assert len(rows) == 4 and {r.status for r in rows} == {"done"}

    history = _history(history_db)
    chunk_tasks = [t for t in history["tasks"] if t[2] == "KafkaTimeChunk"]
    assert sorted(t[1] for t in chunk_tasks) == sorted(r.task_id for r in rows)
    record_ids = {t[0] for t in chunk_tasks}
    done = [e for e in history["events"] if e[0] in record_ids and e[1] == "DONE"]
    running = [e for e in history["events"] if e[0] in record_ids and e[1] == "RUNNING"]
    assert len(done) == 4 and len(running) == 4
    names = {p[1] for p in history["params"] if p[0] in record_ids}
    assert {"stream", "partition", "since", "until", "index"} <= names

    dump = repr(history) + repr([(r.params, r.locked_by, r.error) for r in rows])
    for secret in (search_password, ledger_password):
        assert secret not in dump
        assert secret not in out  # nor in the backfill's logs
