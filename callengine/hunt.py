"""Trunk call control (sans-IO): which way a new call goes, and hunting a trunk group.

Theory of operation
-------------------
Two decisions of the B2BUA that involve the node's trunks, kept out of its asyncio
shell (:class:`callengine.b2bua.B2BUA`), which only carries them out:

* :func:`route_call` decides which way a new INVITE goes, from the trunk plan, the
  source address, the called number, whether the caller authenticated (Digest), and
  whether a tenant owns the number::

      no trunk configured                       -> None: the tenant routes
      from a trunk gateway, for one of its DIDs -> FromTrunk(trunk): seize a B-channel
                                                   (503 cause 34 if none is free), then
                                                   the tenant route (404 if none)
      a tenant's own number                     -> TenantNumber: the tenant routes (it
                                                   never leaves by trunk)
      an outbound route, from a trusted source  -> ToTrunk(group, number, record):
      or an authenticated caller                   dial through the group
      a route's prefix from any other source    -> Forbidden: 403 (toll fraud)
      anything else                             -> None: the tenant routes

* :class:`TrunkHunt` dials one number through one trunk group, with failover. It
  drives :class:`pri.CallAttempts` (which trunk next, the setup timer, the ring
  deadline, the trunk going down, the Q.850 causes; see pri/failover.py) and adds
  what the B2BUA does around it: the dial policy's verdict before any channel is
  seized, the call-log records, the early media of a failed attempt, the caller gone
  between attempts, and the B-channel kept only by a connected call. It is fed what
  happens to the current leg and to the caller, with ``now``, and returns commands
  (frozen dataclasses) for the shell to carry out in order; ``next_deadline()`` says
  when to call ``handle_timer``::

      start(now)                 -> Refused(verdict), Failed   (the dial policy: no
                                    channel is seized)
                                 |  StartLeg(target, leg)      (a B-channel seized)
                                 |  RecordSkip..., Failed(503, 34)  (nothing free or up)
      provisional(status, now)   -> nothing: a 1xx stops the setup timer
      leg_ended(result, now)     -> the attempt ends with the leg's final result
      caller_left(end_cause, answered, now)
                                 -> AbandonAttempt(cause), the attempt ends: Failed(487,
                                    cause); the cause is the caller's Q.850 end cause,
                                    16 for a caller answered before (an IVR's)
      handle_timer(now)          -> no response within the setup timeout:
                                    AbandonAttempt(102), the attempt ends (failover);
                                    no answer by the ring deadline: AbandonAttempt(19),
                                    the attempt ends: Failed(480, 19)
      check_health(now)          -> the ringing trunk was declared down:
                                    AbandonAttempt(38), the attempt ends (failover)
      not_sent(status, cause, now)
                                 -> our side could not make the INVITE (no RTP port:
                                    503, cause 47): the attempt ends, Failed(status,
                                    cause); no other trunk, none blamed

  ``leg_ended``, ``handle_timer`` and ``check_health`` take ``caller_present``: the
  caller can still be connected (it is there, or it was answered). An attempt ends
  with ``RecordAttempt(attempt)`` (and ``ReportHealth(events)`` when the result
  changed a breaker), then, by the outcome:

      connected -> RecordSkip..., Connected: bridge the leg; it keeps its B-channel
                   until the bridge ends
      final     -> StopRelay, RecordSkip..., Failed(result)
      failover  -> StopRelay, then StartLeg on the next trunk; Failed(487, 16) when
                   the caller can no longer be connected (it left between two
                   attempts); the last failure (or 503, 34) when no trunk is left

  After ``Failed`` no channel is held for the call. ``close()`` ends a hunt the shell
  gave up on (an exception, a cancelled task): it releases the channel unless the
  call connected, and returns the skips not recorded yet.

A leg's outcome reaches the core as plain values (:class:`LegResult`: the final
status, the Q.850 cause the leg ended with, whether its session is over). A 408 on a
session that is over with no cause is no final response at all (Timer B or a
transport error, RFC 3261 §17.1.4): :func:`is_transport_error`. An INVITE the engine
did not send (the caller gone meanwhile) is :data:`NOT_SENT`, one that could not be
sent or whose result is lost is :data:`NO_RESULT`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pri import (
    Attempt,
    CallAttempts,
    Decision,
    FinalResult,
    HealthBoard,
    HealthChanged,
    Outcome,
    Skip,
    Target,
    Trunk,
    TrunkGroup,
    TrunkPlan,
    Verdict,
    format_reason,
)

from .transfer import LegTarget, StopRelay, q850

__all__ = [
    "NOT_SENT",
    "NO_RESULT",
    "AbandonAttempt",
    "Connected",
    "Failed",
    "Forbidden",
    "FromTrunk",
    "HuntCommand",
    "LegResult",
    "RecordAttempt",
    "RecordSkip",
    "Refused",
    "ReportHealth",
    "StartLeg",
    "StopRelay",
    "TenantNumber",
    "ToTrunk",
    "TrunkHunt",
    "TrunkRoute",
    "is_transport_error",
    "route_call",
    "trunk_leg",
]

# ITU-T Q.850 table 1: the caller's side ended normally
CAUSE_NORMAL = 16


# ------------------------------------------------------------------ routing
@dataclass(frozen=True, slots=True)
class FromTrunk:
    """The call arrived from ``trunk``'s gateway for one of its DIDs: it takes a
    B-channel of that trunk for its duration, then goes where the tenant routes say."""

    trunk: Trunk


@dataclass(frozen=True, slots=True)
class TenantNumber:
    """A tenant owns the called number: its routes decide, it never leaves by trunk."""


@dataclass(frozen=True, slots=True)
class ToTrunk:
    """An outbound route matched: dial ``number`` (rewritten by the route) through
    ``group``; ``record``: why the call is recorded once bridged (the route records
    its calls), else ``None``."""

    group: TrunkGroup
    number: str
    record: str | None = None


@dataclass(frozen=True, slots=True)
class Forbidden:
    """The number would leave through a trunk, from a source that may not place such
    calls (not trusted, not authenticated): refuse it (toll fraud)."""

    status: int = 403
    reason: str = "Forbidden"


TrunkRoute = FromTrunk | TenantNumber | ToTrunk | Forbidden


def route_call(
    plan: TrunkPlan,
    number: str,
    *,
    source_ip: str,
    authenticated: bool,
    owns_number: Callable[[str], bool],
) -> TrunkRoute | None:
    """Which way a new call for ``number`` from ``source_ip`` goes (see the module
    docstring); ``None``: the trunks have nothing to do with it, the tenant routes
    decide. ``authenticated``: the caller proved to be a tenant's user (Digest);
    ``owns_number``: a tenant (not the default route) owns a number."""
    if not plan.trunks:
        return None
    trunk = plan.match_inbound(source_ip, number)
    if trunk is not None:
        return FromTrunk(trunk)
    if owns_number(number):
        return TenantNumber()
    match = plan.route_outbound(number, source_ip=source_ip, authenticated=authenticated)
    if match is not None:
        record = f"outbound route {match.route.prefix}" if match.route.record else None
        return ToTrunk(match.group, match.number, record)
    if any(number.startswith(route.prefix) for route in plan.routes):
        return Forbidden()
    return None


# ------------------------------------------------------------------ leg results
@dataclass(frozen=True, slots=True)
class LegResult:
    """How a trunk leg's INVITE ended, as plain values (what the shell saw)."""

    status: int | None
    """The final status (2xx or failure); ``None``: no result at all (the INVITE could
    not be sent, or its result was lost)."""
    cause: int = 0
    """The cause the leg ended with (the Reason header of its final response), 0 if
    none; ignored for a 2xx."""
    terminated: bool = False
    """The leg's session is over."""


