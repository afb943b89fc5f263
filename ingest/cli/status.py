"""``ingest status``: one screen saying whether ingestion is healthy, or ``--json`` for scripts.

The data comes from :func:`ingest.ops.report.gather_status`; this module only renders it, as
aligned rich tables (numbers right-aligned, stale processes and negative lag highlighted,
times shown with their age). :func:`render_status` writes to any rich Console so tests can
render into a string.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ingest.cli._common import config_option, fail_cleanly, load

if TYPE_CHECKING:  # the report's module reads the ledger: loaded only when a command runs
    from ingest.ops.report import StatusReport


def age(then: datetime | None, now: datetime) -> str:
    """A short age such as ``4s``, ``12m``, ``3h`` or ``2d``; ``-`` when unknown."""
    if then is None:
        return "-"
    return age_of(max(0.0, (now - then).total_seconds()))


def age_of(value_s: float) -> str:
    """``value_s`` seconds as ``4s``, ``12m``, ``3h`` or ``2d`` (whole units, rounded down)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value_s >= size:
            return f"{int(value_s // size)}{unit}"
    return f"{int(value_s)}s"


def _when(then: datetime | None, now: datetime) -> str:
    """Tables show ages (``12s ago``); ``--json`` has the exact times."""
    if then is None:
        return "-"
    return f"{age(then, now)} ago"


#: Width used when output goes to a pipe or file, where rich would otherwise assume 80.
PIPE_WIDTH = 160


def make_console() -> Console:
    """The terminal's width on a TTY; a wide fixed width when piped, so nothing is cut."""
    return Console(width=None if sys.stdout.isatty() else PIPE_WIDTH, highlight=False)


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _counters(counters: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v) or "-"


def _table(
    title: str, *columns: str, right: tuple[str, ...] = (), fold: tuple[str, ...] = ()
) -> Table:
    """Numbers right-aligned and never wrapped; ``fold`` columns (free text) may wrap."""
    table = Table(title=title, title_justify="left", title_style="bold", expand=False)
    for name in columns:
        if name in fold:
            table.add_column(name, overflow="fold", min_width=min(len(name), 12))
        elif name in right:
            table.add_column(name, justify="right", no_wrap=True)
        else:
            table.add_column(name, no_wrap=True)
    return table


def render_status(report: StatusReport, console: Console) -> None:
    """Print ``report`` as tables; empty sections say so in one line instead."""
    now = report.generated_at
    console.print(
        f"[bold]ingest status[/] at {now.strftime('%Y-%m-%d %H:%M:%S %Z')}"
        f"  ledger schema [bold]{report.ledger_schema}[/]"
    )
    _partitions(report, console, now)
    _processes(report, console, now)
    _dead_letters(report, console)
    _versions(report, console, now)
    _runs(report, console, now)
    _chunks(report, console, now)
    _latency(report, console, now)
    if report.problems:
        console.print()
        console.print("[bold red]problems[/]")
        for problem in report.problems:
            console.print(Text(f"  ! {problem}", style="red"))
    else:
        console.print()
        console.print("[green]no problems found[/]")


def _partitions(report: StatusReport, console: Console, now: datetime) -> None:
    console.print()
    if not report.partitions:
        console.print("partitions: none known (no stream consumed yet and broker not asked)")
        return
    table = _table(
        "partitions",
        "stream",
        "topic",
        "part",
        "next",
        "high",
        "lag",
        "flushed",
        "owner",
        right=("part", "next", "high", "lag"),
        fold=("owner",),
    )
    table.caption = "next: the ledger's next offset to read; high: the broker's high watermark"
    table.caption_justify = "left"
    for p in report.partitions:
        lag = Text(_num(p.lag), style="bold red" if p.lag is not None and p.lag < 0 else "")
        table.add_row(
            p.stream,
            p.topic,
            str(p.partition),
            _num(p.next_offset),
            _num(p.high_watermark),
            lag,
            _when(p.last_flush, now),
            p.owner or "-",
        )
    console.print(table)


def _processes(report: StatusReport, console: Console, now: datetime) -> None:
    console.print()
    if not report.processes:
        console.print("processes: none running")
        return
    table = _table(
        "running processes",
        "run",
        "kind",
        "stream",
        "host:pid",
        "started",
        "heartbeat",
        "state",
        "counters",
        right=("run",),
        fold=("counters",),
    )
    for proc in report.processes:
        state = Text("STALE", style="bold red") if proc.stale else Text("ok", style="green")
        table.add_row(
            str(proc.run_id),
            proc.kind,
            proc.stream or "-",
            f"{proc.host}:{proc.pid}",
            _when(proc.started_at, now),
            f"{age(proc.heartbeat_at, now)} ago",
            state,
            _counters(proc.counters),
        )
    console.print(table)


