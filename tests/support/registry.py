"""A Confluent-compatible schema registry on loopback, serving what a test puts in it.

``GET /schemas/ids/{id}`` answers the schema stored for the id (as the registry's JSON
string), 404 for an unknown id, or 503 for the next ``fail_first[id]`` requests of an id —
an outage that passes. Requests are counted per id so a test can assert how often the
ingester asked.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class LoopbackRegistry:
    """Start with ``with LoopbackRegistry() as registry:``; point the ingester at ``.url``."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.fail_first: Counter[int] = Counter()
        self.requests: Counter[int] = Counter()
        self._lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def put(self, schema_id: int, schema_text: str, *, fail_first: int = 0) -> None:
        """Serve ``schema_text`` for ``schema_id`` after ``fail_first`` 503 answers."""
        with self._lock:
            self.schemas[schema_id] = schema_text
            self.fail_first[schema_id] = fail_first

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        prefix = "/schemas/ids/"
        if not handler.path.startswith(prefix) or not handler.path[len(prefix) :].isdigit():
            handler.send_error(404)
            return
        schema_id = int(handler.path[len(prefix) :])
        with self._lock:
            self.requests[schema_id] += 1
            text = self.schemas.get(schema_id)
            failing = self.fail_first[schema_id] > 0
            if failing:
                self.fail_first[schema_id] -= 1
        if failing:
            handler.send_error(503)
        elif text is None:
            handler.send_error(404)
        else:
            body = json.dumps({"schema": text}).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)

    def __enter__(self) -> LoopbackRegistry:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


def nested_schema_text(depth: int) -> str:
    """A record schema whose one field is ``depth`` arrays deep, as JSON text."""
    return (
        '{"type": "record", "name": "Deep", "fields": [{"name": "f", "type": '
        + '{"type": "array", "items": ' * depth
        + '"int"'
        + "}" * depth
        + "}]}"
    )
