"""Responses go back to where a request came from (no maddr reflection), and the node
does not tell carriers (or anyone, its version) what software it runs."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from integration.support import OFFER_PCMU, Daemon, free_port

pytestmark = pytest.mark.integration

VICTIM = "127.0.0.3"


def request(method: str, port: int, via: str, body: str = "") -> bytes:
    ruri = f"sip:1000@127.0.0.1:{port}"
    cid = secrets.token_hex(8)
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {via}\r\n"
        f"From: <sip:a@example.com>;tag={cid}\r\nTo: <{ruri}>\r\nCall-ID: {cid}\r\n"
        f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContact: <sip:a@127.0.0.1>\r\n"
        f"{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def collect(sock: socket.socket, seconds: float) -> list[bytes]:
    sock.settimeout(0.1)
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            out.append(sock.recv(65535))
        except TimeoutError:
            pass
    return out


def test_maddr_does_not_aim_responses_at_a_third_party(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory()
    victim_port = free_port(both=False)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker,
    ):
        victim.bind((VICTIM, victim_port))
        attacker.bind(("127.0.0.1", victim_port))  # the same port on another address
        via = f"127.0.0.1:{victim_port};branch=z9hG4bK{secrets.token_hex(6)};maddr={VICTIM}"
        attacker.sendto(request("OPTIONS", daemon.port, via), ("127.0.0.1", daemon.port))
        # an INVITE answered by the IVR and never ACKed: its 200 is retransmitted
        via = f"127.0.0.1:{victim_port};branch=z9hG4bK{secrets.token_hex(6)};maddr={VICTIM}"
        attacker.sendto(request("INVITE", daemon.port, via, OFFER_PCMU), ("127.0.0.1", daemon.port))
        got = collect(attacker, 2.0)
        assert any(m.startswith(b"SIP/2.0 200") and b"OPTIONS" in m for m in got)
        assert sum(m.startswith(b"SIP/2.0 200") and b"INVITE" in m for m in got) >= 2
        assert collect(victim, 0.5) == []


def test_server_header_has_no_version_and_is_not_sent_to_trunks(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        "trunks:\n  carrier:\n    carrier: X\n    gateway: {host: 127.0.0.5, port: 5999}\n"
        "    spans: [{name: s, type: E1}]\n    health: {probe_interval: 60}\n"
    )
    daemon = daemon_factory("--config", str(config))
    for source, want in (("127.0.0.1", b"\r\nServer: callengine\r\n"), ("127.0.0.5", None)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            s.settimeout(5)
            via = f"{source}:{s.getsockname()[1]};branch=z9hG4bK{secrets.token_hex(6)};rport"
            s.sendto(request("OPTIONS", daemon.port, via), ("127.0.0.1", daemon.port))
            reply = s.recv(65535)
        assert reply.startswith(b"SIP/2.0 200"), reply
        if want is None:
            assert b"\r\nServer:" not in reply, reply
        else:
            assert want in reply, reply


def test_bad_trunk_or_dial_policy_config_exits_2_naming_file_and_field(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("dial_policy: {allow_premium: maybe}\n")
    broken = daemon_factory("--config", str(config), wait=False)
    assert broken.proc.wait(20) == 2
    assert (
        f"callengine: configuration error: {config}: dial_policy.allow_premium: "
        "expected true or false" in broken.log()
    )
    assert "Traceback" not in broken.log()
