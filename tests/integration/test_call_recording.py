"""Call recording end to end (issue #12): real SIPp peers, a real node, Azurite.

The node runs the demo tenant from a tenant file with recording switched on (for the
whole tenant, or for user 100 only) and keeps its media in Azurite through the spool.

* An IVR call: SIPp leaves a voicemail through the demo IVR. The call recording is a
  two-channel file: left is what SIPp sent (its G.711 capture), right is what the IVR
  played (the welcome prompt, the greeting).
* A bridged call: a SIPp phone registered as user 100 answers a call to the sales ring
  group and talks (a prompt the test writes into a pcap); the caller (SIPp) talks too
  (SIPp's G.711 capture). Left is the caller, right is the phone.

Each time: the recording lands in Azurite exactly once with the call's metadata, its
length is the call's connected time (answer to hang-up, from the call log) within
1 % (the issue's bound; measured: 1-2 ms), each channel correlates >= 0.9 with what that side sent and not with the other
side, and the call log carries the blob URL.
"""

from __future__ import annotations

import io
import json
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from integration.audio import CAPTURES, MIN_CORRELATION, RATE, capture_audio, correlation
from integration.support import (
    SIPP,
    Daemon,
    free_port,
    run_sipp,
    scrape_fresh,
    start_daemon,
    wait_metric,
)
from integration.test_azure_storage import CONTAINER, Azurite, stop_and_read_logs
from integration.test_media_sipp import run_sipp_call
from integration.test_ring_user import register

from callengine.call import Call
from config_cache import load_demo_tenant
from media.codecs import PCMA, create_codec
from media.prompts import PromptCache

pytestmark = pytest.mark.integration

SIPP_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "sipp"
MAX_LENGTH_RATIO = 0.01  # the file's length vs the connected time
PROMPT_SLACK = 0.2  # seconds between a recorded segment and the prompt played in it


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    server = Azurite(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def recording_node(tmp_path: Path, azurite: Azurite) -> Iterator[Callable[..., Daemon]]:
    """``factory(tenant_changes, *serve_args, **media_storage)``: a node whose demo
    tenant (from a tenant file) is changed by ``tenant_changes``, with media storage on
    Azurite (``media_storage``: more settings of that section)."""
    started: list[Daemon] = []

    def factory(
        change: Callable[[dict[str, Any]], None], *extra: str, **storage_options: Any
    ) -> Daemon:
        doc = load_demo_tenant().to_doc()
        change(doc)
        (tmp_path / "demo.json").write_text(json.dumps(doc))
        config = tmp_path / "node.yaml"
        storage = {
            "kind": "azure",
            "connection_string": azurite.connection_string,
            "container": CONTAINER,
            "retry_initial": 0.2,
            "retry_max": 1.0,
            **storage_options,
        }
        config.write_text(json.dumps({"media_storage": storage, "tenant_files": ["demo.json"]}))
        node = start_daemon(tmp_path, "--config", str(config), *extra, metrics=True)
        started.append(node)
        return node

    yield factory
    for node in started:
        node.stop(signal.SIGKILL if node.proc.poll() is None else signal.SIGTERM, timeout=5)


def sipp_workdir(tmp: Path, phone_audio: npt.NDArray[np.int16] | None = None) -> Path:
    """A SIPp working directory: ``pcap/`` with SIPp's captures (and the phone's)."""
    workdir = tmp / "sipp"
    (workdir / "pcap").mkdir(parents=True, exist_ok=True)
    for name in ("g711a.pcap", "dtmf_2833_3.pcap"):
        link = workdir / "pcap" / name
        if not link.exists():
            link.symlink_to(CAPTURES / name)
    if phone_audio is not None:
        write_rtp_pcap(workdir / "pcap" / "phone.pcap", phone_audio)
    return workdir


def write_rtp_pcap(path: Path, pcm: npt.NDArray[np.int16]) -> None:
    """``pcm`` as a classic pcap of 20 ms G.711 A-law RTP packets (Ethernet/IPv4/UDP),
    as SIPp's ``play_pcap_audio`` reads them (it paces by the capture's timestamps)."""
    payloads = create_codec(PCMA).encode_frames(pcm)
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i, payload in enumerate(payloads):
        rtp = struct.pack("!BBHII", 0x80, 8, i, i * 160, 0x5EED) + payload
        udp = struct.pack("!HHHH", 40000, 40002, 8 + len(rtp), 0) + rtp
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0, b"\x7f\0\0\1", b"\x7f\0\0\1"
        )
        frame = b"\0" * 12 + b"\x08\x00" + ip + udp
        usec = i * 20000
        out += struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame))
        out += frame
    path.write_bytes(bytes(out))


