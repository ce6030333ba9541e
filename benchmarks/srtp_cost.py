"""Per-packet cost of SRTP (media/srtp.py over pylibsrtp) and of the receive path.

Times, for one G.711 packet of 20 ms (12-octet header + 160 octets), what the media
path adds per packet: protect (send) and unprotect (receive) per suite, SRTCP for a
receiver report, and for comparison the plain RTP work the stream core does anyway
(``RtpStream.tick`` to build a packet, ``RtpStream.receive`` to parse and latch-check
one). Pure CPU, one core, no sockets: a few seconds.

Usage::

    .venv/bin/python benchmarks/srtp_cost.py [--number 60000]
"""

from __future__ import annotations

import argparse
import random
import time
import timeit

from media.codecs import PCMU
from media.rtcp import RtcpReceiverReport, serialize_compound
from media.rtp import RtpPacket
from media.srtp import SUITES, SrtpContext, generate_key
from media.stream import RtpStream


def _us(stmt: object, number: int) -> float:
    best = min(timeit.repeat(stmt, number=number, repeat=3))  # type: ignore[arg-type]
    return best / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=60_000)
    n = parser.parse_args().number
    payload = b"\xd5" * 160
    peer = ("192.0.2.1", 4000)

    tx = RtpStream(PCMU, now=0.0, remote=peer, rng=random.Random(1))
    rx = RtpStream(PCMU, now=0.0, remote=peer, rng=random.Random(2))
    packet = RtpPacket(0, False, 1, 160, 0x1234, payload=payload).serialize()
    rx.receive(packet, peer, 0.0)
    print(
        f"plain RtpStream.tick (build one packet)      {_us(lambda: tx.tick(payload), n):6.2f} us"
    )
    # The same packet again: the stats count it as a duplicate, the cost is the same.
    print(
        "plain RtpStream.receive (parse, latch, stats)"
        f" {_us(lambda: rx.receive(packet, peer, 0.0), n):5.2f} us"
    )
    report = serialize_compound([RtcpReceiverReport(0x1234, ())])
    packets = [
        RtpPacket(0, False, s & 0xFFFF, s * 160, 0x99, payload=payload).serialize()
        for s in range(n)
    ]
    for name, suite in SUITES.items():
        best_protect = best_unprotect = best_rtcp = float("inf")
        for _ in range(3):
            # libsrtp refuses to protect or unprotect one index twice (a two-time pad, a
            # replay): every round gets new contexts and each packet is used once.
            a_key, b_key = generate_key(suite), generate_key(suite)
            a = SrtpContext(suite, tx_key=a_key, rx_key=b_key)
            b = SrtpContext(suite, tx_key=b_key, rx_key=a_key)
            start = time.perf_counter()
            protected = [a.protect(p) for p in packets]
            best_protect = min(best_protect, time.perf_counter() - start)
            start = time.perf_counter()
            for p in protected:
                b.unprotect(p)
            best_unprotect = min(best_unprotect, time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(n // 10):
                a.protect_rtcp(report)
            best_rtcp = min(best_rtcp, (time.perf_counter() - start) * 10)
        print(
            f"{name:24s} protect {best_protect / n * 1e6:5.2f} us  "
            f"unprotect {best_unprotect / n * 1e6:5.2f} us  "
            f"protect_rtcp {best_rtcp / n * 1e6:5.2f} us"
        )


if __name__ == "__main__":
    main()
