"""Real processes for fault tests: start the CLI, kill -9 it, freeze it, wait for it.

Fault tests drive the ingester as an operator would — a separate ``python -m ingest``
process with a config file and ``INGEST_*`` variables — and then break it with signals.
Everything here has a deadline; a helper that gives up says what it waited for and shows
the tail of the process's output. Processes started here get a parent-death signal on
Linux, so a test session that dies cannot leave a daemon behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psutil
import tomli_w

from ingest.dev.stack import StackEndpoints, env_vars
from ingest.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

#: ``python -m ingest``: works whether or not the package is installed into the venv.
INGEST = (sys.executable, "-m", "ingest")
BACKFILL = (sys.executable, "-m", "backfill")


class WaitTimeout(AssertionError):
    """``wait_for`` ran out of time; an AssertionError so pytest shows it as a failure."""


def wait_for(
    predicate: Callable[[], T | None],
    timeout_s: float,
    interval_s: float = 0.05,
    *,
    what: str = "condition",
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value.

    Raises :class:`WaitTimeout` naming ``what`` (plus ``on_timeout()``, e.g. a log tail)
    after ``timeout_s``. Exceptions from the predicate propagate.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = ""
            if on_timeout is not None:
                extra = "\n" + on_timeout()
            raise WaitTimeout(f"timed out after {timeout_s} s waiting for {what}{extra}")
        time.sleep(interval_s)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    """A started process with its output file."""

    popen: subprocess.Popen[bytes]
    args: list[str]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr interleaved)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        text = self.output().splitlines()[-lines:]
        return f"--- last {len(text)} lines of {self.log_path} (pid {self.pid}) ---\n" + "\n".join(
            text
        )

    def json_lines(self) -> list[dict[str, Any]]:
        """The output lines that parse as JSON objects (structured log events)."""
        events = []
        for raw in self.output().splitlines():
            line = raw.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        events.append(event)
        return events

    def wait_output(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """Wait until the output matches regex ``pattern``; fails early if the process exits."""
        rx = re.compile(pattern)

        def check() -> re.Match[str] | None:
            match = rx.search(self.output())
            if match is None and not self.alive():
                raise WaitTimeout(
                    f"process exited with {self.returncode} before printing {pattern!r}\n"
                    + self.tail()
                )
            return match

        return wait_for(check, timeout_s, what=f"output {pattern!r}", on_timeout=self.tail)

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the process to exit on its own; returns its exit code."""
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(
                f"process {self.pid} still running after {timeout_s} s\n" + self.tail()
            ) from None


