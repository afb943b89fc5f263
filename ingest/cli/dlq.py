"""``ingest dlq``: look at, replay and purge dead letters stored in the ledger.

``list`` and ``show`` only read the ledger (``show`` also decodes the payload with the
stream's codec, best effort, so an operator sees *why* a record fails without a debugger).
``replay`` runs records through the current pipeline (:mod:`ingest.ops.replay`). ``purge`` deletes
by age after a confirmation. Times accepted by ``--since``/``--before``: ISO 8601 dates or
datetimes (UTC unless an offset is given) or an age such as ``30m``, ``12h``, ``7d``.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson
from rich.table import Table
from rich.text import Text

from ingest.cli._common import EXIT_RUNTIME, config_option, fail_cleanly, load
from ingest.cli.status import make_console
from ingest.errors import ConfigError, RecordError

if TYPE_CHECKING:  # the ledger loads psycopg: only when a command runs
    from ingest.ledger import DeadLetterRow

#: Bytes of payload ``show`` dumps unless ``--full`` is given.
DUMP_LIMIT_BYTES = 4096
_AGE = re.compile(r"^(?P<n>\d+)(?P<unit>[smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, *, now: datetime | None = None, option: str = "--since") -> datetime:
    """An aware datetime from ISO 8601 (naive means UTC) or an age like ``7d`` (before now)."""
    value = text.strip()
    match = _AGE.match(value)
    if match:
        now = now or datetime.now(UTC)
        return now - timedelta(seconds=int(match["n"]) * _UNITS[match["unit"]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected an ISO date/datetime (2025-01-31, 2025-01-31T12:00:00Z) "
            "or an age such as 30m, 12h, 7d",
            param_hint=option,
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_ids(text: str | None) -> list[int] | None:
    """``"1,2, 5"`` -> ``[1, 2, 5]``; None when not given."""
    if text is None:
        return None
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected comma-separated ids", param_hint="--ids"
        ) from None
    if not ids or any(i <= 0 for i in ids):
        raise click.BadParameter(f"{text!r}: expected positive ids", param_hint="--ids")
    return ids


def hex_dump(data: bytes, *, limit: int | None = DUMP_LIMIT_BYTES) -> list[str]:
    """Classic ``offset  hex  |ascii|`` lines, 16 bytes each; a note when cut at ``limit``."""
    shown = data if limit is None else data[:limit]
    lines = []
    for start in range(0, len(shown), 16):
        chunk = shown[start : start + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{start:08x}  {hexes:<47}  |{text}|")
    if len(shown) < len(data):
        lines.append(f"... {len(data) - len(shown)} more bytes (use --full)")
    return lines


def _bytes_text(value: bytes | None) -> str | None:
    """UTF-8 text when the bytes are that, else their Python repr."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return repr(value)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _summary_json(row: DeadLetterRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "stream": row.stream,
        "stage": row.stage,
        "reason": row.reason,
        "source": row.source,
        "topic": row.topic,
        "partition": row.partition,
        "offset": row.offset,
        "attempts": row.attempts,
        "first_seen_at": _iso(row.first_seen_at),
        "last_seen_at": _iso(row.last_seen_at),
        "replayed_at": _iso(row.replayed_at),
        "value_bytes": None if row.value is None else len(row.value),
    }


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _ledger(config_path: Path | None) -> Any:
    from ingest.ledger import PostgresLedger

    settings = load(config_path, log_level="WARNING")
    return settings, PostgresLedger.from_settings(settings.ledger, max_size=1)


@click.group("dlq")
def dlq() -> None:
    """Dead letters: list, show, replay through the current pipeline, purge."""


