"""The bulk sink: write index/delete actions with external versions and account for every item.

:class:`BulkSink` builds the ``_bulk`` NDJSON itself (never ``helpers.bulk``, which skips later
chunks once one fails — docs/design.md#bulk-bodies), sends it through
:class:`~ingest.search.client.SearchClient` and classifies **every** item of the response
(docs/design.md#item-results):

===========================================  ===============================================
item answer                                  outcome
===========================================  ===============================================
200 / 201                                    indexed / deleted
409 (``version_conflict_engine_exception``)  conflict: an equal or newer version is already
                                             there, so this write is already applied
delete 404 ``result: not_found``             deleted: nothing to delete is success
other 4xx (``mapper_parsing_exception``,     rejected, returned with the server's reason for
``strict_dynamic_mapping_exception``...)     the caller to dead-letter
429 / 5xx                                    retried — only these items — with backoff
404 with an error, 401, 403                  :class:`~ingest.search.client.SearchRequestError`: the
                                             target index is missing or forbidden, which is
                                             no fault of the record
===========================================  ===============================================

A request the server refuses as too large (HTTP 413) is split in halves and each half sent
again; a single action whose request alone is refused — or whose lines alone are over
``max_request_bytes`` (``search.max_bulk_bytes``), checked before sending — is rejected with
a reason naming the sizes, so one oversized document is dead-lettered instead of stalling
the stream at every restart.

A whole request that fails transiently (connection error, timeout, 429, 5xx) is resent with the
items still pending. All retries share one budget (:mod:`ingest.retry`); when it is spent
:class:`~ingest.errors.RetriesExhausted` is raised and the caller must treat nothing of the
batch as written — resending it later is safe because every write carries an external version.

Counts are per *item*, i.e. per action and target: writing one action to two targets (the
dual write of a reindex) counts twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import structlog

from ingest.errors import TransientError
from ingest.retry import OnRetry, RetryEvent, retrying
from ingest.search.client import (
    SearchAuthError,
    SearchNotFoundError,
    SearchRequestError,
    error_details,
    is_transient_status,
)
from ingest.types import IndexAction

log = structlog.get_logger(__name__)

#: Elasticsearch's guidance is 5-15 MB per bulk request.
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
#: HTTP status of a request body over the server's (or a gateway's) size limit.
TOO_LARGE = 413
#: Longer ids fail the whole bulk request's validation, so they are rejected up front.
MAX_ID_BYTES = 512
MAX_VERSION = 2**63 - 1


class BulkClient(Protocol):
    """The one call the sink needs; :class:`~ingest.search.client.SearchClient` provides it."""

    def bulk(self, body: bytes) -> dict[str, Any]: ...


@dataclass(slots=True)
class SinkResult:
    """What one :meth:`BulkSink.write` did, counted per item (action x target)."""

    indexed: int = 0
    deleted: int = 0
    #: 409s: an equal or newer external version was already there (already applied).
    conflicts: int = 0
    #: Actions the server (or the sink's own checks) refused, with the reason, in input
    #: order, one entry per action even when several targets refused it.
    rejected: list[tuple[IndexAction, str]] = field(default_factory=list)
    #: Backoff sleeps taken during this write.
    retries: int = 0
    took_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """The classification of one bulk response item."""

    kind: str  # "indexed" | "deleted" | "conflict" | "rejected" | "retry"
    reason: str = ""


_INDEXED = ItemOutcome("indexed")
_DELETED = ItemOutcome("deleted")
_CONFLICT = ItemOutcome("conflict")


def classify_item(op: str, item: Mapping[str, Any]) -> ItemOutcome:
    """Classify one item of a bulk response (the value under its ``index``/``delete`` key).

    Raises :class:`SearchRequestError` for answers that are the target's fault, not the
    record's (missing index, no permission): dead-lettering every record would hide them.
    """
    status = int(item.get("status", 0))
    error = item.get("error")
    if 200 <= status < 300 and not error:
        return _DELETED if op == "delete" else _INDEXED
    if status == 409:
        return _CONFLICT
    if op == "delete" and status == 404 and not error:
        return _DELETED
    error_type, reason = error_details(error)
    text = f"{error_type}: {reason}" if reason else error_type
    if is_transient_status(status) or status == 0:
        return ItemOutcome("retry", f"HTTP {status} {text}")
    path = "/" + str(item.get("_index", "")) + "/_bulk"
    if status == 404:
        raise SearchNotFoundError(
            "POST", path, status=status, error_type=error_type, reason=reason, body=item
        )
    if status in (401, 403):
        raise SearchAuthError(
            "POST", path, status=status, error_type=error_type, reason=reason, body=item
        )
    return ItemOutcome("rejected", text)


def check_action(action: IndexAction) -> str | None:
    """Why the server would refuse ``action`` as a whole request, or ``None`` if it is fine.

    Some mistakes (an over-long id, a negative version) fail the validation of the *entire*
    bulk request, so they are caught here and rejected for this action alone.
    """
    if action.op not in ("index", "delete"):
        return f"unknown bulk operation {action.op!r}"
    if not action.doc_id:
        return "document id is empty"
    if len(action.doc_id.encode()) > MAX_ID_BYTES:
        return f"document id is longer than {MAX_ID_BYTES} bytes"
    if not 0 <= action.version <= MAX_VERSION:
        return f"external version {action.version} is outside 0..{MAX_VERSION}"
    return _check_body(action) if action.op == "index" else None


def _check_body(action: IndexAction) -> str | None:
    body = action.body.rstrip(b"\n") if action.body else b""
    if not body:
        return "document body is empty"
    if b"\n" in body:
        return "document body is not single-line JSON"
    return None


def action_lines(action: IndexAction, target: str, pipeline: str | None = None) -> bytes:
    """The NDJSON lines of one action for one target: header, and the body for an index.

    The header names the action's ``routing`` when it has one, and ``pipeline`` (an ingest
    pipeline) on index actions when given.
    """
    meta: dict[str, object] = {
        "_index": target,
        "_id": action.doc_id,
        "version": action.version,
        "version_type": "external",
    }
    if action.routing is not None:
        meta["routing"] = action.routing
    if pipeline is not None and action.op == "index":
        meta["pipeline"] = pipeline
    header = orjson.dumps({action.op: meta})
    if action.op == "delete":
        return header + b"\n"
    assert action.body is not None  # check_action ran first
    return header + b"\n" + action.body.rstrip(b"\n") + b"\n"


@dataclass(slots=True)
class _Item:
    action_no: int
    target: str
    lines: bytes


class _Write:
    """The state of one :meth:`BulkSink.write` across its attempts."""

    def __init__(self, actions: Sequence[IndexAction]) -> None:
        self.actions = actions
        self.items: list[_Item] = []
        self.pending: list[int] = []
        self.result = SinkResult()
        self.reasons: dict[int, list[str]] = {}

    def reject(self, action_no: int, reason: str) -> None:
        self.reasons.setdefault(action_no, []).append(reason)


class BulkSink:
    """Write batches of :class:`IndexAction` to one or more indices or aliases.

    ``write`` blocks until every item is indexed, deleted, a conflict or rejected — retrying
    transient failures for up to ``max_retry_s`` — or raises. Several threads may write at
    once (requests in flight): each call keeps its state in its own ``_Write``; only the
    informative ``retries_total`` and ``retrying_since`` are shared, last writer wins.
    """

    def __init__(
        self,
        client: BulkClient,
        *,
        max_retry_s: float,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        on_retry: OnRetry | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pipeline: str | None = None,
        what: str = "bulk write",
    ) -> None:
        if max_request_bytes < 1024:
            raise ValueError("max_request_bytes must be at least 1024")
        self._client = client
        #: Ingest pipeline named on every index action (the stream's ``pipeline``).
        self._pipeline = pipeline
        self._max_retry_s = max_retry_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._max_request_bytes = max_request_bytes
        self._on_retry = on_retry
        self._sleep = sleep
        #: Names the writes in retry log events (e.g. which stream's).
        self._what = what
        #: Backoff sleeps over the sink's lifetime (for a metrics counter).
        self.retries_total = 0
        #: ``time.monotonic()`` of the first failed attempt of the write in progress, or
        #: ``None`` when no write is retrying — readiness reports "in retry since".
        self.retrying_since: float | None = None

    def write(self, actions: Sequence[IndexAction], targets: Sequence[str]) -> SinkResult:
        """Write every action to every target; see the module docstring for the outcomes.

        Raises :class:`~ingest.errors.RetriesExhausted` when transient failures outlast the
        budget and :class:`~ingest.search.client.SearchRequestError` when a request or a target is
        refused for a reason retrying cannot fix. In both cases nothing is considered written.
        """
        if not targets:
            raise ValueError("write needs at least one target index or alias")
        started = time.monotonic()
        state = _Write(actions)
        limit = self._max_request_bytes
        for no, action in enumerate(actions):
            problem = check_action(action)
            if problem is not None:
                state.reject(no, problem)
                continue
            for target in targets:
                lines = action_lines(action, target, self._pipeline)
                if len(lines) > limit:
                    state.reject(
                        no,
                        f"bulk action of {len(lines)} bytes is over the bulk request limit of"
                        f" {limit} bytes (search.max_bulk_bytes) [index {target}]",
                    )
                    break
                state.items.append(_Item(no, target, lines))
        state.pending = list(range(len(state.items)))

        def on_retry(event: RetryEvent) -> None:
            state.result.retries += 1
            self.retries_total += 1
            if self.retrying_since is None:
                self.retrying_since = event.started_at
            if self._on_retry is not None:
                self._on_retry(event)

        try:
            for attempt in retrying(
                max_total_s=self._max_retry_s,
                initial_s=self._retry_initial_s,
                max_s=self._retry_max_s,
                on_retry=on_retry,
                what=self._what,
                sleep=self._sleep,
            ):
                with attempt:
                    self._attempt(state)
        finally:
            self.retrying_since = None

        result = state.result
        result.rejected = [
            (actions[no], "; ".join(reasons)) for no, reasons in sorted(state.reasons.items())
        ]
        result.took_s = time.monotonic() - started
        if result.rejected:
            log.warning(
                "bulk_items_rejected",
                count=len(result.rejected),
                first_id=result.rejected[0][0].doc_id,
                first_reason=result.rejected[0][1],
            )
        return result

    def _attempt(self, state: _Write) -> None:
        """Send every pending item once; raise :class:`TransientError` if any remain."""
        still: list[int] = []
        retry_reason = ""
        chunks = self._chunks(state)
        while chunks:
            chunk = chunks.pop(0)
            body = b"".join(state.items[k].lines for k in chunk)
            try:
                response = self._client.bulk(body)
            except TransientError:
                state.pending = still + chunk + [k for c in chunks for k in c]
                raise
            except SearchRequestError as exc:
                if exc.status != TOO_LARGE:
                    raise
                chunks[:0] = self._split_too_large(state, chunk, len(body))
                continue
            for k, reason in self._absorb(state, chunk, response):
                still.append(k)
                retry_reason = reason
        state.pending = still
        if still:
            raise TransientError(f"{len(still)} bulk items to retry, last: {retry_reason}")

    def _split_too_large(self, state: _Write, chunk: list[int], size: int) -> list[list[int]]:
        """The halves of a request refused with 413, to send instead; a single item refused
        alone is rejected (its action is dead-lettered) and nothing is sent again."""
        if len(chunk) > 1:
            half = len(chunk) // 2
            log.warning(
                "bulk_request_too_large",
                request_bytes=size,
                items=len(chunk),
                max_bulk_bytes=self._max_request_bytes,
            )
            return [chunk[:half], chunk[half:]]
        item = state.items[chunk[0]]
        state.reject(
            item.action_no,
            f"HTTP {TOO_LARGE}: the search server refused a bulk request of {size} bytes"
            f" holding only this document ({len(item.lines)} bytes) as too large"
            f" [index {item.target}]",
        )
        return []

    def _chunks(self, state: _Write) -> list[list[int]]:
        """Pending items grouped into requests of at most ``max_request_bytes``."""
        chunks: list[list[int]] = []
        current: list[int] = []
        size = 0
        for k in state.pending:
            n = len(state.items[k].lines)
            if current and size + n > self._max_request_bytes:
                chunks.append(current)
                current, size = [], 0
            current.append(k)
            size += n
        if current:
            chunks.append(current)
        return chunks

    def _absorb(
        self, state: _Write, chunk: list[int], response: Mapping[str, Any]
    ) -> list[tuple[int, str]]:
        """Count a bulk response's items; return the (item, reason) pairs to retry."""
        items = response.get("items")
        if not isinstance(items, list) or len(items) != len(chunk):
            got = len(items) if isinstance(items, list) else "no"
            raise SearchRequestError(
                "POST",
                "/_bulk",
                status=200,
                error_type="bad_bulk_response",
                reason=f"{got} items for {len(chunk)} sent",
            )
        result = state.result
        if not response.get("errors"):
            for k in chunk:
                if state.actions[state.items[k].action_no].op == "delete":
                    result.deleted += 1
                else:
                    result.indexed += 1
            return []
        retry: list[tuple[int, str]] = []
        for k, entry in zip(chunk, items, strict=True):
            item = state.items[k]
            op = state.actions[item.action_no].op
            outcome = classify_item(op, entry.get(op) or next(iter(entry.values()), {}))
            if outcome.kind == "indexed":
                result.indexed += 1
            elif outcome.kind == "deleted":
                result.deleted += 1
            elif outcome.kind == "conflict":
                result.conflicts += 1
            elif outcome.kind == "rejected":
                state.reject(item.action_no, f"{outcome.reason} [index {item.target}]")
            else:
                retry.append((k, outcome.reason))
        return retry
