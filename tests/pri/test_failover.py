"""The per-call attempt planner, driven by a fake clock."""

from __future__ import annotations

import pytest

from pri import (
    Attempt,
    CallAttempts,
    EndedBy,
    FinalResult,
    Gateway,
    HealthBoard,
    HealthConfig,
    HealthState,
    Hunting,
    Outcome,
    Reason,
    Span,
    Trunk,
    TrunkGroup,
    classify,
)

CFG = HealthConfig(probe=False, down_after=2, up_after=1, cool_down=30.0)


def make_trunk(name: str, channels: int = 23) -> Trunk:
    return Trunk(
        name,
        carrier=name.upper(),
        gateway=Gateway("127.0.0.1", 5071),
        spans=[Span(f"{name}-1", "T1", channels)],
        health=CFG,
    )


@pytest.fixture
def trunks() -> tuple[Trunk, Trunk, Trunk]:
    return make_trunk("a"), make_trunk("b"), make_trunk("c")


@pytest.fixture
def group(trunks: tuple[Trunk, Trunk, Trunk]) -> TrunkGroup:
    return TrunkGroup("pstn", list(trunks), setup_timeout=4.0)


# --- classification ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cause", "outcome"),
    [
        (200, None, Outcome.CONNECTED),
        (None, None, Outcome.FAILOVER),
        (408, None, Outcome.FAILOVER),
        (500, None, Outcome.FAILOVER),
        (502, None, Outcome.FAILOVER),
        (503, None, Outcome.FAILOVER),
        (504, None, Outcome.FAILOVER),
        (580, None, Outcome.FAILOVER),
        (404, None, Outcome.FINAL),
        (486, None, Outcome.FINAL),
        (403, None, Outcome.FINAL),
        (484, None, Outcome.FINAL),
        (487, None, Outcome.FINAL),
        (480, None, Outcome.FINAL),
        (488, None, Outcome.FINAL),
        (302, None, Outcome.FINAL),
        (600, None, Outcome.FINAL),
        (603, None, Outcome.FINAL),
        (604, None, Outcome.FINAL),
        # a resource cause in the Reason header turns other 4xx into failover...
        (480, 34, Outcome.FAILOVER),
        (480, 41, Outcome.FAILOVER),
        (488, 47, Outcome.FAILOVER),
        (480, 17, Outcome.FINAL),
        # ...but never the definitive ones, nor 6xx (RFC 3261 §21.6)
        (404, 34, Outcome.FINAL),
        (486, 34, Outcome.FINAL),
        (603, 34, Outcome.FINAL),
    ],
)
def test_classify(status: int | None, cause: int | None, outcome: Outcome) -> None:
    assert classify(status, cause) is outcome


# --- walking the group ----------------------------------------------------------------


def test_connect_on_first_trunk_keeps_the_channel(group: TrunkGroup) -> None:
    calls = CallAttempts(group, "call-1", 0.0)
    target = calls.next_trunk(now=0.0)
    assert target is not None
    assert (target.trunk.name, target.attempt, target.deadline) == ("a", 1, 4.0)
    assert target.channel.call_id == "call-1"
    decision = calls.on_result(200, now=1.0)
    assert decision.outcome is Outcome.CONNECTED and decision.final is None
    assert calls.finished and calls.next_trunk(now=1.0) is None
    assert target.trunk.in_use == 1
    group.release("call-1")
    assert target.trunk.in_use == 0