def recording_of(
    azurite: Azurite, logs: list[dict[str, Any]]
) -> tuple[dict[str, Any], npt.NDArray[np.float64]]:
    """The one recorded call's log and its stereo audio, checked against the blob and
    the call's connected time."""
    log, data = stored_recording(azurite, logs)
    connected = log["end_time"] - log["answer_time"]
    length = len(data) / RATE
    print(f"{log['recording_key']}: {length:.3f} s for {connected:.3f} s connected")
    assert abs(length - connected) <= MAX_LENGTH_RATIO * connected, (length, connected)
    return log, data


def stored_recording(
    azurite: Azurite, logs: list[dict[str, Any]]
) -> tuple[dict[str, Any], npt.NDArray[np.float64]]:
    """The one recorded call's log and its stereo audio: stored exactly once, with the
    call's metadata, where the call log says."""
    (log,) = [entry for entry in logs if entry.get("recording_key")]
    assert log["state"] == "final" and log["result"] == "completed", log
    key = log["recording_key"]
    assert key == f"recordings/{log['call_id']}.wav", key
    name = f"demo/{key}"
    (media,) = [m for m in log["extra"]["media"] if m["key"] == key]
    blob = azurite.container().get_blob_client(name)
    assert media["blob"] == name and media["url"] == blob.url, media
    recordings = {n: b for n, b in azurite.blobs().items() if "/recordings/" in n}
    assert list(recordings) == [name], sorted(recordings)  # exactly once
    assert recordings[name].metadata == {"tenant": "demo", "call_id": log["call_id"]}
    data, rate = soundfile.read(io.BytesIO(blob.download_blob().readall()), dtype="float64")
    assert rate == RATE and data.ndim == 2 and data.shape[1] == 2, data.shape
    return log, np.asarray(data)


def check_channel(
    channel: npt.NDArray[np.float64],
    own: npt.NDArray[np.float64],
    other: npt.NDArray[np.float64],
    what: str,
) -> None:
    ncc, offset = correlation(channel, own)
    cross, _ = correlation(channel, other)
    print(
        f"{what}: correlation {ncc:.4f} at {offset / RATE:.3f} s; with the other side {cross:.4f}"
    )
    assert ncc >= MIN_CORRELATION, (what, ncc)
    assert cross < 0.5, (what, cross)


def uploaded(node: Daemon, count: int) -> None:
    assert node.metrics_port is not None
    wait_metric(node.metrics_port, 'callengine_media_uploads_total{result="ok"}', float(count))
    wait_metric(node.metrics_port, "callengine_media_spool_files", 0.0)


