"""Pure parts of the search module: kind detection, error translation, compat media types."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.errors import TransientError
from ingest.search.client import (
    SearchAuthError,
    SearchNotFoundError,
    SearchRequestError,
    _compat_media_types,
    _es_compat_major,
    _request_error,
    detect_kind,
    error_details,
)
from tests.support.compat_proxy import plain_media_type


@pytest.mark.parametrize(
    ("info", "kind"),
    [
        pytest.param({"version": {"distribution": "opensearch", "number": "2.19.0"}}, "opensearch"),
        pytest.param({"version": {"number": "8.15.0", "build_flavor": "default"}}, "elasticsearch"),
        pytest.param({"version": {"number": "9.1.0"}}, "elasticsearch"),
        pytest.param({"tagline": "You Know, for Search"}, "elasticsearch"),
    ],
)
def test_detect_kind(info: dict[str, Any], kind: str) -> None:
    assert detect_kind(info) == kind


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        pytest.param(400, SearchRequestError, id="400"),
        pytest.param(401, SearchAuthError, id="401"),
        pytest.param(403, SearchAuthError, id="403"),
        pytest.param(404, SearchNotFoundError, id="404"),
        pytest.param(409, SearchRequestError, id="409"),
        pytest.param(429, TransientError, id="429"),
        pytest.param(500, TransientError, id="500"),
        pytest.param(503, TransientError, id="503"),
    ],
)
def test_status_translation(status: int, cls: type[Exception]) -> None:
    """429 and 5xx are transient; other 4xx are typed request errors carrying the type."""
    body = {"error": {"type": "some_exception", "reason": "why"}, "status": status}
    error = _request_error("PUT", "/idx", status, body)
    assert type(error) is cls
    assert "some_exception" in str(error)
    if isinstance(error, SearchRequestError):
        assert (error.status, error.error_type, error.reason) == (status, "some_exception", "why")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"error": {"type": "a", "reason": "b"}}, ("a", "b"), id="body"),
        pytest.param({"type": "a", "reason": "b"}, ("a", "b"), id="item-error"),
        pytest.param(
            {"type": "a", "reason": "b", "caused_by": {"type": "c", "reason": "d"}},
            ("a", "b (caused by c: d)"),
            id="caused-by",
        ),
        pytest.param({"error": "alias [x] missing", "status": 404}, ("error", "alias [x] missing")),
        pytest.param("plain text", ("error", "plain text"), id="text"),
        pytest.param(None, ("error", ""), id="none"),
    ],
)
def test_error_details(body: object, expected: tuple[str, str]) -> None:
    assert error_details(body) == expected


@pytest.mark.parametrize(
    ("info", "major"),
    [
        pytest.param({"version": {"number": "8.17.1"}}, 8, id="es8-server"),
        pytest.param({"version": {"number": "9.1.0"}}, None, id="same-major"),
        pytest.param({"version": {"number": "7.17.0"}}, None, id="too-old"),
        pytest.param({"version": {"number": "3.8.0", "distribution": "opensearch"}}, None),
    ],
)
def test_es_compat_major(info: dict[str, Any], major: int | None) -> None:
    """The 9.x client names an 8.x server's major in its media types, else its own."""
    assert _es_compat_major(info) == major


def test_compat_media_types() -> None:
    assert _compat_media_types(None) == ("application/json", "application/x-ndjson")
    assert _compat_media_types(8) == (
        "application/vnd.elasticsearch+json; compatible-with=8",
        "application/vnd.elasticsearch+x-ndjson; compatible-with=8",
    )


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        ("application/vnd.elasticsearch+json; compatible-with=9", "application/json"),
        ("application/vnd.elasticsearch+x-ndjson; compatible-with=8", "application/x-ndjson"),
        ("application/vnd.elasticsearch+json;compatible-with=9", "application/json"),
        ("application/json", "application/json"),
        ("text/plain", "text/plain"),
    ],
)
def test_compat_proxy_rewrites_only_vendor_media_types(value: str, plain: str) -> None:
    assert plain_media_type(value) == plain
