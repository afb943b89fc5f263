"""The search cluster: which kind it is, and a thin client over both client libraries.

:func:`connect_search` asks ``GET /`` for ``version.distribution`` (unless the settings force a
kind) and returns a :class:`SearchClient` backed by the official ``elasticsearch`` client for
Elasticsearch and by ``opensearch-py`` for OpenSearch (a version check must not lock
either out, docs/design.md#cluster-kind). Every method is one REST call sent through the
library's ``perform_request`` — the two REST APIs are identical for what the ingester needs, so the
paths are written once and the libraries contribute connection pooling, authentication, TLS
and their error classes. Bulk bodies are posted as the caller's bytes, never re-serialized.

Errors are translated at this boundary and nowhere else:

- connection failures, timeouts, HTTP 429 and 5xx -> :class:`~ingest.errors.TransientError`
  (the caller retries with :mod:`ingest.retry`);
- other 4xx -> :class:`SearchRequestError` carrying ``status``, ``error_type`` and
  ``reason``; 404 is the subclass :class:`SearchNotFoundError`, 401/403 :class:`SearchAuthError`.

Client-level retries are switched off: the one retry policy lives in :mod:`ingest.retry`.
Several hosts are the libraries' node pools, configured in :mod:`ingest.search.hosts`; TLS, the
proxy, gzip and the per-node bookkeeping live in :mod:`ingest.search.transport`.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol
from urllib.parse import quote

import orjson
import structlog

from ingest.credentials import CredentialError
from ingest.errors import ConfigError, IngestError, TransientError
from ingest.search.auth import SearchAuth
from ingest.search.hosts import (
    DEAD_HOST_BACKOFF_S,
    MAX_DEAD_HOST_BACKOFF_S,
    OPENSEARCH_TIMEOUT_CUTOFF,
    HostStats,
    host_label,
)
from ingest.search.transport import (
    OPENSEARCH_DEAD_STATUSES,
    ProxyRoute,
    elasticsearch_node_class,
    opensearch_connection_class,
    tls_context,
)
from ingest.settings import SearchSettings, redact_dsn

log = structlog.get_logger(__name__)

Kind = Literal["elasticsearch", "opensearch"]

JSON = "application/json"
NDJSON = "application/x-ndjson"

#: ``connect_search`` gives up on an unreachable server after at most this long.
PROBE_TIMEOUT_S = 10.0
#: Scroll contexts live this long between pages of :meth:`SearchClient.scan`.
SCROLL_KEEPALIVE = "2m"


class SearchRequestError(IngestError):
    """The server refused a request for a reason a retry cannot fix (4xx other than 429).

    ``error_type`` is the server's ``error.type`` (``resource_already_exists_exception``,
    ``index_not_found_exception``...) so callers branch on data, not on message text.
    """

    def __init__(
        self,
        method: str,
        path: str,
        *,
        status: int,
        error_type: str,
        reason: str,
        body: object = None,
    ) -> None:
        super().__init__(f"{method} {path}: HTTP {status} {error_type}: {reason}")
        self.method = method
        self.path = path
        self.status = status
        self.error_type = error_type
        self.reason = reason
        self.body = body


class SearchNotFoundError(SearchRequestError):
    """HTTP 404: the index, alias or document does not exist."""


class SearchAuthError(SearchRequestError):
    """HTTP 401/403: the credentials are missing, wrong or not allowed to do this."""


def error_details(body: object) -> tuple[str, str]:
    """``(type, reason)`` of an Elasticsearch/OpenSearch error body or bulk item error.

    The first ``caused_by`` is appended to the reason because the outer reason is often
    generic ("failed to parse field [x]") and the cause says what was wrong with the value.
    """
    error = body.get("error", body) if isinstance(body, Mapping) else body
    if isinstance(error, Mapping):
        error_type = str(error.get("type", "error"))
        reason = str(error.get("reason", ""))
        cause = error.get("caused_by")
        if isinstance(cause, Mapping) and cause.get("reason"):
            reason = f"{reason} (caused by {cause.get('type', 'error')}: {cause['reason']})"
        return error_type, reason
    if error is None:
        return "error", ""
    return "error", str(error)


def is_transient_status(status: int) -> bool:
    """429 and every 5xx are worth retrying; any other status is an answer."""
    return status == 429 or status >= 500


def _request_error(method: str, path: str, status: int, body: object) -> IngestError:
    error_type, reason = error_details(body)
    if is_transient_status(status):
        return TransientError(f"{method} {path}: HTTP {status} {error_type}: {reason}")
    cls = SearchRequestError
    if status == 404:
        cls = SearchNotFoundError
    elif status in (401, 403):
        cls = SearchAuthError
    return cls(method, path, status=status, error_type=error_type, reason=reason, body=body)


class _Backend(Protocol):
    """One REST call through a client library, errors already translated."""

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        ndjson: bool = False,
        timeout_s: float | None = None,
    ) -> Any: ...

    def close(self) -> None: ...


class _ElasticsearchBackend:
    """The official ``elasticsearch`` client (8.x or 9.x)."""

    def __init__(
        self,
        settings: SearchSettings,
        compat_major: int | None,
        stats: HostStats,
        auth: SearchAuth,
    ) -> None:
        from elasticsearch import Elasticsearch
        from elasticsearch.serializer import OrjsonSerializer

        ssl_context = tls_context(settings)
        self._es = Elasticsearch(
            list(settings.urls),
            # orjson parses a 2,000-item bulk response several times faster than json
            serializers={JSON: OrjsonSerializer()},
            max_retries=0,
            retry_on_status=(),
            retry_on_timeout=False,
            request_timeout=settings.request_timeout_s,
            node_class=elasticsearch_node_class(
                stats, _proxy(settings, ssl_context), gzip_bulk=settings.compression == "gzip"
            ),
            dead_node_backoff_factor=DEAD_HOST_BACKOFF_S,
            max_dead_node_backoff=MAX_DEAD_HOST_BACKOFF_S,
            **_es_auth(settings, ssl_context),
        )
        self._json, self._ndjson = _compat_media_types(compat_major)
        self._auth = auth

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        ndjson: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        import elastic_transport
        import elasticsearch

        headers = {"accept": self._json}
        if body is not None:
            headers["content-type"] = self._ndjson if ndjson else self._json
        authorization = self._auth.header()
        if authorization is not None:
            headers["authorization"] = authorization
        client = self._es if timeout_s is None else self._es.options(request_timeout=timeout_s)
        try:
            resp = client.perform_request(method, path, params=params, headers=headers, body=body)
        except elasticsearch.ApiError as exc:
            raise _request_error(method, path, exc.meta.status, exc.body) from exc
        except elastic_transport.TransportError as exc:
            raise TransientError(f"{method} {path}: {_short(exc)}") from exc
        if method == "HEAD":
            return 200 <= resp.meta.status < 300
        return resp.body

    def close(self) -> None:
        self._es.close()


def _compat_media_types(compat_major: int | None) -> tuple[str, str]:
    """Media types the ``elasticsearch`` client should send.

    The client rewrites plain ``application/json`` into
    ``application/vnd.elasticsearch+json; compatible-with=<client major>``, which a server
    one major older refuses. Naming the server's major here (already in vendor form, so the
    client leaves it alone) lets the 9.x client talk to an 8.x cluster.
    """
    if compat_major is None:
        return JSON, NDJSON
    return (
        f"application/vnd.elasticsearch+json; compatible-with={compat_major}",
        f"application/vnd.elasticsearch+x-ndjson; compatible-with={compat_major}",
    )


def _proxy(settings: SearchSettings, ssl_context: Any) -> ProxyRoute | None:
    if settings.proxy_url is None:
        return None
    return ProxyRoute(settings.proxy_url.get_secret_value(), ssl_context)


def _es_auth(settings: SearchSettings, ssl_context: Any) -> dict[str, Any]:
    """TLS options; credentials are sent per request (:class:`SearchAuth`), so they rotate."""
    # verify_certs also sets urllib3's cert_reqs, which overrides the context's verify mode
    kw: dict[str, Any] = {"verify_certs": settings.verify_certs, "ssl_show_warn": False}
    if ssl_context is not None:
        kw["ssl_context"] = ssl_context
    return kw


def _orjson_loads_serializer() -> Any:
    from opensearchpy.exceptions import SerializationError
    from opensearchpy.serializer import JSONSerializer

    class OrjsonLoadsSerializer(JSONSerializer):
        """Parses responses with orjson (bulk responses are large); writes like the default."""

        def loads(self, s: str | bytes) -> Any:
            try:
                return orjson.loads(s)
            except orjson.JSONDecodeError as exc:
                raise SerializationError(s, exc) from exc

    return OrjsonLoadsSerializer


class _OpenSearchBackend:
    """``opensearch-py``; also used for the kind probe, since it checks no product header."""

    def __init__(
        self,
        settings: SearchSettings,
        stats: HostStats,
        auth: SearchAuth,
        urls: Sequence[str] | None = None,
    ) -> None:
        from opensearchpy import OpenSearch

        kw: dict[str, Any] = {}
        ssl_context = tls_context(settings)
        if ssl_context is not None:
            kw["ssl_context"] = ssl_context
        self._auth = auth
        self._os = OpenSearch(
            hosts=list(urls or settings.urls),
            serializer=_orjson_loads_serializer()(),
            # no client retries (max_retries=0): these only decide which failures rest a node
            max_retries=0,
            retry_on_status=OPENSEARCH_DEAD_STATUSES,
            retry_on_timeout=True,
            timeout=settings.request_timeout_s,
            connection_class=opensearch_connection_class(
                stats, _proxy(settings, ssl_context), gzip_bulk=settings.compression == "gzip"
            ),
            dead_timeout=DEAD_HOST_BACKOFF_S,
            timeout_cutoff=OPENSEARCH_TIMEOUT_CUTOFF,
            **kw,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        ndjson: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        import opensearchpy

        headers = {"content-type": NDJSON} if ndjson else {}
        authorization = self._auth.header()
        if authorization is not None:
            headers["authorization"] = authorization
        try:
            return self._os.transport.perform_request(
                method, path, params=params, body=body, headers=headers or None, timeout=timeout_s
            )
        except opensearchpy.ConnectionError as exc:
            raise TransientError(f"{method} {path}: {_short(exc)}") from exc
        except opensearchpy.TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else 503
            raise _request_error(method, path, status, exc.info) from exc
        except opensearchpy.SerializationError as exc:
            raise TransientError(f"{method} {path}: unreadable response: {exc}") from exc

    def close(self) -> None:
        self._os.close()


def _short(exc: BaseException) -> str:
    """A transport error without the client's repeated ``caused by`` chain."""
    return f"{type(exc).__name__}: " + str(exc).split(" caused by: ")[0]


