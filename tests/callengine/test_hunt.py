"""Trunk call control (callengine.hunt): routing a new call, and hunting a trunk group
with a fake clock. No sockets, no running event loop: commands and channel state are
checked; last, the B2BUA shell's one conversion of a leg's outcome (futures only)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from callengine.b2bua import _leg_result
from callengine.call import SipError
from callengine.hunt import (
    NO_RESULT,
    NOT_SENT,
    AbandonAttempt,
    Connected,
    Failed,
    Forbidden,
    FromTrunk,
    HuntCommand,
    LegResult,
    RecordAttempt,
    RecordSkip,
    Refused,
    ReportHealth,
    StartLeg,
    StopRelay,
    TenantNumber,
    ToTrunk,
    TrunkHunt,
    is_transport_error,
    route_call,
    trunk_leg,
)
from callengine.sip.useragent import SessionState
from callengine.transfer import LegTarget
from pri import (
    Credentials,
    DialPolicy,
    EndedBy,
    FinalResult,
    Gateway,
    HealthBoard,
    HealthConfig,
    HealthState,
    Hunting,
    Outcome,
    Span,
    Trunk,
    TrunkGroup,
    TrunkPlan,
    load_trunks,
)

CFG = HealthConfig(probe=False, down_after=2, up_after=1, cool_down=30.0)
KEY = "call-1/tag"
T0 = 100.0


def make_trunk(name: str, channels: int = 23) -> Trunk:
    return Trunk(
        name,
        carrier=name.upper(),
        gateway=Gateway("127.0.0.1", 5071),
        spans=[Span(f"{name}-1", "T1", channels)],
        health=CFG,
    )


@pytest.fixture
def group() -> TrunkGroup:
    return TrunkGroup("pstn", [make_trunk("a"), make_trunk("b"), make_trunk("c")], setup_timeout=4)


def in_use(group: TrunkGroup) -> dict[str, int]:
    return {t.name: t.in_use for t in group.trunks}


def started(
    group: TrunkGroup, *, ring_timeout: float | None = 60.0, health: HealthBoard | None = None
) -> tuple[TrunkHunt, list[HuntCommand]]:
    hunt = TrunkHunt(
        group, KEY, number="3225550100", now=T0, health=health, ring_timeout=ring_timeout
    )
    return hunt, hunt.start(now=T0)


def leg_of(commands: list[HuntCommand]) -> StartLeg:
    """The StartLeg that ends ``commands``."""
    assert isinstance(commands[-1], StartLeg), commands
    return commands[-1]


def kinds(commands: list[HuntCommand]) -> list[str]:
    return [type(c).__name__ for c in commands]


def recorded(commands: list[HuntCommand]) -> list[tuple[str, int | None, int, Outcome]]:
    return [
        (c.attempt.trunk, c.attempt.status, c.attempt.cause, c.attempt.outcome)
        for c in commands
        if isinstance(c, RecordAttempt)
    ]


# --- the hunt --------------------------------------------------------------------------


def test_the_first_trunk_is_seized_and_its_gateway_invited(group: TrunkGroup) -> None:
    hunt, commands = started(group)
    start = leg_of(commands)
    assert commands == [start]
    assert (start.target.trunk.name, start.target.attempt) == ("a", 1)
    assert start.target.channel.call_id == KEY
    assert start.leg == LegTarget(
        "sip:3225550100@127.0.0.1:5071", ("127.0.0.1", 5071), "UDP", label="a"
    )
    assert in_use(group) == {"a": 1, "b": 0, "c": 0}
    assert hunt.setup_pending and hunt.next_deadline() == T0 + 4


def test_503_fails_over_to_the_next_trunk_which_connects_and_keeps_its_channel(
    group: TrunkGroup,
) -> None:
    hunt, _ = started(group)
    reason = LegResult(503, 42, terminated=True)
    commands = hunt.leg_ended(reason, now=T0 + 0.5)
    assert kinds(commands) == ["RecordAttempt", "StopRelay", "StartLeg"]
    assert recorded(commands) == [("a", 503, 42, Outcome.FAILOVER)]
    assert leg_of(commands).target.trunk.name == "b"
    assert leg_of(commands).target.attempt == 2
    assert in_use(group) == {"a": 0, "b": 1, "c": 0}  # a's channel released on failover
    commands = hunt.leg_ended(LegResult(200), now=T0 + 2)
    assert commands == [
        RecordAttempt(hunt.attempts.attempts[-1]),  # type: ignore[union-attr]
        Connected("pstn", KEY),
    ]
    assert recorded(commands) == [("b", 200, 16, Outcome.CONNECTED)]
    assert hunt.done and hunt.connected and hunt.result is None
    assert hunt.next_deadline() is None
    # the bridge holds the channel; the shell's cleanup does not free it
    assert hunt.close() == []
    assert in_use(group) == {"a": 0, "b": 1, "c": 0}
    group.release(KEY)  # what the bridge does when it ends
    assert in_use(group) == {"a": 0, "b": 0, "c": 0}


def test_486_is_final_no_other_trunk_is_tried(group: TrunkGroup) -> None:
    hunt, _ = started(group)
    commands = hunt.leg_ended(LegResult(486, 17, terminated=True), now=T0 + 1)
    assert commands[-2:] == [StopRelay(), Failed(FinalResult(486, 17))]
    assert kinds(commands) == ["RecordAttempt", "StopRelay", "Failed"]
    assert recorded(commands) == [("a", 486, 17, Outcome.FINAL)]
    assert hunt.result == FinalResult(486, 17) and hunt.done and not hunt.connected
    assert in_use(group) == {"a": 0, "b": 0, "c": 0}
    assert hunt.leg_ended(LegResult(200), now=T0 + 2) == []  # over: nothing is fed


@pytest.mark.parametrize("status", [600, 603, 604, 606])
def test_a_6xx_stops_the_hunt(group: TrunkGroup, status: int) -> None:
    """A global failure (RFC 3261 §21.6): no other trunk is tried, even with a
    resource cause in its Reason header."""
    hunt, _ = started(group)
    commands = hunt.leg_ended(LegResult(status, 34, terminated=True), now=T0 + 1)
    assert commands[-1] == Failed(FinalResult(status, 34))
    assert not any(isinstance(c, StartLeg) for c in commands)
    assert all(n == 0 for n in in_use(group).values())


def test_the_reason_cause_is_the_attempts_cause(group: TrunkGroup) -> None:
    """480 with "no circuit" (34) in its Reason header fails over; without it, 480 is
    final with RFC 3398's cause."""
    hunt, _ = started(group)
    commands = hunt.leg_ended(LegResult(480, 34, terminated=True), now=T0 + 1)
    assert recorded(commands) == [("a", 480, 34, Outcome.FAILOVER)]
    commands = hunt.leg_ended(LegResult(480, terminated=True), now=T0 + 2)
    assert recorded(commands) == [("b", 480, 18, Outcome.FINAL)]
    assert commands[-1] == Failed(FinalResult(480, 18))


