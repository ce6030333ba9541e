"""The per-call attempt planner: which trunk to try next, and when to stop.

Theory of operation
-------------------
``CallAttempts`` is a sans-IO state machine for one outbound call through one
trunk group. It never sends anything and never reads a clock: the B2BUA asks it
for a target, sends the INVITE itself, and feeds back what happened::

    attempts = CallAttempts(match.group, call_id, now, health=board, ring_timeout=60)
    while (target := attempts.next_trunk(now=now)) is not None:
        send INVITE for match.number to target.trunk.gateway
        1xx                 -> attempts.on_provisional(status, now=now)
        final response      -> decision = attempts.on_result(status, now=now, reason=hdr)
        attempts.next_deadline() passes (no response in the setup timeout, or no
        answer by the ring deadline)
                            -> decision = attempts.handle_timer(now)
        the health board marks a trunk down
                            -> decision = attempts.check_health(now)
        the caller hangs up -> decision = attempts.caller_left(cause, now=now)
        transport error     -> decision = attempts.on_result(None, now=now, transport_error=True)
        decision.abandon set: CANCEL the INVITE (BYE if it was answered meanwhile) with
        that Q.850 cause;
        log decision.events (breaker changes); then by decision.outcome:
            CONNECTED -> bridge the call; release(call_id) on the group at hang-up
            FINAL     -> answer the caller decision.final (status + Reason header)
            FAILOVER  -> loop: try the next trunk
    else: answer the caller attempts.final_result()

``next_trunk`` walks the group's hunt order, computed once when the call starts
(priority, round robin, least used or weighted). It skips, without an attempt,
trunks the health board reports down or disabled and trunks with no free
B-channel, recording each skip; it seizes a B-channel on the first usable trunk.
At most ``max_attempts`` trunks are tried.

Each result is classified (``classify``):

- 2xx: CONNECTED; the channel stays seized.
- the trunk declared down while its attempt rings (probes or other calls found the
  gateway dead; a 180 it sent before dying would ring on for nobody): FAILOVER
  with cause 38, and no breaker record (the trunk is down already).
- no response within ``setup_timeout`` (no 1xx either), a transport error, 408
  or any 5xx: FAILOVER. So is any 4xx other than the definitive ones below whose
  Reason header (RFC 3326, RFC 6432) carries a resource cause (34, 38, 41, 42,
  47, 102): gateways send e.g. "480 + Q.850 cause 34" for "no circuit".
- 404, 403, 484, 486, 487, every other 4xx, 3xx and every 6xx: FINAL. A 6xx is a
  global failure (RFC 3261 §21.6): no other trunk is tried.
- no answer by the ring deadline (``ring_timeout`` after the call started, however
  many trunks were tried): FINAL 480 with cause 19 "no answer"; the caller leaving:
  FINAL 487 with the caller's cause. Neither counts against the trunk.

The Q.850 cause of each attempt is the one in the response's Reason header, or
else RFC 3398 §8.2.6.1's mapping of the status; a timeout is 102 "recovery on
timer expiry" and a transport error 38 "network out of order".

When the group is exhausted the caller gets 503 with Reason Q.850 cause 34 if no
attempt could be made (nothing free or up); otherwise the last attempt's status
(or, if it had none, RFC 3398 §7.2.4.1's status for its cause) and its cause.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from pri.causes import Reason, cause_for_status, format_reason, parse_reason, status_for_cause
from pri.health import HealthBoard, HealthChanged, HealthState, is_failure_status
from pri.trunk import ALL_BUSY_CAUSE, ALL_BUSY_STATUS, Channel, Trunk, TrunkGroup

__all__ = [
    "FAILOVER_CAUSES",
    "Attempt",
    "CallAttempts",
    "Decision",
    "EndedBy",
    "FinalResult",
    "Outcome",
    "Skip",
    "Target",
    "classify",
]

# Q.850 "resource unavailable" causes and timer expiry: another trunk may succeed.
FAILOVER_CAUSES: frozenset[int] = frozenset({34, 38, 41, 42, 47, 102})
_DEFINITIVE: frozenset[int] = frozenset({403, 404, 484, 486, 487})
_TIMEOUT_CAUSE = 102
_TRANSPORT_CAUSE = 38
_NO_ANSWER_CAUSE = 19
# A gateway answering "no circuit" is full, not broken: not a breaker failure.
_NOT_BROKEN_CAUSES: frozenset[int] = frozenset({34})


class Outcome(enum.Enum):
    """What the B2BUA does after an attempt's result."""

    CONNECTED = "connected"
    FAILOVER = "failover"
    FINAL = "final"