@dlq.command("list")
@config_option
@click.option("--stream", default=None, help="Only this stream.")
@click.option("--stage", default=None, help="Only this stage (decode, schema, index, ...).")
@click.option("--since", default=None, help="Last seen at or after (ISO 8601 or 7d, 12h ...).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed dead letters.")
@click.option("--json", "as_json", is_flag=True, help="JSON array with stable keys.")
@fail_cleanly
def dlq_list(
    config_path: Path | None,
    stream: str | None,
    stage: str | None,
    since: str | None,
    limit: int,
    include_replayed: bool,
    as_json: bool,
) -> None:
    """Dead letters, oldest first (not yet replayed unless --all)."""
    since_at = None if since is None else parse_when(since)
    _settings, ledger = _ledger(config_path)
    with ledger:
        rows = ledger.dead_letters(
            stream,
            stage=stage,
            since=since_at,
            include_replayed=include_replayed,
            limit=limit,
        )
    if as_json:
        _print_json([_summary_json(r) for r in rows])
        return
    console = make_console()
    if not rows:
        console.print("no dead letters match")
        return
    table = Table(title_justify="left")
    for name in ("id", "stream", "stage", "source", "position", "attempts", "last seen"):
        right = name in {"id", "attempts"}
        table.add_column(name, justify="right" if right else "left", no_wrap=True)
    table.add_column("reason", overflow="fold", min_width=20)
    for r in rows:
        table.add_row(
            str(r.id),
            r.stream,
            r.stage,
            r.source,
            f"{r.topic}[{r.partition}]@{r.offset}",
            str(r.attempts),
            r.last_seen_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            Text(r.reason[:120]),
        )
    console.print(table)
    if len(rows) == limit:
        console.print(f"(first {limit}; use --limit for more)")


def decode_view(settings: Any, row: DeadLetterRow) -> dict[str, Any]:
    """Best-effort look inside the payload: wire framing, decoded record, transform result.

    Every step that fails says why (the RecordError text with its stage) instead of raising,
    because ``show`` exists precisely for records that do not pass.
    """
    view: dict[str, Any] = {"framing": None, "decoded": None, "error": None, "transform": None}
    value = row.value
    if value is None:
        view["error"] = "null value (tombstone)"
        return view
    if len(value) >= 5 and value[0] == 0:
        view["framing"] = {"magic": 0, "schema_id": int.from_bytes(value[1:5], "big")}
    else:
        view["framing"] = {"magic": value[0] if value else None, "schema_id": None}
    try:
        stream = settings.stream(row.stream)
    except ConfigError as exc:
        view["error"] = f"cannot decode: {exc}"
        return view
    try:
        from ingest.avro.catalog import SchemaCatalog
        from ingest.avro.codec import AvroCodec

        catalog = SchemaCatalog.load(settings.schemas_dir)
        codec = AvroCodec.for_stream(settings, stream, catalog)
        doc = codec.decode(value)
    except RecordError as exc:
        view["error"] = str(exc)
        return view
    except ConfigError as exc:
        view["error"] = f"cannot decode: {exc}"
        return view
    view["decoded"] = doc
    try:
        from ingest.pipeline.transform import Transformer

        action = Transformer(stream).to_action(doc, row.to_raw_record())
    except RecordError as exc:
        view["transform"] = {"ok": False, "error": str(exc)}
    except ConfigError as exc:
        view["transform"] = {"ok": False, "error": f"transform unavailable: {exc}"}
    else:
        if action is None:
            view["transform"] = {"ok": True, "result": "filtered out"}
        else:
            view["transform"] = {
                "ok": True,
                "op": action.op,
                "doc_id": action.doc_id,
                "version": action.version,
            }
    return view


