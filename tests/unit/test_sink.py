"""BulkSink against a fake bulk client: body building, item classification, retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from ingest.errors import RetriesExhausted, TransientError
from ingest.retry import RetryEvent
from ingest.search.bulk import BulkSink, ItemOutcome, action_lines, check_action, classify_item
from ingest.search.client import SearchAuthError, SearchNotFoundError, SearchRequestError
from ingest.types import IndexAction, RawRecord

# Tiny backoff: retries sleep a millisecond or two, budgets are tens of milliseconds.
FAST = {"retry_initial_s": 0.001, "retry_max_s": 0.002}


def record(offset: int = 0) -> RawRecord:
    return RawRecord(topic="t", partition=0, offset=offset, key=None, value=b"")


def index(doc_id: str, version: int = 1, body: bytes | None = None) -> IndexAction:
    if body is None:
        body = orjson.dumps({"id": doc_id})
    return IndexAction("index", doc_id, version, body, record(version))


def delete(doc_id: str, version: int = 1) -> IndexAction:
    return IndexAction("delete", doc_id, version, None, record(version))


Answer = tuple[int, dict[str, Any] | None] | None
#: decide(op, meta, call_no) -> (status, error) for one item, or None for 201/200.
Decide = Callable[[str, dict[str, Any], int], Answer]


class FakeBulkClient:
    """Parses the NDJSON it gets and answers each item as ``decide`` says."""

    def __init__(
        self,
        decide: Decide | None = None,
        *,
        fail_calls: dict[int, Exception] | None = None,
    ) -> None:
        self.decide = decide or (lambda op, meta, call: None)
        self.fail_calls = fail_calls or {}
        self.bodies: list[bytes] = []
        self.requests: list[list[tuple[str, dict[str, Any], bytes | None]]] = []

    def bulk(self, body: bytes) -> dict[str, Any]:
        call = len(self.bodies)
        self.bodies.append(body)
        lines = body.split(b"\n")
        assert lines[-1] == b"", "a bulk body must end with a newline"
        parsed: list[tuple[str, dict[str, Any], bytes | None]] = []
        i = 0
        while i < len(lines) - 1:
            ((op, meta),) = orjson.loads(lines[i]).items()
            doc = None
            if op == "index":
                i += 1
                doc = lines[i]
            parsed.append((op, meta, doc))
            i += 1
        self.requests.append(parsed)
        if call in self.fail_calls:
            raise self.fail_calls[call]
        items = []
        errors = False
        for op, meta, _ in parsed:
            answer = self.decide(op, meta, call)
            item: dict[str, Any] = {"_index": meta["_index"], "_id": meta["_id"]}
            if answer is None:
                item["status"] = 200 if op == "delete" else 201
            else:
                item["status"], error = answer
                if error is not None:
                    item["error"] = error
                    errors = True
                elif item["status"] >= 300 and not (op == "delete" and item["status"] == 404):
                    errors = True
                if op == "delete" and item["status"] == 404 and error is None:
                    item["result"] = "not_found"
            items.append({op: item})
        return {"took": 1, "errors": errors, "items": items}

    def ids(self, call: int) -> list[str]:
        return [meta["_id"] for _, meta, _ in self.requests[call]]


def err(kind: str, reason: str = "boom") -> dict[str, Any]:
    return {"type": kind, "reason": reason}


CONFLICT = (409, err("version_conflict_engine_exception", "current version [5] is higher"))
MAPPING = (400, err("mapper_parsing_exception", "failed to parse field [qty] of type [long]"))
STRICT = (400, err("strict_dynamic_mapping_exception", "dynamic introduction of [x]"))
BUSY = (429, err("es_rejected_execution_exception", "queue full"))
UNAVAILABLE = (503, err("unavailable_shards_exception", "primary shard is not active"))


def test_body_is_built_with_external_versions_and_bodies_verbatim() -> None:
    """Each action becomes a header with _index/_id/version/external and the body bytes as-is."""
    raw = b'{"b": 1,   "a": [1, 2]}'  # not orjson's canonical form: must not be re-serialized
    client = FakeBulkClient()
    sink = BulkSink(client, max_retry_s=1, **FAST)
    result = sink.write([index("k1", 7, raw), delete("k2", 9)], ["orders"])
    assert client.bodies == [
        b'{"index":{"_index":"orders","_id":"k1","version":7,"version_type":"external"}}\n'
        + raw
        + b"\n"
        b'{"delete":{"_index":"orders","_id":"k2","version":9,"version_type":"external"}}\n'
    ]
    assert (result.indexed, result.deleted, result.conflicts, result.rejected) == (1, 1, 0, [])
    assert result.retries == 0
    assert result.took_s >= 0


def test_action_lines_escape_ids() -> None:
    """Ids with quotes and unicode are JSON-escaped in the header, never spliced in raw."""
    lines = action_lines(index('a"b\\ü', 1, b"{}"), "idx")
    header = orjson.loads(lines.split(b"\n")[0])
    assert header["index"]["_id"] == 'a"b\\ü'


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        pytest.param({}, (3, 1, 0, []), id="all-ok"),
        pytest.param({"a": CONFLICT, "d": CONFLICT}, (2, 0, 2, []), id="409-is-applied"),
        pytest.param(
            {"b": MAPPING, "c": STRICT},
            (1, 1, 0, ["b", "c"]),
            id="400-is-rejected",
        ),
        pytest.param(
            {"a": CONFLICT, "b": MAPPING, "d": (404, None)},
            (1, 1, 1, ["b"]),
            id="mix-with-delete-not-found",
        ),
    ],
)
def test_item_results_are_counted(answers: dict[str, Answer], expected: tuple[Any, ...]) -> None:
    """Every item is classified: indexed, deleted, conflict (already applied) or rejected."""
    client = FakeBulkClient(lambda op, meta, call: answers.get(meta["_id"]))
    sink = BulkSink(client, max_retry_s=1, **FAST)
    result = sink.write([index("a"), index("b"), index("c"), delete("d")], ["idx"])
    got = (result.indexed, result.deleted, result.conflicts, [a.doc_id for a, _ in result.rejected])
    assert got == expected
    assert len(client.bodies) == 1, "nothing transient, so exactly one request"


def test_rejected_reason_names_type_reason_cause_and_target() -> None:
    """The dead-letter reason carries the server's error type, reason, cause and the index."""
    error = err("mapper_parsing_exception", "failed to parse field [qty] of type [long]")
    error["caused_by"] = err("illegal_argument_exception", 'For input string: "x"')
    client = FakeBulkClient(lambda op, meta, call: (400, error))
    result = BulkSink(client, max_retry_s=1, **FAST).write([index("a")], ["orders_v2"])
    ((action, reason),) = result.rejected
    assert action.doc_id == "a"
    assert reason == (
        "mapper_parsing_exception: failed to parse field [qty] of type [long] "
        '(caused by illegal_argument_exception: For input string: "x") [index orders_v2]'
    )


