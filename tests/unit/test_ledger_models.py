"""The ledger's stored forms: headers, handoff offsets, run parameters and counters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ingest.ledger.models import (
    DeadLetterRow,
    check_counters,
    decode_handoff,
    decode_headers,
    encode_handoff,
    encode_headers,
    scrub_params,
)
from ingest.types import RawRecord


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([], id="none"),
        pytest.param([("a", b"\x00\xff")], id="binary"),
        pytest.param([("a", b"1"), ("a", b"2")], id="repeated-name-order-kept"),
        pytest.param([("empty", b""), ("null", None)], id="empty-and-null"),
    ],
)
def test_headers_round_trip(headers: list[tuple[str, bytes | None]]) -> None:
    assert decode_headers(encode_headers(headers)) == headers


def test_headers_are_json_lists_of_name_and_base64() -> None:
    assert encode_headers([("h", b"\x00\x01"), ("n", None)]) == [["h", "AAE="], ["n", None]]
    assert decode_headers(None) == []


def test_handoff_keys_are_partitions() -> None:
    assert encode_handoff({0: 10, 3: 0}) == {"0": 10, "3": 0}
    assert decode_handoff({"0": 10, "3": 0}) == {0: 10, 3: 0}
    assert decode_handoff({}) == {}


@pytest.mark.parametrize("bad", [{-1: 5}, {0: -5}])
def test_handoff_refuses_negative_values(bad: dict[int, int]) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        encode_handoff(bad)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({"range": "0-10"}, {"range": "0-10"}, id="plain-kept"),
        pytest.param({"db_password": "x"}, {"db_password": "***"}, id="secret-key"),
        pytest.param(
            {"nested": {"api_key": "k", "n": 1}},
            {"nested": {"api_key": "***", "n": 1}},
            id="nested",
        ),
        pytest.param(
            {"target": "postgresql://u:pw@h/db"},
            {"target": "postgresql://u:***@h/db"},
            id="dsn-value",
        ),
        pytest.param(
            {"hosts": ["password=pw host=h"]}, {"hosts": ["password=*** host=h"]}, id="list"
        ),
        pytest.param({"token": None, "n": 2}, {"token": "***", "n": 2}, id="secret-null"),
    ],
)
def test_scrub_params_never_keeps_secrets(params: dict[str, Any], expected: dict[str, Any]) -> None:
    assert scrub_params(params) == expected


@pytest.mark.parametrize("bad", [{"n": 1.5}, {"n": True}, {"n": "3"}])
def test_counters_must_be_ints(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be an int"):
        check_counters(bad)


def test_counters_accept_ints_and_nothing() -> None:
    assert check_counters({"a": 1, "b": -2}) == {"a": 1, "b": -2}
    assert check_counters(None) == {}


def test_dead_letter_row_gives_back_the_raw_record() -> None:
    now = datetime.now(UTC)
    row = DeadLetterRow(
        id=1,
        stream="orders",
        source="file:abc",
        topic="archive/2024.avro",
        partition=0,
        offset=17,
        key=None,
        value=b"\x00v",
        headers=[("h", b"1"), ("n", None)],
        timestamp_ms=5,
        stage="decode",
        reason="bad",
        first_seen_at=now,
        last_seen_at=now,
        attempts=1,
        replayed_at=None,
    )
    assert row.to_raw_record() == RawRecord(
        topic="archive/2024.avro",
        partition=0,
        offset=17,
        key=None,
        value=b"\x00v",
        timestamp_ms=5,
        headers=[("h", b"1"), ("n", b"")],
        source="file:abc",
    )
