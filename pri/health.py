"""Per-trunk health: SIP OPTIONS probes and a circuit breaker.

Theory of operation
-------------------
Each trunk has a ``TrunkHealth`` state machine, fed ``now`` and results, never
reading a clock or touching a socket (DESIGN.md principle 1). The asyncio shell
does, per loop turn::

    deadline = board.next_deadline()           # re-arm one timer
    ... at deadline: for item in board.handle_timer(now):
            SendProbe     -> SIP layer sends OPTIONS to item.request_uri; its final
                             response (or transport error) goes back through
                             board.on_probe_response(item.trunk, item.probe_id, ...)
            HealthChanged -> log it, export it as a metric

Call attempts feed the same breaker through ``record_call_result`` (the failover
planner does this when given the board).

A node of several worker processes keeps one board, in the front; each worker reads
a :class:`RemoteHealthBoard` that forwards its call and probe results there and
applies the changes the front sends back. The front asks a worker to send each probe
(the workers hold the SIP user agent), so a trunk is probed once per node.

States (``HealthState``) and transitions::

    UP --(down_after consecutive failures)--> DOWN
    DOWN --(cool_down elapsed)--> HALF_OPEN          (a probe is sent at once)
    HALF_OPEN --(up_after consecutive successes)--> UP
    HALF_OPEN --(any failure)--> DOWN                (a fresh cool-down)
    any --(enabled: false)--> DISABLED --(enabled: true)--> UP

A failure is a probe or call attempt that got no response in time, a transport
error, 408 or a 5xx. Any other final response proves the gateway's SIP side
answers and is a success. Calls skip DOWN and DISABLED trunks without an
attempt; HALF_OPEN trunks take calls (each one is a trial).

Probes run every ``probe_interval`` in UP and HALF_OPEN and pause in DOWN (the
cool-down is the rest; the half-open probe is the trial). A probe's result is
counted once: a response after its ``probe_timeout`` has already counted as a
failure and is ignored (its ``probe_id`` is stale).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pri.trunk import Gateway, HealthConfig, Trunk

__all__ = [
    "HealthBoard",
    "HealthChanged",
    "HealthConfig",
    "HealthState",
    "RemoteHealthBoard",
    "SendProbe",
    "TrunkHealth",
    "is_failure_status",
    "options_target",
]


class HealthState(enum.Enum):
    """Breaker state of a trunk; the value is the metric label."""

    UP = "up"
    DOWN = "down"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class HealthChanged:
    """A trunk's breaker changed state: log it and export it as a metric."""

    trunk: str
    old: HealthState
    new: HealthState
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class SendProbe:
    """Command to the SIP layer: send OPTIONS (RFC 3261 §11) to a trunk's gateway."""

    trunk: str
    probe_id: int
    request_uri: str
    host: str
    port: int
    transport: str
    deadline: float
    """When the probe counts as failed if no response arrived."""


HealthItem = SendProbe | HealthChanged


def options_target(gateway: Gateway) -> str:
    """The Request-URI of an OPTIONS probe to ``gateway``.

    ``sips:`` for TLS (RFC 3261 §19.1; RFC 5630 §3.2.2 deprecates
    ``transport=tls``), else ``sip:...;transport=udp|tcp``. IPv6 literals are
    bracketed (RFC 3261 §25.1 ``IPv6reference``).
    """
    host = gateway.host
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    if gateway.transport == "tls":
        return f"sips:{host}:{gateway.port}"
    return f"sip:{host}:{gateway.port};transport={gateway.transport}"


def is_failure_status(status: int | None) -> bool:
    """True for results that count against a trunk: no response, 408 or 5xx."""
    return status is None or status == 408 or 500 <= status <= 599


