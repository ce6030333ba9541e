"""Time conditions at fixed instants, across DST changes and holidays."""

from __future__ import annotations

from datetime import UTC, date, datetime
from types import MappingProxyType

import pytest

from ivr import TimeConditionNode
from ivr.schedule import evaluate

NINE_TO_FIVE = MappingProxyType({day: ((540, 1020),) for day in range(7)})


def node(zone: str, *, holidays: frozenset[date] = frozenset()) -> TimeConditionNode:
    return TimeConditionNode(
        id="hours", timezone=zone, schedule=NINE_TO_FIVE, open="o", closed="c", holidays=holidays
    )


def at(year: int, month: int, day: int, hour: int, minute: int) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("instant", "local", "is_open"),
    [
        # 2026-03-08: New York springs forward at 02:00 EST -> 03:00 EDT.
        (at(2026, 3, 7, 13, 30), "2026-03-07T08:30:00-05:00", False),
        (at(2026, 3, 8, 13, 30), "2026-03-08T09:30:00-04:00", True),
        (at(2026, 3, 8, 21, 30), "2026-03-08T17:30:00-04:00", False),
        (at(2026, 3, 7, 21, 30), "2026-03-07T16:30:00-05:00", True),
        # 2026-11-01: New York falls back at 02:00 EDT -> 01:00 EST.
        (at(2026, 10, 31, 13, 30), "2026-10-31T09:30:00-04:00", True),
        (at(2026, 11, 1, 13, 30), "2026-11-01T08:30:00-05:00", False),
        (at(2026, 11, 1, 21, 30), "2026-11-01T16:30:00-05:00", True),
        (at(2026, 10, 31, 21, 30), "2026-10-31T17:30:00-04:00", False),
    ],
)
def test_new_york_dst(instant: float, local: str, is_open: bool) -> None:
    decision = evaluate(node("America/New_York"), instant)
    assert decision.local.isoformat() == local
    assert decision.is_open is is_open
    assert decision.holiday is False


def test_repeated_hour_after_fall_back_is_open_both_times() -> None:
    late = TimeConditionNode(
        id="h",
        timezone="America/New_York",
        schedule=MappingProxyType({6: ((60, 120),)}),  # Sunday 01:00-02:00
        open="o",
        closed="c",
    )
    first = evaluate(late, at(2026, 11, 1, 5, 30))  # 01:30 EDT
    second = evaluate(late, at(2026, 11, 1, 6, 30))  # 01:30 EST
    assert (first.local.utcoffset(), second.local.utcoffset()) != (None, None)
    assert first.local.utcoffset() != second.local.utcoffset()
    assert first.is_open and second.is_open
    assert not evaluate(late, at(2026, 11, 1, 7, 30)).is_open  # 02:30 EST


def test_holiday_is_closed_all_day_in_local_date() -> None:
    christmas = node("America/New_York", holidays=frozenset({date(2026, 12, 25)}))
    noon = evaluate(christmas, at(2026, 12, 25, 17, 0))
    assert (noon.is_open, noon.holiday) == (False, True)
    # 03:00 UTC on the 26th is still the 25th (22:00) in New York.
    assert evaluate(christmas, at(2026, 12, 26, 3, 0)).holiday is True
    # 14:00 UTC on the 26th is 09:00 on the 26th: open again.
    assert evaluate(christmas, at(2026, 12, 26, 14, 0)).is_open is True


def test_range_end_is_exclusive_and_24_00_reaches_midnight() -> None:
    late = TimeConditionNode(
        id="h",
        timezone="UTC",
        schedule=MappingProxyType({0: ((1020, 1440),)}),  # Monday 17:00-24:00
        open="o",
        closed="c",
    )
    assert not evaluate(late, at(2026, 3, 2, 16, 59)).is_open
    assert evaluate(late, at(2026, 3, 2, 17, 0)).is_open
    assert evaluate(late, at(2026, 3, 2, 23, 59)).is_open
    assert not evaluate(late, at(2026, 3, 3, 0, 0)).is_open
