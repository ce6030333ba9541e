"""Which calls are recorded: the tenant's ``recording``, a user's ``record``, and the API.

The mechanics (both directions, paced by the media clock, stored through the spool) are
in :mod:`media.callrecording` and :meth:`Call.start_recording`; this module only decides
*when* a node starts a recording:

* tenant ``recording.enabled``: every answered call of the tenant, from the 200 OK to
  the hang-up (:class:`RecordingHook`, an engine hook);
* user ``record``: calls bridged to one of the user's phones, from the bridge
  (:func:`record_bridged`, called by the B2BUA);
* a node's outbound route ``record`` (``pri.OutboundRoute.record``): calls the B2BUA
  places out through a trunk by that route, from the carrier's answer (trunk calls from
  a trusted source have no tenant);
* an IVR node's ``record`` option (:mod:`ivr.runner`) and application code
  (``call.start_recording()``) start and stop it themselves.

A call that cannot be recorded (no RTP session: a signalling-only node or a B2BUA
passing SDP through; the spool at its quota) goes on unrecorded, with one log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .call import Call

log = logging.getLogger("callengine.recording")

__all__ = ["RecordingHook", "record_bridged", "start_recording_safely"]


def start_recording_safely(call: Call, why: str) -> str | None:
    """Start recording ``call``; on failure log why and return ``None``."""
    try:
        key = call.start_recording()
    except Exception as exc:  # SipError (no media), SpoolFull, an I/O error
        log.warning("call not recorded (%s): %s", why, exc, extra={"call_id": call.call_id})
        call.log_event("recording", event="failed", error=f"{type(exc).__name__}: {exc}")
        return None
    if getattr(call.recording, "remote", False):
        call.recording.why = why  # for the line logged if the media plane refuses it
    return key


class RecordingHook:
    """Engine hook: a tenant with ``recording.enabled`` has its calls recorded from
    answer. ``tenant_of(id)`` returns the tenant's configuration (or ``None``)."""

    def __init__(self, tenant_of: Callable[[str], Any]) -> None:
        self.tenant_of = tenant_of
        self.started = 0

    def on_call_started(self, call: Call) -> None:
        return None

    def on_call_answered(self, call: Call) -> None:
        if call.tenant is None or call.recording is not None:
            return
        tenant = self.tenant_of(call.tenant)
        policy = getattr(tenant, "recording", None)
        if policy is None or not policy.enabled:
            return
        if start_recording_safely(call, f"tenant {call.tenant}") is not None:
            self.started += 1

    def on_call_ended(self, call: Call) -> None:
        return None


def record_bridged(caller: Call, label: str, tenant: Any) -> None:
    """``caller`` was just bridged to ``label`` (``user:100``...): record the call when
    that user has ``record`` set (the recording's right channel is their voice)."""
    kind, _, name = label.partition(":")
    if kind not in ("user", "ext") or tenant is None or caller.recording is not None:
        return
    user = tenant.users.get(name)
    if user is not None and getattr(user, "record", False):
        start_recording_safely(caller, f"user {name}")
