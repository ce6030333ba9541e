"""One INVITE must not fan out into as many legs as an attacker registered contacts."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from integration.support import OFFER_PCMU, Daemon, free_port
from integration.test_ring_user import register

pytestmark = pytest.mark.integration


def busy(request: bytes) -> bytes:
    """486 for ``request``, built from its own headers (a phone that is busy)."""
    head = request.decode(errors="replace").split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [h for h in head[1:] if h.split(":", 1)[0].strip().lower() in
            ("via", "from", "to", "call-id", "cseq")]  # fmt: skip
    keep = [h + ";tag=busy" if h.lower().startswith("to:") else h for h in keep]
    return (
        "SIP/2.0 486 Busy Here\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_fork_fan_out_is_capped(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("max_fork: 3\n")
    daemon = daemon_factory("--config", str(config))
    ports = [free_port(both=False) for _ in range(5)]
    for port in ports:
        assert register(daemon.port, "100", "demo100", port).startswith("SIP/2.0 200")
    phones = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        s.setblocking(False)
        phones.append(s)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller:
            caller.bind(("127.0.0.1", 0))
            caller.settimeout(10)
            lp = caller.getsockname()[1]
            cid = secrets.token_hex(8)
            ruri = f"sip:1001@127.0.0.1:{daemon.port}"  # ring group sales: users 100, 101
            caller.sendto(
                (
                    f"INVITE {ruri} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK{cid};rport\r\n"
                    f"From: <sip:caller@127.0.0.1:{lp}>;tag=c{cid}\r\nTo: <{ruri}>\r\n"
                    f"Call-ID: {cid}@caller\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
                    f"Contact: <sip:caller@127.0.0.1:{lp}>\r\nContent-Type: application/sdp\r\n"
                    f"Content-Length: {len(OFFER_PCMU)}\r\n\r\n{OFFER_PCMU}"
                ).encode(),
                ("127.0.0.1", daemon.port),
            )
            rung: set[int] = set()
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                for port, s in zip(ports, phones, strict=True):
                    try:
                        data, addr = s.recvfrom(65535)
                    except BlockingIOError:
                        continue
                    if data.startswith(b"INVITE "):
                        rung.add(port)
                        s.sendto(busy(data), addr)
                time.sleep(0.01)
            assert len(rung) == 3, rung
            final = b""
            while not final[8:11].strip().isdigit() or int(final[8:11]) < 200:
                final = caller.recv(65535)
            assert int(final[8:11]) >= 400
    finally:
        for s in phones:
            s.close()
    assert "ringing the first 3 (max_fork" in daemon.log()
