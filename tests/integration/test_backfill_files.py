"""Archive-file backfills: Avro object container files generated here, the real stack.

Files are written with fastavro in a data-lake layout (``date=YYYY-MM-DD/part-0.avro``),
one with the older ``orders`` v1 schema to check that records are read as the stream's
current schema.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest

from ingest.avro.catalog import SchemaCatalog
from ingest.avro.codec import AvroCodec
from ingest.dev.samples import sample_orders, to_version
from ingest.settings import Settings
from tests.integration.backfill_support import dead_letters, run_backfill
from tests.support.daemon import index_versions

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _write(path: Path, version: int, records: list[dict[str, Any]]) -> str:
    schema = next(v for v in SchemaCatalog.load(SCHEMAS).versions("orders") if v.version == version)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fo:
        fastavro.writer(fo, schema.schema, [to_version(r, version) for r in records])
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _summary(output: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+) done, (\d+) skipped \(already done\), (\d+) failed", output)
    assert m, output[-3000:]
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def test_files_are_indexed_once_and_a_changed_file_runs_again(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Two files indexed (bad record dead-lettered with its file and index); a re-run skips
    both; after one file changes, only that file runs."""
    settings = make_settings(partitions=None)
    lake = tmp_path / "lake" / "orders"
    day1 = list(itertools.islice(sample_orders(71), 30))
    day1[7] = dict(day1[7], order_id="")  # no document id: a dead letter, not a failure
    sha1 = _write(lake / "date=2026-01-01" / "part-0.avro", 2, day1)
    day2 = list(itertools.islice(sample_orders(72), 20))
    _write(lake / "date=2026-01-02" / "part-0.avro", 1, day2)
    args = ("files", "--stream", "orders", "--path", str(tmp_path / "lake"))

    code, out = run_backfill(*args, settings=settings, workdir=tmp_path)
    assert code == 0, out[-4000:]
    assert _summary(out) == (2, 0, 0)
    valid = {o["order_id"] for o in day1 + day2 if o["order_id"]}
    assert set(index_versions(settings)) == valid
    [dead] = dead_letters(settings)
    assert dead.source == f"file:{sha1}"
    assert dead.topic == str((lake / "date=2026-01-01" / "part-0.avro").resolve())
    assert (dead.partition, dead.offset, dead.stage) == (0, 7, "transform")
    codec = AvroCodec(SchemaCatalog.load(SCHEMAS), "orders")
    assert codec.decode(dead.value or b"")["customer_id"] == day1[7]["customer_id"]

    code, out = run_backfill(*args, settings=settings, workdir=tmp_path, name="again")
    assert code == 0, out[-4000:]
    assert _summary(out) == (0, 2, 0)

    day2_changed = list(itertools.islice(sample_orders(72), 25))  # 5 more orders
    _write(lake / "date=2026-01-02" / "part-0.avro", 1, day2_changed)
    glob_args = ("files", "--stream", "orders", "--path", str(lake / "**" / "*.avro"))
    code, out = run_backfill(*glob_args, settings=settings, workdir=tmp_path, name="changed")
    assert code == 0, out[-4000:]
    assert _summary(out) == (1, 1, 0)
    assert set(index_versions(settings)) == valid | {o["order_id"] for o in day2_changed}


def test_a_stream_versioned_by_offset_is_refused(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """File records have no offset, so a stream without a version field is refused (exit 2)."""
    settings = make_settings(partitions=None, version_field=None)
    _write(tmp_path / "lake" / "part-0.avro", 2, list(itertools.islice(sample_orders(1), 3)))
    code, out = run_backfill(
        "files", "--stream", "orders", "--path", str(tmp_path / "lake"),
        settings=settings, workdir=tmp_path,
    )  # fmt: skip
    assert code == 2, out[-3000:]
    assert "versioned by the Kafka offset" in out
    assert "Traceback" not in out


def test_an_unreadable_file_fails_its_chunk_and_the_others_finish(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """One file in the set is not an Avro container and one is cut short: both chunks fail
    with their reasons (listed, exit 1), the good file is indexed, and a re-run retries
    only the failed ones."""
    settings = make_settings(partitions=None)
    lake = tmp_path / "lake"
    good = list(itertools.islice(sample_orders(81), 15))
    _write(lake / "date=2026-01-01" / "part-0.avro", 2, good)
    garbage = lake / "date=2026-01-02" / "part-0.avro"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"this is a CSV export, not an Avro object container file\n")
    cut = lake / "date=2026-01-03" / "part-0.avro"
    _write(cut, 2, list(itertools.islice(sample_orders(82), 40)))
    cut.write_bytes(cut.read_bytes()[:20])  # a copy interrupted inside the header
    args = ("files", "--stream", "orders", "--path", str(lake), "--retries", "0")

    code, out = run_backfill(*args, settings=settings, workdir=tmp_path)
    assert code == 1, out[-4000:]
    assert _summary(out) == (1, 0, 2)
    failed = out[out.index("failed chunks:") :].splitlines()[1:]
    assert any(str(garbage.resolve()) in line and "can not read it" in line for line in failed)
    assert any(str(cut.resolve()) in line for line in failed), failed
    assert set(index_versions(settings)) == {o["order_id"] for o in good}

    code, out = run_backfill(*args, settings=settings, workdir=tmp_path, name="again")
    assert code == 1, out[-4000:]
    assert _summary(out) == (0, 1, 2)
