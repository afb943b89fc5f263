"""Helpers for the backfill tests: exact produce, the CLI as a process, a poison proxy.

Records are produced with explicit partitions and timestamps (the upstream producer picks
partitions by key), so a test knows which chunk each record belongs to. The ``backfill``
command runs as a real process with a TOML config, as an operator runs it.
"""

from __future__ import annotations

import http.client
import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import Producer

from ingest.catalog import SchemaCatalog
from ingest.codec import AvroCodec
from ingest.ledger import ChunkRow, PostgresLedger
from ingest.samples import sample_orders
from ingest.settings import Settings
from tests.support.daemon import write_config

REPO_ROOT = Path(__file__).resolve().parents[2]
BACKFILL = (sys.executable, "-m", "backfill")
HOUR_MS = 3_600_000
#: 2026-01-01T00:00:00Z
BASE_MS = 1_767_225_600_000


@dataclass(frozen=True)
class Produced:
    partition: int
    timestamp_ms: int
    order: dict[str, Any] | None  # None: a corrupt payload
    offset: int = -1


def orders(seed: int) -> Iterable[dict[str, Any]]:
    return sample_orders(seed)


def produce(settings: Settings, items: list[Produced]) -> list[Produced]:
    """Produce ``items`` in order with their partition and timestamp; returns them with
    offsets (per partition, in production order: the topic must start empty)."""
    stream = settings.streams[0]
    codec = AvroCodec(SchemaCatalog.load(settings.schemas_dir), stream.subject)
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 5, "acks": "all"}
    )
    next_offset: dict[int, int] = {}
    out: list[Produced] = []
    for item in items:
        if item.order is None:
            key, value = b"corrupt", b"\x00\x00\x00\x00\x01not avro at all"
        else:
            key, value = item.order["order_id"].encode(), codec.encode(item.order)
        producer.produce(
            stream.topic,
            value=value,
            key=key,
            partition=item.partition,
            timestamp=item.timestamp_ms,
        )
        offset = next_offset.get(item.partition, 0)
        next_offset[item.partition] = offset + 1
        out.append(Produced(item.partition, item.timestamp_ms, item.order, offset))
        producer.poll(0)
    assert producer.flush(30) == 0, "records not delivered"
    return out


def spread(seed: int, count: int, partitions: int, start_ms: int, step_ms: int) -> list[Produced]:
    """``count`` valid orders round-robin over partitions, ``step_ms`` apart from ``start_ms``."""
    gen = orders(seed)
    return [
        Produced(i % partitions, start_ms + i * step_ms, order)
        for i, order in zip(range(count), gen, strict=False)
    ]


def run_backfill(
    *args: str,
    settings: Settings,
    workdir: Path,
    name: str = "backfill",
    env: Mapping[str, str] | None = None,
    timeout_s: float = 180,
) -> tuple[int, str]:
    """Run ``python -m backfill <args> --config <toml>``; (exit code, combined output)."""
    proc = start_backfill(*args, settings=settings, workdir=workdir, name=name, env=env)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(f"backfill did not finish in {timeout_s}s:\n{out[-4000:]}") from None
    return proc.returncode, out


def start_backfill(
    *args: str,
    settings: Settings,
    workdir: Path,
    name: str = "backfill",
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    config = write_config(settings, workdir / f"{name}.toml")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    full_env["PYTHONPATH"] = str(REPO_ROOT)
    full_env.update(env or {})
    progress = ["--progress", "lines"] if args and args[0] in {"kafka", "files"} else []
    return subprocess.Popen(
        [*BACKFILL, *args, "--config", str(config), *progress],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=full_env,
        cwd=workdir,
    )


def chunk_rows(settings: Settings) -> list[ChunkRow]:
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        return ledger.chunks(stream=settings.streams[0].name)


def dead_letters(settings: Settings) -> list[Any]:
    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        return ledger.dead_letters(stream=settings.streams[0].name, limit=100_000)


class PoisonProxy:
    """An HTTP proxy to the search server that answers 503 to any ``_bulk`` request whose
    body contains ``marker`` while ``active`` (or holds it ``hold_s`` and drops it) — so
    exactly the chunk holding the marked record fails or hangs, in whatever order the
    chunks run."""

    def __init__(self, upstream_url: str, marker: bytes, *, hold_s: float = 0.0) -> None:
        self.upstream = urlsplit(upstream_url)
        self.marker = marker
        #: With ``hold_s``, matching requests are held that long instead of failed.
        self.hold_s = hold_s
        self.released = threading.Event()
        self.active = True
        self.poisoned = 0
        self._counter = itertools.count()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.active and "_bulk" in self.path and proxy.marker in body:
                    proxy.poisoned += 1
                    if proxy.hold_s:
                        proxy.released.wait(proxy.hold_s)
                        return
                    data = b'{"error":{"type":"unavailable_shards_exception"},"status":503}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in {"host", "connection", "content-length"}
                }
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def do_PUT(self) -> None:
                self._handle()

            def do_DELETE(self) -> None:
                self._handle()

            def do_HEAD(self) -> None:
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                conn.request("HEAD", self.path)
                resp = conn.getresponse()
                resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in {"transfer-encoding", "connection"}:
                        self.send_header(k, v)
                self.end_headers()
                conn.close()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
