"""The search cluster's nodes as the ingester sees them: a label each, and whether it answers.

Spreading requests over several nodes, taking a failed node out and trying it again later is
the client libraries' own job, configured here rather than rewritten: ``elastic_transport``'s
``NodePool`` and ``opensearch-py``'s ``ConnectionPool`` both round-robin over live nodes, put a
node that refused a connection, timed out or answered 5xx on a timeout that doubles with each
consecutive failure (:data:`DEAD_HOST_BACKOFF_S` up to about :data:`MAX_DEAD_HOST_BACKOFF_S`),
hand it one request when the timeout is over, and fall back to the least recently failed node
when none is live. The request that met the failure is not resent by the library (client
retries stay off); it fails transiently and :mod:`ingest.retry` sends it again, to another
node since the failed one is out.

What the libraries do not offer is a view of it. :class:`HostStats` is that view, fed by the
node classes in :mod:`ingest.search.transport` after every request: each host's state (the outcome
of its last request, which is what decided whether its pool keeps it) and latency, passed on
to listeners such as :meth:`ingest.daemon.metrics.Metrics.search_request`. Labels carry scheme, host
and port only — never the credentials a URL may hold.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

#: A node that just failed rests this long before its next request; doubled per failure.
DEAD_HOST_BACKOFF_S = 1.0
#: Longest rest of a failing node (opensearch-py doubles up to 32 s, elastic_transport to 30 s).
MAX_DEAD_HOST_BACKOFF_S = 30.0
#: opensearch-py's cap is expressed as the number of doublings: 1 s * 2**5 = 32 s.
OPENSEARCH_TIMEOUT_CUTOFF = 5

#: ``(host label, up, seconds the request took or None for a state report)``.
HostListener = Callable[[str, bool, float | None], None]


def host_label(url: str) -> str:
    """``scheme://host:port`` of a node URL: no credentials, no path, the port made explicit."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


class HostStats:
    """Each node's last known state, shared by the node objects of one client (thread-safe).

    Every node starts up, as its pool starts it live. ``record`` is called by the node after
    each request from whichever thread made it; listeners run in that thread and must be cheap.
    """

    def __init__(self, urls: Iterable[str]) -> None:
        self._up = {host_label(url): True for url in urls}
        self._listeners: list[HostListener] = []
        self._lock = threading.Lock()

    @property
    def hosts(self) -> list[str]:
        """The labels of every configured node, in configuration order."""
        return list(self._up)

    def up(self) -> dict[str, bool]:
        """Label -> whether the node's last request got a healthy answer."""
        with self._lock:
            return dict(self._up)

    def watch(self, listener: HostListener) -> None:
        """Report every node's current state to ``listener`` now and each request later."""
        with self._lock:
            self._listeners.append(listener)
            current = dict(self._up)
        for host, up in current.items():
            listener(host, up, None)

    def record(self, host: str, up: bool, took_s: float) -> None:
        """One request to ``host`` ended: healthy answer (``up``) or node failure."""
        with self._lock:
            self._up[host] = up
            listeners = list(self._listeners)
        for listener in listeners:
            listener(host, up, took_s)
