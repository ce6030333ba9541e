"""Transfers and bridges: the B2BUA's call-control decisions (sans-IO).

Theory of operation
-------------------
A transfer (an IVR ``transfer`` node, a user or ring-group route) connects a caller
to one of several targets and bridges them. The asyncio shell
(:meth:`callengine.b2bua.B2BUA.transfer`) owns the legs, the media and the waiting;
the decisions are here, in plain classes fed what happened and returning commands:

* :class:`StagePlanner` turns targets (``user:100``, ``ext:100``, ``group:sales``,
  ``external:0123``) and a strategy into :class:`Stage` s: phones rung together for a
  while, or one trunk-group dial. It reads the tenant and the registered phones
  through the narrow :class:`Directory` protocol and trunk routes through
  :class:`TrunkRoutes`; what it would have logged comes back as notes
  (:class:`Unringable`, :class:`Unrouted`, :class:`Capped`).
* :class:`Transfer` tries the stages in order while the caller is there::

      start()                      -> Reject(483), Done   (Max-Forwards exhausted)
                                   |  Expand
      expanded(stages)             -> RingStage(0) / DialStage(0), or StopRelay, Done
      stage_failed(i, status, c)   -> the next stage, or StopRelay, Done(486/17 | last)
      stage_answered(i, target)    -> BridgeLeg(i)
      bridge_ended(cause)          -> HangUp(CALLER, cause) (caller not answered
                                      before the transfer), Done(answered)
      caller_gone()                -> nothing now; no further stage is tried

  A busy (486) or decline (600) in any stage makes the result 486 "user busy"
  (Q.850 17); with nobody to ring at all it is 480 "no user responding" (18).
* :class:`Bridge` connects the caller to an answered leg and carries the hang-up
  across with its Q.850 cause::

      start()             -> AnswerCaller (when not answered yet)
      caller_ready()      -> StartMedia(record)
      caller_gone(cause)  -> AbandonLeg(cause) before the bridge, HangUp(LEG, cause)
                             once bridged; Ended(CALLER, cause)
      leg_gone(cause)     -> Ended(LEG, cause) (the caller is the transfer's to end)

* :func:`progress_action` decides what a leg's 180/183 becomes for the caller.

Ringing the phones of one stage is :class:`callengine.fork.Fork`; hunting a trunk
group is :class:`callengine.hunt.TrunkHunt` (driving :class:`pri.CallAttempts`).
Neither class here keeps a deadline of its own: every ring timeout belongs to those
cores, so nothing here reads a clock.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from .call import TransferResult
from .sip.errors import RemoteProtocolError
from .sip.uri import parse_uri

if TYPE_CHECKING:
    from pri import RouteMatch, TrunkGroup

    from .sip.registrar import Binding

__all__ = [
    "AbandonLeg",
    "AnswerCaller",
    "Bridge",
    "BridgeCommand",
    "BridgeLeg",
    "Capped",
    "DialStage",
    "Directory",
    "Done",
    "Ended",
    "Expand",
    "Expansion",
    "HangUp",
    "LegTarget",
    "Note",
    "Progress",
    "Reject",
    "RingStage",
    "Side",
    "Stage",
    "StagePlanner",
    "StartMedia",
    "StopRelay",
    "Transfer",
    "TransferCommand",
    "leg_targets",
    "TrunkRoutes",
    "Unringable",
    "Unrouted",
    "progress_action",
    "q850",
]

# ITU-T Q.850 table 1
CAUSE_NORMAL = 16
CAUSE_USER_BUSY = 17
CAUSE_NO_USER_RESPONDING = 18
CAUSE_HOP_COUNTER = 25  # "exchange routing error": what 483 maps to (RFC 3398 §8.2.6.1)


def leg_targets(bindings: Sequence[Binding], *, label: str) -> list[LegTarget]:
    """Where to send the INVITEs that ring these registered phones: the binding's
    source (NAT, a WebSocket flow), else its Contact's host; a ``+sip.ice`` binding
    (RFC 5768, a browser) gets a WebRTC offer. Bindings with unusable Contacts are
    skipped."""
    out: list[LegTarget] = []
    for binding in bindings:
        contact = binding.contact
        dest = binding.source
        if dest is None:
            try:
                uri = parse_uri(contact, where="contact")
            except (ValueError, RemoteProtocolError):
                continue
            dest = (uri.host.strip("[]"), uri.port or 5060)
        out.append(
            LegTarget(
                contact,
                dest,
                binding.transport.upper(),
                label=label,
                webrtc="+sip.ice" in binding.params,
            )
        )
    return out


def q850(cause: int) -> int:
    """A Q.850 cause for our own BYE/CANCEL (a SIP status stored as cause -> 16)."""
    return cause if 1 <= cause <= 127 else CAUSE_NORMAL


# ------------------------------------------------------------------ stages
@dataclass(frozen=True, slots=True)
class LegTarget:
    """Where one leg's INVITE goes: a registered phone or a trunk gateway."""

    uri: str
    dest: tuple[str, int]
    transport: str = "UDP"
    label: str = ""
    """What the call log and ``TransferResult.target`` name (``user:100``...)."""
    credentials: tuple[str, str] | None = None
    webrtc: bool = False
    """A browser (registered with ``+sip.ice``, RFC 5768): the leg's offer is WebRTC."""


