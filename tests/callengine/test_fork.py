"""The parallel-ringing core (callengine.fork), driven with a fake clock."""

from __future__ import annotations

from callengine.fork import Abandon, Connect, Fail, Fork

T0 = 1000.0


def test_first_answer_wins_and_the_others_are_cancelled_as_non_selected() -> None:
    fork = Fork(range(3), timeout=20, now=T0)
    assert fork.start() == []
    assert fork.next_deadline() == T0 + 20
    assert fork.answered(1, T0 + 3) == [Connect(1), Abandon(0, 26), Abandon(2, 26)]
    assert fork.next_deadline() is None
    # a second phone answering a moment later is hung up, never bridged
    assert fork.answered(2, T0 + 3.1) == [Abandon(2, 26)]
    assert fork.handle_timer(T0 + 30) == []


def test_timeout_abandons_every_ringing_leg_with_no_answer() -> None:
    fork = Fork(range(2), timeout=20, now=T0)
    assert fork.handle_timer(T0 + 19.99) == []
    assert fork.handle_timer(T0 + 20) == [Abandon(0, 19), Abandon(1, 19), Fail(480, 19)]


def test_busy_anywhere_means_busy() -> None:
    fork = Fork(range(2), timeout=20, now=T0)
    assert fork.failed(0, 486, 17, T0 + 1) == []
    assert fork.failed(1, 404, 1, T0 + 2) == [Fail(486, 17)]


def test_busy_then_timeout_is_still_busy() -> None:
    fork = Fork(range(2), timeout=20, now=T0)
    assert fork.failed(0, 600, 0, T0 + 1) == []
    assert fork.handle_timer(T0 + 20) == [Abandon(1, 19), Fail(486, 17)]


def test_all_failed_gives_the_last_failure_and_its_cause() -> None:
    fork = Fork(range(2), timeout=20, now=T0)
    assert fork.failed(0, 404, 1, T0 + 1) == []
    assert fork.failed(1, 503, 0, T0 + 2) == [Fail(503, 18)]  # no cause given: 18
    assert fork.next_deadline() is None


def test_caller_hangs_up_every_leg_gets_the_callers_cause() -> None:
    fork = Fork(range(2), timeout=20, now=T0)
    assert fork.caller_gone(16, T0 + 2) == [Abandon(0, 16), Abandon(1, 16), Fail(480, 19)]
    assert fork.answered(0, T0 + 2.5) == [Abandon(0, 26)]


def test_no_leg_fails_at_once() -> None:
    fork = Fork([], timeout=20, now=T0)
    assert fork.start() == [Fail(480, 18)]
    assert fork.next_deadline() is None


def test_a_forgotten_leg_is_not_a_failure() -> None:
    fork = Fork(range(2), timeout=20, now=T0)
    assert fork.forget(0, T0 + 1) == []
    assert fork.failed(1, 404, 1, T0 + 2) == [Fail(480, 19)]  # not every leg failed


def test_events_for_unknown_legs_change_nothing() -> None:
    fork = Fork(range(1), timeout=20, now=T0)
    assert fork.failed(7, 500, 0, T0) == []
    assert fork.forget(7, T0) == []
    assert fork.answered(0, T0 + 1) == [Connect(0)]
