"""A document the transform accepts always fits a bulk request on its own."""

from __future__ import annotations

import pytest

from ingest.errors import ConfigError
from ingest.settings import BULK_ACTION_OVERHEAD_BYTES, parse_settings

MIB = 1024 * 1024


def _settings(max_document_bytes: int | None, max_bulk_bytes: int | None) -> object:
    stream = {"name": "orders", "topic": "orders", "subject": "orders", "alias": "orders"}
    if max_document_bytes is not None:
        stream["max_document_bytes"] = max_document_bytes  # type: ignore[assignment]
    search = {"max_bulk_bytes": max_bulk_bytes} if max_bulk_bytes is not None else {}
    return parse_settings({"search": search, "streams": [stream]})


def test_the_defaults_fit() -> None:
    """Out of the box, the largest accepted document leaves room for its action line."""
    settings = _settings(None, None)
    stream = settings.streams[0]  # type: ignore[attr-defined]
    bulk = settings.search.max_bulk_bytes  # type: ignore[attr-defined]
    assert stream.max_document_bytes <= bulk - BULK_ACTION_OVERHEAD_BYTES


@pytest.mark.parametrize(
    ("document", "bulk"),
    [(10 * MIB, None), (4 * MIB, 4 * MIB), (4 * MIB - BULK_ACTION_OVERHEAD_BYTES + 1, 4 * MIB)],
)
def test_a_document_limit_over_the_bulk_limit_is_one_config_line(
    document: int, bulk: int | None
) -> None:
    """Otherwise a document passing the transform would be refused again by the sink."""
    with pytest.raises(ConfigError, match="max_document_bytes") as info:
        _settings(document, bulk)
    assert "\n" not in str(info.value)


def test_a_document_limit_just_inside_is_accepted() -> None:
    settings = _settings(4 * MIB - BULK_ACTION_OVERHEAD_BYTES, 4 * MIB)
    assert settings.streams[0].max_document_bytes == 4 * MIB - BULK_ACTION_OVERHEAD_BYTES  # type: ignore[attr-defined]
