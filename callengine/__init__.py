"""callengine: a SIP/RTP call engine (Engine and Call API, daemon, metrics).

The names below are loaded on first use (PEP 562), so that a process that needs one
part (the media plane, the CLI's lighter commands) does not import the whole engine."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_WHERE = {
    "Call": ".call",
    "CallEnded": ".call",
    "CallEvent": ".call",
    "RecordResult": ".call",
    "SipError": ".call",
    "TransferResult": ".call",
    "EngineConfig": ".config",
    "load_config": ".config",
    "Engine": ".engine",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'callengine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
