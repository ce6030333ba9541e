"""Pre-bound RTP port pairs on a running node: calls take pooled pairs (no miss on the
answer path), reuse them after their rest, and a reused pair sends the new call's
audio to the new peer only, never to the previous caller that is still sending."""

from __future__ import annotations

import random
import re
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from integration.support import Daemon, scrape_fresh

from media.rtp import RtpPacket

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


def _free_range(pairs: int) -> tuple[int, int]:
    """``pairs`` even/odd port pairs nothing holds right now."""
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


def _recv_sip(sig: socket.socket, want: str) -> str:
    while True:
        data = sig.recv(65535).decode(errors="replace")
        if data.startswith("SIP/2.0") and want in data.split("\r\n\r\n", 1)[0]:
            status = int(data.split()[1])
            if status >= 200:
                return data


class Caller:
    """One call from raw sockets: SIP on ``sig``, RTP on ``rtp`` (named in the offer)."""

    def __init__(self, node_port: int) -> None:
        self.node_port = node_port
        self.sig = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sig.bind((HOST, 0))
        self.sig.settimeout(10)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind((HOST, 0))
        self.rtp.settimeout(0.5)
        self.call_id = secrets.token_hex(8)
        lp = self.sig.getsockname()[1]
        self.via = f"Via: SIP/2.0/UDP {HOST}:{lp};branch=z9hG4bK{{}};rport\r\n"
        self.common = (
            f"From: <sip:caller@{HOST}:{lp}>;tag=ft{self.call_id}\r\n"
            f"Call-ID: {self.call_id}@pool\r\nMax-Forwards: 70\r\n"
        )
        self.ruri = f"sip:1000@{HOST}:{node_port}"
        self.to = f"<{self.ruri}>"
        self.media_port = 0

    def _send(self, text: str) -> None:
        self.sig.sendto(text.encode(), (HOST, self.node_port))

    def call(self) -> None:
        """INVITE with our RTP address; ACK the 200; the node's RTP port from its SDP."""
        sdp = (
            f"v=0\r\no=caller 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {self.rtp.getsockname()[1]} RTP/AVP 0 101\r\n"
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        )
        self._send(
            f"INVITE {self.ruri} SIP/2.0\r\n{self.via.format(secrets.token_hex(6))}"
            f"{self.common}To: {self.to}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@{HOST}:{self.sig.getsockname()[1]}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
        )
        answer = _recv_sip(self.sig, "INVITE")
        assert answer.startswith("SIP/2.0 200"), answer
        self.to = re.search(r"^To: (.*)$", answer, re.M | re.I).group(1).strip()  # type: ignore[union-attr]
        self.media_port = int(re.search(r"^m=audio (\d+)", answer, re.M).group(1))  # type: ignore[union-attr]
        self._send(
            f"ACK {self.ruri} SIP/2.0\r\n{self.via.format(secrets.token_hex(6))}"
            f"{self.common}To: {self.to}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )

    def hear(self, seconds: float) -> list[RtpPacket]:
        """The node's RTP to us for ``seconds`` (we talk back, as a phone does)."""
        packets: list[RtpPacket] = []
        talk = RtpPacket(0, False, 1, 160, 0xCA11 + self.media_port, payload=b"\xff" * 160)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data, addr = self.rtp.recvfrom(2048)
            except TimeoutError:
                continue
            assert addr == (HOST, self.media_port)
            packets.append(RtpPacket.parse(data))
            talk.sequence_number += 1
            talk.timestamp += 160
            self.rtp.sendto(talk.serialize(), (HOST, self.media_port))
        return packets

    def hang_up(self) -> None:
        self._send(
            f"BYE {self.ruri} SIP/2.0\r\n{self.via.format(secrets.token_hex(6))}"
            f"{self.common}To: {self.to}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        )
        assert _recv_sip(self.sig, "BYE").startswith("SIP/2.0 200")

    def keep_sending(self, count: int) -> None:
        """What a phone still has in flight after its BYE."""
        stale = RtpPacket(0, False, 9, 160, 0x0DD, payload=b"\x55" * 160).serialize()
        for _ in range(count):
            self.rtp.sendto(stale, (HOST, self.media_port))
            time.sleep(0.005)

    def heard_since(self) -> int:
        """Datagrams that reached our RTP socket since the last read."""
        self.rtp.setblocking(False)
        count = 0
        while True:
            try:
                self.rtp.recv(2048)
            except BlockingIOError:
                return count
            count += 1

    def close(self) -> None:
        self.sig.close()
        self.rtp.close()


def test_calls_take_pooled_pairs_and_reuse_them_after_their_rest(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    lo, hi = _free_range(2)
    config = tmp_path / "node.yaml"
    config.write_text(
        f"rtp_port_min: {lo}\nrtp_port_max: {hi}\nrtp_port_pool: 2\nrtp_port_quarantine: 0.2\n"
    )
    # one worker, whatever the pass: the test is about one process's pool, and a
    # multi-worker node gives each worker a slice of the range (here one pair each)
    daemon = daemon_factory("--config", str(config), "--workers", "1", metrics=True)
    assert daemon.metrics_port is not None
    metrics: dict[str, float] = {}
    deadline = time.monotonic() + 10
    while metrics.get('callengine_rtp_port_pool_pairs{state="ready"}') != 2:
        assert time.monotonic() < deadline, metrics
        time.sleep(0.05)
        try:
            metrics = scrape_fresh(daemon.metrics_port)
        except OSError:
            continue
    previous: Caller | None = None
    ports = []
    for _ in range(6):
        caller = Caller(daemon.port)
        caller.call()
        ports.append(caller.media_port)
        packets = caller.hear(0.4)
        # the node's audio reaches this call's phone: in order, every 20 ms
        assert len(packets) >= 10
        for a, b in zip(packets, packets[1:], strict=False):
            assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
        if previous is not None:
            # the previous phone, still sending after its BYE, hears nothing from us
            assert previous.heard_since() == 0
            previous.close()
        caller.hang_up()
        caller.keep_sending(10)
        caller.heard_since()  # what was in flight before the BYE
        previous = caller
        time.sleep(0.25)  # the pair's rest
    assert previous is not None
    previous.close()
    # two pairs in the range, six calls: every call took a pooled pair
    assert set(ports) <= {lo, lo + 2} and len(set(ports)) == 2
    metrics = scrape_fresh(daemon.metrics_port)
    assert metrics["callengine_rtp_port_pool_hits_total"] == 6
    assert metrics["callengine_rtp_port_pool_misses_total"] == 0
    assert metrics["callengine_rtp_port_pool_bound_total"] == 2
    assert metrics["callengine_rtp_port_pool_early_reuses_total"] == 0
    assert metrics["callengine_media_unavailable_total"] == 0
    assert "Traceback" not in daemon.log()


def test_an_outbound_call_refused_for_want_of_a_port_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    """``place_call`` raises 503 when no RTP pair is free; the session it had begun,
    its call and its outcome are forgotten (they have no timer to end them)."""
    import asyncio

    from callengine.call import SipError
    from callengine.engine import Engine

    lo, hi = _free_range(1)

    async def main() -> None:
        engine = Engine(
            listen=[f"{HOST}:0"],
            transports=["UDP"],
            rtp_port_min=lo,
            rtp_port_max=hi,
            rtp_port_pool=0,
            metrics=None,
            data_dir=str(tmp_path),
        )
        await engine.start()
        try:
            first = await engine.place_call(f"sip:a@{HOST}:9")  # takes the one pair
            held = (dict(engine.calls), dict(engine.ua.sessions), dict(engine.dialler.pending))
            with pytest.raises(SipError) as refused:
                await engine.place_call(f"sip:b@{HOST}:9")
            assert refused.value.status == 503
            assert (engine.calls, engine.ua.sessions, engine.dialler.pending) == held
            assert list(engine.calls.values()) == [first]
        finally:
            await engine.stop(grace=0.1)

    asyncio.run(main())
