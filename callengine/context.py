"""The call a piece of work belongs to, for log records (``call_id``) and recordings'
metadata: a context variable each call's tasks set. Its own module, so that a process
that needs only this (the media plane) does not import the engine."""

from __future__ import annotations

import contextvars

current_call_id: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="-")

__all__ = ["current_call_id"]
