"""benchmarks/webrtc_legs.py: how py-spy's stacks are put in categories, the tables,
the SIPp scenarios it writes, and one small step end to end (a real node, aiortc
callers over SIP-over-WebSocket bridged to a registered SIPp UAS, SIPp RTP callers)."""

from __future__ import annotations

import json
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from benchmarks import webrtc_legs
from benchmarks.webrtc_legs import WAITING, categorise, classify, table

MAIN = "thread (1): MainThread;_serve (callengine/cli.py:155);run (uvloop/__init__.py:92)"
RAW = "\n".join(
    [
        # SRTP: libsrtp's C frame under aiortc's DTLS transport
        f"{MAIN};_recv_next (aiortc/rtcdtlstransport.py:668);unprotect (pylibsrtp/__init__.py:254)"
        ";_cffi_f_srtp_unprotect (pylibsrtp/_binding.abi3.so);srtp_unprotect_mki (srtp.c:1) 30",
        # a datagram leaving through uvloop: the syscall, not the event loop
        f"{MAIN};uv__udp_sendmsg1 (udp.c:1383);sendmsg (libc.so.6) 20",
        # the cffi call releases the GIL and wakes a codec thread
        f"{MAIN};unprotect (pylibsrtp/__init__.py:254);_cffi_f_srtp_unprotect "
        "(pylibsrtp/_binding.abi3.so);PyThread_release_lock (libpython3.11.so.1.0)"
        ";sem_post (libc.so.6) 10",
        f"{MAIN};_next_pcm (media/webrtc.py:300);decode (media/codecs/g711.py:118) 15",
        f"{MAIN};_on_request (callengine/engine.py:500) 5",
        f"{MAIN};uv__io_poll (linux.c:1452);Handle__run (loop.c:70905) 10",
        f"{MAIN};send (aioice/ice.py:755);data_received (aioice/stun.py:1) 5",
        "thread (9): uvloop_0;0x7f (libc.so.6);encode (aiortc/codecs/opus.py:61)"
        ";opus_encode_native (libopus.so.0) 5",
        # idle: a parked pool thread (bare addresses) and a thread waiting for the GIL
        "thread (7): uvloop_1;0x7fce0caaed90 (libc.so.6);0x7fce0caa3f16 (libc.so.6) 300",
        "thread (8): audio-decoder;decode (aiortc/codecs/g711.py:26)"
        ";take_gil (ceval_gil.c:1);pthread_cond_timedwait (libc.so.6) 40",
        "",
    ]
)


def test_each_stack_goes_to_its_innermost_category() -> None:
    def of(line: str) -> str:
        return classify(line.rpartition(" ")[0].split(";"))

    lines = RAW.splitlines()
    assert [of(line) for line in lines[:10]] == [
        "SRTP",
        "UDP syscalls",
        "GIL handoff (codec threads)",
        "engine WebRTC glue",
        "engine",
        "event loop",
        "ICE (aioice)",
        "Opus",
        WAITING,
        WAITING,
    ]


def test_shares_leave_waiting_threads_out() -> None:
    result = categorise(RAW)
    assert result["samples"] == 100 and result["waiting"] == 340
    assert result["shares"]["SRTP"] == 0.30 and result["shares"]["UDP syscalls"] == 0.20
    assert abs(sum(result["shares"].values()) - 1.0) < 1e-9


def test_table_puts_webrtc_beside_rtp_with_the_cpu_ratio() -> None:
    steps = [
        {
            "kind": "webrtc",
            "n": 10,
            "up": 10,
            "node_cpu_pct": 40.0,
            "delivery": 0.995,
            "worst_caller": 0.99,
            "rtp_lost": 0,
            "loop_lag_p99_ms": 20.0,
            "loop_lag_max_ms": 50.0,
            "loadgen_cpu_pct": 38.0,
            "profile": categorise(RAW),
        },
        {"kind": "rtp", "n": 10, "up": 10, "node_cpu_pct": 5.0, "profile": {}},
    ]
    text = table(steps, "bridged, g711")
    row = next(line for line in text.splitlines() if line.startswith("| 10 | 10 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "99.5 % (99 %)" and cells[4] == "40.0 %" and cells[5] == "4.00"
    assert cells[-2] == "0.50" and cells[-1] == "8.0"  # 4 % vs 0.5 % of a core per leg
    assert "| 10 | webrtc | 100 | 30 % |" in text


def test_scenarios_are_well_formed_sipp_xml(tmp_path: Path) -> None:
    webrtc_legs.uac_scenario(tmp_path / "uac.xml", hold=20)
    webrtc_legs.uas_scenario(tmp_path / "uas.xml")
    uac = ET.parse(tmp_path / "uac.xml").getroot()
    plays = [e for e in uac.iter("exec") if e.get("play_pcap_audio")]
    assert len(plays) == 3  # 20 s of 7.05 s captures
    uas = ET.parse(tmp_path / "uas.xml").getroot()
    recv = [e for e in uas.iter("recv") if e.get("request") == "BYE"]
    assert recv[0].get("ontimeout") == "1"  # streams again until the node's BYE


@pytest.mark.integration
def test_one_small_step_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert shutil.which("sipp"), "sipp is installed by make install (APT_PKGS)"
    monkeypatch.setattr(sys, "argv", ["webrtc_legs"])
    rc = webrtc_legs.main(
        ["--steps", "2", "--window", "3", "--settle", "1", "--no-profile", "--out", str(tmp_path)]
    )
    assert rc == 0
    report = json.loads(next(tmp_path.glob("webrtc_legs-*.json")).read_text())
    webrtc, rtp = report["steps"]
    assert webrtc["kind"] == "webrtc" and webrtc["up"] == 2, webrtc
    assert webrtc["note"] == "wire codec PCMA"
    # media came back from the SIPp UAS through the bridge (a loaded machine may drop some)
    assert webrtc["delivery"] > 0.8 and webrtc["rtp_packets"] > 0.8 * 2 * 3 * 50, webrtc
    assert webrtc["node_cpu_pct"] > 0
    assert rtp["kind"] == "rtp" and rtp["up"] == 2 and rtp["node_cpu_pct"] > 0, rtp
