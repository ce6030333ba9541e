"""Idle TCP connections cannot exhaust a node's descriptors."""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from integration.support import Daemon, scrape_fresh

pytestmark = pytest.mark.integration


def options_over_tcp(port: int, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        lp = s.getsockname()[1]
        s.sendall(
            (
                f"OPTIONS sip:ping@127.0.0.1:{port};transport=tcp SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP {source}:{lp};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
                f"From: <sip:p@{source}>;tag=1\r\nTo: <sip:ping@127.0.0.1>\r\n"
                f"Call-ID: {secrets.token_hex(8)}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        return s.recv(65535)


def test_idle_connections_are_capped_per_source_and_closed_when_silent(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("tcp_max_per_source: 10\ntcp_first_message_timeout: 1\n")
    daemon = daemon_factory("--config", str(config), metrics=True)
    assert daemon.metrics_port is not None
    held: list[socket.socket] = []
    try:
        for _ in range(200):  # an attacker at 127.0.0.2 opens 200 and sends nothing
            s = socket.socket()
            s.settimeout(5)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", daemon.port))
            held.append(s)
        # a legitimate peer is still served meanwhile, over TCP
        assert options_over_tcp(daemon.port).startswith(b"SIP/2.0 200")
        deadline = time.monotonic() + 5
        metrics = scrape_fresh(daemon.metrics_port)
        while time.monotonic() < deadline:
            metrics = scrape_fresh(daemon.metrics_port)
            if metrics['callengine_stream_connections_closed_total{reason="refused"}'] >= 190:
                break
            time.sleep(0.1)
        assert metrics['callengine_stream_connections_closed_total{reason="refused"}'] == 190
        assert metrics["callengine_stream_connections"] <= 10
        # the 10 it took are closed once they have been silent past the first-message timeout
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            metrics = scrape_fresh(daemon.metrics_port)
            if metrics["callengine_stream_connections"] == 0:
                break
            time.sleep(0.1)
        assert metrics["callengine_stream_connections"] == 0
        assert metrics['callengine_stream_connections_closed_total{reason="idle"}'] == 10
        for s in held:
            with contextlib.suppress(OSError):
                s.settimeout(2)
                assert s.recv(1) == b""
    finally:
        for s in held:
            s.close()
    # the attacker's address may connect again and be served now
    assert options_over_tcp(daemon.port, "127.0.0.2").startswith(b"SIP/2.0 200")
