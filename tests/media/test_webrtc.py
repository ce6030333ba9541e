"""media/webrtc.py: which SDP is a browser's, which codec an answer picks, and two
WebRTC sessions (aiortc both sides, ICE on this host's addresses) exchanging audio."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile

from media.bridge import transcoder
from media.callrecording import CallRecording
from media.codecs import OPUS, PCMA, PCMU, create_codec
from media.recorder import Recorder
from media.webrtc import WebRtcSession
from media.webrtcsdp import first_codec, is_webrtc_sdp

# What Chromium 156 offers (trimmed): Opus first, DTLS-SRTP, ICE, bundle, rtcp-mux.
CHROME_OFFER = (
    b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    b"a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\n"
    b"m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\n"
    b"a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    b"a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33"
    b":44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n"
    b"a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n"
    b"a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    b"a=rtpmap:63 red/48000/2\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\n"
    b"a=rtpmap:126 telephone-event/8000\r\n"
)
PLAIN_OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
)
SDES_OFFER = PLAIN_OFFER.replace(b"RTP/AVP", b"RTP/SAVP") + (
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
)


def test_a_browser_offer_is_webrtc_and_plain_or_sdes_ones_are_not() -> None:
    assert is_webrtc_sdp(CHROME_OFFER)
    assert not is_webrtc_sdp(PLAIN_OFFER)
    assert not is_webrtc_sdp(SDES_OFFER)
    # the profile alone is not enough: DTLS needs the certificate's fingerprint
    assert not is_webrtc_sdp(CHROME_OFFER.replace(b"a=fingerprint:", b"a=x-fingerprint:"))
    assert not is_webrtc_sdp(b"")


def test_first_codec_follows_the_m_line_order_among_ours() -> None:
    assert first_codec(CHROME_OFFER, [PCMU, PCMA, OPUS]) == OPUS
    assert first_codec(CHROME_OFFER, [PCMA, PCMU]) == PCMU  # the description's order
    assert first_codec(CHROME_OFFER, [PCMA]) == PCMA
    # static types without rtpmap (RFC 3551) are known by number
    assert first_codec(b"m=audio 9 UDP/TLS/RTP/SAVPF 8 0\r\n", [PCMU, PCMA]) == PCMA
    assert first_codec(PLAIN_OFFER.replace(b" 0 101", b" 101"), [PCMU]) is None


def test_transcoder_opus_to_pcmu_keeps_the_tone() -> None:
    out: list[bytes] = []
    relay = transcoder(OPUS, PCMU, out.append)
    opus = create_codec(OPUS)
    t = np.arange(48000) / 48000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    for i in range(0, len(tone), 960):
        relay(opus.encode(tone[i : i + 960]))
    assert len(out) == 50 and {len(p) for p in out} == {160}
    pcm = np.concatenate([create_codec(PCMU).decode(p) for p in out[10:]]).astype(float)
    spectrum = np.abs(np.fft.rfft(pcm))
    peak = np.argmax(spectrum) * 8000 / len(pcm)
    assert abs(peak - 440) < 5, peak
    assert np.sqrt(np.mean(pcm**2)) > 3000


def test_an_unusable_offer_is_a_value_error() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="WebRTC offer refused"):
            await WebRtcSession.answer(b"v=0\r\nnonsense", [PCMU])
        lines = CHROME_OFFER.split(b"\r\n")
        kept = [ln for ln in lines if not ln.startswith((b"a=rtpmap:", b"a=fmtp:"))]
        only_g722 = b"\r\n".join(kept).replace(b"111 63 9 0 8 13 110 126", b"9") + (
            b"a=rtpmap:9 G722/8000\r\n"
        )
        with pytest.raises(ValueError):
            await WebRtcSession.answer(only_g722, [PCMU, PCMA])

    asyncio.run(main())


@pytest.mark.integration
def test_two_sessions_connect_and_carry_a_tone_then_the_closed_side_is_seen() -> None:
    async def main() -> None:
        lost = asyncio.Event()
        a, offer = await WebRtcSession.offer([OPUS, PCMU, PCMA], prefer="PCMA", label="a")
        assert b"UDP/TLS/RTP/SAVPF 8 " in offer and b"a=fingerprint:" in offer
        assert b"a=rtcp-mux" in offer and b"a=group:BUNDLE" in offer
        b, answer = await WebRtcSession.answer(offer, [PCMU, PCMA], label="b", on_timeout=lost.set)
        assert a.accept_answer(answer)
        assert a.codec == b.codec == PCMU  # the answerer's order decides
        got: list[bytes] = []
        b.on_audio = got.append
        codec = create_codec(PCMU)
        t = np.arange(16000) / 8000
        tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        payloads = [codec.encode(tone[i : i + 160]) for i in range(0, len(tone), 160)]
        await asyncio.wait_for(a.play([payloads], barge_in=False), 10)
        await asyncio.sleep(0.3)
        pcm = np.concatenate([codec.decode(p) for p in got]).astype(float)
        assert len(got) > 80 and np.sqrt(np.mean(pcm**2)) > 3000, (len(got), a.quality())
        assert a.quality()["connected"] and b.quality()["frames_received"] == len(got)
        await a.stop()  # DTLS close_notify: b's side ends the call
        await asyncio.wait_for(lost.wait(), 10)
        assert b.failed == "DTLS closed by the peer"
        await b.stop()

    asyncio.run(main())


def _peak_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(float)))
    return float(np.argmax(spectrum) * 8000 / len(pcm))


@pytest.mark.integration
def test_a_call_recording_taps_a_webrtc_session_both_ways(tmp_path: Path) -> None:
    """The WebRTC session feeds a call recording as an RTP session does: left is what
    the peer sent (placed by its RTP timestamps), right what the engine played; the
    file lasts as long as the recording ran."""

    def tone(hz: int, seconds: float) -> list[bytes]:
        codec = create_codec(PCMU)
        t = np.arange(int(8000 * seconds)) / 8000
        pcm = (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
        return [codec.encode(pcm[i : i + 160]) for i in range(0, len(pcm), 160)]

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        a, offer = await WebRtcSession.offer([PCMU], label="a")
        b, answer = await WebRtcSession.answer(offer, [PCMU], label="b")
        assert a.accept_answer(answer)
        path = tmp_path / "call.wav"
        start = loop.time()
        recording = CallRecording(
            Recorder(path, channels=2), a, key="recordings/x.wav", mode="stereo", now=start
        )
        a.recording = recording
        await asyncio.wait_for(
            asyncio.gather(
                a.play([tone(440, 2.0)], barge_in=False), b.play([tone(1000, 2.4)], barge_in=False)
            ),
            10,
        )
        await a.stop()  # closes the recording, as hanging up does
        await b.stop()
        assert recording.closed and a.recording is None
        return start, loop.time()

    start, stopped = asyncio.run(main())
    data, rate = soundfile.read(str(tmp_path / "call.wav"), dtype="int16")
    assert rate == 8000 and data.shape[1] == 2
    assert abs(len(data) / rate - (stopped - start)) < 0.05, (len(data) / rate, stopped - start)
    left, right = data[:, 0], data[:, 1]
    loud_left, loud_right = left[np.abs(left) > 2000], right[np.abs(right) > 2000]
    # at least 1.5 s of each tone, each on its own side
    assert len(loud_left) > 1.5 * 8000 * 0.6 and len(loud_right) > 1.5 * 8000 * 0.6
    assert abs(_peak_hz(left) - 1000) < 10 and abs(_peak_hz(right) - 440) < 10
