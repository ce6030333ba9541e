"""Fixtures for attacks on a running node (helpers live in integration/support.py)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from integration.support import Daemon, start_daemon


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start `callengine serve` processes; all are stopped after the test."""
    started: list[Daemon] = []

    def factory(*extra: str, **kw: Any) -> Daemon:
        d = start_daemon(tmp_path, *extra, **kw)
        started.append(d)
        return d

    yield factory
    for d in started:
        d.stop(signal.SIGKILL if d.proc.poll() is None else signal.SIGTERM, timeout=5)