def test_item_429_then_ok_resends_only_failed_items() -> None:
    """Items answered 429/503 are retried alone, after a backoff, until they succeed."""
    client = FakeBulkClient(
        lambda op, meta, call: {"b": BUSY, "d": UNAVAILABLE}.get(meta["_id"]) if call == 0 else None
    )
    events: list[RetryEvent] = []
    sink = BulkSink(client, max_retry_s=5, on_retry=events.append, **FAST)
    result = sink.write([index("a"), index("b"), index("c"), delete("d")], ["idx"])
    assert client.ids(0) == ["a", "b", "c", "d"]
    assert client.ids(1) == ["b", "d"]
    assert len(client.bodies) == 2
    assert (result.indexed, result.deleted, result.retries) == (3, 1, 1)
    assert [e.attempt for e in events] == [1]
    assert isinstance(events[0].error, TransientError)
    assert sink.retries_total == 1
    assert sink.retrying_since is None, "cleared once the write succeeded"


def test_readiness_sees_retrying_since_during_a_retry() -> None:
    """While a write backs off, ``retrying_since`` holds the first failed attempt's time."""
    seen: list[float | None] = []
    sink: BulkSink

    def on_retry(event: RetryEvent) -> None:
        seen.append(sink.retrying_since)

    client = FakeBulkClient(lambda op, meta, call: BUSY if call < 2 else None)
    sink = BulkSink(client, max_retry_s=5, on_retry=on_retry, **FAST)
    sink.write([index("a")], ["idx"])
    assert len(seen) == 2
    assert seen[0] is not None
    assert seen[0] == seen[1], "the start of the retry episode, not of each attempt"
    assert sink.retrying_since is None


