"""A loopback search proxy that admits only the credential in force (tests only).

osmem-server accepts any ``Authorization`` header, so it cannot show that a rotated
credential reached the wire. This proxy stands in front of it and answers 401 (with an
Elasticsearch-style ``security_exception`` body) to every request whose ``Authorization``
header is not one the test currently accepts; accepted requests are forwarded as by
:class:`~tests.support.compat_proxy.CompatProxy` (whose media-type rewrite also lets the
Elasticsearch client through). The test rotates the credential with :meth:`AuthProxy.accept_only`,
the way a cluster's security realm would after a password change or a token expiry::

    with AuthProxy(osmem_url, accept=bearer("t1")) as proxy:
        ...
        proxy.accept_only(bearer("t2"))
"""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter

from tests.support.compat_proxy import CompatProxy, _Handler


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def api_key(key: str) -> str:
    return f"ApiKey {key}"


def bearer(token: str) -> str:
    return f"Bearer {token}"


_REFUSAL = json.dumps(
    {
        "error": {
            "type": "security_exception",
            "reason": "unable to authenticate with provided credentials",
        },
        "status": 401,
    }
).encode()


class _AuthHandler(_Handler):
    def _handle(self) -> None:
        gate: AuthProxy = self.server.gate  # type: ignore[attr-defined]
        if gate.admits(self.headers.get("Authorization")):
            super()._handle()
            return
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self._read_chunked()
        elif length:
            self.rfile.read(length)
        self.send_response_only(401, "Unauthorized")
        self.send_header("WWW-Authenticate", 'Basic realm="security"')
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(_REFUSAL)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(_REFUSAL)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle  # noqa: N815


class AuthProxy(CompatProxy):
    """A :class:`CompatProxy` admitting only the ``Authorization`` values accepted now."""

    def __init__(self, upstream_url: str, *, accept: str) -> None:
        super().__init__(upstream_url)
        self._server.RequestHandlerClass = _AuthHandler
        self._server.gate = self  # type: ignore[attr-defined]
        self._lock = threading.Lock()
        self._accepted = {accept}
        #: Authorization values refused so far, with counts (None: no header).
        self.refused: Counter[str | None] = Counter()
        #: Authorization values admitted so far, with counts.
        self.admitted: Counter[str | None] = Counter()

    def accept_only(self, *headers: str) -> None:
        """From now on admit exactly these ``Authorization`` values."""
        with self._lock:
            self._accepted = set(headers)

    def admits(self, header: str | None) -> bool:
        with self._lock:
            ok = header in self._accepted
            (self.admitted if ok else self.refused)[header] += 1
        return ok