def test_no_response_in_the_setup_timeout_abandons_with_102_and_fails_over(
    group: TrunkGroup,
) -> None:
    hunt, _ = started(group)
    assert hunt.next_deadline() == T0 + 4
    assert hunt.handle_timer(T0 + 3.9) == []
    commands = hunt.handle_timer(T0 + 4)
    assert kinds(commands) == ["AbandonAttempt", "RecordAttempt", "StopRelay", "StartLeg"]
    assert commands[0] == AbandonAttempt(102)  # CANCEL: "recovery on timer expiry"
    attempt = commands[1].attempt  # type: ignore[union-attr]
    assert (attempt.ended_by, attempt.status, attempt.cause) == (EndedBy.TIMEOUT, None, 102)
    assert leg_of(commands).target.trunk.name == "b"
    assert hunt.next_deadline() == T0 + 8  # b's own setup timer


def test_a_1xx_stops_the_setup_timer(group: TrunkGroup) -> None:
    hunt, _ = started(group, ring_timeout=None)
    assert hunt.provisional(180, now=T0 + 1) == []
    assert not hunt.setup_pending and hunt.next_deadline() is None
    assert hunt.handle_timer(T0 + 1000) == []


def test_the_ring_deadline_runs_across_a_failover_480_cause_19(group: TrunkGroup) -> None:
    """The caller's patience covers the whole hunt: a trunk that timed out, one that
    rings, and at the ring deadline the call ends (480, cause 19)."""
    hunt, _ = started(group, ring_timeout=30.0)
    first = hunt.handle_timer(T0 + 4)
    assert leg_of(first).target.trunk.name == "b"
    hunt.provisional(183, now=T0 + 4.5)
    assert hunt.next_deadline() == T0 + 30
    assert hunt.handle_timer(T0 + 29.9) == []
    commands = hunt.handle_timer(T0 + 30)
    assert commands == [
        AbandonAttempt(19),
        commands[1],
        StopRelay(),
        Failed(FinalResult(480, 19)),
    ]
    assert recorded(commands) == [("b", 480, 19, Outcome.FINAL)]
    assert all(n == 0 for n in in_use(group).values())


