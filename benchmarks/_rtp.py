"""Shared pieces of the RTP benchmarks (media_streams, soak): capture the node's
outgoing RTP on loopback with dumpcap, measure every stream with tshark.

tshark is the independent judge: ``-z rtp,streams`` gives, per stream, packets, lost
packets (from sequence numbers), max delta (the longest gap between two consecutive
packets, capture time) and jitter (RFC 3550).
"""

from __future__ import annotations

import bisect
import os
import random
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENGINE_RTP_RANGE",
    "Capture",
    "StreamStats",
    "analyse",
    "capture",
    "distribution",
    "sipp_media_port",
]

#: The node's RTP port range (``rtp_port_min`` / ``rtp_port_max`` defaults).
ENGINE_RTP_RANGE = (10000, 20000)


@dataclass
class StreamStats:
    """One RTP stream as tshark measured it (times in ms)."""

    src_port: int
    ssrc: str
    packets: int
    lost: int
    max_delta: float
    mean_jitter: float
    max_jitter: float


@dataclass
class Capture:
    """What dumpcap reported for one capture."""

    ok: bool
    received: int | None
    dropped: int | None
    """Packets the capture itself lost (kernel buffer or dumpcap): these would show as
    lost RTP packets that the node did send."""
    error: str = ""


_DROPS = re.compile(r"Packets received/dropped on interface .*:\s*(\d+)/(\d+)")


def capture(
    pcap: Path,
    *,
    dst_port: int,
    seconds: float,
    src_range: tuple[int, int] = ENGINE_RTP_RANGE,
    snaplen: int = 96,
    buffer_mib: int = 64,
) -> Capture:
    """Capture for ``seconds`` the RTP the node sends to ``dst_port`` on loopback.

    Only even source ports inside the node's RTP range (RTP, not RTCP; other processes
    on the machine may use the same destination range). Blocks for ``seconds``."""
    proc = subprocess.run(
        [
            "dumpcap",
            "-q",
            "-i",
            "lo",
            "-s",
            str(snaplen),
            "-B",
            str(buffer_mib),
            "-f",
            f"udp dst port {dst_port} and udp src portrange "
            f"{src_range[0]}-{src_range[1]} and udp[1] & 1 = 0",
            "-a",
            f"duration:{max(1, int(round(seconds)))}",
            "-w",
            str(pcap),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 60,
    )
    m = _DROPS.search(proc.stderr)
    received, dropped = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    if proc.returncode != 0:
        return Capture(False, received, dropped, proc.stderr.strip()[-300:])
    return Capture(True, received, dropped)


_TAKEN: set[int] = set()


def sipp_media_port(first: int = 21000, last: int = 32000) -> int:
    """An even port P with P..P+3 free on 127.0.0.1 for SIPp's ``-mp``.

    SIPp binds four ports from ``-mp``: audio RTP/RTCP and video RTP/RTCP; a port from
    ``free_port()`` can have its neighbours taken (by the other SIPp's ``-p`` for
    instance) and SIPp then exits with "Unable to bind video RTP socket". The range
    lies between the node's RTP range and the kernel's ephemeral ports (which
    ``free_port()`` draws from)."""
    start = first + 4 * random.randrange((last - first) // 4)
    for i in range((last - first) // 4):
        port = first + (start - first + 4 * i) % (last - first)
        if port in _TAKEN or port + 3 > last:
            continue
        sockets = []
        try:
            for p in range(port, port + 4):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        _TAKEN.add(port)
        return port
    raise RuntimeError("no free block of 4 UDP ports for SIPp's media")


_STREAM_LINE = re.compile(
    r"^\s*\S+\s+\S+\s+\S+\s+(\d+)\s+\S+\s+\d+\s+(0x[0-9A-Fa-f]+)\s+(.+?)\s+(\d+)\s+(-?\d+)\s+\("
    r"[^)]*\)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.-]+)\s+([\d.-]+)\s+([\d.-]+)"
)


def analyse(pcap: Path, media_port: int, *, timeout: float = 900.0) -> list[StreamStats]:
    """Per-stream figures from ``tshark -q -z rtp,streams``.

    Packets to SIPp's media port are decoded as RTP outright (``-d``): tshark's RTP
    heuristic alone missed one stream in a thousand now and then."""
    try:
        proc = subprocess.run(
            [
                "tshark",
                "-r",
                str(pcap),
                "-d",
                f"udp.port=={media_port},rtp",
                "-o",
                "rtp.heuristic_rtp:TRUE",
                "-q",
                "-z",
                "rtp,streams",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        print(f"tshark took more than {timeout:g} s on {pcap}", file=sys.stderr)
        return []
    streams = []
    for line in proc.stdout.splitlines():
        m = _STREAM_LINE.match(line)
        if not m:
            if os.environ.get("MEDIA_BENCH_DEBUG") and line.strip():
                print("unparsed:", line, file=sys.stderr)
            continue
        streams.append(
            StreamStats(
                src_port=int(m.group(1)),
                ssrc=m.group(2),
                packets=int(m.group(4)),
                lost=int(m.group(5)),
                max_delta=float(m.group(8)),
                mean_jitter=float(m.group(10)),
                max_jitter=float(m.group(11)),
            )
        )
    return streams


#: Upper bounds (ms) of the max-delta distribution buckets; a 20 ms stream is at ~20-21.
DELTA_BUCKETS_MS = (22.0, 25.0, 30.0, 40.0, 60.0, 100.0, 200.0, 500.0)


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


def distribution(values: list[float]) -> dict[str, object]:
    """Worst, percentiles and a bucket histogram of per-stream values (ms)."""
    if not values:
        return {"n": 0, "max": None, "p50": None, "p90": None, "p99": None, "buckets": {}}
    names = [f"<={b:g}" for b in DELTA_BUCKETS_MS] + [f">{DELTA_BUCKETS_MS[-1]:g}"]
    counts = [0] * len(names)
    for v in values:
        counts[bisect.bisect_left(DELTA_BUCKETS_MS, v)] += 1
    buckets = dict(zip(names, counts, strict=True))
    return {
        "n": len(values),
        "max": max(values),
        "p50": _percentile(values, 50),
        "p90": _percentile(values, 90),
        "p99": _percentile(values, 99),
        "buckets": buckets,
    }
