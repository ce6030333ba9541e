"""The back-to-back user agent: trunk routing, failover, ringing users, bridging.

Theory of operation
-------------------
Decisions live in sans-IO cores: :mod:`pri` (which trunk next, failover or stop,
breaker state, Q.850 causes), :mod:`callengine.hunt` (which way a new call goes:
``route_call``; one trunk-group dial driving ``pri.CallAttempts``: ``TrunkHunt``),
:mod:`callengine.fork` (ringing phones together) and :mod:`callengine.transfer`
(targets -> stages, stage after stage, the bridge and the hang-up crossing it). This
module is the thin asyncio shell that turns their commands into SIP legs
(drachtio's ``createB2BUA`` idea: failover decided by status code)::

    caller INVITE --node's router--> B2BUA.route(call): route_call(plan, ...)
        FromTrunk (a gateway, one of its DIDs) -> seize a B-channel, tenant route
        ToTrunk (trusted or authenticated)     -> _outbound: dial_trunks, _bridge
        Forbidden (a trunk prefix, untrusted)  -> 403, counted as toll fraud
        TenantNumber / None                    -> the tenant routes
    IVR ``transfer`` / user and group routes  -> Engine.transfer_handler = B2BUA.transfer
        Transfer: Expand -> RingStage (a Fork) / DialStage (dial_trunks) ...
                  -> BridgeLeg (_bridge: a Bridge) -> HangUp / Done(TransferResult)

    dial_trunks: hunt = TrunkHunt(group, key, number=..., refused=policy verdict)
        hunt.start() -> Refused + Failed | StartLeg: INVITE leg to the trunk's gateway
        the leg's 1xx          -> hunt.provisional; 180/183 relayed to the caller
        the leg's final result -> hunt.leg_ended(_leg_result(leg))
        the caller hangs up    -> hunt.caller_left; a deadline -> hunt.handle_timer
        a trunk goes down      -> hunt.check_health
        commands: AbandonAttempt (CANCEL), RecordAttempt / RecordSkip (call log,
        metrics), ReportHealth, StopRelay, StartLeg (next trunk),
        Connected (-> bridge) | Failed (-> the caller's final response)

A leg is a :class:`~callengine.call.Call` of its own (so the engine's SIP events
reach it) that writes no call log: the caller's call log carries the leg's
``trunk_attempts``. When the engine has no media (``media: false``) the B2BUA
passes SDP through unchanged (media flows end to end, no RTP socket per leg);
with media it answers each side itself and relays RTP between the two legs'
sessions, transcoding PCMU <-> PCMA only when their codecs differ.

Hang-up crosses the bridge with its Q.850 cause (RFC 3326 ``Reason`` read from the
peer's BYE/CANCEL/final response, written on ours). Health probes (SIP OPTIONS)
run from one timer re-armed from ``HealthBoard.next_deadline()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pri import (
    Attempt,
    DialPolicy,
    FinalResult,
    HealthBoard,
    HealthChanged,
    HealthState,
    Outcome,
    SendProbe,
    Trunk,
    TrunkGroup,
    TrunkPlan,
    cause_for_status,
)

from ._ring import fork_outcomes
from .call import Call, SipError, TransferResult
from .fork import Abandon, Connect, Fail, Fork
from .hunt import (
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
    ToTrunk,
    TrunkHunt,
    route_call,
)
from .recording import record_bridged, start_recording_safely
from .sip import sdp as sdpmod
from .sip.errors import SipError as ProtocolError
from .sip.message import Response
from .sip.useragent import InviteSession, SessionState
from .transfer import (
    AbandonLeg,
    Bridge,
    BridgeCommand,
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
    TransferCommand,
    Unringable,
    Unrouted,
    leg_targets,
    progress_action,
    q850,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from media.session import RtpSession

    from .engine import Engine, Handler
    from .sip.registrar import Binding

log = logging.getLogger("callengine.b2bua")

__all__ = ["B2BUA", "Directory", "LegTarget", "TrunkCollector", "leg_targets"]

# Q.850 cause of our own CANCEL/BYE when the caller's side ended normally (ITU-T Q.850
# table 1); a trunk attempt's causes are callengine.hunt's (AbandonAttempt)
CAUSE_NORMAL = 16
DEFAULT_RING_TIMEOUT = 120.0
"""Seconds an outbound trunk call may ring before the caller gets 480."""
AUDIT_INTERVAL = 30.0  # seconds between checks of B-channel accounting against live calls


class Directory(Protocol):
    """What the B2BUA asks of the node it serves (the node implements it)."""

    def owns_number(self, number: str) -> bool:
        """A tenant (not the default route) owns ``number``: it never leaves by trunk."""
        ...

    def tenant(self, tenant_id: str) -> Any:
        """The tenant's configuration (ring groups, external routes), or None."""
        ...

    def contacts_of(self, tenant: str, user: str) -> list[Binding]:
        """The user's registered phones."""
        ...


