"""Session fixtures: one embedded stack (tansu, osmem, PostgreSQL) per test session.

The stack starts lazily, the first time a test asks for it (unit tests never do), in a
temporary directory, and stops at the end of the session. Everything per test is cheap:
``unique`` names keep tests apart on the shared servers (topic, index alias, consumer
group and ledger schema), so no test needs its own server.

Set ``INGEST_LEDGER_DSN`` to run the ledger tests against an existing PostgreSQL.

At session end a check fails the run if any child process of the test session is still
alive (a daemon a test forgot to stop), after killing it so nothing is left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # the package may not be installed into the venv
    sys.path.insert(0, str(REPO_ROOT))

from ingest.dev.stack import (  # noqa: E402
    RunningStack,
    ServerProcess,
    StackEndpoints,
    free_port,
    start_server,
    start_stack,
    stop_components,
)
from ingest.settings import (  # noqa: E402
    IndexSettings,
    KafkaSettings,
    LedgerSettings,
    RuntimeSettings,
    SearchSettings,
    Settings,
    StreamSettings,
)

SCHEMAS_DIR = REPO_ROOT / "schemas"
_STACK_TIMINGS: list[float] = []
TOPIC_TIMEOUT_S = 15.0


@pytest.fixture(autouse=True)
def _structlog_defaults() -> None:
    """Each test starts from structlog's defaults: a CLI command run in-process by an earlier
    test configures a WARNING filter, which would hide the info events a later test captures
    with ``structlog.testing.capture_logs``."""
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def servers_root() -> Iterator[Path]:
    """A session directory for server data *outside* pytest's tmp tree, removed at the end.

    pytest resets ``/tmp/pytest-of-<user>`` to mode 0700 whenever a session starts (other
    sessions run concurrently here), which locks the unprivileged PostgreSQL system user
    out of any data directory below it.
    """
    root = Path(tempfile.mkdtemp(prefix="ingest-tests-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server_dir(servers_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory for this test's own servers / ``dev up`` state (see servers_root)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)[:40]
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=servers_root))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def running_stack(servers_root: Path) -> Iterator[RunningStack]:
    """The one :class:`RunningStack` of this session (use ``stack`` for just endpoints)."""
    workdir = servers_root / "stack"
    stack = start_stack(workdir, postgres_dsn=os.environ.get("INGEST_LEDGER_DSN") or None)
    _STACK_TIMINGS.append(stack.started_s)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def stack(running_stack: RunningStack) -> StackEndpoints:
    """Endpoints of the session's embedded stack: kafka_bootstrap, search_url, ledger_dsn."""
    return running_stack.endpoints


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: StackEndpoints) -> str:
    """``127.0.0.1:PORT`` of the session's tansu broker."""
    return stack.kafka_bootstrap


@pytest.fixture(scope="session")
def search_url(stack: StackEndpoints) -> str:
    """``http://127.0.0.1:PORT`` of the session's osmem search server."""
    return stack.search_url


@pytest.fixture(scope="session")
def ledger_dsn(stack: StackEndpoints) -> str:
    """DSN of the session's PostgreSQL (trust auth; any password is accepted)."""
    return stack.ledger_dsn


@pytest.fixture
def unique() -> str:
    """A fresh lowercase name such as ``t3f9a2c1b``: valid topic, index and PG schema name."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Any:
    """A session-wide confluent_kafka AdminClient on the stack's broker."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


def _create_topic(admin: Any, name: str, partitions: int) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)],
        operation_timeout=TOPIC_TIMEOUT_S,
        request_timeout=TOPIC_TIMEOUT_S,
    )
    try:
        futures[name].result(timeout=TOPIC_TIMEOUT_S)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    deadline = time.monotonic() + TOPIC_TIMEOUT_S
    while True:
        meta = admin.list_topics(topic=name, timeout=TOPIC_TIMEOUT_S).topics.get(name)
        if meta is not None and meta.error is None and len(meta.partitions) >= partitions:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name!r} not visible in metadata after {TOPIC_TIMEOUT_S} s")
        time.sleep(0.05)


@pytest.fixture
def create_topic(kafka_admin: Any) -> Callable[..., str]:
    """Factory ``create_topic(name, partitions=1) -> name``.

    Creates the topic on the stack's broker (an existing one is fine) and returns once
    metadata shows all its partitions, so producers and consumers see it immediately.
    """

    def create(name: str, partitions: int = 1) -> str:
        _create_topic(kafka_admin, name, partitions)
        return name

    return create