def test_budget_exhausted_raises_retries_exhausted() -> None:
    """An item that keeps failing 429 makes the write fail once the retry budget is spent."""
    client = FakeBulkClient(lambda op, meta, call: BUSY if meta["_id"] == "b" else None)
    sink = BulkSink(client, max_retry_s=0.03, **FAST)
    with pytest.raises(RetriesExhausted) as info:
        sink.write([index("a"), index("b")], ["idx"])
    assert isinstance(info.value.__cause__, TransientError)
    assert "es_rejected_execution_exception" in str(info.value)
    assert len(client.bodies) >= 2
    assert all(client.ids(n) == ["b"] for n in range(1, len(client.bodies)))
    assert sink.retrying_since is None


def test_whole_request_transient_failure_is_retried_whole() -> None:
    """A connection error or 5xx on the request resends every item of that request."""
    client = FakeBulkClient(fail_calls={0: TransientError("POST /_bulk: HTTP 503")})
    sink = BulkSink(client, max_retry_s=5, **FAST)
    result = sink.write([index("a"), delete("b")], ["idx"])
    assert client.ids(0) == client.ids(1) == ["a", "b"]
    assert (result.indexed, result.deleted, result.retries) == (1, 1, 1)


def test_whole_request_refusal_is_not_retried() -> None:
    """A 4xx on the whole request (bad credentials, malformed body) raises at once."""
    refused = SearchAuthError(
        "POST", "/_bulk", status=403, error_type="security_exception", reason="no"
    )
    client = FakeBulkClient(fail_calls={0: refused})
    with pytest.raises(SearchAuthError):
        BulkSink(client, max_retry_s=5, **FAST).write([index("a")], ["idx"])
    assert len(client.bodies) == 1


def test_missing_target_index_is_an_error_not_a_rejection() -> None:
    """Item 404 index_not_found means the target is wrong: raise, do not dead-letter records."""
    client = FakeBulkClient(
        lambda op, meta, call: (404, err("index_not_found_exception", "no such index [idx]"))
    )
    with pytest.raises(SearchNotFoundError) as info:
        BulkSink(client, max_retry_s=5, **FAST).write([index("a")], ["idx"])
    assert info.value.error_type == "index_not_found_exception"


def test_dual_write_sends_each_action_to_each_target() -> None:
    """With two targets every action is written twice, and counts are per item."""
    client = FakeBulkClient()
    result = BulkSink(client, max_retry_s=5, **FAST).write(
        [index("a"), delete("b")], ["orders_v1", "orders_v2"]
    )
    assert [(meta["_index"], meta["_id"]) for _, meta, _ in client.requests[0]] == [
        ("orders_v1", "a"),
        ("orders_v2", "a"),
        ("orders_v1", "b"),
        ("orders_v2", "b"),
    ]
    assert (result.indexed, result.deleted) == (2, 2)


def test_rejected_by_one_target_only_is_still_reported_once() -> None:
    """A document the new index refuses is reported, once per action, naming that index."""

    def decide(op: str, meta: dict[str, Any], call: int) -> Answer:
        if meta["_index"] == "v2" and meta["_id"] == "a":
            return MAPPING
        if meta["_id"] == "b":
            return STRICT
        return None

    client = FakeBulkClient(decide)
    result = BulkSink(client, max_retry_s=5, **FAST).write([index("a"), index("b")], ["v1", "v2"])
    assert result.indexed == 1
    assert [(a.doc_id, r.count("[index ")) for a, r in result.rejected] == [("a", 1), ("b", 2)]
    assert "[index v2]" in result.rejected[0][1]
    assert "[index v1]" in result.rejected[1][1]
    assert "[index v2]" in result.rejected[1][1]


def test_large_batches_are_split_by_request_size() -> None:
    """Bodies over max_request_bytes go out as several requests, each item exactly once."""
    client = FakeBulkClient()
    actions = [index(f"id{n}", n, orjson.dumps({"pad": "x" * 300})) for n in range(10)]
    result = BulkSink(client, max_retry_s=5, max_request_bytes=1024, **FAST).write(actions, ["i"])
    assert len(client.bodies) > 1
    assert all(len(b) <= 1024 for b in client.bodies)
    assert [i for n in range(len(client.bodies)) for i in client.ids(n)] == [
        f"id{n}" for n in range(10)
    ]
    assert result.indexed == 10


