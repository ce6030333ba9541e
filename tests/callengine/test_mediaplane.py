"""The media plane (callengine/mediaplane.py): its wire format without sockets, then a
real plane process commanded as the engine commands it, a UDP socket as the phone."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from callengine.mediaplane import (
    FrameDecoder,
    PlaneMedia,
    RemoteSession,
    RestartPolicy,
    encode_frame,
)
from media.codecs import CODECS
from media.dtmf import DtmfEvent, event_payload
from media.rtp import RtpPacket

# ------------------------------------------------------------------------ wire


def test_frames_come_out_whole_however_the_bytes_are_cut() -> None:
    messages = [
        ("req", 1, "open", (7, "127.0.0.1", None)),
        ("ev", "digit", (7, DtmfEvent("5", 100, "rfc4733"))),
        ("ok", 1, ("127.0.0.1", 10000)),
        ("stats", {"streams": 3, "dropped": {"malformed": 1}}),
    ]
    wire = b"".join(encode_frame(m) for m in messages)
    rng = random.Random(4)
    for _ in range(50):
        decoder = FrameDecoder()
        out: list[tuple[Any, ...]] = []
        i = 0
        while i < len(wire):
            n = rng.randint(1, 40)
            out += decoder.feed(wire[i : i + n])
            i += n
        assert out == messages
    decoder = FrameDecoder()
    assert decoder.feed(wire) == messages


def test_a_plane_dying_as_it_starts_waits_longer_each_time() -> None:
    policy = RestartPolicy(stable=10.0, first=0.5, longest=30.0)
    # a plane that ran a while: again at once
    assert policy.delay(started_at=0.0, died_at=100.0) == 0.0
    # one that dies within 10 s of its start, again and again: 0.5, 1, 2... 30 s
    waits = [policy.delay(started_at=t, died_at=t + 1.0) for t in range(200, 209)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    # once one lives past 10 s, the next death is restarted at once, and counting restarts
    assert policy.delay(started_at=300.0, died_at=311.0) == 0.0
    assert policy.delay(started_at=400.0, died_at=401.0) == 0.5


def test_an_oversized_frame_is_refused_not_buffered() -> None:
    decoder = FrameDecoder(max_frame=1000)
    with pytest.raises(ValueError, match="frame of 5000 bytes"):
        decoder.feed(struct.pack("!I", 5000) + b"x" * 10)


# ------------------------------------------------------------- a real plane


class Phone(asyncio.DatagramProtocol):
    """The far end: collects the plane's RTP, sends RFC 4733 digits."""

    def __init__(self) -> None:
        self.packets: list[tuple[RtpPacket, tuple[str, int]]] = []
        self.transport: Any = None
        self.seq = 1
        self.ts = 8000

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append((RtpPacket.parse(data), addr))

    def send_digit(self, digit_code: int, to: tuple[str, int]) -> None:
        """One RFC 4733 event: three end packets, as RFC 4733 2.5.1.4 sends them (each
        event its own timestamp: the receiver drops a repeated one)."""
        self.ts += 8000
        for _ in range(3):
            packet = RtpPacket(
                payload_type=101,
                marker=False,
                sequence_number=self.seq,
                timestamp=self.ts,
                ssrc=0x1234,
                payload=event_payload(digit_code, end=True, volume=10, duration=800),
            )
            self.seq += 1
            self.transport.sendto(packet.serialize(), to)


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _settings(tmp: Path) -> dict[str, Any]:
    return {
        "data_dir": str(tmp),
        "port_range": (31000, 31100),
        "rtp_timeout": 0,
        "codecs": [CODECS["PCMU"], CODECS["TELEPHONE-EVENT"]],
    }


