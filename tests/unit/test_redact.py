"""Redactor: secrets never survive into a rendered log line, whichever way they got in."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from ingest.logging import MASK, Redactor

SECRET = "s3cr3t-Pa55"


def run(redactor: Redactor, **event: Any) -> dict[str, Any]:
    return dict(redactor(None, "info", dict(event)))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        pytest.param("password", "hunter2", MASK, id="password"),
        pytest.param("sasl.password", "x", MASK, id="dotted"),
        pytest.param("api_key", "abc", MASK, id="api_key"),
        pytest.param("Bearer-Token", "abc", MASK, id="mixed-case-dash"),
        pytest.param("password", None, None, id="unset-stays-none"),
        pytest.param("password", "", "", id="empty-stays-empty"),
        pytest.param("client_secret", {"a": 1}, MASK, id="non-string-value"),
        pytest.param("docs", 12, 12, id="harmless-key"),
    ],
)
def test_secret_named_fields(key: str, value: Any, expected: Any) -> None:
    """Fields whose names look secret are masked whatever their value; others untouched."""
    assert run(Redactor(), event="e", **{key: value})[key] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "cannot connect to postgresql://ingest:pw0rd@db:5432/ingest",
            "cannot connect to postgresql://ingest:***@db:5432/ingest",
            id="url-dsn",
        ),
        pytest.param(
            "dsn host=db user=ingest password=pw0rd dbname=x",
            "dsn host=db user=ingest password=*** dbname=x",
            id="kv-dsn",
        ),
        pytest.param("postgresql://ingest@db/x", "postgresql://ingest@db/x", id="no-password"),
        pytest.param("mail me at a@b.c", "mail me at a@b.c", id="at-sign-only"),
    ],
)
def test_dsn_passwords_in_text(text: str, expected: str) -> None:
    """DSN passwords inside any text are masked even when the value is unknown."""
    out = run(Redactor(), event=text, error=text)
    assert out["event"] == expected
    assert out["error"] == expected


def test_known_secret_anywhere() -> None:
    """A known secret is masked in event, exception text and nested containers."""
    r = Redactor([SECRET, ""])
    out = run(
        r,
        event=f"login failed for {SECRET}",
        exception=f"Traceback ...\nAuthError: bad password '{SECRET}'",
        detail={"server": {"said": f"rejected {SECRET}"}, "n": 3},
        attempts=[f"{SECRET}!", "fine"],
        pair=("ok", SECRET),
        raw=f"x{SECRET}x".encode(),
    )
    assert SECRET not in repr(out)
    assert out["event"] == f"login failed for {MASK}"
    assert out["exception"].endswith(f"bad password '{MASK}'")
    assert out["detail"] == {"server": {"said": f"rejected {MASK}"}, "n": 3}
    assert out["attempts"] == [f"{MASK}!", "fine"]
    assert out["pair"] == ("ok", MASK)
    assert out["raw"] == f"x{MASK}x"


def test_escaped_and_url_encoded_forms() -> None:
    """A secret with special characters is found escaped (repr/JSON) and URL-encoded."""
    secret = 'p@ss"w\\rd/1'
    r = Redactor([secret])
    out = run(
        r,
        event=repr(secret),
        json_text=json.dumps({"pw": secret}),
        url="https://u:p%40ss%22w%5Crd%2F1@h/",
    )
    assert secret not in repr(out)
    for value in out.values():
        assert "p@ss" not in value and "p%40ss" not in value


def test_longer_secret_masked_whole() -> None:
    """When one secret contains another, the longer one is masked as a unit."""
    out = run(Redactor(["abc", "abcdef"]), event="x abcdef y")
    assert out["event"] == f"x {MASK} y"


def test_exception_objects_as_values() -> None:
    """An exception passed as a field is replaced by its redacted text only if it leaks."""
    leaking = ConnectionError(f"auth failed: {SECRET}")
    clean = ConnectionError("refused")
    out = run(Redactor([SECRET]), error=leaking, other=clean)
    assert out["error"] == f"auth failed: {MASK}"
    assert out["other"] is clean


def test_unformatted_exc_info_is_replaced_when_it_leaks() -> None:
    """exc_info holding a secret becomes a redacted ``exception`` string; clean ones stay."""
    r = Redactor([SECRET])
    try:
        raise RuntimeError(f"password {SECRET} rejected")
    except RuntimeError as exc:
        leaking = exc
    out = run(r, event="flush_failed", exc_info=leaking)
    assert "exc_info" not in out
    assert "RuntimeError: password *** rejected" in out["exception"]
    assert SECRET not in out["exception"]

    clean = ValueError("nothing here")
    out = run(r, event="flush_failed", exc_info=clean)
    assert out["exc_info"] is clean
    assert "exception" not in out


def test_exc_info_true_uses_current_exception() -> None:
    """exc_info=True is resolved against the exception being handled."""
    r = Redactor([SECRET])
    try:
        raise OSError(f"cannot open {SECRET}")
    except OSError:
        out = run(r, event="boom", exc_info=True)
    assert "exc_info" not in out
    assert f"cannot open {MASK}" in out["exception"]


def test_clean_events_are_unchanged() -> None:
    """Nothing to redact: every value is the same object as before."""
    nested = {"a": [1, "b", ("c",)]}
    obj = object()
    event = {"event": "batch_flushed", "docs": 10, "took_s": 0.2, "nested": nested, "o": obj}
    out = Redactor([SECRET])(None, "info", dict(event))
    assert out == event
    assert out["nested"] is nested
    assert out["o"] is obj


def test_underscore_plumbing_keys_keep_objects() -> None:
    """structlog/stdlib plumbing such as ``_record`` keeps its object type."""

    class Record:
        def __str__(self) -> str:
            return SECRET

    rec = Record()
    out = run(Redactor([SECRET]), event="x", _record=rec, _from_structlog=False)
    assert out["_record"] is rec


def test_deep_and_cyclic_structures_do_not_hang() -> None:
    """Very deep or self-referencing containers are checked via their text, never recursed."""
    cyc: list[Any] = ["x", SECRET]
    cyc.append(cyc)
    deep: Any = SECRET
    for _ in range(20):
        deep = [deep]
    out = run(Redactor([SECRET]), event="e", cyc=cyc, deep=deep)
    assert SECRET not in str(out["cyc"])
    assert SECRET not in str(out["deep"])


def test_add_secrets_later() -> None:
    """add_secrets masks values learned after construction."""
    r = Redactor()
    assert run(r, event=SECRET)["event"] == SECRET
    r.add_secrets([SECRET])
    assert run(r, event=SECRET)["event"] == MASK


def test_broken_str_does_not_break_logging() -> None:
    """An object whose __str__ raises is passed through untouched."""

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    b = Broken()
    assert run(Redactor([SECRET]), event="e", b=b)["b"] is b


def test_in_a_structlog_pipeline() -> None:
    """Configured before the JSON renderer, no rendered line contains the secret."""
    buf = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(buf),
        processors=[
            structlog.processors.format_exc_info,
            Redactor([SECRET]),
            structlog.processors.JSONRenderer(),
        ],
        # Independent of any level filter an earlier test configured globally.
        wrapper_class=structlog.make_filtering_bound_logger(0),
    )
    logger.info("connecting", dsn=f"postgresql://u:{SECRET}@db/x", password=SECRET)
    try:
        raise ConnectionError(f"server said: bad password {SECRET}")
    except ConnectionError:
        logger.exception("connect_failed")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 2
    assert SECRET not in buf.getvalue()
    assert lines[0]["dsn"] == "postgresql://u:***@db/x"
    assert "bad password ***" in lines[1]["exception"]


def test_capture_logs_sees_redacted_fields() -> None:
    """With capture_logs the redactor's output is what the test sees."""
    with capture_logs(processors=[Redactor([SECRET])]) as logs:
        structlog.get_logger().warning("retrying", reason=f"401 for {SECRET}")
    assert logs == [{"event": "retrying", "reason": f"401 for {MASK}", "log_level": "warning"}]
