"""Floods from one source: the per-source limit drops them unread, bans the source,
and the balancer (an exempt address) keeps getting its OPTIONS answered."""

from __future__ import annotations

import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from integration.support import SIPP, Daemon, scrape_fresh

pytestmark = pytest.mark.integration

ATTACKER = "127.0.0.2"  # loopback, but not in source_exempt (127.0.0.1/32, ::1)
BALANCER = "127.0.0.1"


def options(port: int, source_port: int, host: str) -> bytes:
    branch = "z9hG4bK" + secrets.token_hex(6)
    return (
        f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{source_port};branch={branch};rport\r\n"
        f"From: <sip:probe@{host}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:ping@127.0.0.1:{port}>\r\nCall-ID: {secrets.token_hex(8)}\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def sipp_flood(
    tmp: Path,
    daemon: Daemon,
    source: str,
    *,
    rate: int,
    count: int,
    timeout: int,
    recv_timeout: int,
) -> None:
    """SIPp's UAC from ``source``: ``count`` short calls at ``rate`` per second."""
    subprocess.run(
        [SIPP, "-sn", "uac", "-i", source, "-r", str(rate), "-m", str(count), "-d", "100",
         "-timeout", str(timeout), "-recv_timeout", str(recv_timeout), "-nostdin", daemon.address],
        cwd=tmp, capture_output=True, timeout=60, check=False,
    )  # fmt: skip


class Prober(threading.Thread):
    """The balancer: one OPTIONS every 50 ms, records each round trip."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.rtts: list[float] = []
        self.lost = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((BALANCER, 0))
            s.settimeout(2.0)
            lp = s.getsockname()[1]
            while not self.stop.is_set():
                t0 = time.monotonic()
                s.sendto(options(self.port, lp, BALANCER), ("127.0.0.1", self.port))
                try:
                    while not s.recv(65535).startswith(b"SIP/2.0 200"):
                        pass
                    self.rtts.append(time.monotonic() - t0)
                except TimeoutError:
                    self.lost += 1
                self.stop.wait(0.05)


def probed_flood(
    tmp: Path, daemon: Daemon, source: str, **flood: int
) -> tuple[dict[str, float], Prober]:
    """A SIPp flood from ``source`` while the balancer probes: the node's metrics after
    it, and the prober's round trips."""
    prober = Prober(daemon.port)
    prober.start()
    sipp_flood(tmp, daemon, source, **flood)
    prober.stop.set()
    prober.join(5)
    assert daemon.metrics_port is not None
    return scrape_fresh(daemon.metrics_port), prober


def kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP sockets bound to ``port`` (their
    receive buffer was full: /proc/net/udp's last column)."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            total += int(fields[-1])
    return total


def test_options_flood_from_one_source_is_cut_and_the_balancer_still_answered(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory(metrics=True)
    prober = Prober(daemon.port)
    prober.start()
    before = kernel_drops(daemon.port)
    sent = 20_000
    replies = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ATTACKER, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        lp = s.getsockname()[1]
        s.setblocking(False)
        for _ in range(sent):
            s.sendto(options(daemon.port, lp, ATTACKER), ("127.0.0.1", daemon.port))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                replies += s.recv(65535).startswith(b"SIP/2.0 200")
            except BlockingIOError:
                time.sleep(0.01)
    prober.stop.set()
    prober.join(5)
    assert daemon.metrics_port is not None
    metrics = scrape_fresh(daemon.metrics_port)
    # the attacker got its burst and little more; the rest was dropped unread, by the
    # node's limiter or, when the machine is busy, by the kernel before the node read it
    assert replies <= 1000, replies
    assert metrics["callengine_flood_bans_total"] >= 1
    dropped = metrics["callengine_flood_dropped_total"]
    by_kernel = kernel_drops(daemon.port) - before
    print(f"flood: {dropped:.0f} dropped by the limiter, {by_kernel} by the kernel")
    assert dropped + by_kernel >= sent - 1000 - replies, (dropped, by_kernel, replies)
    assert dropped >= 1000, dropped
    assert "flood from 127.0.0.2: banned for 60 s" in daemon.log()
    # the balancer was answered throughout
    assert prober.lost == 0 and len(prober.rtts) >= 5
    assert max(prober.rtts) < 1.0, max(prober.rtts)
    # banned: even a polite request from that source is dropped now
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ATTACKER, 0))
        s.settimeout(0.5)
        s.sendto(options(daemon.port, s.getsockname()[1], ATTACKER), ("127.0.0.1", daemon.port))
        with pytest.raises(TimeoutError):
            s.recv(65535)


def test_invite_flood_from_one_source_leaves_the_balancer_answered(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    daemon = daemon_factory(metrics=True)
    metrics, prober = probed_flood(
        tmp_path, daemon, ATTACKER, rate=3000, count=6000, timeout=4, recv_timeout=500
    )
    assert metrics["callengine_flood_dropped_total"] > 0
    assert metrics["callengine_flood_bans_total"] >= 1
    assert prober.lost == 0 and len(prober.rtts) >= 5
    assert max(prober.rtts) < 1.0, max(prober.rtts)
    assert "Traceback" not in daemon.log()


def test_oversized_request_gets_513_and_is_not_kept(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory(metrics=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((BALANCER, 0))
        s.settimeout(5)
        lp = s.getsockname()[1]
        big = options(daemon.port, lp, BALANCER).replace(
            b"Content-Length: 0", b"X-Pad: " + b"a" * 60_000 + b"\r\nContent-Length: 0"
        )
        s.sendto(big, ("127.0.0.1", daemon.port))
        assert s.recv(65535).startswith(b"SIP/2.0 513 Message Too Large")
    assert daemon.metrics_port is not None
    assert scrape_fresh(daemon.metrics_port)['callengine_sip_dropped_total{kind="oversized"}'] == 1


def test_invite_flood_through_the_balancer_leaves_its_options_answered(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    """The flood comes from the balancer's own (exempt) address, far beyond what the
    node can take: new INVITEs are dropped unread once the receive queue backs up, so
    the balancer's OPTIONS (queued behind them) are still answered."""
    daemon = daemon_factory(metrics=True)
    metrics, prober = probed_flood(
        tmp_path, daemon, BALANCER, rate=4000, count=16000, timeout=8, recv_timeout=1000
    )
    assert metrics["callengine_overload_dropped_total"] > 0
    assert metrics["callengine_flood_dropped_total"] == 0  # exempt: not the per-source limit
    assert prober.lost == 0 and len(prober.rtts) >= 20, (prober.lost, len(prober.rtts))
    assert max(prober.rtts) < 1.0, max(prober.rtts)
    assert "Traceback" not in daemon.log()
