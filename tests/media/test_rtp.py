from __future__ import annotations

import struct

import pytest

from media.rtp import RtpPacket, pack_header_into

# A PCMU packet: V=2, PT=0, marker, seq 0x1234, ts 0x01020304, SSRC 0xdeadbeef.
SIMPLE = bytes.fromhex("8080123401020304deadbeef") + b"\xff" * 160


def test_parse_simple_packet() -> None:
    p = RtpPacket.parse(SIMPLE)
    assert (p.payload_type, p.marker, p.sequence_number, p.timestamp, p.ssrc) == (
        0,
        True,
        0x1234,
        0x01020304,
        0xDEADBEEF,
    )
    assert p.payload == b"\xff" * 160
    assert p.csrc == () and p.extension_profile is None and p.padding_size == 0
    assert p.serialize() == SIMPLE
    assert bytes(p) == SIMPLE


def test_parse_csrc_extension_padding_round_trip() -> None:
    data = (
        bytes([0x80 | 0x20 | 0x10 | 2, 101])
        + struct.pack("!HII", 7, 160, 42)
        + struct.pack("!II", 1, 2)
        + struct.pack("!HH", 0xBEDE, 1)
        + b"\x10\xaa\x00\x00"
        + b"\x05\x0a\x00\xa0"
        + b"\x00\x00\x03"
    )
    p = RtpPacket.parse(data)
    assert p.csrc == (1, 2)
    assert p.extension_profile == 0xBEDE
    assert p.extension == b"\x10\xaa\x00\x00"
    assert p.payload == b"\x05\x0a\x00\xa0"
    assert p.padding_size == 3
    assert p.payload_type == 101 and not p.marker
    assert p.serialize() == data


def test_parse_accepts_memoryview() -> None:
    assert RtpPacket.parse(memoryview(SIMPLE)).payload == b"\xff" * 160


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x00\x00", "RTP packet length 3 is less than 12 bytes"),
        (b"\x40" + SIMPLE[1:], "RTP packet has invalid version 1"),
        (b"\x83" + SIMPLE[1:12] + b"\x00" * 8, "RTP CSRC count 3 exceeds packet length 20"),
        (b"\x90" + SIMPLE[1:12] + b"\xbe\xde", "RTP extension header exceeds packet length"),
        (
            b"\x90" + SIMPLE[1:12] + b"\xbe\xde\x00\x02" + b"\x00" * 4,
            "RTP extension length 8 exceeds packet length 20",
        ),
        (
            b"\xa0" + SIMPLE[1:12] + b"\x01\x02\x09",
            "RTP padding length 9 is invalid for 3 bytes of payload",
        ),
        (
            b"\xa0" + SIMPLE[1:12] + b"\x01\x00",
            "RTP padding length 0 is invalid for 2 bytes of payload",
        ),
    ],
)
def test_malformed_packets_raise_precise_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as info:
        RtpPacket.parse(data)
    assert str(info.value) == message


def test_pack_header_into_matches_serialize_and_wraps() -> None:
    buf = bytearray(20)
    pack_header_into(buf, 4, 8, True, 0x1FFFF, 0x1_0000_0005, 0xCAFEBABE)
    expected = RtpPacket(8, True, 0xFFFF, 5, 0xCAFEBABE).serialize()
    assert bytes(buf[4:16]) == expected
    assert buf[:4] == b"\x00" * 4 and buf[16:] == b"\x00" * 4


def test_serialize_rejects_bad_extension_length() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        RtpPacket(extension_profile=1, extension=b"abc").serialize()
