"""``ingest topics ensure|list`` and missing-topic errors, on the session's tansu broker.

tansu reports through DescribeConfigs only the configs a topic was created with (nothing for a
topic created without any), which is what the "configs not readable" case relies on; see
docs/local-stack.md#tansu-kafka.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ingest.cli import main
from ingest.settings import Settings
from tests.support.daemon import write_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INGEST = str(Path(sys.executable).with_name("ingest"))


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _partitions(admin: Any, topic: str) -> int:
    return len(admin.list_topics(topic=topic, timeout=10).topics[topic].partitions)


def _configs(admin: Any, topic: str) -> dict[str, str]:
    from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

    [future] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return {k: e.value for k, e in future.result(10).items()}


def test_ensure_creates_the_topic_as_configured_then_finds_it_ok(
    make_settings: Callable[..., Settings], kafka_admin: Any, unique: str, tmp_path: Path
) -> None:
    """A missing topic is created with the settings' partitions and configs; a second run
    finds it as configured and changes nothing."""
    settings = make_settings(
        partitions=None,
        topic_settings={"partitions": 3, "configs": {"retention.ms": 86400000}},
        dead_letter_topic=f"{unique}-dlq",
    )
    config = str(write_config(settings, tmp_path / "c.toml"))

    first = _cli("topics", "ensure", "--config", config, "--stream", "orders")
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert lines[0].split()[:2] == [unique, "created"]
    assert "partitions=3" in lines[0] and "retention.ms=86400000" in lines[0]
    assert lines[1].split()[:2] == [f"{unique}-dlq", "created"]
    assert _partitions(kafka_admin, unique) == 3
    assert _partitions(kafka_admin, f"{unique}-dlq") == 1
    assert _configs(kafka_admin, unique)["retention.ms"] == "86400000"

    again = _cli("topics", "ensure", "--config", config)
    assert again.exit_code == 0, again.output
    assert [line.split()[1] for line in again.output.splitlines()] == ["ok", "ok"]


def test_ensure_reports_a_topic_that_differs_and_leaves_it_alone(
    make_settings: Callable[..., Settings], kafka_admin: Any, unique: str, tmp_path: Path
) -> None:
    """An existing topic with fewer partitions is reported (exit 1), never repartitioned."""
    settings = make_settings(partitions=1, topic_settings={"partitions": 3})
    config = str(write_config(settings, tmp_path / "c.toml"))

    result = _cli("topics", "ensure", "--config", config)
    assert result.exit_code == 1, result.output
    assert result.output.split()[:2] == [unique, "DIFFERS"]
    assert "partitions: configured 3, topic has 1" in result.output
    assert _partitions(kafka_admin, unique) == 1


def test_list_says_configs_are_not_readable_instead_of_failing(
    make_settings: Callable[..., Settings], unique: str, tmp_path: Path
) -> None:
    """tansu reports no configs for a topic created without any: said, not a difference."""
    settings = make_settings(
        partitions=1, topic_settings={"partitions": 1, "configs": {"retention.ms": 1000}}
    )
    config = str(write_config(settings, tmp_path / "c.toml"))

    result = _cli("topics", "list", "--config", config)
    assert result.exit_code == 0, result.output
    assert result.output.split()[:2] == [unique, "ok"]
    assert "configs not readable on this broker" in result.output


def test_list_shows_a_missing_topic_and_the_command_that_creates_it(
    make_settings: Callable[..., Settings], unique: str, tmp_path: Path
) -> None:
    config = str(write_config(make_settings(partitions=None), tmp_path / "c.toml"))
    result = _cli("topics", "list", "--config", config)
    assert result.exit_code == 0, result.output
    assert result.output.split()[:2] == [unique, "MISSING"]
    assert "`ingest topics ensure --stream orders`" in result.output


def test_produce_on_a_missing_topic_names_the_fix(
    make_settings: Callable[..., Settings], unique: str, tmp_path: Path
) -> None:
    """`ingest produce` stops with one line naming `ingest topics ensure --stream orders`."""
    config = write_config(make_settings(partitions=None), tmp_path / "c.toml")
    proc = subprocess.run(
        [INGEST, "produce", "--config", str(config), "--stream", "orders", "--count", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: kafka topic {unique!r} of stream 'orders' does not exist on "
        f"{make_settings(partitions=None).kafka.bootstrap_servers};"
        " run `ingest topics ensure --stream orders`"
    ]