@dlq.command("show")
@config_option
@click.argument("dead_letter_id", metavar="ID", type=click.IntRange(min=1))
@click.option(
    "--full", is_flag=True, help=f"Dump the whole payload (default: {DUMP_LIMIT_BYTES} B)."
)
@click.option("--json", "as_json", is_flag=True, help="JSON with the payload as hex.")
@fail_cleanly
def dlq_show(config_path: Path | None, dead_letter_id: int, full: bool, as_json: bool) -> None:
    """One dead letter: reason, stage, position, headers, key, hex dump and decoded payload."""
    settings, ledger = _ledger(config_path)
    with ledger:
        row = ledger.dead_letter(dead_letter_id)
    if row is None:
        click.echo(f"error: no dead letter with id {dead_letter_id}", err=True)
        sys.exit(EXIT_RUNTIME)
    view = decode_view(settings, row)
    headers = [[name, _bytes_text(value)] for name, value in row.headers]
    if as_json:
        data = _summary_json(row)
        data.update(
            {
                "timestamp_ms": row.timestamp_ms,
                "headers": headers,
                "key": _bytes_text(row.key),
                "value_hex": None if row.value is None else row.value.hex(),
                "decoded_view": view,
            }
        )
        sys.stdout.write(
            orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n"
        )
        return
    console = make_console()
    out = console.print
    out(f"[bold]dead letter {row.id}[/]  stream {row.stream}  stage [bold red]{row.stage}[/]")
    out(Text(f"reason:     {row.reason}"))
    out(f"position:   {row.source} {row.topic}[{row.partition}] offset {row.offset}")
    out(f"timestamp:  {row.timestamp_ms} ms")
    out(
        f"seen:       first {_iso(row.first_seen_at)}, last {_iso(row.last_seen_at)}, "
        f"attempts {row.attempts}, replayed {_iso(row.replayed_at) or 'no'}"
    )
    out(Text(f"key:        {_bytes_text(row.key)}"))
    out("headers:" + ("" if headers else "    none"))
    for name, value in headers:
        out(Text(f"  {name}: {value}"))
    size = "null" if row.value is None else f"{len(row.value)} bytes"
    out(f"payload:    {size}")
    for line in hex_dump(row.value or b"", limit=None if full else DUMP_LIMIT_BYTES):
        out(Text("  " + line))
    framing = view["framing"]
    if framing is not None:
        if framing["schema_id"] is None:
            out(f"framing:    not Confluent wire format (first byte {framing['magic']})")
        else:
            out(f"framing:    Confluent wire format, schema id {framing['schema_id']}")
    if view["decoded"] is not None:
        out("decoded:")
        text = orjson.dumps(view["decoded"], option=orjson.OPT_INDENT_2, default=str).decode()
        out(Text("\n".join("  " + line for line in text.splitlines())))
    if view["error"] is not None:
        out(Text(f"decode:     FAILS: {view['error']}", style="red"))
    transform = view["transform"]
    if transform is not None:
        if transform["ok"]:
            detail = transform.get("result") or (
                f"{transform['op']} id={transform['doc_id']} version={transform['version']}"
            )
            out(Text(f"transform:  ok: {detail}", style="green"))
        else:
            out(Text(f"transform:  FAILS: {transform['error']}", style="red"))


@dlq.command("replay")
@config_option
@click.option("--stream", default=None, help="Only this stream.")
@click.option("--ids", default=None, help="Only these ids, comma-separated: 1,2,5.")
@click.option("--since", default=None, help="Last seen at or after (ISO 8601 or 7d, 12h ...).")
@click.option("--limit", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--dry-run", is_flag=True, help="Decode and transform only; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Summary as JSON.")
@fail_cleanly
def dlq_replay(
    config_path: Path | None,
    stream: str | None,
    ids: str | None,
    since: str | None,
    limit: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Re-run dead letters through the current pipeline; those that pass are marked replayed."""
    from ingest.ops.replay import replay_dead_letters, select_dead_letters
    from ingest.pipeline.wiring import open_components

    id_list = parse_ids(ids)
    since_at = None if since is None else parse_when(since)
    settings = load(config_path, log_level="WARNING")
    if stream is not None:
        settings.stream(stream)
    with open_components(settings) as components:
        rows = select_dead_letters(
            components.ledger, stream=stream, ids=id_list, since=since_at, limit=limit
        )
        summary = replay_dead_letters(components, rows, dry_run=dry_run)
    if as_json:
        _print_json(summary.to_json())
        return
    verb = "would pass" if dry_run else "replayed"
    for s in summary.streams:
        if s.skipped:
            click.echo(f"{s.stream}: {s.selected} skipped ({s.skipped})")
            continue
        stages = ", ".join(f"{k}={n}" for k, n in sorted(Counter(s.failed.values()).items()))
        line = (
            f"{s.stream}: {s.selected} selected, {len(s.passed)} {verb}, "
            f"{len(s.failed)} still failing"
        )
        click.echo(line + (f" ({stages})" if stages else ""))
    click.echo(
        f"total: {summary.selected} selected, {summary.passed} {verb}, "
        f"{summary.failed} still failing, {summary.skipped} skipped"
        + (" (dry run: decode and transform only, nothing written)" if dry_run else "")
    )


@dlq.command("purge")
@config_option
@click.option(
    "--before", required=True, help="Delete those last seen before (ISO 8601 or an age: 30d)."
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@fail_cleanly
def dlq_purge(config_path: Path | None, before: str, yes: bool) -> None:
    """Delete dead letters (replayed or not) last seen before a date, after confirming."""
    before_at = parse_when(before, option="--before")
    settings, ledger = _ledger(config_path)
    with ledger:
        if not yes:
            click.confirm(
                f"Delete every dead letter last seen before {_iso(before_at)} "
                f"from ledger schema {settings.ledger.schema_name!r}?",
                abort=True,
            )
        count = ledger.purge_dead_letters(before_at)
    click.echo(f"purged {count} dead letter(s) last seen before {_iso(before_at)}")
