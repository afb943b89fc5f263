"""The README's "Running it" block, run as written, on an embedded stack of its own.

The block is read from README.md at test time (never copied here), so the README cannot drift
from the CLI again: a renamed option, a missing step (such as creating the topic) or a
command that fails breaks this test. It runs in a temporary directory with the repository's
sample ``ingest.toml`` (through ``$INGEST_CONFIG``) and the venv's ``ingest`` first on PATH;
``INGEST_*`` variables of the test session are removed, so only the block's own
``eval "$(ingest dev up)"`` points the commands at servers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LIMIT_S = 240.0


def running_it_block(readme: str) -> str:
    """The first ```sh block under the README's "## Running it" heading."""
    section = readme.split("\n## Running it\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert match is not None, "no ```sh block under '## Running it'"
    return match.group(1)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env["INGEST_CONFIG"] = str(REPO / "ingest.toml")
    return env


def test_running_it_block_works_as_written(tmp_path: Path) -> None:
    """Every line of the block succeeds: the topic exists, records are indexed, and the daemon
    stops cleanly with its summary."""
    block = running_it_block((REPO / "README.md").read_text(encoding="utf-8"))
    env = _env()
    proc = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=30)
        pytest.fail(f"the block did not finish within {LIMIT_S:g} s:\n{output[-4000:]}")
    finally:
        # Whatever happened, leave no server behind (a no-op after the block's own `down`).
        subprocess.run(
            [str(BIN / "ingest"), "dev", "down"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
    tail = output[-6000:]
    assert proc.returncode == 0, tail
    assert re.search(r"^orders\s+ok\s", output, re.MULTILINE), tail  # created by `dev up`
    assert re.search(r"^sent=10000 failed=0$", output, re.MULTILINE), tail
    assert re.search(r'"count"\s*:\s*[1-9]', output), tail
    summary = re.search(
        r"^stopped: consumed=(\d+) indexed=(\d+) deleted=\d+ dead-lettered=(\d+) lag=\d+$",
        output,
        re.MULTILINE,
    )
    assert summary is not None, tail
    consumed, indexed, _dead = (int(g) for g in summary.groups())
    assert consumed > 0 and indexed > 0, summary.group(0)
