"""Trunks, spans and B-channels, trunk groups and hunting, outbound routes.

A PRI trunk is reached through a media gateway that speaks SIP: the engine sends
INVITEs to the gateway's host/port and the gateway seizes a B-channel on one of
its spans. The engine keeps its own count of busy B-channels per trunk so that it
never offers a gateway more calls than its spans carry (a 24th call on a T1
would only come back as 503/cause 34 after a round trip).

Everything here is sans-IO: no sockets, no clock. ``Trunk`` holds configuration
plus channel accounting; ``TrunkGroup`` orders trunks for a call (hunting);
``TrunkPlan`` is the whole node-level configuration as loaded by
``load_trunks`` from an engine config file.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

from pri.channels import ChannelTable
from pri.dialplan import POLICY_FIELDS, DialPolicy

__all__ = [
    "ALL_BUSY_CAUSE",
    "ALL_BUSY_STATUS",
    "Channel",
    "Credentials",
    "DidRange",
    "Gateway",
    "HealthConfig",
    "Hunting",
    "OutboundRoute",
    "RouteMatch",
    "Span",
    "SPAN_CHANNELS",
    "Trunk",
    "TrunkConfigError",
    "TrunkGroup",
    "TrunkPlan",
    "load_trunks",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# When no trunk of a group has a free B-channel (or every one is down) the caller
# gets 503 with Reason: Q.850;cause=34 "No circuit/channel available" -- the
# response RFC 3398 §7.2.4.1 gives for cause 34.
ALL_BUSY_STATUS: Final = 503
ALL_BUSY_CAUSE: Final = 34

# B-channels per PRI span: T1 is 23B+D, E1 is 30B+D (timeslot 16 is the D-channel).
SPAN_CHANNELS: Final[Mapping[str, int]] = {"T1": 23, "E1": 30}
_MAX_SPAN_CHANNELS: Final = 31
_TRANSPORTS: Final = ("udp", "tcp", "tls")
_DIAL_CHARS: Final = frozenset("0123456789+*#")


class TrunkConfigError(ValueError):
    """A mistake in the trunk configuration; ``str()`` names the file and field.

    ``source`` is the file (or other origin) given to ``load_trunks``; ``field``
    is the path inside it, e.g. ``trunk_groups.pstn.trunks[1]``.
    """

    def __init__(self, message: str, *, source: str, field: str = "") -> None:
        self.message = message
        self.source = source
        self.field = field
        super().__init__(f"{source}: {field}: {message}" if field else f"{source}: {message}")


# --- configuration values ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gateway:
    """Where the SIP side of a trunk's media gateway listens."""

    host: str
    """Host name or IP literal of the gateway."""
    port: int = 5060
    """SIP port of the gateway."""
    transport: str = "udp"
    """``udp``, ``tcp`` or ``tls``."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Digest credentials (RFC 3261 §22) the gateway may challenge for."""

    username: str
    password: str = field(repr=False)
    realm: str | None = None
    """Answer only challenges for this realm; ``None``: any realm."""


@dataclass(frozen=True, slots=True)
class Span:
    """One PRI span (E1, T1, or a fractional one) of a trunk."""

    name: str
    kind: str
    """``E1``, ``T1`` or ``custom`` (explicit channel count)."""
    channels: int
    """Number of B-channels that carry calls."""


@dataclass(frozen=True, slots=True)
class DidRange:
    """Numbers a trunk delivers: a prefix, or an inclusive numeric range of equal length."""

    low: str
    high: str | None = None
    """``None``: ``low`` is a prefix."""

    def matches(self, did: str) -> bool:
        """True when ``did`` (a leading ``+`` ignored) is in this range."""
        number = did[1:] if did.startswith("+") else did
        if self.high is None:
            return number.startswith(self.low)
        return len(number) == len(self.low) and number.isdigit() and self.low <= number <= self.high


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Health-probe and circuit-breaker settings of a trunk (``trunks.<name>.health``)."""

    probe: bool = True
    """Send SIP OPTIONS probes (RFC 3261 §11). Some gateways do not answer them."""
    probe_interval: float = 30.0
    """Seconds between probes."""
    probe_timeout: float = 5.0
    """Seconds to wait for a probe's response before counting a failure."""
    down_after: int = 3
    """Consecutive failures (probes or call attempts) that take the trunk down."""
    up_after: int = 2
    """Consecutive successes, once half-open, that bring it back up."""
    cool_down: float = 30.0
    """Seconds a down trunk rests before a half-open trial."""