@pytest.mark.parametrize(
    ("end_cause", "answered", "cause"),
    [(31, False, 31), (0, False, 16), (487, False, 16), (31, True, 16)],
)
def test_the_caller_leaving_during_an_attempt(
    group: TrunkGroup, end_cause: int, answered: bool, cause: int
) -> None:
    """The INVITE is abandoned with the caller's Q.850 cause (16 for an answered
    caller, or one without a Q.850 cause), the channel released, 487 for the caller."""
    hunt, _ = started(group)
    hunt.provisional(180, now=T0 + 1)
    commands = hunt.caller_left(end_cause, answered=answered, now=T0 + 5)
    assert kinds(commands) == ["AbandonAttempt", "RecordAttempt", "StopRelay", "Failed"]
    assert commands[0] == AbandonAttempt(cause)
    assert commands[-1] == Failed(FinalResult(487, cause))
    assert recorded(commands) == [("a", 487, cause, Outcome.FINAL)]
    assert all(n == 0 for n in in_use(group).values())
    assert hunt.next_deadline() is None and hunt.handle_timer(T0 + 100) == []


def test_the_caller_gone_between_attempts_is_487_cause_16(group: TrunkGroup) -> None:
    """A failover result arriving as the caller leaves: the attempt is recorded, no
    other trunk is seized."""
    hunt, _ = started(group)
    commands = hunt.leg_ended(LegResult(503, terminated=True), now=T0 + 1, caller_present=False)
    assert kinds(commands) == ["RecordAttempt", "StopRelay", "Failed"]
    assert commands[-1] == Failed(FinalResult(487, 16))
    assert all(n == 0 for n in in_use(group).values())
    # the same after a failed send (a transport error) and after a setup timeout
    for fail in (
        lambda h: h.leg_ended(NO_RESULT, now=T0 + 1, caller_present=False),
        lambda h: h.handle_timer(T0 + 4, caller_present=False),
    ):
        hunt, _ = started(group)
        assert fail(hunt)[-1] == Failed(FinalResult(487, 16))
        assert all(n == 0 for n in in_use(group).values())


def test_an_invite_not_sent_because_the_caller_left_is_487_cause_16(
    group: TrunkGroup,
) -> None:
    hunt, _ = started(group)
    commands = hunt.leg_ended(NOT_SENT, now=T0 + 0.1)
    assert recorded(commands) == [("a", 487, 16, Outcome.FINAL)]
    assert commands[-1] == Failed(FinalResult(487, 16))


def test_an_invite_our_side_could_not_make_ends_the_hunt_with_its_status(
    group: TrunkGroup,
) -> None:
    """No RTP port for the leg: 503 with cause 47 for the caller, not 487 (the caller
    is still there) and no failover (another trunk needs a port of ours too)."""
    hunt, _ = started(group)
    commands = hunt.not_sent(503, 47, now=T0 + 0.1)
    assert kinds(commands) == ["RecordAttempt", "StopRelay", "Failed"]
    assert recorded(commands) == [("a", 503, 47, Outcome.FINAL)]
    assert commands[-1] == Failed(FinalResult(503, 47))
    assert all(n == 0 for n in in_use(group).values())
    assert hunt.done and hunt.not_sent(503, 47, now=T0 + 1) == []


