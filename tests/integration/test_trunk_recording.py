"""A bridged trunk call recorded (issue #12): B2BUA through a SIPp carrier, Azurite.

The node has one trunk to a carrier gateway (a SIPp UAS, ``pri_uas_talk.xml``) that
answers and, a second later, talks (a bundled prompt the test writes into a G.711
pcap); its outbound route ``9`` has ``record: true``. A SIPp caller from a trusted
source dials 9... and talks too (SIPp's G.711 capture), then hangs up 8 s after the
answer. The recording lands in Azurite exactly once, is two-channel (left: the caller,
right: the carrier), each channel correlates >= 0.9 with what that side sent and not
with the other side, and its length is the call's connected time (answer to hang-up,
from the call log) within 1 %.
"""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
from integration.audio import CAPTURES, RATE, capture_audio, correlation
from integration.support import SIPP, Daemon, free_port, run_sipp, start_daemon
from integration.test_azure_storage import CONTAINER, Azurite, stop_and_read_logs
from integration.test_call_recording import (
    MAX_LENGTH_RATIO,
    check_channel,
    sipp_workdir,
    uploaded,
    write_rtp_pcap,
)
from integration.test_pri_failover import Carrier

from media.prompts import PromptCache

pytestmark = pytest.mark.integration

SIPP_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "sipp"


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    server = Azurite(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def carrier(tmp_path: Path) -> Iterator[Carrier]:
    gateway = Carrier("A", free_port(both=False), tmp_path / "carrier")
    yield gateway
    gateway.kill()


def node_config(tmp: Path, azurite: Azurite, carrier_port: int) -> Path:
    config = {
        "media_storage": {
            "kind": "azure",
            "connection_string": azurite.connection_string,
            "container": CONTAINER,
            "retry_initial": 0.2,
            "retry_max": 1.0,
        },
        "trunks": {
            "carrier-a": {
                "carrier": "A",
                "gateway": {"host": "127.0.0.1", "port": carrier_port},
                # calls from its address to numbers outside its DIDs are callers dialling out
                "dids": ["3225550100-3225550199"],
                "spans": [{"name": "a-e1-1", "type": "E1"}],
                "health": {"probe": False},
            }
        },
        "trunk_groups": {"pstn": {"trunks": ["carrier-a"]}},
        "outbound_routes": [{"prefix": "9", "strip": 1, "group": "pstn", "record": True}],
        "trusted_sources": ["127.0.0.1/32"],
    }
    path = tmp / "node.yaml"
    path.write_text(json.dumps(config))
    return path


def test_trunk_call_recorded_in_two_channels(
    tmp_path: Path, azurite: Azurite, carrier: Carrier
) -> None:
    assert Path(SIPP).exists(), f"SIPp not found at {SIPP}"
    carrier_pcm = PromptCache(None).pcm("menu", RATE)
    (carrier.workdir / "pcap").mkdir(parents=True)
    write_rtp_pcap(carrier.workdir / "pcap" / "carrier.pcap", carrier_pcm)
    carrier.start("pri_uas_talk.xml")
    node: Daemon = start_daemon(
        tmp_path, "--config", str(node_config(tmp_path, azurite, carrier.port)), metrics=True
    )
    try:
        workdir = sipp_workdir(tmp_path)
        args = [node.address, "-sf", str(SIPP_DIR / "rec_caller.xml"), "-s", "915551230000"]
        args += ["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port())]
        args += ["-mp", str(free_port(both=False)), "-m", "1", "-timeout", "60s"]
        result = run_sipp(args, cwd=workdir, timeout=70)
        assert result.stats.get("SuccessfulCall(C)") == "1", (result.stats, result.stderr[-2000:])
        uploaded(node, 1)
        logs = stop_and_read_logs(node)
    finally:
        if node.proc.poll() is None:
            node.stop(signal.SIGKILL, timeout=5)
    carrier.stop()
    assert carrier.invites() == 1

    (log,) = [entry for entry in logs if entry.get("recording_key")]
    assert log["state"] == "final" and log["result"] == "completed", log
    assert [(t["trunk"], t["number"], t["outcome"]) for t in log["trunk_attempts"]] == [
        ("carrier-a", "15551230000", "connected")
    ]
    key = log["recording_key"]
    assert key == f"recordings/{log['call_id']}.wav", key
    name = f"default/{key}"  # a trunk call from a trusted source belongs to no tenant
    (media,) = [m for m in log["extra"]["media"] if m["key"] == key]
    blob = azurite.container().get_blob_client(name)
    assert media["blob"] == name and media["url"] == blob.url, media
    recordings = {n: b for n, b in azurite.blobs().items() if "/recordings/" in n}
    assert list(recordings) == [name], sorted(recordings)  # exactly once
    assert recordings[name].metadata == {"tenant": "default", "call_id": log["call_id"]}

    stereo, rate = soundfile.read(io.BytesIO(blob.download_blob().readall()), dtype="float64")
    assert rate == RATE and stereo.ndim == 2 and stereo.shape[1] == 2, stereo.shape
    connected = log["end_time"] - log["answer_time"]
    length = len(stereo) / RATE
    print(f"{name}: {length:.3f} s for {connected:.3f} s connected")
    assert abs(length - connected) <= MAX_LENGTH_RATIO * connected, (length, connected)

    caller = capture_audio(CAPTURES / "g711a.pcap")
    far = carrier_pcm.astype(np.float64) / 32768.0
    check_channel(stereo[:, 0], caller, far, "left (the caller)")
    check_channel(stereo[:, 1], far, caller, "right (the carrier)")
    # the carrier waited a second after its answer before it talked
    assert correlation(stereo[:, 1], far)[1] > 0.8 * RATE
