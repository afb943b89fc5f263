"""How bytes reach the search nodes: TLS, an optional forwarding proxy, per-node bookkeeping.

Both client libraries send requests through a node object per host (``elastic_transport``'s
``Urllib3HttpNode``, ``opensearch-py``'s ``Urllib3HttpConnection``) holding a urllib3 pool.
The classes built here subclass those so that, whichever library is in use:

- with ``gzip_bulk``, bulk (NDJSON) bodies are gzip-compressed at :data:`GZIP_LEVEL` and
  sent with ``Content-Encoding: gzip`` — here, after the library's serializer, which would
  otherwise append a newline to compressed bytes; not through the libraries' own
  ``http_compress``, which uses zlib level 9 (several times the CPU for a few percent fewer
  bytes, see ``bench/compression.py``);
- every request's outcome and duration is recorded in a :class:`~ingest.search.hosts.HostStats`,
  with the same rule the library's pool uses to keep or rest the node;
- with ``proxy_url``, the pool is replaced by one going through the proxy: absolute-form
  requests for ``http://`` nodes, a ``CONNECT`` tunnel for ``https://`` nodes (TLS then runs
  end to end, so the proxy sees neither the data nor the client certificate). Credentials in
  the proxy URL become a ``Proxy-Authorization`` header and never appear in a label or a log.

TLS is one :class:`ssl.SSLContext` for every ``https://`` node, built once from ``ca_file``,
``verify_certs`` and the client certificate, so a missing or unreadable certificate or key
fails at start with one line instead of at the first request.
"""

from __future__ import annotations

import gzip
import ssl
import time
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import urllib3

from ingest.errors import ConfigError
from ingest.search.hosts import HostStats, host_label
from ingest.settings import SearchSettings

#: Statuses after which ``opensearch-py`` rests a node (it needs telling; elastic_transport
#: rests a node on any status outside 2xx and its short list of "the node is fine" answers).
OPENSEARCH_DEAD_STATUSES = frozenset({429, *range(500, 600)})
#: zlib level for bulk bodies: level 1 keeps most of the size saving at a fraction of the
#: CPU of level 9 (measured by ``bench/compression.py``).
GZIP_LEVEL = 1


def gzip_ndjson(
    body: bytes | None, headers: Mapping[str, str] | None
) -> tuple[bytes | None, Mapping[str, str] | None]:
    """A bulk (NDJSON) body gzip-compressed and its headers saying so; anything else as is.

    Also asks for a compressed answer: a bulk response is about as large as its request.
    """
    if not body or headers is None:
        return body, headers
    if "ndjson" not in next((v for k, v in headers.items() if k.lower() == "content-type"), ""):
        return body, headers
    compressed = {**headers, "content-encoding": "gzip", "accept-encoding": "gzip"}
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0), compressed


