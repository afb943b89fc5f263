"""Expansion bombs: limits on what one record may render, on both paths and in the pipeline.

Items that take no input bytes (nulls, empty records) let a few bytes announce millions of
array items: 63 bytes once rendered a 100 MB document. Two limits stop that:

- the items of all arrays and maps of one record share one budget
  (``MAX_ITEMS_PER_RECORD``): over it, the record is refused while decoding (stage decode);
- the rendered document is at most the stream's ``max_document_bytes``: over it, the record
  is refused where the Python path renders it, after the transform (stage transform). The
  transcoder stops writing near the limit and leaves such a record to the Python path.
"""

from __future__ import annotations

import _testcapi
import io
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.avro.codec import AvroCodec, frame
from ingest.avro.reader import MAX_ITEMS_PER_RECORD, ReadFailure
from ingest.errors import ConfigError, DecodeError, TransformError
from ingest.pipeline.batch import Batch
from ingest.pipeline.process import BatchWriter
from ingest.pipeline.wiring import processor_for
from ingest.settings import StreamSettings, parse_settings
from ingest.types import RawRecord
from tests.unit.test_pipeline import FakeLedger, FakeSink
from tests.unit.test_transcode import PROPERTY, Paths, encoded, one_field, raw, zigzag
from tests.unit.test_transcode_evolution import catalog_of

NULLS = {"type": "array", "items": "null"}
#: 19 blocks of a million nulls: 63 bytes framed, 95 MB of "null," once rendered.
BOMB = zigzag(1_000_000) * 19 + zigzag(0)


def limited(paths: Paths, limit: int) -> Paths:
    """``paths`` for a stream whose documents may hold ``limit`` bytes."""
    settings = paths.transformer.stream.model_copy(update={"max_document_bytes": limit})
    return Paths(paths.parsed, settings)


# ------------------------------------------------------------------------- items


def test_the_63_byte_bomb_is_refused_by_both_paths_at_its_second_block() -> None:
    paths = one_field(NULLS)
    assert len(frame(7, BOMB)) == 63
    fast, slow = raw(paths, BOMB)
    assert fast is None
    assert isinstance(slow, ReadFailure)
    assert "x: the record's arrays and maps hold more than 1,000,000 items" in str(slow)
    assert slow.offset <= 5 + 2 * 3 + 3  # stopped at the second block, not after the 19th


def test_the_bomb_is_a_decode_dead_letter_whose_reason_names_the_limit() -> None:
    schema = {"type": "record", "name": "B", "fields": [{"name": "x", "type": NULLS}]}
    codec = AvroCodec(catalog_of(schema), "s", decimals_as_float=True)
    with pytest.raises(DecodeError) as info:
        codec.decode(frame(11, BOMB))
    assert info.value.stage == "decode"
    assert "more than 1,000,000 items (the per-record limit)" in str(info.value)


@pytest.mark.parametrize(("extra", "accepted"), [(0, True), (1, False)])
def test_nested_arrays_and_maps_draw_on_one_budget(extra: int, accepted: bool) -> None:
    """Two array items, each a map of one entry holding an array of nulls: every item of
    all three levels counts, so the record holds exactly the limit, or one item more."""
    paths = one_field({"type": "array", "items": {"type": "map", "values": NULLS}})
    inner = (MAX_ITEMS_PER_RECORD - 4) // 2  # 2 array items + 2 map entries + the nulls

    def entry(nulls: int) -> bytes:
        return zigzag(1) + zigzag(1) + b"k" + zigzag(nulls) + zigzag(0) + zigzag(0)

    fast, slow = raw(paths, zigzag(2) + entry(inner) + entry(inner + extra) + zigzag(0))
    if accepted:
        assert fast is not None and fast == slow
        assert len(slow[2]["x"][1]["k"]) == inner
    else:
        assert fast is None
        assert isinstance(slow, ReadFailure) and "x[][]: " in str(slow)


# ------------------------------------------------------------------ document size


def string_doc(size: int, fill: str) -> bytes:
    """Avro for one string field rendering as a document of exactly ``size`` bytes,
    ``{"x":"..."}``, the string made of ``fill`` (whose JSON form may be longer)."""
    unit = len(orjson.dumps(fill)) - 2
    count, rest = divmod(size - 8, unit)
    text = fill * count + "a" * rest
    assert len(orjson.dumps({"x": text})) == size
    data = text.encode()
    return zigzag(len(data)) + data


@pytest.mark.parametrize("limit", [1024, 4095, 4096, 4097, 100_000])
@pytest.mark.parametrize("fill", ["a", "\n", "\x00", "é"])
def test_a_document_at_the_limit_passes_and_one_byte_more_is_refused(limit: int, fill: str) -> None:
    paths = limited(one_field("string"), limit)
    fast, slow = raw(paths, string_doc(limit, fill))
    assert fast is not None and fast == slow
    fast, slow = raw(paths, string_doc(limit + 1, fill))
    assert fast is None
    assert isinstance(slow, TransformError)
    assert f"rendered document is {limit + 1:,} bytes, over max_document_bytes ({limit:,})" in (
        str(slow)
    )


