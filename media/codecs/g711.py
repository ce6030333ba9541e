"""G.711 PCMU (mu-law) and PCMA (A-law) via numpy lookup tables.

The tables are computed once, vectorised, from the ITU-T G.711 segment rules
(the same arithmetic as the reference Sun/CCITT ``g711.c``). Encoding indexes a
65536-entry table with the int16 sample viewed as uint16; decoding indexes a
256-entry table with the payload bytes. No per-sample Python loops.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .base import Codec, CodecInfo, Pcm

__all__ = [
    "ALAW_TO_ULAW",
    "PCMA",
    "PCMU",
    "ULAW_TO_ALAW",
    "PcmaCodec",
    "PcmuCodec",
    "alaw_decode",
    "alaw_encode",
    "alaw_to_ulaw",
    "ulaw_decode",
    "ulaw_encode",
    "ulaw_to_alaw",
]

# RFC 3551 table 4: static payload types.
PCMU = CodecInfo("PCMU", 0, 8000, 8000)
PCMA = CodecInfo("PCMA", 8, 8000, 8000)

# Segment end points in the 14-bit (mu-law) and 13-bit (A-law) magnitude domains.
_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _segment(values: npt.NDArray[np.int32], ends: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    # Index of the first segment end >= value (8 when above all of them).
    return np.searchsorted(ends, values, side="left").astype(np.int32)


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit magnitude domain
    bias = 0x21
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.where(pcm < 0, -pcm, pcm)
    mag = np.minimum(mag, 8159) + bias
    seg = _segment(mag, _SEG_UEND)
    seg_c = np.minimum(seg, 7)
    uval = (seg_c << 4) | ((mag >> (seg_c + 1)) & 0xF)
    uval = np.where(seg >= 8, 0x7F, uval)
    codes = (uval ^ mask).astype(np.uint8)
    # Reorder so the table is indexed by the int16 viewed as uint16.
    return np.roll(codes, -32768)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit domain
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = _segment(mag, _SEG_AEND)
    seg_c = np.minimum(seg, 7)
    aval = seg_c << 4
    aval = np.where(seg_c < 2, aval | ((mag >> 1) & 0xF), aval | ((mag >> seg_c) & 0xF))
    aval = np.where(seg >= 8, 0x7F, aval)
    codes = (aval ^ mask).astype(np.uint8)
    return np.roll(codes, -32768)


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << (seg - 1)))
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ULAW_ENC = _ulaw_encode_table()
_ALAW_ENC = _alaw_encode_table()
_ULAW_DEC = _ulaw_decode_table()
_ALAW_DEC = _alaw_decode_table()

ULAW_TO_ALAW: npt.NDArray[np.uint8] = _ALAW_ENC[_ULAW_DEC.view(np.uint16)]
"""256-entry table: PCMU code -> PCMA code (for a relay that transcodes)."""
ALAW_TO_ULAW: npt.NDArray[np.uint8] = _ULAW_ENC[_ALAW_DEC.view(np.uint16)]
"""256-entry table: PCMA code -> PCMU code."""

for _table in (_ULAW_ENC, _ALAW_ENC, _ULAW_DEC, _ALAW_DEC, ULAW_TO_ALAW, ALAW_TO_ULAW):
    _table.flags.writeable = False


def ulaw_encode(pcm: Pcm) -> bytes:
    """int16 samples -> PCMU bytes."""
    return _ULAW_ENC[np.asarray(pcm, dtype=np.int16).view(np.uint16)].tobytes()


def alaw_encode(pcm: Pcm) -> bytes:
    """int16 samples -> PCMA bytes."""
    return _ALAW_ENC[np.asarray(pcm, dtype=np.int16).view(np.uint16)].tobytes()


def ulaw_decode(data: bytes) -> Pcm:
    """PCMU bytes -> int16 samples."""
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)]


def alaw_decode(data: bytes) -> Pcm:
    """PCMA bytes -> int16 samples."""
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)]


def ulaw_to_alaw(data: bytes) -> bytes:
    """Transcode a PCMU payload to PCMA with one table lookup per byte (vectorised)."""
    return ULAW_TO_ALAW[np.frombuffer(data, dtype=np.uint8)].tobytes()


def alaw_to_ulaw(data: bytes) -> bytes:
    """Transcode a PCMA payload to PCMU."""
    return ALAW_TO_ULAW[np.frombuffer(data, dtype=np.uint8)].tobytes()


class PcmuCodec(Codec):
    """G.711 mu-law (stateless: one instance may serve every stream)."""

    def __init__(self, info: CodecInfo = PCMU) -> None:
        self.info = info

    def encode(self, pcm: Pcm) -> bytes:
        return ulaw_encode(pcm)

    def decode(self, payload: bytes) -> Pcm:
        return ulaw_decode(payload)

    def encode_frames(self, pcm: Pcm) -> list[bytes]:
        data = ulaw_encode(pcm)
        n = self.info.samples_per_frame
        data += b"\xff" * (-len(data) % n)
        return [data[i : i + n] for i in range(0, len(data), n)]


class PcmaCodec(Codec):
    """G.711 A-law (stateless)."""

    def __init__(self, info: CodecInfo = PCMA) -> None:
        self.info = info

    def encode(self, pcm: Pcm) -> bytes:
        return alaw_encode(pcm)

    def decode(self, payload: bytes) -> Pcm:
        return alaw_decode(payload)

    def encode_frames(self, pcm: Pcm) -> list[bytes]:
        data = alaw_encode(pcm)
        n = self.info.samples_per_frame
        data += b"\xd5" * (-len(data) % n)
        return [data[i : i + n] for i in range(0, len(data), n)]
