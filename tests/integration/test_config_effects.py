"""Node settings whose effect shows only on a running node: one case per setting.

Each case sets one documented setting of ``callengine/config.py`` to a value other
than its default and asserts what a peer (or an operator) sees: a response, a
header, a closed connection, a bound port, a metric, a log line. Two nodes carry all
the cases (a node starts in about a second); ``NODE_EFFECTS`` names the setting each
case is about, and ``tests/callengine/test_config_options.py`` checks that every
setting has a case here or there.

Traffic goes to 127.0.0.1 from 127.0.0.1 (exempt from the per-source limits, as the
default ``source_exempt`` says) or from 127.0.0.2/127.0.0.3 (not exempt).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from integration.support import CALLENGINE, Daemon, free_port, scrape
from integration.test_tls_ipv6 import _self_signed

#: Settings with a case in this module (checked by test_config_options.py).
NODE_EFFECTS: frozenset[str] = frozenset(
    {
        # node A
        "listen",
        "transports",
        "user_agent",
        "max_message_size",
        "codecs",
        "rtp_port_min",
        "rtp_port_max",
        "rtp_timeout",
        "srtp",
        "source_rate",
        "source_burst",
        "source_ban",
        "source_exempt",
        "source_max_cps",
        "digest_algorithms",
        "log_format",
        "log_level",
        "node_id",
        "admin",
        "admin_token",
        "metrics",
        "data_dir",
        "tenant_files",
        "max_contacts",
        "auth_guard",
        "config_cache",
        # node B
        "tls_cert",
        "tls_key",
        "tls_port",
        "ws_port",
        "wss_port",
        "tcp_max_per_source",
        "tcp_max_connections",
        "tcp_first_message_timeout",
        "tcp_idle_timeout",
        "max_calls",
        "retry_after",
        "tenant_max_cps",
        "drain_grace",
        "user_agent_to_trunks",
        # a node that does not start
        "on_empty",
    }
)

TENANT = {
    "id": "cfgt",
    "default_route": "ivr:main",
    "users": {"200": {"password": "pw200"}},
    "numbers": {"4242": "user:200", "4243": "ivr:main"},
    "flows": {
        "main": {
            "start": "wait",
            "nodes": {
                "wait": {"type": "play", "prompts": ["welcome"], "next": "wait"},
            },
        }
    },
}


# -- a raw SIP peer ---------------------------------------------------------------


@dataclass
class Reply:
    status: int
    reason: str
    headers: dict[str, str]
    body: str


def _parse(data: bytes) -> Reply:
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    _, status, reason = lines[0].split(" ", 2)
    return Reply(int(status), reason, headers, body)


class Peer:
    """A UDP SIP peer on ``source`` talking to a node on 127.0.0.1:``port``."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.host, self.lport = self.sock.getsockname()

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        method: str,
        user: str = "ping",
        *,
        extra: str = "",
        body: str = "",
        call_id: str | None = None,
        cseq: int = 1,
        to_tag: str = "",
        domain: str | None = None,
        contact: str | None = None,
    ) -> tuple[str, str, str]:
        """Send a request; returns (call id, branch, request URI)."""
        call_id = call_id or secrets.token_hex(8)
        branch = "z9hG4bK" + secrets.token_hex(6)
        ruri = f"sip:{user}@{domain or f'127.0.0.1:{self.port}'}"
        to = f"<{ruri}>" + (f";tag={to_tag}" if to_tag else "")
        msg = (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{self.lport};branch={branch};rport\r\n"
            f"From: <sip:caller@{self.host}:{self.lport}>;tag=f{call_id}\r\nTo: {to}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
            f"Contact: {contact or f'<sip:caller@{self.host}:{self.lport}>'}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        )
        self.sock.sendto(msg.encode(), ("127.0.0.1", self.port))
        return call_id, branch, ruri

    def receive(self, timeout: float = 5.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65535)
        except OSError:
            return None

    def final(self, timeout: float = 5.0, call_id: str | None = None) -> Reply | None:
        """The next final response (provisional ones and other calls' responses
        skipped), or None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            data = self.receive(left)
            if data is None:
                return None
            if data.startswith(b"SIP/2.0 "):
                reply = _parse(data)
                if reply.status >= 200 and call_id in (None, reply.headers.get("call-id")):
                    return reply
        return None

    def options(self, *, extra: str = "", timeout: float = 3.0) -> Reply | None:
        call_id, _, _ = self.request("OPTIONS", extra=extra)
        return self.final(timeout, call_id)

    def invite(self, user: str, sdp: str) -> tuple[Reply | None, str, str]:
        """INVITE with ``sdp``, ACK the final response; (reply, call id, To tag)."""
        call_id, branch, ruri = self.request(
            "INVITE", user, extra="Content-Type: application/sdp\r\n", body=sdp
        )
        reply = self.final(10.0, call_id)
        to_tag = ""
        if reply is not None:
            to_tag = reply.headers.get("to", "").partition(";tag=")[2]
            self.request("ACK", user, call_id=call_id, to_tag=to_tag)
        return reply, call_id, to_tag

    def bye(self, user: str, call_id: str, to_tag: str) -> None:
        self.request("BYE", user, call_id=call_id, cseq=2, to_tag=to_tag)

    def wait_request(self, method: str, timeout: float) -> bytes | None:
        """Wait for a request ``method`` from the node; answer it 200."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            data = self.receive(left)
            if data is None:
                return None
            if data.startswith(method.encode() + b" "):
                head = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
                keep = [h for h in head[1:] if h.split(":")[0].lower() in _ECHO]
                ok = "SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
                self.sock.sendto(ok.encode(), ("127.0.0.1", self.port))
                return data
        return None


_ECHO = ("via", "from", "to", "call-id", "cseq")


def _sdp(*, payloads: str = "0 8 101", proto: str = "RTP/AVP", extra: str = "") -> str:
    maps = {
        "0": "a=rtpmap:0 PCMU/8000\r\n",
        "8": "a=rtpmap:8 PCMA/8000\r\n",
        "101": "a=rtpmap:101 telephone-event/8000\r\n",
    }
    return (
        "v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {free_port(both=False)} {proto} {payloads}\r\n"
        + "".join(maps[p] for p in payloads.split())
        + extra
    )


_CRYPTO = (
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk\r\n"
)


def _start(tmp: Path, name: str, config: dict[str, Any], *extra: str) -> Daemon:
    """`callengine serve --config <name>.yaml`; waits for SIP on the first listen port."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"workers": 1, **config}))  # one process (support.py)
    port = int(config["listen"][0].rsplit(":", 1)[1])
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            [CALLENGINE, "serve", "--config", str(path), *extra],
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    daemon = Daemon(proc, port, Path(config["data_dir"]), log_path)
    peer = Peer(port)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            if peer.options(timeout=0.3) is not None:
                return daemon
        daemon.stop(timeout=5)
        raise AssertionError(f"node {name} did not start:\n{daemon.log()}")
    finally:
        peer.close()


def _http(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# -- node A: UDP only, many settings ------------------------------------------------


def test_node_a_settings(tmp_path: Path) -> None:
    port = free_port()
    metrics = free_port(socket.SOCK_STREAM, both=False)
    admin = free_port(socket.SOCK_STREAM, both=False)
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(TENANT))
    rtp_low = 20000 + secrets.randbelow(20000)
    config = {
        "listen": [f"127.0.0.1:{port}"],
        "transports": ["UDP"],
        "data_dir": str(tmp_path / "a-data"),
        "metrics": f"127.0.0.1:{metrics}",
        "admin": f"127.0.0.1:{admin}",
        "admin_token": "s3cret",
        "tenant_files": ["extra.yaml"],
        "user_agent": "cfg-test-ua",
        "max_message_size": 2048,
        "codecs": ["PCMA", "telephone-event"],
        "rtp_port_min": rtp_low,
        "rtp_port_max": rtp_low + 200,
        "rtp_timeout": 1,
        "srtp": "any",
        "source_exempt": ["127.0.0.1/32"],
        "source_rate": 5,
        "source_burst": 5,
        "source_ban": 30,
        "source_max_cps": 1,
        "digest_algorithms": ["MD5"],
        "log_format": "json",
        "log_level": "DEBUG",
        "node_id": "cfg-node-7",
        "max_contacts": 1,
        "auth_guard": {"source_limit": 2},
        # numbers no tenant owns go to cfgt's default route (not to the demo tenant's)
        "config_cache": {"default_tenant": "cfgt"},
    }
    node = _start(tmp_path, "a", config)
    peer = Peer(port)
    try:
        # listen + user_agent: the node answers on that address, naming itself so
        reply = peer.options()
        assert reply is not None and reply.status == 200
        assert reply.headers.get("server") == "cfg-test-ua"
        # transports: UDP only, so nothing accepts TCP on the SIP port
        assert _refused(port)
        # max_message_size: 2,048 bytes; a 3,000-byte request gets 513
        reply = peer.options(extra=f"X-Pad: {'a' * 3000}\r\n")
        assert reply is not None and reply.status == 513
        # codecs: PCMA only (and telephone-event): a PCMU-only offer is refused...
        reply, _, _ = peer.invite("4243", _sdp(payloads="0"))
        assert reply is not None and reply.status == 488
        # ...and a PCMU+PCMA offer is answered with PCMA, on a port in the RTP range
        reply, call_id, tag = peer.invite("4243", _sdp())
        assert reply is not None and reply.status == 200, reply
        media = next(ln for ln in reply.body.split("\r\n") if ln.startswith("m=audio"))
        _, rtp_port, proto, *payloads = media.split()
        assert payloads == ["8", "101"] and proto == "RTP/AVP"
        assert rtp_low <= int(rtp_port) <= rtp_low + 200  # rtp_port_min / rtp_port_max
        # rtp_timeout: 1 s without RTP from us and the node hangs up (default 60 s)
        t0 = time.monotonic()
        assert peer.wait_request("BYE", 6.0) is not None
        assert time.monotonic() - t0 < 5.0
        # srtp: "any" accepts SDES-SRTP over UDP (the default "tls" refuses it: 488)
        reply, call_id, tag = peer.invite("4243", _sdp(proto="RTP/SAVP", extra=_CRYPTO))
        assert reply is not None and reply.status == 200, reply
        assert "RTP/SAVP" in reply.body and "a=crypto:1 AES_CM_128_HMAC_SHA1_80" in reply.body
        peer.bye("4243", call_id, tag)
        # digest_algorithms: [MD5] is the only challenge (the default offers SHA-256 first)
        call_id, _, _ = peer.request("REGISTER", "200", extra="Expires: 60\r\n", domain="cfgt")
        reply = peer.final(call_id=call_id)
        assert reply is not None and reply.status == 401
        assert "algorithm=MD5" in reply.headers["www-authenticate"]
        assert "SHA-256" not in reply.headers["www-authenticate"]
        # tenant_files: the numbers are tenant cfgt's (4243 its IVR, answered above; 4242
        # its user 200, not registered)
        reply, call_id, tag = peer.invite("4242", _sdp())
        assert reply is not None and reply.status == 480, reply
        # config_cache.default_tenant: a number nobody owns takes cfgt's default route
        reply, call_id, tag = peer.invite("999", _sdp())
        assert reply is not None and reply.status == 200, reply
        peer.bye("999", call_id, tag)
        # max_contacts: 1: a REGISTER that would leave two bindings is refused
        reply = _register(peer, "pw200", contacts=2)
        assert reply is not None and reply.status == 403, reply
        assert "too many registered contacts" in reply.reason
        assert _register(peer, "pw200", contacts=1).status == 200  # type: ignore[union-attr]
        # auth_guard: source_limit 2: two wrong passwords from 127.0.0.4 ban the address,
        # so the right one is challenged again unchecked (with the default 10 it passes)
        guessing = Peer(port, "127.0.0.4")
        try:
            for _ in range(2):
                assert _register(guessing, "wrong").status == 401  # type: ignore[union-attr]
            time.sleep(1.0)  # 5 requests a second (source_rate): not what refuses it
            assert _register(guessing, "pw200").status == 401  # type: ignore[union-attr]
        finally:
            guessing.close()
        # source_exempt: 127.0.0.1 is never limited: 20 requests, 20 answers
        for _ in range(20):
            peer.request("OPTIONS")
        answered = sum(peer.final(2.0) is not None for _ in range(20))
        assert answered == 20
        # source_max_cps: 1 new call per second from a source that is not exempt
        other = Peer(port, "127.0.0.3")
        try:
            first, call_id, tag = other.invite("4243", _sdp())
            second, _, _ = other.invite("4243", _sdp())
            assert first is not None and first.status == 200
            assert second is not None and second.status == 503
            other.bye("4243", call_id, tag)
        finally:
            other.close()
        # source_rate / source_burst / source_ban: a flood from 127.0.0.2 gets 5 answers
        # (the burst), then is banned: still no answer after the rate has refilled
        flood = Peer(port, "127.0.0.2")
        try:
            for _ in range(20):
                flood.request("OPTIONS")
            answers = 0
            while flood.final(1.0) is not None:
                answers += 1
            assert answers == 5
            time.sleep(1.5)  # 5/s: the bucket is full again; only the ban keeps it shut
            assert flood.options(timeout=1.0) is None
        finally:
            flood.close()
        values = scrape(metrics)  # metrics: the endpoint is where the setting says
        assert values["callengine_flood_bans_total"] == 1
        # admin + admin_token: the control API is there and wants the token
        assert _http(f"http://127.0.0.1:{admin}/calls")[0] == 401
        status, health = _http(f"http://127.0.0.1:{admin}/health", "s3cret")
        assert status == 200 and health["node"] == "cfg-node-7"  # node_id
        assert _http(f"http://127.0.0.1:{admin}/calls", "s3cret")[0] == 200
        # data_dir: the configuration cache lives under it
        assert (tmp_path / "a-data" / "leveldb").is_dir()
    finally:
        peer.close()
        node.stop(timeout=10)
    # log_format json + log_level DEBUG: every line is a JSON record, some at DEBUG
    records = [json.loads(line) for line in node.log().splitlines() if line.strip()]
    assert records and any(r.get("level") == "DEBUG" for r in records), records[:3]


# -- node B: stream transports, caps and drain ----------------------------------------


def test_node_b_settings(tmp_path: Path) -> None:
    port = free_port()
    tls_port, ws_port, wss_port = (free_port(socket.SOCK_STREAM, both=False) for _ in range(3))
    cert, key = _self_signed(tmp_path)
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(TENANT))
    gateway = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gateway.bind(("127.0.0.6", 0))
    gateway_port = gateway.getsockname()[1]
    config = {
        "listen": [f"127.0.0.1:{port}"],
        "transports": ["UDP", "TCP"],
        "data_dir": str(tmp_path / "b-data"),
        "metrics": None,
        "admin": None,
        "tenant_files": ["extra.yaml"],
        "tls_cert": str(cert),
        "tls_key": str(key),
        "tls_port": tls_port,
        "ws_port": ws_port,
        "wss_port": wss_port,
        "source_exempt": [],
        "tcp_max_per_source": 2,
        "tcp_max_connections": 3,
        # a trunk whose gateway is a socket of this test (on 127.0.0.6: gateways and
        # trusted sources are exempt from the per-source caps tested from 127.0.0.1)
        "trunks": {
            "gw": {
                "carrier": "test",
                "gateway": {"host": "127.0.0.6", "port": gateway_port},
                "spans": [{"type": "E1"}],
                "health": {"probe": False},
            }
        },
        "trunk_groups": {"pstn": {"trunks": ["gw"]}},
        "outbound_routes": [{"prefix": "9", "strip": 1, "group": "pstn"}],
        "trusted_sources": ["127.0.0.5/32"],
        "user_agent_to_trunks": True,
        "tcp_first_message_timeout": 1,
        "tcp_idle_timeout": 2,
        "max_calls": 1,
        "retry_after": 7,
        "tenant_max_cps": 1,
        "drain_grace": 1,
    }
    node = _start(tmp_path, "b", config)
    peer = Peer(port)
    try:
        # SIP over UDP answers a moment before the stream listeners are all bound
        assert _wait(lambda: not any(map(_refused, (tls_port, ws_port, wss_port))), 10)
        # tls_cert / tls_key / tls_port: a TLS handshake on tls_port with that certificate
        ctx = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() is not None
        # ws_port: an HTTP upgrade to WebSocket (RFC 7118 "sip" subprotocol)
        with socket.create_connection(("127.0.0.1", ws_port), timeout=5) as ws:
            ws.sendall(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
            )
            assert ws.recv(4096).startswith(b"HTTP/1.1 101")
        # wss_port: TLS there too
        with socket.create_connection(("127.0.0.1", wss_port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() is not None
        # tcp_first_message_timeout: 1 s to send a first message, then closed
        with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
            t0 = time.monotonic()
            assert silent.recv(1) == b""
            assert 0.5 < time.monotonic() - t0 < 3.0
        # tcp_idle_timeout: 2 s of silence after a message, then closed
        with socket.create_connection(("127.0.0.1", port), timeout=6) as idle:
            idle.sendall(_tcp_options(port, idle.getsockname()[1]))
            assert idle.recv(65535).startswith(b"SIP/2.0 200")
            t0 = time.monotonic()
            assert idle.recv(1) == b""
            assert 1.5 < time.monotonic() - t0 < 4.5
        # tcp_max_per_source: a third connection from one address is closed at once
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
                t0 = time.monotonic()
                assert third.recv(1) == b""
                assert time.monotonic() - t0 < 0.5
            # tcp_max_connections: 3 in all; a fourth, from yet another address, is closed
            held.append(socket.create_connection(("127.0.0.1", port), 5, ("127.0.0.2", 0)))
            with socket.create_connection(("127.0.0.1", port), 5, ("127.0.0.3", 0)) as fourth:
                t0 = time.monotonic()
                assert fourth.recv(1) == b""
                assert time.monotonic() - t0 < 0.5
        finally:
            for s in held:
                s.close()
        # user_agent_to_trunks: the INVITE a trusted source sends out through the trunk
        # carries the User-Agent header (by default trunks never see it)
        trusted = Peer(port, "127.0.0.5")
        try:
            trusted.request(
                "INVITE", "9123", extra="Content-Type: application/sdp\r\n", body=_sdp()
            )
            gateway.settimeout(10)
            data, node_addr = gateway.recvfrom(65535)
            while not data.startswith(b"INVITE "):
                data, node_addr = gateway.recvfrom(65535)
            assert b"\r\nUser-Agent: callengine\r\n" in data, data
            assert data.startswith(b"INVITE sip:123@127.0.0.6")  # strip: 1
            # the carrier is busy: the call ends (max_calls below counts calls)
            head = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
            echo = [h + (";tag=gw" if h.lower().startswith("to:") else "") for h in head[1:]]
            busy = [h for h in echo if h.split(":")[0].lower() in _ECHO]
            gateway.sendto(
                (
                    "SIP/2.0 486 Busy Here\r\n"
                    + "\r\n".join(busy)
                    + "\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                node_addr,
            )
            reply = trusted.final(10.0)
            assert reply is not None and reply.status == 486, reply
        finally:
            trusted.close()
        # tenant_max_cps: 1 new call per second for tenant cfgt (no limits of its own)
        first, call_id, tag = peer.invite("4243", _sdp())
        assert first is not None and first.status == 200, first
        peer.bye("4243", call_id, tag)
        time.sleep(0.2)
        second, _, _ = peer.invite("4243", _sdp())
        assert second is not None and second.status == 503
        assert second.reason == "Tenant Call Limit Reached"
        time.sleep(1.1)  # the tenant's bucket refills
        # max_calls: 1 + retry_after: 7: a second concurrent call gets 503, Retry-After 7
        held_reply, call_id, tag = peer.invite("4243", _sdp())
        assert held_reply is not None and held_reply.status == 200
        other = Peer(port)
        try:
            reply, _, _ = other.invite("4243", _sdp())
            assert reply is not None and reply.status == 503
            assert reply.reason != "Tenant Call Limit Reached"
            assert reply.headers.get("retry-after", "").split(";")[0].strip() == "7"
        finally:
            other.close()
        # drain_grace: 1 s for the held call after SIGTERM (default 30 s), then BYE
        t0 = time.monotonic()
        node.proc.send_signal(15)
        assert peer.wait_request("BYE", 8.0) is not None
        assert node.proc.wait(10) == 0
        assert time.monotonic() - t0 < 6.0
    finally:
        peer.close()
        gateway.close()
        node.stop(timeout=5)


def _register(peer: Peer, password: str, *, contacts: int = 1) -> Reply | None:
    """REGISTER user 200 of tenant cfgt: challenge, then answer it with ``password``
    (RFC 2617 MD5, qop=auth when offered); the final response to the second request."""
    call_id = secrets.token_hex(8)
    contact = ", ".join(f"<sip:200-{i}@{peer.host}:{peer.lport}>" for i in range(contacts))
    headers = "Expires: 60\r\n"
    peer.request("REGISTER", "200", extra=headers, call_id=call_id, domain="cfgt", contact=contact)
    challenge = peer.final(call_id=call_id)
    if challenge is None or challenge.status != 401:
        return challenge
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.headers["www-authenticate"]))
    uri = "sip:200@cfgt"
    ha1 = _md5(f"200:{params['realm']}:{password}")
    ha2 = _md5(f"REGISTER:{uri}")
    auth = f'Digest username="200", realm="{params["realm"]}", nonce="{params["nonce"]}", '
    auth += f'uri="{uri}", algorithm=MD5, '
    if "qop" in params:
        cnonce = secrets.token_hex(4)
        response = _md5(f"{ha1}:{params['nonce']}:00000001:{cnonce}:auth:{ha2}")
        auth += f'qop=auth, nc=00000001, cnonce="{cnonce}", '
    else:
        response = _md5(f"{ha1}:{params['nonce']}:{ha2}")
    auth += f'response="{response}"'
    if "opaque" in params:
        auth += f', opaque="{params["opaque"]}"'
    peer.request(
        "REGISTER",
        "200",
        extra=f"{headers}Authorization: {auth}\r\n",
        call_id=call_id,
        cseq=2,
        domain="cfgt",
        contact=contact,
    )
    return peer.final(call_id=call_id)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # RFC 2617 digest


def _tcp_options(port: int, lport: int) -> bytes:
    return (
        f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:{lport};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
        "From: <sip:t@127.0.0.1>;tag=t\r\nTo: <sip:ping@127.0.0.1>\r\n"
        f"Call-ID: {secrets.token_hex(8)}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


# -- on_empty: refuse ----------------------------------------------------------------


def test_on_empty_refuse_stops_a_node_without_configuration(tmp_path: Path) -> None:
    """on_empty: refuse, an empty cache and no master: the node exits with the reason
    instead of serving the demo tenant."""
    port = free_port()
    path = tmp_path / "n.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": [f"127.0.0.1:{port}"],
                "data_dir": str(tmp_path / "data"),
                "on_empty": "refuse",
                "metrics": None,
                "admin": None,
            }
        )
    )
    proc = subprocess.run(
        [CALLENGINE, "serve", "--config", str(path)],
        capture_output=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert b"no tenant configuration" in proc.stderr + proc.stdout
