"""What the multi-worker node's front costs per SIP datagram (issue 10).

Two figures, in one run:

1. ``choose+pack+send``: the Python work of dispatching one message (read its Call-ID,
   pick the worker, frame it, ``send`` it on the Unix socketpair), timed in a loop over
   a real SIPp INVITE, ACK and BYE; the receiving end is drained in the same loop.
2. ``front CPU per datagram``: ``callengine serve --workers 2 --no-media`` under SIPp
   ``-sn uac`` at RATE calls/s for SECONDS; the front process's CPU seconds (from
   /proc, the front alone, not its workers) divided by the datagrams it handed over
   (its ``callengine_dispatch_messages_total``). This includes uvloop's ``recvfrom``,
   the event loop's own overhead and the front's other work per call: it writes every
   call's two call-log records for the workers (unpickling them, LevelDB group commit)
   and stores their metrics, so it is an upper bound of what the hop costs.

    python -m benchmarks.dispatch_cost [--rate 600] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

from callengine.dispatch import choose_worker, pack_inbound

from ._metrics import labelled, scrape
from ._sipp import SIPP, cpu_seconds, free_port, run_uac_step, start_engine

RESULTS = Path(__file__).resolve().parent / "results"

INVITE = (
    b"INVITE sip:1000@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=4242SIPpTag001\r\n"
    b"To: 1000 <sip:1000@127.0.0.1:5060>\r\n"
    b"Call-ID: 1-4242@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.1:5061\r\nMax-Forwards: 70\r\n"
    b"Subject: Performance Test\r\nContent-Type: application/sdp\r\nContent-Length: 129\r\n\r\n"
    + b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
ACK = INVITE.split(b"\r\n\r\n")[0].replace(b"INVITE", b"ACK") + b"\r\n\r\n"
BYE = INVITE.split(b"\r\n\r\n")[0].replace(b"INVITE", b"BYE") + b"\r\n\r\n"


def python_cost(n: int = 200_000) -> float:
    """Microseconds of choose + pack + send (+ the drain) per message."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    msgs = [INVITE, ACK, BYE]
    src, local = ("127.0.0.1", 5061), ("127.0.0.1", 5060)
    t0 = time.perf_counter()
    for i in range(n):
        data = msgs[i % 3]
        choose_worker(data, 2)
        a.send(pack_inbound(data, src, "UDP", local))
        b.recv(70000)
    elapsed = time.perf_counter() - t0
    a.close()
    b.close()
    return elapsed / n * 1e6


def front_cost(rate: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dispatch-") as tmp:
        metrics_port = free_port()
        peer = start_engine(
            Path(tmp), media=False, metrics_port=metrics_port, extra=("--workers", "2")
        )
        try:
            cpu0 = cpu_seconds(peer.proc.pid)
            m0 = scrape(metrics_port)
            step = run_uac_step(peer, rate, seconds, workdir=Path(tmp))
            time.sleep(1.5)  # the workers push their metrics every second
            cpu1 = cpu_seconds(peer.proc.pid)
            m1 = scrape(metrics_port)
        finally:
            peer.stop()
    key = "callengine_dispatch_messages_total"
    dispatched = sum(labelled(m1, key, "worker").values()) - sum(
        labelled(m0, key, "worker").values()
    )
    return {
        "rate": rate,
        "seconds": seconds,
        "calls_ok": step.successful,
        "calls_failed": step.failed,
        "datagrams_dispatched": dispatched,
        "front_cpu_seconds": cpu1 - cpu0,
        "front_us_per_datagram": (cpu1 - cpu0) / dispatched * 1e6 if dispatched else float("nan"),
        "front_us_per_call": (cpu1 - cpu0) / step.successful * 1e6
        if step.successful
        else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dispatch_cost", description=__doc__)
    p.add_argument("--rate", type=int, default=600)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    if not Path(SIPP).exists():
        print("sipp is not installed", file=sys.stderr)
        return 2
    loop_us = python_cost()
    print(f"choose+pack+send+drain: {loop_us:.2f} us per message", flush=True)
    front = front_cost(args.rate, args.seconds)
    print(
        f"front at {args.rate} calls/s for {args.seconds:g} s: "
        f"{front['datagrams_dispatched']:.0f} datagrams, {front['front_cpu_seconds']:.2f} s CPU, "
        f"{front['front_us_per_datagram']:.1f} us per datagram, "
        f"{front['front_us_per_call']:.0f} us per call (with its call logs); calls "
        f"{front['calls_ok']} ok / {front['calls_failed']} failed"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"dispatch_cost-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": "dispatch_cost",
                "command": " ".join(
                    [sys.executable, "-m", "benchmarks.dispatch_cost", *(argv or sys.argv[1:])]
                ),
                "python_us_per_message": loop_us,
                "front": front,
            },
            indent=2,
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
