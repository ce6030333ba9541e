"""Per-source and per-tenant caps on calls, against a running node with SIPp callers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from integration.support import Daemon, run_sipp, scrape_fresh

pytestmark = pytest.mark.integration

OUTSIDER = "127.0.0.2"  # not exempt (source_exempt is 127.0.0.1/32 and ::1)


def node_config(tmp: Path, text: str) -> str:
    path = tmp / "node.yaml"
    path.write_text(text)
    return str(path)


def sipp(tmp: Path, daemon: Daemon, source: str, *args: str) -> tuple[int, int]:
    result = run_sipp(
        ["-sn", "uac", "-i", source, "-timeout", "30", *args, daemon.address], cwd=tmp
    )
    return int(result.stats["SuccessfulCall(C)"]), int(result.stats["FailedCall(C)"])


def test_concurrent_calls_per_source(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    config = node_config(tmp_path, "source_max_calls: 3\nsource_max_cps: 0\n")
    daemon = daemon_factory("--config", config, metrics=True)
    # 10 calls at once, each held 2 s: 3 are taken, 7 refused
    ok, failed = sipp(tmp_path, daemon, OUTSIDER, "-m", "10", "-r", "100", "-d", "2000")
    assert (ok, failed) == (3, 7)
    # the exempt balancer address is not capped
    ok, failed = sipp(tmp_path, daemon, "127.0.0.1", "-m", "10", "-r", "100", "-d", "500")
    assert (ok, failed) == (10, 0)
    # the slots came back when the calls ended
    ok, failed = sipp(tmp_path, daemon, OUTSIDER, "-m", "3", "-r", "100", "-d", "200")
    assert (ok, failed) == (3, 0)
    assert daemon.metrics_port is not None
    metrics = scrape_fresh(daemon.metrics_port)
    assert metrics['callengine_calls_refused_total{reason="source_calls"}'] == 7
    log = daemon.log()
    # one line for the burst of refusals (from each worker that refused), not one per call
    assert 1 <= log.count("too many calls in progress from one source") <= 2, log


def test_call_rate_per_source(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    config = node_config(tmp_path, "source_max_calls: 0\nsource_max_cps: 5\n")
    daemon = daemon_factory("--config", config, metrics=True)
    # 40 calls at 40/s for one second: a bucket of 5, then 5 per second
    ok, failed = sipp(tmp_path, daemon, OUTSIDER, "-m", "40", "-r", "40", "-d", "100")
    assert 5 <= ok <= 12 and ok + failed == 40, (ok, failed)
    assert daemon.metrics_port is not None
    metrics = scrape_fresh(daemon.metrics_port)
    assert metrics['callengine_calls_refused_total{reason="source_rate"}'] == failed


def test_concurrent_calls_per_tenant(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    config = node_config(tmp_path, "tenant_max_calls: 2\n")
    daemon = daemon_factory("--config", config, metrics=True)
    ok, failed = sipp(tmp_path, daemon, "127.0.0.1", "-m", "6", "-r", "100", "-d", "2000")
    assert (ok, failed) == (2, 4)
    ok, failed = sipp(tmp_path, daemon, "127.0.0.1", "-m", "2", "-r", "100", "-d", "200")
    assert (ok, failed) == (2, 0)
    assert daemon.metrics_port is not None
    metrics = scrape_fresh(daemon.metrics_port)
    assert metrics['callengine_calls_refused_total{reason="tenant_calls"}'] == 4