@dataclass(frozen=True, slots=True)
class Stage:
    """Targets rung together for ``timeout`` seconds, or one trunk-group dial."""

    timeout: float
    legs: tuple[LegTarget, ...] = ()
    group: TrunkGroup | None = None
    number: str = ""
    label: str = ""


@dataclass(frozen=True, slots=True)
class Unringable:
    """A target that names nothing that can be rung (unknown kind or group)."""

    target: str


@dataclass(frozen=True, slots=True)
class Unrouted:
    """``external:number`` with no trunk route for it."""

    number: str


@dataclass(frozen=True, slots=True)
class Capped:
    """A stage had ``total`` targets; only the first ``cap`` ring (``max_fork``)."""

    label: str
    total: int
    cap: int


Note = Unringable | Unrouted | Capped


@dataclass(frozen=True, slots=True)
class Expansion:
    """The stages of a transfer, and what the expansion has to report (in order)."""

    stages: tuple[Stage, ...]
    notes: tuple[Note, ...] = ()


class Directory(Protocol):
    """The tenant configuration and registered phones a transfer rings."""

    def tenant(self, tenant_id: str) -> Any:
        """The tenant's configuration (ring groups, external routes), or None."""
        ...

    def contacts_of(self, tenant: str, user: str) -> list[Binding]:
        """The user's registered phones."""
        ...


class TrunkRoutes(Protocol):
    """The node's trunk plan, as far as ``external:`` targets need it."""

    @property
    def groups(self) -> Mapping[str, TrunkGroup]: ...

    def route_outbound(
        self, number: str, *, source_ip: str, authenticated: bool = False
    ) -> RouteMatch | None: ...


@dataclass(frozen=True, slots=True)
class StagePlanner:
    """Targets -> stages for one node (see the module comment).

    ``trunk_source``: the source address ``external:`` numbers are routed as (a
    transfer is the node's own call, so one of its trusted sources); ``max_fork``:
    at most that many legs ring at once, so that one INVITE cannot fan out into
    thousands (a user with many bindings, a huge ring group).
    """

    directory: Directory | None
    routes: TrunkRoutes
    max_fork: int
    trunk_source: str = ""

    def expand(
        self, tenant_id: str | None, targets: Sequence[str], *, strategy: str, timeout: float
    ) -> Expansion:
        """``user:``/``ext:`` ring the user's phones; ``group:NAME`` its members with
        the group's own strategy and timeout; ``external:NUMBER`` leaves through the
        tenant's outbound route, else the node's. ``strategy`` ``parallel`` rings every
        phone target in one first stage, ``sequential`` one stage per target."""
        tenant = None
        if self.directory is not None and tenant_id is not None:
            tenant = self.directory.tenant(tenant_id)
        notes: list[Note] = []
        parallel: list[LegTarget] = []
        stages: list[Stage] = []
        for target in targets:
            kind, _, name = target.partition(":")
            if kind in ("user", "ext"):
                legs = self._contacts(tenant_id, name, label=target)
                if strategy == "sequential":
                    stages.append(Stage(timeout, tuple(legs), label=target))
                else:
                    parallel += legs
            elif kind == "group" and tenant is not None and name in tenant.ring_groups:
                group = tenant.ring_groups[name]
                members = [self._contacts(tenant_id, m, label=f"user:{m}") for m in group.members]
                if group.strategy == "sequential":
                    stages += [Stage(group.timeout, tuple(m), label=target) for m in members if m]
                else:
                    flat = tuple(itertools.chain.from_iterable(members))
                    if strategy == "sequential":
                        stages.append(Stage(min(timeout, group.timeout), flat, label=target))
                    else:
                        parallel += flat
            elif kind == "external":
                stage = self._external(tenant, name, timeout, target)
                if stage is None:
                    notes.append(Unrouted(name))
                else:
                    stages.append(stage)
            else:
                notes.append(Unringable(target))
        if parallel:
            stages.insert(0, Stage(timeout, tuple(parallel), label="parallel"))
        capped = []
        for stage in stages:
            if len(stage.legs) > self.max_fork:
                notes.append(Capped(stage.label, len(stage.legs), self.max_fork))
                stage = replace(stage, legs=stage.legs[: self.max_fork])
            capped.append(stage)
        return Expansion(tuple(capped), tuple(notes))

    def _contacts(self, tenant_id: str | None, user: str, *, label: str) -> list[LegTarget]:
        if self.directory is None or tenant_id is None:
            return []
        return leg_targets(self.directory.contacts_of(tenant_id, user), label=label)

    def _external(self, tenant: Any, number: str, timeout: float, label: str) -> Stage | None:
        route = tenant.outbound_route(number) if tenant is not None else None
        if route is not None and route.trunk_group in self.routes.groups:
            group = self.routes.groups[route.trunk_group]
            return Stage(timeout, group=group, number=route.translate(number), label=label)
        match = self.routes.route_outbound(number, source_ip=self.trunk_source)
        if match is None:
            return None
        return Stage(timeout, group=match.group, number=match.number, label=label)


