"""Media against SIPp's captures: G.711 audio and RFC 4733 digits from real pcaps,
and malformed RTP/RTCP from a raw socket.

The engine runs in the test process; SIPp 3.6.1 (Debian ``sip-tester``) plays the
captures shipped in ``/usr/share/sip-tester`` with ``play_pcap_audio``. SIPp resolves
``pcap/...`` against its working directory, so each run gets a temporary folder with a
``pcap`` link to that directory.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from integration.audio import (
    CAPTURES,
    MIN_CORRELATION,
    RATE,
    active_span,
    capture_audio,
    correlation,
    read_wav,
)
from integration.support import SIPP, Handler, free_port, in_process_engine, run_sipp

from callengine.call import Call
from callengine.engine import Engine

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sipp"


def _require_sipp() -> None:
    # Not a skip: these are acceptance tests; a missing tool is a failure to report.
    assert Path(SIPP).exists(), f"SIPp not found at {SIPP} (Debian package sip-tester)"
    assert (CAPTURES / "g711a.pcap").exists(), f"SIPp captures missing in {CAPTURES}"


def run_sipp_call(
    tmp: Path, handler: Handler, scenario: list[str], *, during: Any = None
) -> tuple[dict[str, str], Engine, str]:
    """One SIPp call into an in-process engine; ``during(engine)`` runs meanwhile."""
    _require_sipp()
    workdir = tmp / "sipp"
    workdir.mkdir(exist_ok=True)
    link = workdir / "pcap"
    if not link.exists():
        link.symlink_to(CAPTURES)

    async def main() -> tuple[dict[str, str], Engine, str]:
        async with in_process_engine(tmp, handler) as (engine, port):
            args = [
                f"127.0.0.1:{port}",
                *scenario,
                "-s",
                "1000",
                "-m",
                "1",
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-p",
                str(free_port()),
                "-mp",
                str(free_port(both=False)),
                "-timeout",
                "40",
            ]
            sipp = asyncio.ensure_future(asyncio.to_thread(run_sipp, args, cwd=workdir))
            if during is not None:
                await during(engine)
            result = await sipp
            for _ in range(50):
                if not engine.calls:
                    break
                await asyncio.sleep(0.05)
            return result.stats, engine, result.stdout + result.stderr

    return asyncio.run(main())


def _assert_one_successful_call(stats: dict[str, str], output: str) -> None:
    assert stats.get("SuccessfulCall(C)") == "1", (stats, output[-2000:])
    assert stats.get("FailedCall(C)") == "0", (stats, output[-2000:])


# ------------------------------------------------------------------------------- tests


def test_uac_pcap_audio_is_recorded_in_full(tmp_path: Path) -> None:
    recorded: list[tuple[str, float]] = []

    async def handler(call: Call) -> None:
        await call.answer()
        rec = await call.record(
            "recordings/sipp.wav", max_seconds=60, beep=False, stop_on_dtmf=False
        )
        recorded.append((rec.key, rec.seconds))

    stats, engine, output = run_sipp_call(tmp_path, handler, ["-sn", "uac_pcap"])
    _assert_one_successful_call(stats, output)
    assert len(recorded) == 1
    recording = read_wav(engine.storage_path("default", recorded[0][0]))
    reference = capture_audio(CAPTURES / "g711a.pcap")  # 236 packets of 30 ms
    rms = float(np.sqrt(np.mean(recording**2)))
    assert rms > 10 ** (-40 / 20), f"recording is silent (RMS {rms:.5f})"
    span, ref_span = active_span(recording), active_span(reference)
    ncc, offset = correlation(recording, reference)
    print(
        f"uac_pcap -> engine: active {span / RATE:.3f} s vs capture {ref_span / RATE:.3f} s, "
        f"correlation {ncc:.4f} at {offset / RATE:.3f} s, file {len(recording) / RATE:.3f} s"
    )
    assert abs(span - ref_span) <= 0.02 * ref_span
    assert ncc >= MIN_CORRELATION


def test_rfc4733_captures_reach_gather(tmp_path: Path) -> None:
    gathered: list[str] = []
    seen: list[list[str]] = []

    async def handler(call: Call) -> None:
        await call.answer()
        gathered.append(await call.gather(max_digits=10, timeout=10.0, terminator="#"))
        seen.append(list(call.digits))
        await call.wait_hangup()

    stats, _, output = run_sipp_call(
        tmp_path, handler, ["-sf", str(FIXTURES / "media_dtmf_2833.xml")]
    )
    _assert_one_successful_call(stats, output)
    assert gathered == ["123"]
    assert seen == [["1", "2", "3", "#"]]


def _rtp(
    *,
    version: int = 2,
    pt: int = 8,
    seq: int = 1,
    ts: int = 0,
    ssrc: int = 0x1234,
    cc: int = 0,
    padding: bool = False,
    payload: bytes = b"\xd5" * 160,
) -> bytes:
    b0 = (version << 6) | (0x20 if padding else 0) | cc
    return struct.pack("!BBHII", b0, pt, seq, ts, ssrc) + payload


MALFORMED_RTP = {
    "short header": b"\x80\x08\x00\x01\x00\x00",
    "bad version": _rtp(version=1),
    "huge CSRC count": _rtp(cc=15, payload=b"\x00" * 8),
    "padding beyond length": _rtp(padding=True, payload=b"\xd5" * 10 + b"\xff"),
    "empty": b"",
}
MALFORMED_RTCP = {
    "short": b"\x81\xc8",
    "bad version": b"\x41\xc9\x00\x01" + b"\x00" * 4,
    "length beyond datagram": b"\x81\xc9\x00\x20" + b"\x00" * 4,
}
WRONG_SSRC = [_rtp(ssrc=0xBADBAD, seq=seq, ts=seq * 160) for seq in (5, 900, 77, 40000)]


def test_malformed_rtp_and_rtcp_are_dropped_and_counted(tmp_path: Path) -> None:
    calls: list[Call] = []
    answered = asyncio.Event()
    before: dict[str, Any] = {}

    async def handler(call: Call) -> None:
        await call.answer()
        calls.append(call)
        answered.set()
        await call.wait_hangup()

    async def attack(engine: Engine) -> None:
        await asyncio.wait_for(answered.wait(), 20)
        media = calls[0].media
        await asyncio.sleep(1.0)  # SIPp's audio is flowing and latched by now
        before.update(media.quality())
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        with sock:
            for data in MALFORMED_RTP.values():
                sock.sendto(data, ("127.0.0.1", media.rtp_port))
            for data in WRONG_SSRC:
                sock.sendto(data, ("127.0.0.1", media.rtp_port))
            for data in MALFORMED_RTCP.values():
                sock.sendto(data, ("127.0.0.1", media.rtcp_port))
        await asyncio.sleep(1.0)
        assert calls[0].active, "the call did not survive malformed packets"

    stats, _, output = run_sipp_call(tmp_path, handler, ["-sn", "uac_pcap"], during=attack)
    _assert_one_successful_call(stats, output)  # the call stayed up until SIPp's BYE
    call = calls[0]
    assert call.end_reason == "remote_bye", call.end_reason
    quality = call.quality
    print("quality after malformed packets:", quality)
    assert quality["malformed"] - before["malformed"] == len(MALFORMED_RTP)
    assert quality["wrong_ssrc"] - before["wrong_ssrc"] == len(WRONG_SSRC)
    assert quality["rtcp_malformed"] - before["rtcp_malformed"] == len(MALFORMED_RTCP)
    assert quality["relatches"] == 0  # nobody stole the stream
    # Audio kept being accepted after the attack: the whole capture (236 packets)
    # plus SIPp's DTMF capture (10 packets).
    assert quality["packets_received"] >= 236 + 10 - 3, quality
    assert quality["packets_received"] > before["packets_received"] + 100
