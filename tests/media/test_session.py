"""Two RtpSessions on loopback UDP talking to each other (the one socket test file)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
import soundfile

from media.codecs import PCMU, create_codec
from media.prompts import PromptCache
from media.recorder import Recorder
from media.rtp import RtpPacket
from media.session import MediaClock, RtpSession

HOST = "127.0.0.1"


async def _pair(clock: MediaClock, **kw: object) -> tuple[RtpSession, RtpSession]:
    a = await RtpSession.open(PCMU, clock=clock, host=HOST, port_range=(20000, 30000), **kw)  # type: ignore[arg-type]
    b = await RtpSession.open(PCMU, clock=clock, host=HOST, port_range=(20000, 30000), **kw)  # type: ignore[arg-type]
    a.set_remote((HOST, b.rtp_port))
    b.set_remote((HOST, a.rtp_port))
    return a, b


def test_ports_are_an_even_odd_pair() -> None:
    async def main() -> None:
        clock = MediaClock()
        a, b = await _pair(clock)
        assert a.rtp_port % 2 == 0 and a.rtcp_port == a.rtp_port + 1
        assert a.rtp_port != b.rtp_port and 20000 <= a.rtp_port < 30000
        await a.stop()
        await b.stop()
        assert len(clock) == 0

    asyncio.run(main())


def test_prompt_played_by_one_is_recorded_by_the_other(tmp_path: Path) -> None:
    cache = PromptCache()
    payloads = cache.payloads("welcome", PCMU)
    captured: list[bytes] = []

    async def main() -> None:
        clock = MediaClock()
        a, b = await _pair(clock)
        original = b._on_rtp

        def spy(data: bytes, addr: tuple[str, int]) -> None:
            captured.append(RtpPacket.parse(data).payload)
            original(data, addr)

        b._rtp.get_protocol()._callback = spy  # type: ignore[attr-defined]
        done = b.start_recording(Recorder(tmp_path / "rec.wav"), stop_on_dtmf=False)
        assert await asyncio.wait_for(a.play([payloads]), 10) is None
        await asyncio.sleep(0.15)
        b.stop_recording()
        result = await done
        assert result.reason == "stopped" and result.seconds >= len(payloads) * 0.02
        q = b.quality()
        assert q["packets_received"] >= len(payloads) and q["malformed"] == 0
        assert q["packets_lost"] == 0
        assert clock.ticks > len(payloads) and sum(clock.lateness_counts) == clock.ticks
        await a.stop()
        await b.stop()

    asyncio.run(main())
    # Every prompt payload arrived, in order, between idle silence frames.
    assert b"".join(payloads) in b"".join(captured)
    # The recording contains the prompt: find it by cross-correlation.
    rec, rate = soundfile.read(str(tmp_path / "rec.wav"), dtype="int16")
    prompt = create_codec(PCMU).decode(b"".join(payloads)).astype(float)
    rec_f = rec.astype(float)
    best = 0.0
    for lag in range(0, len(rec_f) - len(prompt) + 1, 20):
        seg = rec_f[lag : lag + len(prompt)]
        denom = np.sqrt(np.dot(seg, seg) * np.dot(prompt, prompt))
        if denom:
            best = max(best, float(np.dot(seg, prompt) / denom))
    assert rate == 8000 and best > 0.95


def test_dtmf_sent_arrives_as_digits_and_barges_in() -> None:
    async def main() -> None:
        clock = MediaClock()
        a, b = await _pair(clock)
        for digit in "12#":
            a.send_digit(digit, duration_ms=60)
        got = [await asyncio.wait_for(b.digits().get(), 5) for _ in range(3)]
        assert [e.digit for e in got] == ["1", "2", "#"]
        assert all(e.source == "rfc4733" for e in got)
        # Barge-in: a digit stops an endless ringback and is returned.
        ring = PromptCache().tone("ringback", PCMU)
        play = asyncio.ensure_future(b.play([itertools.cycle(ring)], barge_in=True))
        await asyncio.sleep(0.1)
        a.send_digit("5", duration_ms=40)
        assert await asyncio.wait_for(play, 5) == "5"
        assert b.digits().empty()
        await a.stop()
        await b.stop()

    asyncio.run(main())


def test_hold_stops_sending_and_timeout_fires() -> None:
    async def main() -> None:
        clock = MediaClock()
        fired: list[bool] = []
        a, b = await _pair(clock, rtp_timeout=0.3)
        b.on_timeout = lambda: fired.append(True)
        await asyncio.sleep(0.1)
        received = b.quality()["packets_received"]
        assert isinstance(received, int) and received > 0
        a.hold(True)
        await asyncio.sleep(0.5)
        assert b.timed_out.is_set() and fired == [True]
        assert not a.timed_out.is_set()  # on hold: a expects no media
        await a.stop()
        await b.stop()

    asyncio.run(main())


def test_srtp_sessions_exchange_audio_and_refuse_plain_rtp() -> None:
    from media.srtp import SUITES, SrtpContext, generate_key

    suite = SUITES["AES_CM_128_HMAC_SHA1_80"]
    key_a, key_b = generate_key(suite), generate_key(suite)
    payloads = PromptCache().payloads("welcome", PCMU)[:50]
    wire: list[bytes] = []

    async def main() -> None:
        clock = MediaClock()
        a, b = await _pair(clock, rtcp_interval=0.1)
        a.set_srtp(SrtpContext(suite, tx_key=key_a, rx_key=key_b))
        b.set_srtp(SrtpContext(suite, tx_key=key_b, rx_key=key_a))
        original = b._rtp.get_protocol()._callback  # type: ignore[attr-defined]

        def spy(data: bytes, addr: tuple[str, int]) -> None:
            wire.append(data)
            original(data, addr)

        b._rtp.get_protocol()._callback = spy  # type: ignore[attr-defined]
        heard: list[bytes] = []
        b.on_audio = heard.append
        assert await asyncio.wait_for(a.play([payloads]), 10) is None
        await asyncio.sleep(0.1)
        # A plain RTP packet (someone without the key) is dropped and counted.
        loop = asyncio.get_running_loop()
        plain = RtpPacket(0, False, 1, 160, 0xBAD, payload=b"\xff" * 160).serialize()
        intruder, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(HOST, 0)
        )
        for _ in range(3):
            intruder.sendto(plain, (HOST, b.rtp_port))
        # linphone's STUN keepalive (RFC 5389 Binding Request) on the RTP and RTCP ports
        # of an SRTP session: counted as such, not as a failed SRTP packet.
        stun = bytes.fromhex("000100002112a442c11ba939637eaffb5138c736")
        intruder.sendto(stun, (HOST, b.rtp_port))
        intruder.sendto(stun, (HOST, b.rtcp_port))
        intruder.close()
        while b.quality()["srtp_failed"] != 3 or b.quality()["stun_received"] != 2:
            await asyncio.sleep(0.01)
        q = b.quality()
        assert q["malformed"] == 0 and q["wrong_ssrc"] == 0 and q["packets_lost"] == 0
        assert q["rtcp_received"] > 0 and q["rtcp_malformed"] == 0  # SRTCP both ways
        assert a.secure and clock.secure_sessions() == 2 and clock.srtp_sessions == 2
        assert clock.drops()["srtp_failed"] == 3
        assert b"".join(payloads) in b"".join(heard)  # decrypted audio, in order
        await a.stop()
        await b.stop()
        assert clock.drops()["srtp_failed"] == 3  # kept after the sessions ended

    asyncio.run(main())
    # On the wire: SRTP packets (10-octet tag), none carrying a prompt frame in clear.
    assert wire and all(len(d) == 12 + 160 + 10 for d in wire[:10])
    clear = set(payloads)
    assert not any(d[12:172] in clear for d in wire)


def test_awaiting_srtp_keys_sends_nothing() -> None:
    async def main() -> None:
        clock = MediaClock()
        a, b = await _pair(clock)
        a.await_srtp()
        await asyncio.sleep(0.15)
        assert a.quality()["packets_sent"] > 0  # the stream ticked ...
        assert b.quality()["packets_received"] == 0  # ... but nothing left in clear
        assert a.quality()["srtp_failed"] > 0  # b's plain RTP was refused
        await a.stop()
        await b.stop()

    asyncio.run(main())


def test_sessions_plain_and_srtp_are_freed_without_the_collector() -> None:
    import gc

    from media.srtp import SUITES, SrtpContext, generate_key

    suite = SUITES["AES_CM_128_HMAC_SHA1_80"]
    garbage: list[str] = []

    async def main() -> None:
        clock = MediaClock()
        a, b = await _pair(clock)
        k1, k2 = generate_key(suite), generate_key(suite)
        a.set_srtp(SrtpContext(suite, tx_key=k1, rx_key=k2))
        b.await_srtp()
        await asyncio.sleep(0.1)
        await a.stop()
        await b.stop()

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        asyncio.run(main())
        gc.collect()
        garbage = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    leaked = [name for name in garbage if name in ("RtpSession", "RtpStream", "SrtpContext")]
    assert leaked == [], leaked