def test_an_abandoned_leg_s_late_progress_reaches_nobody() -> None:
    """A leg CANCELled (its setup timer, the caller leaving) may still send a 180 or
    183: it must not stop the next attempt's setup timer nor ring the caller."""
    from callengine.b2bua import B2BUA, _Leg

    heard: list[int] = []
    leg = SimpleNamespace(
        outcome=SimpleNamespace(done=lambda: True),
        progressed=SimpleNamespace(done=lambda: True),
        early_sdp=None,
        active=False,
        media=None,
        session=SimpleNamespace(state=SessionState.TERMINATED),
        on_progress=lambda _leg, response: heard.append(response.status),
    )
    _Leg._on_progress(leg, SimpleNamespace(status=180, body=b""))  # type: ignore[arg-type]
    assert heard == [180]
    abandoned: list[tuple[Any, int]] = []
    engine = SimpleNamespace(
        dialler=SimpleNamespace(abandon=lambda leg, cause: abandoned.append((leg, cause)))
    )
    B2BUA._abandon(SimpleNamespace(engine=engine), leg, 102)  # type: ignore[arg-type]
    assert abandoned == [(leg, 102)]
    _Leg._on_progress(leg, SimpleNamespace(status=183, body=b"v=0"))  # type: ignore[arg-type]
    assert heard == [180]


@pytest.mark.parametrize(
    ("result", "transport_error"),
    [
        (NO_RESULT, True),
        (LegResult(408, 0, terminated=True), True),  # Timer B / transport (§17.1.4)
        (LegResult(408, 0, terminated=False), False),  # a 408 the far end sent
        (LegResult(408, 102, terminated=True), False),  # with a Reason: a response
        (LegResult(503, 0, terminated=True), False),
        (LegResult(200), False),
    ],
)
def test_is_transport_error(result: LegResult, transport_error: bool) -> None:
    assert is_transport_error(result) is transport_error


def test_a_408_without_any_response_is_a_transport_error(group: TrunkGroup) -> None:
    hunt, _ = started(group)
    commands = hunt.leg_ended(LegResult(408, 0, terminated=True), now=T0 + 1)
    attempt = commands[0].attempt  # type: ignore[union-attr]
    assert (attempt.ended_by, attempt.status, attempt.cause) == (
        EndedBy.TRANSPORT_ERROR,
        None,
        38,
    )
    assert attempt.reason == "transport error" and attempt.outcome is Outcome.FAILOVER
    assert leg_of(commands).target.trunk.name == "b"
    # a 408 response from the gateway is a response (also a failover)
    commands = hunt.leg_ended(LegResult(408, 0, terminated=False), now=T0 + 2)
    attempt = commands[0].attempt  # type: ignore[union-attr]
    assert (attempt.ended_by, attempt.status, attempt.cause) == (EndedBy.RESPONSE, 408, 102)


def test_the_dial_policy_refuses_before_any_channel_is_seized() -> None:
    a, b = make_trunk("a"), make_trunk("b")
    group = TrunkGroup("rr", [a, b], strategy=Hunting.ROUND_ROBIN)
    verdict = DialPolicy().check("00441234")
    assert verdict is not None
    hunt = TrunkHunt(group, KEY, number="00441234", now=T0, refused=verdict)
    assert hunt.attempts is None and hunt.next_deadline() is None
    assert hunt.start(now=T0) == [Refused(verdict), Failed(FinalResult(403, 21))]
    assert hunt.result == FinalResult(403, 21) and hunt.done
    assert (a.in_use, b.in_use) == (0, 0) and hunt.close() == []
    # the refusal took no turn of the round robin
    first = TrunkHunt(group, "next", number="0123", now=T0).start(now=T0)
    assert leg_of(first).target.trunk is a


