"""No credential ever reaches output or the ledger (issue 6, part 5).

Every kind of credential gets its own recognisable value, set the ways an operator would:
the search password and the ledger DSN (URL form, password inline) through ``INGEST_*``
variables, the ledger DSN in key=value form through ``INGEST_LEDGER_DSN_FILE``, a Kafka
``sasl.password`` through ``kafka.client_files`` and the schema-registry password inline.
Then the real processes run at DEBUG level — ``ingest produce``, ``ingest run`` (the daemon,
with dead letters), ``backfill kafka``, ``ingest status`` and ``ingest dlq list`` — plus two
failures whose messages name the endpoint (an unreachable search URL with the password in
its user-info, an unreachable ledger), and every line they print and every row of every
ledger table is searched for each secret and its encoded forms.

What is really exercised, and what only sits in the configuration: osmem accepts any
``Authorization`` header, so the search password is sent as basic auth on every request
but not checked; embedded PostgreSQL uses trust auth, so the ledger password is part of
every DSN but never asked for by the server; no SASL listener and no schema registry run
in the stack, so the Kafka and registry passwords are loaded, validated and kept in the
settings (and in the clients' configuration for Kafka) but never sent. The backfill uses
Luigi's in-process scheduler here, so there is no luigid task history to search.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import tomli_w
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ingest.dev.stack import free_port
from ingest.settings import Settings
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    dead_letter_offsets,
    end_offsets,
    settings_document,
    wait_for,
)
from tests.support.secrets import secret_forms

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[2]


def _url_dsn(dsn: str, password: str) -> str:
    params = conninfo_to_dict(dsn)
    return (
        f"postgresql://{params.get('user', 'postgres')}:{password}@{params['host']}:"
        f"{params['port']}/{params.get('dbname', 'postgres')}"
    )


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 120) -> str:
    proc = subprocess.run(
        args,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return f"$ {' '.join(args[1:])} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def _ledger_text(dsn: str, schema: str) -> str:
    """Every row of every table in the ledger schema, as JSON text."""
    chunks = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = %s", (schema,)
            ).fetchall()
        ]
        assert {"runs", "dead_letters", "backfill_chunks", "partition_offsets"} <= set(tables)
        for table in tables:
            query = sql.SQL("SELECT row_to_json(t)::text FROM {} AS t").format(
                sql.Identifier(schema, table)
            )
            chunks += [row[0] for row in conn.execute(query).fetchall()]
    return "\n".join(chunks)


def test_no_secret_in_any_output_or_the_ledger(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str, ledger_dsn: str
) -> None:
    secrets = {
        "search": f"S3arch:pw/{unique}",
        "ledger_url": f"Ledg3rUrl{unique}",
        "ledger_kv": f"Ledg3rKv{unique}",
        "kafka": f"Kafk4{unique}",
        "registry": f"Reg1stry{unique}",
    }
    settings = make_settings(partitions=2, runtime={"heartbeat_s": 1, "summary_every_s": 1})
    schema = settings.ledger.schema_name

    kafka_secret_file = tmp_path / "kafka-sasl-password"
    kafka_secret_file.write_text(secrets["kafka"] + "\n")
    kv_dsn_file = tmp_path / "ledger-dsn"
    kv_dsn_file.write_text(make_conninfo(ledger_dsn, password=secrets["ledger_kv"]))

    data: dict[str, Any] = settings_document(settings)
    del data["ledger"]["dsn"]  # from the environment only
    data["search"]["username"] = "elastic"
    data["kafka"]["client"] = {"sasl.username": "ingest"}
    data["kafka"]["client_files"] = {"sasl.password": str(kafka_secret_file)}
    data["schema_registry"] = {"username": "ingest", "password": secrets["registry"]}
    config = tmp_path / "ingest.toml"
    config.write_text(tomli_w.dumps(data))

    base_env = {
        "PATH": str(BIN),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO_ROOT),
        "INGEST_SEARCH_PASSWORD": secrets["search"],
    }
    url_env = {**base_env, "INGEST_LEDGER_DSN": _url_dsn(ledger_dsn, secrets["ledger_url"])}
    kv_env = {**base_env, "INGEST_LEDGER_DSN_FILE": str(kv_dsn_file)}
    outputs: list[str] = []

    # Upstream producer CLI, with 10% bad records so the daemon dead-letters some.
    outputs.append(
        _run(
            [str(BIN / "ingest"), "produce", "--config", str(config), "--stream", "orders",
             "--count", "80", "--invalid-ratio", "0.1", "--seed", "5"],
            url_env,
            tmp_path,
        )
    )  # fmt: skip
    assert "sent=80 failed=0" in outputs[-1], outputs[-1]
    ledger_settings = make_settings(partitions=None)  # owner DSN, same schema: for checks
    ends = end_offsets(ledger_settings)

    daemon = DaemonProcess(
        config, tmp_path / "daemon.log", extra_args=("--log-level", "DEBUG"), env=url_env
    )
    try:
        wait_for(caught_up(ledger_settings, ends), 90, "the daemon to catch up")
    finally:
        code = daemon.stop()
    outputs.append(daemon.output())
    assert code == 0, daemon.output()
    assert dead_letter_offsets(ledger_settings), "expected some dead letters"

    now = dt.datetime.now(dt.UTC)
    outputs.append(
        _run(
            [str(BIN / "backfill"), "kafka", "--config", str(config), "--stream", "orders",
             "--since", (now - dt.timedelta(hours=1)).isoformat(),
             "--until", (now + dt.timedelta(minutes=5)).isoformat(),
             "--chunk", "2h", "--progress", "lines", "--log-level", "DEBUG"],
            kv_env,
            tmp_path,
            timeout_s=180,
        )
    )  # fmt: skip
    assert "-> 0\n" in outputs[-1], outputs[-1]

    outputs.append(_run([str(BIN / "ingest"), "status", "--config", str(config)], kv_env, tmp_path))
    outputs.append(
        _run([str(BIN / "ingest"), "dlq", "list", "--config", str(config)], url_env, tmp_path)
    )

    # Failures whose messages name the endpoint they could not reach.
    closed = free_port()
    userinfo = f"elastic:{quote(secrets['search'], safe='')}"
    bad_search = {**url_env, "INGEST_SEARCH_URL": f"http://{userinfo}@127.0.0.1:{closed}"}
    outputs.append(
        _run([str(BIN / "ingest"), "run", "--config", str(config)], bad_search, tmp_path, 60)
    )
    assert "-> 2\n" in outputs[-1] and "error:" in outputs[-1], outputs[-1]
    bad_ledger = {
        **base_env,
        "INGEST_LEDGER_DSN": f"postgresql://postgres:{secrets['ledger_url']}@127.0.0.1:{closed}/x",
    }
    outputs.append(
        _run([str(BIN / "ingest"), "status", "--config", str(config)], bad_ledger, tmp_path, 60)
    )
    assert "-> 2\n" in outputs[-1] and "error:" in outputs[-1], outputs[-1]

    everything = "\n".join(outputs)
    stored = _ledger_text(ledger_dsn, schema)
    assert '"kind":"stream"' in stored and '"family":' in stored  # daemon run, backfill chunks
    for name, secret in secrets.items():
        for form in secret_forms(secret):
            assert form not in everything, f"{name} secret ({form!r}) in process output"
            assert form not in stored, f"{name} secret ({form!r}) in the ledger"
    # The redaction must not have hidden everything either: the logs are still useful.
    assert "ledger_connected" in everything and "stream_started" in everything
    events = [json.loads(line) for line in daemon.output().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "stream_progress" for e in events)