@dataclass(frozen=True, slots=True)
class Channel:
    """A seized B-channel: ``number`` counts 1..channels within ``span``."""

    trunk: str
    span: str
    number: int
    call_id: str


# --- trunks --------------------------------------------------------------------


class Trunk:
    """A PRI trunk: its gateway, spans and B-channel accounting.

    Configuration attributes are read-only by convention; the channel state
    changes only through ``seize`` and ``release``.
    """

    __slots__ = (
        "_base",
        "_calls",
        "_free",
        "_slots",
        "_table",
        "carrier",
        "credentials",
        "dids",
        "enabled",
        "gateway",
        "health",
        "name",
        "sources",
        "spans",
    )

    def __init__(
        self,
        name: str,
        *,
        carrier: str,
        gateway: Gateway,
        spans: Sequence[Span],
        credentials: Credentials | None = None,
        dids: Sequence[DidRange] = (),
        sources: Sequence[IPNetwork] = (),
        enabled: bool = True,
        health: HealthConfig | None = None,
    ) -> None:
        if not spans:
            raise ValueError(f"trunk {name!r} needs at least one span")
        self.name = name
        self.carrier = carrier
        self.gateway = gateway
        self.spans = tuple(spans)
        self.credentials = credentials
        self.dids = tuple(dids)
        self.sources = tuple(sources)
        self.enabled = enabled
        self.health = health or HealthConfig()
        # Free channels as a heap of (span index, channel number): a seize takes
        # the lowest, so a trunk fills span 1 channel 1 upwards.
        self._free: list[tuple[int, int]] = [
            (i, n) for i, span in enumerate(self.spans) for n in range(1, span.channels + 1)
        ]
        heapq.heapify(self._free)
        self._calls: dict[str, Channel] = {}
        # A node of several workers shares its channels (pri.channels.SharedChannels):
        # then a seize takes the lowest free slot of this trunk's part of the table.
        self._table: ChannelTable | None = None
        self._base = 0
        self._slots: tuple[tuple[int, int], ...] = ()

    def __repr__(self) -> str:
        return f"<Trunk {self.name} {self.in_use}/{self.capacity}>"

    def share(self, table: ChannelTable, base: int) -> None:
        """Account B-channels in ``table`` (slots ``base``.. ``base+capacity``), shared
        with the node's other workers, instead of in this object. Call before any seize."""
        self._table = table
        self._base = base
        self._slots = tuple(
            (i, n) for i, span in enumerate(self.spans) for n in range(1, span.channels + 1)
        )

    @property
    def capacity(self) -> int:
        """Total B-channels over all spans."""
        return sum(span.channels for span in self.spans)

    @property
    def in_use(self) -> int:
        """B-channels currently seized (on the whole node when shared)."""
        if self._table is not None:
            return len(self._slots) - self._table.free(self._base, len(self._slots))
        return len(self._calls)

    @property
    def free(self) -> int:
        """B-channels currently free (on the whole node when shared)."""
        if self._table is not None:
            return self._table.free(self._base, len(self._slots))
        return len(self._free)

    def holders(self) -> list[str]:
        """The call ids holding a channel on this trunk (for auditing against live calls)."""
        return list(self._calls)

    def channel_of(self, call_id: str) -> Channel | None:
        """The channel ``call_id`` holds on this trunk, if any."""
        return self._calls.get(call_id)

    def seize(self, call_id: str) -> Channel | None:
        """Seize a free B-channel for ``call_id``; ``None`` when all are busy.

        Seizing again for a call that already holds a channel returns that channel.
        """
        held = self._calls.get(call_id)
        if held is not None:
            return held
        if self._table is not None:
            slot = self._table.take(self._base, len(self._slots))
            if slot is None:
                return None
            span_index, number = self._slots[slot]
        elif not self._free:
            return None
        else:
            span_index, number = heapq.heappop(self._free)
        channel = Channel(self.name, self.spans[span_index].name, number, call_id)
        self._calls[call_id] = channel
        return channel

    def release(self, call_id: str) -> Channel | None:
        """Free the channel ``call_id`` holds; ``None`` (and no change) if it holds none."""
        channel = self._calls.pop(call_id, None)
        if channel is not None:
            span_index = next(i for i, s in enumerate(self.spans) if s.name == channel.span)
            if self._table is not None:
                self._table.give(self._base + self._slots.index((span_index, channel.number)))
            else:
                heapq.heappush(self._free, (span_index, channel.number))
        return channel

    def accepts_did(self, did: str) -> bool:
        """True when this trunk delivers ``did`` (a trunk without DID ranges delivers any)."""
        return not self.dids or any(r.matches(did) for r in self.dids)

    def is_source(self, address: IPAddress) -> bool:
        """True when ``address`` is one of the trunk's trusted gateway addresses."""
        return any(address in net for net in self.sources)