def test_failover_on_503_then_stop_on_486(group: TrunkGroup) -> None:
    calls = CallAttempts(group, "c", 0.0)
    first = calls.next_trunk(now=0.0)
    assert first is not None
    d1 = calls.on_result(503, now=0.5, reason='Q.850;cause=42;text="Congestion"')
    assert d1.outcome is Outcome.FAILOVER
    assert first.trunk.in_use == 0  # released on failover
    second = calls.next_trunk(now=0.5)
    assert second is not None and second.trunk.name == "b" and second.attempt == 2
    d2 = calls.on_result(486, now=1.0)
    assert d2.outcome is Outcome.FINAL
    assert d2.final is not None and (d2.final.status, d2.final.cause) == (486, 17)
    assert d2.final.reason_header == 'Q.850;cause=17;text="User busy"'
    assert calls.next_trunk(now=1.0) is None
    assert calls.final_result() == d2.final
    assert second.trunk.in_use == 0
    assert calls.attempts == [
        Attempt(1, "a", "A", "a-1", 1, 0.0, 0.5, EndedBy.RESPONSE, 503, 42, "Congestion",
                Outcome.FAILOVER),
        Attempt(2, "b", "B", "b-1", 1, 0.5, 1.0, EndedBy.RESPONSE, 486, 17, "486",
                Outcome.FINAL),
    ]  # fmt: skip


@pytest.mark.parametrize("status", [404, 486, 403, 603, 484, 487, 480, 401, 600])
def test_stop_statuses_try_no_other_trunk(group: TrunkGroup, status: int) -> None:
    calls = CallAttempts(group, "c", 0.0)
    assert calls.next_trunk(now=0.0) is not None
    decision = calls.on_result(status, now=1.0)
    assert decision.outcome is Outcome.FINAL
    assert decision.final is not None and decision.final.status == status
    assert calls.next_trunk(now=1.0) is None
    assert len(calls.attempts) == 1


@pytest.mark.parametrize("status", [408, 500, 501, 502, 503, 504, 513])
def test_failover_statuses_try_the_next_trunk(group: TrunkGroup, status: int) -> None:
    calls = CallAttempts(group, "c", 0.0)
    calls.next_trunk(now=0.0)
    assert calls.on_result(status, now=1.0).outcome is Outcome.FAILOVER
    target = calls.next_trunk(now=1.0)
    assert target is not None and target.trunk.name == "b"


def test_setup_timeout_fails_over_and_1xx_stops_the_timer(group: TrunkGroup) -> None:
    calls = CallAttempts(group, "c", 10.0)
    calls.next_trunk(now=10.0)
    assert calls.next_deadline() == 14.0
    assert calls.handle_timer(13.9) is None
    decision = calls.handle_timer(14.0)
    assert decision is not None and decision.outcome is Outcome.FAILOVER
    assert decision.attempt.ended_by is EndedBy.TIMEOUT
    assert (decision.attempt.cause, decision.attempt.reason) == (102, "no response within 4s")
    assert decision.abandon == 102  # CANCEL the silent INVITE with "recovery on timer"
    calls.next_trunk(now=14.0)
    calls.on_provisional(180, now=14.5)
    assert calls.next_deadline() is None
    assert calls.handle_timer(100.0) is None
    assert calls.on_result(200, now=101.0).outcome is Outcome.CONNECTED


def test_no_answer_by_the_ring_deadline_ends_the_call_with_480_cause_19(
    group: TrunkGroup,
) -> None:
    """The caller's patience runs over the whole hunt: a trunk that timed out and one
    that rings, and at the ring deadline the call ends (480, cause 19, the ringing
    INVITE cancelled with 19); no other trunk is tried, and the trunk is not blamed."""
    board = HealthBoard(group.trunks, now=0.0)
    calls = CallAttempts(group, "c", 10.0, health=board, ring_timeout=30.0)
    assert calls.ring_deadline == 40.0
    calls.next_trunk(now=10.0)
    assert calls.setup_pending and calls.next_deadline() == 14.0  # the setup timer first
    timed_out = calls.handle_timer(14.0)
    assert timed_out is not None and timed_out.outcome is Outcome.FAILOVER
    target = calls.next_trunk(now=14.0)
    assert target is not None and target.trunk.name == "b"
    calls.on_provisional(180, now=14.2)
    assert not calls.setup_pending and calls.next_deadline() == 40.0
    assert calls.handle_timer(39.9) is None
    decision = calls.handle_timer(40.0)
    assert decision is not None and decision.outcome is Outcome.FINAL
    assert decision.final is not None
    assert (decision.final.status, decision.final.cause) == (480, 19)
    assert decision.abandon == 19
    assert (decision.attempt.trunk, decision.attempt.status) == ("b", 480)
    assert calls.finished and calls.next_trunk(now=40.0) is None
    assert board["b"].failures == 0 and group.trunks[1].in_use == 0
    # a deadline before the setup timer's: the ring deadline decides
    short = CallAttempts(group, "s", 0.0, ring_timeout=2.0)
    short.next_trunk(now=0.0)
    assert short.next_deadline() == 2.0
    ended = short.handle_timer(2.0)
    assert ended is not None and ended.final is not None and ended.final.status == 480


