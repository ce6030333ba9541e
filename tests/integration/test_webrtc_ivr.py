"""The browser calls the demo IVR: a WebRTC offer answered by the engine (aiortc).

Chromium's web phone page (headless, a WAV as microphone; tests/integration/chromium.py)
registers as user 100 over WSS and calls 1000. Chromium offers Opus first, so the IVR
runs over an Opus WebRTC leg: the page hears the welcome prompt, presses 3 (DTMF by SIP
INFO, JsSIP's default) during the menu, and leaves a voicemail of its microphone; the
page hangs up. The call log shows the path; the voicemail holds what the browser sent.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from integration.audio import RATE, prompt_pcm, read_wav, windowed_correlation
from integration.chromium import Browser
from integration.support import Daemon, free_port
from integration.test_ivr_demo import assert_voicemail_path, stop_and_read_logs, voicemail_file
from integration.test_tls_ipv6 import _self_signed
from integration.test_webrtc import _pcm

pytestmark = pytest.mark.integration
DaemonFactory = Callable[..., Daemon]
ROOT = Path(__file__).resolve().parents[2]
OPUS_CORRELATION = 0.8
"""Opus is a perceptual codec: its output tracks the waveform less than G.711 does
(MIN_CORRELATION, 0.9, holds for the G.711 legs of test_webrtc.py)."""
BROWSER_PLAYS = ROOT / "media" / "prompts" / "transfer.wav"  # not a prompt of this path


def test_browser_calls_the_ivr_over_opus_and_leaves_a_voicemail(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
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
                # Opus first: the WebRTC leg takes it (G.711 on the engine's side)
                "codecs": ["opus", "PCMU", "PCMA", "telephone-event"],
            }
        )
    )
    daemon = daemon_factory("--config", str(config))

    async def main() -> None:
        browser = await Browser.start(
            f"http://127.0.0.1:{web_port}/", audio=BROWSER_PLAYS, profile=tmp_path / "chromium"
        )
        try:
            await browser.wait_for("document.readyState === 'complete' && !!window.JsSIP")
            await browser.wait_for("document.getElementById('server').value")
            await browser.evaluate(
                "phone.register({user: '100', password: 'demo100', domain: 'demo'})"
            )
            await browser.wait_for("phone.state.registered", timeout=10)
            assert await browser.evaluate("phone.call('sip:1000@demo', {raw: true})")
            await browser.wait_for("phone.state.call === 'confirmed'", timeout=10)
            await asyncio.sleep(2.6)  # the welcome prompt (1.8 s), then the menu
            assert await browser.evaluate("phone.dtmf('3')")
            await asyncio.sleep(7.0)  # the greeting (2.4 s), the beep, ~4 s of message
            heard = _pcm(await browser.evaluate("phone.recording()"))
            assert await browser.evaluate("phone.hangup()")
            await browser.wait_for("phone.state.events.find(e => e.kind === 'ended')")
        finally:
            browser.close()
        soundfile.write(tmp_path / "browser-heard.wav", heard, RATE)
        # the greeting after the digit (the welcome prompt starts before ICE and DTLS
        # have connected: the page hears only its end)
        median, pieces = windowed_correlation(heard, prompt_pcm("voicemail_greeting"))
        print(f"browser heard the greeting: per second {[round(p, 3) for p in pieces]}")
        assert median >= OPUS_CORRELATION, pieces

    asyncio.run(main())
    logs = stop_and_read_logs(daemon)
    assert len(logs) == 1, logs
    log = logs[0]
    vm = assert_voicemail_path(log)
    assert log["rtp_quality"]["webrtc"] and log["rtp_quality"]["codec"] == "opus", log
    recording, rate = soundfile.read(
        str(voicemail_file(daemon, log["voicemail_key"])), dtype="float64"
    )
    assert rate == RATE  # the engine side of a WebRTC leg is G.711 (docs/webrtc.md)
    median, pieces = windowed_correlation(recording, read_wav(BROWSER_PLAYS))
    print(
        f"voicemail {len(recording) / RATE:.2f} s ({vm['details']}); the browser's "
        f"microphone per second {[round(p, 3) for p in pieces]}"
    )
    # Opus keeps what is heard, not the waveform: 0.88-0.92 per second measured here
    # both ways, where the G.711 paths of test_webrtc.py give 0.99
    assert median >= OPUS_CORRELATION, pieces
    assert np.sqrt(np.mean(recording**2)) > 0.01