@PROPERTY
@given(case=encoded(), slack=st.integers(-80, 80))
def test_the_size_limit_is_exact_on_both_paths(
    case: tuple[Paths, bytes, bytes | None, int], slack: int
) -> None:
    """Whatever the document holds (timestamps reserve more than they write), the
    transcoder takes it exactly when the Python path does, with the limit near its size."""
    paths, value, key, offset = case
    parts = paths.native.transcode(value, key, offset)  # byte-identical to the Python path's
    if parts is None:  # an unusable id or version: the agreement properties cover it
        return
    limit = max(1, len(parts[2]) + slack)
    paths = limited(paths, limit)
    fast = paths.fast(value, key, offset)
    try:
        expected = paths.slow(value, key, offset)
    except TransformError as exc:
        assert slack < 0 and "max_document_bytes" in str(exc)
        assert fast is None, "the transcoder took a document over the limit"
        return
    assert slack >= 0
    assert fast is not None, "the transcoder refused a document within the limit"
    assert fast == expected


# --------------------------------------------------------------------- memory


def test_memory_running_out_in_the_transcoder_is_a_refusal_not_an_exception() -> None:
    """Every allocation fails during the call: the transcoder gives the record to the
    Python path instead of raising MemoryError out of the pipeline's hot loop."""
    paths = one_field("string")
    value = frame(7, string_doc(50_000, "a"))  # beyond the 4 KiB stack buffer: it must grow
    assert paths.native.transcode(value, b"k", 0) is not None
    _testcapi.set_nomemory(0)  # every allocation from now on fails...
    try:
        got = paths.native.transcode(value, b"k", 0)
    finally:
        _testcapi.remove_mem_hooks()  # ...until this
    assert got is None


# ------------------------------------------------------------------ in the pipeline

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Doc",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "v", "type": "long"},
        {"name": "text", "type": "string"},
        {"name": "nulls", "type": NULLS},
    ],
}
STREAM = StreamSettings(
    name="s",
    topic="t",
    subject="s",
    alias="a",
    id_field="id",
    version_field="v",
    max_document_bytes=4096,
)


def doc(doc_id: str, text: str = "", nulls: int = 0) -> bytes:
    out = io.BytesIO()
    record = {"id": doc_id, "v": 1, "text": text, "nulls": [None] * nulls}
    fastavro.schemaless_writer(out, fastavro.parse_schema(SCHEMA, named_schemas={}), record)
    return frame(11, out.getvalue())


def test_bombs_and_oversized_documents_are_dead_letters_and_the_batch_goes_on() -> None:
    """On the fast path, as the daemon runs it: the bomb is dead-lettered at decode, the
    document over max_document_bytes at transform, the records around them are indexed,
    and the flush commits every offset with both dead letters."""
    codec = AvroCodec(catalog_of(SCHEMA), "s", decimals_as_float=True)
    processor = processor_for(STREAM, codec)
    assert processor.fast_path_on
    bomb = doc("b")[:-1] + BOMB  # the empty array (its 0 count) replaced by the bomb
    values = [doc("a"), bomb, doc("c", nulls=700), doc("d", text="x" * 5000), doc("e")]
    batch = Batch()
    processor.process([RawRecord("t", 0, i, b"k", v) for i, v in enumerate(values)], batch, 0.0)

    assert [a.doc_id for a in batch.actions] == ["a", "c", "e"]
    assert [(d.record.offset, d.stage) for d in batch.dead_letters] == [
        (1, "decode"),
        (3, "transform"),
    ]
    assert "more than 1,000,000 items" in batch.dead_letters[0].reason
    assert "over max_document_bytes (4,096)" in batch.dead_letters[1].reason
    assert batch.dead_letters[0].record.value == bomb

    sink, ledger = FakeSink(), FakeLedger()
    outcome = BatchWriter(STREAM, sink, ledger).flush(batch, ["a-v1"], [("t", 0, 5)])
    assert outcome.indexed == 3 and outcome.dead_letters == {"decode": 1, "transform": 1}
    offsets, dead, _ = ledger.commits[0]
    assert offsets == [("t", 0, 5)] and len(dead) == 2


# ------------------------------------------------------------------------ config


@pytest.mark.parametrize("limit", [0, -1, 1023, 100 * 1024 * 1024 + 1, "10MB"])
def test_a_nonsense_document_limit_is_one_config_error_line(limit: Any) -> None:
    raw_stream = {"name": "s", "topic": "t", "subject": "s", "alias": "a"}
    assert parse_settings({"streams": [raw_stream]}).streams[0].max_document_bytes == 8 * 2**20
    with pytest.raises(ConfigError, match="max_document_bytes") as info:
        parse_settings({"streams": [dict(raw_stream, max_document_bytes=limit)]})
    assert "\n" not in str(info.value)