def test_oversized_single_item_is_rejected_and_the_rest_still_split() -> None:
    """An item bigger than the request limit alone is rejected (to be dead-lettered) with
    both sizes, never sent: the server would refuse it and stall the stream on 413s."""
    client = FakeBulkClient()
    big = index("big", 1, orjson.dumps({"pad": "x" * 5000}))
    result = BulkSink(client, max_retry_s=5, max_request_bytes=1024, **FAST).write(
        [index("a"), big, index("b")], ["i"]
    )
    assert [client.ids(n) for n in range(len(client.bodies))] == [["a", "b"]]
    assert [a.doc_id for a, _ in result.rejected] == ["big"]
    size = len(action_lines(big, "i"))
    assert f"{size} bytes is over the bulk request limit of 1024 bytes" in result.rejected[0][1]


def test_transient_failure_mid_split_keeps_later_chunks_pending() -> None:
    """If the 2nd of 3 requests fails, the retry sends the 2nd and 3rd, not the 1st again."""
    client = FakeBulkClient(fail_calls={1: TransientError("timeout")})
    actions = [index(f"id{n}", n, orjson.dumps({"pad": "x" * 600})) for n in range(3)]
    result = BulkSink(client, max_retry_s=5, max_request_bytes=1024, **FAST).write(actions, ["i"])
    sent = [client.ids(n) for n in range(len(client.bodies))]
    assert sent[:2] == [["id0"], ["id1"]]
    assert sorted(i for ids in sent[2:] for i in ids) == ["id1", "id2"]
    assert result.indexed == 3


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        pytest.param(index(""), "document id is empty", id="empty-id"),
        pytest.param(index("x" * 513), "longer than 512 bytes", id="long-id"),
        pytest.param(index("a", -1), "outside 0..", id="negative-version"),
        pytest.param(index("a", 2**63), "outside 0..", id="huge-version"),
        pytest.param(index("a", 1, b""), "body is empty", id="empty-body"),
        pytest.param(index("a", 1, b'{"a":\n1}'), "not single-line", id="newline-body"),
        pytest.param(IndexAction("upsert", "a", 1, b"{}", record()), "unknown", id="bad-op"),  # type: ignore[arg-type]
    ],
)
def test_actions_the_server_would_refuse_wholesale_are_rejected_locally(
    action: IndexAction, problem: str
) -> None:
    """Mistakes that fail a whole bulk request are rejected for that action alone."""
    reason = check_action(action)
    assert reason is not None
    assert problem in reason
    client = FakeBulkClient()
    result = BulkSink(client, max_retry_s=5, **FAST).write([action, index("ok")], ["i"])
    assert [(a.doc_id, r) for a, r in result.rejected] == [(action.doc_id, reason)]
    assert client.ids(0) == ["ok"]


def test_trailing_newline_in_body_is_tolerated() -> None:
    """A body ending in one newline is fine; it is not doubled in the request."""
    client = FakeBulkClient()
    BulkSink(client, max_retry_s=5, **FAST).write([index("a", 1, b'{"a":1}\n')], ["i"])
    assert client.bodies[0].endswith(b'\n{"a":1}\n')


def test_nothing_to_write_sends_nothing() -> None:
    """An empty batch makes no request."""
    client = FakeBulkClient()
    result = BulkSink(client, max_retry_s=5, **FAST).write([], ["i"])
    assert client.bodies == []
    assert (result.indexed, result.rejected) == (0, [])


def test_no_target_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="target"):
        BulkSink(FakeBulkClient(), max_retry_s=5).write([index("a")], [])


def test_response_with_wrong_item_count_is_an_error() -> None:
    """A response that does not answer every item cannot be trusted: raise, commit nothing."""

    class Short(FakeBulkClient):
        def bulk(self, body: bytes) -> dict[str, Any]:
            response = super().bulk(body)
            response["items"] = response["items"][:-1]
            return response

    with pytest.raises(SearchRequestError, match="1 items for 2 sent"):
        BulkSink(Short(), max_retry_s=5, **FAST).write([index("a"), index("b")], ["i"])