class _Leg(Call):
    """An outgoing leg: a Call whose progress reaches the B2BUA and that logs nothing."""

    def __init__(self, engine: Engine, session: InviteSession, target: LegTarget) -> None:
        super().__init__(engine, session, direction="outbound")
        self.logged = False  # one call log per bridged call: the caller's
        self.target = target
        self.webrtc = target.webrtc
        self.progressed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_progress: Callable[[_Leg, Response], None] | None = None
        self.early_sdp: bytes | None = None

    def _on_progress(self, response: Response) -> None:
        if not self.progressed.done():
            self.progressed.set_result(None)
        if response.body:
            self.early_sdp = response.body
        if self.on_progress is not None:
            self.on_progress(self, response)


class B2BUA:
    """Trunks, failover and bridging for one Engine (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        plan: TrunkPlan,
        *,
        directory: Directory | None = None,
        registry: CollectorRegistry | None = None,
        media_relay: bool | None = None,
        board: Callable[[float], HealthBoard] | None = None,
    ) -> None:
        self.engine = engine
        self._make_board = board
        """Makes the health board at ``attach`` (given ``now``): a worker's view of
        the front's board in a multi-worker node; else the B2BUA's own."""
        self.plan = plan
        self.directory = directory
        self.media_relay = media_relay
        """``None``: relay RTP whenever the engine has media; ``False``: pass SDP through."""
        self.board: HealthBoard | None = None
        self.health_changes: list[HealthChanged] = []
        """Breaker changes since start (most recent last, capped)."""
        self.counters: dict[str, int] = {}
        """Plain counters (exported at scrape time, see :class:`TrunkCollector`)."""
        self.attempts_by_trunk: dict[tuple[str, str], int] = {}
        self.changes_by_trunk: dict[tuple[str, str], int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._wall_offset = 0.0
        self._relays: dict[int, tuple[_Leg, Any]] = {}
        self._audit_timer: asyncio.TimerHandle | None = None
        self._suspects: set[str] = set()
        self._down: asyncio.Future[None] | None = None
        """Done when a trunk goes down: wakes the attempts waiting on it."""
        if registry is not None:
            registry.register(TrunkCollector(self))

    # ------------------------------------------------------------- install
    def attach(self) -> None:
        """Set the engine's transfer handler; probes start once the engine listens."""
        self.engine.transfer_handler = self.transfer
        self._loop = asyncio.get_running_loop()
        self._wall_offset = time.time() - self._loop.time()
        now = self._loop.time()
        if self._make_board is not None:
            self.board = self._make_board(now)
        else:
            self.board = HealthBoard(self.plan.trunks.values(), now=now)
        self._loop.call_soon(self._start_when_ready)
        self._audit_soon()

    def _start_when_ready(self) -> None:
        if self._closed or self._loop is None:
            return
        transports = self.engine.transports
        if not self.engine.started or transports is None or not transports.bound:
            self._loop.call_later(0.05, self._start_when_ready)
            return
        self._arm()

    def close(self) -> None:
        """Stop probing (the engine's calls are ended by ``Engine.stop``)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._audit_timer is not None:
            self._audit_timer.cancel()
            self._audit_timer = None

    def _audit_soon(self) -> None:
        if self._closed or self._loop is None:
            return
        self._audit_timer = self._loop.call_later(AUDIT_INTERVAL, self._audit_tick)

    def _audit_tick(self) -> None:
        self._audit_timer = None
        self.audit_channels()
        self._audit_soon()

    def audit_channels(self) -> int:
        """Check channel accounting against live calls: a B-channel held for a call the
        engine no longer has, at two audits in a row, is released (logged and counted as
        ``channels_reclaimed``). Returns how many were released."""
        live = {
            key
            for call in self.engine.calls.values()
            for key in (_channel_key(call), _outbound_key(call))
        }
        suspects: set[str] = set()
        released = 0
        for trunk in self.plan.trunks.values():
            for key in trunk.holders():
                if key in live:
                    continue
                if key not in self._suspects:
                    suspects.add(key)
                    continue
                freed = [group.release(key) for group in self.plan.groups.values()]
                if trunk.release(key) is not None or any(freed):
                    released += 1
                    log.error(
                        "B-channel on trunk %s held by ended call %s: released", trunk.name, key
                    )
        self._suspects = suspects
        if released:
            self._count("channels_reclaimed", released)
        return released

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # ------------------------------------------------------------- health
    def _arm(self) -> None:
        if self._closed or self.board is None or self._loop is None or self.engine._ua is None:
            return
        deadline = self.board.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None and self.board is not None
        self._timer = None
        self._timer_at = None
        for item in self.board.handle_timer(self._loop.time()):
            if isinstance(item, SendProbe):
                self.send_probe(item)
            else:
                self.health_changed(item)
        self._arm()

    def send_probe(self, probe: SendProbe) -> None:
        """OPTIONS to a trunk's gateway; the result goes to the health board."""
        engine = self.engine
        assert engine.transports is not None
        transport = probe.transport.upper()
        self._count("probes_sent")

        def on_result(response: Response | None, now: float) -> None:
            assert self.board is not None
            status = response.status if response is not None else None
            self._health_events(
                self.board.on_probe_response(
                    probe.trunk, probe.probe_id, status, now=now, transport_error=status is None
                )
            )

        try:
            local = engine.transports.local_for(transport, probe.host)
            engine.ua.send_options(
                probe.request_uri,
                engine.now(),
                dest=(probe.host, probe.port),
                local=local,
                on_result=on_result,
                transport=transport,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            log.warning("cannot probe trunk %s: %s", probe.trunk, exc)
            return
        engine.flush()

    def _health_events(self, events: Sequence[HealthChanged]) -> None:
        for event in events:
            self.health_changed(event)
        if events:
            self._arm()

    def health_changed(self, event: HealthChanged, *, log_it: bool = True) -> None:
        """A trunk changed state: log it (unless the front of a multi-worker node
        did), count it, and wake the calls ringing on a trunk that went down."""
        level = logging.WARNING if event.new is HealthState.DOWN else logging.INFO
        if not log_it:
            level = logging.DEBUG
        log.log(
            level,
            "trunk %s %s -> %s: %s",
            event.trunk,
            event.old.value,
            event.new.value,
            event.reason,
        )
        if event.new is HealthState.DOWN and self._down is not None:
            if not self._down.done():
                self._down.set_result(None)
            self._down = None
        key = (event.trunk, event.new.value)
        self.changes_by_trunk[key] = self.changes_by_trunk.get(key, 0) + 1
        self.health_changes.append(event)
        del self.health_changes[:-100]

    def collect_metrics(self) -> dict[str, Any]:
        """A snapshot of trunk state and counters (what :class:`TrunkCollector` exports)."""
        trunks: dict[str, Any] = {}
        for name, trunk in self.plan.trunks.items():
            state = self.board.state(name).value if self.board is not None else "up"
            trunks[name] = {
                "state": state,
                "in_use": trunk.in_use,
                "capacity": trunk.capacity,
                "attempts": {
                    outcome: n for (t, outcome), n in self.attempts_by_trunk.items() if t == name
                },
            }
        return {"trunks": trunks, "counters": dict(self.counters)}

    # ------------------------------------------------------------- routing
    def route(self, call: Call, tenant_route: Callable[[Call], Handler | None]) -> Handler | None:
        """Trunk routing for a new call; ``None`` leaves it to the tenant routes.

        The decision is :func:`~callengine.hunt.route_call`'s; this maps it to a
        handler. ``tenant_route`` is the node's own number -> tenant routing (used for
        calls that arrive from a trunk, inside a B-channel seizure).
        """
        source_ip = call.source[0] if call.source else ""
        number = call.callee
        decision = route_call(
            self.plan,
            number,
            source_ip=source_ip,
            authenticated="auth_user" in call.variables,  # Digest, by the node (issue 11)
            owns_number=self._tenant_number,
        )
        if isinstance(decision, FromTrunk):
            return self._inbound(decision.trunk, tenant_route(call))
        if isinstance(decision, ToTrunk):
            group, dialled, record = decision.group, decision.number, decision.record

            async def outbound(call: Call) -> None:
                await self._outbound(call, group, dialled, record=record)

            return outbound
        if isinstance(decision, Forbidden):
            # would leave through a trunk, from a source that may not: toll fraud
            self._count("toll_fraud_rejected")
            log.warning(
                "403 for %s -> %s: a trunk route this source may not use", source_ip, number
            )
            status, reason = decision.status, decision.reason

            async def forbidden(call: Call) -> None:
                call.send_reject(status, reason)

            return forbidden
        return None  # TenantNumber, or nothing to do with trunks

    def _tenant_number(self, number: str) -> bool:
        return self.directory is not None and self.directory.owns_number(number)

    def _inbound(self, trunk: Trunk, inner: Handler | None) -> Handler:
        async def from_trunk(call: Call) -> None:
            key = _channel_key(call)
            channel = trunk.seize(key)
            self._count("inbound_calls")
            if channel is None:
                self._count("inbound_all_busy")
                call.send_reject(503, cause=34)
                return
            call.trunk_attempts.append(
                {
                    "direction": "inbound",
                    "trunk": trunk.name,
                    "carrier": trunk.carrier,
                    "span": channel.span,
                    "channel": channel.number,
                }
            )
            try:
                if inner is None:
                    call.send_reject(404)
                    return
                await inner(call)
            finally:
                trunk.release(key)

        return from_trunk

    async def _outbound(
        self, call: Call, group: TrunkGroup, number: str, *, record: str | None = None
    ) -> None:
        """Dial ``number`` through ``group`` and bridge; ``record`` (why, for the log):
        the route records its calls, from the bridge (the carrier's answer) on."""
        if call.session.invite.max_forwards == 0:
            call.send_reject(483)
            return
        self._count("outbound_calls")
        result = await self.dial_trunks(call, group, number, timeout=DEFAULT_RING_TIMEOUT)
        if isinstance(result, FinalResult):
            self._stop_relay(call)
            call.send_reject(result.status, cause=result.cause)
            return
        cause = await self._bridge(call, result, record=record)
        if call.active:
            await call.hangup(cause)

    # ------------------------------------------------------------- legs
    def _relaying(self) -> bool:
        if self.media_relay is False:
            return False
        return self.engine.media_manager is not None

    async def _start_leg(self, caller: Call, target: LegTarget) -> _Leg:
        """INVITE ``target`` for ``caller``: our offer when relaying media (the caller's
        codec first, so that no transcoding is needed if the far end takes it), else
        the caller's SDP passed through. 487 if the caller is gone meanwhile."""
        relaying = self._relaying()
        hops = caller.session.invite.max_forwards
        leg = await self.engine.place_call(
            target.uri,
            dest=target.dest,
            from_user=caller.caller or "anonymous",
            from_display=caller.caller_display,
            transport=target.transport,
            credentials=target.credentials,
            max_forwards=max(0, (hops or 70) - 1),
            sdp=None if relaying else (caller.session.invite.body or None),
            prefer=self._caller_codec(caller) if relaying else None,
            make_call=lambda session: _Leg(self.engine, session, target),
            proceed=lambda: caller.active or caller.answered,
        )
        assert isinstance(leg, _Leg)
        return leg

    def _caller_codec(self, caller: Call) -> str | None:
        """The codec the caller uses (negotiated, or what we would pick from its offer)."""
        if caller.sdp_answer is not None:
            return caller.sdp_answer.codec.name
        if not caller.session.invite.body:
            return None
        try:
            offer = sdpmod.SessionDescription.parse(caller.session.invite.body)
        except ValueError:
            return None
        answer = sdpmod.negotiate(offer, self.engine.codecs)
        return answer.codec.name if answer is not None else None

    def _abandon(self, leg: _Leg, cause: int) -> None:
        """We no longer want this leg: CANCEL (or BYE), and forget its result and its
        progress (a late 180/183 must neither stop the next trunk attempt's setup timer
        nor reach the caller)."""
        leg.on_progress = None
        self.engine.dialler.abandon(leg, cause)

    def _progress_relay(
        self, caller: Call, *, early_media: bool
    ) -> Callable[[_Leg, Response], None]:
        """Relay 180 / 183 from a leg to a caller that has not been answered."""

        def relay(leg: _Leg, response: Response) -> None:
            action = progress_action(
                response.status,
                has_body=bool(response.body),
                caller_early=not caller.answered and caller.session.state is SessionState.EARLY,
                early_media=early_media,
                relaying=self._relaying(),
            )
            if action is None:
                return
            engine = self.engine
            if action is Progress.EARLY_MEDIA:
                loop = asyncio.get_running_loop()
                loop.create_task(self._early_media(caller, leg, response.body))
                return
            if action is Progress.SESSION_PROGRESS:
                engine.ua.provisional(caller.session, engine.now(), 183, response.body)
            else:
                engine.ua.provisional(caller.session, engine.now(), 180)
            engine.flush()

        return relay

    async def _early_media(self, caller: Call, leg: _Leg, body: bytes) -> None:
        leg.accept_answer(body)
        if caller.answered or not caller.active:  # it changed while this task waited
            return
        await caller.ring(early_media=True)
        self._start_relay(caller, leg)

    # ------------------------------------------------------------- trunks
    def dial_policy(self, caller: Call) -> DialPolicy:
        """The node's dial policy, with the caller's tenant's overrides."""
        policy = self.plan.dial_policy
        if caller.tenant and self.directory is not None:
            tenant = self.directory.tenant(caller.tenant)
            overrides = getattr(tenant, "dial_policy", None)
            if overrides:
                policy = policy.override(overrides)
        return policy

    async def dial_trunks(
        self,
        caller: Call,
        group: TrunkGroup,
        number: str,
        *,
        timeout: float,
        label: str = "",
    ) -> _Leg | FinalResult:
        """Hunt ``group`` for ``number`` with failover; the answered leg or the failure.

        The decisions are a :class:`~callengine.hunt.TrunkHunt`'s (the dial policy's
        verdict first, then :class:`pri.CallAttempts`'); this starts the legs, waits,
        feeds it what happened and carries out its commands. The answered leg holds
        its B-channel until :meth:`_bridge` ends.
        """
        loop = asyncio.get_running_loop()
        hunt = TrunkHunt(
            group,
            _outbound_key(caller),
            number=number,
            now=loop.time(),
            health=self.board,
            ring_timeout=timeout,
            refused=self.dial_policy(caller).check(number),
        )
        leg: _Leg | None = None
        try:
            pending: deque[HuntCommand] = deque(hunt.start(now=loop.time()))
            while True:
                while pending:
                    command = pending.popleft()
                    if isinstance(command, Connected):
                        assert leg is not None
                        leg.variables["trunk_group"] = command.group
                        leg.variables["channel_key"] = command.call_id
                        return leg
                    if isinstance(command, Failed):
                        return command.result
                    if isinstance(command, StartLeg):
                        started = await self._start_trunk_leg(caller, hunt, command)
                        if isinstance(started, SipError):
                            leg = None
                            cause = started.cause or cause_for_status(started.status)
                            pending += hunt.not_sent(started.status, cause, now=loop.time())
                        elif isinstance(started, LegResult):
                            leg = None
                            pending += hunt.leg_ended(
                                started,
                                now=loop.time(),
                                caller_present=caller.active or caller.answered,
                            )
                        else:
                            leg = started
                    else:
                        self._hunt_command(caller, leg, command, number, label)
                assert leg is not None
                pending += await self._attempt(caller, hunt, leg)
        finally:
            # an exception or cancellation: no channel stays seized, skips are recorded
            for command in hunt.close():
                self._hunt_command(caller, leg, command, number, label)

    def _hunt_command(
        self, caller: Call, leg: _Leg | None, command: HuntCommand, number: str, label: str
    ) -> None:
        """Carry out one of a :class:`~callengine.hunt.TrunkHunt`'s commands (those
        that start a leg or end the hunt are :meth:`dial_trunks`')."""
        if isinstance(command, AbandonAttempt):
            assert leg is not None
            self._abandon(leg, command.cause)
        elif isinstance(command, RecordAttempt):
            self._record(caller, command.attempt, number, label)
        elif isinstance(command, ReportHealth):
            self._health_events(command.events)
        elif isinstance(command, StopRelay):
            self._stop_relay(caller)  # early media of a failed attempt
        elif isinstance(command, RecordSkip):
            skip = command.skip
            caller.trunk_attempts.append(
                {"trunk": skip.trunk, "outcome": "skipped", "reason": skip.why}
            )
        elif isinstance(command, Refused):
            # before any channel is seized: a number a carrier cannot take, or one
            # the toll-fraud rules refuse
            verdict = command.verdict
            self._count(f"dial_refused_{verdict.reason}")
            log.warning(
                "%d for %s -> %r from %s: %s",
                verdict.status,
                caller.caller,
                number,
                caller.source[0] if caller.source else "?",
                verdict.reason.replace("_", " "),
            )

    async def _start_trunk_leg(
        self, caller: Call, hunt: TrunkHunt, command: StartLeg
    ) -> _Leg | LegResult | SipError:
        """Send one attempt's INVITE (its 1xx go to ``hunt`` and are relayed to the
        caller); the leg, or the result to report when it was not sent: the engine
        kept it back (the caller gone), it could not be sent, or our side could not
        make it (no RTP port: the :class:`SipError`, for ``hunt.not_sent``)."""
        loop = asyncio.get_running_loop()
        self._count("trunk_attempts")
        try:
            leg = await self._start_leg(caller, command.leg)
        except SipError as exc:
            if exc.status == 487:
                return NOT_SENT
            log.warning("cannot make the INVITE to trunk %s: %s", command.target.trunk.name, exc)
            return exc
        except (OSError, RuntimeError, ValueError, ProtocolError) as exc:
            log.warning("cannot send INVITE to trunk %s: %s", command.target.trunk.name, exc)
            return NO_RESULT

        def on_progress(leg: _Leg, response: Response) -> None:
            hunt.provisional(response.status, now=loop.time())
            relay(leg, response)

        relay = self._progress_relay(caller, early_media=True)
        leg.on_progress = on_progress
        return leg

    async def _attempt(self, caller: Call, hunt: TrunkHunt, leg: _Leg) -> list[HuntCommand]:
        """Wait for the current attempt's end: the leg's result, the caller leaving, a
        deadline of ``hunt`` or its trunk going down; what ``hunt`` makes of it."""
        loop = asyncio.get_running_loop()
        while True:
            until = hunt.next_deadline()
            if self._down is None:
                self._down = loop.create_future()
            waiters: set[asyncio.Future[Any]] = {leg.outcome, caller.ended, self._down}
            if hunt.setup_pending:
                waiters.add(leg.progressed)  # a 1xx stops the setup timer: wait anew
            delay = None if until is None else until - loop.time()
            if delay is None or delay > 0:
                await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            now = loop.time()
            present = caller.active or caller.answered
            if leg.outcome.done():
                return hunt.leg_ended(_leg_result(leg), now=now, caller_present=present)
            if caller.ended.done():
                end_cause = caller.session.end_cause
                return hunt.caller_left(end_cause, answered=caller.answered, now=now)
            # ringing on a gateway found dead meanwhile, or a deadline passed
            commands = hunt.check_health(now, caller_present=present) or hunt.handle_timer(
                now, caller_present=present
            )
            if commands:
                return commands

    def _record(self, caller: Call, attempt: Attempt, number: str, label: str) -> None:
        key = (attempt.trunk, attempt.outcome.value)
        self.attempts_by_trunk[key] = self.attempts_by_trunk.get(key, 0) + 1
        entry: dict[str, Any] = {
            "index": attempt.index,
            "trunk": attempt.trunk,
            "carrier": attempt.carrier,
            "span": attempt.span,
            "channel": attempt.channel,
            "number": number,
            "started": round(attempt.started + self._wall_offset, 3),
            "ended": round(attempt.ended + self._wall_offset, 3),
            "ended_by": attempt.ended_by.value,
            "status": attempt.status,
            "cause": attempt.cause,
            "reason": attempt.reason,
            "outcome": attempt.outcome.value,
        }
        if label:
            entry["target"] = label
        caller.trunk_attempts.append(entry)
        routine = attempt.index == 1 and attempt.outcome is Outcome.CONNECTED
        log.log(
            logging.DEBUG if routine else logging.INFO,
            "trunk %s attempt %d for %s: %s cause %d -> %s",
            attempt.trunk,
            attempt.index,
            number,
            attempt.status if attempt.status is not None else attempt.ended_by.value,
            attempt.cause,
            attempt.outcome.value,
        )

    # ------------------------------------------------------------- bridge
    async def _bridge(self, caller: Call, leg: _Leg, *, record: str | None = None) -> int:
        """Carry out a :class:`~callengine.transfer.Bridge`: answer the caller, relay
        media, carry the hangup across. ``record``: start recording the call once
        bridged (why, for the log line when it cannot be). Returns the Q.850 cause of
        whichever side ended the call. The leg's B-channel is released at the end."""
        bridge = Bridge(answered=caller.answered, record=record)
        try:
            ready = True
            for _ in bridge.start():  # AnswerCaller: our SDP when relaying, else the leg's
                sdp = None if self._relaying() else (leg.session.remote_sdp or b"")
                try:
                    await caller.answer(sdp=sdp)
                except SipError:
                    ready = False
            if ready and caller.answered and caller.active:
                commands = bridge.caller_ready()
            else:
                commands = bridge.caller_gone(caller.session.end_cause)
            while True:
                for command in commands:
                    if isinstance(command, Ended):
                        return command.cause
                    self._bridge_command(caller, leg, command)
                await asyncio.wait({caller.ended, leg.ended}, return_when=asyncio.FIRST_COMPLETED)
                if caller.ended.done():
                    commands = bridge.caller_gone(caller.session.end_cause)
                else:
                    commands = bridge.leg_gone(leg.session.end_cause)
        finally:
            self._stop_relay(caller)
            group = leg.variables.get("trunk_group")
            if group is not None:
                self.plan.groups[group].release(leg.variables["channel_key"])

    def _bridge_command(self, caller: Call, leg: _Leg, command: BridgeCommand) -> None:
        """Carry out one command of a bridge under way (``AnswerCaller`` comes only
        from ``Bridge.start``, awaited in :meth:`_bridge`; ``Ended`` ends it there)."""
        if isinstance(command, AbandonLeg):
            self._abandon(leg, command.cause)
        elif isinstance(command, StartMedia):
            self._start_relay(caller, leg)
            if command.record is not None and caller.recording is None:
                start_recording_safely(caller, command.record)
            if self.directory is not None and caller.tenant is not None:
                record_bridged(caller, leg.target.label, self.directory.tenant(caller.tenant))
        elif isinstance(command, HangUp) and command.side is Side.LEG and leg.active:
            self.engine.ua.hangup(leg.session, self.engine.now(), command.cause)
            self.engine.flush()

    def _start_relay(self, caller: Call, leg: _Leg) -> None:
        """Relay RTP both ways between the caller's and ``leg``'s sessions (idempotent)."""
        a: RtpSession | None = caller.media
        b: RtpSession | None = leg.media
        if a is None or b is None:
            return
        current = self._relays.get(id(caller))
        if current is not None:
            if current[0] is leg:
                return
            self._stop_relay(caller)
        self._relays[id(caller)] = (leg, self.engine.media_manager.bridge(a, b))
        caller.record_far_side(b)  # a call recording's right channel: the leg's voice

    def _stop_relay(self, caller: Call) -> None:
        entry = self._relays.pop(id(caller), None)
        if entry is not None:
            caller.record_far_side(None)
            self.engine.media_manager.unbridge(entry[1])

    # ------------------------------------------------------------- transfers
    async def transfer(
        self, call: Call, targets: Sequence[str], *, strategy: str, timeout: float
    ) -> TransferResult:
        """``Engine.transfer_handler``: ring users, groups, external numbers and bridge.

        ``user:100`` / ``ext:100`` ring the user's registered phones in parallel;
        ``group:NAME`` rings its members (its own strategy and timeout);
        ``external:NUMBER`` leaves through the tenant's outbound route's trunk group.
        ``strategy`` ``parallel`` rings all targets at once, ``sequential`` one
        after another, ``timeout`` seconds each. The decisions are a
        :class:`~callengine.transfer.Transfer`'s; this carries out its commands.
        """
        core = Transfer(answered=call.answered, max_forwards=call.session.invite.max_forwards)
        pending: deque[TransferCommand] = deque(core.start())
        stages: tuple[Stage, ...] = ()
        leg: _Leg | None = None
        while pending:
            command = pending.popleft()
            if isinstance(command, Done):
                return command.result
            if isinstance(command, Reject):
                call.send_reject(command.status)
            elif isinstance(command, Expand):
                stages = self._expand(call, targets, strategy, timeout)
                if not call.active:
                    pending += core.caller_gone()
                pending += core.expanded(stages)
            elif isinstance(command, (RingStage, DialStage)):
                stage = stages[command.index]
                result: _Leg | FinalResult
                if isinstance(command, DialStage):
                    assert stage.group is not None
                    result = await self.dial_trunks(
                        call, stage.group, stage.number, timeout=stage.timeout, label=stage.label
                    )
                else:
                    result = await self._ring_parallel(call, stage)
                if not call.active:
                    pending += core.caller_gone()
                if isinstance(result, FinalResult):
                    pending += core.stage_failed(command.index, result.status, result.cause)
                else:
                    leg = result
                    pending += core.stage_answered(command.index, leg.target.label)
            elif isinstance(command, BridgeLeg):
                assert leg is not None
                pending += core.bridge_ended(await self._bridge(call, leg))
            elif isinstance(command, HangUp):
                if command.side is Side.CALLER and call.active:
                    await call.hangup(command.cause)
            elif isinstance(command, StopRelay):
                self._stop_relay(call)
        raise AssertionError("a transfer ends with Done")

    def _expand(
        self, call: Call, targets: Sequence[str], strategy: str, timeout: float
    ) -> tuple[Stage, ...]:
        """The transfer's stages (:class:`~callengine.transfer.StagePlanner`), its
        notes logged and counted."""
        planner = StagePlanner(
            self.directory,
            self.plan,
            max_fork=self.engine.config.max_fork,
            trunk_source=_first_trusted(self.plan),
        )
        expansion = planner.expand(call.tenant, targets, strategy=strategy, timeout=timeout)
        for note in expansion.notes:
            if isinstance(note, Unringable):
                log.warning("transfer target %r cannot be rung", note.target)
            elif isinstance(note, Unrouted):
                log.warning("no trunk route for external:%s", note.number)
            elif isinstance(note, Capped):
                self._fork_capped(note)
        return expansion.stages

    def _fork_capped(self, note: Capped) -> None:
        """At most ``max_fork`` legs ring at once: one INVITE must not fan out into
        thousands (a user with many bindings, a huge ring group)."""
        self._count("fork_capped")
        quiet = self.engine.log_throttle.ready("fork_capped", self.engine.now())
        if quiet is not None:
            log.warning(
                "%s: %d targets, ringing the first %d (max_fork; %d more not logged)",
                note.label,
                note.total,
                note.cap,
                quiet,
            )

    async def _ring_parallel(self, caller: Call, stage: Stage) -> _Leg | FinalResult:
        """Ring every target of ``stage`` at once; the first to answer wins."""
        if not stage.legs:
            return FinalResult(480, 18)
        loop = asyncio.get_running_loop()
        ringback = self._ringback(caller)
        relay = self._progress_relay(caller, early_media=len(stage.legs) == 1)
        legs: list[_Leg] = []
        for target in stage.legs:
            try:
                leg = await self._start_leg(caller, target)
            except SipError:
                break
            except (OSError, RuntimeError, ValueError) as exc:
                log.warning("cannot ring %s: %s", target.uri, exc)
                continue
            leg.on_progress = relay
            legs.append(leg)
        fork = Fork(range(len(legs)), timeout=stage.timeout, now=loop.time())
        waiting = {leg.outcome: i for i, leg in enumerate(legs)}
        try:
            commands = fork.start()
            while True:
                for command in commands:
                    if isinstance(command, Abandon):
                        self._abandon(legs[command.leg], command.cause)
                for command in commands:
                    if isinstance(command, Connect):
                        return legs[command.leg]
                    if isinstance(command, Fail):
                        return FinalResult(command.status, command.cause)
                deadline = fork.next_deadline()
                delay = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait(
                    {*waiting, caller.ended}, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
                now = loop.time()
                commands = fork_outcomes(fork, waiting, legs, now)
                if caller.ended.done():
                    cause = CAUSE_NORMAL if caller.answered else q850(caller.session.end_cause)
                    commands += fork.caller_gone(cause, now)
                commands += fork.handle_timer(now)
        finally:
            if ringback is not None:
                ringback.cancel()

    def _ringback(self, caller: Call) -> asyncio.Task[Any] | None:
        """An answered caller (IVR transfer) hears ringback while the target rings."""
        if not caller.answered or caller.media is None:
            return None
        try:
            return asyncio.get_running_loop().create_task(
                caller.play(["tone:ringback"], barge_in=False)
            )
        except SipError:
            return None


class TrunkCollector(Collector):
    """Prometheus export of the B2BUA's trunk state and counters (read at scrape time)."""

    def __init__(self, b2bua: B2BUA) -> None:
        self.b2bua = b2bua

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        b = self.b2bua
        state = GaugeMetricFamily(
            "callengine_trunk_state", "Trunk breaker state (1 = current)", labels=["trunk", "state"]
        )
        in_use = GaugeMetricFamily(
            "callengine_trunk_channels_in_use", "Seized B-channels", labels=["trunk"]
        )
        capacity = GaugeMetricFamily(
            "callengine_trunk_channels", "B-channels over all spans", labels=["trunk"]
        )
        for name, trunk in b.plan.trunks.items():
            current = b.board.state(name) if b.board is not None else HealthState.UP
            for s in HealthState:
                state.add_metric([name, s.value], 1.0 if s is current else 0.0)
            in_use.add_metric([name], trunk.in_use)
            capacity.add_metric([name], trunk.capacity)
        yield state
        yield in_use
        yield capacity
        attempts = CounterMetricFamily(
            "callengine_trunk_attempts",
            "Call attempts by trunk and outcome",
            labels=["trunk", "outcome"],
        )
        for (trunk_name, outcome), n in sorted(b.attempts_by_trunk.items()):
            attempts.add_metric([trunk_name, outcome], n)
        yield attempts
        changes = CounterMetricFamily(
            "callengine_trunk_health_changes", "Breaker state changes", labels=["trunk", "state"]
        )
        for (trunk_name, new), n in sorted(b.changes_by_trunk.items()):
            changes.add_metric([trunk_name, new], n)
        yield changes
        events = CounterMetricFamily("callengine_b2bua_events", "B2BUA counters", labels=["event"])
        for name, n in sorted(b.counters.items()):
            events.add_metric([name], n)
        yield events


def _channel_key(call: Call) -> str:
    """The key of the B-channel a call arriving from a trunk holds."""
    return f"{call.call_id}/{call.session.local_tag}"


def _outbound_key(call: Call) -> str:
    """The key of the B-channel ``call``'s outbound trunk leg holds: another key than
    the inbound one, so that a call in from a trunk and out again through the same
    trunk (a forward to the PSTN) holds two channels, as on a real PRI, and the end of
    the outbound hunt never frees the inbound call's channel."""
    return f"{_channel_key(call)}/out"


def _leg_result(leg: _Leg) -> LegResult:
    """A trunk leg's outcome as plain values for :meth:`TrunkHunt.leg_ended` (a 2xx's
    SDP answer is taken here): its final status, the cause it ended with (Reason),
    whether its session is over; no result at all when its wait was cancelled."""
    if leg.outcome.cancelled():
        return NO_RESULT
    response = leg.outcome.result()
    if isinstance(response, SipError):
        session = leg.session
        terminated = session.state is SessionState.TERMINATED
        return LegResult(response.status, session.end_cause, terminated)
    leg.on_answered(response)
    return LegResult(response.status)


def _first_trusted(plan: TrunkPlan) -> str:
    for net in plan.trusted_sources:
        return str(net.network_address)
    return ""
