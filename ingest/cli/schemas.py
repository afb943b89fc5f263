"""``ingest schemas``: the schema catalog, and how the live index differs from the schema.

``schemas list`` reads only the schema directory: every subject's versions and which one each
configured stream reads with. ``schemas diff --stream S`` compares the mapping of the index
behind the stream's alias with the mapping derived from the current reader schema plus the
stream's overrides, and says which kind of change it is (a mapping change is an explicit
step, docs/design.md#mappings):

- nothing: the index is up to date;
- only added fields: ``PUT _mapping`` applies them to the live index (``--apply``), no
  reindex, and documents carrying the new fields are accepted from then on;
- a changed type, a changed ``dynamic`` or a removed field: only a new index version can hold
  it, built beside the live one with ``backfill reindex --stream S``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ingest.cli._common import config_option, fail_cleanly, load


@click.group()
def schemas() -> None:
    """Avro schemas and the index mappings derived from them."""


@schemas.command("list")
@config_option
@fail_cleanly
def list_schemas(config_path: Path | None) -> None:
    """Every subject's versions, and the one each configured stream reads with."""
    from ingest.avro.catalog import SchemaCatalog

    settings = load(config_path, log_level="WARNING")
    catalog = SchemaCatalog.load(settings.schemas_dir)
    for subject in catalog.subjects():
        latest = catalog.latest(subject)
        for sv in catalog.versions(subject):
            mark = "  (latest)" if sv.version == latest.version else ""
            click.echo(
                f"{subject} v{sv.version} id={sv.schema_id} fingerprint={sv.fingerprint[:16]}{mark}"
            )
    for stream in settings.streams:
        reader = catalog.latest(stream.subject)
        click.echo(
            f"stream {stream.name}: subject {stream.subject} v{reader.version}"
            f" -> alias {stream.alias}"
        )


@schemas.command("diff")
@config_option
@click.option("--stream", "stream_name", required=True, help="Stream whose index to compare.")
@click.option(
    "--apply",
    is_flag=True,
    help="Add new fields to the live index (and one being built) when no reindex is needed.",
)
@fail_cleanly
def diff_schema(config_path: Path | None, stream_name: str, apply: bool) -> None:
    """Live index mapping vs. the mapping derived from the current schema."""
    from ingest.avro.catalog import SchemaCatalog
    from ingest.search.client import connect_search
    from ingest.search.mapping import diff_mappings, index_definition

    settings = load(config_path, log_level="WARNING")
    stream = settings.stream(stream_name)
    catalog = SchemaCatalog.load(settings.schemas_dir)
    reader = catalog.latest(stream.subject)
    wanted: dict[str, Any] = index_definition(reader, stream.index)["mappings"]
    with connect_search(settings.search) as client:
        aliases = client.get_alias(stream.alias)
        if not aliases:
            click.echo(
                f"alias {stream.alias} does not exist yet: the first `ingest run` creates it "
                f"from {stream.subject} v{reader.version}"
            )
            return
        live = _write_index(aliases)
        diff = diff_mappings(client.get_mapping(live), wanted)
        click.echo(f"{live} (alias {stream.alias}) vs {stream.subject} v{reader.version}:")
        for label, paths in (
            ("added", diff.added),
            ("changed", diff.changed),
            ("removed", diff.removed),
        ):
            for path in paths:
                click.echo(f"  {label:8} {path}")
        if diff.empty:
            click.echo("up to date: nothing to do")
            return
        if not diff.in_place_ok:
            click.echo(
                "needs a reindex (a field changed or disappeared): "
                f"backfill reindex --stream {stream.name}"
            )
            return
        if not apply:
            click.echo(
                "can be applied in place (fields added only): "
                f"ingest schemas diff --stream {stream.name} --apply"
            )
            return
        targets = [live, *_building_indices(settings, stream.alias, exclude=live)]
        for index in targets:
            client.put_mapping(index, {"properties": wanted["properties"]})
        click.echo(f"applied in place: {len(diff.added)} field(s) added to {', '.join(targets)}")


def _write_index(aliases: dict[str, dict[str, Any]]) -> str:
    for index, info in aliases.items():
        if info.get("is_write_index"):
            return index
    return sorted(aliases)[-1]


def _building_indices(settings: Any, alias: str, *, exclude: str) -> list[str]:
    """An index being built by a reindex gets the new fields too (daemons dual-write to it)."""
    from ingest.ledger import PostgresLedger

    with PostgresLedger.from_settings(settings.ledger) as ledger:
        ledger.migrate()
        row = ledger.building_version(alias)
    return [row.index_name] if row is not None and row.index_name != exclude else []
