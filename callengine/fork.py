"""Forking: ring several legs at once, the first to answer wins (sans-IO).

Theory of operation
-------------------
When a call rings a user's phones or a ring group "in parallel", the B2BUA sends one
INVITE per target and a :class:`Fork` decides what happens next. It is fed what
happens to the legs (answered, failed with a status and Q.850 cause, gone) and to
the caller (hung up), and the time; it returns commands for the asyncio shell to
carry out, and exposes its one deadline (the ring timeout)::

    answered(i)          -> Connect(i), Abandon(j, 26) for every other leg j
    failed(i, ...)       -> nothing yet, or Fail(...) when no leg is left
    caller_gone(cause)   -> Abandon(j, cause) for every leg, Fail(...)
    handle_timer(now)    -> at the deadline: Abandon(j, 19) for every leg, Fail(...)

Cause 26 is Q.850 "non-selected user clearing" (another phone answered), 19 "no
answer from user". The final status follows RFC 3261 §16.7 step 6 in spirit: a busy
(486) or decline (600) anywhere means the user is busy (486, cause 17); when every
leg failed, the last failure is what the caller gets; otherwise nobody answered in
time (480, cause 19). Legs are named by small integers chosen by the shell.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Abandon", "Command", "Connect", "Fail", "Fork"]

CAUSE_USER_BUSY = 17
CAUSE_NO_USER_RESPONDING = 18
CAUSE_NO_ANSWER = 19
CAUSE_NON_SELECTED = 26


@dataclass(frozen=True, slots=True)
class Connect:
    """Bridge the caller to this leg (it answered first)."""

    leg: int


@dataclass(frozen=True, slots=True)
class Abandon:
    """CANCEL (or BYE) this leg with a Q.850 cause; its result no longer matters."""

    leg: int
    cause: int


@dataclass(frozen=True, slots=True)
class Fail:
    """Nobody answered: the final status and Q.850 cause for the caller."""

    status: int
    cause: int


Command = Connect | Abandon | Fail


class Fork:
    """One parallel ringing (see the module comment)."""

    def __init__(self, legs: Iterable[int], *, timeout: float, now: float) -> None:
        self.pending: list[int] = list(legs)
        self.count = len(self.pending)
        self.deadline = now + timeout
        self.failures: list[tuple[int, int]] = []
        self.done = False

    def start(self) -> list[Command]:
        """Commands before any event: a fork with no leg fails at once."""
        if self.pending:
            return []
        self.done = True
        return [Fail(480, CAUSE_NO_USER_RESPONDING)]

    def next_deadline(self) -> float | None:
        return None if self.done else self.deadline

    def answered(self, leg: int, now: float) -> list[Command]:
        if self.done or leg not in self.pending:
            # a late 2xx (after another leg won, or after the caller left)
            return [Abandon(leg, CAUSE_NON_SELECTED)]
        self.pending.remove(leg)
        self.done = True
        others = [Abandon(other, CAUSE_NON_SELECTED) for other in self.pending]
        self.pending.clear()
        return [Connect(leg), *others]

    def failed(self, leg: int, status: int, cause: int, now: float) -> list[Command]:
        """A leg's final non-2xx (``cause`` 0 when it carried none)."""
        if self.done or leg not in self.pending:
            return []
        self.pending.remove(leg)
        self.failures.append((status, cause))
        return self._finish(CAUSE_NO_ANSWER) if not self.pending else []

    def forget(self, leg: int, now: float) -> list[Command]:
        """A leg the shell gave up on (it could not be sent): no result, no failure."""
        if self.done or leg not in self.pending:
            return []
        self.pending.remove(leg)
        return self._finish(CAUSE_NO_ANSWER) if not self.pending else []

    def caller_gone(self, cause: int, now: float) -> list[Command]:
        """The caller hung up: every leg still ringing is abandoned with its cause."""
        return [] if self.done else self._finish(cause)

    def handle_timer(self, now: float) -> list[Command]:
        if self.done or now < self.deadline:
            return []
        return self._finish(CAUSE_NO_ANSWER)

    def _finish(self, cause: int) -> list[Command]:
        self.done = True
        commands: list[Command] = [Abandon(leg, cause) for leg in self.pending]
        self.pending.clear()
        failures = self.failures
        if any(status in (486, 600) for status, _ in failures):
            commands.append(Fail(486, CAUSE_USER_BUSY))
        elif failures and len(failures) == self.count:
            status, leg_cause = failures[-1]
            commands.append(Fail(status, leg_cause or CAUSE_NO_USER_RESPONDING))
        else:
            commands.append(Fail(480, CAUSE_NO_ANSWER))
        return commands
