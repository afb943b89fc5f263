"""Luigi task identity and parameters: what names a chunk, and that no secret is a parameter."""

from __future__ import annotations

from collections.abc import Iterator

import luigi
import luigi.configuration
import pytest

from backfill.tasks import AvroFileChunk, ChunkTask, KafkaOffsetChunk, KafkaTimeChunk
from ingest.settings import is_secret_key


def _time_chunk(**kw: object) -> KafkaTimeChunk:
    fields: dict[str, object] = {
        "stream": "orders",
        "partition": 1,
        "since": "2026-01-01T00:00:00Z",
        "until": "2026-01-01T01:00:00Z",
    }
    fields.update(kw)
    return KafkaTimeChunk(**fields)


def test_a_time_chunk_is_named_by_stream_partition_window_and_index_only() -> None:
    """Offset hints, run id and config path do not change which ledger row it is."""
    base = _time_chunk()
    same = _time_chunk(
        since="2026-01-01T01:00:00+01:00",
        until="2026-01-01T02:00:00+01:00",
    )
    assert same.since == "2026-01-01T00:00:00Z"
    assert _time_chunk(start_offset=5, end_offset=9, run_id=3, config="/etc/x.toml").task_id == (
        base.task_id
    )
    assert _time_chunk(since="2026-01-01T00:00:00+00:00").task_id == base.task_id
    assert _time_chunk(index="orders-v2").task_id != base.task_id
    assert _time_chunk(partition=2).task_id != base.task_id
    assert _time_chunk(until="2026-01-01T02:00:00Z").task_id != base.task_id
    assert base.label() == "orders p1 2026-01-01T00:00:00Z..2026-01-01T01:00:00Z"
    assert _time_chunk(start_offset=5, end_offset=9).size == 4


def test_offset_and_file_chunks_are_named_by_their_ranges_and_content() -> None:
    a = KafkaOffsetChunk(stream="orders", partition=0, start_offset=0, end_offset=10)
    assert (
        a.task_id
        != KafkaOffsetChunk(stream="orders", partition=0, start_offset=0, end_offset=11).task_id
    )
    f = AvroFileChunk(stream="orders", path="/lake/p.avro", sha256="a" * 64, records=3)
    assert f.task_id == AvroFileChunk(stream="orders", path="/lake/p.avro", sha256="a" * 64).task_id
    assert f.task_id != AvroFileChunk(stream="orders", path="/lake/p.avro", sha256="b" * 64).task_id
    assert f.size == 3 and a.size == 10


@pytest.mark.parametrize("task_cls", [KafkaTimeChunk, KafkaOffsetChunk, AvroFileChunk])
def test_no_parameter_can_hold_a_secret(task_cls: type[ChunkTask]) -> None:
    """Parameters are shown by luigid and stored in its history: none is credential-like."""
    names = [name for name, _ in task_cls.get_params()]
    assert "stream" in names and "config" in names
    assert not [n for n in names if is_secret_key(n) or n in {"dsn", "url", "settings"}]


@pytest.fixture
def luigi_backfill_section() -> Iterator[luigi.configuration.LuigiConfigParser]:
    cfg = luigi.configuration.get_config()
    had = cfg.has_section("backfill")
    if not had:
        cfg.add_section("backfill")
    yield cfg
    if had:
        cfg.remove_option("backfill", "retries")
    else:
        cfg.remove_section("backfill")


def test_retry_count_comes_from_the_backfill_section(
    luigi_backfill_section: luigi.configuration.LuigiConfigParser,
) -> None:
    luigi_backfill_section.set("backfill", "retries", "3")
    assert _time_chunk().retry_count == 4
