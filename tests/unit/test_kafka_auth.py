"""Kafka SASL credentials from files: a refusal with a rotated file rebuilds the consumer.

The embedded broker (tansu) is started without SASL in the test stack, so the refusal is
driven at the seam: the client's ``error_cb`` receives librdkafka's own
``KafkaError._AUTHENTICATION``, and the worker's rebuild is checked with fakes for its order
(flush what is buffered, close the old client, build a new one from the new values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError
from structlog.testing import capture_logs

from ingest.daemon.worker import StreamWorker
from ingest.kafka.auth import KafkaCredentials
from ingest.settings import KafkaSettings, Settings, StreamSettings
from tests.support.secrets import rotate_file


def _settings(path: Path) -> Settings:
    return Settings(
        kafka=KafkaSettings(client_files={"sasl.password": str(path)}),
        runtime={"credential_check_s": 3600},  # type: ignore[arg-type]
    )


def _refused() -> KafkaError:
    return KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: bad password")


def test_refusal_with_a_rotated_file_makes_a_renewal_due(tmp_path: Path) -> None:
    """Refused + the file now holds another value: renew, once; the new value is served."""
    path = tmp_path / "sasl"
    path.write_text("old")
    creds = KafkaCredentials(_settings(path))
    assert creds.properties() == {"sasl.password": "old"}
    assert creds.renewal_due() is False
    rotate_file(path, "new")
    assert creds.renewal_due() is False  # not refused: the live client keeps its session
    creds.error_cb(_refused())
    with capture_logs() as logs:
        assert creds.renewal_due() is True
    assert creds.renewal_due() is False
    assert creds.properties() == {"sasl.password": "new"}
    assert "new" not in repr([e for e in logs if e["event"] == "kafka_credentials_replaced"])


def test_refusal_with_an_unchanged_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sasl"
    path.write_text("same")
    creds = KafkaCredentials(_settings(path))
    creds.properties()
    creds.error_cb(_refused())
    assert creds.renewal_due() is False


def test_other_client_errors_are_not_refusals(tmp_path: Path) -> None:
    path = tmp_path / "sasl"
    path.write_text("old")
    creds = KafkaCredentials(_settings(path))
    creds.properties()
    rotate_file(path, "new")
    creds.error_cb(KafkaError(KafkaError._TRANSPORT, "broker down"))
    assert creds.renewal_due() is False


def test_worker_renewal_flushes_then_rebuilds_the_consumer(tmp_path: Path) -> None:
    """The rebuild flushes first (sink, ledger), then closes the old client, then joins anew."""
    calls: list[str] = []

    class Source:
        def __init__(self, name: str) -> None:
            self.name = name

        def close(self) -> None:
            calls.append(f"close {self.name}")

    worker: Any = StreamWorker.__new__(StreamWorker)
    worker.stream = StreamSettings(name="s", topic="t", subject="orders", alias="a")
    worker._source = Source("old")
    worker._generations = {0: 3}
    worker._flush = lambda: calls.append("flush")

    def new_source() -> Source:
        calls.append("new")
        return Source("new")

    worker._new_source = new_source
    worker._renew_source()
    assert calls == ["flush", "close old", "new"]
    assert worker._source.name == "new"
    assert worker._generations == {}
