"""Archive files as a backfill source: discovery, identity, reading, refusals (no network)."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import fastavro
import pytest

from backfill.chunk import FileChunkSource
from backfill.files import (
    check_stream_for_files,
    count_records,
    describe_files,
    find_files,
    read_records,
    sha256_of,
)
from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.dev.samples import sample_orders, to_version
from ingest.errors import ConfigError, FatalError
from ingest.settings import StreamSettings

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CATALOG = SchemaCatalog.load(SCHEMAS)


def _write(path: Path, n: int, *, version: int = 2, seed: int = 1) -> list[dict]:
    schema = next(v for v in CATALOG.versions("orders") if v.version == version)
    records = [to_version(o, version) for o in itertools.islice(sample_orders(seed), n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fo:
        fastavro.writer(fo, schema.schema, records, sync_interval=200)  # several blocks
    return records


def test_find_files_in_a_directory_a_glob_or_one_file(tmp_path: Path) -> None:
    a = tmp_path / "date=2026-01-01" / "part-0.avro"
    b = tmp_path / "date=2026-01-02" / "part-0.avro"
    _write(a, 1)
    _write(b, 1)
    (tmp_path / "notes.txt").write_text("not avro")
    assert find_files(str(tmp_path)) == [a.resolve(), b.resolve()]
    assert find_files(str(tmp_path / "*" / "part-0.avro")) == [a.resolve(), b.resolve()]
    assert find_files(str(tmp_path / "**" / "*.avro")) == [a.resolve(), b.resolve()]
    assert find_files(str(a)) == [a.resolve()]
    with pytest.raises(ConfigError, match="no Avro files"):
        find_files(str(tmp_path / "missing"))


def test_identity_is_the_content_hash_and_records_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "part-0.avro"
    _write(path, 25)
    [described] = describe_files([path])
    assert described.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_of(path)
    assert described.records == 25 == count_records(path)
    assert described.source == f"file:{described.sha256}"
    (tmp_path / "bad.avro").write_bytes(b"not an object container file")
    with pytest.raises(ConfigError, match="not a readable Avro"):
        count_records(tmp_path / "bad.avro")


def test_records_are_framed_for_the_codec_from_any_start(tmp_path: Path) -> None:
    """v1 files are read as v2; each record keeps file, index and content hash."""
    path = tmp_path / "part-0.avro"
    written = _write(path, 12, version=1)
    sha = sha256_of(path)
    batches = list(read_records(path, sha, CATALOG.latest("orders"), start=5, batch_records=4))
    assert [len(b) for b in batches] == [4, 3]
    records = [r for b in batches for r in b]
    assert [r.offset for r in records] == list(range(5, 12))
    assert {(r.topic, r.partition, r.source, r.key) for r in records} == {
        (str(path), 0, f"file:{sha}", None)
    }
    codec = AvroCodec(CATALOG, "orders")
    decoded = codec.decode(records[0].value or b"")
    assert decoded["order_id"] == written[5]["order_id"]
    assert decoded["priority"] is False  # added in v2 with default false


def test_a_changed_or_missing_file_is_refused_at_run_time(tmp_path: Path) -> None:
    path = tmp_path / "part-0.avro"
    _write(path, 3)
    sha = sha256_of(path)
    _write(path, 4)
    with pytest.raises(FatalError, match="content changed"):
        FileChunkSource(path, sha, CATALOG.latest("orders"), 3).read(0, 10)
    with pytest.raises(FatalError, match="gone"):
        FileChunkSource(tmp_path / "nope.avro", sha, CATALOG.latest("orders"), 3).read(0, 10)


def test_an_unreadable_file_is_planned_and_fails_only_when_run(tmp_path: Path) -> None:
    """Planning a set with a broken file describes it too (no records); reading it then
    fails with the reason, while the good file plans and reads as usual."""
    good = tmp_path / "part-0.avro"
    _write(good, 3)
    bad = tmp_path / "part-1.avro"
    bad.write_bytes(b"not an object container file")
    described = describe_files([good, bad])
    assert [(d.path, d.records) for d in described] == [(str(good), 3), (str(bad), 0)]
    assert described[1].sha256 == sha256_of(bad)
    source = FileChunkSource(bad, described[1].sha256, CATALOG.latest("orders"), 0)
    with pytest.raises(ConfigError, match="can not read it"):
        list(source.read(0, 10))


def _stream(**kw: object) -> StreamSettings:
    fields: dict[str, object] = {
        "name": "orders",
        "topic": "orders",
        "subject": "orders",
        "alias": "orders",
        "id_field": "order_id",
        "version_field": "updated_at",
    }
    fields.update(kw)
    return StreamSettings(**fields)  # type: ignore[arg-type]


def test_streams_without_record_version_or_id_are_refused() -> None:
    check_stream_for_files(_stream())
    with pytest.raises(ConfigError, match="versioned by the Kafka offset"):
        check_stream_for_files(_stream(version_field=None))
    with pytest.raises(ConfigError, match="Kafka key"):
        check_stream_for_files(_stream(id_field=None))