NO_RESULT = LegResult(None)
"""The INVITE could not be sent (a transport error) or its result was lost."""
NOT_SENT = LegResult(487, CAUSE_NORMAL)
"""The engine did not send the INVITE (the caller had gone meanwhile): 487, cause 16."""


def is_transport_error(result: LegResult) -> bool:
    """True when ``result`` is no final response from the far end: nothing at all, or
    the 408 a session gets when Timer B fires or the transport fails (RFC 3261
    §17.1.4) -- a session that is over, with no cause from any Reason header."""
    if result.status is None:
        return True
    return result.status == 408 and result.terminated and not result.cause


def trunk_leg(trunk: Trunk, number: str) -> LegTarget:
    """Where the INVITE for ``number`` through ``trunk`` goes: its gateway (``sips:``
    over TLS, an IPv6 host in brackets), with the trunk's credentials."""
    gw = trunk.gateway
    host = f"[{gw.host}]" if ":" in gw.host else gw.host
    params = "" if gw.transport == "udp" else f";transport={gw.transport}"
    scheme = "sips" if gw.transport == "tls" else "sip"
    creds = (trunk.credentials.username, trunk.credentials.password) if trunk.credentials else None
    return LegTarget(
        f"{scheme}:{number}@{host}:{gw.port}{params}",
        (gw.host, gw.port),
        gw.transport.upper(),
        label=trunk.name,
        credentials=creds,
    )