class TrunkHealth:
    """The probe schedule and circuit breaker of one trunk (see module docstring)."""

    def __init__(self, trunk: Trunk, *, now: float, config: HealthConfig | None = None) -> None:
        self.trunk = trunk.name
        self.gateway = trunk.gateway
        self.config = config or trunk.health
        self.state = HealthState.UP if trunk.enabled else HealthState.DISABLED
        self.failures = 0
        """Consecutive failures counted in UP."""
        self.successes = 0
        """Consecutive successes counted in HALF_OPEN."""
        self.changed_at = now
        self._probe_seq = 0
        self._inflight: tuple[int, float] | None = None
        self._cool_down_until: float | None = None
        self._next_probe_at: float | None = now if self._probing else None

    def __repr__(self) -> str:
        return f"<TrunkHealth {self.trunk} {self.state.value}>"

    @property
    def _probing(self) -> bool:
        return self.config.probe and self.state in (HealthState.UP, HealthState.HALF_OPEN)

    @property
    def available(self) -> bool:
        """True when calls may be attempted on the trunk (UP or HALF_OPEN)."""
        return self.state in (HealthState.UP, HealthState.HALF_OPEN)

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must next run, or ``None`` if nothing is scheduled."""
        times = [
            t
            for t in (
                self._next_probe_at,
                self._inflight[1] if self._inflight else None,
                self._cool_down_until,
            )
            if t is not None
        ]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[HealthItem]:
        """Run what is due at ``now``: probe timeout, end of cool-down, next probe."""
        out: list[HealthItem] = []
        if self._inflight is not None and now >= self._inflight[1]:
            self._inflight = None
            out += self._failure(now, "probe timeout")
        if (
            self.state is HealthState.DOWN
            and self._cool_down_until is not None
            and now >= self._cool_down_until
        ):
            self._cool_down_until = None
            self.successes = 0
            out += self._move(HealthState.HALF_OPEN, now, "cool-down elapsed")
            if self._probing:
                self._next_probe_at = now
        if (
            self._probing
            and self._inflight is None
            and self._next_probe_at is not None
            and now >= self._next_probe_at
        ):
            out.append(self._send_probe(now))
        return out

    def _send_probe(self, now: float) -> SendProbe:
        self._probe_seq += 1
        deadline = now + self.config.probe_timeout
        self._inflight = (self._probe_seq, deadline)
        self._next_probe_at = now + self.config.probe_interval
        return SendProbe(
            self.trunk,
            self._probe_seq,
            options_target(self.gateway),
            self.gateway.host,
            self.gateway.port,
            self.gateway.transport,
            deadline,
        )

    def on_probe_response(
        self, probe_id: int, status: int | None, *, now: float, transport_error: bool = False
    ) -> list[HealthChanged]:
        """Feed the final response (or transport error) of probe ``probe_id``.

        Results of probes that already timed out, or unknown ids, are ignored.
        """
        if self._inflight is None or self._inflight[0] != probe_id:
            return []
        self._inflight = None
        if transport_error or is_failure_status(status):
            what = "transport error" if transport_error or status is None else f"{status}"
            return self._failure(now, f"probe {what}")
        return self._success(now, f"probe {status}")

    def skip_probe(self, probe_id: int, *, now: float) -> None:
        """Probe ``probe_id`` could not be sent (in a multi-worker node: no worker was
        up to send it): it counts neither way; the next one is due an interval later."""
        if self._inflight is None or self._inflight[0] != probe_id:
            return
        self._inflight = None
        self._next_probe_at = now + self.config.probe_interval

    def record_call_result(self, ok: bool, *, now: float, reason: str) -> list[HealthChanged]:
        """Count a call attempt's result against the breaker."""
        return self._success(now, reason) if ok else self._failure(now, reason)

    def set_enabled(self, enabled: bool, *, now: float) -> list[HealthChanged]:
        """Apply the manual ``enabled`` flag (e.g. after a config reload)."""
        if not enabled:
            if self.state is HealthState.DISABLED:
                return []
            self._inflight = self._cool_down_until = self._next_probe_at = None
            return self._move(HealthState.DISABLED, now, "disabled by configuration")
        if self.state is not HealthState.DISABLED:
            return []
        self.failures = self.successes = 0
        events = self._move(HealthState.UP, now, "enabled by configuration")
        self._next_probe_at = now if self._probing else None
        return events

    def _success(self, now: float, reason: str) -> list[HealthChanged]:
        if self.state is HealthState.UP:
            self.failures = 0
        elif self.state is HealthState.HALF_OPEN:
            self.successes += 1
            if self.successes >= self.config.up_after:
                self.failures = self.successes = 0
                return self._move(HealthState.UP, now, reason)
        return []

    def _failure(self, now: float, reason: str) -> list[HealthChanged]:
        if self.state is HealthState.UP:
            self.failures += 1
            if self.failures >= self.config.down_after:
                return self._go_down(now, f"{reason} ({self.failures} consecutive failures)")
        elif self.state is HealthState.HALF_OPEN:
            return self._go_down(now, f"{reason} (half-open trial failed)")
        return []

    def _go_down(self, now: float, reason: str) -> list[HealthChanged]:
        self.failures = self.successes = 0
        self._inflight = self._next_probe_at = None
        self._cool_down_until = now + self.config.cool_down
        return self._move(HealthState.DOWN, now, reason)

    def _move(self, new: HealthState, now: float, reason: str) -> list[HealthChanged]:
        old, self.state, self.changed_at = self.state, new, now
        return [HealthChanged(self.trunk, old, new, now, reason)]


