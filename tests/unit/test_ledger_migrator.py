"""Migration discovery, lock keys and worker grants, without a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.errors import ConfigError
from ingest.ledger import PostgresLedger
from ingest.ledger.migrator import (
    PURGEABLE_TABLES,
    WORKER_TABLES,
    chunk_lock_key,
    grant_statements,
    load_migrations,
    lock_key,
)


def test_packaged_migrations_are_numbered_from_one_without_gaps() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "initial"
    assert all(len(m.checksum) == 64 for m in migrations)


def test_packaged_migrations_use_no_schema_qualified_names() -> None:
    """The schema is configurable: migrations rely on search_path, never name a schema."""
    for m in load_migrations():
        lines = m.sql.decode().lower().splitlines()
        text = "\n".join(line.split("--", 1)[0] for line in lines)
        assert "ingest." not in text
        assert "search_path" not in text
        assert "create schema" not in text


def test_load_migrations_sorts_and_ignores_other_files(tmp_path: Path) -> None:
    (tmp_path / "002_more.sql").write_text("SELECT 2;")
    (tmp_path / "001_first.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    (tmp_path / "3_short.sql").write_text("SELECT 3;")
    found = load_migrations(tmp_path)
    assert [(m.version, m.name, m.sql) for m in found] == [
        (1, "first", b"SELECT 1;"),
        (2, "more", b"SELECT 2;"),
    ]


def test_duplicate_versions_are_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigError, match=r"001_a\.sql and 001_b\.sql|001_b\.sql and 001_a\.sql"):
        load_migrations(tmp_path)


def test_version_zero_is_refused(tmp_path: Path) -> None:
    (tmp_path / "000_a.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigError, match="start at 001"):
        load_migrations(tmp_path)


def test_lock_keys_are_stable_signed_64_bit_and_distinct() -> None:
    assert lock_key("ingest") == lock_key("ingest")
    keys = {
        lock_key("ingest"),
        lock_key("other"),
        chunk_lock_key("ingest", "t1"),
        chunk_lock_key("ingest", "t2"),
        chunk_lock_key("other", "t1"),
    }
    assert len(keys) == 5
    assert all(-(2**63) <= k < 2**63 for k in keys)


def test_grants_cover_worker_tables_and_nothing_else() -> None:
    stmts = [s.as_string() for s in grant_statements("ingest", "worker")]
    assert stmts[0] == 'GRANT USAGE ON SCHEMA "ingest" TO "worker"'
    for table in WORKER_TABLES:
        assert f'GRANT SELECT, INSERT, UPDATE ON TABLE "ingest"."{table}" TO "worker"' in stmts
    deletes = [s for s in stmts if "DELETE" in s]
    assert deletes == [
        f'GRANT DELETE ON TABLE "ingest"."{t}" TO "worker"' for t in PURGEABLE_TABLES
    ]
    assert 'GRANT SELECT ON TABLE "ingest"."schema_migrations" TO "worker"' in stmts
    joined = " ".join(stmts).upper()
    for word in ("CREATE", "ALL PRIVILEGES", "TRUNCATE", "DROP", "ALTER", "REFERENCES", "TRIGGER"):
        assert word not in joined


def test_grant_identifiers_are_quoted() -> None:
    stmts = [s.as_string() for s in grant_statements("ingest", 'evil"; DROP TABLE x; --')]
    assert stmts[0] == 'GRANT USAGE ON SCHEMA "ingest" TO "evil""; DROP TABLE x; --"'


@pytest.mark.parametrize("schema", ["Ingest", "1abc", "a-b", "x" * 64, ""])
def test_bad_schema_name_fails_before_connecting(schema: str) -> None:
    with pytest.raises(ConfigError, match="schema name"):
        PostgresLedger("postgresql://u:pw@127.0.0.1:1/db", schema)


def test_malformed_dsn_is_a_config_error_without_password() -> None:
    with pytest.raises(ConfigError, match="invalid ledger DSN") as info:
        PostgresLedger("host=h password=s3cret bogus_option=1")
    assert "s3cret" not in str(info.value)
