"""``ingest topics``: the streams' Kafka topics, created from ``[streams.topic_settings]``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ingest.cli._common import EXIT_RUNTIME, config_option, fail_cleanly, load
from ingest.errors import ConfigError

if TYPE_CHECKING:  # pydantic stays out of `ingest --help`
    from ingest.settings import Settings, StreamSettings

_STREAMS = click.option(
    "--stream", "stream_names", multiple=True, help="Stream(s) whose topics (default: all)."
)


@click.group()
def topics() -> None:
    """The streams' Kafka topics: create missing ones, report the ones that differ."""


@topics.command("ensure")
@config_option
@_STREAMS
@fail_cleanly
def topics_ensure(config_path: Path | None, stream_names: tuple[str, ...]) -> None:
    """Create missing topics; report (never change) existing ones that differ. Exit 1 if any
    differs."""
    from ingest.kafka.topics import KafkaTopicAdmin, topic_specs

    settings = load(config_path, log_level="WARNING")
    reports = KafkaTopicAdmin(settings).ensure(topic_specs(_chosen(settings, stream_names)))
    for report in reports:
        click.echo(report.line())
    if any(r.state == "differs" for r in reports):
        sys.exit(EXIT_RUNTIME)


@topics.command("list")
@config_option
@_STREAMS
@fail_cleanly
def topics_list(config_path: Path | None, stream_names: tuple[str, ...]) -> None:
    """Show each stream's topics as the broker has them, against the settings."""
    from ingest.kafka.topics import KafkaTopicAdmin, topic_specs

    settings = load(config_path, log_level="WARNING")
    for report in KafkaTopicAdmin(settings).describe(topic_specs(_chosen(settings, stream_names))):
        click.echo(report.line())


def _chosen(settings: Settings, names: tuple[str, ...]) -> list[StreamSettings]:
    chosen = [settings.stream(n) for n in names] if names else list(settings.streams)
    if not chosen:
        raise ConfigError("no streams configured: add a [[streams]] table to the config")
    return chosen
