"""Types of the native transcoder (ingest/avro/_transcode.c); see ingest.avro.transcode."""

from typing import Any

class Transcoder:
    def __init__(
        self,
        program: tuple[Any, ...],
        header: bytes,
        id_index: int,
        version_index: int,
        suffix: bytes = b"}",
        next: Transcoder | None = None,
        *,
        max_items: int,
        max_document_bytes: int,
    ) -> None: ...
    def transcode(
        self, value: bytes, key: bytes | None, offset: int
    ) -> tuple[str, int, bytes] | None: ...