class Hunting(enum.Enum):
    """How a trunk group orders its trunks for a new call."""

    PRIORITY = "priority"
    """Always in the configured order."""
    ROUND_ROBIN = "round_robin"
    """Start after the trunk that took the previous call."""
    LEAST_USED = "least_used"
    """Lowest channel occupancy (in use / capacity) first; ties in configured order."""
    WEIGHTED = "weighted"
    """Random order drawn by weight (sampling without replacement), from the group's RNG."""


class TrunkGroup:
    """Trunks from one or more carriers, hunted in order for outbound calls."""

    def __init__(
        self,
        name: str,
        trunks: Sequence[Trunk],
        *,
        strategy: Hunting = Hunting.PRIORITY,
        weights: Sequence[int] | None = None,
        setup_timeout: float = 5.0,
        max_attempts: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not trunks:
            raise ValueError(f"trunk group {name!r} needs at least one trunk")
        if weights is not None and len(weights) != len(trunks):
            raise ValueError("weights must give one weight per trunk")
        self.name = name
        self.trunks = tuple(trunks)
        self.strategy = strategy
        self.weights = tuple(weights) if weights is not None else (1,) * len(self.trunks)
        self.setup_timeout = setup_timeout
        """Seconds without any response to an INVITE before failing over."""
        self.max_attempts = max_attempts if max_attempts is not None else len(self.trunks)
        """Trunks tried at most per call."""
        self.rng = rng if rng is not None else random.Random()
        self._next = 0  # round-robin start index
        self._calls: dict[str, Trunk] = {}

    def __repr__(self) -> str:
        return f"<TrunkGroup {self.name} {self.strategy.value} {[t.name for t in self.trunks]}>"

    @property
    def capacity(self) -> int:
        """B-channels over all member trunks."""
        return sum(t.capacity for t in self.trunks)

    @property
    def in_use(self) -> int:
        """B-channels this group's calls hold."""
        return len(self._calls)

    def hunt_order(self) -> tuple[Trunk, ...]:
        """The order to try trunks for a new call (busy or down trunks included).

        Draws from ``rng`` for ``weighted``; does not change round-robin state
        (seizing does).
        """
        trunks = self.trunks
        if self.strategy is Hunting.ROUND_ROBIN:
            start = self._next % len(trunks)
            return trunks[start:] + trunks[:start]
        if self.strategy is Hunting.LEAST_USED:
            order = sorted(range(len(trunks)), key=lambda i: (_occupancy(trunks[i]), i))
            return tuple(trunks[i] for i in order)
        if self.strategy is Hunting.WEIGHTED:
            return self._weighted_order()
        return trunks

    def _weighted_order(self) -> tuple[Trunk, ...]:
        remaining = list(zip(self.trunks, self.weights, strict=True))
        order: list[Trunk] = []
        while remaining:
            total = sum(w for _, w in remaining)
            point = self.rng.random() * total
            for i, (trunk, weight) in enumerate(remaining):
                point -= weight
                if point < 0 or i == len(remaining) - 1:
                    order.append(trunk)
                    del remaining[i]
                    break
        return tuple(order)

    def seize(self, call_id: str, *, skip: Callable[[Trunk], bool] | None = None) -> Channel | None:
        """Seize a B-channel on the first trunk in hunt order that has one free.

        Disabled trunks, and trunks for which ``skip`` returns true (e.g. down
        ones), are passed over. ``None`` when nothing is free: answer the call
        with ``ALL_BUSY_STATUS`` and Reason Q.850 cause ``ALL_BUSY_CAUSE``.
        """
        for trunk in self.hunt_order():
            if not trunk.enabled or (skip is not None and skip(trunk)):
                continue
            channel = self.seize_on(trunk, call_id)
            if channel is not None:
                return channel
        return None

    def seize_on(self, trunk: Trunk, call_id: str) -> Channel | None:
        """Seize a B-channel for ``call_id`` on ``trunk`` (a member); ``None`` if it is full."""
        index = self.trunks.index(trunk)
        held = self._calls.get(call_id)
        if held is not None and held is not trunk:
            held.release(call_id)
        channel = trunk.seize(call_id)
        if channel is None:
            self._calls.pop(call_id, None)
            return None
        self._calls[call_id] = trunk
        self._next = index + 1
        return channel

    def release(self, call_id: str) -> Channel | None:
        """Free the channel ``call_id`` holds through this group (idempotent)."""
        trunk = self._calls.pop(call_id, None)
        return trunk.release(call_id) if trunk is not None else None


def _occupancy(trunk: Trunk) -> float:
    return trunk.in_use / trunk.capacity


# --- routes and the plan -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboundRoute:
    """Called numbers starting with ``prefix`` go out through ``group``.

    The number sent to the gateway drops its first ``strip`` digits, then gets
    ``prepend`` in front. ``sources`` (if any) restricts which trusted sources
    may use the route.
    """

    prefix: str
    group: str
    strip: int = 0
    prepend: str = ""
    sources: tuple[IPNetwork, ...] = ()

    def rewrite(self, number: str) -> str:
        """The number to dial on the trunk for called ``number``."""
        return self.prepend + number[self.strip :]


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The result of routing a called number: the route, its group and the number to dial."""

    route: OutboundRoute
    group: TrunkGroup
    number: str


def _parse_ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return None


@dataclass(slots=True)
class TrunkPlan:
    """The node's trunks, trunk groups, outbound routes and trusted sources."""

    trunks: Mapping[str, Trunk]
    groups: Mapping[str, TrunkGroup]
    routes: tuple[OutboundRoute, ...] = ()
    trusted_sources: tuple[IPNetwork, ...] = ()
    source: str = "<config>"
    dial_policy: DialPolicy = field(default_factory=DialPolicy)
    """What may be dialled out through the trunks (toll-fraud rules, pri.dialplan)."""

    def is_trusted(self, source_ip: str) -> bool:
        """True when ``source_ip`` may place outbound calls (``trusted_sources``)."""
        address = _parse_ip(source_ip)
        return address is not None and any(address in net for net in self.trusted_sources)

    def route_outbound(
        self, number: str, *, source_ip: str, authenticated: bool = False
    ) -> RouteMatch | None:
        """Route called ``number`` from ``source_ip`` by longest matching prefix.

        ``None`` when the source is not trusted (answer 403), or no route
        matches (answer 404), or the rewritten number would be empty.
        ``authenticated``: the caller proved to be a tenant's user (Digest), so it
        may use the routes from an untrusted address (still not a route whose
        ``sources`` leave its address out).
        Never raises on network input.
        """
        address = _parse_ip(source_ip)
        trusted = address is not None and any(address in net for net in self.trusted_sources)
        if not trusted and not authenticated:
            return None
        best: OutboundRoute | None = None
        for route in self.routes:
            if not number.startswith(route.prefix):
                continue
            if route.sources and (
                address is None or not any(address in net for net in route.sources)
            ):
                continue
            if best is None or len(route.prefix) > len(best.prefix):
                best = route
        if best is None:
            return None
        dialled = best.rewrite(number)
        if not dialled:
            return None
        return RouteMatch(best, self.groups[best.group], dialled)

    def match_inbound(self, source_ip: str, did: str) -> Trunk | None:
        """The enabled trunk an INVITE from ``source_ip`` for ``did`` arrived on, if any.

        A trunk matches when ``source_ip`` is one of its sources and it delivers
        ``did``; the first in configuration order wins. Never raises.
        """
        address = _parse_ip(source_ip)
        if address is None:
            return None
        for trunk in self.trunks.values():
            if trunk.enabled and trunk.is_source(address) and trunk.accepts_did(did):
                return trunk
        return None


# --- loading -----------------------------------------------------------------

_MISSING: Final = object()


class _Reader:
    """Typed field access that raises ``TrunkConfigError`` naming the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> NoReturn:
        raise TrunkConfigError(message, source=self.source, field=path)

    def mapping(self, value: object, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(path, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"keys must be strings, got {key!r}")
        return value

    def sequence(self, value: object, path: str) -> Sequence[Any]:
        if not isinstance(value, list | tuple):
            self.fail(path, f"expected a list, got {_kind(value)}")
        return value

    def only(self, m: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        for key in m:
            if key not in allowed:
                self.fail(_join(path, key), f"unknown field (expected one of: {_names(allowed)})")

    def string(self, m: Mapping[str, Any], key: str, path: str, default: Any = _MISSING) -> Any:
        value = m.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                self.fail(path, f"missing field '{key}'")
            return default
        if not isinstance(value, str) or not value:
            self.fail(_join(path, key), f"expected a non-empty string, got {_kind(value)}")
        return value

    def integer(
        self, m: Mapping[str, Any], key: str, path: str, default: int, *, low: int, high: int
    ) -> int:
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(_join(path, key), f"expected an integer, got {_kind(value)}")
        if not low <= value <= high:
            self.fail(_join(path, key), f"must be between {low} and {high}, got {value}")
        return value

    def number(self, m: Mapping[str, Any], key: str, path: str, default: float) -> float:
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(_join(path, key), f"expected a number of seconds, got {_kind(value)}")
        if not value > 0:
            self.fail(_join(path, key), f"must be greater than 0, got {value}")
        return float(value)

    def boolean(self, m: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            self.fail(_join(path, key), f"expected true or false, got {_kind(value)}")
        return value

    def networks(self, value: object, path: str) -> tuple[IPNetwork, ...]:
        nets: list[IPNetwork] = []
        for i, item in enumerate(self.sequence(value, path)):
            item_path = f"{path}[{i}]"
            if not isinstance(item, str):
                self.fail(item_path, f"expected an address or network, got {_kind(item)}")
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.fail(item_path, f"invalid address or network {item!r}")
        return tuple(nets)

    def dial_string(self, value: object, path: str, *, empty_ok: bool) -> str:
        if not isinstance(value, str):
            hint = " (quote numbers in YAML)" if isinstance(value, int) else ""
            self.fail(path, f"expected a string of digits, got {_kind(value)}{hint}")
        if (not value and not empty_ok) or not set(value) <= _DIAL_CHARS:
            self.fail(path, f"invalid number {value!r} (digits, '+', '*', '#')")
        return value


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_TRUNK_FIELDS: Final = (
    "carrier",
    "gateway",
    "auth",
    "dids",
    "sources",
    "spans",
    "enabled",
    "health",
)
_GROUP_FIELDS: Final = ("strategy", "trunks", "setup_timeout", "max_attempts")
_ROUTE_FIELDS: Final = ("prefix", "group", "strip", "prepend", "sources")
_HEALTH_FIELDS: Final = (
    "probe",
    "probe_interval",
    "probe_timeout",
    "down_after",
    "up_after",
    "cool_down",
)


def _load_gateway(r: _Reader, value: object, path: str) -> Gateway:
    m = r.mapping(value, path)
    r.only(m, path, ("host", "port", "transport"))
    host = r.string(m, "host", path)
    port = r.integer(m, "port", path, 5060, low=1, high=65535)
    transport = m.get("transport", "udp")
    if not isinstance(transport, str) or transport.lower() not in _TRANSPORTS:
        r.fail(
            _join(path, "transport"),
            f"unknown transport {transport!r} (expected one of: {', '.join(_TRANSPORTS)})",
        )
    return Gateway(host, port, transport.lower())


def _load_credentials(r: _Reader, value: object, path: str) -> Credentials:
    m = r.mapping(value, path)
    r.only(m, path, ("username", "password", "realm"))
    return Credentials(
        r.string(m, "username", path),
        r.string(m, "password", path),
        r.string(m, "realm", path, None),
    )


def _load_span(r: _Reader, value: object, path: str, trunk: str, index: int) -> Span:
    m = r.mapping(value, path)
    r.only(m, path, ("name", "type", "channels"))
    name = r.string(m, "name", path, f"{trunk}/{index + 1}")
    kind = m.get("type")
    if kind is None:
        if "channels" not in m:
            r.fail(path, "a span needs 'type' (E1 or T1) or 'channels'")
        channels = r.integer(m, "channels", path, 0, low=1, high=_MAX_SPAN_CHANNELS)
        return Span(name, "custom", channels)
    if not isinstance(kind, str) or kind.upper() not in SPAN_CHANNELS:
        r.fail(_join(path, "type"), f"unknown span type {kind!r} (expected E1 or T1)")
    kind = kind.upper()
    full = SPAN_CHANNELS[kind]
    channels = r.integer(m, "channels", path, full, low=1, high=full)
    return Span(name, kind, channels)


def _load_did(r: _Reader, value: object, path: str) -> DidRange:
    if not isinstance(value, str):
        hint = " (quote numbers in YAML)" if isinstance(value, int) else ""
        r.fail(path, f"expected a number prefix or range 'low-high', got {_kind(value)}{hint}")
    text = value.strip().removeprefix("+")
    low, dash, high = text.partition("-")
    low, high = low.strip().removeprefix("+"), high.strip().removeprefix("+")
    if not low.isdigit() or not low.isascii():
        r.fail(path, f"invalid DID {value!r} (digits, or a range 'low-high')")
    if not dash:
        return DidRange(low)
    if not high.isdigit() or not high.isascii() or len(high) != len(low) or high < low:
        r.fail(path, f"invalid DID range {value!r} (equal-length low-high, low <= high)")
    return DidRange(low, high)


def _load_health(r: _Reader, value: object, path: str) -> HealthConfig:
    m = r.mapping(value, path)
    r.only(m, path, _HEALTH_FIELDS)
    d = HealthConfig()
    config = HealthConfig(
        probe=r.boolean(m, "probe", path, d.probe),
        probe_interval=r.number(m, "probe_interval", path, d.probe_interval),
        probe_timeout=r.number(m, "probe_timeout", path, d.probe_timeout),
        down_after=r.integer(m, "down_after", path, d.down_after, low=1, high=1000),
        up_after=r.integer(m, "up_after", path, d.up_after, low=1, high=1000),
        cool_down=r.number(m, "cool_down", path, d.cool_down),
    )
    if config.probe_timeout > config.probe_interval:
        r.fail(
            _join(path, "probe_timeout"),
            f"must not exceed probe_interval ({config.probe_interval:g}), "
            f"got {config.probe_timeout:g}",
        )
    return config


def _load_trunk(r: _Reader, name: str, value: object, path: str) -> Trunk:
    m = r.mapping(value, path)
    r.only(m, path, _TRUNK_FIELDS)
    carrier = r.string(m, "carrier", path)
    if "gateway" not in m:
        r.fail(path, "missing field 'gateway'")
    gateway = _load_gateway(r, m["gateway"], _join(path, "gateway"))
    if "spans" not in m:
        r.fail(path, "missing field 'spans'")
    span_values = r.sequence(m["spans"], _join(path, "spans"))
    if not span_values:
        r.fail(_join(path, "spans"), "a trunk needs at least one span")
    spans = [_load_span(r, v, f"{path}.spans[{i}]", name, i) for i, v in enumerate(span_values)]
    seen: set[str] = set()
    for i, span in enumerate(spans):
        if span.name in seen:
            r.fail(f"{path}.spans[{i}].name", f"duplicate span name {span.name!r}")
        seen.add(span.name)
    credentials = (
        _load_credentials(r, m["auth"], _join(path, "auth")) if m.get("auth") is not None else None
    )
    dids_path = _join(path, "dids")
    dids = [
        _load_did(r, v, f"{dids_path}[{i}]")
        for i, v in enumerate(r.sequence(m.get("dids", []), dids_path))
    ]
    if "sources" in m:
        sources = r.networks(m["sources"], _join(path, "sources"))
    else:
        # A gateway given as an IP literal is its own trusted source.
        address = _parse_ip(gateway.host)
        sources = (ipaddress.ip_network(address),) if address is not None else ()
    health = (
        _load_health(r, m["health"], _join(path, "health")) if "health" in m else HealthConfig()
    )
    return Trunk(
        name,
        carrier=carrier,
        gateway=gateway,
        spans=spans,
        credentials=credentials,
        dids=dids,
        sources=sources,
        enabled=r.boolean(m, "enabled", path, True),
        health=health,
    )


def _load_group(
    r: _Reader,
    name: str,
    value: object,
    path: str,
    trunks: Mapping[str, Trunk],
    rng: random.Random,
) -> TrunkGroup:
    m = r.mapping(value, path)
    r.only(m, path, _GROUP_FIELDS)
    raw_strategy = m.get("strategy", Hunting.PRIORITY.value)
    try:
        strategy = Hunting(raw_strategy)
    except ValueError:
        r.fail(
            _join(path, "strategy"),
            f"unknown strategy {raw_strategy!r} "
            f"(expected one of: {', '.join(h.value for h in Hunting)})",
        )
    if "trunks" not in m:
        r.fail(path, "missing field 'trunks'")
    members_path = _join(path, "trunks")
    members = r.sequence(m["trunks"], members_path)
    if not members:
        r.fail(members_path, "a trunk group needs at least one trunk")
    chosen: list[Trunk] = []
    weights: list[int] = []
    for i, member in enumerate(members):
        member_path = f"{members_path}[{i}]"
        weight = 1
        if isinstance(member, Mapping):
            r.only(member, member_path, ("trunk", "weight"))
            trunk_name = r.string(member, "trunk", member_path)
            weight = r.integer(member, "weight", member_path, 1, low=1, high=1_000_000)
        elif isinstance(member, str):
            trunk_name = member
        else:
            r.fail(member_path, f"expected a trunk name, got {_kind(member)}")
        if trunk_name not in trunks:
            r.fail(member_path, f"unknown trunk {trunk_name!r}")
        trunk = trunks[trunk_name]
        if trunk in chosen:
            r.fail(member_path, f"trunk {trunk_name!r} is listed twice")
        chosen.append(trunk)
        weights.append(weight)
    max_attempts = r.integer(m, "max_attempts", path, len(chosen), low=1, high=len(chosen))
    return TrunkGroup(
        name,
        chosen,
        strategy=strategy,
        weights=weights,
        setup_timeout=r.number(m, "setup_timeout", path, 5.0),
        max_attempts=max_attempts,
        rng=rng,
    )


def _load_route(
    r: _Reader, value: object, path: str, groups: Mapping[str, TrunkGroup]
) -> OutboundRoute:
    m = r.mapping(value, path)
    r.only(m, path, _ROUTE_FIELDS)
    if "prefix" not in m:
        r.fail(path, "missing field 'prefix'")
    prefix = r.dial_string(m["prefix"], _join(path, "prefix"), empty_ok=True)
    group = m.get("group")
    if group is None:
        r.fail(path, "missing field 'group'")
    if not isinstance(group, str) or group not in groups:
        r.fail(_join(path, "group"), f"unknown trunk group {group!r}")
    strip = r.integer(m, "strip", path, 0, low=0, high=64)
    prepend = r.dial_string(m.get("prepend", ""), _join(path, "prepend"), empty_ok=True)
    sources = r.networks(m["sources"], _join(path, "sources")) if "sources" in m else ()
    return OutboundRoute(prefix, group, strip, prepend, sources)


def load_trunks(
    data: Mapping[str, Any], *, source: str, rng: random.Random | None = None
) -> TrunkPlan:
    """Load the trunk part of an engine config (``trunks``, ``trunk_groups``,
    ``outbound_routes``, ``trusted_sources``); other top-level keys are ignored.

    ``rng`` drives weighted hunting (pass a seeded ``random.Random`` for
    reproducible tests). Raises ``TrunkConfigError`` naming ``source`` and the
    field path of the first mistake.
    """
    r = _Reader(source)
    top = r.mapping(data, "")
    shared_rng = rng if rng is not None else random.Random()

    trunks: dict[str, Trunk] = {}
    raw_trunks = top.get("trunks") or {}
    for name, value in r.mapping(raw_trunks, "trunks").items():
        trunks[name] = _load_trunk(r, name, value, f"trunks.{name}")

    groups: dict[str, TrunkGroup] = {}
    raw_groups = top.get("trunk_groups") or {}
    for name, value in r.mapping(raw_groups, "trunk_groups").items():
        groups[name] = _load_group(r, name, value, f"trunk_groups.{name}", trunks, shared_rng)

    routes: list[OutboundRoute] = []
    seen: dict[tuple[str, tuple[IPNetwork, ...]], int] = {}
    raw_routes = top.get("outbound_routes") or []
    for i, value in enumerate(r.sequence(raw_routes, "outbound_routes")):
        route_path = f"outbound_routes[{i}]"
        route = _load_route(r, value, route_path, groups)
        key = (route.prefix, route.sources)
        if key in seen:
            r.fail(
                _join(route_path, "prefix"),
                f"prefix {route.prefix!r} already routed by outbound_routes[{seen[key]}]",
            )
        seen[key] = i
        routes.append(route)

    trusted = r.networks(top.get("trusted_sources") or [], "trusted_sources")
    policy = DialPolicy().override(
        load_dial_policy(top.get("dial_policy") or {}, source=source, path="dial_policy")
    )
    return TrunkPlan(trunks, groups, tuple(routes), trusted, source, policy)


def load_dial_policy(value: object, *, source: str, path: str) -> dict[str, Any]:
    """Validate a ``dial_policy`` mapping (node or tenant): the fields it sets, typed.

    Raises ``TrunkConfigError`` naming ``source`` and the field.
    """
    r = _Reader(source)
    m = r.mapping(value, path)
    r.only(m, path, POLICY_FIELDS)
    out: dict[str, Any] = {}
    for key in ("allow_international", "allow_premium"):
        if key in m:
            out[key] = r.boolean(m, key, path, False)
    if "home_country" in m:
        cc = m["home_country"]
        if not isinstance(cc, str) or not cc.isdigit() or len(cc) > 3:
            hint = " (quote numbers in YAML)" if isinstance(cc, int) else ""
            r.fail(_join(path, "home_country"), f"expected a country code like '1' or '32'{hint}")
        out["home_country"] = cc
    for key in ("premium_prefixes", "allow", "deny"):
        if key in m:
            key_path = _join(path, key)
            out[key] = tuple(
                r.dial_string(item, f"{key_path}[{i}]", empty_ok=False)
                for i, item in enumerate(r.sequence(m[key], key_path))
            )
    if "max_digits" in m:
        out["max_digits"] = r.integer(m, "max_digits", path, 18, low=1, high=32)
    return out
