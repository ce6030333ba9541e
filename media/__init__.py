"""media: RTP/RTCP, codecs, DTMF, jitter buffer, tones, prompts, recorder,
media storage, the per-call stream core and the asyncio media session.

Only :mod:`media.codecs` imports aiortc, only :mod:`media.prompts` and
:mod:`media.recorder` import soundfile, and only :mod:`media.srtp` imports pylibsrtp.
"""

from __future__ import annotations

from .clock import TickSchedule
from .codecs import (
    CODECS,
    G722,
    OPUS,
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    Codec,
    CodecInfo,
    create_codec,
    get_codec_info,
)
from .dtmf import (
    DtmfEvent,
    DtmfPacket,
    DtmfReceiver,
    DtmfSender,
    InbandDtmfDetector,
    parse_dtmf_info,
)
from .jitterbuffer import RecordingJitterBuffer
from .portpool import PoolCore, PortPair, PortPool
from .prompts import BUNDLED_PROMPTS_DIR, PromptCache, PromptNotFound
from .recorder import Recorder, RecordingResult
from .rtcp import (
    ReceptionStats,
    ReportBlock,
    RtcpBye,
    RtcpPacket,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    parse_compound,
    serialize_compound,
)
from .rtp import RtpPacket, pack_header_into
from .session import DEFAULT_PORT_RANGE, MediaClock, RtpSession
from .storage import KINDS, LocalMediaStorage, MediaStorage, validate_key
from .stream import RtpStream, StreamCounters
from .tones import ToneSpec, render_tone, tone_spec

__all__ = [
    "BUNDLED_PROMPTS_DIR",
    "CODECS",
    "DEFAULT_PORT_RANGE",
    "G722",
    "KINDS",
    "OPUS",
    "PCMA",
    "PCMU",
    "TELEPHONE_EVENT",
    "Codec",
    "CodecInfo",
    "DtmfEvent",
    "DtmfPacket",
    "DtmfReceiver",
    "DtmfSender",
    "InbandDtmfDetector",
    "LocalMediaStorage",
    "MediaClock",
    "MediaStorage",
    "PoolCore",
    "PortPair",
    "PortPool",
    "PromptCache",
    "PromptNotFound",
    "ReceptionStats",
    "Recorder",
    "RecordingJitterBuffer",
    "RecordingResult",
    "ReportBlock",
    "RtcpBye",
    "RtcpPacket",
    "RtcpReceiverReport",
    "RtcpSdes",
    "RtcpSenderReport",
    "RtpPacket",
    "RtpSession",
    "RtpStream",
    "StreamCounters",
    "TickSchedule",
    "ToneSpec",
    "create_codec",
    "get_codec_info",
    "pack_header_into",
    "parse_compound",
    "parse_dtmf_info",
    "render_tone",
    "serialize_compound",
    "tone_spec",
    "validate_key",
]
