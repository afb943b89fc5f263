"""The ``Authorization`` header of every search request, from credentials that may rotate.

Both client libraries take credentials once, when the client is built. Rotated credentials
(a bearer token renewed by an agent, an API key or password replaced in its file) must reach
the next request without rebuilding the client under the threads using it, so neither
library is given any: the header is computed per request from :class:`SearchAuth`, which
reads each credential through :mod:`ingest.credentials` (a file-backed one is re-read when its
file changes, or when :meth:`SearchAuth.reload` is called after a 401/403).

One scheme is used, the first configured of: bearer token, API key, basic (``username`` with
``password``).
"""

from __future__ import annotations

import base64
from pathlib import Path

from pydantic import SecretStr

from ingest.credentials import Secret, StaticSecret, file_secret
from ingest.settings import SearchSettings


def _secret(
    name: str, value: SecretStr | None, path: Path | None, check_every_s: float
) -> Secret | None:
    if path is not None:
        return file_secret(name, path, check_every_s=check_every_s)
    if value is not None:
        return StaticSecret(name, value.get_secret_value())
    return None


class SearchAuth:
    """The credential in force for the search cluster; thread-safe, cheap per request."""

    def __init__(self, settings: SearchSettings, *, check_every_s: float = 1.0) -> None:
        self._username = settings.username
        self._scheme = "none"
        self._secret: Secret | None = None
        for scheme, name, value, path in (
            ("Bearer", "search.bearer_token", settings.bearer_token, settings.bearer_token_file),
            ("ApiKey", "search.api_key", settings.api_key, settings.api_key_file),
            ("Basic", "search.password", settings.password, settings.password_file),
        ):
            secret = _secret(name, value, path, check_every_s)
            if secret is not None and (scheme != "Basic" or self._username is not None):
                self._scheme, self._secret = scheme, secret
                break
        if self._secret is None and self._username is not None:
            self._scheme, self._secret = "Basic", StaticSecret("search.password", "")

    @property
    def scheme(self) -> str:
        """``Bearer``, ``ApiKey``, ``Basic`` or ``none``."""
        return self._scheme

    def header(self) -> str | None:
        """The ``Authorization`` value for the next request, or ``None`` without credentials.

        Reads the credential (a ``stat`` at most once per check interval); a file that cannot
        be read at the first load raises :class:`~ingest.credentials.CredentialError`.
        """
        if self._secret is None:
            return None
        value = self._secret.current()
        if self._scheme == "Basic":
            pair = f"{self._username}:{value}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        return f"{self._scheme} {value}"

    def reload(self) -> bool:
        """Re-read the credential after a refusal; True when a different value is in force."""
        return self._secret is not None and self._secret.reload()
