"""Credentials rotate under a running ``ingest run`` without a restart, and every load is audited.

Search: the daemon reaches osmem through :class:`~tests.support.auth_proxy.AuthProxy`, which
admits only the credential the test says is in force (basic, API key, bearer). Mid-run the
test writes a new value into the credential file, then makes the proxy refuse the old one.
The daemon checks its files only once an hour here (``credential_check_s``), so the new value
can only come from the re-read that a 401 triggers: the refused bulk request is resent with it.

PostgreSQL: a private embedded server requires ``scram-sha-256`` from the daemon's role.
Mid-run the test changes the role's password (``ALTER ROLE``), cuts the daemon's
connections, and only then writes the new DSN file: the ledger commits fail (and are
retried) until the file holds the new password, then the daemon goes on.

Both runs must end with every record in the index once at its newest version and the ledger
at the end offsets; the ledger's ``credential_loads`` rows name each load with a fingerprint
that is not the secret, and no secret appears in the daemon's output or any ledger table.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import tomli_w
from psycopg import sql
from pydantic import SecretStr

from ingest.credentials import fingerprint
from ingest.dev.demo import run_produce
from ingest.ledger import PostgresLedger
from ingest.settings import SearchSettings, Settings
from tests.support.auth_proxy import AuthProxy, api_key, basic, bearer
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    end_offsets,
    index_versions,
    ledger_offsets,
    settings_document,
    wait_for,
)
from tests.support.secrets import rotate_file, secret_forms

pytestmark = pytest.mark.integration


def _secret(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex}"


def _ledger_text(dsn: str, schema: str) -> str:
    """Every row of every table of the ledger schema, as JSON text."""
    out: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
        ]
        for table in tables:
            query = sql.SQL("SELECT row_to_json(t)::text FROM {} t").format(
                sql.Identifier(schema, table)
            )
            out.extend(r[0] for r in conn.execute(query))
    return "\n".join(out)


def _config(settings: Settings, path: Path, *, drop: dict[str, list[str]]) -> Path:
    """The daemon's TOML: the secrets only as ``<key>_file`` (inline values dropped)."""
    doc = settings_document(settings)
    for section, keys in drop.items():
        for key in keys:
            doc[section].pop(key, None)
    path.write_text(tomli_w.dumps(doc))
    return path


def _assert_no_secret(secrets: list[str], *texts: str) -> None:
    for secret in secrets:
        for form in secret_forms(secret):
            for text in texts:
                assert form not in text, "a secret leaked"


SCHEMES = {
    # scheme: (settings field, header for a value)
    "basic": ("password", lambda v: basic("ingest", v)),
    "api_key": ("api_key", api_key),
    "bearer": ("bearer_token", bearer),
}


@pytest.mark.parametrize(
    ("scheme", "kind"),
    [
        pytest.param("basic", "opensearch", id="basic-opensearch"),
        pytest.param("api_key", "elasticsearch", id="api_key-elasticsearch"),
        pytest.param("bearer", "opensearch", id="bearer-opensearch"),
    ],
)
def test_search_credential_rotates_under_a_running_daemon(
    make_settings: Callable[..., Settings],
    search_url: str,
    ledger_dsn: str,
    tmp_path: Path,
    scheme: str,
    kind: str,
) -> None:
    """A 401 after the rotation re-reads the file and resends the batch with the new value:
    exact index and ledger, two audited loads, no secret anywhere."""
    field, header = SCHEMES[scheme]
    old, new = _secret("old"), _secret("new")
    secret_file = tmp_path / "search-secret"
    secret_file.write_text(old + "\n")
    with AuthProxy(search_url, accept=header(old)) as proxy:
        search: dict[str, Any] = {
            "url": proxy.url,
            "kind": kind,
            field: old,
            f"{field}_file": secret_file,
        }
        if scheme == "basic":
            search["username"] = "ingest"
        settings = make_settings(
            partitions=2, search=search, runtime={"credential_check_s": 3600, "max_retry_s": 60}
        )
        direct = settings.model_copy(update={"search": SearchSettings(url=search_url)})
        config = _config(settings, tmp_path / "c.toml", drop={"search": [field]})
        first = run_produce(settings, "orders", 200, seed=1)
        daemon = DaemonProcess(config, tmp_path / "d.log")
        try:
            wait_for(caught_up(settings, end_offsets(settings)), 120, "catch-up before rotation")
            rotate_file(secret_file, new)
            proxy.accept_only(header(new))
            second = run_produce(settings, "orders", 200, seed=2)
            ends = end_offsets(settings)
            wait_for(caught_up(settings, ends), 120, "catch-up after rotation")
        finally:
            code = daemon.stop()
        output = daemon.output()
        assert code == 0, output
        assert proxy.refused[header(old)] >= 1, "the old credential was never refused"
        assert proxy.admitted[header(new)] >= 1
        assert not proxy.refused.get(header(new))

    assert '"search_credentials_replaced"' in output
    assert index_versions(direct) == {**first.expected, **second.expected}
    assert ledger_offsets(settings) == {p: e for p, e in ends.items() if e > 0}
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        loads = ledger.credential_loads(f"search.{field}")
    assert [(x.reason, x.fingerprint, x.source) for x in loads] == [
        ("start", fingerprint(old), str(secret_file)),
        ("refused", fingerprint(new), str(secret_file)),
    ]
    _assert_no_secret(
        [old, new, header(old), header(new)],
        output,
        _ledger_text(ledger_dsn, settings.ledger.schema_name),
    )