@pytest.mark.parametrize("cause", [16, 31, 127])
def test_the_caller_leaving_ends_the_attempt_with_its_cause(group: TrunkGroup, cause: int) -> None:
    """The caller hangs up while a trunk rings: 487 with the caller's cause, the INVITE
    cancelled with that cause, the B-channel free, nothing held against the trunk."""
    board = HealthBoard(group.trunks, now=0.0)
    calls = CallAttempts(group, "c", 0.0, health=board, ring_timeout=60.0)
    calls.next_trunk(now=0.0)
    calls.on_provisional(183, now=0.5)
    decision = calls.caller_left(cause, now=5.0)
    assert decision.outcome is Outcome.FINAL and decision.abandon == cause
    assert decision.final is not None and (decision.final.status, decision.final.cause) == (
        487,
        cause,
    )
    assert decision.attempt.status == 487 and decision.attempt.cause == cause
    assert group.trunks[0].in_use == 0 and board["a"].failures == 0
    assert calls.next_trunk(now=5.0) is None and calls.next_deadline() is None
    assert calls.handle_timer(100.0) is None


def test_a_response_needs_no_abandon(group: TrunkGroup) -> None:
    """A final response ended the INVITE on the far side: nothing to cancel."""
    calls = CallAttempts(group, "c", 0.0, ring_timeout=60.0)
    calls.next_trunk(now=0.0)
    assert calls.on_result(503, now=1.0).abandon is None
    calls.next_trunk(now=1.0)
    assert calls.on_result(None, now=2.0, transport_error=True).abandon is None


def test_transport_error_fails_over_with_cause_38(group: TrunkGroup) -> None:
    calls = CallAttempts(group, "c", 0.0)
    calls.next_trunk(now=0.0)
    decision = calls.on_result(None, now=0.1, transport_error=True)
    assert decision.outcome is Outcome.FAILOVER
    assert (decision.attempt.ended_by, decision.attempt.cause) == (EndedBy.TRANSPORT_ERROR, 38)


def test_exhausted_group_returns_the_last_failure(group: TrunkGroup) -> None:
    calls = CallAttempts(group, "c", 0.0)
    for now in (0.0, 1.0):
        calls.next_trunk(now=now)
        calls.on_result(503, now=now + 0.5)
    calls.next_trunk(now=2.0)
    calls.handle_timer(6.0)  # last one times out
    assert calls.next_trunk(now=6.0) is None
    final = calls.final_result()
    assert (final.status, final.cause) == (504, 102)  # RFC 3398 §7.2.4.1: 102 -> 504
    assert [a.trunk for a in calls.attempts] == ["a", "b", "c"]
    assert all(t.in_use == 0 for t in group.trunks)


def test_max_attempts_limits_the_walk(trunks: tuple[Trunk, Trunk, Trunk]) -> None:
    group = TrunkGroup("g", list(trunks), max_attempts=2)
    calls = CallAttempts(group, "c", 0.0)
    for now in (0.0, 1.0):
        calls.next_trunk(now=now)
        calls.on_result(500, now=now)
    assert calls.next_trunk(now=2.0) is None
    assert (calls.final_result().status, calls.final_result().cause) == (500, 41)


def test_a_full_trunk_is_skipped(trunks: tuple[Trunk, Trunk, Trunk]) -> None:
    a, b, _ = trunks
    group = TrunkGroup("g", [a, b])
    for i in range(23):
        assert group.seize(f"busy-{i}") is not None
    calls = CallAttempts(group, "c", 0.0)
    target = calls.next_trunk(now=0.0)
    assert target is not None and target.trunk is b
    assert [(s.trunk, s.why) for s in calls.skipped] == [("a", "busy")]


