"""The transfer/bridge call-control core (callengine.transfer) and the B2BUA shell that
carries out its commands, driven without sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callengine.b2bua import B2BUA
from callengine.call import SipError, TransferResult
from callengine.calls import CallBook
from callengine.dialler import Dialler
from callengine.limits import LogThrottle
from callengine.sip.registrar import Binding
from callengine.transfer import (
    AbandonLeg,
    AnswerCaller,
    Bridge,
    BridgeLeg,
    Capped,
    DialStage,
    Done,
    Ended,
    Expand,
    HangUp,
    LegTarget,
    Progress,
    Reject,
    RingStage,
    Side,
    Stage,
    StagePlanner,
    StartMedia,
    StopRelay,
    Transfer,
    Unringable,
    Unrouted,
    progress_action,
)
from config_cache.schema import OutboundRoute, RingGroup
from pri import FinalResult, TrunkPlan, load_trunks

# ---------------------------------------------------------------- Transfer


def test_max_forwards_exhausted_is_483_with_cause_25() -> None:
    core = Transfer(answered=False, max_forwards=0)
    assert core.start() == [
        Reject(483),
        Done(TransferResult(answered=False, status=483, cause=25, target=None)),
    ]
    assert core.expanded([Stage(20)]) == []  # over: nothing is rung


def test_an_answered_caller_is_never_rejected_for_max_forwards() -> None:
    assert Transfer(answered=True, max_forwards=0).start() == [Expand()]
    assert Transfer(answered=False, max_forwards=1).start() == [Expand()]
    assert Transfer(answered=False, max_forwards=None).start() == [Expand()]


def started(stages: Sequence[Stage], *, answered: bool = False) -> tuple[Transfer, list[Any]]:
    core = Transfer(answered=answered, max_forwards=70)
    assert core.start() == [Expand()]
    return core, core.expanded(stages)


USERS = Stage(20, (LegTarget("sip:100@h", ("h", 5060), label="user:100"),), label="user:100")
TRUNK = Stage(30, group=object(), number="0123", label="external:0123")  # type: ignore[arg-type]


def test_nobody_to_ring_is_480_no_user_responding() -> None:
    _, commands = started([])
    assert commands == [StopRelay(), Done(TransferResult(False, 480, 18, None))]


def test_stages_are_tried_in_order_user_stages_rung_trunk_stages_dialled() -> None:
    core, commands = started([USERS, TRUNK, USERS])
    assert commands == [RingStage(0)]
    assert core.stage_failed(0, 480, 19) == [DialStage(1)]
    assert core.stage_failed(1, 503, 34) == [RingStage(2)]
    assert core.stage_failed(2, 404, 1) == [
        StopRelay(),
        Done(TransferResult(False, 404, 1, None)),  # no busy: the last failure
    ]


@pytest.mark.parametrize("busy", [486, 600])
def test_busy_in_any_stage_makes_the_result_user_busy(busy: int) -> None:
    core, _ = started([USERS, TRUNK, USERS])
    core.stage_failed(0, 480, 19)
    core.stage_failed(1, busy, 21)
    assert core.stage_failed(2, 408, 102) == [
        StopRelay(),
        Done(TransferResult(False, 486, 17, None)),
    ]


def test_results_of_another_stage_or_after_the_end_change_nothing() -> None:
    core, _ = started([USERS, USERS])
    assert core.stage_failed(1, 486, 17) == []  # stage 1 is not under way
    assert core.stage_answered(1, "user:100") == []
    assert core.bridge_ended(16) == []  # nothing bridged
    assert core.stage_failed(0, 480, 19) == [RingStage(1)]
    assert core.stage_failed(0, 480, 19) == []  # stage 0 is over
    core.stage_failed(1, 480, 19)
    assert core.stage_failed(1, 486, 17) == []
    assert core.start() == []


def test_caller_leaving_mid_ring_stops_after_the_current_stage() -> None:
    core, _ = started([USERS, TRUNK])
    assert core.caller_gone() == []
    # the fork abandoned its legs and failed with the caller's cause
    assert core.stage_failed(0, 487, 16) == [
        StopRelay(),
        Done(TransferResult(False, 487, 16, None)),
    ]


def test_caller_gone_before_the_first_stage_rings_nobody() -> None:
    core = Transfer(answered=False, max_forwards=70)
    core.start()
    core.caller_gone()
    assert core.expanded([USERS]) == [StopRelay(), Done(TransferResult(False, 480, 18, None))]


def test_answer_is_bridged_and_an_unanswered_caller_hung_up_with_the_bridge_cause() -> None:
    core, _ = started([USERS, TRUNK])
    assert core.stage_failed(0, 486, 17) == [DialStage(1)]
    assert core.stage_answered(1, "carrier-a") == [BridgeLeg(1)]
    assert core.stage_failed(1, 500, 41) == []  # bridged already
    assert core.bridge_ended(31) == [
        HangUp(Side.CALLER, 31),
        Done(TransferResult(True, 200, 31, "carrier-a")),  # busy earlier does not matter
    ]


def test_a_caller_answered_before_the_transfer_stays_up_after_the_bridge() -> None:
    core, _ = started([USERS], answered=True)
    assert core.stage_answered(0, "user:100") == [BridgeLeg(0)]
    assert core.bridge_ended(16) == [Done(TransferResult(True, 200, 16, "user:100"))]


def test_a_leg_answering_after_the_caller_left_is_still_bridged() -> None:
    # the bridge then abandons it with the caller's cause (see Bridge)
    core, _ = started([USERS, USERS])
    core.caller_gone()
    assert core.stage_answered(0, "user:100") == [BridgeLeg(0)]


def reference(
    kinds: Sequence[bool],
    outcomes: Sequence[tuple[str, int, int]],
    *,
    leaves_after: int | None,
) -> tuple[list[Any], TransferResult]:
    """The stage loop as B2BUA.transfer wrote it before the core (the oracle)."""
    tried: list[Any] = []
    status, cause, busy = 480, 18, False
    for i, trunk in enumerate(kinds):
        if leaves_after is not None and i > leaves_after:
            break
        tried.append(DialStage(i) if trunk else RingStage(i))
        what, st_, ca = outcomes[i]
        if what == "answer":
            return tried, TransferResult(True, 200, ca, f"t{i}")
        status, cause = st_, ca
        busy = busy or st_ in (486, 600)
    if busy:
        status, cause = 486, 17
    return tried, TransferResult(False, status, cause, None)


outcome = st.one_of(
    st.tuples(
        st.just("fail"),
        st.sampled_from([404, 408, 480, 486, 487, 503, 600, 603]),
        st.integers(0, 127),
    ),
    st.tuples(st.just("answer"), st.just(200), st.integers(1, 127)),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), outcome), max_size=6),
    st.booleans(),
    st.one_of(st.none(), st.integers(-1, 6)),
)
def test_the_core_decides_as_the_old_stage_loop(
    stages: list[tuple[bool, tuple[str, int, int]]], answered: bool, leaves_after: int | None
) -> None:
    kinds = [trunk for trunk, _ in stages]
    outcomes = [o for _, o in stages]
    tried, expected = reference(kinds, outcomes, leaves_after=leaves_after)

    core = Transfer(answered=answered, max_forwards=70)
    assert core.start() == [Expand()]
    if leaves_after == -1:
        core.caller_gone()
    pending = core.expanded([Stage(1, group=object() if t else None) for t in kinds])  # type: ignore[arg-type]
    seen: list[Any] = []
    result: TransferResult | None = None
    while pending:
        command = pending.pop(0)
        assert result is None, "nothing after Done"
        if isinstance(command, (RingStage, DialStage)):
            seen.append(command)
            what, status, cause = outcomes[command.index]
            if leaves_after is not None and command.index >= leaves_after:
                pending += core.caller_gone()
            if what == "answer":
                pending += core.stage_answered(command.index, f"t{command.index}")
            else:
                pending += core.stage_failed(command.index, status, cause)
        elif isinstance(command, BridgeLeg):
            pending += core.bridge_ended(outcomes[command.index][2])
        elif isinstance(command, HangUp):
            assert command.side is Side.CALLER and not answered
            assert expected.answered and command.cause == expected.cause
        elif isinstance(command, StopRelay):
            assert not expected.answered
        elif isinstance(command, Done):
            result = command.result
    assert seen == tried
    assert result == expected


# ---------------------------------------------------------------- Bridge


def test_bridge_answers_the_caller_then_starts_media_with_the_record_reason() -> None:
    bridge = Bridge(answered=False, record="outbound route 9")
    assert bridge.start() == [AnswerCaller()]
    assert bridge.caller_ready() == [StartMedia("outbound route 9")]
    assert bridge.caller_ready() == []


def test_bridge_of_an_answered_caller_does_not_answer_again() -> None:
    bridge = Bridge(answered=True)
    assert bridge.start() == []
    assert bridge.caller_ready() == [StartMedia(None)]


@pytest.mark.parametrize(("end_cause", "cause"), [(0, 16), (487, 16), (31, 31)])
def test_caller_gone_before_the_bridge_abandons_the_leg_with_its_cause(
    end_cause: int, cause: int
) -> None:
    bridge = Bridge(answered=False)
    bridge.start()
    assert bridge.caller_gone(end_cause) == [AbandonLeg(cause), Ended(Side.CALLER, cause)]
    assert bridge.caller_ready() == []
    assert bridge.leg_gone(16) == []


def test_caller_hanging_up_mid_bridge_hangs_up_the_leg_with_the_callers_cause() -> None:
    bridge = Bridge(answered=False)
    bridge.start()
    bridge.caller_ready()
    assert bridge.caller_gone(17) == [HangUp(Side.LEG, 17), Ended(Side.CALLER, 17)]
    assert bridge.leg_gone(16) == []  # the BYE we sent ended it


def test_leg_hanging_up_mid_bridge_ends_it_with_the_legs_cause_caller_left_alone() -> None:
    bridge = Bridge(answered=True)
    bridge.caller_ready()
    assert bridge.leg_gone(34) == [Ended(Side.LEG, 34)]
    assert bridge.leg_gone(600) == []
    assert bridge.caller_gone(16) == []


def test_leg_gone_while_the_caller_is_answered_ends_the_bridge_at_once() -> None:
    bridge = Bridge(answered=False)
    bridge.start()
    assert bridge.leg_gone(603) == []  # a SIP status, not a cause: 16
    assert bridge.caller_ready() == [StartMedia(None), Ended(Side.LEG, 16)]


# ---------------------------------------------------------------- progress


@pytest.mark.parametrize(
    ("status", "body", "early", "single", "relaying", "expected"),
    [
        (180, False, True, True, True, Progress.RINGING),
        (183, False, True, True, True, Progress.RINGING),  # 183 without SDP
        (183, True, True, True, True, Progress.EARLY_MEDIA),
        (183, True, True, True, False, Progress.SESSION_PROGRESS),
        (183, True, True, False, True, Progress.RINGING),  # several phones: no early media
        (180, False, False, True, True, None),  # caller answered or gone
        (183, True, False, True, False, None),
    ],
)
def test_progress_relayed_to_the_caller(
    status: int, body: bool, early: bool, single: bool, relaying: bool, expected: Progress | None
) -> None:
    assert (
        progress_action(
            status, has_body=body, caller_early=early, early_media=single, relaying=relaying
        )
        is expected
    )


# ---------------------------------------------------------------- stages


@dataclass
class FakeTenant:
    ring_groups: Mapping[str, RingGroup] = field(default_factory=dict)
    users: Mapping[str, Any] = field(default_factory=dict)
    outbound_routes: tuple[OutboundRoute, ...] = ()

    def outbound_route(self, number: str) -> OutboundRoute | None:
        found = [r for r in self.outbound_routes if number.startswith(r.prefix)]
        return max(found, key=lambda r: len(r.prefix)) if found else None


@dataclass
class FakeDirectory:
    tenants: dict[str, FakeTenant]
    phones: dict[str, list[Binding]]
    asked: list[str] = field(default_factory=list)

    def tenant(self, tenant_id: str) -> Any:
        return self.tenants.get(tenant_id)

    def contacts_of(self, tenant: str, user: str) -> list[Binding]:
        self.asked.append(f"{tenant}/{user}")
        return self.phones.get(user, [])


def phone(contact: str, **kw: Any) -> Binding:
    return Binding(contact, expires_at=1e12, call_id="c", cseq=1, **kw)


def trunk_plan() -> TrunkPlan:
    return load_trunks(
        {
            "trunks": {
                "carrier-a": {
                    "carrier": "A",
                    "gateway": {"host": "127.0.0.1", "port": 5071},
                    "spans": [{"type": "E1"}],
                },
            },
            "trunk_groups": {"pstn": {"trunks": ["carrier-a"]}, "intl": {"trunks": ["carrier-a"]}},
            "outbound_routes": [{"prefix": "9", "strip": 1, "group": "pstn"}],
            "trusted_sources": ["127.0.0.1"],
        },
        source="test",
    )


PLAN = trunk_plan()


def directory() -> FakeDirectory:
    return FakeDirectory(
        tenants={
            "acme": FakeTenant(
                ring_groups={
                    "sales": RingGroup("sales", ("100", "200"), "parallel", 15.0),
                    "support": RingGroup("support", ("100", "300", "200"), "sequential", 10.0),
                },
                outbound_routes=(
                    OutboundRoute("0", "intl", strip=1, prepend="+"),
                    OutboundRoute("7", "nowhere"),
                ),
            )
        },
        phones={
            "100": [
                phone("sip:100@10.0.0.1:5062", source=("192.0.2.1", 40000), transport="tcp"),
                phone("sip:100@[2001:db8::1]:5070;transport=ws", params={"+sip.ice": None}),
            ],
            "200": [phone("sip:200@10.0.0.2")],
        },
    )


def planner(d: FakeDirectory | None = None, *, max_fork: int = 16) -> StagePlanner:
    return StagePlanner(
        directory() if d is None else d, PLAN, max_fork=max_fork, trunk_source="127.0.0.1"
    )


def legs(stage: Stage) -> list[tuple[str, tuple[str, int], str, str, bool]]:
    return [(t.uri, t.dest, t.transport, t.label, t.webrtc) for t in stage.legs]


PHONE_100 = [
    ("sip:100@10.0.0.1:5062", ("192.0.2.1", 40000), "TCP", "user:100", False),
    ("sip:100@[2001:db8::1]:5070;transport=ws", ("2001:db8::1", 5070), "UDP", "user:100", True),
]


def test_parallel_users_ring_together_in_one_first_stage() -> None:
    out = planner().expand(
        "acme", ["external:9555", "user:100", "ext:200"], strategy="parallel", timeout=25
    )
    first, trunk = out.stages
    assert (first.label, first.timeout, first.group) == ("parallel", 25, None)
    # where the REGISTER came from wins over the contact's host
    assert legs(first) == [
        *PHONE_100,
        ("sip:200@10.0.0.2", ("10.0.0.2", 5060), "UDP", "ext:200", False),
    ]
    assert (trunk.group, trunk.number, trunk.label) == (PLAN.groups["pstn"], "555", "external:9555")
    assert out.notes == ()


def test_sequential_users_one_stage_each_even_with_no_phone() -> None:
    out = planner().expand("acme", ["user:300", "user:100"], strategy="sequential", timeout=25)
    assert [(s.label, s.timeout, len(s.legs)) for s in out.stages] == [
        ("user:300", 25, 0),  # rings nobody: 480 for that stage
        ("user:100", 25, 2),
    ]


def test_group_strategies() -> None:
    p = planner()
    # parallel group within a parallel transfer: its phones join the parallel stage
    out = p.expand("acme", ["group:sales"], strategy="parallel", timeout=25)
    assert [(s.label, s.timeout, len(s.legs)) for s in out.stages] == [("parallel", 25, 3)]
    assert [t.label for t in out.stages[0].legs] == ["user:100", "user:100", "user:200"]
    # within a sequential transfer: one stage, the shorter of the two timeouts
    out = p.expand("acme", ["group:sales"], strategy="sequential", timeout=25)
    assert [(s.label, s.timeout, len(s.legs)) for s in out.stages] == [("group:sales", 15, 3)]
    out = p.expand("acme", ["group:sales"], strategy="sequential", timeout=5)
    assert out.stages[0].timeout == 5
    # sequential group: one stage per member that has phones, the group's timeout
    out = p.expand("acme", ["group:support"], strategy="parallel", timeout=25)
    assert [(s.label, s.timeout, [t.label for t in s.legs]) for s in out.stages] == [
        ("group:support", 10, ["user:100", "user:100"]),
        ("group:support", 10, ["user:200"]),  # 300 has no phone
    ]


def test_what_cannot_be_rung_is_noted_in_order() -> None:
    out = planner().expand(
        "acme",
        ["group:nope", "fax:1", "external:555", "user:100"],
        strategy="parallel",
        timeout=25,
    )
    assert out.notes == (Unringable("group:nope"), Unringable("fax:1"), Unrouted("555"))
    assert [s.label for s in out.stages] == ["parallel"]


def test_external_numbers_tenant_route_first_then_the_nodes() -> None:
    out = planner().expand(
        "acme", ["external:0441", "external:7123", "external:9123"], strategy="parallel", timeout=9
    )
    intl, node = out.stages
    assert (intl.group, intl.number, intl.timeout) == (PLAN.groups["intl"], "+441", 9)
    # the tenant's route for 7 names a group the node does not have: the node's routes,
    # which have nothing for 7
    assert out.notes == (Unrouted("7123"),)
    assert (node.group, node.number, node.label) == (PLAN.groups["pstn"], "123", "external:9123")


def test_external_routed_as_the_trusted_source_only() -> None:
    untrusted = StagePlanner(directory(), PLAN, max_fork=16, trunk_source="10.9.9.9")
    out = untrusted.expand("acme", ["external:9123"], strategy="parallel", timeout=9)
    assert out.stages == () and out.notes == (Unrouted("9123"),)


def test_no_directory_or_no_tenant_rings_no_phone() -> None:
    out = StagePlanner(None, PLAN, max_fork=16).expand(
        "acme", ["user:100", "group:sales"], strategy="parallel", timeout=9
    )
    assert out.stages == () and out.notes == (Unringable("group:sales"),)
    d = directory()
    out = planner(d).expand(None, ["user:100", "external:0441"], strategy="sequential", timeout=9)
    assert [len(s.legs) for s in out.stages] == [0] and out.notes == (Unrouted("0441"),)
    assert d.asked == []


def test_max_fork_caps_every_stage_keeping_the_first_targets() -> None:
    out = planner(max_fork=3).expand(
        "acme", ["group:sales", "user:100", "group:support"], strategy="parallel", timeout=9
    )
    first = out.stages[0]
    assert [t.label for t in first.legs] == ["user:100", "user:100", "user:200"]
    assert out.notes == (Capped("parallel", 5, 3),)
    assert all(len(s.legs) <= 3 for s in out.stages)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.lists(st.sampled_from(["100", "200", "300", "sales", "support"])))
def test_no_stage_rings_more_than_max_fork(cap: int, names: list[str]) -> None:
    targets = [f"group:{n}" if n in ("sales", "support") else f"user:{n}" for n in names]
    for strategy in ("parallel", "sequential"):
        capped = planner(max_fork=cap).expand("acme", targets, strategy=strategy, timeout=9)
        full = planner(max_fork=1000).expand("acme", targets, strategy=strategy, timeout=9)
        assert len(capped.stages) == len(full.stages)
        notes = []
        for short, long in zip(capped.stages, full.stages, strict=True):
            assert short.legs == long.legs[:cap]
            if len(long.legs) > cap:
                notes.append(Capped(long.label, len(long.legs), cap))
        assert capped.notes == tuple(notes)


# ---------------------------------------------------------------- the B2BUA shell


class FakeUA:
    def __init__(self) -> None:
        self.hangups: list[tuple[Any, int]] = []

    def hangup(self, session: Any, now: float, cause: int) -> None:
        self.hangups.append((session, cause))


def _nowhere(transport: str, host: str) -> tuple[str, int]:
    raise AssertionError("these tests place no call")


class FakeEngine:
    def __init__(self, max_fork: int = 16) -> None:
        self.config = SimpleNamespace(max_fork=max_fork)
        self.log_throttle = LogThrottle()
        self.ua = FakeUA()
        self.media_manager = None
        self.dialler = Dialler(self, CallBook(), local_for=_nowhere, max_fork=max_fork)  # type: ignore[arg-type]

    def now(self) -> float:
        return 100.0

    def flush(self) -> None:
        return None


class FakeCall:
    """What the shell reads and does to a caller or a leg."""

    def __init__(self, *, answered: bool = False, max_forwards: int = 70) -> None:
        self.session = SimpleNamespace(
            invite=SimpleNamespace(max_forwards=max_forwards), end_cause=0, remote_sdp=b"v=0"
        )
        self.status = 200 if answered else 0
        self.up = True
        self.tenant: str | None = "acme"
        self.recording = None
        self.variables: dict[str, str] = {}
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.did: list[tuple[str, Any]] = []
        self.target = LegTarget("sip:x", ("h", 1), label="user:100")
        self.outcome = SimpleNamespace(done=lambda: True)
        self.media = None
        self.answer_fails = False

    @property
    def answered(self) -> bool:
        return self.status == 200

    @property
    def active(self) -> bool:
        return self.up

    def end(self, cause: int) -> None:
        self.session.end_cause = cause
        self.up = False
        self.ended.set_result(None)

    def send_reject(self, status: int) -> None:
        self.did.append(("reject", status))
        self.up = False

    async def hangup(self, cause: int = 16) -> None:
        self.did.append(("hangup", cause))
        self.up = False

    async def answer(self, *, sdp: bytes | None = None) -> None:
        self.did.append(("answer", sdp))
        if self.answer_fails:
            self.up = False
            raise SipError(487, "call ended before answer")
        self.status = 200

    def start_recording(self) -> str:
        self.did.append(("record", None))
        return "rec"

    def record_far_side(self, media: Any) -> None:
        return None


class ScriptedB2BUA(B2BUA):
    """The real transfer/bridge shell; stages answered from a script."""

    def __init__(self, engine: FakeEngine, script: list[Any], d: FakeDirectory) -> None:
        super().__init__(engine, PLAN, directory=d)  # type: ignore[arg-type]
        self.script = script
        self.rung: list[tuple[str, str]] = []
        self.stopped = 0

    async def _ring_parallel(self, caller: Any, stage: Stage) -> Any:
        self.rung.append(("ring", stage.label))
        return self._next(caller)

    async def dial_trunks(self, caller: Any, group: Any, number: str, **kw: Any) -> Any:
        self.rung.append(("dial", number))
        return self._next(caller)

    def _next(self, caller: FakeCall) -> Any:
        step = self.script.pop(0)
        if step == "caller leaves":
            caller.end(16)
            return FinalResult(487, 16)
        if callable(step):
            return step(caller)
        return step

    def _stop_relay(self, caller: Any) -> None:
        self.stopped += 1


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_shell_483_rejects_and_rings_nobody() -> None:
    async def main() -> None:
        caller = FakeCall(max_forwards=0)
        b = ScriptedB2BUA(FakeEngine(), [], directory())
        result = await b.transfer(caller, ["user:100"], strategy="parallel", timeout=9)  # type: ignore[arg-type]
        assert result == TransferResult(False, 483, 25, None)
        assert caller.did == [("reject", 483)] and b.rung == [] and b.stopped == 0

    run(main())


def test_shell_busy_aggregation_and_relay_stopped(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        caller = FakeCall()
        b = ScriptedB2BUA(FakeEngine(), [FinalResult(486, 17), FinalResult(503, 34)], directory())
        targets = ["user:100", "external:9555", "bogus"]
        result = await b.transfer(caller, targets, strategy="sequential", timeout=9)  # type: ignore[arg-type]
        assert result == TransferResult(False, 486, 17, None)
        assert b.rung == [("ring", "user:100"), ("dial", "555")]
        assert b.stopped == 1 and caller.did == []  # the IVR / router answers the caller

    with caplog.at_level(logging.WARNING, logger="callengine.b2bua"):
        run(main())
    assert [r.getMessage() for r in caplog.records] == ["transfer target 'bogus' cannot be rung"]


def test_shell_caller_leaving_mid_ring_tries_no_later_stage() -> None:
    async def main() -> None:
        caller = FakeCall()
        b = ScriptedB2BUA(FakeEngine(), ["caller leaves"], directory())
        result = await b.transfer(
            caller, ["user:100", "user:200"], strategy="sequential", timeout=9
        )  # type: ignore[arg-type]
        assert result == TransferResult(False, 487, 16, None)
        assert b.rung == [("ring", "user:100")]

    run(main())


def test_shell_fork_capped_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        b = ScriptedB2BUA(FakeEngine(max_fork=1), [FinalResult(480, 19)], directory())
        await b.transfer(FakeCall(), ["group:sales"], strategy="parallel", timeout=9)  # type: ignore[arg-type]
        assert b.counters == {"fork_capped": 1}

    with caplog.at_level(logging.WARNING, logger="callengine.b2bua"):
        run(main())
    assert [r.getMessage() for r in caplog.records] == [
        "parallel: 3 targets, ringing the first 1 (max_fork; 0 more not logged)"
    ]


class FakePlan:
    trusted_sources = ()

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups

    def route_outbound(self, number: str, *, source_ip: str) -> None:
        return None


class Release:
    def __init__(self) -> None:
        self.released: list[str] = []

    def release(self, key: str) -> None:
        self.released.append(key)


@pytest.mark.parametrize("ender", ["leg", "caller"])
def test_shell_bridge_carries_the_hangup_across(ender: str) -> None:
    async def main() -> None:
        engine = FakeEngine()
        leg = FakeCall(answered=True)
        caller = FakeCall()
        b = ScriptedB2BUA(engine, [leg], directory())
        group = Release()
        b.plan = FakePlan({"pstn": group})  # type: ignore[assignment]
        leg.variables = {"trunk_group": "pstn", "channel_key": "k1"}
        task = asyncio.ensure_future(
            b.transfer(caller, ["user:100"], strategy="parallel", timeout=9)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0)
        assert caller.did == [("answer", b"v=0")]  # no media: the leg's SDP passed through
        (leg if ender == "leg" else caller).end(34)
        result = await task
        assert result == TransferResult(True, 200, 34, "user:100")
        assert group.released == ["k1"]  # the B-channel, whoever ended
        if ender == "leg":
            # the caller was answered by the bridge: it is hung up with the leg's cause
            assert caller.did[1:] == [("hangup", 34)] and engine.ua.hangups == []
        else:
            assert caller.did[1:] == [] and engine.ua.hangups == [(leg.session, 34)]

    run(main())


def test_shell_bridge_after_the_caller_left_abandons_the_leg() -> None:
    async def main() -> None:
        engine = FakeEngine()
        leg = FakeCall(answered=True)
        caller = FakeCall(answered=True)

        def leaves_as_the_leg_answers(c: FakeCall) -> FakeCall:
            c.end(487)  # a SIP status as the end cause: our BYE says 16
            return leg

        b = ScriptedB2BUA(engine, [leaves_as_the_leg_answers], directory())
        result = await b.transfer(caller, ["user:100"], strategy="parallel", timeout=9)  # type: ignore[arg-type]
        assert result == TransferResult(True, 200, 16, "user:100")
        assert engine.ua.hangups == [(leg.session, 16)] and caller.did == []

    run(main())


def test_shell_answered_caller_stays_up_when_the_leg_hangs_up() -> None:
    async def main() -> None:
        leg = FakeCall(answered=True)
        caller = FakeCall(answered=True)
        b = ScriptedB2BUA(FakeEngine(), [leg], directory())
        task = asyncio.ensure_future(
            b.transfer(caller, ["user:100"], strategy="parallel", timeout=9)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0)
        leg.end(16)
        assert await task == TransferResult(True, 200, 16, "user:100")
        assert caller.did == [] and caller.active  # back to the IVR

    run(main())


def test_shell_outbound_bridge_records_from_the_answer() -> None:
    async def main() -> None:
        leg = FakeCall(answered=True)
        caller = FakeCall()
        caller.tenant = None
        b = ScriptedB2BUA(FakeEngine(), [], directory())
        task = asyncio.ensure_future(b._bridge(caller, leg, record="outbound route 9"))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert caller.did == [("answer", b"v=0"), ("record", None)]
        caller.end(31)
        assert await task == 31

    run(main())


def test_shell_answer_failing_abandons_the_leg() -> None:
    async def main() -> None:
        engine = FakeEngine()
        leg = FakeCall(answered=True)
        caller = FakeCall()
        caller.answer_fails = True
        b = ScriptedB2BUA(engine, [], directory())
        assert await b._bridge(caller, leg) == 16  # type: ignore[arg-type]
        assert engine.ua.hangups == [(leg.session, 16)]

    run(main())
