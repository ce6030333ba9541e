"""Audio codecs and their registry.

Every codec encodes and decodes 20 ms frames of mono int16 PCM. G.711 uses
numpy lookup tables (:mod:`media.codecs.g711`); G.722 and Opus come from
aiortc's codec classes (loaded on first use).
"""

from __future__ import annotations

from .base import Codec, CodecInfo, Pcm
from .g711 import (
    ALAW_TO_ULAW,
    PCMA,
    PCMU,
    ULAW_TO_ALAW,
    PcmaCodec,
    PcmuCodec,
    alaw_decode,
    alaw_encode,
    alaw_to_ulaw,
    ulaw_decode,
    ulaw_encode,
    ulaw_to_alaw,
)

__all__ = [
    "ALAW_TO_ULAW",
    "CODECS",
    "G722",
    "OPUS",
    "PCMA",
    "PCMU",
    "TELEPHONE_EVENT",
    "ULAW_TO_ALAW",
    "Codec",
    "CodecInfo",
    "Pcm",
    "PcmaCodec",
    "PcmuCodec",
    "alaw_decode",
    "alaw_encode",
    "alaw_to_ulaw",
    "create_codec",
    "get_codec_info",
    "ulaw_decode",
    "ulaw_encode",
    "ulaw_to_alaw",
]

# RFC 3551 table 4 (static PT 9); RFC 7587 (dynamic PT, default 111 here).
G722 = CodecInfo("G722", 9, 8000, 16000)
OPUS = CodecInfo("opus", 111, 48000, 48000, channels=2, fmtp="minptime=10;useinbandfec=1")
# RFC 4733: telephone-event, dynamic PT (101 by convention), events 0-16.
TELEPHONE_EVENT = CodecInfo("telephone-event", 101, 8000, 8000, fmtp="0-16")

CODECS: dict[str, CodecInfo] = {
    "PCMU": PCMU,
    "PCMA": PCMA,
    "G722": G722,
    "OPUS": OPUS,
    "TELEPHONE-EVENT": TELEPHONE_EVENT,
}
"""Known codecs by upper-case name, with their default payload types."""


def get_codec_info(name: str) -> CodecInfo:
    """Look a codec up by name (case-insensitive); ``KeyError`` names it if unknown."""
    try:
        return CODECS[name.upper()]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; known: {', '.join(CODECS)}") from None


_PCMU = PcmuCodec()
_PCMA = PcmaCodec()


def create_codec(info: CodecInfo | str) -> Codec:
    """Return a codec instance for ``info`` (G.711 instances are shared: stateless)."""
    if isinstance(info, str):
        info = get_codec_info(info)
    name = info.name.upper()
    if name == "PCMU":
        return _PCMU if info.payload_type == _PCMU.info.payload_type else PcmuCodec(info)
    if name == "PCMA":
        return _PCMA if info.payload_type == _PCMA.info.payload_type else PcmaCodec(info)
    if name == "G722":
        from ._aiortc import G722Codec

        return G722Codec(info)
    if name == "OPUS":
        from ._aiortc import OpusCodec

        return OpusCodec(info)
    raise ValueError(f"codec {info.name!r} has no encoder/decoder")