def test_ivr_call_recorded_in_two_channels(
    tmp_path: Path, azurite: Azurite, recording_node: Callable[..., Daemon]
) -> None:
    assert Path(SIPP).exists(), f"SIPp not found at {SIPP}"

    def record_every_call(doc: dict[str, Any]) -> None:
        doc["recording"] = {"enabled": True, "channels": "stereo"}

    node = recording_node(record_every_call)
    workdir = sipp_workdir(tmp_path)
    args = [node.address, "-sf", str(SIPP_DIR / "ivr_voicemail.xml"), "-s", "1000"]
    args += ["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port())]
    args += ["-mp", str(free_port(both=False)), "-m", "1", "-timeout", "60s"]
    result = run_sipp(args, cwd=workdir, timeout=70)
    assert result.stats.get("SuccessfulCall(C)") == "1", (result.stats, result.stderr[-2000:])
    uploaded(node, 2)  # the voicemail and the call recording
    logs = stop_and_read_logs(node)
    log, stereo = recording_of(azurite, logs)
    assert log["voicemail_key"] and len(log["extra"]["media"]) == 2
    caller = capture_audio(CAPTURES / "g711a.pcap")
    prompts = PromptCache(None)
    welcome = prompts.pcm("welcome", RATE).astype(np.float64) / 32768.0
    check_channel(stereo[:, 0], caller, welcome, "left (the caller)")
    check_channel(stereo[:, 1], welcome, caller, "right (the IVR)")
    greeting = prompts.pcm("voicemail_greeting", RATE).astype(np.float64) / 32768.0
    ncc, offset = correlation(stereo[:, 1], greeting)
    assert ncc >= MIN_CORRELATION, ncc
    # the greeting played before the caller's message (recorded in the same file)
    assert offset < correlation(stereo[:, 0], caller)[1]


def test_ivr_node_records_only_its_part_of_the_call(
    tmp_path: Path, azurite: Azurite, recording_node: Callable[..., Daemon]
) -> None:
    """A flow node's ``record`` option: recording starts when the call enters the node
    marked ``record: true`` and stops at the one marked ``record: false`` (the tenant
    records nothing by itself). The caller (SIPp) talks throughout."""
    assert Path(SIPP).exists(), f"SIPp not found at {SIPP}"

    def record_one_node(doc: dict[str, Any]) -> None:
        doc["numbers"]["5550500"] = {"route": "ivr:recorded", "name": "Recorded node"}
        doc["flows"]["recorded"] = {
            "start": "hello",
            "nodes": {
                "hello": {"type": "play", "prompts": ["welcome"], "next": "talk"},
                "talk": {
                    "type": "play",
                    "prompts": ["voicemail_greeting"],
                    "record": True,
                    "next": "done",
                },
                "done": {"type": "play", "prompts": ["goodbye"], "record": False, "next": "bye"},
                "bye": {"type": "hangup"},
            },
        }

    node = recording_node(record_one_node)
    workdir = sipp_workdir(tmp_path)
    args = [node.address, "-sf", str(SIPP_DIR / "uac_talk_wait_bye.xml"), "-s", "5550500"]
    args += ["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port())]
    args += ["-mp", str(free_port(both=False)), "-m", "1", "-timeout", "30s"]
    result = run_sipp(args, cwd=workdir, timeout=40)
    assert result.stats.get("SuccessfulCall(C)") == "1", (result.stats, result.stderr[-2000:])
    uploaded(node, 1)
    logs = stop_and_read_logs(node)
    log, stereo = stored_recording(azurite, logs)
    # as long as the call stayed in the recorded node (within 1 %)
    (talk,) = [e for e in log["ivr_path"] if e["event"] == "step" and e["node"] == "talk"]
    span = talk["ended"] - talk["started"]
    length = len(stereo) / RATE
    print(f"{log['recording_key']}: {length:.3f} s for {span:.3f} s in the recorded node")
    assert abs(length - span) <= MAX_LENGTH_RATIO * span, (length, span)
    events = [e["event"] for e in log["ivr_path"] if e.get("kind") == "recording"]
    assert events == ["start", "stop"], log["ivr_path"]
    prompts = PromptCache(None)
    greeting, welcome, goodbye = (
        prompts.pcm(name, RATE).astype(np.float64) / 32768.0
        for name in ("voicemail_greeting", "welcome", "goodbye")
    )
    # right: what the IVR played while in the recorded node, and nothing else
    check_channel(stereo[:, 1], greeting, welcome, "right (the recorded node's prompt)")
    assert correlation(stereo[:, 1], goodbye)[0] < 0.5
    # left: what the caller said meanwhile, a part of its capture past the welcome
    caller = capture_audio(CAPTURES / "g711a.pcap")
    ncc, offset = correlation(caller, stereo[:, 0])
    print(f"left (the caller): correlation {ncc:.4f} at {offset / RATE:.3f} s of its capture")
    assert ncc >= MIN_CORRELATION, ncc
    assert abs(offset / RATE - len(welcome) / RATE) < 0.3, offset


def test_spool_at_its_quota_refuses_recordings_and_calls_go_on(
    tmp_path: Path, azurite: Azurite, recording_node: Callable[..., Daemon]
) -> None:
    """Storage down and a tiny spool quota: the first recordings fill the spool (near
    quota: metric and one log line), the next is refused (counted, one log line), and
    every call is answered, played and hung up as usual."""
    assert Path(SIPP).exists(), f"SIPp not found at {SIPP}"
    azurite.stop()
    quota = 100_000  # a call recording here: ~1.9 s of stereo 16-bit 8 kHz, ~61 kB

    def record_short_calls(doc: dict[str, Any]) -> None:
        doc["recording"] = {"enabled": True, "channels": "stereo"}
        doc["numbers"]["5550600"] = {"route": "ivr:short", "name": "Short"}
        doc["flows"]["short"] = {
            "start": "hello",
            "nodes": {
                "hello": {"type": "play", "prompts": ["welcome"], "next": "bye"},
                "bye": {"type": "hangup"},
            },
        }

    # one worker, whatever the pass: the quota is each spool's, and a multi-worker node
    # has a spool per worker (docs/workers.md), so three calls spread over two workers
    # would not fill either
    node = recording_node(record_short_calls, "--workers", "1", spool_quota=quota, spool_near=0.5)
    assert node.metrics_port is not None
    workdir = sipp_workdir(tmp_path)
    args = [node.address, "-sf", str(SIPP_DIR / "uac_wait_bye.xml"), "-s", "5550600"]
    args += ["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port())]
    args += ["-mp", str(free_port(both=False)), "-m", "3", "-l", "1", "-timeout", "30s"]
    result = run_sipp(args, cwd=workdir, timeout=40)
    # every call went on: answered, the prompt played, the node's BYE
    assert (result.stats.get("SuccessfulCall(C)"), result.stats.get("FailedCall(C)")) == (
        "3",
        "0",
    ), (result.stats, result.stderr[-2000:])
    figures = scrape_fresh(node.metrics_port)
    print({k: v for k, v in figures.items() if "spool" in k})
    assert figures["callengine_media_spool_quota_bytes"] == quota
    assert figures["callengine_media_spool_files"] == 2
    assert figures["callengine_media_spool_bytes"] >= quota  # two recordings: full
    assert figures["callengine_media_spool_near_quota"] == 1
    assert figures["callengine_media_spool_refused_total"] == 1
    assert figures['callengine_media_uploads_total{result="ok"}'] == 0

    logs = stop_and_read_logs(node)
    text = node.log()
    assert text.count("media spool near its quota:") == 1, text
    assert text.count("media spool full:") == 1, text
    calls = sorted((e for e in logs if e["callee"] == "5550600"), key=lambda e: e["start_time"])
    assert [e["result"] for e in calls] == ["completed"] * 3
    # in process, or in the media plane (the default), which answers the engine's start
    # with a refusal: the same line, and the call log names no recording for the call
    assert "call not recorded (tenant demo): media spool full" in text
    assert [bool(e.get("recording_key")) for e in calls] == [True, True, False]
    failed = [e for e in calls[2]["ivr_path"] if e.get("kind") == "recording"]
    # in process it fails as it starts; the plane refuses it just after its start
    assert [e["event"] for e in failed] in (["failed"], ["start", "failed"]), failed
    assert "SpoolFull" in failed[-1]["error"]


def test_bridged_call_recorded_in_two_channels(
    tmp_path: Path, azurite: Azurite, recording_node: Callable[..., Daemon]
) -> None:
    assert Path(SIPP).exists(), f"SIPp not found at {SIPP}"

    def record_user_100(doc: dict[str, Any]) -> None:
        doc["users"]["100"]["record"] = True  # the tenant itself records nothing

    # with the media plane (docs/media-plane.md): the bridge, the recording with its
    # right channel following the bridge, and the spool's upload are all in the plane's
    # process (test_trunk_recording.py records a bridged call with media in process)
    node = recording_node(record_user_100, "--media-process")
    phone_pcm = PromptCache(None).pcm("menu", RATE)
    workdir = sipp_workdir(tmp_path, phone_pcm)
    phone_port = free_port(both=False)
    ok = register(node.port, "100", "demo100", phone_port)
    assert ok.startswith("SIP/2.0 200 OK"), ok
    phone_args = [SIPP, "-sf", str(SIPP_DIR / "rec_phone.xml"), "-i", "127.0.0.1"]
    phone_args += ["-mi", "127.0.0.1", "-p", str(phone_port), "-mp", str(free_port(both=False))]
    phone_args += ["-m", "1", "-nostdin", "-timeout", "60s"]
    phone = subprocess.Popen(
        phone_args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.3)
        # 1001: the demo tenant's "Sales direct" number, ring group sales (100, 101)
        args = [node.address, "-sf", str(SIPP_DIR / "rec_caller.xml"), "-s", "1001"]
        args += ["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port())]
        args += ["-mp", str(free_port(both=False)), "-m", "1", "-timeout", "60s"]
        result = run_sipp(args, cwd=workdir, timeout=70)
        assert result.stats.get("SuccessfulCall(C)") == "1", (
            result.stats,
            result.stderr[-2000:],
        )
        assert phone.wait(20) == 0, "the phone's call did not end with the caller's BYE"
    finally:
        if phone.poll() is None:
            phone.kill()
            phone.wait()
    uploaded(node, 1)
    logs = stop_and_read_logs(node)
    log, stereo = recording_of(azurite, logs)
    caller = capture_audio(CAPTURES / "g711a.pcap")
    phone_audio = phone_pcm.astype(np.float64) / 32768.0
    check_channel(stereo[:, 0], caller, phone_audio, "left (the caller)")
    check_channel(stereo[:, 1], phone_audio, caller, "right (the phone)")
    # the phone waited a second after answering before it talked
    assert correlation(stereo[:, 1], phone_audio)[1] > 0.8 * RATE


def test_recording_by_api_in_segments(tmp_path: Path) -> None:
    """``call.start_recording()`` / ``stop_recording()`` in application code: two mono
    segments of one call in local storage, each as long as what was played while it
    ran, and holding it (the caller, SIPp, is silent)."""
    results: list[Any] = []

    async def handler(call: Call) -> None:
        await call.answer()
        call.start_recording(channels="mono")
        await call.play(["welcome"], barge_in=False)
        results.append(call.stop_recording())
        await call.play(["tone:beep"], barge_in=False)
        call.start_recording(channels="mono")
        await call.play(["goodbye"], barge_in=False)
        results.append(call.stop_recording())
        assert call.stop_recording() is None
        await call.hangup()

    stats, engine, output = run_sipp_call(
        tmp_path, handler, ["-sf", str(SIPP_DIR / "uac_wait_bye.xml")]
    )
    assert stats.get("SuccessfulCall(C)") == "1", (stats, output[-2000:])
    first, second = results
    assert second.key == first.key.replace(".wav", "-2.wav")
    prompts = PromptCache(None)
    for result, prompt in ((first, "welcome"), (second, "goodbye")):
        path = tmp_path / "data" / "media" / "default" / result.key
        pcm, rate = soundfile.read(str(path), dtype="float64")
        assert rate == RATE and pcm.ndim == 1
        reference = prompts.pcm(prompt, RATE).astype(np.float64) / 32768.0
        assert abs(len(pcm) / RATE - result.seconds) < 0.001
        assert abs(len(pcm) - len(reference)) / RATE <= PROMPT_SLACK, (prompt, len(pcm))
        ncc, _ = correlation(pcm, reference)
        print(f"{result.key}: {result.seconds:.3f} s, correlation with {prompt} {ncc:.4f}")
        assert ncc >= MIN_CORRELATION, (prompt, ncc)