def tls_context(settings: SearchSettings) -> ssl.SSLContext | None:
    """The TLS context for ``https://`` nodes, or ``None`` when the nodes speak plain HTTP.

    Trusts ``ca_file`` (else certifi's bundle when installed, else the system's), verifies
    unless ``verify_certs`` is off, and presents the client certificate when one is set.
    Raises :class:`ConfigError` naming the file when a certificate or key cannot be loaded.
    """
    if urlsplit(settings.urls[0]).scheme != "https":
        return None
    ctx = ssl.create_default_context(cafile=_ca_file(settings))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not settings.verify_certs:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        # the operator's explicit choice: no warning per request (both libraries do the same)
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    if settings.client_cert_file is not None:
        password = settings.client_key_password
        try:
            ctx.load_cert_chain(
                str(settings.client_cert_file),
                str(settings.client_key_file) if settings.client_key_file else None,
                password.get_secret_value() if password is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise ConfigError(
                f"search client certificate {settings.client_cert_file} / key"
                f" {settings.client_key_file or '(in the certificate file)'} cannot be loaded:"
                f" {reason}"
            ) from None
    return ctx


def _ca_file(settings: SearchSettings) -> str | None:
    if settings.ca_file is not None:
        if not settings.ca_file.is_file():
            raise ConfigError(f"search ca_file {settings.ca_file} does not exist")
        return str(settings.ca_file)
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with both client libraries
        return None
    return str(certifi.where())


class ProxyRoute:
    """The forwarding proxy every node's requests go through (one manager per node)."""

    def __init__(self, proxy_url: str, ssl_context: ssl.SSLContext | None) -> None:
        parts = urlsplit(proxy_url)
        self._url = host_label(proxy_url)
        self._headers: dict[str, str] = {}
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers = urllib3.make_headers(proxy_basic_auth=credentials)
        self._ssl_context = ssl_context

    def pool(self, node_url: str, *, timeout: Any, maxsize: int) -> _ProxiedPool:
        """A pool-like object sending ``node_url``'s requests through the proxy."""
        kw: dict[str, Any] = {"timeout": timeout, "maxsize": maxsize, "block": True}
        if self._ssl_context is not None:
            kw["ssl_context"] = self._ssl_context
        manager = urllib3.ProxyManager(
            self._url,
            num_pools=1,
            proxy_headers=self._headers,
            proxy_ssl_context=self._ssl_context,
            **kw,
        )
        return _ProxiedPool(manager, node_url.rstrip("/"))


class _ProxiedPool:
    """Stands in for a node's urllib3 pool: same ``urlopen``/``close``, via a ProxyManager.

    The libraries call ``urlopen`` with a path; the manager needs the absolute URL to choose
    between forwarding (``http://``) and tunnelling (``https://``).
    """

    def __init__(self, manager: urllib3.ProxyManager, base_url: str) -> None:
        self._manager = manager
        self._base_url = base_url

    def urlopen(self, method: str, url: str, body: Any = None, **kw: Any) -> Any:
        kw.setdefault("redirect", False)
        return self._manager.urlopen(method, self._base_url + url, body=body, **kw)

    def close(self) -> None:
        self._manager.clear()


def elasticsearch_node_class(
    stats: HostStats, proxy: ProxyRoute | None, *, gzip_bulk: bool = False
) -> type[Any]:
    """An ``elastic_transport`` node class recording into ``stats``, via ``proxy`` if given."""
    from elastic_transport import HttpHeaders, NodeConfig, TransportError, Urllib3HttpNode
    from elastic_transport._node._base import NodeApiResponse
    from elastic_transport._transport import NOT_DEAD_NODE_HTTP_STATUSES
    from elastic_transport.client_utils import DEFAULT, DefaultType

    class IngestNode(Urllib3HttpNode):
        def __init__(self, config: NodeConfig) -> None:
            super().__init__(config)
            self._label = host_label(self.base_url)
            if proxy is not None:
                self.pool.close()
                # the node only calls urlopen() and close(), which the stand-in provides
                self.pool = proxy.pool(  # type: ignore[assignment]
                    self.base_url,
                    timeout=urllib3.Timeout(total=config.request_timeout),
                    maxsize=config.connections_per_node,
                )

        def perform_request(
            self,
            method: str,
            target: str,
            body: bytes | None = None,
            headers: HttpHeaders | None = None,
            request_timeout: DefaultType | float | None = DEFAULT,
        ) -> NodeApiResponse:
            if gzip_bulk:
                body, packed = gzip_ndjson(body, headers)
                headers = None if packed is None else HttpHeaders(packed)
            started = time.monotonic()
            try:
                response = super().perform_request(
                    method, target, body=body, headers=headers, request_timeout=request_timeout
                )
            except TransportError:
                stats.record(self._label, False, time.monotonic() - started)
                raise
            status = response.meta.status
            up = 200 <= status < 300 or status in NOT_DEAD_NODE_HTTP_STATUSES
            stats.record(self._label, up, time.monotonic() - started)
            return response

    return IngestNode


def opensearch_connection_class(
    stats: HostStats, proxy: ProxyRoute | None, *, gzip_bulk: bool = False
) -> type[Any]:
    """An ``opensearch-py`` connection class recording into ``stats``, via ``proxy`` if given."""
    from opensearchpy import ConnectionError as OsConnectionError
    from opensearchpy import TransportError, Urllib3HttpConnection

    class IngestConnection(Urllib3HttpConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._proxy_maxsize = int(kwargs.get("pool_maxsize") or 10)
            super().__init__(*args, **kwargs)
            self._label = host_label(self.host)

        def _create_urllib3_pool(self) -> None:
            if proxy is None:
                super()._create_urllib3_pool()
            else:
                self.pool = proxy.pool(self.host, timeout=self.timeout, maxsize=self._proxy_maxsize)

        def perform_request(
            self,
            method: str,
            url: str,
            params: Mapping[str, Any] | None = None,
            body: bytes | None = None,
            timeout: int | float | None = None,
            ignore: Collection[int] = (),
            headers: Mapping[str, str] | None = None,
        ) -> Any:
            if gzip_bulk:
                body, headers = gzip_ndjson(body, headers)
            started = time.monotonic()
            try:
                result = super().perform_request(
                    method, url, params, body, timeout=timeout, ignore=ignore, headers=headers
                )
            except OsConnectionError:
                stats.record(self._label, False, time.monotonic() - started)
                raise
            except TransportError as exc:
                up = exc.status_code not in OPENSEARCH_DEAD_STATUSES
                stats.record(self._label, up, time.monotonic() - started)
                raise
            stats.record(self._label, True, time.monotonic() - started)
            return result

    return IngestConnection