class EndedBy(enum.Enum):
    """How an attempt ended."""

    RESPONSE = "response"
    TIMEOUT = "timeout"
    TRANSPORT_ERROR = "transport_error"
    TRUNK_DOWN = "trunk_down"
    NOT_SENT = "not_sent"


@dataclass(frozen=True, slots=True)
class Target:
    """The trunk and seized B-channel to send the next INVITE through."""

    trunk: Trunk
    channel: Channel
    attempt: int
    """1 for the first attempt of the call."""
    deadline: float
    """No response at all by then: call ``handle_timer``."""


@dataclass(frozen=True, slots=True)
class Skip:
    """A trunk passed over without an attempt (for the call log)."""

    trunk: str
    why: str
    """``down``, ``disabled`` or ``busy`` (no free B-channel)."""
    at: float


@dataclass(frozen=True, slots=True)
class Attempt:
    """One INVITE through one trunk, as the call log records it."""

    index: int
    trunk: str
    carrier: str
    span: str
    channel: int
    started: float
    ended: float
    ended_by: EndedBy
    status: int | None
    cause: int
    reason: str
    """The Reason header's text, or a description of how the attempt ended."""
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class FinalResult:
    """The failure to return to the caller: a status and a Q.850 cause."""

    status: int
    cause: int

    @property
    def reason_header(self) -> str:
        """The Reason header value to send with ``status`` (RFC 3326, RFC 6432)."""
        return format_reason(self.cause)


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``on_result`` decided; ``final`` is set when ``outcome`` is FINAL."""

    outcome: Outcome
    attempt: Attempt
    final: FinalResult | None = None
    events: tuple[HealthChanged, ...] = ()
    """Breaker state changes caused by this result: log and export them."""
    abandon: int | None = None
    """Set when the attempt ended on our side (a timer, the trunk declared down, the
    caller gone): CANCEL its INVITE (BYE once answered) with this Q.850 cause."""


def classify(status: int | None, cause: int | None = None) -> Outcome:
    """Classify a final result (``None``: no response or transport error).

    ``cause`` is the Q.850 cause from the response's Reason header, if any.
    """
    if status is None:
        return Outcome.FAILOVER
    if 200 <= status <= 299:
        return Outcome.CONNECTED
    if status >= 600 or status in _DEFINITIVE:
        return Outcome.FINAL
    if status == 408 or 500 <= status <= 599:
        return Outcome.FAILOVER
    if 400 <= status <= 499 and cause in FAILOVER_CAUSES:
        return Outcome.FAILOVER
    return Outcome.FINAL


class CallAttempts:
    """Plans the trunk attempts of one outbound call (see module docstring)."""

    def __init__(
        self,
        group: TrunkGroup,
        call_id: str,
        now: float,
        *,
        health: HealthBoard | None = None,
        setup_timeout: float | None = None,
        max_attempts: int | None = None,
        ring_timeout: float | None = None,
    ) -> None:
        self.group = group
        self.call_id = call_id
        self.started = now
        self.health = health
        self.ring_deadline = None if ring_timeout is None else now + ring_timeout
        """The caller's patience: no answer from any trunk by then ends the call (480,
        cause 19), whatever attempt is ringing."""
        self.setup_timeout = setup_timeout if setup_timeout is not None else group.setup_timeout
        self.max_attempts = max_attempts if max_attempts is not None else group.max_attempts
        self.attempts: list[Attempt] = []
        """Finished attempts, in order."""
        self.skipped: list[Skip] = []
        """Trunks passed over without an attempt."""
        self._order = list(group.hunt_order())
        self._current: Target | None = None
        self._started_at = now
        self._deadline: float | None = None
        self._done: Outcome | None = None
        self._final: FinalResult | None = None

    @property
    def current(self) -> Target | None:
        """The attempt in progress, if any."""
        return self._current

    @property
    def finished(self) -> bool:
        """True once the call connected, failed finally, or ran out of trunks."""
        return self._done is not None

    def next_trunk(self, *, now: float) -> Target | None:
        """Seize a channel on the next usable trunk; ``None`` when none is left.

        After ``None`` the call is finished: answer the caller ``final_result()``.
        """
        if self._current is not None:
            raise RuntimeError("an attempt is in progress: feed its result first")
        if self._done is not None:
            return None
        if len(self.attempts) < self.max_attempts:
            while self._order:
                trunk = self._order.pop(0)
                why = self._unusable(trunk)
                if why is None:
                    channel = self.group.seize_on(trunk, self.call_id)
                    if channel is not None:
                        self._deadline = now + self.setup_timeout
                        self._started_at = now
                        self._current = Target(
                            trunk, channel, len(self.attempts) + 1, self._deadline
                        )
                        return self._current
                    why = "busy"
                self.skipped.append(Skip(trunk.name, why, now))
        self._exhaust()
        return None

    def _unusable(self, trunk: Trunk) -> str | None:
        if not trunk.enabled:
            return "disabled"
        if self.health is not None:
            health = self.health.get(trunk.name)
            if health is not None and health.state is HealthState.DISABLED:
                return "disabled"
            if health is not None and health.state is HealthState.DOWN:
                return "down"
        return None

    def _exhaust(self) -> None:
        self._done = Outcome.FINAL
        if not self.attempts:
            self._final = FinalResult(ALL_BUSY_STATUS, ALL_BUSY_CAUSE)
            return
        last = self.attempts[-1]
        status = last.status
        if status is None or status < 300:
            status = status_for_cause(last.cause) or ALL_BUSY_STATUS
        self._final = FinalResult(status, last.cause)

    def final_result(self) -> FinalResult:
        """What to answer the caller once the call failed (FINAL or exhausted)."""
        if self._final is None:
            raise RuntimeError("the call has not failed (yet)")
        return self._final

    @property
    def setup_pending(self) -> bool:
        """The current attempt has had no response yet (its setup timer runs)."""
        return self._current is not None and self._deadline is not None

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must run: the current attempt's setup timeout or the
        call's ring deadline, whichever comes first."""
        if self._current is None:
            return None
        times = [t for t in (self._deadline, self.ring_deadline) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> Decision | None:
        """End the current attempt if a deadline passed: no response within the setup
        timeout fails it over (cause 102); no answer by the ring deadline ends the call
        (480, cause 19). Both say to abandon the INVITE."""
        if self._current is None:
            return None
        if self._deadline is not None and now >= self._deadline:
            return replace(self.on_result(None, now=now, timeout=True), abandon=_TIMEOUT_CAUSE)
        if self.ring_deadline is not None and now >= self.ring_deadline:
            no_answer = self.on_result(480, now=now, reason=format_reason(_NO_ANSWER_CAUSE))
            return replace(no_answer, abandon=_NO_ANSWER_CAUSE)
        return None

    def caller_left(self, cause: int, *, now: float) -> Decision:
        """The caller hung up (or cancelled) while the current attempt was in progress:
        the call ends with 487 and the caller's Q.850 ``cause``; abandon the INVITE with
        it. The trunk is not blamed (a 487 is no breaker failure)."""
        decision = self.on_result(487, now=now, reason=format_reason(cause))
        return replace(decision, abandon=cause)

    def not_sent(self, status: int, cause: int, *, now: float) -> Decision:
        """The current attempt's INVITE was never sent, for a reason of our own (no RTP
        port for the leg: 503 with cause 47; an offer we cannot make: 488): the call
        ends with ``status`` and ``cause``. Another trunk would meet the same failure,
        and this one is not blamed (no breaker record)."""
        target = self._current
        if target is None:
            raise RuntimeError("no attempt in progress")
        return self._end(target, now, EndedBy.NOT_SENT, status, cause, "not sent", (), final=True)

    def check_health(self, now: float) -> Decision | None:
        """Fail the current ringing attempt over if its trunk is now reported down.

        Call it when the board reports a trunk down. Only an attempt that had a 1xx
        is concerned: it has no timer left but the caller's patience. One still
        waiting for its first response keeps its setup timer (failing all of those
        over at once would land a burst on the next trunk's B-channels).
        """
        target = self._current
        if target is None or self.health is None or self._deadline is not None:
            return None
        health = self.health.get(target.trunk.name)
        if health is None or health.state is not HealthState.DOWN:
            return None
        decision = self._end(
            target, now, EndedBy.TRUNK_DOWN, None, _TRANSPORT_CAUSE, "trunk down", ()
        )
        return replace(decision, abandon=_TRANSPORT_CAUSE)

    def on_provisional(self, status: int, *, now: float) -> None:
        """A 1xx arrived: the gateway is working on it, stop the setup timer."""
        if self._current is not None and 100 <= status <= 199:
            self._deadline = None

    def on_result(
        self,
        status: int | None,
        *,
        now: float,
        timeout: bool = False,
        transport_error: bool = False,
        reason: str | Reason | None = None,
    ) -> Decision:
        """Feed the current attempt's final result and decide what comes next.

        ``status`` is the final response's status (``None`` with ``timeout`` or
        ``transport_error``); ``reason`` is its Reason header value, if any.
        """
        target = self._current
        if target is None:
            raise RuntimeError("no attempt in progress")
        if status is not None and not 200 <= status <= 699:
            raise ValueError(f"not a final status: {status}")
        if status is None and not (timeout or transport_error):
            raise ValueError("a result without a status needs timeout or transport_error")
        parsed = parse_reason(reason) if isinstance(reason, str) else reason
        q850 = parsed.cause if parsed is not None and parsed.is_q850 else None

        if status is None:
            ended_by = EndedBy.TIMEOUT if timeout else EndedBy.TRANSPORT_ERROR
            cause = _TIMEOUT_CAUSE if timeout else _TRANSPORT_CAUSE
            text = f"no response within {self.setup_timeout:g}s" if timeout else "transport error"
        else:
            ended_by = EndedBy.RESPONSE
            cause = q850 if q850 is not None else cause_for_status(status)
            text = parsed.text if parsed is not None and parsed.text else f"{status}"
        events: tuple[HealthChanged, ...] = ()
        if self.health is not None:
            broken = is_failure_status(status) and cause not in _NOT_BROKEN_CAUSES
            events = tuple(
                self.health.record_call_result(
                    target.trunk.name, not broken, now=now, reason=f"call {text}"
                )
            )
        return self._end(target, now, ended_by, status, cause, text, events, q850)

    def _end(
        self,
        target: Target,
        now: float,
        ended_by: EndedBy,
        status: int | None,
        cause: int,
        text: str,
        events: tuple[HealthChanged, ...],
        q850: int | None = None,
        *,
        final: bool = False,
    ) -> Decision:
        outcome = Outcome.FINAL if final else classify(status, q850)
        attempt = Attempt(
            index=target.attempt,
            trunk=target.trunk.name,
            carrier=target.trunk.carrier,
            span=target.channel.span,
            channel=target.channel.number,
            started=self._started_at,
            ended=now,
            ended_by=ended_by,
            status=status,
            cause=cause,
            reason=text,
            outcome=outcome,
        )
        self.attempts.append(attempt)
        self._current = None
        self._deadline = None
        if outcome is Outcome.CONNECTED:
            self._done = outcome
            return Decision(outcome, attempt, None, events)
        self.group.release(self.call_id)
        if outcome is Outcome.FINAL:
            self._done = outcome
            self._final = FinalResult(status if status is not None else 503, cause)
            return Decision(outcome, attempt, self._final, events)
        return Decision(outcome, attempt, None, events)
