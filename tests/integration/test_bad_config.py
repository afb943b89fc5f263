"""A bad configuration ends ``ingest run`` with one ``error:`` line and exit code 2, quickly.

Each case starts from a working configuration for the session's stack and breaks one
thing; the real ``ingest`` script runs it. Problems found while loading the file must be
the only line printed; problems found while connecting (PostgreSQL, search) may follow a
few log lines, but still end in exactly one ``error:`` line, no traceback, within
``LIMIT_S``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from ingest.dev.stack import free_port
from ingest.settings import Settings
from tests.support.certs import make_pki
from tests.support.daemon import settings_document
from tests.support.forward_proxy import TlsGateway

pytestmark = pytest.mark.integration

INGEST = str(Path(sys.executable).with_name("ingest"))
REPO_ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 30.0

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """Set a dotted key; ``streams.0.topic`` indexes into the streams list."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[leaf] = value

    return mutate


def _closed_dsn(data: dict[str, Any]) -> None:
    data["ledger"]["dsn"] = f"postgresql://postgres:pw@127.0.0.1:{free_port()}/postgres"


def _closed_search(data: dict[str, Any]) -> None:
    data["search"]["url"] = f"http://127.0.0.1:{free_port()}"


def _closed_hosts(data: dict[str, Any]) -> None:
    del data["search"]["url"]
    data["search"]["hosts"] = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]


def _run(config: Path, cwd: Path) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [INGEST, "run", "--config", str(config)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=LIMIT_S + 30,
        stdin=subprocess.DEVNULL,
        check=False,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(REPO_ROOT)},
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


LOAD_TIME = [
    pytest.param(_set("kafka.bootstrap", "x"), "kafka.bootstrap: unknown key", id="unknown-key"),
    pytest.param(
        _set("runtime.max_retry_s", "soon"), "runtime.max_retry_s", id="wrong-type-runtime"
    ),
    pytest.param(_set("streams.0.max_batch_records", [1]), "max_batch_records", id="wrong-type"),
    pytest.param(
        _set("streams.0.topic", "bad topic!"), "invalid Kafka topic name", id="invalid-topic"
    ),
    pytest.param(_set("streams.0.alias", "Orders"), "must be lowercase", id="invalid-index"),
    pytest.param(
        _set("streams.0.alias", "a,b"), "must not contain spaces", id="invalid-index-char"
    ),
    pytest.param(_set("streams.0.name", "Bad Name"), "invalid stream name", id="invalid-stream"),
    pytest.param(
        _set("search.password_file", "/nonexistent/secret"),
        "search.password_file",
        id="missing-secret-file",
    ),
    pytest.param(
        _set("search.hosts", ["http://127.0.0.1:1"]), "give url or hosts", id="url-and-hosts"
    ),
    pytest.param(
        _set("streams.0.routing_field", "customer"),
        "needs routing_header",
        id="unroutable-tombstones",
    ),
]

START_TIME = [
    pytest.param(
        _set("schemas_dir", "/nonexistent/schemas"), "/nonexistent/schemas", id="no-schemas-dir"
    ),
    pytest.param(_set("streams.0.subject", "nope"), "nope", id="unknown-subject"),
    pytest.param(_closed_dsn, "cannot connect to the ledger", id="postgres-unreachable"),
    pytest.param(_closed_search, "unreachable", id="search-unreachable"),
    pytest.param(_closed_hosts, "no search host is reachable", id="search-hosts-unreachable"),
    pytest.param(
        _set("streams.0.transform", "nosuch.module:fn"),
        "transform hook 'nosuch.module:fn'",
        id="transform-hook-missing",
    ),
    pytest.param(
        lambda _data: None,  # the test's topic is never created here
        "run `ingest topics ensure --stream orders`",
        id="topic-missing",
    ),
]


def _config(settings: Settings, tmp_path: Path, mutate: Mutation) -> Path:
    data = settings_document(settings)
    mutate(data)
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output, output
    return errors[0]


@pytest.mark.parametrize(("mutate", "expected"), LOAD_TIME)
def test_bad_file_is_the_only_line(
    make_settings: Callable[..., Settings], tmp_path: Path, mutate: Mutation, expected: str
) -> None:
    config = _config(make_settings(partitions=None), tmp_path, mutate)
    code, output, _took = _run(config, tmp_path)
    assert code == 2, output
    assert output.strip().splitlines() == [_one_error_line(output)]
    assert expected in output


@pytest.mark.parametrize(("mutate", "expected"), START_TIME)
def test_bad_endpoint_or_schema_fails_at_start(
    make_settings: Callable[..., Settings], tmp_path: Path, mutate: Mutation, expected: str
) -> None:
    config = _config(make_settings(partitions=None), tmp_path, mutate)
    code, output, took = _run(config, tmp_path)
    assert code == 2, output
    assert expected in _one_error_line(output)
    assert took < LIMIT_S


@pytest.mark.parametrize(
    "text",
    ["[kafka\n", "x = 1\nx = 2\n"],
    ids=["not-toml", "duplicate-key"],
)
def test_unparsable_file(tmp_path: Path, text: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    code, output, _took = _run(config, tmp_path)
    assert code == 2, output
    assert "not valid TOML" in _one_error_line(output)


def test_missing_file(tmp_path: Path) -> None:
    code, output, _took = _run(tmp_path / "absent.toml", tmp_path)
    assert code == 2
    assert "does not exist" in _one_error_line(output)


def test_unreachable_kafka_fails_at_start(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(partitions=None)
    config = _config(
        settings, tmp_path, _set("kafka.bootstrap_servers", f"127.0.0.1:{free_port()}")
    )
    proc = subprocess.Popen(
        [INGEST, "run", "--config", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        output, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate(timeout=10)
        pytest.fail("still running after 15 s with Kafka unreachable")
    assert proc.returncode == 2
    assert "error:" in _one_error_line(output)


@pytest.mark.parametrize("certificate", ["none", "untrusted"])
def test_refused_client_certificate_fails_at_start(
    make_settings: Callable[..., Settings], tmp_path: Path, search_url: str, certificate: str
) -> None:
    """A cluster requiring a client certificate refuses a daemon with none, or one from a CA
    it does not trust: one error line naming the server, exit 2."""
    pki = make_pki(tmp_path)
    with TlsGateway(
        search_url, cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca
    ) as gateway:

        def point_at_gateway(data: dict[str, Any]) -> None:
            data["search"].update(url=gateway.url, ca_file=pki.ca)
            if certificate == "untrusted":
                data["search"].update(
                    client_cert_file=pki.stranger_cert, client_key_file=pki.stranger_key
                )

        config = _config(make_settings(partitions=None), tmp_path, point_at_gateway)
        code, output, took = _run(config, tmp_path)
    assert code == 2, output
    assert f"search server {gateway.url} is unreachable" in _one_error_line(output)
    assert gateway.handshakes_refused >= 1
    assert took < LIMIT_S


def test_a_typo_in_id_field_stops_ingest_run_at_start_with_one_line(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Without this check every record would be dead-lettered while the offsets advance."""
    config = _config(make_settings(partitions=1), tmp_path, _set("streams.0.id_field", "order_idd"))
    code, output, took = _run(config, tmp_path)
    assert code == 2, output
    assert output.strip().splitlines() == [
        "error: stream 'orders': id_field 'order_idd' is not a field of orders v1, v2"
    ]
    assert took < LIMIT_S
