"""The one error hierarchy of the ingester.

Every failure the ingester can see is classified by *class*, never by message text::

    IngestError
    ├── ConfigError          bad settings, schema files or unreachable services at start:
    │                        one line, non-zero exit, no traceback
    ├── RecordError          this record is bad: dead-letter it with its stage, never retry
    │   ├── FramingError         not Confluent wire format (magic byte, header length)
    │   ├── UnknownSchemaError   schema id neither in the catalog nor the registry
    │   ├── DecodeError          Avro binary does not decode against the writer schema
    │   │   └── UnusableSchemaError  the writer schema is there but cannot be used (not Avro,
    │   │                            not parsable, nested too deeply): all its records
    │   ├── RecordValidationError decoded, but breaks a rule (trailing bytes, missing id, ...)
    │   ├── TransformError       the transform (built-in or user hook) raised
    │   ├── OversizeError        the raw record is over the stream's size limit
    │   ├── TombstoneError       a null value on a stream that dead-letters tombstones
    │   └── RejectedError        the search server refused the document (400 mapping errors)
    ├── TransientError       worth retrying with backoff (connection, timeout, 429, 5xx)
    └── FatalError           stop the process; a supervisor restarts it
        ├── RetriesExhausted     transient errors outlasted the retry budget
        ├── FencedError          a newer owner holds the partition in the ledger
        └── OffsetResetError     ledger offset beyond the broker's log: topic recreated/reset

This module imports nothing from the project so every other module can import it.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error the ingester raises on purpose."""


class ConfigError(IngestError):
    """Settings, schema files or service endpoints are unusable; raised at start only."""


class RecordError(IngestError):
    """A single record cannot be ingested; it goes to the dead-letter store.

    ``stage`` names the pipeline step that refused it and ``detail`` holds what is known
    (byte offset, field path) so an operator can fix the producer without a debugger.
    """

    stage: str = "record"

    def __init__(self, reason: str, *, detail: dict[str, object] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail: dict[str, object] = detail or {}

    def __str__(self) -> str:
        if not self.detail:
            return f"{self.stage}: {self.reason}"
        extra = ", ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{self.stage}: {self.reason} ({extra})"


class FramingError(RecordError):
    stage = "framing"


class UnknownSchemaError(RecordError):
    stage = "schema"


class DecodeError(RecordError):
    stage = "decode"


class UnusableSchemaError(DecodeError):
    """The writer schema was found (in the registry) but cannot be used to read records:
    not an Avro record schema, not parsable, or nested deeper than the parser can follow.
    A registered schema id never changes, so the codec remembers the verdict."""


class RecordValidationError(RecordError):
    stage = "validation"


class TransformError(RecordError):
    stage = "transform"


class OversizeError(RecordError):
    stage = "size"


class TombstoneError(RecordError):
    stage = "tombstone"


class RejectedError(RecordError):
    stage = "index"


class TransientError(IngestError):
    """A failure that may pass: retried with exponential backoff and jitter."""


class FatalError(IngestError):
    """The process must stop without committing; a supervisor restarts it."""


class RetriesExhausted(FatalError):
    """Transient failures lasted longer than the configured retry budget."""


class FencedError(FatalError):
    """The ledger holds a newer generation for a partition this process thinks it owns."""


class OffsetResetError(FatalError):
    """The ledger's next offset lies beyond the broker's log (topic recreated or truncated)."""
