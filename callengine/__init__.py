"""callengine: a SIP/RTP call engine (Engine and Call API, daemon, metrics)."""

from __future__ import annotations

from .call import Call, CallEnded, CallEvent, RecordResult, SipError, TransferResult
from .config import EngineConfig, load_config
from .engine import Engine

__all__ = [
    "Call",
    "CallEnded",
    "CallEvent",
    "Engine",
    "EngineConfig",
    "RecordResult",
    "SipError",
    "TransferResult",
    "load_config",
]
