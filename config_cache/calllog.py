"""The call log record: one per answered call, keyed by the SIP Call-ID."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["CallLog"]


@dataclass(slots=True)
class CallLog:
    """What the History DB keeps about a call. The call fills it in as it goes
    and hands it to :meth:`Outbox.open_call` (at answer) and
    :meth:`Outbox.close_call` (at the end). Times are Unix seconds."""

    #: SIP Call-ID; the History DB document ``_id``.
    call_id: str
    tenant: str | None = None
    #: From user part (number or extension).
    caller: str = ""
    #: Request-URI user part (dialled number).
    callee: str = ""
    #: The tenant number (DID) the call arrived on, if any.
    did: str | None = None
    direction: str = "inbound"
    start_time: float = 0.0
    answer_time: float | None = None
    end_time: float | None = None
    #: ``answered``, ``completed``, ``no_answer``, ``busy``, ``failed``,
    #: ``rejected``, ``voicemail`` or ``interrupted`` (node died mid-call).
    result: str = ""
    #: Final SIP status of the call (e.g. 200, 486).
    sip_status: int | None = None
    #: Q.850 cause of the release (16 = normal clearing).
    q850_cause: int | None = None
    #: IVR events in order (``Call.log_event`` entries: ``{"kind": ..., ...}``).
    ivr_path: list[dict[str, Any]] = field(default_factory=list)
    #: DTMF digits collected, in order.
    digits: str = ""
    #: One entry per outbound attempt: trunk, span, channel, status, cause, times.
    trunk_attempts: list[dict[str, Any]] = field(default_factory=list)
    recording_key: str | None = None
    voicemail_key: str | None = None
    #: RTP quality summary (packets, lost, jitter_ms, ...).
    rtp_quality: dict[str, Any] = field(default_factory=dict)
    #: The call server that handled the call.
    node_id: str = ""
    #: True when the node stopped (crash, kill -9) before the call ended.
    interrupted: bool = False
    #: Anything else; unknown fields read back from storage land here.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (``extra`` stays nested)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = [dict(v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallLog:
        """Inverse of :meth:`to_dict`; unknown keys go to ``extra``."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = dict(kwargs.pop("extra", None) or {})
        extra.update({k: v for k, v in data.items() if k not in known and k != "_id"})
        if "call_id" not in kwargs:
            raise ValueError("call log without call_id")
        return cls(**kwargs, extra=extra)