def test_skipped_trunks_are_recorded_when_the_hunt_ends() -> None:
    a, b, c = make_trunk("a", channels=1), make_trunk("b"), make_trunk("c")
    b.enabled = False
    group = TrunkGroup("g", [a, b, c])
    assert group.seize("someone else") is not None  # a is full
    hunt = TrunkHunt(group, KEY, number="0123", now=T0)
    commands = hunt.start(now=T0)
    assert kinds(commands) == ["StartLeg"]  # recorded at the end, after the attempts
    assert leg_of(commands).target.trunk is c
    commands = hunt.leg_ended(LegResult(200), now=T0 + 1)
    assert [c.skip.trunk for c in commands if isinstance(c, RecordSkip)] == ["a", "b"]
    assert [(c.skip.why, c.skip.at) for c in commands if isinstance(c, RecordSkip)] == [
        ("busy", T0),
        ("disabled", T0),
    ]
    assert kinds(commands) == ["RecordAttempt", "RecordSkip", "RecordSkip", "Connected"]
    assert hunt.close() == []  # recorded once


def test_all_busy_is_503_cause_34_without_an_attempt() -> None:
    t = make_trunk("t", channels=1)
    group = TrunkGroup("g", [t])
    assert group.seize("other") is not None
    hunt = TrunkHunt(group, KEY, number="0123", now=T0)
    commands = hunt.start(now=T0)
    assert commands == [
        RecordSkip(hunt.attempts.skipped[0]),  # type: ignore[union-attr]
        Failed(FinalResult(503, 34)),
    ]
    assert t.in_use == 1 and t.channel_of(KEY) is None  # only the other call's


def test_the_last_failure_when_every_trunk_failed(group: TrunkGroup) -> None:
    hunt, _ = started(group)
    hunt.leg_ended(LegResult(503, terminated=True), now=T0 + 1)
    hunt.leg_ended(NO_RESULT, now=T0 + 2)
    commands = hunt.leg_ended(LegResult(500, terminated=True), now=T0 + 3)
    assert commands[-1] == Failed(FinalResult(500, 41))
    assert [a.trunk for a in hunt.attempts.attempts] == ["a", "b", "c"]  # type: ignore[union-attr]
    assert all(n == 0 for n in in_use(group).values())


def test_closing_a_hunt_under_way_releases_its_channel_and_records_the_skips() -> None:
    """The shell gave up (an exception, a cancelled task) while an attempt rang."""
    a, b = make_trunk("a"), make_trunk("b")
    a.enabled = False
    group = TrunkGroup("g", [a, b])
    hunt = TrunkHunt(group, KEY, number="0123", now=T0)
    hunt.start(now=T0)
    assert b.in_use == 1
    commands = hunt.close()
    assert [(c.skip.trunk, c.skip.why) for c in commands if isinstance(c, RecordSkip)] == [
        ("a", "disabled")
    ]
    assert b.in_use == 0 and hunt.done and hunt.close() == []


def test_a_ringing_trunk_declared_down_fails_over_with_38(group: TrunkGroup) -> None:
    board = HealthBoard(group.trunks, now=0.0)
    hunt, _ = started(group, health=board)
    hunt.provisional(180, now=T0 + 0.5)
    assert hunt.check_health(T0 + 1) == []
    for now in (T0 + 2, T0 + 3):
        board.record_call_result("a", False, now=now, reason="call no response")
    assert board.state("a") is HealthState.DOWN
    commands = hunt.check_health(T0 + 3)
    assert kinds(commands) == ["AbandonAttempt", "RecordAttempt", "StopRelay", "StartLeg"]
    assert commands[0] == AbandonAttempt(38)
    assert commands[1].attempt.ended_by is EndedBy.TRUNK_DOWN  # type: ignore[union-attr]
    assert leg_of(commands).target.trunk.name == "b"
    assert in_use(group) == {"a": 0, "b": 1, "c": 0}


