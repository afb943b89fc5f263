"""Running the real ``ingest run`` daemon as a subprocess, and reading the end state.

Fault tests need real processes (kill -9, SIGSTOP), so the daemon runs from the venv's
``ingest`` script with a TOML file written from the test's Settings. The end state is read
from the real ledger and the real search server, never from the daemon's own word.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ingest.kafka.ranges import KafkaRangeReader
from ingest.ledger import PostgresLedger
from ingest.search.client import connect_search
from ingest.settings import Settings
from tests.support.procs import settings_document, write_config

__all__ = ["settings_document", "write_config"]  # re-exported for the tests

INGEST = str(Path(sys.executable).with_name("ingest"))


class DaemonProcess:
    """One ``ingest run`` subprocess with its output captured to a file."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        *,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
        full_env.update(env or {})
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [INGEST, "run", "--config", str(config), *extra_args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait; the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        finally:
            if self.alive():
                self.proc.kill()
                self.proc.wait(10)
            self._log.close()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_assigned(self, timeout_s: float = 60) -> None:
        """Until the daemon got partitions: a SIGTERM earlier would find no handler yet."""
        wait_for(
            lambda: '"partitions_assigned"' in self.output() or not self.alive(),
            timeout_s,
            "the daemon to be assigned partitions",
        )


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.25
) -> None:
    """Poll ``predicate`` until true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def end_offsets(settings: Settings) -> dict[int, int]:
    return KafkaRangeReader(settings).high_watermarks(settings.streams[0].topic)


def ledger_offsets(settings: Settings) -> dict[int, int]:
    from ingest.settings import group_id_for

    stream = settings.streams[0]
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        return ledger.offsets(group_id_for(settings, stream), stream.topic)


def caught_up(settings: Settings, ends: Mapping[int, int]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            got = ledger_offsets(settings)
        except Exception:
            return False
        return all(got.get(p, 0) >= end for p, end in ends.items() if end > 0)

    return check


def _hits(settings: Settings, index: str | None) -> list[dict[str, Any]]:
    """Every document searchable now in the stream's alias (or ``index``)."""
    client = connect_search(settings.search)
    try:
        target = index or settings.streams[0].alias
        client.refresh(target)
        return list(client.scan(target))
    finally:
        client.close()


def index_versions(settings: Settings, index: str | None = None) -> dict[str, int]:
    """Document id -> external version, as searchable now in the alias (or ``index``)."""
    return {hit["_id"]: int(hit["_version"]) for hit in _hits(settings, index)}


def index_documents(settings: Settings, index: str | None = None) -> dict[str, Any]:
    """Document id -> its source, as searchable now in the alias (or ``index``)."""
    return {hit["_id"]: hit["_source"] for hit in _hits(settings, index)}


def dead_letter_offsets(settings: Settings) -> list[tuple[int, int]]:
    """(partition, offset) of every stored dead letter of the test's stream."""
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        rows = ledger.dead_letters(stream=settings.streams[0].name, limit=1_000_000)
    return sorted((row.partition, row.offset) for row in rows)


def stream_runs(settings: Settings) -> list[Any]:
    """The stream's daemon runs in the ledger, newest first."""
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        return ledger.runs("stream", stream=settings.streams[0].name)


def metrics_port(daemon: DaemonProcess) -> int:
    """The port the daemon's metrics server took (started with ``--metrics-port 0``)."""

    def find() -> int | None:
        for line in daemon.output().splitlines():
            if '"metrics_listening"' in line or "metrics_server_started" in line:
                event = json.loads(line)
                return int(event["port"])
        return None

    wait_for(lambda: find() is not None, 30, "the metrics server to start")
    port = find()
    assert port is not None
    return port


def scrape(port: int) -> dict[str, float]:
    """The daemon's /metrics as sample line (name and labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in lines if not line.startswith("#"))
        if name
    }