def test_all_busy_is_an_instant_503_cause_34() -> None:
    t = make_trunk("t", channels=1)
    group = TrunkGroup("g", [t])
    assert group.seize("other") is not None
    calls = CallAttempts(group, "c", 0.0)
    assert calls.next_trunk(now=0.0) is None
    final = calls.final_result()
    assert (final.status, final.cause) == (503, 34)
    assert final.reason_header == 'Q.850;cause=34;text="No circuit/channel available"'
    assert calls.attempts == []


def test_down_trunk_is_skipped_without_an_attempt(group: TrunkGroup) -> None:
    board = HealthBoard(group.trunks, now=0.0)
    # two failed calls on "a" take it down (down_after=2)
    for i, now in enumerate((0.0, 1.0)):
        calls = CallAttempts(group, f"c{i}", now, health=board)
        target = calls.next_trunk(now=now)
        assert target is not None and target.trunk.name == "a"
        decision = calls.on_result(None, now=now + 0.1, transport_error=True)
        calls.next_trunk(now=now + 0.1)
        calls.on_result(200, now=now + 0.2)
        group.release(f"c{i}")
    assert [(e.trunk, e.new) for e in decision.events] == [("a", HealthState.DOWN)]
    calls = CallAttempts(group, "c3", 2.0, health=board)
    target = calls.next_trunk(now=2.0)
    assert target is not None and target.trunk.name == "b"
    assert [(s.trunk, s.why) for s in calls.skipped] == [("a", "down")]


def test_ringing_attempt_on_a_trunk_gone_down_fails_over(group: TrunkGroup) -> None:
    """A 180 stops the setup timer; if the gateway then dies, the health board (probes,
    other calls) marks the trunk down and the ringing attempt moves to the next trunk."""
    board = HealthBoard(group.trunks, now=0.0)
    calls = CallAttempts(group, "ringing", 0.0, health=board)
    setup = CallAttempts(group, "no answer yet", 0.0, health=board)
    target = calls.next_trunk(now=0.0)
    assert target is not None and target.trunk.name == "a"
    assert setup.next_trunk(now=0.0) is not None
    calls.on_provisional(180, now=0.2)
    assert calls.next_deadline() is None
    assert calls.check_health(1.0) is None  # "a" is up: keep ringing
    board.record_call_result("a", False, now=2.0, reason="call no response")
    assert calls.check_health(2.0) is None  # one failure of two: still up
    board.record_call_result("a", False, now=3.0, reason="call no response")
    assert board.state("a") is HealthState.DOWN
    failures = board["a"].failures
    assert setup.check_health(3.5) is None  # its setup timer decides (at 4.0)
    decision = calls.check_health(3.5)
    assert decision is not None and decision.outcome is Outcome.FAILOVER
    attempt = decision.attempt
    assert (attempt.ended_by, attempt.status, attempt.cause) == (EndedBy.TRUNK_DOWN, None, 38)
    assert (attempt.started, attempt.ended, decision.events) == (0.0, 3.5, ())
    assert decision.abandon == 38  # CANCEL the ringing INVITE: network out of order
    assert board["a"].failures == failures  # down already: nothing recorded
    assert group.trunks[0].in_use == 1  # its B-channel is free again (one left: setup)
    target = calls.next_trunk(now=3.5)
    assert target is not None and target.trunk.name == "b"
    assert calls.check_health(3.6) is None  # "b" is up
    assert calls.on_result(200, now=4.0).outcome is Outcome.CONNECTED


def test_all_known_down_is_an_instant_503_cause_34(group: TrunkGroup) -> None:
    board = HealthBoard(group.trunks, now=0.0)
    for t in group.trunks:
        board.record_call_result(t.name, False, now=0.0, reason="x")
        board.record_call_result(t.name, False, now=0.0, reason="x")
    calls = CallAttempts(group, "c", 1.0, health=board)
    assert calls.next_trunk(now=1.0) is None
    assert (calls.final_result().status, calls.final_result().cause) == (503, 34)
    assert [s.why for s in calls.skipped] == ["down", "down", "down"]
    assert all(t.in_use == 0 for t in group.trunks)


