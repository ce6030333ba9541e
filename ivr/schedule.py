"""Evaluate a ``time_condition`` node at an instant (pure; the caller supplies ``now``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from .flow import TimeConditionNode

__all__ = ["ScheduleDecision", "evaluate"]


@dataclass(frozen=True, slots=True)
class ScheduleDecision:
    """Whether a time condition is open, and the local time it was decided at."""

    is_open: bool
    local: datetime
    holiday: bool


def evaluate(node: TimeConditionNode, now: float) -> ScheduleDecision:
    """Decide ``node`` at ``now`` (seconds since the epoch, UTC).

    The instant is converted to the node's zone with :mod:`zoneinfo`, so the
    local wall-clock time is right on both sides of a DST change: 13:30 UTC is
    08:30 in New York on 2026-03-07 (EST) and 09:30 on 2026-03-08 (EDT).
    """
    local = datetime.fromtimestamp(now, UTC).astimezone(ZoneInfo(node.timezone))
    if local.date() in node.holidays:
        return ScheduleDecision(is_open=False, local=local, holiday=True)
    minute = local.hour * 60 + local.minute
    ranges = node.schedule.get(local.weekday(), ())
    is_open = any(start <= minute < end for start, end in ranges)
    return ScheduleDecision(is_open=is_open, local=local, holiday=False)
