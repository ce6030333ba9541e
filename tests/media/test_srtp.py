"""SRTP/SRTCP transform (media.srtp): two contexts keyed as the two ends of a call."""

from __future__ import annotations

import pytest

from media.rtcp import RtcpReceiverReport, parse_compound, serialize_compound
from media.rtp import RtpPacket
from media.srtp import SUITES, SrtpContext, SrtpError, SrtpSuite, generate_key

AES80 = SUITES["AES_CM_128_HMAC_SHA1_80"]


def _ends(suite: SrtpSuite) -> tuple[SrtpContext, SrtpContext]:
    key_a, key_b = generate_key(suite), generate_key(suite)
    return (
        SrtpContext(suite, tx_key=key_a, rx_key=key_b),
        SrtpContext(suite, tx_key=key_b, rx_key=key_a),
    )


def _rtp(seq: int, payload: bytes = b"\xd5" * 160) -> bytes:
    return RtpPacket(0, False, seq, seq * 160, 0x1234ABCD, payload=payload).serialize()


@pytest.mark.parametrize(
    ("name", "trailer"),
    [
        ("AES_CM_128_HMAC_SHA1_80", 10),
        ("AES_CM_128_HMAC_SHA1_32", 4),
        ("AEAD_AES_128_GCM", 16),
        ("AEAD_AES_256_GCM", 16),
    ],
)
def test_round_trip_encrypts_payload_and_keeps_header(name: str, trailer: int) -> None:
    a, b = _ends(SUITES[name])
    plain = _rtp(7)
    secret = a.protect(plain)
    # RFC 3711 3.1: the header stays readable, the payload is encrypted, a tag follows.
    assert len(secret) == len(plain) + trailer
    assert secret[:12] == plain[:12] and secret[12:172] != plain[12:172]
    assert b.unprotect(secret) == plain
    report = serialize_compound([RtcpReceiverReport(0x1234ABCD, ())])
    assert parse_compound(a.unprotect_rtcp(b.protect_rtcp(report)))[0] == RtcpReceiverReport(
        0x1234ABCD, ()
    )


def test_forged_replayed_and_plain_packets_are_refused() -> None:
    a, b = _ends(AES80)
    secret = a.protect(_rtp(1))
    assert b.unprotect(secret) == _rtp(1)
    with pytest.raises(SrtpError, match="replay check failed"):
        b.unprotect(secret)
    tampered = bytearray(a.protect(_rtp(2)))
    tampered[20] ^= 0x01
    with pytest.raises(SrtpError, match="authentication failure"):
        b.unprotect(bytes(tampered))
    with pytest.raises(SrtpError, match="authentication failure"):
        b.unprotect(_rtp(3))  # plain RTP where SRTP is expected
    with pytest.raises(SrtpError):
        b.unprotect(b"\x80\x00\x01")
    outsider = SrtpContext(AES80, tx_key=generate_key(AES80), rx_key=generate_key(AES80))
    with pytest.raises(SrtpError, match="authentication failure"):
        b.unprotect(outsider.protect(_rtp(4)))
    with pytest.raises(SrtpError, match="SRTCP"):
        b.unprotect_rtcp(b"\x81\xc9\x00\x01" + b"\x00" * 4)
    # The genuine stream goes on after the refused packets.
    assert b.unprotect(a.protect(_rtp(5))) == _rtp(5)
    # Protecting one index twice would reuse keystream: refused on the sending side.
    with pytest.raises(SrtpError, match="replay check failed"):
        a.protect(_rtp(5))


def test_key_length_is_checked_and_rx_rekeys() -> None:
    with pytest.raises(ValueError, match="needs a 30-octet master key and salt, got 31"):
        SrtpContext(AES80, tx_key=b"k" * 31, rx_key=b"k" * 30)
    a, b = _ends(AES80)
    new_a = SrtpContext(AES80, tx_key=generate_key(AES80), rx_key=a.rx_key)
    b.rekey_rx(new_a.tx_key)
    assert b.unprotect(new_a.protect(_rtp(9))) == _rtp(9)
    assert len(generate_key(SUITES["AEAD_AES_256_GCM"])) == 44
