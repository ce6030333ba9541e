"""The media plane end to end (``callengine serve --media-process``): RTP in a process
of its own, commanded by the engine (callengine/mediaplane.py).

One node, SIPp as the callers:

1. three calls held in the demo IVR; ``kill -9`` of the plane: the node hangs each
   up with a BYE (Q.850 41, temporary failure), starts a new plane, and says so on
   /metrics;
2. then a caller presses 3 (RFC 4733) and leaves a voicemail through the new plane:
   the prompts, the digit and the recording all work (the audio correlates with what
   SIPp played), and every call has exactly one call log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from integration.audio import CAPTURES, MIN_CORRELATION, capture_audio, correlation, read_wav
from integration.support import SippResult, free_port, run_sipp, scrape_node
from integration.test_ivr_demo import (
    DaemonFactory,
    assert_voicemail_path,
    sipp_call,
    stop_and_read_logs,
    voicemail_file,
)

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sipp"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except FileNotFoundError:  # a thread that just ended
            continue
        out += [int(p) for p in text.split()]
    return out


def _planes(pid: int, *, workers: bool) -> list[int]:
    """The node's media planes: its children, or with ``workers`` (a multi-worker node,
    docs/workers.md) its workers' children."""
    if not workers:
        return sorted(_children(pid))
    out: list[int] = []
    for worker in _children(pid):
        with contextlib.suppress(FileNotFoundError):  # a worker that just ended
            out += _children(worker)
    return sorted(out)


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_media_plane_ends_its_calls_and_the_next_plane_takes_voicemail(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    node = daemon_factory("--media-process", metrics=True)
    assert node.metrics_port is not None
    metrics_port = node.metrics_port
    # one plane per worker: each is killed, so every call loses its media
    workers = any(_children(child) for child in _children(node.proc.pid))
    planes = _planes(node.proc.pid, workers=workers)
    assert planes

    def metric(name: str) -> float:
        return scrape_node(metrics_port).get(name, -1.0)

    workdir = tmp_path / "held"
    workdir.mkdir()
    held = [
        node.address,
        "-sf",
        str(FIXTURES / "uac_wait_bye.xml"),
        "-s",
        "demo",
        "-m",
        "3",
        "-l",
        "3",
        "-r",
        "10",
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port()),
        "-mp",
        str(free_port(both=False)),
        "-timeout",
        "50s",
    ]
    result: list[SippResult] = []
    runner = threading.Thread(
        target=lambda: result.append(run_sipp(held, cwd=workdir, timeout=60)), daemon=True
    )
    runner.start()
    try:
        # the three calls hear the IVR: the plane sends their streams
        _wait(lambda: metric("callengine_media_streams") == 3, 20, "3 streams in the plane")
        assert metric("callengine_media_plane_restarts_total") == 0
        for plane in planes:
            os.kill(plane, signal.SIGKILL)
    finally:
        runner.join(65)  # run_sipp kills SIPp at 60 s
    assert result, "SIPp did not finish"
    sipp = result[0]
    # SIPp counts a call as successful only once the node's BYE came
    assert sipp.stats.get("SuccessfulCall(C)") == "3", (sipp.stats, sipp.stdout[-1500:])
    _wait(
        lambda: metric("callengine_media_plane_restarts_total") == len(planes),
        10,
        "the restarts on /metrics",
    )
    _wait(lambda: len(_planes(node.proc.pid, workers=workers)) == len(planes), 10, "the new planes")
    assert not set(_planes(node.proc.pid, workers=workers)) & set(planes)
    for plane in planes:
        assert subprocess.run(["kill", "-0", str(plane)], check=False).returncode != 0

    # the new plane: prompts, an RFC 4733 digit, and a voicemail recording
    sipp_call(node, "ivr_voicemail.xml", tmp_path)
    logs = stop_and_read_logs(node)
    assert len(logs) == 4 and len({log["call_id"] for log in logs}) == 4, logs
    lost = [log for log in logs if log["q850_cause"] == 41]
    assert len(lost) == 3, [(log["result"], log["q850_cause"]) for log in logs]
    (voicemail,) = [log for log in logs if log["voicemail_key"]]
    assert_voicemail_path(voicemail)
    assert voicemail["rtp_quality"]["dtmf_received"] == 1, voicemail["rtp_quality"]
    recording = read_wav(voicemail_file(node, voicemail["voicemail_key"]))
    ncc, _ = correlation(recording, capture_audio(CAPTURES / "g711a.pcap"))
    assert ncc >= MIN_CORRELATION, ncc
