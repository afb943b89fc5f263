"""The producer library's stable import path for upstream teams.

``from ingest.producer import RecordProducer`` keeps working; the code lives in
:mod:`ingest.kafka.producer`.
"""

from ingest.avro.catalog import SchemaCatalog
from ingest.errors import RecordValidationError
from ingest.kafka.producer import ProduceSummary, RecordProducer

__all__ = ["ProduceSummary", "RecordProducer", "RecordValidationError", "SchemaCatalog"]
