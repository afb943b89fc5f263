"""The real system the model checker drives: CLI processes on the embedded stack.

Everything the product does runs as an operator runs it — ``python -m ingest run`` daemons,
``python -m backfill kafka|files|reindex``, ``python -m ingest dlq replay`` — from a TOML file
written here, so the checker imports no product module and survives the package being
reorganised. Records go to Kafka through a plain confluent-kafka producer with the model's
own bytes; the end state is read straight from the search server (HTTP) and the ledger
(SQL on the tables the README documents), never from the product's word.

The runner is also the daemons' supervisor: a daemon that exits without being told to is
logged as a finding and restarted, as systemd or Kubernetes would, so a record that makes
the daemon crash shows as a crash loop, not as a hang.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import psycopg
import tomli_w
from confluent_kafka import Producer

from tests.model.ops import Op
from tests.model.reference import BASE_MS as _BASE_MS
from tests.model.reference import (
    SMALL_LIMIT_BYTES,
    V2,
    Model,
    payload,
    version_ms,
    written_order,
)
from tests.support.procs import Proc, kill_9, stack_env, start_process, terminate_and_wait

INGEST = (sys.executable, "-m", "ingest")
BACKFILL = (sys.executable, "-m", "backfill")
REPO_ROOT = Path(__file__).resolve().parents[2]
#: ``runtime.max_retry_s`` of the model's processes.
MAX_RETRY_S = 5.0
#: ``index.gc_deletes`` of the model's indices: short, so "let gc_deletes pass" costs seconds,
#: and no shorter than the product allows (2 x max_retry_s: a write retried after its delete
#: check must still meet the server's own tombstone).
GC_DELETES_S = 2 * MAX_RETRY_S
#: Restarts of daemons that exited on their own before the runner stops restarting them.
MAX_RESTARTS = 4


@dataclass
class Finding:
    """One way the end state or a process broke the promise.

    ``kind`` is the stable signature the shrinker preserves (``resurrected``,
    ``dead-letter-wrong-stage:int32`` ...); ``keys`` the document ids involved, if known.
    """

    kind: str
    detail: str
    keys: frozenset[str] = frozenset()

    def __str__(self) -> str:
        return f"[{self.kind}] {self.detail}"


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    search_url: str
    ledger_dsn: str


@dataclass(frozen=True)
class Profile:
    """Knobs a seed picks, so ``MODEL_SEED`` reproduces the configuration as well."""

    partitions: int
    max_batch_records: int
    linger_s: float


@dataclass
class World:
    """One run's topic, alias, group and ledger schema (fresh names), and its processes."""

    endpoints: Endpoints
    workdir: Path
    profile: Profile
    create_topic: Callable[[str, int], str]
    model: Model = field(default_factory=Model)
    findings: list[Finding] = field(default_factory=list)
    name: str = field(default_factory=lambda: "m" + uuid.uuid4().hex[:10])
    daemons: list[Proc] = field(default_factory=list)
    ends: dict[int, int] = field(default_factory=dict)
    #: (partition, offset) -> the op whose record landed there.
    produced_at: dict[tuple[int, int], Op] = field(default_factory=dict)
    exits: list[str] = field(default_factory=list)
    restarts: int = 0
    #: pids of daemons the runner itself killed or stopped (their exit is no finding).
    retired: set[int] = field(default_factory=set)
    _counter: int = 0
    _producer: Any = None

    # ------------------------------------------------------------------ configuration

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "small.toml"
        self._write_config(self.config, SMALL_LIMIT_BYTES)
        self.create_topic(self.name, self.profile.partitions)
        self._producer = Producer(
            {
                "bootstrap.servers": self.endpoints.kafka_bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 0,
            }
        )

    def _write_config(self, path: Path, max_record_bytes: int) -> None:
        document = {
            "schemas_dir": str(REPO_ROOT / "schemas"),
            "kafka": {
                "bootstrap_servers": self.endpoints.kafka_bootstrap,
                "group_id": self.name,
                # tansu joins a group after half the session timeout: keep joins short.
                "session_timeout_ms": 6000,
                "assignment_strategy": "range",
            },
            "search": {"url": self.endpoints.search_url, "request_timeout_s": 10.0},
            "ledger": {
                "dsn": self.endpoints.ledger_dsn,
                "schema": self.name,
                # The model's records carry fixed 2026-01-01 timestamps: keep delete markers
                # long enough that backfilling their windows is allowed.
                "delete_marker_retention_s": 20 * 365 * 86400.0,
            },
            "runtime": {
                "max_retry_s": MAX_RETRY_S,
                "shutdown_timeout_s": 15.0,
                "heartbeat_s": 1.0,
                "index_poll_s": 1.0,
                "summary_every_s": 5.0,
            },
            "streams": [
                {
                    "name": "orders",
                    "topic": self.name,
                    "subject": "orders",
                    "alias": self.name,
                    "id_field": "order_id",
                    "version_field": "updated_at",
                    "tombstones": "delete",
                    "max_batch_records": self.profile.max_batch_records,
                    "linger_s": self.profile.linger_s,
                    "max_record_bytes": max_record_bytes,
                    "index": {
                        "shards": 1,
                        "replicas": 0,
                        "settings": {"gc_deletes": f"{GC_DELETES_S:g}s"},
                        # Integer mappings give the model values the index refuses (400).
                        "field_overrides": {
                            "discount": {"type": "integer"},
                            "coupon_code": {"type": "integer"},
                        },
                    },
                }
            ],
        }
        path.write_text(tomli_w.dumps(document))

    # ------------------------------------------------------------------ processes

    def _log(self, what: str) -> Path:
        self._counter += 1
        return self.workdir / f"{self._counter:03d}-{what}.log"

    def _start(self, args: tuple[str, ...], what: str) -> Proc:
        return start_process(args, log_path=self._log(what), env=stack_env(), cwd=self.workdir)

    def alive(self) -> list[Proc]:
        return [d for d in self.daemons if d.alive()]

    def start_daemon(self) -> None:
        self.daemons.append(self._start((*INGEST, "run", "--config", str(self.config)), "daemon"))

    def supervise(self) -> None:
        """Restart daemons that exited on their own, noting each exit and its last words."""
        for daemon in list(self.daemons):
            if daemon.alive() or daemon.pid in self.retired:
                continue
            self.retired.add(daemon.pid)
            self.exits.append(f"exit {daemon.returncode}: {_last_words(daemon)}")
            if self.restarts < MAX_RESTARTS:
                self.restarts += 1
                self.start_daemon()

    def _retire(self, daemon: Proc) -> None:
        self.retired.add(daemon.pid)

    def kill(self) -> None:
        alive = self.alive()
        if alive:
            self._retire(alive[0])
            kill_9(alive[0])

    def stop(self) -> None:
        alive = self.alive()
        if alive:
            daemon = alive[-1]
            self._retire(daemon)
            code = terminate_and_wait(daemon, 60)
            # -SIGTERM: stopped before it installed its handler, i.e. before it held anything.
            if code not in (0, -signal.SIGTERM):
                self.findings.append(
                    Finding("stop-unclean", f"SIGTERM gave exit {code}: {_last_words(daemon)}")
                )

    def _failed(self, kind: str, what: str, proc: Proc) -> None:
        self.findings.append(Finding(kind, f"{what}: {_last_words(proc)}"))

    def _cli(self, tool: tuple[str, ...], *command: str) -> tuple[str, ...]:
        """``python -m <tool> <command...> --config <current file> --stream orders``."""
        return (*tool, *command, "--config", str(self.config), "--stream", "orders")

    def _run(self, args: tuple[str, ...], what: str, timeout_s: float) -> tuple[int, Proc]:
        proc = self._start(args, what)
        deadline = time.monotonic() + timeout_s
        while proc.alive() and time.monotonic() < deadline:
            self.supervise()
            time.sleep(0.2)
        if proc.alive():
            kill_9(proc)
            return -1, proc
        return proc.returncode or 0, proc

    # ------------------------------------------------------------------ record operations

    def produce(self, op: Op) -> None:
        record = payload(op)
        partition = zlib.crc32(op.key.encode()) % self.profile.partitions if record.key else 0
        delivered: list[Any] = []
        self._producer.produce(
            self.name,
            key=record.key,
            value=record.value,
            partition=partition,
            timestamp=record.timestamp_ms,
            on_delivery=lambda err, msg: delivered.append((err, msg)),
        )
        self._producer.flush(30)
        (err, msg), *_ = delivered
        assert err is None, f"produce of {op} failed: {err}"
        self.model.produced(op, msg.partition(), msg.offset())
        self.produced_at[(msg.partition(), msg.offset())] = op
        self.ends[msg.partition()] = max(self.ends.get(msg.partition(), 0), msg.offset() + 1)

    # ------------------------------------------------------------------ waiting

    def ledger_offsets(self) -> dict[int, int]:
        query = (
            "SELECT partition, next_offset FROM {}.partition_offsets"
            " WHERE consumer_group = %s AND topic = %s AND next_offset IS NOT NULL"
        )
        try:
            with psycopg.connect(self.endpoints.ledger_dsn, connect_timeout=5) as conn:
                rows = conn.execute(
                    psycopg.sql.SQL(query).format(psycopg.sql.Identifier(self.name)),
                    (f"{self.name}.orders", self.name),
                ).fetchall()
        except psycopg.Error:
            return {}
        return {int(p): int(o) for p, o in rows}

    def settle(self, timeout_s: float = 60.0) -> bool:
        """Until running daemons committed every produced record; False on timeout."""
        if not self.alive():
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.supervise()
            if not self.alive():
                return False  # a crash loop outlived the restarts: a finding of its own
            got = self.ledger_offsets()
            if all(got.get(p, 0) >= end for p, end in self.ends.items()):
                return True
            time.sleep(0.3)
        self.findings.append(
            Finding(
                "stuck",
                f"daemons did not catch up in {timeout_s:.0f} s: ledger {self.ledger_offsets()}"
                f" vs ends {self.ends}",
            )
        )
        return False

    def gc(self) -> None:
        self.settle()
        time.sleep(GC_DELETES_S + 2.0)

    # ------------------------------------------------------------------ batch operations

    def backfill(self, op: Op) -> None:
        low, high = op.window()
        since, until = _iso_s(low), _iso_s(high)
        args = self._cli(BACKFILL, "kafka")
        args += ("--since", since, "--until", until, "--chunk", "1h", "--force")
        args += ("--retries", "0", "--progress", "none", "--lock-wait", "60")
        code, proc = self._run(args, "backfill-kafka", 240)
        if code != 0:
            self.findings.append(
                Finding("backfill-failed", f"{op}: exit {code}: {_last_words(proc)}")
            )

    def files(self, op: Op) -> None:
        entries = op.archive()
        self._counter += 1
        path = self.workdir / f"archive-{self._counter:03d}.avro"
        records = []
        for key, n in entries:
            source = self._put_op(key, n)
            records.append({**_defaults(), **written_order(source)})
            self.model.archived(source)
        with path.open("wb") as out:
            fastavro.writer(out, fastavro.parse_schema(V2.doc), records)
        args = self._cli(BACKFILL, "files")
        args += ("--path", str(path), "--force", "--retries", "0", "--progress", "none")
        code, proc = self._run(args, "backfill-files", 240)
        if code != 0:
            self.findings.append(
                Finding("backfill-failed", f"{op}: exit {code}: {_last_words(proc)}")
            )

    def _put_op(self, key: str, n: int) -> Op:
        """The write op an archive entry re-sends (v1 if the model produced it as v1)."""
        for event in self.model.events.get(key, []):
            if event.n == n and event.op.kind in ("put", "put1"):
                return event.op
        return Op("put", key, n)

    def replay(self) -> None:
        """The operator's fix for ``size`` dead letters: raise ``max_record_bytes`` for every
        process (daemons restarted on the new file), then replay the dead letters."""
        if not self.model.limit_raised:
            if not self.alive():
                self.start_daemon()
            self.settle()
            count = len(self.alive())
            for daemon in self.alive():
                self._retire(daemon)
                terminate_and_wait(daemon, 60)
            self.config = self.workdir / "raised.toml"
            self._write_config(self.config, 1024 * 1024)
            for _ in range(count):
                self.start_daemon()
        self.model.replayed()
        args = self._cli(INGEST, "dlq", "replay")
        code, proc = self._run((*args, "--json"), "replay", 180)
        if code not in (0, 1):
            self._failed("replay-failed", f"exit {code}", proc)

    def reindex(self, op: Op) -> None:
        args = self._cli(BACKFILL, "reindex")
        args += ("--source", op.arg or "kafka", "--keep", "1", "--ack-timeout-s", "30")
        code, proc = self._run(args, f"reindex-{op.arg}", 300)
        if code != 0:
            self.findings.append(
                Finding("reindex-failed", f"{op}: exit {code}: {_last_words(proc)}")
            )

    # ------------------------------------------------------------------ the end

    def quiesce(self) -> None:
        """At least one daemon, every record committed, then every daemon stopped cleanly."""
        if not self.alive():
            self.start_daemon()
        self.settle(120)
        self.supervise()
        for daemon in self.alive():
            self._retire(daemon)
            code = terminate_and_wait(daemon, 60)
            if code not in (0, -signal.SIGTERM):  # see stop()
                self.findings.append(
                    Finding(
                        "stop-unclean", f"final SIGTERM gave exit {code}: {_last_words(daemon)}"
                    )
                )

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.alive():
                with contextlib.suppress(Exception):
                    daemon.popen.send_signal(signal.SIGKILL)
                    daemon.popen.wait(10)
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None  # librdkafka closes its connections when collected

    def index_hits(self) -> dict[str, tuple[int, dict[str, Any]]]:
        base = f"{self.endpoints.search_url}/{self.name}"
        with contextlib.suppress(urllib.error.HTTPError):
            _http("POST", f"{base}/_refresh", None)
        try:
            body = _http(
                "POST",
                f"{base}/_search",
                {"size": 10_000, "version": True, "query": {"match_all": {}}},
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return {}
            raise
        return {h["_id"]: (int(h["_version"]), h["_source"]) for h in body["hits"]["hits"]}

    def dead_letters(self) -> list[tuple[int, int, str, str]]:
        """(partition, offset, stage, reason) of every dead letter of the run's ledger schema.

        A row from anywhere but this run's topic (an archive file: the model only archives
        valid records) comes back with partition -1, so it shows as unexpected.
        """
        query = (
            "SELECT CASE WHEN source = 'kafka' AND topic = %s THEN partition ELSE -1 END,"
            ' "offset", stage, reason FROM {}.dead_letters'
            " WHERE stream = 'orders' ORDER BY partition, \"offset\""
        )
        try:
            with psycopg.connect(self.endpoints.ledger_dsn, connect_timeout=5) as conn:
                rows = conn.execute(
                    psycopg.sql.SQL(query).format(psycopg.sql.Identifier(self.name)),
                    (self.name,),
                ).fetchall()
        except psycopg.errors.UndefinedTable:
            return []
        return [(int(p), int(o), str(s), str(r)) for p, o, s, r in rows]


def _last_words(proc: Proc) -> str:
    """The process's last non-empty output line, shortened: why it exited."""
    lines = [ln for ln in proc.output().splitlines() if ln.strip()]
    return lines[-1][-300:] if lines else "(no output)"


def _defaults() -> dict[str, Any]:
    return dict(V2.defaults())


def _iso_s(seconds: int) -> str:
    import datetime as dt

    ms = version_ms(seconds) if seconds >= 0 else _BASE_MS
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _http(method: str, url: str, body: dict[str, Any] | None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")
