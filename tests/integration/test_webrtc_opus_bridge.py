"""A browser on Opus bridged to a G.711 SIP phone: transcoded both ways, and recorded.

The node lists Opus first (``codecs: [opus, PCMU, PCMA, telephone-event]``), so the
browser's call is answered on Opus; baresip (an independent SIP stack; only its G.711
module is loaded) is registered as user 102 and rung through 1002 (the demo tenant's
support group), so the bridged SIP leg is G.711. The engine's side of the WebRTC leg is
G.711 (docs/webrtc.md, "Codecs"): aiortc decodes the browser's Opus and encodes what
goes back, and the bridge relays G.711 to baresip. Each side hears what the other says
(Chromium: a WAV as its microphone, what it heard recorded by the page; baresip: a WAV
source, what it heard dumped by its ``sndfile`` module).

User 102 has ``record`` set, so the bridged call is recorded: the caller is the
browser, so the recording taps the WebRTC session (left: what the browser sent) and the
phone's RTP session (right: what baresip sent).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import soundfile
import yaml
from integration.audio import (
    MIN_CORRELATION,
    RATE,
    correlation,
    envelope_correlation,
    read_wav,
    slip_tolerant_correlation,
    windowed_correlation,
)
from integration.chromium import Browser
from integration.interop import (
    Account,
    Baresip,
    speech,
    write_wav,
)
from integration.support import Daemon, free_port
from integration.test_ivr_demo import stop_and_read_logs, voicemail_file
from integration.test_webrtc_api import page_heard

from config_cache import load_demo_tenant

pytestmark = pytest.mark.integration
DaemonFactory = Callable[..., Daemon]
ROOT = Path(__file__).resolve().parents[2]
BROWSER_SAYS = ROOT / "media" / "prompts" / "voicemail_greeting.wav"  # looped
OPUS_CORRELATION = 0.8
"""The browser's voice in the call recording: Opus decoded by aiortc, placed by RTP
timestamp (no jitter buffer stretches it): 0.87 measured (test_webrtc_ivr.py: 0.88-0.92;
G.711 paths give 0.99). Opus keeps what is heard more than the waveform."""
ENVELOPE_CORRELATION = 0.75
"""What each side heard, loudness envelopes (``envelope_correlation``): 0.89-0.99
measured on a quiet machine, 0.79 at worst with the 2-core machine at load 5 (the
node's loop late, a relay underrun: a glitch a listener hears); other speech 0.06-0.37."""
WAVEFORM_FLOOR = 0.6
"""Waveforms (slip-tolerant): 0.85-0.88 quiet, 0.67 at worst under load; a garbled
transcoding (a wrong rate, noise) keeps an envelope but not this."""
PHONE_WAITS = 2.0  # seconds of silence before baresip talks (the browser's NetEq settles)
PHONE_SAYS = 4.0


def test_opus_browser_bridged_to_a_g711_sip_phone_both_ways_and_recorded(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    doc = load_demo_tenant().to_doc()
    doc["users"]["102"]["record"] = True
    (tmp_path / "demo.json").write_text(json.dumps(doc))
    ws_port = free_port(socket.SOCK_STREAM, both=False)
    web_port = free_port(socket.SOCK_STREAM, both=False)
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ws_port": ws_port,
                "webphone": f"127.0.0.1:{web_port}",
                "codecs": ["opus", "PCMU", "PCMA", "telephone-event"],
                "digest_algorithms": ["MD5"],  # baresip's libre 1.1.0 (docs/interop.md)
                "tenant_files": ["demo.json"],
                "log_format": "json",
            }
        )
    )
    node = daemon_factory("--config", str(config))
    said = speech()[: int(PHONE_SAYS * RATE)]
    source = write_wav(tmp_path / "phone-says.wav", PHONE_WAITS, said, 30.0)
    phone = Baresip(
        tmp_path / "baresip", node, Account("102", "demo102"), source=source, auto_answer=True
    )
    browser_says = read_wav(BROWSER_SAYS)
    heard: dict[str, Any] = {}

    async def main() -> None:
        browser = await Browser.start(
            f"http://127.0.0.1:{web_port}/", audio=BROWSER_SAYS, profile=tmp_path / "chromium"
        )
        try:
            await browser.wait_for("document.readyState === 'complete' && !!window.JsSIP")
            await browser.wait_for("document.getElementById('server').value")
            await browser.evaluate(
                "phone.register({user: '100', password: 'demo100', domain: 'demo'})"
            )
            await browser.wait_for("phone.state.registered", timeout=10)
            await asyncio.to_thread(phone.wait_registered)
            assert await browser.evaluate("phone.call('sip:1002@demo', {raw: true})")
            await browser.wait_for("phone.state.call === 'confirmed'", timeout=10)
            await asyncio.to_thread(phone.wait_event, "CALL_ESTABLISHED", 10)
            # baresip talks from PHONE_WAITS s after its answer, for PHONE_SAYS s
            heard["browser"] = await page_heard(
                browser, said, bound=WAVEFORM_FLOOR, timeout=PHONE_WAITS + PHONE_SAYS + 8
            )
            assert await browser.evaluate("phone.hangup()")
            await asyncio.to_thread(phone.wait_event, "CALL_CLOSED", 10)
        finally:
            browser.close()

    try:
        asyncio.run(main())
    finally:
        phone.close()
    soundfile.write(tmp_path / "browser-heard.wav", heard["browser"], RATE)
    phone_heard, _ = phone.recordings()

    # Opus on the browser's leg, G.711 on the phone's: transcoded each way. Opus keeps
    # what is heard more than the waveform, and Chromium's NetEq slips and stretches it
    # under load, so what proves "that audio, in time" is the loudness envelope; the
    # waveform floor catches a garbled transcoding.
    checks = {
        "browser heard baresip": (heard["browser"], said, browser_says),
        # from its third second: Chromium's Opus encoder starts at a low bitrate and
        # ramps up (0.81 measured for a first loop of the microphone, 0.88 after)
        "baresip heard the browser": (read_wav(phone_heard)[2 * RATE :], browser_says, said),
    }
    for what, (signal, reference, other) in checks.items():
        envelope, at = envelope_correlation(signal, reference)
        cross, _ = envelope_correlation(signal, other)
        ncc, _, slip = slip_tolerant_correlation(signal, reference)
        median, pieces = windowed_correlation(signal, reference)
        print(
            f"{what}: envelope {envelope:.3f} at {at / RATE:.2f} s (other side {cross:.3f}); "
            f"waveform {ncc:.4f} (worst slip {slip / RATE * 1000:.0f} ms), per second "
            f"{[round(p, 3) for p in pieces]}"
        )
        assert envelope >= ENVELOPE_CORRELATION and cross < 0.5, (what, envelope, cross)
        assert ncc >= WAVEFORM_FLOOR, (what, ncc, pieces)

    logs = stop_and_read_logs(node)
    (log,) = [entry for entry in logs if entry["callee"] == "1002"]
    quality = log["rtp_quality"]
    assert quality["webrtc"] and quality["codec"] == "opus", quality
    assert quality["engine_codec"] in ("PCMU", "PCMA"), quality
    key = log["recording_key"]
    assert key, log
    stereo, rate = soundfile.read(str(voicemail_file(node, key)), dtype="float64")
    assert rate == RATE and stereo.ndim == 2, stereo.shape
    # left: the browser (decoded from Opus by aiortc); right: baresip (G.711)
    for what, channel, own, other, bound in (
        ("left (the browser)", stereo[:, 0], browser_says, said, OPUS_CORRELATION),
        ("right (baresip)", stereo[:, 1], said, browser_says, MIN_CORRELATION),
    ):
        ncc, at = correlation(channel, own)
        cross, _ = correlation(channel, other)
        print(f"recording {what}: {ncc:.4f} at {at / RATE:.2f} s; other side {cross:.4f}")
        assert ncc >= bound and cross < 0.5, (what, ncc, cross)