def start_process(
    args: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Start ``args`` with output (stdout + stderr) to ``log_path`` and stdin closed.

    The child gets its own process group (so signals to it do not hit pytest) and dies
    with the test session.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        popen = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
    return Proc(popen=popen, args=list(args), log_path=log_path)


def stack_env(
    endpoints: StackEndpoints | None = None,
    *,
    config: Path | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for a CLI subprocess: ours + stack endpoints + config + ``extra``.

    ``PYTHONPATH`` gets the repository root so ``python -m ingest`` works uninstalled;
    Python output is unbuffered so logs reach the file before a kill -9.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    if endpoints is not None:
        env.update(env_vars(endpoints))
    if config is not None:
        env["INGEST_CONFIG"] = str(config)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def start_cli(
    *args: str,
    settings: Settings | None = None,
    workdir: Path,
    name: str = "ingest",
    command: Sequence[str] = INGEST,
    extra_env: Mapping[str, str] | None = None,
) -> Proc:
    """Start ``python -m ingest <args>`` with ``settings`` written to ``workdir/<name>.toml``.

    Output goes to ``workdir/<name>.log``. Without ``settings`` no config is written and
    only ``extra_env`` and the ambient environment apply. Example::

        proc = start_cli("run", "orders", settings=make_settings(), workdir=tmp_path)
        proc.wait_output(r"partitions_assigned", timeout_s=20)
        kill_9(proc)
    """
    config = None
    if settings is not None:
        config = workdir / f"{name}.toml"
        write_config(settings, config)
    env = stack_env(config=config, extra=extra_env)
    return start_process([*command, *args], log_path=workdir / f"{name}.log", env=env, cwd=workdir)


def run_cli(
    *args: str,
    settings: Settings | None = None,
    workdir: Path,
    name: str = "ingest-run",
    timeout_s: float = 60.0,
    command: Sequence[str] = INGEST,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """Run a CLI command to completion; returns (exit code, combined output)."""
    proc = start_cli(
        *args,
        settings=settings,
        workdir=workdir,
        name=name,
        command=command,
        extra_env=extra_env,
    )
    try:
        code = proc.wait_exit(timeout_s)
    finally:
        if proc.alive():
            kill_9(proc)
    return code, proc.output()


# --------------------------------------------------------------------------- signals


class Target(Protocol):
    """A :class:`Proc` or an :class:`ingest.dev.stack.ServerProcess` (a server we started)."""

    @property
    def pid(self) -> int: ...

    @property
    def popen(self) -> subprocess.Popen[bytes] | None: ...


def _wait(target: Target, timeout_s: float) -> int:
    """Wait for exit and reap; returns the exit code (negative: killed by that signal)."""
    if target.popen is not None:
        return target.popen.wait(timeout=timeout_s)
    try:
        code = psutil.Process(target.pid).wait(timeout=timeout_s)
    except psutil.NoSuchProcess:
        return 0
    return code if code is not None else 0


def _send(target: Target, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(target.pid, sig)


def kill_9(target: Target) -> int:
    """SIGKILL the process (no cleanup, no flush) and reap it; returns its exit code."""
    _send(target, signal.SIGKILL)
    return _wait(target, 10)


def sigstop(target: Target) -> None:
    """Freeze the process (as a long GC pause or a stopped VM would)."""
    _send(target, signal.SIGSTOP)


def sigcont(target: Target) -> None:
    """Resume a process frozen by :func:`sigstop`."""
    _send(target, signal.SIGCONT)


def send_signal(target: Target, sig: int) -> None:
    _send(target, sig)


def terminate_and_wait(
    target: Target, timeout_s: float = 30.0, *, sig: int = signal.SIGTERM
) -> int:
    """Ask the process to stop (SIGTERM by default) and wait; SIGKILL after ``timeout_s``.

    Returns the exit code; a process that had to be killed raises :class:`WaitTimeout`
    after being killed, since a clean shutdown was what the test expected.
    """
    if target.popen is not None and target.popen.poll() is not None:
        return target.popen.returncode
    _send(target, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
    _send(target, sig)
    try:
        return _wait(target, timeout_s)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        kill_9(target)
        tail = target.tail() if isinstance(target, Proc) else ""
        raise WaitTimeout(
            f"process {target.pid} ignored signal {sig} for {timeout_s} s; killed\n" + tail
        ) from None


def stop_quietly(target: Target, timeout_s: float = 10.0) -> None:
    """Teardown helper: SIGTERM, wait, SIGKILL — never raises."""
    with contextlib.suppress(Exception):
        terminate_and_wait(target, timeout_s)
    with contextlib.suppress(Exception):
        kill_9(target)


# --------------------------------------------------------------------------- config files


def settings_document(settings: Settings) -> dict[str, Any]:
    """The TOML document (as a dict, for tests to alter) that loads back into ``settings``,
    secrets included (test only)."""
    data = settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["ledger"]["dsn"] = settings.ledger.dsn.get_secret_value()
    for section, model in (
        ("search", settings.search),
        ("schema_registry", settings.schema_registry),
    ):
        for key in ("password", "api_key", "bearer_token"):
            value = getattr(model, key, None)
            if value is not None:
                data[section][key] = value.get_secret_value()
    return data


def settings_to_toml(settings: Settings) -> str:
    """Settings as TOML that ``load_settings`` reads back to an equal object (secrets too)."""
    return tomli_w.dumps(settings_document(settings))


def write_config(settings: Settings, path: Path) -> Path:
    """Write ``settings`` to ``path`` as TOML for a CLI subprocess (``INGEST_CONFIG``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(settings_to_toml(settings))
    return path
