"""SRTP (SDES, RFC 4568) on TLS legs, against pjsua2 (pjproject 2.15.1, its own libsrtp).

A ``callengine serve`` node with a TLS listener runs the demo IVR; a pjsua2 softphone
(subprocess) calls it over TLS with SRTP mandatory, records what it hears, and dumpcap
captures the node's RTP ports on loopback meanwhile. The softphone must hear the
IVR's prompts (so the node encrypts and pjsua2 decrypts), and the capture must not
carry a single prompt frame in clear G.711. The same SAVP offer over plain UDP gets 488
(keys would have crossed the network in clear), and a TLS softphone offering plain RTP
still gets its call (SRTP is not forced on TLS peers).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from integration.audio import (
    MIN_CORRELATION,
    RATE,
    pcap_rtp,
    prompt_pcm,
    read_wav,
    slip_tolerant_correlation,
)
from integration.support import ROOT, Daemon, free_port, scrape_fresh

from callengine import Call, Engine, EngineConfig
from callengine.sip import sdes
from media.codecs import PCMU
from media.prompts import PromptCache
from media.rtp import RtpPacket
from media.srtp import SUITES, SrtpContext, generate_key

pytestmark = pytest.mark.integration

DaemonFactory = Callable[..., Daemon]


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{name}-cert.pem", tmp / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _rtp_range() -> tuple[int, int]:
    # A small free range of its own, so that the capture sees this node's RTP only.
    for _ in range(50):
        base = free_port() & ~1
        if base + 20 > 65535:
            continue
        try:
            for port in range(base, base + 20):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base, base + 20
    raise RuntimeError("no free RTP range")


def _tls_node(
    tmp: Path, daemon_factory: DaemonFactory, **config: Any
) -> tuple[Daemon, int, Path, tuple[int, int]]:
    cert, key = _self_signed(tmp, "node")
    tls_port = free_port(socket.SOCK_STREAM, both=False)
    rtp = _rtp_range()
    cfg = tmp / "node.json"
    cfg.write_text(
        json.dumps(
            {
                "tls_cert": str(cert),
                "tls_key": str(key),
                "tls_port": tls_port,
                "rtp_port_min": rtp[0],
                "rtp_port_max": rtp[1],
                **config,
            }
        )
    )
    node = daemon_factory("--config", str(cfg), metrics=True)
    return node, tls_port, cert, rtp


def _softphone(spec: dict[str, Any], *, timeout: float = 60.0) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "callengine.softphone", json.dumps(spec)],
        capture_output=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.decode().strip().splitlines()
    assert lines, (
        f"softphone exit {proc.returncode}:\n{proc.stderr.decode(errors='replace')[-3000:]}"
    )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class _Capture:
    """dumpcap on lo for the node's RTP port range (pcap format)."""

    def __init__(self, path: Path, rtp: tuple[int, int]) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [
                "dumpcap",
                "-q",
                "-i",
                "lo",
                "-P",
                "-f",
                f"udp portrange {rtp[0]}-{rtp[1]}",
                "-w",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # dumpcap writes the pcap header once it is capturing.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_size >= 24:
                return
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            time.sleep(0.05)
        raise AssertionError("dumpcap did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)


def test_tls_softphone_with_mandatory_srtp_hears_the_ivr_encrypted(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    node, tls_port, node_cert, rtp = _tls_node(tmp_path, daemon_factory)
    phone_cert, phone_key = _self_signed(tmp_path, "phone")
    heard = tmp_path / "heard.wav"
    capture = _Capture(tmp_path / "rtp.pcap", rtp)
    try:
        result = _softphone(
            {
                "uri": f"sip:demo@127.0.0.1:{tls_port};transport=tls",
                "transport": "tls",
                "srtp": "mandatory",
                "tls_cert": str(phone_cert),
                "tls_key": str(phone_key),
                "tls_ca": str(node_cert),
                "record": str(heard),
                "duration": 4.5,
            }
        )
        metrics = scrape_fresh(node.metrics_port or 0)
    finally:
        capture.stop()
    assert result["answered"] and result["hangup_by"] == "local", result
    assert result["stats"]["rx_packets"] >= 100 and result["stats"]["rx_lost"] == 0, result

    # pjsua2 decrypted the node's SRTP: it heard the IVR's menu prompt (its first 2 s;
    # the menu starts 1.8 s after the answer, after "welcome", so a recorder that pjsua2
    # starts a moment after the answer has all of it). Slip-tolerant (as in
    # test_ivr_demo.py): on a loaded machine pjsua2's adaptive jitter buffer drops or
    # inserts a frame now and then, and a media plane not scheduled for a while resumes
    # the prompt where it was; either shifts the rest of what pjsua2 heard, intact.
    menu = prompt_pcm("menu")[: 2 * RATE]
    ncc, _, slip = slip_tolerant_correlation(read_wav(heard), menu, max_slip=0.5)
    print(f"SRTP node -> pjsua2: menu correlates {ncc:.4f}, worst slip {slip / RATE * 1000:.1f} ms")
    assert ncc >= MIN_CORRELATION, ncc

    # On the wire: SRTP both ways (AES_CM_128_HMAC_SHA1_80: a 10-octet tag after each
    # 160-octet G.711 payload), and no frame of the prompt in clear.
    # (RTCP on the odd ports reads as RTP with the marker set and PT 72-76: left out.)
    packets = [p for p in pcap_rtp(capture.path) if not 72 <= p.payload_type <= 76]
    assert len(packets) >= 200, len(packets)
    sizes = {len(p.payload) for p in packets}
    assert sizes == {170}, sizes
    cache = PromptCache(None)
    prompt_frames = set(cache.payloads("welcome", PCMU)) | set(cache.payloads("menu", PCMU))
    assert len(prompt_frames) > 50
    assert not any(p.payload[:160] in prompt_frames for p in packets)
    print(f"captured {len(packets)} SRTP packets, payload sizes {sorted(sizes)}")

    # The node counted one SRTP session, and no packet failed authentication.
    assert metrics.get("callengine_media_srtp_sessions_total") == 1.0, metrics
    assert metrics.get('callengine_rtp_dropped_packets_total{reason="srtp_failed"}') == 0.0


def test_savp_offer_over_udp_gets_488_and_plain_rtp_over_tls_is_answered(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    node, tls_port, node_cert, _ = _tls_node(tmp_path, daemon_factory)
    # pjsua2 with SRTP mandatory over UDP (secure signalling not required, so that it
    # offers the keys at all): the node refuses to take keys sent in the clear.
    udp = _softphone(
        {
            "uri": f"sip:demo@{node.address}",
            "srtp": "mandatory",
            "srtp_secure_signaling": 0,
            "duration": 1.0,
            "answer_timeout": 5.0,
        }
    )
    assert not udp["answered"] and udp["status"] == 488, udp
    # Over TLS, a phone without SRTP still gets its (plain RTP) call.
    plain = _softphone(
        {
            "uri": f"sip:demo@127.0.0.1:{tls_port};transport=tls",
            "transport": "tls",
            "tls_ca": str(node_cert),
            "duration": 1.0,
        }
    )
    assert plain["answered"] and plain["stats"]["rx_packets"] > 20, plain


def test_outbound_call_over_tls_offers_srtp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Engine calling over TLS offers RTP/SAVP with a=crypto; the far end (a second
    Engine: pjsua2's softphone here only places calls) answers SRTP, and the audio it
    plays arrives decrypted. Both ends are this code base: the interop proof is the
    pjsua2 test above; this one covers the offerer's side (make_offer/accept_answer)."""
    cert, key = _self_signed(tmp_path, "node")
    # The calling engine's TLS client verifies with the default context: trust our CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    frames = PromptCache(None).payloads("welcome", PCMU)

    def engine(name: str) -> tuple[Engine, int]:
        tls_port = free_port(socket.SOCK_STREAM, both=False)
        return (
            Engine(
                EngineConfig(
                    listen=[f"127.0.0.1:{free_port()}"],
                    tls_cert=str(cert),
                    tls_key=str(key),
                    tls_port=tls_port,
                    metrics=None,
                    data_dir=str(tmp_path / name),
                )
            ),
            tls_port,
        )

    async def main() -> tuple[Call, list[Call], list[bytes], bytes]:
        callee, callee_tls = engine("callee")
        caller, _ = engine("caller")
        answered: list[Call] = []
        invite_body: list[bytes] = []

        @callee.on_call()
        async def handler(call: Call) -> None:
            invite_body.append(call.session.invite.body)
            await call.answer()
            answered.append(call)
            await call.play(["welcome"], barge_in=False)
            await call.hangup()

        await callee.start()
        await caller.start()
        try:
            call = await caller.originate(
                f"sip:ivr@127.0.0.1:{callee_tls};transport=tls", transport="TLS", timeout=10
            )
            heard: list[bytes] = []
            call.media.on_audio = heard.append
            await asyncio.wait_for(call.wait_hangup(), 15)
            return call, answered, heard, invite_body[0]
        finally:
            await caller.stop(0)
            await callee.stop(0)

    call, answered, heard, offer = asyncio.run(main())
    text = offer.decode()
    assert "RTP/SAVP" in text and "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in text, text
    assert "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:" in text, text
    assert call.srtp is not None and answered[0].srtp is not None
    # Each side protects with its own key and unprotects with the other's.
    assert call.srtp.local.key == answered[0].srtp.remote.key
    assert call.srtp.remote.key == answered[0].srtp.local.key
    assert call.quality["srtp_failed"] == 0 and call.quality["packets_received"] > 80
    # The prompt arrived decrypted, in order.
    assert b"".join(frames) in b"".join(heard)


def _sip(method: str, port: int, local: str, cseq: int, body: str = "", to_tag: str = "") -> bytes:
    to = f"<sip:ivr@127.0.0.1:{port}>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:ivr@127.0.0.1:{port};transport=tls SIP/2.0",
        f"Via: SIP/2.0/TLS {local};branch=z9hG4bK-srtp{cseq}{method.lower()};rport",
        "Max-Forwards: 70",
        "From: <sip:phone@example.com>;tag=p1",
        f"To: {to}",
        "Call-ID: srtp-reinvite@example.com",
        f"CSeq: {cseq} {'INVITE' if method == 'ACK' else method}",
        f"Contact: <sip:phone@{local};transport=tls>",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def _savp_offer(version: int, rtp_port: int, crypto: str | None) -> str:
    proto = "RTP/SAVP" if crypto else "RTP/AVP"
    return (
        f"v=0\r\no=phone 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
        f"t=0 0\r\nm=audio {rtp_port} {proto} 0\r\n" + (f"a=crypto:{crypto}\r\n" if crypto else "")
    )


def test_tls_offer_answer_and_reinvites_keep_srtp(tmp_path: Path) -> None:
    """A raw TLS phone: INVITE with RTP/SAVP, SRTP both ways with the answered keys; a
    re-INVITE with a new key re-keys what the node receives (our key stays); a
    re-INVITE offering plain RTP gets 488 (a secured call never falls back to clear)."""
    cert, key = _self_signed(tmp_path, "node")
    suite = SUITES["AES_CM_128_HMAC_SHA1_80"]
    key1, key2 = generate_key(suite), generate_key(suite)

    def crypto(k: bytes) -> str:
        return sdes.CryptoAttribute(1, suite.name, k).serialize()

    async def read(reader: asyncio.StreamReader) -> str:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        return (head + await reader.readexactly(length)).decode()

    async def final(reader: asyncio.StreamReader) -> str:
        while (reply := await read(reader)).startswith("SIP/2.0 1"):
            pass
        return reply

    async def main() -> None:
        tls_port = free_port(socket.SOCK_STREAM, both=False)
        engine = Engine(
            EngineConfig(
                listen=[f"127.0.0.1:{free_port()}"],
                tls_cert=str(cert),
                tls_key=str(key),
                tls_port=tls_port,
                metrics=None,
                data_dir=str(tmp_path / "data"),
            )
        )
        calls: list[Call] = []

        @engine.on_call()
        async def handler(call: Call) -> None:
            calls.append(call)
            await call.answer()
            await call.wait_hangup()

        await engine.start()
        loop = asyncio.get_running_loop()
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind(("127.0.0.1", 0))
        rtp.setblocking(False)
        try:
            ctx = ssl.create_default_context(cafile=str(cert))
            reader, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=ctx)
            local = f"127.0.0.1:{writer.get_extra_info('sockname')[1]}"
            offer = _savp_offer(1, rtp.getsockname()[1], crypto(key1))
            writer.write(_sip("INVITE", tls_port, local, 1, offer))
            ok = await final(reader)
            assert ok.startswith("SIP/2.0 200"), ok
            to_tag = re.search(r"^To: .*;tag=([^;\r\n]+)", ok, re.M).group(1)  # type: ignore[union-attr]
            writer.write(_sip("ACK", tls_port, local, 1, to_tag=to_tag))
            assert "m=audio " in ok and " RTP/SAVP 0" in ok, ok
            node_port = int(re.search(r"m=audio (\d+)", ok).group(1))  # type: ignore[union-attr]
            answered = sdes.parse_crypto(re.search(r"a=crypto:(.*)\r\n", ok).group(1))  # type: ignore[union-attr]
            assert answered.tag == 1 and answered.suite == suite.name and answered.usable
            phone = SrtpContext(suite, tx_key=key1, rx_key=answered.key)

            # The node's idle silence arrives as SRTP we can decrypt with its key.
            data = await asyncio.wait_for(loop.sock_recv(rtp, 2048), 5)
            assert RtpPacket.parse(phone.unprotect(data)).payload == b"\xff" * 160

            async def talk(ctx: SrtpContext, first: int, count: int) -> None:
                for seq in range(first, first + count):
                    packet = RtpPacket(0, False, seq, seq * 160, 0x5EC, payload=b"\x7f" * 160)
                    rtp.sendto(ctx.protect(packet.serialize()), ("127.0.0.1", node_port))
                media = calls[0].media
                while media.quality()["packets_received"] + media.quality()["srtp_failed"] < (
                    first + count - 1
                ):
                    await asyncio.sleep(0.01)

            await talk(phone, 1, 20)
            quality = calls[0].media.quality()
            assert quality["packets_received"] == 20 and quality["srtp_failed"] == 0, quality

            # re-INVITE with a new key: the node answers with its same key, and decrypts
            # with the new one.
            writer.write(
                _sip(
                    "INVITE",
                    tls_port,
                    local,
                    2,
                    _savp_offer(2, rtp.getsockname()[1], crypto(key2)),
                    to_tag,
                )
            )
            ok2 = await final(reader)
            writer.write(_sip("ACK", tls_port, local, 2, to_tag=to_tag))
            assert ok2.startswith("SIP/2.0 200"), ok2
            again = sdes.parse_crypto(re.search(r"a=crypto:(.*)\r\n", ok2).group(1))  # type: ignore[union-attr]
            assert again.key == answered.key
            phone2 = SrtpContext(suite, tx_key=key2, rx_key=answered.key)
            await talk(phone2, 21, 20)
            quality = calls[0].media.quality()
            assert quality["packets_received"] == 40 and quality["srtp_failed"] == 0, quality
            # The old key is no longer accepted.
            await talk(phone, 41, 5)
            assert calls[0].media.quality()["srtp_failed"] == 5

            # A re-INVITE that drops SRTP: 488, the call stays secured.
            writer.write(
                _sip(
                    "INVITE", tls_port, local, 3, _savp_offer(3, rtp.getsockname()[1], None), to_tag
                )
            )
            refused = await final(reader)
            assert refused.startswith("SIP/2.0 488"), refused
            writer.write(_sip("ACK", tls_port, local, 3, to_tag=to_tag))
            assert calls[0].active and calls[0].media.srtp is not None
            writer.write(_sip("BYE", tls_port, local, 4, to_tag=to_tag))
            assert (await read(reader)).startswith("SIP/2.0 200")
            writer.close()
        finally:
            rtp.close()
            await engine.stop(0)

    asyncio.run(main())