@pytest.mark.parametrize(
    ("op", "item", "expected"),
    [
        pytest.param("index", {"status": 201}, ItemOutcome("indexed"), id="created"),
        pytest.param("index", {"status": 200}, ItemOutcome("indexed"), id="updated"),
        pytest.param("delete", {"status": 200}, ItemOutcome("deleted"), id="deleted"),
        pytest.param(
            "delete", {"status": 404, "result": "not_found"}, ItemOutcome("deleted"), id="del-404"
        ),
        pytest.param(
            "index", {"status": 409, "error": CONFLICT[1]}, ItemOutcome("conflict"), id="409"
        ),
        pytest.param(
            "delete", {"status": 409, "error": CONFLICT[1]}, ItemOutcome("conflict"), id="del-409"
        ),
        pytest.param(
            "index",
            {"status": 400, "error": err("illegal_argument_exception", "bad")},
            ItemOutcome("rejected", "illegal_argument_exception: bad"),
            id="400",
        ),
        pytest.param(
            "index",
            {"status": 429, "error": err("es_rejected_execution_exception", "full")},
            ItemOutcome("retry", "HTTP 429 es_rejected_execution_exception: full"),
            id="429",
        ),
        pytest.param(
            "index",
            {"status": 500, "error": err("exception", "x")},
            ItemOutcome("retry", "HTTP 500 exception: x"),
            id="500",
        ),
        pytest.param(
            "index",
            {"status": 503, "error": err("unavailable_shards_exception", "y")},
            ItemOutcome("retry", "HTTP 503 unavailable_shards_exception: y"),
            id="503",
        ),
    ],
)
def test_classify_item(op: str, item: dict[str, Any], expected: ItemOutcome) -> None:
    assert classify_item(op, item) == expected


@pytest.mark.parametrize(
    ("status", "error_cls"),
    [
        pytest.param(404, SearchNotFoundError, id="index-missing"),
        pytest.param(401, SearchAuthError, id="unauthenticated"),
        pytest.param(403, SearchAuthError, id="forbidden"),
    ],
)
def test_classify_item_target_errors_raise(status: int, error_cls: type[Exception]) -> None:
    with pytest.raises(error_cls):
        classify_item("index", {"status": status, "_index": "i", "error": err("x", "y")})


class TooLargeClient(FakeBulkClient):
    """A server with a request size limit: bodies over ``limit`` bytes get HTTP 413."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.refused: list[int] = []

    def bulk(self, body: bytes) -> dict[str, Any]:
        if len(body) > self.limit:
            self.refused.append(len(body))
            raise SearchRequestError(
                "POST", "/_bulk", status=413, error_type="error", reason="Request Entity Too Large"
            )
        return super().bulk(body)


def test_a_413_splits_the_request_and_rejects_only_the_document_too_large_alone() -> None:
    """A 413 halves the request until it fits; the one document refused alone is rejected
    with the sizes in its reason, every other document is indexed."""
    big = index("big", body=orjson.dumps({"pad": "x" * 3000}))
    actions = [index(f"d{n}") for n in range(6)]
    actions.insert(3, big)
    client = TooLargeClient(limit=2000)
    result = BulkSink(client, max_retry_s=1, **FAST).write(actions, ["idx"])
    assert result.indexed == 6
    assert [a.doc_id for a, _ in result.rejected] == ["big"]
    reason = result.rejected[0][1]
    assert "413" in reason and "bytes" in reason and str(len(action_lines(big, "idx"))) in reason
    assert sorted(i for call in range(len(client.requests)) for i in client.ids(call)) == sorted(
        f"d{n}" for n in range(6)
    )
    assert client.refused  # the server really answered 413


def test_other_request_errors_still_raise() -> None:
    """Only 413 is split; a 400 for the whole request stays the caller's problem."""

    class Refusing(FakeBulkClient):
        def bulk(self, body: bytes) -> dict[str, Any]:
            raise SearchRequestError("POST", "/_bulk", status=400, error_type="x", reason="no")

    with pytest.raises(SearchRequestError):
        BulkSink(Refusing(), max_retry_s=1, **FAST).write([index("a")], ["idx"])