def _index(name: str) -> str:
    """An index or alias name as a path segment (names are validated; ids are quoted)."""
    return quote(name, safe=",*")


class SearchClient:
    """The few REST calls the ingester makes, the same on Elasticsearch and OpenSearch.

    Every method blocks for one request (``scan`` for one per page) bounded by the
    configured request timeout, and raises the errors named in the module docstring.
    """

    def __init__(
        self,
        kind: Kind,
        backend: _Backend,
        url: str,
        hosts: HostStats | None = None,
        auth: SearchAuth | None = None,
    ) -> None:
        self.kind: Kind = kind
        self.url = url
        self._backend = backend
        self._auth = auth
        #: Each node's state and latency as the client sees them (for metrics).
        self.hosts = hosts if hosts is not None else HostStats([url])

    def __repr__(self) -> str:
        return f"SearchClient(kind={self.kind!r}, url={self.url!r})"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        ndjson: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """One raw REST call; the escape hatch for the rare call not wrapped below.

        A 401/403 re-reads the credentials; when that puts a different value in force the
        request is sent once more with it, else the :class:`SearchAuthError` stands.
        """
        try:
            return self._backend.request(
                method, path, params=params, body=body, ndjson=ndjson, timeout_s=timeout_s
            )
        except SearchAuthError as exc:
            if self._auth is None or not self._auth.reload():
                raise
            log.warning(
                "search_credentials_replaced",
                scheme=self._auth.scheme,
                status=exc.status,
                method=method,
                path=path,
            )
        return self._backend.request(
            method, path, params=params, body=body, ndjson=ndjson, timeout_s=timeout_s
        )

    def info(self) -> dict[str, Any]:
        """``GET /``: cluster name and version."""
        result: dict[str, Any] = self.request("GET", "/")
        return result

    def bulk(self, body: bytes) -> dict[str, Any]:
        """Post a pre-built NDJSON body to ``_bulk`` as is; returns the parsed response."""
        result: dict[str, Any] = self.request("POST", "/_bulk", body=body, ndjson=True)
        return result

    def create_index(self, name: str, body: Mapping[str, Any]) -> None:
        """Create ``name`` with ``{"settings":..., "mappings":..., "aliases":...}``.

        An existing index raises :class:`SearchRequestError` with ``error_type``
        ``resource_already_exists_exception``.
        """
        self.request("PUT", "/" + _index(name), body=dict(body))

    def delete_index(self, name: str, *, missing_ok: bool = False) -> None:
        """Delete an index; :class:`SearchNotFoundError` if missing unless ``missing_ok``."""
        try:
            self.request("DELETE", "/" + _index(name))
        except SearchNotFoundError:
            if not missing_ok:
                raise

    def index_exists(self, name: str) -> bool:
        """True if ``name`` is an index or an alias."""
        return bool(self.request("HEAD", "/" + _index(name)))

    def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        """Apply ``add``/``remove``/``remove_index`` actions in one atomic ``_aliases`` call."""
        self.request("POST", "/_aliases", body={"actions": actions})

    def get_alias(self, alias: str) -> dict[str, dict[str, Any]]:
        """Physical index -> that index's properties for ``alias`` (``is_write_index``...).

        Empty when the alias does not exist.
        """
        try:
            body = self.request("GET", "/_alias/" + _index(alias))
        except SearchNotFoundError:
            return {}
        return {
            index: dict(entry.get("aliases", {}).get(alias) or {})
            for index, entry in body.items()
            if alias in entry.get("aliases", {})
        }

    def count(self, index: str) -> int:
        """Number of documents visible to search (refresh first to see recent writes)."""
        return int(self.request("GET", "/" + _index(index) + "/_count")["count"])

    def refresh(self, index: str) -> None:
        """Make every write so far visible to search."""
        self.request("POST", "/" + _index(index) + "/_refresh")

    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None:
        """Update dynamic settings, e.g. ``{"index": {"refresh_interval": "-1"}}``.

        A ``None`` value resets a setting to its default.
        """
        self.request("PUT", "/" + _index(index) + "/_settings", body=dict(settings))

    def get_settings(self, index: str) -> dict[str, Any]:
        """The settings of the one index ``index`` names (``{"index": {...}}``)."""
        settings: dict[str, Any] = self._single(
            index, self.request("GET", "/" + _index(index) + "/_settings")
        )["settings"]
        return settings

    def get_mapping(self, index: str) -> dict[str, Any]:
        """The mapping of the one index ``index`` names (``{"dynamic":..,"properties":..}``)."""
        mapping: dict[str, Any] = self._single(
            index, self.request("GET", "/" + _index(index) + "/_mapping")
        )["mappings"]
        return mapping

    def put_mapping(self, index: str, mapping: Mapping[str, Any]) -> None:
        """Add fields to a mapping (changing an existing field's type fails with 400)."""
        self.request("PUT", "/" + _index(index) + "/_mapping", body=dict(mapping))

    def get(self, index: str, doc_id: str) -> dict[str, Any] | None:
        """The document with its ``_version`` and ``_source``, or ``None`` if absent.

        A missing *index* still raises :class:`SearchNotFoundError`.
        """
        try:
            doc: dict[str, Any] = self.request(
                "GET", "/" + _index(index) + "/_doc/" + quote(doc_id, safe="")
            )
        except SearchNotFoundError as exc:
            if isinstance(exc.body, Mapping) and exc.body.get("found") is False:
                return None
            raise
        return doc if doc.get("found", True) else None

    def scan(
        self,
        index: str,
        *,
        size: int = 1000,
        query: Mapping[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every matching hit (``_index``, ``_id``, ``_version``, ``_source``) via a scroll.

        Blocks for one request per ``size`` hits; the scroll is cleared when the iterator
        is exhausted or closed.
        """
        body: dict[str, Any] = {
            "size": size,
            "version": True,
            "sort": ["_doc"],
            "query": dict(query) if query is not None else {"match_all": {}},
        }
        page = self.request(
            "POST", "/" + _index(index) + "/_search", params={"scroll": SCROLL_KEEPALIVE}, body=body
        )
        scroll_id = page.get("_scroll_id")
        try:
            while True:
                hits = page["hits"]["hits"]
                if not hits:
                    return
                yield from hits
                if not scroll_id:
                    return
                page = self.request(
                    "POST",
                    "/_search/scroll",
                    body={"scroll": SCROLL_KEEPALIVE, "scroll_id": scroll_id},
                )
                scroll_id = page.get("_scroll_id") or scroll_id
        finally:
            if scroll_id:
                try:
                    self.request("DELETE", "/_search/scroll", body={"scroll_id": [scroll_id]})
                except IngestError as exc:  # the context expires by itself anyway
                    log.debug("scroll_clear_failed", error=str(exc))

    def close(self) -> None:
        """Close pooled connections; the client is unusable afterwards."""
        self._backend.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _single(self, index: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if len(body) != 1:
            raise SearchRequestError(
                "GET",
                "/" + index,
                status=400,
                error_type="ambiguous_index",
                reason=f"{index!r} names {len(body)} indices ({', '.join(sorted(body))})",
            )
        result: dict[str, Any] = next(iter(body.values()))
        return result


_MAJOR = re.compile(r"^(\d+)\.")


def _es_compat_major(info: Mapping[str, Any]) -> int | None:
    """The major to put in ``compatible-with``: the server's, if the client knows it."""
    version = info.get("version") or {}
    if version.get("distribution") == "opensearch":
        return None
    m = _MAJOR.match(str(version.get("number", "")))
    if not m:
        return None
    server_major = int(m.group(1))
    client_major = int(importlib.metadata.version("elasticsearch").split(".")[0])
    if 8 <= server_major < client_major:
        return server_major
    return None


def detect_kind(info: Mapping[str, Any]) -> Kind:
    """``opensearch`` if ``GET /`` says so in ``version.distribution``, else ``elasticsearch``."""
    version = info.get("version") or {}
    if isinstance(version, Mapping) and version.get("distribution") == "opensearch":
        return "opensearch"
    return "elasticsearch"


def connect_search(settings: SearchSettings, *, check_every_s: float = 1.0) -> SearchClient:
    """Probe the cluster and return a client of the right kind over every configured node.

    Asks the nodes ``GET /`` in turn until one answers, each bounded by
    ``min(request_timeout_s, PROBE_TIMEOUT_S)``: start-up succeeds while any node answers
    (those that did not are logged and left to the node pool). Raises
    :class:`~ingest.errors.ConfigError` (one line, URLs without passwords) when none is
    reachable, the credentials or the client certificate are refused, or the answer is
    nonsense. ``check_every_s``: how often a credential file is checked for a change.
    """
    stats = HostStats(settings.urls)
    auth = _auth(settings, check_every_s)
    info = _probe(settings, stats, auth)
    url = redact_dsn(", ".join(settings.urls))
    kind: Kind = detect_kind(info) if settings.kind == "auto" else settings.kind
    backend: _Backend
    if kind == "opensearch":
        backend = _OpenSearchBackend(settings, stats, auth)
    else:
        backend = _ElasticsearchBackend(settings, _es_compat_major(info), stats, auth)
    log.info(
        "search_connected",
        url=url,
        kind=kind,
        detected=detect_kind(info),
        version=info["version"].get("number"),
        hosts=len(settings.urls),
        proxy=None
        if settings.proxy_url is None
        else host_label(settings.proxy_url.get_secret_value()),
        compression=settings.compression,
    )
    return SearchClient(kind, backend, url, stats, auth)


def _auth(settings: SearchSettings, check_every_s: float) -> SearchAuth:
    """The credentials' first load: an unreadable file is a one-line ConfigError."""
    auth = SearchAuth(settings, check_every_s=check_every_s)
    try:
        auth.header()
    except CredentialError as exc:
        raise ConfigError(f"config error: {exc}") from None
    return auth


def _probe(settings: SearchSettings, stats: HostStats, auth: SearchAuth) -> Mapping[str, Any]:
    """``GET /`` of the first node that answers; ConfigError when none does.

    opensearch-py does the probe for both kinds, since it checks no product header.
    """
    unreachable: list[tuple[str, str]] = []
    for node_url in settings.urls:
        url = redact_dsn(node_url)
        probe = _OpenSearchBackend(settings, stats, auth, [node_url])
        try:
            info = probe.request(
                "GET", "/", timeout_s=min(settings.request_timeout_s, PROBE_TIMEOUT_S)
            )
        except TransientError as exc:
            unreachable.append((url, _one_line(exc, settings)))
            log.warning(
                "search_host_unreachable", host=host_label(node_url), error=unreachable[-1][1]
            )
            continue
        except SearchAuthError as exc:
            raise ConfigError(
                f"search server {url} refused the credentials (HTTP {exc.status} {exc.error_type})"
            ) from None
        except IngestError as exc:
            raise ConfigError(
                f"search server {url} answered GET / with an error: {_one_line(exc, settings)}"
            ) from None
        finally:
            probe.close()
        if not isinstance(info, Mapping) or not isinstance(info.get("version"), Mapping):
            raise ConfigError(
                f"search server {url} did not answer GET / like Elasticsearch/OpenSearch"
            )
        return info
    if len(unreachable) == 1:
        url, reason = unreachable[0]
        raise ConfigError(f"search server {url} is unreachable: {reason}")
    reasons = "; ".join(f"{url}: {reason}" for url, reason in unreachable)
    raise ConfigError(f"no search host is reachable: {reasons}"[:600])


def _one_line(exc: BaseException, settings: SearchSettings) -> str:
    """An error message on one line with every configured secret removed."""
    text = redact_dsn(" ".join(str(exc).split()))
    for secret in (
        settings.password,
        settings.api_key,
        settings.bearer_token,
        settings.client_key_password,
    ):
        if secret is not None and secret.get_secret_value():
            text = text.replace(secret.get_secret_value(), "***")
    return text[:300]


def check_pipeline(client: SearchClient, stream: str, pipeline: str) -> None:
    """Refuse to start a stream whose ingest pipeline is missing from the cluster.

    Otherwise every index action would come back 400 and every record be dead-lettered. A
    cluster that will not say (the role lacks the ``read_pipeline`` privilege, or the
    server has no pipeline API) is logged and trusted: the bulk items name a missing
    pipeline anyway.
    """
    try:
        client.request("GET", "/_ingest/pipeline/" + quote(pipeline, safe=""))
    except SearchNotFoundError:
        raise ConfigError(
            f"stream {stream}: ingest pipeline {pipeline!r} does not exist on the search cluster"
        ) from None
    except IngestError as exc:
        log.warning("ingest_pipeline_not_checked", stream=stream, pipeline=pipeline, error=str(exc))