def test_ledger_password_rotates_under_a_running_daemon(
    make_settings: Callable[..., Settings],
    private_server: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """ALTER ROLE mid-run, connections cut, DSN file rewritten late: the ledger commits wait
    (retried) and then go on with the new password; exact end state, audited, no secret."""
    pg = private_server("postgres")
    admin_dsn = pg.endpoint
    port = psycopg.conninfo.conninfo_to_dict(admin_dsn)["port"]
    role, old, new = "ingest_rotating", _secret("old"), _secret("new")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(old)
            )
        )
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE postgres TO {}").format(sql.Identifier(role))
        )
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
        # the embedded server trusts everyone; this role must prove its password
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")

    def role_dsn(password: str) -> str:
        return f"postgresql://{role}:{password}@127.0.0.1:{port}/postgres"

    with pytest.raises(psycopg.OperationalError):  # password authentication really is on
        psycopg.connect(role_dsn("wrong")).close()
    dsn_file = tmp_path / "ledger-dsn"
    dsn_file.write_text(role_dsn(old) + "\n")
    settings = make_settings(
        partitions=2,
        ledger={"dsn": role_dsn(old), "dsn_file": dsn_file},
        runtime={"credential_check_s": 3600, "max_retry_s": 120, "heartbeat_s": 1},
    )
    # the test reads the ledger as the (trusted) superuser
    watch = settings.model_copy(
        update={
            "ledger": settings.ledger.model_copy(
                update={"dsn": SecretStr(admin_dsn), "dsn_file": None}
            )
        }
    )
    config = _config(settings, tmp_path / "c.toml", drop={"ledger": ["dsn"]})
    first = run_produce(settings, "orders", 200, seed=3)
    daemon = DaemonProcess(config, tmp_path / "d.log")
    try:
        wait_for(caught_up(watch, end_offsets(settings)), 120, "catch-up before rotation")
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(new))
            )
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
        second = run_produce(settings, "orders", 200, seed=4)
        ends = end_offsets(settings)
        # the daemon must now fail to reach its ledger with the old password ...
        wait_for(
            lambda: "ledger_unavailable" in daemon.output() or "retrying" in daemon.output(),
            60,
            "the daemon to notice the refused password",
        )
        assert ledger_offsets(watch) != {p: e for p, e in ends.items() if e > 0}
        time.sleep(1)
        rotate_file(dsn_file, role_dsn(new))  # ... until the agent writes the new DSN
        wait_for(caught_up(watch, ends), 120, "catch-up after rotation")
        time.sleep(3)  # the supervisor writes queued credential loads every 2 s
    finally:
        code = daemon.stop()
    output = daemon.output()
    assert code == 0, output

    assert '"ledger_credentials_replaced"' in output
    assert index_versions(settings) == {**first.expected, **second.expected}
    assert ledger_offsets(watch) == {p: e for p, e in ends.items() if e > 0}
    with PostgresLedger.from_settings(watch.ledger) as ledger:
        loads = ledger.credential_loads("ledger.dsn")
    assert [(x.reason, x.fingerprint) for x in loads] == [
        ("start", fingerprint(role_dsn(old))),
        ("refused", fingerprint(role_dsn(new))),
    ]
    _assert_no_secret([old, new], output, _ledger_text(admin_dsn, settings.ledger.schema_name))