def _run(body: Callable[[PlaneMedia, Phone], Awaitable[None]], tmp: Path, **kw: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        plane = PlaneMedia(_settings(tmp), **kw)
        await plane.start()
        _, phone = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
        try:
            await body(plane, phone)
        finally:
            phone.transport.close()
            await plane.close()
        assert plane._process is not None and plane._process.poll() is not None

    asyncio.run(main())


async def _call(plane: PlaneMedia, phone: Phone) -> RemoteSession:
    session = await plane.open("127.0.0.1", None)
    session.set_remote(
        phone.transport.get_extra_info("sockname"),
        codec=CODECS["PCMU"],
        telephone_event_pt=101,
    )
    return session


def test_the_plane_plays_in_its_own_process_and_sends_digits_back(tmp_path: Path) -> None:
    async def body(plane: PlaneMedia, phone: Phone) -> None:
        assert plane.pid is not None and plane.pid != os.getpid()
        session = await _call(plane, phone)
        port = session.rtp_port
        assert 31000 <= port <= 31100 and port % 2 == 0
        # the plane's process holds the port pair, not ours
        links = [
            os.readlink(f"/proc/{plane.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{plane.pid}/fd")
        ]
        assert sum(link.startswith("socket:") for link in links) >= 3  # engine link + RTP + RTCP

        # a beep is 250 ms: 12-13 packets of G.711 u-law from the session's port
        assert await plane.play(session, ["tone:beep"], None, barge_in=False) is None
        await _until(lambda: len(phone.packets) >= 12)
        assert {addr[1] for _, addr in phone.packets} == {port}
        assert {p.payload_type for p, _ in phone.packets} == {0}

        # a digit with nothing playing goes to the call's queue (event 5 is "5")
        phone.send_digit(5, ("127.0.0.1", port))
        event = await asyncio.wait_for(session.digits().get(), 5)
        assert event.digit == "5"

        # a digit during a prompt with barge-in ends the prompt, and is not queued
        playing = asyncio.ensure_future(plane.play(session, ["menu"], None, barge_in=True))
        await asyncio.sleep(0.3)
        assert not playing.done()
        phone.send_digit(7, ("127.0.0.1", port))
        assert await asyncio.wait_for(playing, 5) == "7"
        assert session.digits().empty()

        # a SIP INFO digit goes the same way (the plane decides)
        session.deliver_digit(DtmfEvent("9", 100, "info"))
        assert (await asyncio.wait_for(session.digits().get(), 5)).digit == "9"

        # the live figures (the control API's call list) come in one request
        assert session.quality() == {}
        await plane.refresh_quality([session])
        assert session.quality()["dtmf_received"] == 2

        quality = await session.stop()
        assert quality["packets_sent"] >= 12 and quality["dtmf_received"] == 2, quality
        await _until(lambda: plane.clock.streams == 0 and plane.clock.pid == plane.pid)

    _run(body, tmp_path)


def test_a_cancelled_prompt_stops_in_the_plane(tmp_path: Path) -> None:
    async def body(plane: PlaneMedia, phone: Phone) -> None:
        session = await _call(plane, phone)
        playing = asyncio.ensure_future(plane.play(session, ["menu"], None, barge_in=False))
        await _until(lambda: len(phone.packets) >= 10)
        playing.cancel()
        await asyncio.sleep(0.2)
        count = len(phone.packets)
        await asyncio.sleep(0.3)
        # silence goes on (a steady stream), the prompt does not: payload 0xFF is u-law 0
        tail = [p.payload for p, _ in phone.packets[count:]]
        assert tail and all(set(payload) <= {0xFF, 0x7F} for payload in tail)
        await session.stop()

    _run(body, tmp_path)


def test_a_cancelled_prompt_does_not_stop_the_bridge_that_replaced_it(tmp_path: Path) -> None:
    """Ringback cancelled and the bridge started in the same turn of the engine's loop
    (as call control does when the callee answers): the command stopping the ringback
    reaches the plane after the bridge's relay began to play on the same session, and
    must stop the ringback only (it used to stop the relay: the caller heard nothing)."""

    async def body(plane: PlaneMedia, phone: Phone) -> None:
        loop = asyncio.get_running_loop()
        _, other = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
        a = await _call(plane, phone)
        b = await plane.open("127.0.0.1", None)
        b.set_remote(other.transport.get_extra_info("sockname"), codec=CODECS["PCMU"])
        ringback = asyncio.ensure_future(plane.play(a, ["tone:ringback"], None, barge_in=False))
        await _until(lambda: len(phone.packets) >= 5)
        send = plane.command

        def late(op: str, *args: Any) -> None:
            # the stop leaves 100 ms late (a busy engine loop): the relay plays by then
            if op.startswith("stop_request"):
                loop.call_later(0.1, send, op, *args)
            else:
                send(op, *args)

        plane.command = late  # type: ignore[method-assign]
        ringback.cancel()
        handle = plane.bridge(a, b)  # sent before the cancelled play's stop
        assert await asyncio.gather(ringback, return_exceptions=True) != [None]
        await asyncio.sleep(0.2)  # the stop has reached the plane
        voice = bytes(range(0, 160))
        for seq in range(40):
            packet = RtpPacket(0, False, 100 + seq, 160 * seq, 0x99, payload=voice)
            other.transport.sendto(packet.serialize(), ("127.0.0.1", b.rtp_port))
            await asyncio.sleep(0.02)
        await _until(lambda: sum(p.payload == voice for p, _ in phone.packets) >= 20)
        assert not plane._pending  # every play request was answered
        plane.unbridge(handle)
        await a.stop()
        await b.stop()
        other.transport.close()

    _run(body, tmp_path)


def test_a_play_stopped_before_the_plane_began_it_never_plays(tmp_path: Path) -> None:
    async def body(plane: PlaneMedia, phone: Phone) -> None:
        session = await _call(plane, phone)
        for _ in range(20):
            playing = asyncio.ensure_future(plane.play(session, ["menu"], None, barge_in=False))
            await asyncio.sleep(0)  # the request is sent
            playing.cancel()  # and its stop right behind it
            await asyncio.gather(playing, return_exceptions=True)
        await _until(lambda: not plane._pending)  # each answered: nothing waits, or leaks
        await asyncio.sleep(0.3)
        count = len(phone.packets)
        await asyncio.sleep(0.3)
        tail = [p.payload for p, _ in phone.packets[count:]]
        assert tail and all(set(payload) <= {0xFF, 0x7F} for payload in tail)
        await session.stop()

    _run(body, tmp_path)


def test_a_cancelled_recording_does_not_stop_the_next_one(tmp_path: Path) -> None:
    """A voicemail ``record`` cancelled and the next one started in the same turn of
    the engine's loop: the command ending the first reaches the plane after the
    second began on the same session, and must end the first only (it used to be
    ``stop_recording`` for the session: the second ended as a hangup at once)."""

    async def body(plane: PlaneMedia, phone: Phone) -> None:
        loop = asyncio.get_running_loop()
        session = await _call(plane, phone)
        to = ("127.0.0.1", session.rtp_port)

        async def talk() -> None:
            for seq in range(200):
                packet = RtpPacket(0, False, 100 + seq, 160 * seq, 0x77, payload=b"\x10" * 160)
                phone.transport.sendto(packet.serialize(), to)
                await asyncio.sleep(0.02)

        talking = asyncio.ensure_future(talk())
        send = plane.command

        def late(op: str, *args: Any) -> None:
            if op.startswith("stop_"):  # whatever stops it leaves 100 ms late
                loop.call_later(0.1, send, op, *args)
            else:
                send(op, *args)

        def record(key: str, max_seconds: float) -> asyncio.Future[Any]:
            return asyncio.ensure_future(
                plane.record(
                    session,
                    "demo",
                    key,
                    max_seconds=max_seconds,
                    silence_timeout=None,
                    stop_on_dtmf=False,
                )
            )

        first = record("voicemail/first.wav", 30.0)
        await _until(lambda: len(phone.packets) >= 5)
        plane.command = late  # type: ignore[method-assign]
        first.cancel()
        second = record("voicemail/second.wav", 1.0)
        assert await asyncio.gather(first, return_exceptions=True) != [None]
        result = await asyncio.wait_for(second, 10)
        assert result.reason == "max_seconds" and result.seconds >= 0.9, result
        await _until(lambda: not plane._pending)  # the first's request was answered
        talking.cancel()
        await session.stop()

    _run(body, tmp_path)


@pytest.mark.integration
def test_a_webrtc_leg_lives_in_the_plane(tmp_path: Path) -> None:
    """A browser's leg in the plane (aiortc there; the browser here is aiortc too): the
    plane offers, the browser answers; a prompt played in the plane reaches the
    browser, a SIP INFO digit comes back to the engine's queue, and the browser closing
    its side ends the leg (the engine's on_timeout). Then the plane answers a browser's
    offer, and refuses one it cannot take with ValueError, as the in-process manager."""
    from media.codecs import PCMU
    from media.webrtc import WebRtcSession

    async def body(plane: PlaneMedia, phone: Phone) -> None:
        lost = asyncio.Event()
        leg, offer = await plane.open_webrtc(None, prefer="PCMU", on_timeout=lost.set, label="x")
        assert leg.webrtc and plane.is_webrtc(offer) and plane.webrtc_sessions == 1
        browser, answer = await WebRtcSession.answer(offer, [PCMU], label="browser")
        assert not leg.accept_answer(b"v=0\r\nm=audio 9 RTP/AVP 0\r\n")  # not WebRTC
        assert leg.accept_answer(answer)
        heard: list[bytes] = []
        browser.on_audio = heard.append
        assert await asyncio.wait_for(plane.play(leg, ["menu"], None, barge_in=False), 30) is None
        assert len(heard) > 50 and any(set(p) - {0xFF, 0x7F} for p in heard), len(heard)
        leg.deliver_digit(DtmfEvent("4", 100, "info"))
        assert (await asyncio.wait_for(leg.digits().get(), 5)).digit == "4"
        await browser.stop()  # DTLS close_notify: the plane's leg ends, the engine is told
        await asyncio.wait_for(lost.wait(), 10)
        quality = await leg.stop()
        assert quality["webrtc"] and quality["connected"] and quality["codec"] == "PCMU"

        caller, browser_offer = await WebRtcSession.offer([PCMU], label="caller")
        answered, body_ = await plane.open_webrtc(browser_offer, label="y")
        assert caller.accept_answer(body_)
        got: list[bytes] = []
        caller.on_audio = got.append
        await asyncio.wait_for(plane.play(answered, ["tone:beep"], None, barge_in=False), 10)
        await _until(lambda: len(got) > 10, timeout=10)
        await answered.stop()
        await caller.stop()

        with pytest.raises(ValueError, match="WebRTC offer refused"):
            await plane.open_webrtc(b"v=0\r\nnonsense", label="z")
        assert not plane.sessions_open and not plane._pending

    _run(body, tmp_path, webrtc=True)


def test_a_bridge_in_the_plane_relays_both_ways(tmp_path: Path) -> None:
    async def body(plane: PlaneMedia, phone: Phone) -> None:
        loop = asyncio.get_running_loop()
        _, other = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
        a = await _call(plane, phone)
        b = await plane.open("127.0.0.1", None)
        b.set_remote(other.transport.get_extra_info("sockname"), codec=CODECS["PCMA"])
        handle = plane.bridge(a, b)
        # the phone talks PCMU to a; the other party hears it as PCMA out of b
        voice = bytes(range(0, 160))
        for seq in range(20):
            packet = RtpPacket(0, False, 100 + seq, 160 * seq, 0x99, payload=voice)
            phone.transport.sendto(packet.serialize(), ("127.0.0.1", a.rtp_port))
            await asyncio.sleep(0.02)
        from media.codecs.g711 import ULAW_TO_ALAW

        alaw = bytes(int(ULAW_TO_ALAW[v]) for v in voice)
        await _until(lambda: any(p.payload == alaw for p, _ in other.packets))
        assert {p.payload_type for p, _ in other.packets} == {8}
        plane.unbridge(handle)
        await a.stop()
        await b.stop()
        other.transport.close()

    _run(body, tmp_path)


def test_a_killed_plane_hangs_up_its_calls_and_a_new_one_takes_the_next(
    tmp_path: Path,
) -> None:
    lost: list[list[RemoteSession]] = []

    async def body(plane: PlaneMedia, phone: Phone) -> None:
        session = await _call(plane, phone)
        first = plane.pid
        assert first is not None
        waiting = asyncio.ensure_future(plane.play(session, ["menu"], None, barge_in=False))
        await asyncio.sleep(0.2)
        os.kill(first, signal.SIGKILL)
        await _until(lambda: bool(lost))
        assert lost == [[session]] and session.stopped
        assert await asyncio.wait_for(waiting, 5) is None  # the prompt's wait ends
        assert await session.stop() == {}
        await _until(lambda: plane.pid != first and plane._connection is not None, 10)
        again = await _call(plane, phone)
        assert await plane.play(again, ["tone:beep"], None, barge_in=False) is None
        assert plane.restarts == 1
        await again.stop()

    _run(body, tmp_path, on_lost=lost.append)


def test_a_call_recording_in_the_plane_has_both_voices(tmp_path: Path) -> None:
    """Stereo: the left channel is what the phone sent, the right what the plane
    played to it (a beep, then silence); the file lasts from start to stop."""
    import numpy as np
    import soundfile

    async def body(plane: PlaneMedia, phone: Phone) -> None:
        session = await _call(plane, phone)
        loop = asyncio.get_running_loop()
        started = loop.time()
        recording = plane.call_recording(
            "demo",
            "recordings/plane.wav",
            session,
            channels="stereo",
            max_seconds=60,
            call_id="c1",
            now=started,
        )
        # the phone talks (a loud u-law square wave) while the plane beeps back
        loud = bytes([0x80, 0x00] * 80)
        talking = asyncio.ensure_future(_talk(phone, session.rtp_port, loud, 50))
        assert await plane.play(session, ["tone:beep"], None, barge_in=False) is None
        await talking
        result = recording.close(loop.time(), "stopped")
        await session.stop()
        path = plane.storage.path("demo", "recordings", "plane.wav")
        await _until(lambda: path.exists() and path.stat().st_size > 1000)
        await asyncio.sleep(0.2)
        audio, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
        assert audio.shape[1] == 2 and rate == 8000
        assert abs(len(audio) / rate - result.seconds) < 0.1, (len(audio) / rate, result)
        left, right = audio[:, 0].astype(float), audio[:, 1].astype(float)
        # the phone's square wave fills the left channel; the beep is on the right only
        assert np.abs(left).mean() > 10 * max(1.0, np.abs(right[-2000:]).mean())
        assert np.abs(right[:2000]).max() > 1000

    _run(body, tmp_path)


async def _talk(phone: Phone, port: int, payload: bytes, packets: int) -> None:
    for seq in range(packets):
        packet = RtpPacket(0, False, 500 + seq, 160 * seq, 0x77, payload=payload)
        phone.transport.sendto(packet.serialize(), ("127.0.0.1", port))
        await asyncio.sleep(0.02)


def test_a_hung_plane_is_killed_by_the_watchdog_and_replaced(tmp_path: Path) -> None:
    """SIGSTOP: the plane is alive but answers nothing. The engine kills it once it
    has been silent for the watchdog's time, hangs up its calls and starts a new one."""
    lost: list[list[RemoteSession]] = []

    async def body(plane: PlaneMedia, phone: Phone) -> None:
        session = await _call(plane, phone)
        stopped = plane.pid
        assert stopped is not None
        loop = asyncio.get_running_loop()
        os.kill(stopped, signal.SIGSTOP)
        t0 = loop.time()
        await _until(lambda: bool(lost), 10)
        waited = loop.time() - t0
        assert lost == [[session]] and plane.hung == 1
        assert 1.0 <= waited <= 4.0, waited  # watchdog 1.5 s, polled every 0.25 s
        await _until(lambda: plane.pid != stopped and plane._connection is not None, 10)
        again = await _call(plane, phone)
        assert await plane.play(again, ["tone:beep"], None, barge_in=False) is None
        await again.stop()

    _run(body, tmp_path, on_lost=lost.append, stats_interval=0.25, watchdog=1.5)


def test_a_prespawned_plane_is_the_one_the_engine_starts(tmp_path: Path) -> None:
    """``callengine serve`` starts the plane's interpreter before it reads its
    configuration (``_planespawn.prespawn``): the first start takes that process, a
    later one (a restart) a new one, a prespawned process that died meanwhile is not
    taken, and a discarded one (the node has no plane after all) exits."""
    from callengine import _planespawn

    _planespawn.prespawn()
    assert _planespawn._prespawned is not None
    early = _planespawn._prespawned[0]
    pids: list[int | None] = []

    async def body(plane: PlaneMedia, phone: Phone) -> None:
        assert _planespawn._prespawned is None  # taken
        pids.append(plane.pid)
        session = await _call(plane, phone)
        assert await plane.play(session, ["tone:beep"], None, barge_in=False) is None
        await _until(lambda: len(phone.packets) >= 12)  # the prespawned plane plays

    _run(body, tmp_path)
    assert pids == [early.pid]

    _planespawn.prespawn()
    assert _planespawn._prespawned is not None
    dead = _planespawn._prespawned[0]
    dead.kill()
    dead.wait()

    async def body2(plane: PlaneMedia, phone: Phone) -> None:
        pids.append(plane.pid)
        session = await _call(plane, phone)
        assert await plane.play(session, ["tone:beep"], None, barge_in=False) is None

    _run(body2, tmp_path)
    assert pids[1] not in (None, early.pid, dead.pid)
    assert _planespawn._prespawned is None

    _planespawn.prespawn()
    assert _planespawn._prespawned is not None
    unwanted = _planespawn._prespawned[0]
    _planespawn.discard()
    assert unwanted.returncode == 0  # it read end of file and exited
    assert _planespawn._prespawned is None