# ------------------------------------------------------------------ commands
class Side(enum.Enum):
    """One side of a bridge."""

    CALLER = "caller"
    LEG = "leg"


@dataclass(frozen=True, slots=True)
class Reject:
    """Send the (unanswered) caller this final status."""

    status: int


@dataclass(frozen=True, slots=True)
class Expand:
    """Expand the targets into stages and report them with ``expanded``."""


@dataclass(frozen=True, slots=True)
class RingStage:
    """Ring the phones of stage ``index`` together (a :class:`~callengine.fork.Fork`)."""

    index: int


@dataclass(frozen=True, slots=True)
class DialStage:
    """Hunt stage ``index``'s trunk group for its number (a
    :class:`~callengine.hunt.TrunkHunt`)."""

    index: int


@dataclass(frozen=True, slots=True)
class BridgeLeg:
    """Bridge the caller to the leg that answered in stage ``index`` (a :class:`Bridge`)."""

    index: int


@dataclass(frozen=True, slots=True)
class HangUp:
    """Hang ``side`` up with this Q.850 cause, if it is still up."""

    side: Side
    cause: int


@dataclass(frozen=True, slots=True)
class StopRelay:
    """Stop relaying media to the caller (early media of a leg that did not answer)."""


@dataclass(frozen=True, slots=True)
class Done:
    """The transfer is over: its result for the IVR / router."""

    result: TransferResult


TransferCommand = Reject | Expand | RingStage | DialStage | BridgeLeg | HangUp | StopRelay | Done


class _TState(enum.Enum):
    IDLE = "idle"
    EXPANDING = "expanding"
    STAGE = "stage"
    BRIDGED = "bridged"
    DONE = "done"


class Transfer:
    """One transfer of a caller, stage after stage (see the module comment).

    ``answered``: the caller was answered before the transfer (an IVR's); such a
    caller is not hung up when the bridge ends, the IVR goes on.
    """

    def __init__(self, *, answered: bool, max_forwards: int | None) -> None:
        self.answered = answered
        self.max_forwards = max_forwards
        self.state = _TState.IDLE
        self.trunk_stage: tuple[bool, ...] = ()  # per stage: a trunk-group dial?
        self.current = -1
        self.caller_left = False
        self.status = 480
        self.cause = CAUSE_NO_USER_RESPONDING  # nobody to ring
        self.busy = False
        self.target: str | None = None

    def start(self) -> list[TransferCommand]:
        if self.state is not _TState.IDLE:
            return []
        if self.max_forwards == 0 and not self.answered:
            # RFC 3261 §16.3 step 2: the INVITE may go no further
            self.state = _TState.DONE
            return [
                Reject(483),
                Done(
                    TransferResult(answered=False, status=483, cause=CAUSE_HOP_COUNTER, target=None)
                ),
            ]
        self.state = _TState.EXPANDING
        return [Expand()]

    def expanded(self, stages: Sequence[Stage]) -> list[TransferCommand]:
        if self.state is not _TState.EXPANDING:
            return []
        self.trunk_stage = tuple(stage.group is not None for stage in stages)
        self.state = _TState.STAGE
        return self._next()

    def caller_gone(self) -> list[TransferCommand]:
        """The caller is no longer there: the stage under way ends as it will (its
        core abandons its legs), no later stage is tried."""
        self.caller_left = True
        return []

    def stage_failed(self, index: int, status: int, cause: int) -> list[TransferCommand]:
        if self.state is not _TState.STAGE or index != self.current:
            return []
        self.status, self.cause = status, cause
        self.busy = self.busy or status in (486, 600)
        return self._next()

    def stage_answered(self, index: int, target: str) -> list[TransferCommand]:
        """A leg of stage ``index`` answered (``target``: its label). Bridged even if
        the caller left meanwhile: the bridge then abandons the leg."""
        if self.state is not _TState.STAGE or index != self.current:
            return []
        self.state = _TState.BRIDGED
        self.target = target
        return [BridgeLeg(index)]

    def bridge_ended(self, cause: int) -> list[TransferCommand]:
        """The bridge is over, ended by either side with Q.850 ``cause``."""
        if self.state is not _TState.BRIDGED:
            return []
        self.state = _TState.DONE
        result = TransferResult(answered=True, status=200, cause=cause, target=self.target)
        if self.answered:
            return [Done(result)]
        return [HangUp(Side.CALLER, cause), Done(result)]

    def _next(self) -> list[TransferCommand]:
        self.current += 1
        if self.current < len(self.trunk_stage) and not self.caller_left:
            dial = self.trunk_stage[self.current]
            return [DialStage(self.current) if dial else RingStage(self.current)]
        self.state = _TState.DONE
        status, cause = (486, CAUSE_USER_BUSY) if self.busy else (self.status, self.cause)
        result = TransferResult(answered=False, status=status, cause=cause, target=None)
        return [StopRelay(), Done(result)]