def _dead_letters(report: StatusReport, console: Console) -> None:
    console.print()
    if not report.dead_letters:
        console.print("dead letters: none waiting")
        return
    table = _table("dead letters (not replayed)", "stream", "stage", "count", right=("count",))
    for d in report.dead_letters:
        table.add_row(d.stream, d.stage, _num(d.count))
    console.print(table)


def _versions(report: StatusReport, console: Console, now: datetime) -> None:
    console.print()
    if not report.index_versions:
        console.print("index versions: none recorded")
        return
    table = _table(
        "index versions", "alias", "version", "index", "state", "updated", right=("version",)
    )
    styles = {"live": "green", "building": "yellow", "failed": "red"}
    for v in report.index_versions:
        table.add_row(
            v.alias,
            str(v.version),
            v.index_name,
            Text(v.state, style=styles.get(v.state, "")),
            _when(v.updated_at, now),
        )
    console.print(table)


def _runs(report: StatusReport, console: Console, now: datetime) -> None:
    console.print()
    if not report.recent_runs:
        console.print("recent backfill/reindex/replay runs: none")
        return
    table = _table(
        "recent backfill/reindex/replay runs",
        "run",
        "kind",
        "stream",
        "status",
        "started",
        "finished",
        "counters",
        "error",
        right=("run",),
        fold=("counters", "error"),
    )
    styles = {"succeeded": "green", "failed": "red", "running": "yellow"}
    for run in report.recent_runs:
        table.add_row(
            str(run.run_id),
            run.kind,
            run.stream or "-",
            Text(run.status, style=styles.get(run.status, "")),
            _when(run.started_at, now),
            _when(run.finished_at, now),
            _counters(run.counters),
            (run.error or "-")[:80],
        )
    console.print(table)


def _chunks(report: StatusReport, console: Console, now: datetime) -> None:
    console.print()
    if not report.chunks:
        console.print("backfill chunks: none")
        return
    table = _table(
        "backfill chunks",
        "stream",
        "family",
        "pending",
        "running",
        "done",
        "failed",
        "last finished",
        "last error",
        right=("pending", "running", "done", "failed"),
        fold=("last error",),
    )
    for c in report.chunks:
        table.add_row(
            c.stream,
            c.family,
            _num(c.pending),
            _num(c.running),
            _num(c.done),
            Text(_num(c.failed), style="bold red" if c.failed else ""),
            _when(c.last_finished_at, now),
            (c.last_error or "-")[:80],
        )
    console.print(table)


def seconds(value: float | None) -> str:
    """A latency such as ``35ms``, ``1.4s`` or ``12m``; ``-`` when unknown."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 60:
        return f"{value:.1f}s"
    return age_of(value)


def _latency(report: StatusReport, console: Console, now: datetime) -> None:
    console.print()
    if not report.ingestion_latency:
        console.print("ingestion latency: no flush recorded")
        return
    window = report.ingestion_latency[0].window_s
    table = _table(
        f"ingestion latency (flushes of the last {age_of(window)})",
        "stream",
        "path",
        "from",
        "records",
        "p50",
        "p99",
        "newest record",
        right=("records", "p50", "p99"),
    )
    table.caption = "record timestamp -> batch acknowledged by the search server"
    table.caption_justify = "left"
    for x in report.ingestion_latency:
        table.add_row(
            x.stream,
            x.path,
            x.source,
            _num(x.records),
            seconds(x.p50_s),
            seconds(x.p99_s),
            _when(x.newest_record_at, now),
        )
    console.print(table)


@click.command("status")
@config_option
@click.option("--stream", "streams", multiple=True, help="Only these stream(s) (default: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document with stable keys.")
@click.option(
    "--no-broker", is_flag=True, help="Skip the broker's high watermarks (ledger only, faster)."
)
@fail_cleanly
def status(
    config_path: Path | None, streams: tuple[str, ...], as_json: bool, no_broker: bool
) -> None:
    """Positions and lag per partition, running processes, dead letters, indices and runs."""
    from ingest.ledger import PostgresLedger
    from ingest.ops.report import KafkaWatermarks, gather_status

    settings = load(config_path, log_level="WARNING")
    chosen = [settings.stream(name) for name in streams] if streams else None
    watermarks = None if no_broker else KafkaWatermarks(settings)
    with PostgresLedger.from_settings(settings.ledger, max_size=1) as ledger:
        report = gather_status(
            settings,
            ledger,
            ledger_schema=ledger.schema,
            watermarks=watermarks,
            streams=chosen,
        )
    if as_json:
        sys.stdout.write(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        render_status(report, make_console())
