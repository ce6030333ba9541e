"""Values from the network that could key a table or a metric series: distinct unknown
methods and header names leave the node's /metrics (and its series) bounded."""

from __future__ import annotations

import re
import secrets
import socket
import time
import urllib.request
from collections.abc import Callable

import pytest
from integration.support import Daemon, scrape_fresh

pytestmark = pytest.mark.integration


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_distinct_methods_and_header_names_do_not_grow_metrics(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory(metrics=True)
    assert daemon.metrics_port is not None
    scrape_fresh(daemon.metrics_port)  # every worker's series are in (a multi-worker node)
    before = metrics_text(daemon.metrics_port)
    sent = 10_000
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))  # an exempt source: the per-source limit is not the fix
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        lp = s.getsockname()[1]
        s.setblocking(False)
        for i in range(sent):
            method = "X" + secrets.token_hex(6).upper()
            s.sendto(
                (
                    f"{method} sip:1000@127.0.0.1:{daemon.port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK{i}x{secrets.token_hex(4)}\r\n"
                    f"From: <sip:a@127.0.0.1>;tag={i}\r\nTo: <sip:1000@127.0.0.1>\r\n"
                    f"Call-ID: g{i}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
                    f"X-H{secrets.token_hex(5)}: {i}\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", daemon.port),
            )
            if i % 200 == 199:
                time.sleep(0.02)  # a rate the node keeps up with: every one is parsed
            while True:
                try:
                    answered += s.recv(65535).startswith(b"SIP/2.0 501")
                except BlockingIOError:
                    break
        deadline = time.monotonic() + 10
        while answered < sent and time.monotonic() < deadline:
            try:
                answered += s.recv(65535).startswith(b"SIP/2.0 501")
            except BlockingIOError:
                time.sleep(0.01)
    assert answered == sent
    assert (
        scrape_fresh(daemon.metrics_port)['callengine_sip_requests_in_total{method="other"}']
        == sent
    )
    after = metrics_text(daemon.metrics_port)
    methods = set(re.findall(r'callengine_sip_requests_in_total\{method="([^"]+)"', after))
    assert "other" in methods
    assert methods <= {"other", "OPTIONS", "INVITE", "ACK", "BYE", "CANCEL", "REGISTER"}
    assert len(after) - len(before) < 4096, (len(before), len(after))