# ------------------------------------------------------------------ commands
@dataclass(frozen=True, slots=True)
class Refused:
    """The dial policy refused the number (before any channel was seized): log and
    count it; ``Failed`` follows with its status and cause."""

    verdict: Verdict


@dataclass(frozen=True, slots=True)
class StartLeg:
    """Send the INVITE of the next attempt to ``leg`` (the trunk's gateway); ``target``
    is the trunk and the B-channel seized for it. Report its 1xx with ``provisional``
    and its end with ``leg_ended``."""

    target: Target
    leg: LegTarget


@dataclass(frozen=True, slots=True)
class AbandonAttempt:
    """The current attempt ended on our side: CANCEL its INVITE (BYE once answered)
    with this Q.850 cause; its result no longer matters."""

    cause: int


@dataclass(frozen=True, slots=True)
class RecordAttempt:
    """An attempt ended: record it in the caller's call log and the metrics."""

    attempt: Attempt


@dataclass(frozen=True, slots=True)
class ReportHealth:
    """The attempt's result changed trunk breakers: log and export the changes."""

    events: tuple[HealthChanged, ...]


@dataclass(frozen=True, slots=True)
class RecordSkip:
    """A trunk passed over without an attempt: record it in the caller's call log."""

    skip: Skip


@dataclass(frozen=True, slots=True)
class Connected:
    """The current attempt's leg answered: bridge it. It holds its B-channel until
    ``group``'s ``release(call_id)`` when the bridge ends."""

    group: str
    call_id: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The hunt is over without an answer: what the caller gets."""

    result: FinalResult


HuntCommand = (
    Refused
    | StartLeg
    | AbandonAttempt
    | RecordAttempt
    | ReportHealth
    | RecordSkip
    | StopRelay
    | Connected
    | Failed
)


# ------------------------------------------------------------------ the hunt
class TrunkHunt:
    """One number dialled through one trunk group (see the module docstring).

    ``call_id`` is the key the group's B-channels are seized under; ``refused``: the
    dial policy's verdict on ``number`` (``DialPolicy.check``), ``None`` when it may
    be dialled; ``health`` and ``ring_timeout`` are :class:`pri.CallAttempts`'.
    """

    def __init__(
        self,
        group: TrunkGroup,
        call_id: str,
        *,
        number: str,
        now: float,
        health: HealthBoard | None = None,
        ring_timeout: float | None = None,
        refused: Verdict | None = None,
    ) -> None:
        self.group = group
        self.call_id = call_id
        self.number = number
        self.refused = refused
        self.attempts: CallAttempts | None = None
        """The trunk attempts (``None`` when the dial policy refused the number: the
        group's hunt order, a round robin's turn, is then left alone)."""
        if refused is None:
            self.attempts = CallAttempts(
                group, call_id, now, health=health, ring_timeout=ring_timeout
            )
        self.result: FinalResult | None = None
        """What the caller gets, once the hunt failed."""
        self.connected = False
        self._started = False
        self._done = False

    @property
    def done(self) -> bool:
        """True once the hunt connected, failed, or was closed."""
        return self._done

    @property
    def setup_pending(self) -> bool:
        """The current attempt has had no response yet (wake up on its first 1xx)."""
        return self.attempts is not None and not self._done and self.attempts.setup_pending

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must run (the setup timer or the ring deadline)."""
        if self.attempts is None or self._done:
            return None
        return self.attempts.next_deadline()

    def start(self, *, now: float) -> list[HuntCommand]:
        """The first commands: the dial policy's refusal, or the first attempt."""
        if self._started:
            raise RuntimeError("the hunt has started already")
        self._started = True
        if self.attempts is None:
            assert self.refused is not None
            self._done = True
            self.result = FinalResult(self.refused.status, self.refused.cause)
            return [Refused(self.refused), Failed(self.result)]
        return self._next(now)

    def provisional(self, status: int, *, now: float) -> list[HuntCommand]:
        """A 1xx of the current attempt: the far end is working on it."""
        if self.attempts is not None and not self._done:
            self.attempts.on_provisional(status, now=now)
        return []

    def leg_ended(
        self, result: LegResult, *, now: float, caller_present: bool = True
    ) -> list[HuntCommand]:
        """The current attempt's leg has its final result. ``caller_present``: the
        caller can still be connected (it is there, or it was answered); when it
        cannot, no further trunk is tried after a failover."""
        attempts = self._in_progress()
        if attempts is None:
            return []
        if is_transport_error(result):
            decision = attempts.on_result(None, now=now, transport_error=True)
        elif result.status is not None and 200 <= result.status <= 299:
            decision = attempts.on_result(result.status, now=now)
        else:
            reason = format_reason(result.cause) if result.cause else None
            decision = attempts.on_result(result.status, now=now, reason=reason)
        return self._decided(decision, now, caller_present)

    def not_sent(self, status: int, cause: int, *, now: float) -> list[HuntCommand]:
        """The current attempt's INVITE could not be made on our side (no RTP port:
        503 with cause 47; an offer refused: 488): the hunt ends with that status and
        cause (:meth:`pri.CallAttempts.not_sent`: no other trunk, none blamed)."""
        attempts = self._in_progress()
        if attempts is None:
            return []
        return self._decided(attempts.not_sent(status, cause, now=now), now, True)

    def caller_left(self, end_cause: int, *, answered: bool, now: float) -> list[HuntCommand]:
        """The caller hung up (or cancelled) during the current attempt: the call ends
        with 487. ``end_cause``: the caller's session's end cause; a caller answered
        before (an IVR's) leaves with 16, normal clearing."""
        attempts = self._in_progress()
        if attempts is None:
            return []
        cause = CAUSE_NORMAL if answered else q850(end_cause)
        return self._decided(attempts.caller_left(cause, now=now), now, False)

    def handle_timer(self, now: float, *, caller_present: bool = True) -> list[HuntCommand]:
        """End the current attempt if its setup timer or the ring deadline passed."""
        attempts = self._in_progress()
        decision = None if attempts is None else attempts.handle_timer(now)
        return [] if decision is None else self._decided(decision, now, caller_present)

    def check_health(self, now: float, *, caller_present: bool = True) -> list[HuntCommand]:
        """A trunk was declared down: fail the current attempt over if it rings there."""
        attempts = self._in_progress()
        decision = None if attempts is None else attempts.check_health(now)
        return [] if decision is None else self._decided(decision, now, caller_present)

    def close(self) -> list[HuntCommand]:
        """The shell gives up on the hunt (an exception, cancellation): release the
        channel unless the call connected; the skips not recorded yet."""
        if self._done or self.attempts is None:
            return []
        self.group.release(self.call_id)
        return self._finish()

    # ------------------------------------------------------------------ internal
    def _in_progress(self) -> CallAttempts | None:
        if self._done or self.attempts is None or self.attempts.current is None:
            return None
        return self.attempts

    def _decided(self, decision: Decision, now: float, caller_present: bool) -> list[HuntCommand]:
        commands: list[HuntCommand] = []
        if decision.abandon is not None:
            commands.append(AbandonAttempt(decision.abandon))
        commands.append(RecordAttempt(decision.attempt))
        if decision.events:
            commands.append(ReportHealth(decision.events))
        if decision.outcome is Outcome.CONNECTED:
            self.connected = True
            return [*commands, *self._finish(), Connected(self.group.name, self.call_id)]
        commands.append(StopRelay())  # early media of the attempt that failed
        if decision.outcome is Outcome.FINAL:
            assert decision.final is not None
            return commands + self._fail(decision.final)
        if not caller_present:
            return commands + self._fail(FinalResult(487, CAUSE_NORMAL))
        return commands + self._next(now)

    def _next(self, now: float) -> list[HuntCommand]:
        assert self.attempts is not None
        target = self.attempts.next_trunk(now=now)
        if target is None:
            return self._fail(self.attempts.final_result())
        return [StartLeg(target, trunk_leg(target.trunk, self.number))]

    def _fail(self, result: FinalResult) -> list[HuntCommand]:
        self.result = result
        # whatever ended the hunt, no channel stays seized for this call
        self.group.release(self.call_id)
        return [*self._finish(), Failed(result)]

    def _finish(self) -> list[HuntCommand]:
        self._done = True
        assert self.attempts is not None
        return [RecordSkip(skip) for skip in self.attempts.skipped]
