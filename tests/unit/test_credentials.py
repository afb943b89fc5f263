"""File-backed credentials: re-read on change and on refusal, every new value audited, none leaked.

No sleeps: the check interval runs on a fake clock.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

import pytest
from psycopg import OperationalError
from structlog.testing import capture_logs

from ingest.credentials import (
    FINGERPRINT_KEY,
    CredentialError,
    CredentialRegistry,
    FileSecret,
    fingerprint,
)
from ingest.errors import ConfigError
from ingest.ledger.base import LedgerBase
from ingest.search.auth import SearchAuth
from ingest.search.client import SearchAuthError, SearchClient
from ingest.settings import SearchSettings, load_settings
from tests.support.secrets import rotate_file


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _secret(path: Path, clock: Clock, registry: CredentialRegistry) -> FileSecret:
    return FileSecret("search.password", path, check_every_s=1.0, registry=registry, clock=clock)


def test_first_load_is_audited_without_the_value(tmp_path: Path) -> None:
    """The first read is a load event: logged and queued with name, file, mtime, fingerprint."""
    path = tmp_path / "pw"
    path.write_text("s3cret-one\n")
    registry = CredentialRegistry()
    told: list[str] = []
    registry.on_new_value(told.append)
    with capture_logs() as logs:
        assert _secret(path, Clock(), registry).current() == "s3cret-one"
    (load,) = registry.take_pending_loads()
    assert (load.name, load.source, load.reason) == ("search.password", str(path), "start")
    assert load.fingerprint == fingerprint("s3cret-one")
    assert load.file_mtime.timestamp() == pytest.approx(path.stat().st_mtime)
    assert told == ["s3cret-one"]
    (event,) = [e for e in logs if e["event"] == "credential_loaded"]
    assert event["fingerprint"] == load.fingerprint
    assert "s3cret-one" not in repr(logs)
    assert registry.take_pending_loads() == []


def test_a_changed_file_is_seen_at_the_next_check(tmp_path: Path) -> None:
    """Within the check interval the value in force is served without a stat; after it, the
    changed file is read and audited as ``changed``."""
    path = tmp_path / "pw"
    path.write_text("old")
    clock, registry = Clock(), CredentialRegistry()
    secret = _secret(path, clock, registry)
    assert secret.current() == "old"
    rotate_file(path, "new")
    clock.now += 0.5
    assert secret.current() == "old"
    clock.now += 0.6
    assert secret.current() == "new"
    assert [x.reason for x in registry.take_pending_loads()] == ["start", "changed"]


def test_a_replaced_file_with_the_same_size_and_mtime_is_seen(tmp_path: Path) -> None:
    """A new inode counts as a change even when size and mtime are equal."""
    path = tmp_path / "pw"
    path.write_text("aaaa\n")
    clock, registry = Clock(), CredentialRegistry()
    secret = _secret(path, clock, registry)
    secret.current()
    mtime = path.stat().st_mtime_ns
    rotate_file(path, "bbbb")
    assert path.stat().st_size == 5
    os.utime(path, ns=(mtime, mtime))
    clock.now += 2
    assert secret.current() == "bbbb"


def test_reload_after_a_refusal(tmp_path: Path) -> None:
    """A refusal re-reads at once: True (and a ``refused`` load) only when the value changed."""
    path = tmp_path / "pw"
    path.write_text("one")
    clock, registry = Clock(), CredentialRegistry()
    secret = _secret(path, clock, registry)
    secret.current()
    assert secret.reload() is False
    rotate_file(path, "two")
    assert secret.reload() is True
    assert secret.current() == "two"
    assert [x.reason for x in registry.take_pending_loads()] == ["start", "refused"]


@pytest.mark.parametrize("broken", ["missing", "empty"])
def test_a_file_unusable_mid_rotation_keeps_the_value_in_force(tmp_path: Path, broken: str) -> None:
    """An agent between deleting and writing the file must not blank the credential."""
    path = tmp_path / "pw"
    path.write_text("kept")
    clock, registry = Clock(), CredentialRegistry()
    secret = _secret(path, clock, registry)
    secret.current()
    if broken == "missing":
        path.unlink()
    else:
        path.write_text("\n")
    clock.now += 2
    assert secret.current() == "kept"
    assert secret.reload() is False
    assert len(registry.take_pending_loads()) == 1


def test_an_unreadable_file_at_the_first_load_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"cannot read search\.password file"):
        _secret(tmp_path / "absent", Clock(), CredentialRegistry()).current()


def test_fingerprint_is_a_keyed_hmac_prefix() -> None:
    """12 hex digits of HMAC-SHA256 under the constant key; not the plain SHA-256."""
    value = "hunter2"
    got = fingerprint(value)
    assert got == hmac.new(FINGERPRINT_KEY, value.encode(), hashlib.sha256).hexdigest()[:12]
    assert got != hashlib.sha256(value.encode()).hexdigest()[:12]
    assert len(got) == 12 and int(got, 16) >= 0
    assert fingerprint("hunter3") != got


def test_loads_put_back_stay_ahead_of_newer_ones(tmp_path: Path) -> None:
    """Loads the ledger could not take are written first next time."""
    registry = CredentialRegistry()
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("1")
    b.write_text("2")
    FileSecret("a", a, registry=registry).current()
    first = registry.take_pending_loads()
    FileSecret("b", b, registry=registry).current()
    registry.put_back(first)
    assert [x.name for x in registry.take_pending_loads()] == ["a", "b"]


# -- settings ------------------------------------------------------------------------------


def test_settings_keep_the_file_of_a_rotating_secret(tmp_path: Path) -> None:
    """``<key>_file`` and ``INGEST_*_FILE`` keep the path; an inline env value drops it."""
    pw, dsn = tmp_path / "pw", tmp_path / "dsn"
    pw.write_text("p")
    dsn.write_text("postgresql://u:x@127.0.0.1/db")
    config = tmp_path / "ingest.toml"
    config.write_text(f'[search]\nusername = "u"\npassword_file = "{pw}"\n')
    settings = load_settings(config, env={"INGEST_LEDGER_DSN_FILE": str(dsn)})
    assert settings.search.password_file == pw
    assert settings.search.password is not None
    assert settings.search.password.get_secret_value() == "p"
    assert settings.ledger.dsn_file == dsn
    inline = load_settings(config, env={"INGEST_SEARCH_PASSWORD": "inline"})
    assert inline.search.password_file is None


# -- search --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"username": "u", "password": "p"}, "Basic dTpw", id="basic"),
        pytest.param({"api_key": "k"}, "ApiKey k", id="api-key"),
        pytest.param({"bearer_token": "t", "api_key": "k"}, "Bearer t", id="bearer-first"),
        pytest.param({}, None, id="none"),
    ],
)
def test_search_auth_header(fields: dict[str, Any], expected: str | None) -> None:
    assert SearchAuth(SearchSettings(**fields)).header() == expected


class _Backend:
    """Answers 401 to every credential but ``accept``; records the headers it was sent."""

    def __init__(self, auth: SearchAuth, accept: str) -> None:
        self.auth = auth
        self.accept = accept
        self.sent: list[str | None] = []

    def request(self, method: str, path: str, **_: Any) -> Any:
        header = self.auth.header()
        self.sent.append(header)
        if header != self.accept:
            raise SearchAuthError(method, path, status=401, error_type="security", reason="no")
        return {"ok": True}

    def close(self) -> None:
        pass


def test_search_request_refused_is_resent_with_a_rotated_token(tmp_path: Path) -> None:
    """A 401 re-reads the token file; the request is resent once with the new token."""
    token = tmp_path / "token"
    token.write_text("old")
    auth = SearchAuth(
        SearchSettings(bearer_token="old", bearer_token_file=token), check_every_s=3600
    )
    backend = _Backend(auth, accept="Bearer new")
    client = SearchClient("opensearch", backend, "http://x", auth=auth)
    auth.header()
    rotate_file(token, "new")
    with capture_logs() as logs:
        assert client.request("GET", "/") == {"ok": True}
    assert backend.sent == ["Bearer old", "Bearer new"]
    assert any(e["event"] == "search_credentials_replaced" for e in logs)


def test_search_request_refused_with_an_unchanged_credential_fails(tmp_path: Path) -> None:
    """Nothing new in the file: the same non-retryable SearchAuthError as without rotation."""
    token = tmp_path / "token"
    token.write_text("old")
    auth = SearchAuth(SearchSettings(bearer_token_file=token), check_every_s=3600)
    backend = _Backend(auth, accept="Bearer other")
    client = SearchClient("opensearch", backend, "http://x", auth=auth)
    with pytest.raises(SearchAuthError):
        client.request("GET", "/")
    assert backend.sent == ["Bearer old"]


# -- ledger --------------------------------------------------------------------------------


def _bare_ledger(dsn_file: Path) -> LedgerBase:
    """A LedgerBase with only what ``_open`` needs, without a server."""
    from ingest.credentials import FileSecret

    ledger = LedgerBase.__new__(LedgerBase)
    ledger._dsn_source = FileSecret(
        "ledger.dsn", dsn_file, check_every_s=3600, registry=CredentialRegistry()
    )
    ledger._secrets = set()
    ledger._where = "host=h port=1 dbname=d"
    return ledger


def test_ledger_connect_refused_retries_with_a_rotated_dsn(tmp_path: Path) -> None:
    """A failed connect re-reads the DSN file and connects once more with the new DSN."""
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("postgresql://u:old@h:1/d")
    ledger = _bare_ledger(dsn_file)
    ledger._dsn_source.current()
    rotate_file(dsn_file, "postgresql://u:new@h:1/d")
    tried: list[str] = []

    def connect(dsn: str, **_: Any) -> str:
        tried.append(dsn)
        if ":old@" in dsn:
            raise OperationalError("password authentication failed")
        return "conn"

    assert ledger._open(connect) == "conn"
    assert tried == ["postgresql://u:old@h:1/d", "postgresql://u:new@h:1/d"]
    assert ledger._redact("x old y new") == "x *** y ***"


def test_ledger_connect_refused_with_an_unchanged_dsn_raises(tmp_path: Path) -> None:
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("postgresql://u:old@h:1/d")
    ledger = _bare_ledger(dsn_file)

    def connect(dsn: str, **_: Any) -> str:
        raise OperationalError("password authentication failed")

    with pytest.raises(OperationalError):
        ledger._open(connect)


def test_ledger_dsn_file_unreadable_at_start_is_one_config_line(tmp_path: Path) -> None:
    from ingest.credentials import FileSecret

    source = FileSecret("ledger.dsn", tmp_path / "absent", registry=CredentialRegistry())
    with pytest.raises(ConfigError, match=r"cannot read ledger\.dsn file"):
        LedgerBase(source)
