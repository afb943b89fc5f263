"""The ``reindex`` click command's own checks (no services reached)."""

from __future__ import annotations

from click.testing import CliRunner

from backfill.reindex import reindex_command


def test_help_lists_the_options_and_hides_the_test_hooks() -> None:
    result = CliRunner().invoke(reindex_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--stream", "--source", "--path", "--keep", "--rollback", "--abort"):
        assert option in result.output
    assert "kafka|index|files" in result.output
    assert "--pause-at" not in result.output


def test_rollback_and_abort_exclude_each_other() -> None:
    result = CliRunner().invoke(reindex_command, ["--stream", "orders", "--rollback", "--abort"])
    assert result.exit_code == 2
    assert "exclude each other" in result.output


def test_unknown_pause_point_is_refused_before_anything_runs() -> None:
    result = CliRunner().invoke(
        reindex_command, ["--stream", "orders"], env={"INGEST_REINDEX_PAUSE_AT": "nowhere"}
    )
    assert result.exit_code == 2
    assert "nowhere" in result.output
