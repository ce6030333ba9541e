"""What the engine reads of a WebRTC description without loading aiortc.

A signalling process whose media is in the media plane (callengine/mediaplane.py)
decides from the SDP alone whether an offer is a browser's, and whether a browser's
answer to our offer carries one of our codecs; the plane, which holds the aiortc
session (:mod:`media.webrtc`), does the rest. Pure functions of bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .codecs import CodecInfo

__all__ = ["WEBRTC_CODECS", "first_codec", "is_webrtc_sdp", "webrtc_answer_codec"]

WEBRTC_CODECS = ("OPUS", "PCMU", "PCMA")
"""Engine codecs a WebRTC leg can carry (RFC 7874: Opus and G.711 are the browsers'
mandatory audio codecs)."""

_M_LINE = re.compile(rb"^m=audio \d+ (\S+) ([0-9 ]+)", re.MULTILINE)
_RTPMAP = re.compile(rb"^a=rtpmap:(\d+) ([^/\s]+)/", re.MULTILINE)


def is_webrtc_sdp(body: bytes) -> bool:
    """True for a WebRTC audio description: a DTLS-SRTP profile (``UDP/TLS/RTP/SAVPF``)
    with a certificate fingerprint (RFC 8842), the offers only aiortc can answer."""
    if b"a=fingerprint:" not in body:
        return False
    match = _M_LINE.search(body)
    return match is not None and b"TLS" in match.group(1).upper()


def first_codec(body: bytes, codecs: Sequence[CodecInfo]) -> CodecInfo | None:
    """The codec an answer (or an answerer's description) sends first, as one of ours."""
    match = _M_LINE.search(body)
    if match is None:
        return None
    names = {0: "PCMU", 8: "PCMA"}  # static payload types may come without rtpmap
    names.update((int(pt), name.decode().upper()) for pt, name in _RTPMAP.findall(body))
    for pt in (int(p) for p in match.group(2).split()):
        name = names.get(pt, "")
        for codec in codecs:
            if codec.name.upper() == name:
                return codec.with_payload_type(pt)
    return None


def webrtc_answer_codec(body: bytes, codecs: Sequence[CodecInfo]) -> CodecInfo | None:
    """The codec of a browser's answer to our WebRTC offer (made with ``codecs``), or
    None when it is not a WebRTC answer with one of our WebRTC codecs."""
    if not is_webrtc_sdp(body):
        return None
    return first_codec(body, [c for c in codecs if c.name.upper() in WEBRTC_CODECS])
