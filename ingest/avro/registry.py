"""Fetching writer schemas by id from a Confluent-compatible Schema Registry.

Only the one call the decoder needs: ``GET /schemas/ids/{id}``. confluent-kafka's own
``SchemaRegistryClient`` would need four more packages (authlib, attrs, cachetools, httpx2)
for this single request, so this uses the standard library. Answers are classified for the
retry rules: the id not being there is the *record's* problem (UnknownSchemaError), so is a
schema that is there but cannot be used (UnusableSchemaError: not Avro, not JSON, nested
too deeply), a registry that is down or slow is transient, and refused credentials stop the
process.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any, Protocol

from ingest.errors import FatalError, TransientError, UnknownSchemaError, UnusableSchemaError

_NOT_FOUND = 404
_AUTH_FAILED = (401, 403)


class SchemaSource(Protocol):
    """Where the codec looks up schema ids its catalog does not know."""

    def fetch(self, schema_id: int) -> dict[str, Any]:
        """The schema JSON for ``schema_id``; blocks for at most the source's timeout.

        Raises UnknownSchemaError if the id is not registered, UnusableSchemaError if its
        schema cannot be used, TransientError if the registry cannot answer now.
        """
        ...


class HttpSchemaRegistry:
    """A Confluent Schema Registry reached over HTTP(S), with optional basic auth."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"schema registry url must be http(s)://, got {url!r}")
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._headers = {"Accept": "application/vnd.schemaregistry.v1+json, application/json"}
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    def fetch(self, schema_id: int) -> dict[str, Any]:
        """GET ``/schemas/ids/{id}`` and parse the ``schema`` string it holds."""
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            f"{self.url}/schemas/ids/{int(schema_id)}", headers=self._headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == _NOT_FOUND:
                raise UnknownSchemaError(
                    "schema id is neither in the catalog nor in the registry",
                    detail={"schema_id": schema_id},
                ) from None
            if exc.code in _AUTH_FAILED:
                raise FatalError(f"schema registry {self.url} refused the credentials") from None
            raise TransientError(f"schema registry {self.url} answered HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bad JSON
            raise TransientError(f"schema registry {self.url} unreachable: {exc}") from exc
        except RecursionError:  # an answer nested deeper than the parser follows
            raise UnusableSchemaError(
                "registry answer is nested too deeply to parse", detail={"schema_id": schema_id}
            ) from None
        return _schema_from(body, schema_id)


def _schema_from(body: Any, schema_id: int) -> dict[str, Any]:
    kind = body.get("schemaType", "AVRO") if isinstance(body, dict) else None
    text = body.get("schema") if isinstance(body, dict) else None
    if kind != "AVRO" or not isinstance(text, str):
        raise UnusableSchemaError(
            "registry schema is not an Avro schema", detail={"schema_id": schema_id, "type": kind}
        )
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise UnusableSchemaError(
            "registry schema is not valid JSON", detail={"schema_id": schema_id}
        ) from exc
    except RecursionError:
        raise UnusableSchemaError(
            "registry schema is nested too deeply to parse", detail={"schema_id": schema_id}
        ) from None
    if isinstance(schema, str):  # a bare primitive such as "string"
        schema = {"type": schema}
    if not isinstance(schema, dict):
        raise UnusableSchemaError(
            "registry schema is not a record schema", detail={"schema_id": schema_id}
        )
    return schema