def test_disabled_trunk_is_skipped(trunks: tuple[Trunk, Trunk, Trunk]) -> None:
    a, b, _ = trunks
    a.enabled = False
    calls = CallAttempts(TrunkGroup("g", [a, b]), "c", 0.0)
    target = calls.next_trunk(now=0.0)
    assert target is not None and target.trunk is b
    assert [(s.trunk, s.why) for s in calls.skipped] == [("a", "disabled")]


def test_no_circuit_answer_is_not_a_breaker_failure(group: TrunkGroup) -> None:
    board = HealthBoard(group.trunks, now=0.0)
    for i in range(3):
        calls = CallAttempts(group, f"c{i}", 0.0, health=board)
        calls.next_trunk(now=0.0)
        decision = calls.on_result(503, now=0.1, reason=Reason("Q.850", 34))
        assert decision.outcome is Outcome.FAILOVER and decision.events == ()
        calls.next_trunk(now=0.1)
        calls.on_result(486, now=0.2)
    assert board.state("a") is HealthState.UP


def test_an_invite_we_could_not_make_ends_the_call_and_blames_no_trunk(
    group: TrunkGroup,
) -> None:
    """No RTP port for the leg (503, cause 47): the call ends with it at once, no other
    trunk is tried (ours is the missing resource), the channel is released, and the
    trunk's breaker records nothing, however often it happens."""
    board = HealthBoard(group.trunks, now=0.0)
    for i in range(5):
        calls = CallAttempts(group, f"c{i}", 0.0, health=board)
        calls.next_trunk(now=0.0)
        decision = calls.not_sent(503, 47, now=0.1)
        assert decision.outcome is Outcome.FINAL and decision.events == ()
        assert decision.final == FinalResult(503, 47) and decision.abandon is None
        assert decision.attempt.ended_by is EndedBy.NOT_SENT
        assert decision.attempt.cause == 47 and calls.finished
        assert calls.next_trunk(now=0.2) is None
    assert all(t.in_use == 0 for t in group.trunks)
    assert board.state("a") is HealthState.UP
    with pytest.raises(RuntimeError):
        calls.not_sent(503, 47, now=0.3)


def test_user_answers_count_as_breaker_successes(group: TrunkGroup) -> None:
    board = HealthBoard(group.trunks, now=0.0)
    board.record_call_result("a", False, now=0.0, reason="x")
    calls = CallAttempts(group, "c", 0.0, health=board)
    calls.next_trunk(now=0.0)
    calls.on_result(404, now=0.1)
    assert board["a"].failures == 0


def test_round_robin_failover_walks_the_rotated_order(
    trunks: tuple[Trunk, Trunk, Trunk],
) -> None:
    group = TrunkGroup("g", list(trunks), strategy=Hunting.ROUND_ROBIN)
    firsts = []
    for i in range(3):
        calls = CallAttempts(group, f"c{i}", 0.0)
        target = calls.next_trunk(now=0.0)
        assert target is not None
        firsts.append(target.trunk.name)
        calls.on_result(404, now=0.0)
    assert firsts == ["a", "b", "c"]


def test_misuse_raises(group: TrunkGroup) -> None:
    calls = CallAttempts(group, "c", 0.0)
    with pytest.raises(RuntimeError, match="no attempt in progress"):
        calls.on_result(200, now=0.0)
    with pytest.raises(RuntimeError, match="has not failed"):
        calls.final_result()
    calls.next_trunk(now=0.0)
    with pytest.raises(RuntimeError, match="attempt is in progress"):
        calls.next_trunk(now=0.0)
    with pytest.raises(ValueError, match="not a final status: 180"):
        calls.on_result(180, now=0.0)
    with pytest.raises(ValueError, match="needs timeout or transport_error"):
        calls.on_result(None, now=0.0)
