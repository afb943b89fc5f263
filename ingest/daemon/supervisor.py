"""The ``ingest run`` process: one :class:`~ingest.daemon.worker.StreamWorker` thread per stream.

Checks the topics before any worker starts, serves /metrics, /healthz and /readyz, turns
SIGTERM/SIGINT into an orderly stop (every worker flushes and commits), and exits non-zero
when a worker ends with an error, for a supervisor to restart it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType

import structlog

from ingest.daemon.health import Health, serve
from ingest.daemon.metrics import Metrics
from ingest.daemon.worker import StreamWorker
from ingest.errors import ConfigError, FatalError, IngestError, TransientError
from ingest.kafka.ranges import KafkaRangeReader
from ingest.kafka.topics import missing_topic_message
from ingest.pipeline.wiring import Components, open_components
from ingest.settings import Settings, StreamSettings

log = structlog.get_logger(__name__)

#: How often credential loads queued by the workers are written to the ledger.
CREDENTIAL_AUDIT_EVERY_S = 2.0


def check_topics(settings: Settings, streams: Sequence[StreamSettings]) -> None:
    """Fail at start, in bounded time, when Kafka is unreachable or a topic is missing."""
    reader = KafkaRangeReader(settings, timeout_s=8.0)
    for stream in streams:
        try:
            reader.partitions(stream.topic)
        except TransientError as exc:
            raise ConfigError(
                f"Kafka at {settings.kafka.bootstrap_servers} is unreachable: {exc}"
            ) from None
        except ConfigError:
            bootstrap = settings.kafka.bootstrap_servers
            raise ConfigError(missing_topic_message(stream.topic, stream.name, bootstrap)) from None


class Daemon:
    """Runs one :class:`StreamWorker` thread per stream and handles signals."""

    def __init__(self, settings: Settings, streams: Sequence[StreamSettings]) -> None:
        self.settings = settings
        self.streams = list(streams)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.metrics = Metrics()
        self.health = Health()

    def _handle_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        self.stop.set()

    def run(self) -> int:
        """Exit code: 0 after a clean stop, 1 after a fatal error."""
        signal.signal(signal.SIGTERM, self._handle_signal)
        signal.signal(signal.SIGINT, self._handle_signal)
        with open_components(self.settings) as components:
            components.search.hosts.watch(self.metrics.search_request)
            check_topics(self.settings, self.streams)
            self.health.set_connected(True)
            server = None
            stuck_s = min(60.0, self.settings.runtime.max_retry_s / 2)
            self.metrics.readiness(
                lambda: self.health.ready(self.health.clock(), max_retry_stuck_s=stuck_s)[0]
            )
            if self.settings.runtime.metrics_port is not None:
                server = serve(
                    self.settings.runtime.metrics_port,
                    self.metrics,
                    self.health,
                    host=self.settings.runtime.metrics_host,
                    max_retry_stuck_s=stuck_s,
                )
            try:
                if not self._run_threads(components):
                    return 1
            finally:
                if server is not None:
                    server.close()
        return 1 if self.errors else 0

    def _run_threads(self, components: Components) -> bool:
        """Run every worker; False when they did not stop within the shutdown timeout."""
        threads = [
            threading.Thread(
                target=self._run_worker,
                args=(s, components),
                name=f"stream-{s.name}",
                daemon=True,
            )
            for s in self.streams
        ]
        for t in threads:
            t.start()
        audited = time.monotonic()
        while any(t.is_alive() for t in threads) and not self.stop.is_set():
            time.sleep(0.2)
            if time.monotonic() - audited >= CREDENTIAL_AUDIT_EVERY_S:
                audited = time.monotonic()
                self._record_credential_loads(components)
        self.stop.set()
        self.health.shutting_down()
        deadline = time.monotonic() + self.settings.runtime.shutdown_timeout_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            log.error("shutdown_timed_out", timeout_s=self.settings.runtime.shutdown_timeout_s)
            return False
        return True

    @staticmethod
    def _record_credential_loads(components: Components) -> None:
        """Credentials re-read while running (rotated) reach the ledger within seconds."""
        try:
            components.ledger.record_credential_loads()
        except IngestError as exc:
            log.warning("credential_loads_not_recorded", error=str(exc))

    def _run_worker(self, stream: StreamSettings, components: Components) -> None:
        try:
            StreamWorker(
                self.settings,
                stream,
                components=components,
                stop=self.stop,
                metrics=self.metrics,
                health=self.health,
            ).run()
        except FatalError as exc:
            log.error("stream_failed", stream=stream.name, error=str(exc))
            self.health.loop_exited(str(exc))
            self.errors.append(exc)
            self.stop.set()
        except Exception as exc:
            log.exception("stream_crashed", stream=stream.name, error=str(exc))
            self.errors.append(exc)
            self.stop.set()
