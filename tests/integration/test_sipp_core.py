"""Issue #2 acceptance: `callengine serve` against SIPp, a SIP peer nobody here wrote.

What is asserted is what SIPp counted (its -trace_stat CSV), the bytes a raw socket
gets back, and the node's own /metrics counters. SIPp 3.6.1 (`sip-tester`) is required.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from integration.support import (
    SIPP,
    Daemon,
    calls,
    run_sipp,
    scrape_fresh,
    scrape_node,
    sipp_to,
    wait_metric,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(SIPP).exists(), reason="SIPp (sip-tester) is not installed"),
]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sipp"


# --------------------------------------------------------------------- throughput
@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_sipp_uac_2000_calls_at_200_cps(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, transport: str
) -> None:
    """Issue #2: 2,000 short calls at 200 calls/s, none failed, over UDP and over TCP."""
    daemon = daemon_factory()
    result = run_sipp(
        sipp_to(daemon, "-sn", "uac", "-t", transport, "-r", "200", "-m", "2000", "-d", "100"),
        cwd=tmp_path,
        timeout=60,
    )
    assert calls(result) == (2000, 0), result.stats
    assert result.returncode == 0, result.stderr
    assert daemon.proc.poll() is None, daemon.log()


def test_sipp_uac_against_no_media_node(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """`serve --no-media` (signalling only, what the CPS benchmark measures second)
    still answers SIPp's calls and lets SIPp hang them up."""
    daemon = daemon_factory("--no-media")
    result = run_sipp(
        sipp_to(daemon, "-sn", "uac", "-r", "100", "-m", "200", "-d", "100"),
        cwd=tmp_path,
        timeout=30,
    )
    assert calls(result) == (200, 0), daemon.log()[-2000:]


# ----------------------------------------------------------------------- overload
def test_overload_gets_503_with_retry_after(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """With --max-calls 5 and 5 long calls up, the next INVITEs get 503 + Retry-After
    (checked by SIPp's own regexp on the header), and the 5 calls still complete."""
    daemon = daemon_factory("--max-calls", "5", metrics=True)
    assert daemon.metrics_port is not None
    with ThreadPoolExecutor(1) as pool:
        long_calls = pool.submit(
            run_sipp,
            sipp_to(daemon, "-sn", "uac", "-r", "50", "-m", "5", "-d", "3000"),
            cwd=tmp_path,
            timeout=30,
        )
        wait_metric(daemon.metrics_port, "callengine_active_calls", 5.0)
        refused = run_sipp(
            sipp_to(daemon, "-sf", str(FIXTURES / "uac_expect_503.xml"), "-r", "20", "-m", "3"),
            cwd=tmp_path,
            timeout=30,
        )
        assert calls(refused) == (3, 0), refused.stats
        assert calls(long_calls.result()) == (5, 0)
    # (a multi-worker node's workers push their figures to the front every second)
    wait_metric(daemon.metrics_port, "callengine_overload_rejected_total", 3.0)
    wait_metric(daemon.metrics_port, 'callengine_sip_responses_out_total{status="503"}', 3.0)
    metrics = scrape_node(daemon.metrics_port)
    # SIPp's ACK matched the 503's transaction: no retransmission of it (Timer G)
    assert metrics['callengine_sip_retransmissions_total{direction="out"}'] == 0


# ------------------------------------------------------------------ malformed input
def _invite(port: int, local_port: int, tag: str, *, content_length: int, body: bytes) -> bytes:
    head = (
        f"INVITE sip:service@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK-{tag};rport\r\n"
        f"From: <sip:raw@127.0.0.1:{local_port}>;tag=f-{tag}\r\n"
        f"To: <sip:service@127.0.0.1:{port}>\r\n"
        f"Call-ID: {tag}@raw.test\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:raw@127.0.0.1:{local_port}>\r\n"
        f"Max-Forwards: 70\r\n"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    )
    return head.encode() + body


SDP = (
    b"v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def _exchange(sock: socket.socket, port: int, data: bytes, wait: float = 0.5) -> list[bytes]:
    """Send one datagram to the node; everything that comes back within ``wait`` s."""
    sock.sendto(data, ("127.0.0.1", port))
    got: list[bytes] = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(65535))
        except TimeoutError:
            break
    return got


def _status_lines(datagrams: list[bytes]) -> list[bytes]:
    return [d.split(b"\r\n", 1)[0] for d in datagrams]


@pytest.fixture
def raw_udp() -> Iterator[Callable[[], socket.socket]]:
    opened: list[socket.socket] = []

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def test_malformed_datagrams_never_kill_the_worker(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, raw_udp: Callable[[], socket.socket]
) -> None:
    """Garbage with no Via, Call-ID or CSeq gets no reply (a response could not be
    matched by the peer, and answering any datagram reflects spoofed traffic); INVITEs whose body is shorter than Content-Length (truncated
    in the SDP, or claiming 9999 octets) get 400 (RFC 3261 §18.3); a SIPp call made
    afterwards still succeeds and /metrics counted each parse error."""
    daemon = daemon_factory(metrics=True)
    assert daemon.metrics_port is not None
    before = scrape_fresh(daemon.metrics_port)["callengine_sip_parse_errors_total"]
    sock = raw_udp()
    lp = sock.getsockname()[1]
    port = daemon.port

    assert _exchange(sock, port, bytes(range(256)) * 4) == []
    assert _exchange(sock, port, b"\x00\xffINVITE garbage\r\n\r\n\xde\xad") == []
    full = _invite(port, lp, "trunc", content_length=len(SDP), body=SDP)
    truncated = _invite(port, lp, "trunc", content_length=len(SDP), body=SDP[: len(SDP) // 2])
    assert len(truncated) < len(full)
    answers = _exchange(sock, port, truncated)
    assert _status_lines(answers) == [
        b"SIP/2.0 400 Bad Request - Content-Length larger than the body"
    ]
    assert b"Call-ID: trunc@raw.test\r\n" in answers[0]
    answers = _exchange(
        sock, port, _invite(port, lp, "cl9999", content_length=9999, body=b"v=0\r\n")
    )
    assert _status_lines(answers) == [
        b"SIP/2.0 400 Bad Request - Content-Length larger than the body"
    ]
    assert b"Call-ID: cl9999@raw.test\r\n" in answers[0]
    # cut inside the Via header: no Call-ID or CSeq to answer with, so dropped
    assert _exchange(sock, port, full[: full.index(b";branch=") + 12]) == []

    result = run_sipp(
        sipp_to(daemon, "-sn", "uac", "-m", "1", "-d", "100"), cwd=tmp_path, timeout=30
    )
    assert calls(result) == (1, 0)
    assert daemon.proc.poll() is None, daemon.log()
    after = scrape_fresh(daemon.metrics_port)["callengine_sip_parse_errors_total"]
    assert after - before == 5


def test_invite_without_end_of_headers_gets_400(
    daemon_factory: Callable[..., Daemon], raw_udp: Callable[[], socket.socket]
) -> None:
    """An INVITE datagram cut just before the empty line that ends its headers still
    carries Via, From, To, Call-ID and CSeq: it is answerable, so it gets 400 (RFC 3261
    §8.2, DESIGN.md principle 4) rather than silence that leaves the peer retransmitting."""
    daemon = daemon_factory()
    sock = raw_udp()
    lp = sock.getsockname()[1]
    whole = _invite(daemon.port, lp, "noend", content_length=0, body=b"")
    assert whole.endswith(b"\r\n\r\n")
    answers = _exchange(sock, daemon.port, whole[:-2])
    assert _status_lines(answers) == [b"SIP/2.0 400 Bad Request - no end of headers"]
    assert daemon.proc.poll() is None
