"""Avro object container files (a data-lake export) as a backfill source.

A file is one chunk, identified by its path and the sha256 of its content: a changed file
is a new chunk and runs again, an unchanged one is done. Records are read with the stream's
reader schema (fastavro resolves the file's writer schema to it), then re-encoded in the
Confluent wire format under the reader schema's id. So file records go through exactly the
same codec -> transform -> sink path as Kafka records, and a dead-lettered file record keeps
its full content in a form ``dlq replay`` can decode.

A file record has no Kafka coordinates: ``source`` is ``file:<sha256>``, ``topic`` the
absolute path, ``partition`` 0 and ``offset`` the record's index in the file. It has no
offset-based version either, so only streams versioned by a record field can be backfilled
from files (:func:`check_stream_for_files`).
"""

from __future__ import annotations

import glob
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import structlog

from ingest.avro.catalog import SchemaVersion
from ingest.avro.codec import frame
from ingest.errors import ConfigError, FatalError
from ingest.settings import StreamSettings
from ingest.types import RawRecord

log = structlog.get_logger(__name__)

_HASH_BLOCK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    """One file to backfill: where it is, what it holds (hash) and how many records."""

    path: str
    sha256: str
    size_bytes: int
    records: int

    @property
    def source(self) -> str:
        """The dead-letter ``source`` of its records."""
        return f"file:{self.sha256}"


def check_stream_for_files(stream: StreamSettings) -> None:
    """Refuse streams whose documents can not be versioned or named without Kafka.

    Without a version field the external version is the Kafka offset, which a file record
    does not have; any made-up number could overwrite newer documents or lose to stale ones.
    """
    if stream.version_field is None:
        raise ConfigError(
            f"stream {stream.name!r} is versioned by the Kafka offset (no version_field), "
            "and archive file records have no offset: set version_field for the stream "
            "or backfill it from Kafka instead"
        )
    if stream.id_field is None:
        raise ConfigError(
            f"stream {stream.name!r} takes document ids from the Kafka key (no id_field), "
            "and archive file records have no key: set id_field for the stream"
        )


def find_files(spec: str) -> list[Path]:
    """The ``.avro`` files under a directory (recursively), a glob's matches, or one file.

    Sorted, absolute, de-duplicated. ConfigError when nothing matches.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [p for p in path.rglob("*.avro") if p.is_file()]
    elif path.is_file():
        found = [path]
    else:
        found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    if not found:
        raise ConfigError(f"no Avro files found at {spec!r}")
    return sorted({p.resolve() for p in found})


def sha256_of(path: Path) -> str:
    """The hex sha256 of the file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fo:
        while block := fo.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def count_records(path: Path) -> int:
    """Records in an OCF file from its block headers (blocks are read, records not decoded)."""
    try:
        with path.open("rb") as fo:
            return sum(block.num_records for block in fastavro.block_reader(fo))
    except (ValueError, EOFError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable Avro object container file: {exc}") from exc


#: The planned hash of a file that could not be read at planning: its chunk fails with the
#: reason when it runs (and a later run, once the file reads, plans a new chunk).
UNREADABLE = "unreadable"


def describe_files(paths: list[Path]) -> list[ArchiveFile]:
    """Hash and count each file (reads every file once).

    A file that can not be read or is not an Avro object container file is still planned
    (``records`` 0, and :data:`UNREADABLE` for a hash it could not take): one bad file in
    a data lake must not stop the others, so its chunk fails with the reason instead.
    """
    return [_describe(p) for p in paths]


def _describe(path: Path) -> ArchiveFile:
    try:
        sha256, size = sha256_of(path), path.stat().st_size
    except OSError as exc:
        log.warning("archive_file_unreadable", path=str(path), error=str(exc))
        return ArchiveFile(str(path), UNREADABLE, 0, 0)
    try:
        records = count_records(path)
    except ConfigError as exc:
        log.warning("archive_file_unreadable", path=str(path), error=str(exc))
        records = 0
    return ArchiveFile(str(path), sha256, size, records)


def read_records(
    path: Path,
    sha256: str,
    reader: SchemaVersion,
    *,
    start: int = 0,
    batch_records: int = 2000,
) -> Iterator[list[RawRecord]]:
    """The file's records from index ``start`` on, as framed RawRecords in lists.

    Raises ConfigError when the file is not an OCF file or its writer schema can not be read
    as ``reader`` (a whole-file problem, not a bad record).
    """
    source = f"file:{sha256}"
    topic = str(path)
    with path.open("rb") as fo:
        try:
            records = fastavro.reader(fo, reader_schema=reader.schema)
        except Exception as exc:  # fastavro raises ValueError, SchemaResolutionError, ...
            raise ConfigError(
                f"{path}: can not read it as {reader.subject} v{reader.version}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        out: list[RawRecord] = []
        index = start
        for record in _records_from(records, start, path):
            out.append(
                RawRecord(
                    topic=topic,
                    partition=0,
                    offset=index,
                    key=None,
                    value=encode(record, reader),
                    source=source,
                )
            )
            index += 1
            if len(out) >= batch_records:
                yield out
                out = []
        if out:
            yield out


def _records_from(records: Iterator[Any], start: int, path: Path) -> Iterator[dict[str, Any]]:
    """The decoded records from index ``start``; a corrupt block or a record the reader
    schema can not hold fails the whole file (FatalError): retrying would not help and the
    record's bytes can not be cut out to dead-letter it."""
    index = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except Exception as exc:  # fastavro raises many types for corrupt data
            raise FatalError(
                f"{path}: record {index} can not be read: {type(exc).__name__}: {exc}"
            ) from exc
        if index >= start:
            yield record
        index += 1


def encode(record: dict[str, Any], reader: SchemaVersion) -> bytes:
    """``record`` (already in the reader schema's shape) in the Confluent wire format."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, reader.schema, record)
    return frame(reader.schema_id, buf.getvalue())
