"""A browser agent: Chromium's web phone page answers a call from the demo IVR.

Debian's Chromium runs headless (tests/integration/chromium.py) with a WAV as its
microphone, opens the node's web phone page (``webphone:``), and registers with JsSIP
as user 100 of the demo tenant over WSS (digest auth, the tests' self-signed
certificate). pjsua2 (``python -m callengine.softphone``) calls the demo IVR (1000),
presses 1 (RFC 4733) for the sales ring group, which rings the browser: the engine's
INVITE carries aiortc's WebRTC offer (DTLS-SRTP, ICE, bundle, rtcp-mux); the page
answers, and the engine bridges the WebRTC leg to pjsua2's RTP leg. What each side
heard is compared with what the other played (the page records with WebAudio and
hands back 8 kHz PCM). Then the browser's hang-up, its peer connection closed without
a BYE (DTLS close: the node hangs up, cause 102, and logs why) and its tab closed (the
WebSocket goes: cause 41) each end the call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import yaml
from integration.audio import MIN_CORRELATION, RATE, correlation, read_wav, windowed_correlation
from integration.chromium import Browser
from integration.support import Daemon, free_port
from integration.test_ivr_demo import stop_and_read_logs
from integration.test_tls_ipv6 import _self_signed

pytestmark = pytest.mark.integration
DaemonFactory = Callable[..., Daemon]
ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "media" / "prompts"
CALLER_PLAYS = PROMPTS / "menu.wav"  # 6 s of speech the browser must hear
BROWSER_PLAYS = PROMPTS / "voicemail_greeting.wav"  # the browser's microphone (looped)


def _node(tmp_path: Path, daemon_factory: DaemonFactory) -> tuple[Daemon, int, int]:
    cert, key = _self_signed(tmp_path)
    wss_port = free_port(socket.SOCK_STREAM, both=False)
    web_port = free_port(socket.SOCK_STREAM, both=False)
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "wss_port": wss_port,
                "tls_cert": str(cert),
                "tls_key": str(key),
                "tls_port": free_port(socket.SOCK_STREAM, both=False),
                "webphone": f"127.0.0.1:{web_port}",
                "log_format": "json",
            }
        )
    )
    return daemon_factory("--config", str(config)), wss_port, web_port


async def _softphone(spec: dict[str, Any]) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Start pjsua2's scripted call; returns the process and a dict filled at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callengine.softphone",
        json.dumps(spec),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return proc, {}


async def _result(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> dict[str, Any]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    lines = out.decode().strip().splitlines()
    assert lines, f"softphone exit {proc.returncode}: {err.decode(errors='replace')[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _pcm(recording: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    data = np.frombuffer(base64.b64decode(recording), dtype="<i2")
    return data.astype(np.float64) / 32768.0


def _log_lines(daemon: Daemon) -> list[dict[str, Any]]:
    out = []
    for line in daemon.log().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


async def _wait_log(daemon: Daemon, text: str, timeout: float) -> float:
    t0 = time.monotonic()
    while text not in daemon.log():
        assert time.monotonic() - t0 < timeout, f"{text!r} not logged:\n{daemon.log()[-4000:]}"
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


def test_browser_answers_ivr_transfer_audio_both_ways_and_hangups(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    daemon, wss_port, web_port = _node(tmp_path, daemon_factory)
    caller_rx = tmp_path / "caller-heard.wav"

    async def main() -> None:
        browser = await Browser.start(
            f"http://127.0.0.1:{web_port}/",
            audio=BROWSER_PLAYS,
            profile=tmp_path / "chromium",
        )
        try:
            await run(browser)
        finally:
            browser.close()

    async def ring_and_answer(browser: Browser) -> None:
        await browser.wait_for("phone.state.call === 'ringing'", timeout=20)
        assert await browser.evaluate("phone.answer({raw: true})")
        await browser.wait_for("phone.state.call === 'confirmed'", timeout=10)

    async def run(browser: Browser) -> None:
        await browser.wait_for("document.readyState === 'complete' && !!window.JsSIP")
        # the page found the node's WSS address in config.json
        server = await browser.wait_for("document.getElementById('server').value")
        assert server == f"wss://127.0.0.1:{wss_port}", server
        await browser.evaluate("phone.register({user: '100', password: 'demo100', domain: 'demo'})")
        await browser.wait_for("phone.state.registered", timeout=10)

        # 1. pjsua2 -> IVR 1000, presses 1 (sales: user 100) -> the browser answers;
        # pjsua2 plays menu.wav once it is connected, and hangs up at the end
        caller, _ = await _softphone(
            {
                "uri": f"sip:1000@127.0.0.1:{daemon.port}",
                "dtmf": "1",
                "dtmf_delay": 1.0,
                "play": str(CALLER_PLAYS),
                "play_delay": 7.0,
                "record": str(caller_rx),
                "duration": 14.5,
                "port": free_port(),
            }
        )
        await ring_and_answer(browser)
        incoming = await browser.evaluate("phone.state.events.find(e => e.kind === 'incoming')")
        result = await _result(caller)
        assert result["answered"] and result["hangup_by"] == "local", result
        assert result["dtmf_sent"] == "1", result
        # the caller's hang-up ends the browser's leg too
        ended = await browser.wait_for(
            "phone.state.events.find(e => e.kind === 'ended')", timeout=5
        )
        assert ended["originator"] == "remote", ended
        heard = _pcm(await browser.evaluate("phone.recording()"))
        soundfile.write(tmp_path / "browser-heard.wav", heard, RATE)

        # the whole file at one alignment (0.9999 when no packet came late), and each
        # second on its own (a jitter buffer's stretch shifts what follows it)
        checks = {
            "browser heard the caller": (heard, read_wav(CALLER_PLAYS)),
            "caller heard the browser": (read_wav(caller_rx), read_wav(BROWSER_PLAYS)),
        }
        for what, (signal, reference) in checks.items():
            whole, at = correlation(signal, reference)
            median, pieces = windowed_correlation(signal, reference)
            print(
                f"{what}: {len(signal) / RATE:.2f} s recorded; whole {whole:.4f} at "
                f"{at / RATE:.2f} s; per second median {median:.4f} "
                f"{[round(p, 3) for p in pieces]}"
            )
            assert median >= MIN_CORRELATION, (what, median, pieces)
            assert min(pieces) >= 0.5, (what, pieces)  # no second lost altogether
        assert incoming["peer"] == "softphone", incoming  # the caller's From user

        # 2. a call to the sales group (1001) hung up by the browser: BYE to pjsua2
        await browser.evaluate("phone.state.events = []")
        caller, _ = await _softphone(
            {"uri": f"sip:1001@127.0.0.1:{daemon.port}", "duration": 20, "port": free_port()}
        )
        await ring_and_answer(browser)
        await asyncio.sleep(1.0)
        assert await browser.evaluate("phone.hangup()")
        result = await _result(caller)
        assert result["answered"] and result["hangup_by"] == "remote", result
        assert result["connected_seconds"] < 5, result

        # 3. the page's peer connection closes without a BYE (its WebSocket stays):
        # the node sees the media end (DTLS close_notify, else ICE consent lost) and
        # hangs up, logging why
        caller, _ = await _softphone(
            {"uri": f"sip:1001@127.0.0.1:{daemon.port}", "duration": 40, "port": free_port()}
        )
        await ring_and_answer(browser)
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        assert await browser.evaluate("phone.dropMedia()")
        result = await _result(caller, timeout=40)
        took = time.monotonic() - t0
        print(f"media dropped: the caller's call ended {took:.2f} s later")
        assert result["answered"] and result["hangup_by"] == "remote", result
        assert took < 35.0  # RFC 7675's consent timeout (30 s) and a margin

        # 4. the tab closes mid-call: the node ends the call (its WebSocket and its
        # WebRTC media are gone) and logs it; pjsua2 gets a BYE
        caller, _ = await _softphone(
            {"uri": f"sip:1001@127.0.0.1:{daemon.port}", "duration": 40, "port": free_port()}
        )
        await ring_and_answer(browser)
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        await browser.close_page()
        result = await _result(caller, timeout=40)
        took = time.monotonic() - t0
        print(f"tab closed: the caller's call ended {took:.2f} s later")
        assert result["answered"] and result["hangup_by"] == "remote", result
        assert took < 30.0  # RFC 7675's consent timeout

    asyncio.run(main())
    lines = _log_lines(daemon)
    webrtc = [r["msg"] for r in lines if r.get("logger") == "media.webrtc"]
    assert sum("connected (PCMU)" in m for m in webrtc) == 4, webrtc  # the caller's codec
    # call 3: the media's end is logged, and the call hung up for it (Q.850 102)
    assert any(
        m.endswith(("ended: DTLS closed by the peer", "ended: ICE consent lost")) for m in webrtc
    )
    ends = [
        r["msg"] for r in lines if r.get("logger") == "callengine.engine" and "call " in r["msg"]
    ]
    assert any(m.startswith("call inbound softphone -> 1001: ") and "cause 102" in m for m in ends)
    # call 4: the closed tab's connection is logged, the call ended with Q.850 41
    assert any(
        "WSS connection" in r["msg"] and "closed: bindings of 100@demo removed" in r["msg"]
        for r in lines
    )
    assert any("cause 41" in m for m in ends), ends

    # the call log of the first call shows the path: IVR menu, 1, the sales group, user 100
    logs = stop_and_read_logs(daemon)
    first = next(log for log in logs if log["callee"] == "1000")
    path = [(e["node"], e["outcome"]) for e in first["ivr_path"] if e.get("event") == "step"]
    assert path == [
        ("welcome", "barged_in"),
        ("hours", "open"),
        ("menu", "option"),
        ("sales", "answered"),
    ], path
    transfer = first["ivr_path"][3]["details"]
    assert transfer["target"] == "user:100" and transfer["status"] == 200, transfer
