"""Two RtpSessions on loopback UDP talking to each other (the one socket test file)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

from media.codecs import PCMU, create_codec
from media.portpool import PortPool
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


def test_stopping_one_recording_never_stops_the_next(tmp_path: Path) -> None:
    """``stop_recording(only=)``: a cancelled ``record`` whose cancellation runs after
    the next recording began on the session ends its own recording, not that one."""

    async def main() -> None:
        clock = MediaClock()
        a, b = await _pair(clock)
        first = b.start_recording(Recorder(tmp_path / "first.wav"), stop_on_dtmf=False)
        second = b.start_recording(Recorder(tmp_path / "second.wav"), stop_on_dtmf=False)
        assert (await first).reason == "stopped"  # the second replaced it
        b.stop_recording("hangup", only=first)  # the first's late stop
        assert not second.done()
        b.stop_recording("hangup", only=second)
        assert (await second).reason == "hangup"
        await a.stop()
        await b.stop()

    asyncio.run(main())


def test_a_stalled_loop_records_what_arrived_meanwhile(tmp_path: Path) -> None:
    """The process stops running for 300 ms (descheduled on a loaded machine) while a
    caller talks: the packets wait in the socket, and the late tick reads them before
    its recording decides what is missing. Every frame is in the recording, in place.
    (Before: the loop ran its late timers first, the jitter buffer wrote silence for
    the 15 frames, and their packets, read next, were dropped as late.) A hostile peer
    adds 100 malformed datagrams among them during the stall: read, counted, dropped."""
    import socket
    import threading
    import time

    payloads = PromptCache().payloads("welcome", PCMU)[:60]  # 1.2 s of speech
    packets = [
        RtpPacket(
            payload_type=0,
            sequence_number=100 + i,
            timestamp=8000 + 160 * i,
            ssrc=0x1234,
            payload=p,
        ).serialize()
        for i, p in enumerate(payloads)
    ]
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind((HOST, 0))
    hostile = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def talk(port: int) -> None:
        start = time.monotonic()
        for i, packet in enumerate(packets):  # one every 20 ms of wall time
            time.sleep(max(0.0, start + 0.02 * i - time.monotonic()))
            caller.sendto(packet, (HOST, port))
            if i == 25:  # 0.5 s: the loop is stopped
                for _ in range(100):
                    hostile.sendto(b"\x80\x00\x01", (HOST, port))

    async def main() -> None:
        clock = MediaClock()
        session = await RtpSession.open(PCMU, clock=clock, host=HOST, port_range=(20000, 30000))
        session.set_remote(caller.getsockname())
        done = session.start_recording(Recorder(tmp_path / "rec.wav"), stop_on_dtmf=False)
        talker = threading.Thread(target=talk, args=(session.rtp_port,))
        talker.start()
        await asyncio.sleep(0.4)
        time.sleep(0.3)  # the whole process stops: no tick, no read
        await asyncio.to_thread(talker.join)
        await asyncio.sleep(0.2)  # the last frames played out by the clock
        session.stop_recording()
        await done
        quality = session.quality()
        assert quality["packets_received"] == len(packets) and quality["malformed"] == 100
        await session.stop()

    try:
        asyncio.run(main())
    finally:
        caller.close()
        hostile.close()
    rec, rate = soundfile.read(str(tmp_path / "rec.wav"), dtype="int16")
    sent = create_codec(PCMU).decode(b"".join(payloads))
    assert rate == 8000
    # where the first frame sent is in the recording, sample for sample
    windows = np.lib.stride_tricks.sliding_window_view(rec, 160)
    (starts,) = np.nonzero((windows == sent[:160]).all(axis=1))
    assert len(starts) == 1, starts
    kept = rec[starts[0] : starts[0] + len(sent)]
    assert len(kept) == len(sent) and np.array_equal(kept, sent), (
        f"{int(np.sum(kept != sent[: len(kept)]))} of {len(sent)} samples differ"
    )


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


# --- the port pool (media/portpool.py) on real sockets ---------------------------------


def _free_range(pairs: int) -> tuple[int, int]:
    """An even port range of ``pairs`` even/odd pairs that nothing holds right now."""
    import random
    import socket

    for _ in range(200):
        lo = random.randrange(40000, 60000, 2)
        socks = []
        try:
            for port in range(lo, lo + 2 * pairs):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((HOST, port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return lo, lo + 2 * pairs
    raise AssertionError("no free port range")


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_pooled_pairs_are_bound_ahead_and_reused_after_the_quarantine() -> None:
    async def main() -> None:
        clock = MediaClock()
        pool = PortPool(HOST, (20000, 30000), size=2, quarantine=0.2)
        pool.warm()
        await _until(lambda: len(pool) == 2)
        ahead = {pair.port for pair in pool.core.ready}
        a = await RtpSession.open(PCMU, clock=clock, ports=pool)
        assert a.rtp_port in ahead and a.rtp_port % 2 == 0 and a.local[0] == HOST
        assert pool.core.hits == 1 and pool.core.misses == 0
        await _until(lambda: len(pool) == 2)  # refilled off the answer path
        first = a.rtp_port
        await a.stop()
        assert pool.cooling == 1
        # resting: the next calls get other pairs
        b = await RtpSession.open(PCMU, clock=clock, ports=pool)
        c = await RtpSession.open(PCMU, clock=clock, ports=pool)
        assert first not in (b.rtp_port, c.rtp_port)
        await asyncio.sleep(0.25)
        # back in service after 0.2 s, behind the pairs bound meanwhile (oldest first)
        later = [await RtpSession.open(PCMU, clock=clock, ports=pool) for _ in range(3)]
        assert later[2].rtp_port == first
        assert pool.core.misses == 0
        for session in (b, c, *later):
            await session.stop()
        await pool.close()
        assert len(pool) == 0 and pool.cooling == 0
        # every port is free again
        import socket

        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((HOST, first))
        probe.close()

    asyncio.run(main())


def test_a_reused_pair_never_delivers_the_previous_calls_packets() -> None:
    import socket

    async def main() -> None:
        clock = MediaClock()
        pool = PortPool(HOST, (20000, 30000), size=1, quarantine=0.0)
        a, x = await _pair(clock, ports=pool)
        port = a.rtp_port
        await a.stop()  # back in the pool (no quarantine in this test)
        await x.stop()
        old_peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        old_peer.bind((HOST, 0))
        stale = RtpPacket(0, False, 7, 160, 0x0DD, payload=b"\x55" * 160).serialize()
        # the old peer keeps sending: what arrives while pooled is read and dropped ...
        for _ in range(3):
            old_peer.sendto(stale, (HOST, port))
        await asyncio.sleep(0.05)
        assert pool.stale_dropped == 0
        # ... and what waits in the buffers when the pair is taken again is drained
        pool.core.wanted(asyncio.get_running_loop().time())  # its rest is over: ready
        # (first in line, for this test)
        pool.core.ready.rotate(-[p.port for p in pool.core.ready].index(port))
        for _ in range(5):
            old_peer.sendto(stale, (HOST, port))
        old_peer.sendto(b"\x81\xc9\x00\x01" + b"\x00" * 4, (HOST, port + 1))
        b = await RtpSession.open(PCMU, clock=clock, ports=pool)
        assert b.rtp_port == port and pool.stale_dropped == 6
        await asyncio.sleep(0.1)
        q = b.quality()
        assert q["packets_received"] == 0 and q["wrong_source"] == 0 and q["rtcp_received"] == 0
        assert b.stream._source is None  # nothing latched
        # the new call's peer is heard, and latches
        peer = await RtpSession.open(PCMU, clock=clock, host=HOST, port_range=(20000, 30000))
        b.set_remote((HOST, peer.rtp_port))
        peer.set_remote((HOST, b.rtp_port))
        await _until(lambda: int(b.quality()["packets_received"] or 0) > 0)
        assert b.stream._source == (HOST, peer.rtp_port)
        old_peer.close()
        await b.stop()
        await peer.stop()
        await pool.close()

    asyncio.run(main())


def test_an_exhausted_range_fails_as_without_a_pool_and_recovers() -> None:
    async def main() -> None:
        clock = MediaClock()
        lo, hi = _free_range(2)
        pool = PortPool(HOST, (lo, hi), size=4, quarantine=10.0, retry_after=0.1)
        pool.warm()
        await _until(lambda: pool.core.failures >= 1)
        assert len(pool) == 2  # the whole range, then a quiet failure
        a = await RtpSession.open(PCMU, clock=clock, ports=pool)
        b = await RtpSession.open(PCMU, clock=clock, ports=pool)
        assert {a.rtp_port, b.rtp_port} == {lo, lo + 2}
        with pytest.raises(OSError, match=f"no free RTP port pair in {lo}-{hi} on {HOST}"):
            await RtpSession.open(PCMU, clock=clock, ports=pool)
        assert pool.core.misses == 1
        await a.stop()
        # a's pair rests, but a call is never refused for that: it gets it, drained
        c = await RtpSession.open(PCMU, clock=clock, ports=pool)
        assert c.rtp_port == a.rtp_port and pool.core.early == 1
        await b.stop()
        await c.stop()
        await pool.close()

    asyncio.run(main())


def test_pooled_sessions_are_freed_without_the_collector() -> None:
    import gc

    from media.srtp import SUITES, SrtpContext, generate_key

    suite = SUITES["AES_CM_128_HMAC_SHA1_80"]
    garbage: list[str] = []

    async def main() -> None:
        clock = MediaClock()
        pool = PortPool(HOST, (20000, 30000), size=2, quarantine=0.0)
        for _ in range(3):
            a, b = await _pair(clock, ports=pool)
            k1, k2 = generate_key(suite), generate_key(suite)
            a.set_srtp(SrtpContext(suite, tx_key=k1, rx_key=k2))
            await asyncio.sleep(0.05)
            await a.stop()
            await b.stop()
        await pool.close()

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
    leaked = [name for name in garbage if name in ("RtpSession", "RtpStream", "PortPair")]
    assert leaked == [], leaked


def test_clock_metrics_survive_sessions_coming_and_going_meanwhile() -> None:
    """/metrics reads the clock from prometheus-client's server thread while the loop
    adds and removes sessions (a full benchmark run got "dictionary changed size during
    iteration" and a 500): here sessions end and start while their counters are read."""
    from types import SimpleNamespace

    from media.session import DROP_COUNTERS

    clock = MediaClock()
    sessions: dict[int, object] = {}

    def counters(n: int) -> SimpleNamespace:
        return SimpleNamespace(**{name: n for name in DROP_COUNTERS})

    class Leaving:
        secure = True

        @property
        def stream(self) -> SimpleNamespace:
            sessions.pop(id(self), None)  # the loop ends this one meanwhile...
            sessions[1] = SimpleNamespace(
                secure=False, stream=SimpleNamespace(counters=counters(5))
            )
            return SimpleNamespace(counters=counters(1))  # ...and starts another

    leaving = Leaving()
    sessions[id(leaving)] = leaving
    clock._sessions = sessions  # type: ignore[assignment]
    assert clock.drops()["wrong_ssrc"] == 1  # what was there when the read began
    assert clock.drops()["wrong_ssrc"] == 5
    assert clock.secure_sessions() == 0
