"""An INVITE flood that exhausts the RTP ports: 503 + Retry-After, one log line."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from integration.support import SIPP, Daemon, scrape_fresh, sip_call, wait_metric

pytestmark = pytest.mark.integration


def test_port_exhaustion_answers_503_with_retry_after(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    config = tmp_path / "node.yaml"
    # two RTP port pairs (20000/20001, 20002/20003), in one process: the workers of a
    # multi-worker node each have a slice of the range (docs/workers.md), and two pairs
    # split in two run out per worker
    config.write_text("rtp_port_min: 20000\nrtp_port_max: 20004\nretry_after: 7\n")
    daemon = daemon_factory("--config", str(config), "--workers", "1", metrics=True)
    assert daemon.metrics_port is not None
    holders = subprocess.Popen(
        [SIPP, "-sn", "uac", "-m", "2", "-r", "10", "-d", "8000", "-nostdin", daemon.address],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_metric(daemon.metrics_port, "callengine_active_calls", 2)
        statuses = []
        for _ in range(30):
            response = sip_call(daemon.port, "1000", timeout=5)
            statuses.append(response.status)
            assert response.headers.get("retry-after") == "7", response.headers
        assert set(statuses) == {503}
    finally:
        holders.kill()
        holders.wait()
    metrics = scrape_fresh(daemon.metrics_port)
    assert metrics["callengine_media_unavailable_total"] == 30
    log = daemon.log()
    assert "Traceback" not in log
    assert log.count("503 for new calls: no free RTP port pair") == 1
