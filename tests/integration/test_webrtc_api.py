"""The Engine API rings registered users: a browser (WebRTC) and a SIP phone alike.

A node runs in this process (``callengine.node.Node``, as ``callengine serve`` does)
with its SIP-over-WebSocket port and its web phone page. Chromium (headless, a WAV as
its microphone; tests/integration/chromium.py) registers as user 100 of the demo
tenant over WS; a SIPp phone registers as user 101 (Digest over UDP) and talks
(``rec_phone.xml``: a prompt written into its capture). Then application code:

1. ``engine.originate("user:101", tenant="demo")`` rings the SIP phone (plain RTP
   offer), records the call in two channels, and ``call.transfer(["user:100"])``
   bridges it to the browser (a WebRTC leg): the browser hears the phone; the
   recording's left channel is the phone, its right channel the browser once bridged
   (a WebRTC session as a recording's far side).
2. ``engine.originate("user:100", tenant="demo")`` rings the browser: the INVITE
   carries aiortc's WebRTC offer (the binding has ``+sip.ice``), the page answers, the
   call plays prompts the page hears, and its recording (a WebRTC session as the
   recorded one) holds the browser's microphone left and the prompts right.
3. ``originate("user:102")`` (nobody registered) is 480 at once.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from integration.audio import (
    MIN_CORRELATION,
    RATE,
    correlation,
    prompt_pcm,
    read_wav,
    slip_tolerant_correlation,
    windowed_correlation,
)
from integration.chromium import Browser
from integration.support import SIPP, free_port
from integration.test_call_recording import sipp_workdir
from integration.test_ring_user import register

from callengine.admin import WebPhoneServer
from callengine.call import SipError
from callengine.config import load_config
from callengine.node import Node

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SIPP_DIR = ROOT / "tests" / "fixtures" / "sipp"
BROWSER_SAYS = ROOT / "media" / "prompts" / "voicemail_greeting.wav"  # its microphone, looped
PHONE_SILENT = 2.0  # seconds the phone waits (after rec_phone's 1 s) before it talks
PHONE_SAYS = 4.0  # seconds of the menu prompt it says then


def _pcm(recording: str) -> npt.NDArray[np.float64]:
    data = np.frombuffer(base64.b64decode(recording), dtype="<i2")
    return data.astype(np.float64) / 32768.0


async def page_heard(
    browser: Browser, said: npt.NDArray[np.float64], *, bound: float, timeout: float
) -> npt.NDArray[np.float64]:
    """What the page has heard, once it holds all of ``said`` (slip-tolerant correlation
    >= ``bound``, and its end reached), or at ``timeout`` (the test's checks then say
    what is missing): audio arrives when its sender's clock says, not the test's."""
    deadline = time.monotonic() + timeout
    while True:
        heard = _pcm(await browser.evaluate("phone.recording()"))
        if len(heard) >= len(said):
            ncc, at, _ = slip_tolerant_correlation(heard, said)
            # and 0.3 s more: a slip puts the end up to 0.2 s after where it all fits
            if ncc >= bound and at + len(said) + int(0.3 * RATE) <= len(heard):
                return heard
        if time.monotonic() > deadline:
            return heard
        await asyncio.sleep(0.25)


def _heard(what: str, signal: npt.NDArray[np.float64], said: npt.NDArray[np.float64]) -> None:
    """The browser heard ``said``: >= 0.9 where each half second may slip 0.2 s (a
    relay underrun or the browser's NetEq shifts what follows by 20 ms, inaudibly)."""
    ncc, at, slip = slip_tolerant_correlation(signal, said)
    median, pieces = windowed_correlation(signal, said)
    print(
        f"{what}: {ncc:.4f} at {at / RATE:.2f} s (worst slip {slip / RATE * 1000:.0f} ms); "
        f"per second {[round(p, 3) for p in pieces]}"
    )
    assert ncc >= MIN_CORRELATION, (what, ncc, pieces)


def _check(what: str, signal: npt.NDArray[np.float64], own: Any, other: Any) -> None:
    """``signal`` holds ``own`` (>= 0.9 at its best alignment) and not ``other``."""
    ncc, at = correlation(signal, own)
    cross, _ = correlation(signal, other)
    print(f"{what}: {ncc:.4f} at {at / RATE:.2f} s; with the other side {cross:.4f}")
    assert ncc >= MIN_CORRELATION, (what, ncc)
    assert cross < 0.5, (what, cross)


def test_engine_api_rings_a_registered_browser_and_a_sip_phone(tmp_path: Path) -> None:
    assert Path(SIPP).exists(), f"SIPp not found at {SIPP}"
    node_port = free_port()
    ws_port = free_port(socket.SOCK_STREAM, both=False)
    web_port = free_port(socket.SOCK_STREAM, both=False)
    cfg = load_config(
        None,
        listen=[f"127.0.0.1:{node_port}"],
        transports=["UDP"],
        ws_port=ws_port,
        data_dir=str(tmp_path / "data"),
        metrics=None,
    )
    menu = prompt_pcm("menu")[: int(PHONE_SAYS * RATE)]
    silence = np.zeros(int(PHONE_SILENT * RATE))
    workdir = sipp_workdir(tmp_path, (np.concatenate([silence, menu]) * 32767).astype(np.int16))
    browser_says = read_wav(BROWSER_SAYS)
    results: dict[str, Any] = {}

    async def main() -> None:
        node = Node(cfg)
        await node.start()
        web = WebPhoneServer(node, "127.0.0.1", web_port)
        await web.start()
        phone_port = free_port(both=False)
        phone: subprocess.Popen[bytes] | None = None
        browser = await Browser.start(
            f"http://127.0.0.1:{web_port}/", audio=BROWSER_SAYS, profile=tmp_path / "chromium"
        )
        try:
            await browser.wait_for("document.readyState === 'complete' && !!window.JsSIP")
            server = await browser.wait_for("document.getElementById('server').value")
            assert server == f"ws://127.0.0.1:{ws_port}", server
            await browser.evaluate(
                "phone.register({user: '100', password: 'demo100', domain: 'demo'})"
            )
            ok = await asyncio.to_thread(register, node_port, "101", "demo101", phone_port)
            assert ok.startswith("SIP/2.0 200 OK"), ok
            phone = subprocess.Popen(
                [SIPP, "-sf", str(SIPP_DIR / "rec_phone.xml"), "-i", "127.0.0.1"]
                + ["-mi", "127.0.0.1", "-p", str(phone_port), "-mp", str(free_port(both=False))]
                + ["-m", "1", "-nostdin", "-timeout", "60s"],
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await browser.wait_for("phone.state.registered", timeout=10)
            await run(node, browser, phone)
        finally:
            browser.close()
            if phone is not None and phone.poll() is None:
                phone.kill()
                phone.wait()
            await web.stop()
            await node.stop()

    async def answer(browser: Browser) -> None:
        await browser.wait_for("phone.state.call === 'ringing'", timeout=10)
        assert await browser.evaluate("phone.answer({raw: true})")
        await browser.wait_for("phone.state.call === 'confirmed'", timeout=10)

    async def run(node: Node, browser: Browser, phone: subprocess.Popen[bytes]) -> None:
        engine = node.engine
        # nobody registered as 102: 480 at once, nothing rung
        with pytest.raises(SipError) as refused:
            await engine.originate("user:102", tenant="demo", timeout=5)
        assert refused.value.status == 480, refused.value

        # 1. the SIP phone (user 101), then transferred to the browser (user 100)
        call = await engine.originate("user:101", tenant="demo", timeout=10)
        assert not call.webrtc and call.tenant == "demo" and call.media.codec.name == "PCMA"
        key = call.start_recording(channels="stereo")
        transfer = asyncio.ensure_future(call.transfer(["user:100"], timeout=10))
        await answer(browser)
        assert await browser.evaluate("phone.state.events.find(e => e.kind === 'incoming')")
        # the phone talks 3 s after its answer, for PHONE_SAYS s: the browser hears it
        heard = await page_heard(browser, menu, bound=MIN_CORRELATION, timeout=15)
        assert await browser.evaluate("phone.hangup()")
        result = await asyncio.wait_for(transfer, 5)
        assert result.answered and result.target == "user:100", result
        assert call.active  # the browser's hang-up ends its leg, not the API's call
        recorded = call.stop_recording()
        assert recorded is not None and recorded.key == key
        results["phone_heard"] = heard
        results["phone_recording"] = engine.storage_path("demo", key)
        await call.hangup()
        assert await asyncio.to_thread(phone.wait, 10) == 0, "SIPp's call did not end well"

        # 2. the browser itself (user 100): a WebRTC offer, prompts, a recording
        await browser.evaluate("phone.state.events = []")
        rung = asyncio.ensure_future(engine.originate("user:100", tenant="demo", timeout=10))
        await answer(browser)
        call = await asyncio.wait_for(rung, 5)
        assert call.webrtc and call.media.quality()["webrtc"], call.media.quality()
        key = call.start_recording(channels="stereo")
        # Chromium's jitter buffer (NetEq) adapts during a stream's first ~1.5 s,
        # stretching it by 17-32 ms here and there (measured): inaudible, but a
        # waveform correlation sees it. The prompts start after 1.5 s of silence.
        while call.media.frames_sent < 75:
            await asyncio.sleep(0.02)
        await call.play(["welcome", "goodbye"], barge_in=False)
        recorded = call.stop_recording()
        assert recorded is not None and recorded.seconds > 3.5, recorded
        # what the page heard, once the end of the last prompt came out of its jitter buffer
        results["browser_heard"] = await page_heard(
            browser, prompt_pcm("goodbye"), bound=MIN_CORRELATION, timeout=3
        )
        results["browser_recording"] = engine.storage_path("demo", key)
        results["quality"] = call.media.quality()
        await call.hangup()
        ended = await browser.wait_for("phone.state.events.find(e => e.kind === 'ended')")
        assert ended["originator"] == "remote", ended

    asyncio.run(main())
    quality = results["quality"]
    assert quality["codec"] == "PCMU" and quality["connected"], quality

    # 1. the browser heard the phone (bridged by the API's transfer)
    _heard("browser heard the phone", results["phone_heard"], menu)
    # the phone call's recording: left the phone, right the browser once bridged
    stereo, rate = soundfile.read(str(results["phone_recording"]), dtype="float64")
    assert rate == RATE and stereo.ndim == 2, stereo.shape
    _check("phone call recording, left (the phone)", stereo[:, 0], menu, browser_says)
    _check("phone call recording, right (the browser)", stereo[:, 1], browser_says, menu)

    # 2. the browser heard the API's prompts; the recording holds both sides
    welcome, goodbye = prompt_pcm("welcome"), prompt_pcm("goodbye")
    prompts = np.concatenate([welcome, goodbye])
    _heard("browser heard the prompts", results["browser_heard"], welcome)
    _heard("browser heard the prompts", results["browser_heard"], goodbye)
    stereo, rate = soundfile.read(str(results["browser_recording"]), dtype="float64")
    assert rate == RATE and stereo.ndim == 2, stereo.shape
    _check("browser call recording, left (the browser)", stereo[:, 0], browser_says, prompts)
    # each prompt on its own: the engine plays whole 20 ms frames, so the second one
    # starts a few ms later than in the concatenated reference
    _check("browser call recording, right (welcome)", stereo[:, 1], welcome, browser_says)
    _check("browser call recording, right (goodbye)", stereo[:, 1], goodbye, browser_says)
