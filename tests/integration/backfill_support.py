"""Helpers for the backfill tests: exact produce, the CLI as a process, a poison proxy.

Records are produced with explicit partitions and timestamps (the upstream producer picks
partitions by key), so a test knows which chunk each record belongs to. The ``backfill``
command runs as a real process with a TOML config, as an operator runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.dev.samples import sample_orders
from ingest.ledger import ChunkRow, PostgresLedger
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
