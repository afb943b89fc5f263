"""Fixtures of the fault tests: real ``ingest run`` processes, killed at the end if alive."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []
    counter = iter(range(1000))

    def start(config: Path, **kw: object) -> DaemonProcess:
        d = DaemonProcess(config, tmp_path / f"daemon-{next(counter)}.log", **kw)  # type: ignore[arg-type]
        started.append(d)
        return d

    yield start
    for d in started:
        if d.alive():
            d.kill9()
