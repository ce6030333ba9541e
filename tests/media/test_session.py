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