def test_breaker_changes_are_reported(group: TrunkGroup) -> None:
    board = HealthBoard(group.trunks, now=0.0)
    board.record_call_result("a", False, now=0.0, reason="earlier")
    hunt, _ = started(group, health=board)
    commands = hunt.leg_ended(NO_RESULT, now=T0 + 1)
    assert kinds(commands) == ["RecordAttempt", "ReportHealth", "StopRelay", "StartLeg"]
    report = commands[1]
    assert isinstance(report, ReportHealth)
    assert [(e.trunk, e.new) for e in report.events] == [("a", HealthState.DOWN)]


def test_misuse() -> None:
    hunt, _ = started(TrunkGroup("g", [make_trunk("a")]))
    with pytest.raises(RuntimeError, match="started already"):
        hunt.start(now=T0)


def trunk(host: str, transport: str, **kw: object) -> Trunk:
    return Trunk(
        "gw",
        carrier="C",
        gateway=Gateway(host, 5061, transport),
        spans=[Span("gw-1", "E1", 30)],
        **kw,  # type: ignore[arg-type]
    )


def test_trunk_leg_names_the_gateway() -> None:
    assert trunk_leg(trunk("10.0.0.1", "tcp"), "0123") == LegTarget(
        "sip:0123@10.0.0.1:5061;transport=tcp", ("10.0.0.1", 5061), "TCP", label="gw"
    )
    tls = trunk("2001:db8::1", "tls", credentials=Credentials("u", "p"))
    assert trunk_leg(tls, "+3225") == LegTarget(
        "sips:+3225@[2001:db8::1]:5061;transport=tls",
        ("2001:db8::1", 5061),
        "TLS",
        label="gw",
        credentials=("u", "p"),
    )


# --- routing a new call --------------------------------------------------------------------

GATEWAY = "192.0.2.10"


def plan() -> TrunkPlan:
    return load_trunks(
        {
            "trunks": {
                "carrier-a": {
                    "carrier": "A",
                    "gateway": {"host": GATEWAY, "port": 5060},
                    "dids": ["3225550100-3225550199"],
                    "spans": [{"type": "E1"}],
                },
            },
            "trunk_groups": {"pstn": {"trunks": ["carrier-a"]}},
            "outbound_routes": [
                {"prefix": "9", "strip": 1, "group": "pstn", "record": True},
                {"prefix": "0", "group": "pstn"},
            ],
            "trusted_sources": ["127.0.0.1/32"],
        },
        source="test",
    )


PLAN = plan()
TENANT_NUMBERS = {"1000", "3225550142"}


def route(number: str, source_ip: str, *, authenticated: bool = False) -> object:
    return route_call(
        PLAN,
        number,
        source_ip=source_ip,
        authenticated=authenticated,
        owns_number=TENANT_NUMBERS.__contains__,
    )


def test_route_from_a_trunk_gateway_for_one_of_its_dids() -> None:
    decision = route("3225550142", GATEWAY)  # a tenant's number too: the trunk first
    assert decision == FromTrunk(PLAN.trunks["carrier-a"])


def test_route_a_tenants_number_stays_with_the_tenant_routes() -> None:
    assert route("1000", "127.0.0.1") == TenantNumber()
    assert route("1000", "203.0.113.9") == TenantNumber()
    # the gateway calling a number not among its DIDs is no inbound trunk call
    assert route("1000", GATEWAY) == TenantNumber()


def test_route_outbound_from_a_trusted_source() -> None:
    assert route("90123", "127.0.0.1") == ToTrunk(PLAN.groups["pstn"], "0123", "outbound route 9")
    assert route("0123", "127.0.0.1") == ToTrunk(PLAN.groups["pstn"], "0123", None)


def test_route_outbound_for_an_authenticated_caller_from_anywhere() -> None:
    decision = route("0456", "203.0.113.9", authenticated=True)
    assert decision == ToTrunk(PLAN.groups["pstn"], "0456", None)


def test_route_a_trunk_prefix_from_an_untrusted_source_is_forbidden() -> None:
    decision = route("90123", "203.0.113.9")
    assert decision == Forbidden()
    assert isinstance(decision, Forbidden)
    assert (decision.status, decision.reason) == (403, "Forbidden")
    assert route("0123", "not an address") == Forbidden()


