"""The ``ingest`` command: run the daemon, produce records, manage the local stack.

Every :class:`~ingest.errors.IngestError` becomes one ``error: ...`` line on stderr and exit
code 2 (configuration) or 1 (anything else at run time) — never a traceback for a problem the
user can fix. Heavy imports happen inside commands so ``ingest --help`` stays fast.
"""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="ingest")
def main() -> None:
    """Kafka -> Avro -> Elasticsearch/OpenSearch ingester with a PostgreSQL ledger."""
    from ingest.logging import configure_logging

    # Logs always go to stderr (stdout is for command output, e.g. `eval "$(ingest dev up)"`);
    # commands that load settings reconfigure with the secrets to redact.
    configure_logging(level="WARNING")


def _register_commands() -> None:
    """One module per command group; each imports :mod:`ingest.cli._common`, never this package."""
    from ingest.cli.dev import dev
    from ingest.cli.dlq import dlq
    from ingest.cli.grant import grant
    from ingest.cli.ledger import ledger
    from ingest.cli.produce import produce
    from ingest.cli.run import run
    from ingest.cli.schemas import schemas
    from ingest.cli.status import status
    from ingest.cli.topics import topics

    for command in (run, produce, topics, dev, ledger, status, dlq, schemas):
        main.add_command(command)
    ledger.add_command(grant)


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