# ------------------------------------------------------------------ bridge
@dataclass(frozen=True, slots=True)
class AnswerCaller:
    """Answer the caller (the leg answered): report ``caller_ready`` or ``caller_gone``."""


@dataclass(frozen=True, slots=True)
class AbandonLeg:
    """The caller is gone before the bridge: CANCEL/BYE the leg with this cause."""

    cause: int


@dataclass(frozen=True, slots=True)
class StartMedia:
    """Both sides are up: relay media between them and start the recordings due
    (``record``: the route's reason to record, else only the bridged user's option)."""

    record: str | None


@dataclass(frozen=True, slots=True)
class Ended:
    """The bridge is over: ``side`` ended it with Q.850 ``cause``."""

    side: Side
    cause: int


BridgeCommand = AnswerCaller | AbandonLeg | StartMedia | HangUp | Ended


class _BState(enum.Enum):
    ANSWERING = "answering"
    BRIDGED = "bridged"
    ENDED = "ended"


class Bridge:
    """A caller and an answered leg, until one side hangs up (see the module comment).

    ``answered``: the caller was answered already; ``record``: record the call from
    the bridge on (why, for the log line when it cannot be).
    """

    def __init__(self, *, answered: bool, record: str | None = None) -> None:
        self.answered = answered
        self.record = record
        self.state = _BState.ANSWERING
        self.leg_cause: int | None = None

    def start(self) -> list[BridgeCommand]:
        return [] if self.answered else [AnswerCaller()]

    def caller_ready(self) -> list[BridgeCommand]:
        """The caller is answered and still there."""
        if self.state is not _BState.ANSWERING:
            return []
        self.state = _BState.BRIDGED
        commands: list[BridgeCommand] = [StartMedia(self.record)]
        if self.leg_cause is not None:
            commands += self._end(Side.LEG, self.leg_cause)
        return commands

    def caller_gone(self, end_cause: int) -> list[BridgeCommand]:
        """The caller ended (``end_cause``: its session's, 0 or a SIP status if none)."""
        cause = q850(end_cause)
        if self.state is _BState.ANSWERING:
            return [AbandonLeg(cause), *self._end(Side.CALLER, cause)]
        if self.state is _BState.BRIDGED:
            return [HangUp(Side.LEG, cause), *self._end(Side.CALLER, cause)]
        return []

    def leg_gone(self, end_cause: int) -> list[BridgeCommand]:
        """The leg ended; the caller stays up (the transfer decides about it)."""
        if self.state is _BState.ANSWERING:
            self.leg_cause = q850(end_cause)
            return []
        if self.state is _BState.BRIDGED:
            return self._end(Side.LEG, q850(end_cause))
        return []

    def _end(self, side: Side, cause: int) -> list[BridgeCommand]:
        self.state = _BState.ENDED
        return [Ended(side, cause)]


# ------------------------------------------------------------------ progress
class Progress(enum.Enum):
    """What a leg's provisional response becomes for the caller."""

    RINGING = "ringing"
    """180 Ringing (no SDP)."""
    SESSION_PROGRESS = "session_progress"
    """183 with the leg's SDP passed through (media flows end to end)."""
    EARLY_MEDIA = "early_media"
    """183 with our SDP, the leg's early media relayed (RTP through the node)."""


def progress_action(
    status: int, *, has_body: bool, caller_early: bool, early_media: bool, relaying: bool
) -> Progress | None:
    """A leg's 1xx ``status`` for a caller still ringing (``caller_early``: not
    answered, dialog early). Early media only from a stage of one leg
    (``early_media``): several phones' media cannot all be played at once."""
    if not caller_early:
        return None
    if early_media and status == 183 and has_body:
        return Progress.EARLY_MEDIA if relaying else Progress.SESSION_PROGRESS
    return Progress.RINGING