class HealthBoard:
    """The ``TrunkHealth`` of every trunk of a plan, driven as one timer."""

    def __init__(self, trunks: Iterable[Trunk], *, now: float) -> None:
        self._health = {t.name: TrunkHealth(t, now=now) for t in trunks}

    def __getitem__(self, trunk: str) -> TrunkHealth:
        return self._health[trunk]

    def __iter__(self) -> Iterator[TrunkHealth]:
        return iter(self._health.values())

    def __len__(self) -> int:
        return len(self._health)

    def get(self, trunk: str) -> TrunkHealth | None:
        """The health of ``trunk``, or ``None`` if the board does not know it."""
        return self._health.get(trunk)

    def state(self, trunk: str) -> HealthState:
        """The breaker state of ``trunk``."""
        return self._health[trunk].state

    def is_available(self, trunk: str) -> bool:
        """True when calls may be attempted on ``trunk``; unknown trunks are available."""
        health = self._health.get(trunk)
        return health is None or health.available

    def next_deadline(self) -> float | None:
        """The earliest deadline over all trunks, or ``None``."""
        times = [d for h in self._health.values() if (d := h.next_deadline()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[HealthItem]:
        """Run every trunk's due work; returns probes to send and state changes."""
        out: list[HealthItem] = []
        for health in self._health.values():
            deadline = health.next_deadline()
            if deadline is not None and deadline <= now:
                out += health.handle_timer(now)
        return out

    def on_probe_response(
        self,
        trunk: str,
        probe_id: int,
        status: int | None,
        *,
        now: float,
        transport_error: bool = False,
    ) -> list[HealthChanged]:
        """Feed a probe's result to its trunk (see ``TrunkHealth.on_probe_response``)."""
        health = self._health.get(trunk)
        if health is None:
            return []
        return health.on_probe_response(probe_id, status, now=now, transport_error=transport_error)

    def skip_probe(self, trunk: str, probe_id: int, *, now: float) -> None:
        """A probe that could not be sent (see ``TrunkHealth.skip_probe``)."""
        health = self._health.get(trunk)
        if health is not None:
            health.skip_probe(probe_id, now=now)

    def record_call_result(
        self, trunk: str, ok: bool, *, now: float, reason: str
    ) -> list[HealthChanged]:
        """Count a call attempt's result on ``trunk`` against its breaker."""
        health = self._health.get(trunk)
        return [] if health is None else health.record_call_result(ok, now=now, reason=reason)


class RemoteHealthBoard(HealthBoard):
    """A worker's view of a board kept by another process (a multi-worker node).

    Calls read the trunks' states from it as from a :class:`HealthBoard`; what would
    change a state (a call attempt's result, a probe's result) is handed to
    ``forward`` as a message for the owner of the real board, and nothing changes
    here until the owner's change comes back through :meth:`apply`. It sends no
    probes of its own (the owner asks for them, see ``SendProbe``) and has no timer.
    """

    def __init__(
        self,
        trunks: Iterable[Trunk],
        *,
        now: float,
        forward: Callable[[tuple[Any, ...]], None],
    ) -> None:
        super().__init__(trunks, now=now)
        self.forward = forward
        for health in self:
            health._next_probe_at = None  # the owner probes

    def next_deadline(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> list[HealthItem]:
        return []

    def record_call_result(
        self, trunk: str, ok: bool, *, now: float, reason: str
    ) -> list[HealthChanged]:
        if trunk in self._health:
            self.forward(("call_result", trunk, ok, reason))
        return []

    def on_probe_response(
        self,
        trunk: str,
        probe_id: int,
        status: int | None,
        *,
        now: float,
        transport_error: bool = False,
    ) -> list[HealthChanged]:
        if trunk in self._health:
            self.forward(("probe_result", trunk, probe_id, status, transport_error))
        return []

    def apply(self, trunk: str, state: str, *, at: float, reason: str) -> HealthChanged | None:
        """The owner's board moved ``trunk`` to ``state`` (a :class:`HealthState`
        value): the change as this view saw it, or ``None`` if it changed nothing."""
        health = self._health.get(trunk)
        new = HealthState(state)
        if health is None or health.state is new:
            return None
        old, health.state, health.changed_at = health.state, new, at
        return HealthChanged(trunk, old, new, at, reason)