@pytest.fixture
def make_settings(stack: StackEndpoints, unique: str, kafka_admin: Any) -> Callable[..., Settings]:
    """Factory building :class:`Settings` pointed at the session stack, unique per test.

    ``make_settings(*, partitions=1, kafka=None, search=None, ledger=None, runtime=None,
    **stream) -> Settings``

    - One ``orders``-like stream named ``orders``: subject ``orders``, id_field ``order_id``,
      version_field ``updated_at``, index replicas 0; its topic, alias, consumer group and
      ledger schema are all the test's ``unique`` name, so calling the factory twice in
      one test (e.g. to "restart") yields the same names.
    - ``partitions``: create the topic with that many partitions first (``None`` skips).
    - ``kafka`` / ``search`` / ``ledger`` / ``runtime``: dicts of field overrides for those
      sections (e.g. ``search={"url": proxy.url}``, ``runtime={"max_retry_s": 5}``).
    - Any other keyword overrides a :class:`StreamSettings` field (``topic=``, ``alias=``,
      ``version_field=None``, ``dead_letter_topic=``, ``index={"shards": 2}`` ...).

    Kafka uses ``session_timeout_ms=6000`` and the eager ``range`` strategy (tansu
    joins groups after half the session timeout and stalls cooperative joins).
    """

    def make(
        *,
        partitions: int | None = 1,
        kafka: dict[str, Any] | None = None,
        search: dict[str, Any] | None = None,
        ledger: dict[str, Any] | None = None,
        runtime: dict[str, Any] | None = None,
        **stream: Any,
    ) -> Settings:
        stream_fields: dict[str, Any] = {
            "name": "orders",
            "topic": unique,
            "subject": "orders",
            "alias": unique,
            "id_field": "order_id",
            "version_field": "updated_at",
            "index": {"shards": 1, "replicas": 0},
        }
        stream_fields.update(stream)
        if isinstance(stream_fields["index"], dict):
            stream_fields["index"] = IndexSettings(**stream_fields["index"])
        kafka_fields: dict[str, Any] = {
            "bootstrap_servers": stack.kafka_bootstrap,
            "group_id": unique,
            "session_timeout_ms": 6000,
            "assignment_strategy": "range",
        }
        kafka_fields.update(kafka or {})
        search_fields: dict[str, Any] = {"url": stack.search_url, "request_timeout_s": 10.0}
        search_fields.update(search or {})
        ledger_fields: dict[str, Any] = {
            "dsn": stack.ledger_dsn,
            "schema": unique,
            # The backfill tests copy a fixed window (2026-01-01), which a backfill refuses
            # once it lies past the delete-marker retention (30 days by default).
            "delete_marker_retention_s": 20 * 365 * 86400.0,
        }
        ledger_fields.update(ledger or {})
        settings = Settings(
            kafka=KafkaSettings(**kafka_fields),
            search=SearchSettings(**search_fields),
            ledger=LedgerSettings(**ledger_fields),
            schemas_dir=SCHEMAS_DIR,
            runtime=RuntimeSettings(**(runtime or {})),
            streams=(StreamSettings(**stream_fields),),
        )
        if partitions is not None:
            _create_topic(kafka_admin, settings.streams[0].topic, partitions)
        return settings

    return make


@pytest.fixture
def private_server(server_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory for a server of this test's own, to kill, freeze or restart without
    disturbing the shared stack: ``private_server(name, *, port=None, advertised_port=None,
    workdir=None) -> ServerProcess`` with ``name`` in ``kafka`` / ``search`` / ``postgres``.

    ``component.endpoint`` is its bootstrap / URL / DSN, ``component.popen`` its process
    (``tests.support.procs.kill_9`` and friends accept it). Pass the same ``port`` and
    ``workdir`` to restart a stopped one in place (PostgreSQL keeps its data there). Every
    server started here is stopped at the end of the test.
    """
    started: list[ServerProcess] = []

    def start(
        name: str,
        *,
        port: int | None = None,
        advertised_port: int | None = None,
        workdir: Path | None = None,
    ) -> ServerProcess:
        component = start_server(
            name,
            workdir or server_dir / f"private-{name}",
            port=port,
            advertised_port=advertised_port,
            timeout_s=20,
        )
        started.append(component)
        return component

    yield start
    stop_components(started, timeout_s=5)


@pytest.fixture
def proxied_kafka(private_server: Callable[..., ServerProcess]) -> Iterator[tuple[str, Any]]:
    """A private tansu broker behind a :class:`TcpFaultProxy`: ``(bootstrap, proxy)``.

    The broker advertises the proxy's address, so every client connection (not only the
    bootstrap one) goes through the proxy and ``proxy.blackhole()`` /
    ``proxy.drop_connections()`` / ``proxy.refuse()`` really cut the client off.
    """
    from tests.support.fault_proxy import TcpFaultProxy

    broker_port = free_port()
    with TcpFaultProxy("127.0.0.1", broker_port) as proxy:
        component = private_server("kafka", port=broker_port, advertised_port=proxy.port)
        yield component.endpoint, proxy


# --------------------------------------------------------------------------- leak check


def _leftover_children() -> list[Any]:
    import psutil

    left = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                left.append(child)
        except psutil.NoSuchProcess:
            continue
    return left


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a child process outlived the tests; kill it so nothing leaks."""
    import psutil

    left = _leftover_children()
    if not left:
        return
    described = []
    for proc in left:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(left, timeout=5)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "child processes survived the test session (killed now):\n  " + "\n  ".join(described)
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(message, red=True)
    else:
        print(message, file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how long the embedded stack took to start, when a test needed it."""
    for took in _STACK_TIMINGS:
        terminalreporter.write_line(
            f"embedded stack (tansu, osmem, postgres) started in {took:.2f} s"
        )
