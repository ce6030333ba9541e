"""TLS and IPv6 transports of a real Engine on loopback (RFC 3261 §18, §26.2)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from integration.support import free_port

from callengine import Call, Engine, EngineConfig


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _request(
    method: str, transport: str, host: str, port: int, local: str, *, cseq: int = 1, body: str = ""
) -> bytes:
    lines = [
        f"{method} sip:service@{host}:{port};transport={transport.lower()} SIP/2.0",
        f"Via: SIP/2.0/{transport} {local};branch=z9hG4bK-t{cseq}{method.lower()};rport",
        "Max-Forwards: 70",
        "From: <sip:tester@example.com>;tag=t1",
        f"To: <sip:service@{host}>",
        "Call-ID: tls-test-1@example.com",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:tester@127.0.0.1:5999;transport=tls>",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length) if length else b""
    return head + body


def test_tls_options_and_call(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    udp_port = free_port()
    tls_port = free_port(socket.SOCK_STREAM, both=False)

    async def main() -> list[bytes]:
        engine = Engine(
            EngineConfig(
                listen=[f"127.0.0.1:{udp_port}"],
                tls_cert=str(cert),
                tls_key=str(key),
                tls_port=tls_port,
                metrics=None,
                data_dir=str(tmp_path / "data"),
                media=False,
            )
        )
        answered: list[str] = []

        @engine.on_call()
        async def handler(call: Call) -> None:
            answered.append(call.caller)
            await call.answer()
            await call.wait_hangup()

        await engine.start()
        try:
            assert ("TLS", "127.0.0.1", tls_port) in engine.bound
            ctx = ssl.create_default_context(cafile=str(cert))
            reader, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=ctx)
            local = f"127.0.0.1:{writer.get_extra_info('sockname')[1]}"
            writer.write(_request("OPTIONS", "TLS", "127.0.0.1", tls_port, local))
            options = await _read_response(reader)
            writer.write(_request("INVITE", "TLS", "127.0.0.1", tls_port, local, cseq=2, body=SDP))
            trying = await _read_response(reader)
            ok = await _read_response(reader)
            writer.close()
            assert answered == ["tester"]
            return [options, trying, ok]
        finally:
            await engine.stop(0)

    options, trying, ok = asyncio.run(main())
    assert options.startswith(b"SIP/2.0 200 OK\r\n")
    assert b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER" in options
    assert trying.startswith(b"SIP/2.0 100 Trying")
    assert ok.startswith(b"SIP/2.0 200 OK")
    # the Contact of our 200 names the transport the dialog uses
    assert b";transport=tls>" in ok
    assert b"m=audio 9 RTP/AVP 0" in ok  # media off: the discard port, and PCMU kept


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this host has no IPv6 loopback (::1)")
def test_ipv6_udp_and_tcp(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]

    async def main() -> tuple[bytes, bytes]:
        engine = Engine(
            EngineConfig(
                listen=[f"[::1]:{port}"], metrics=None, data_dir=str(tmp_path), media=False
            )
        )
        await engine.start()
        try:
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.bind(("::1", 0))
            sock.setblocking(False)
            local = f"[::1]:{sock.getsockname()[1]}"
            await loop.sock_sendto(
                sock, _request("OPTIONS", "UDP", "[::1]", port, local), ("::1", port)
            )
            udp = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
            sock.close()
            reader, writer = await asyncio.open_connection("::1", port)
            local = f"[::1]:{writer.get_extra_info('sockname')[1]}"
            writer.write(_request("OPTIONS", "TCP", "[::1]", port, local, cseq=2))
            tcp = await _read_response(reader)
            writer.close()
            return udp, tcp
        finally:
            await engine.stop(0)

    udp, tcp = asyncio.run(main())
    assert udp.startswith(b"SIP/2.0 200 OK")
    assert b"Via: SIP/2.0/UDP [::1]:" in udp and b";rport=" in udp
    assert tcp.startswith(b"SIP/2.0 200 OK")
