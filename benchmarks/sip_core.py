"""Micro-benchmark of the sans-IO SIP core: one call (INVITE, ACK, BYE in; 100, 200, 200
out) through UserAgent with no sockets. Prints microseconds per call and the implied
ceiling in calls per second for one core (the socket and asyncio costs come on top:
benchmarks/sip_cps.py measures the whole node against SIPp).

    python -m benchmarks.sip_core [--calls N]
"""

from __future__ import annotations

import argparse
import time

from callengine.sip.message import Request
from callengine.sip.useragent import InviteSession, UserAgent

SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def _invite(n: int) -> bytes:
    head = (
        f"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-1-0\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5061>;tag={n}SIPpTag001\r\n"
        f"To: service <sip:service@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-bench@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
        f"Contact: sip:sipp@127.0.0.1:5061\r\nMax-Forwards: 70\r\nSubject: Performance Test\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


def _in_dialog(n: int, method: str, cseq: int, to_tag: str, branch: str) -> bytes:
    return (
        f"{method} sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-{branch}\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5061>;tag={n}SIPpTag001\r\n"
        f"To: service <sip:service@127.0.0.1:5060>;tag={to_tag}\r\n"
        f"Call-ID: {n}-bench@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: sip:sipp@127.0.0.1:5061\r\nMax-Forwards: 70\r\nSubject: Performance Test\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


class _AutoAnswer:
    def __init__(self) -> None:
        self.ua: UserAgent | None = None
        self.ended = 0

    def on_incoming_call(self, session: InviteSession, now: float) -> None:
        assert self.ua is not None
        self.ua.answer(session, SDP, now)

    def on_call_confirmed(self, session: InviteSession, now: float) -> None:
        return None

    def on_call_ended(self, session: InviteSession, reason: str, cause: int, now: float) -> None:
        self.ended += 1

    def on_reoffer(self, session: InviteSession, sdp: bytes) -> bytes | None:
        return sdp

    def on_info(self, session: InviteSession, request: Request) -> None:
        return None

    def on_register(self, request: Request, now: float) -> None:
        return None


def run(calls: int) -> float:
    app = _AutoAnswer()
    sent: list[bytes] = []
    ua = UserAgent(app, lambda data, dest, transport: sent.append(data))  # type: ignore[arg-type]
    app.ua = ua
    src = ("127.0.0.1", 5061)
    local = ("127.0.0.1", 5060)
    invites = [_invite(n) for n in range(calls)]
    t0 = time.perf_counter()
    now = 0.0
    for n in range(calls):
        ua.receive(invites[n], src, "UDP", local, now)
        ok = sent[-1]
        i = ok.find(b";tag=", ok.find(b"\r\nTo:"))
        tag = ok[i + 5 : ok.find(b"\r\n", i)].decode()
        ua.receive(_in_dialog(n, "ACK", 1, tag, "2"), src, "UDP", local, now)
        ua.receive(_in_dialog(n, "BYE", 2, tag, "3"), src, "UDP", local, now)
        now += 0.001
        if n % 1000 == 999:
            ua.handle_timer(now)
            sent.clear()
    elapsed = time.perf_counter() - t0
    assert app.ended == calls, app.ended
    return elapsed / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    run(1000)  # warm-up
    us = run(args.calls)
    print(
        f"sans-IO SIP core: {us:.1f} us per call (INVITE+ACK+BYE), ceiling {1e6 / us:,.0f} calls/s per core"
    )


if __name__ == "__main__":
    main()
