"""The consumer's file-backed librdkafka secrets, and what to do when the broker refuses them.

librdkafka reads ``sasl.password`` (and ``sasl.oauthbearer.client.secret``, ``ssl.key.password``
...) once, when the client is built; it cannot change them on a live client. So the secrets of
``[kafka.client_files]`` are read through :mod:`ingest.credentials` (audited, re-read when
their file changes), and when the broker answers a SASL authentication failure
(``KafkaError._AUTHENTICATION``, reported through the client's error callback) the files are
re-read at once: if a value changed, :meth:`KafkaCredentials.renewal_due` says so and the
worker rebuilds its consumer from the new values. If nothing changed, the client goes on
retrying as librdkafka does today (the failure is logged, readiness shows no progress).
"""

from __future__ import annotations

import threading

import structlog
from confluent_kafka import KafkaError

from ingest.credentials import FileSecret, file_secret
from ingest.kafka.config import log_client_error
from ingest.settings import Settings

log = structlog.get_logger(__name__)


class KafkaCredentials:
    """One client's ``[kafka.client_files]`` secrets; ``error_cb`` may run on any thread."""

    def __init__(self, settings: Settings) -> None:
        check_s = settings.runtime.credential_check_s
        self._files: dict[str, FileSecret] = {
            prop: file_secret(f"kafka.{prop}", path, check_every_s=check_s)
            for prop, path in settings.kafka.client_files.items()
        }
        self._built_with: dict[str, str] = {}
        self._refused = threading.Event()

    def properties(self) -> dict[str, str]:
        """The secret properties in force, remembered as those the next client is built with."""
        self._built_with = {prop: secret.current() for prop, secret in self._files.items()}
        return dict(self._built_with)

    def error_cb(self, err: KafkaError) -> None:
        """The client's ``error_cb``: logs like the default one, notes authentication failures."""
        log_client_error(err)
        if err.code() == KafkaError._AUTHENTICATION:
            self._refused.set()

    def renewal_due(self) -> bool:
        """True once after the broker refused the client's credentials and a re-read of their
        files found different values: the client must be rebuilt (:meth:`properties`).

        Cheap when nothing was refused (one flag test); called from the worker's loop.
        """
        if not self._refused.is_set():
            return False
        self._refused.clear()
        changed = [prop for prop, secret in self._files.items() if self._reread(secret, prop)]
        if changed:
            log.warning("kafka_credentials_replaced", properties=changed)
        return bool(changed)

    def _reread(self, secret: FileSecret, prop: str) -> bool:
        secret.reload()
        return secret.current() != self._built_with.get(prop)
