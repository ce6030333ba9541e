"""RTP hijack attempts against a running node (issue 11, "RTP hijack").

A raw UDP caller holds a call to the demo IVR and talks (RTP every 20 ms from the port
its SDP names). An attacker on another port sends in-sequence RTP to the node's RTP
port: first with a new SSRC (the attack the issue found: 3 such packets used to take
the call's media over), then with the caller's own SSRC. The node must keep sending
to the caller, send nothing to the attacker, and count every refused packet on
/metrics. Finally the caller's NAT "rebinds": it goes silent longer than
``rtp_relatch_after`` and talks from a new port; the media follows it there.
"""

from __future__ import annotations

import json
import re
import secrets
import select
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from integration.conftest import daemon_factory  # noqa: F401
from integration.support import Daemon, wait_metric

pytestmark = pytest.mark.integration

DaemonFactory = Callable[..., Daemon]
HOST = "127.0.0.1"
CALLER_SSRC = 0x11112222
ATTACKER_SSRC = 0xBADBAD00
RELATCH_AFTER = 1.0


def _rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + (
        b"\xff" * 160
    )


class _Caller:
    """A raw SIP/RTP caller: INVITE with an SDP naming its RTP socket, ACK, BYE."""

    def __init__(self, node: Daemon) -> None:
        self.node = node
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind((HOST, 0))
        self.sip.settimeout(10)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind((HOST, 0))
        self.call_id = secrets.token_hex(8)
        self.to = ""

    def _request(self, method: str, cseq: int, body: str = "", to: str = "") -> bytes:
        lp = self.sip.getsockname()[1]
        ruri = f"sip:demo@{self.node.address}"
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {HOST}:{lp};branch=z9hG4bK{secrets.token_hex(6)};rport",
            f"From: <sip:caller@{HOST}:{lp}>;tag=c{self.call_id}",
            f"To: {to or f'<{ruri}>'}",
            f"Call-ID: {self.call_id}@hijack",
            f"CSeq: {cseq} {method}",
            "Max-Forwards: 70",
            f"Contact: <sip:caller@{HOST}:{lp}>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def call(self) -> int:
        """Place the call; the node's RTP port from its answer."""
        rtp_port = self.rtp.getsockname()[1]
        sdp = (
            f"v=0\r\no=caller 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        )
        self.sip.sendto(self._request("INVITE", 1, sdp), (HOST, self.node.port))
        while True:
            reply = self.sip.recv(65535).decode()
            status = int(reply.split(" ", 2)[1])
            if status >= 200:
                break
        assert status == 200, reply
        to = re.search(r"^To: (.*)$", reply, re.M)
        port = re.search(r"^m=audio (\d+) ", reply, re.M)
        assert to and port, reply
        self.to = to.group(1).strip()
        self.sip.sendto(self._request("ACK", 1, to=self.to), (HOST, self.node.port))
        return int(port.group(1))

    def hangup(self) -> None:
        self.sip.sendto(self._request("BYE", 2, to=self.to), (HOST, self.node.port))
        self.sip.close()
        self.rtp.close()


class _Source:
    """In-sequence RTP packets of one SSRC (counts what it made)."""

    def __init__(self, ssrc: int, seq: int) -> None:
        self.ssrc = ssrc
        self.seq = seq
        self.sent = 0

    def __call__(self) -> bytes:
        self.seq += 1
        self.sent += 1
        return _rtp(self.seq, self.ssrc)


def _stream(
    seconds: float,
    senders: list[tuple[socket.socket, Callable[[], bytes]]],
    listeners: list[socket.socket],
    node_rtp: tuple[str, int],
) -> dict[socket.socket, int]:
    """Send one packet per sender every 20 ms for ``seconds``; count packets from the
    node's RTP port arriving on each listener meanwhile."""
    counts = dict.fromkeys(listeners, 0)
    start = time.monotonic()
    next_send = start
    while (now := time.monotonic()) < start + seconds:
        if now >= next_send:
            for sock, packet in senders:
                sock.sendto(packet(), node_rtp)
            next_send += 0.02
        ready, _, _ = select.select(listeners, [], [], max(0.0, next_send - time.monotonic()))
        for sock in ready:
            _, addr = sock.recvfrom(2048)
            if addr == node_rtp:
                counts[sock] += 1
    return counts


def test_rtp_hijack_attempts_are_refused_and_counted(
    tmp_path: Path,
    daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"rtp_relatch_after": RELATCH_AFTER}))
    node = daemon_factory("--config", str(config), metrics=True)
    metrics_port = node.metrics_port or 0
    caller = _Caller(node)
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind((HOST, 0))
    rebound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rebound.bind((HOST, 0))
    try:
        node_rtp = (HOST, caller.call())

        talk = _Source(CALLER_SSRC, 1000)

        # The caller talks; the node latches on it and sends it the IVR's audio.
        counts = _stream(0.4, [(caller.rtp, talk)], [caller.rtp], node_rtp)
        assert counts[caller.rtp] >= 10, counts

        # 1. In-sequence RTP with a new SSRC from another port, while the caller talks.
        new_ssrc = _Source(ATTACKER_SSRC, 20000)
        counts = _stream(
            2.0, [(caller.rtp, talk), (attacker, new_ssrc)], [caller.rtp, attacker], node_rtp
        )
        assert counts[attacker] == 0, counts
        assert counts[caller.rtp] >= 0.8 * 2.0 / 0.02, counts  # the IVR kept flowing

        # 2. The caller's own SSRC (sniffed), ahead in its sequence, from another port.
        spoofed = _Source(CALLER_SSRC, talk.seq + 5)
        counts = _stream(
            1.0, [(caller.rtp, talk), (attacker, spoofed)], [caller.rtp, attacker], node_rtp
        )
        assert counts[attacker] == 0 and counts[caller.rtp] >= 40, counts

        # 3. The caller pauses for less than relatch_after: the attacker still gets nothing.
        counts = _stream(
            RELATCH_AFTER * 0.6, [(attacker, new_ssrc)], [caller.rtp, attacker], node_rtp
        )
        assert counts[attacker] == 0 and counts[caller.rtp] > 0, counts

        # 4. NAT rebinding: silent longer than relatch_after, the caller talks from a new
        # port; after 5 packets in sequence the node's audio follows it there.
        time.sleep(RELATCH_AFTER * 0.6)  # the rest of the silence: pacing, not a wait
        counts = _stream(1.0, [(rebound, talk)], [rebound, caller.rtp, attacker], node_rtp)
        assert counts[rebound] >= 30 and counts[attacker] == 0, counts

        # Counted once the steps are over (reading /metrics while the caller is silent
        # would be a pause of its own: a multi-worker node's figures come every second):
        # the new SSRC's packets of steps 1 and 3, the spoofed ones of step 2 and the four
        # packets the rebound caller sent on probation, one relatch (step 4).
        wait_metric(metrics_port, "callengine_rtp_relatches_total", 1)
        wrong_ssrc = 'callengine_rtp_dropped_packets_total{reason="wrong_ssrc"}'
        wait_metric(metrics_port, wrong_ssrc, new_ssrc.sent)
        wrong_source = 'callengine_rtp_dropped_packets_total{reason="wrong_source"}'
        wait_metric(metrics_port, wrong_source, spoofed.sent + 4)
    finally:
        caller.hangup()
        attacker.close()
        rebound.close()