def test_route_anything_else_is_none() -> None:
    assert route("5555", "127.0.0.1") is None
    assert route("5555", "203.0.113.9") is None
    empty = TrunkPlan({}, {})
    owned: list[str] = []

    def owns(number: str) -> bool:
        owned.append(number)
        return True

    decision = route_call(
        empty, "90123", source_ip="127.0.0.1", authenticated=True, owns_number=owns
    )
    assert decision is None and owned == []  # no trunk: nothing is asked


# --- the shell's conversion of a leg's outcome ------------------------------------------


@dataclass
class FakeLeg:
    outcome: asyncio.Future[Any]
    session: SimpleNamespace
    answered: list[Any] = field(default_factory=list)

    def on_answered(self, response: Any) -> None:
        self.answered.append(response)


@pytest.mark.parametrize(
    ("outcome", "state", "end_cause", "result", "transport_error"),
    [
        (None, SessionState.TERMINATED, 0, NO_RESULT, True),  # the wait was cancelled
        (SipError(408), SessionState.TERMINATED, 0, LegResult(408, 0, True), True),
        (SipError(408), SessionState.EARLY, 0, LegResult(408, 0, False), False),
        (SipError(503), SessionState.TERMINATED, 34, LegResult(503, 34, True), False),
        (SimpleNamespace(status=200), SessionState.CONFIRMED, 0, LegResult(200), False),
    ],
)
def test_the_shell_turns_a_legs_outcome_into_plain_values(
    outcome: Any, state: SessionState, end_cause: int, result: LegResult, transport_error: bool
) -> None:
    loop = asyncio.new_event_loop()
    try:
        future: asyncio.Future[Any] = loop.create_future()
        if outcome is None:
            future.cancel()
        else:
            future.set_result(outcome)
        leg = FakeLeg(future, SimpleNamespace(state=state, end_cause=end_cause))
        assert _leg_result(leg) == result  # type: ignore[arg-type]
        assert is_transport_error(result) is transport_error
        assert leg.answered == ([outcome] if result.status == 200 else [])  # its SDP taken
    finally:
        loop.close()


# ------------------------------------------------------- B-channels in and out again
def test_a_call_in_from_a_trunk_and_out_again_holds_two_channels() -> None:
    """A call from carrier A forwarded to the PSTN through carrier A again (a hairpin)
    holds two B-channels while both legs are up, as a real PRI does; the outbound hunt
    failing frees its own channel only; the channel audit leaves a live call's two
    channels alone and reclaims both once the engine no longer has the call."""
    from callengine.b2bua import B2BUA, _channel_key, _outbound_key

    trunks = plan()
    trunk = trunks.trunks["carrier-a"]
    group = trunks.groups["pstn"]
    caller = SimpleNamespace(call_id="c1@x", session=SimpleNamespace(local_tag="t1"))
    assert trunk.seize(_channel_key(caller)) is not None  # type: ignore[arg-type]
    hunt = TrunkHunt(group, _outbound_key(caller), number="3225551234", now=T0)  # type: ignore[arg-type]
    assert isinstance(hunt.start(now=T0)[0], StartLeg)
    assert trunk.in_use == 2  # not the inbound call's channel again
    assert isinstance(hunt.leg_ended(LegResult(486, 17), now=T0 + 1)[-1], Failed)
    assert trunk.in_use == 1  # the inbound call keeps its channel

    assert group.seize(_outbound_key(caller)) is not None  # type: ignore[arg-type]
    engine = SimpleNamespace(calls={"c1@x": caller})
    b2bua = B2BUA(engine, trunks)  # type: ignore[arg-type]
    assert b2bua.audit_channels() == 0 and b2bua.audit_channels() == 0
    assert trunk.in_use == 2
    engine.calls.clear()
    assert b2bua.audit_channels() == 0  # suspects, at the first audit
    assert b2bua.audit_channels() == 2 and trunk.in_use == 0
