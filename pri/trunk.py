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
import functools
import heapq
import ipaddress
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NoReturn

from pri.channels import ChannelTable
from pri.dialplan import POLICY_FIELDS, DialPolicy

if TYPE_CHECKING:
    from config_cache import validation

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
    may use the route. ``record``: the calls it carries are recorded (both directions,
    from the carrier's answer to the hang-up): a trunk call from a trusted source has
    no tenant whose ``recording`` could apply.
    """

    prefix: str
    group: str
    strip: int = 0
    prepend: str = ""
    sources: tuple[IPNetwork, ...] = ()
    record: bool = False

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
#
# The shape and types are checked by config_cache/schemas/trunks.json; what a
# schema cannot say (trunk and group references, DIDs, addresses, span channels,
# duplicates, max_attempts) is checked here, naming the same field paths.


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


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _field(path: str, parts: Iterable[str | int]) -> str:
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    return path


@functools.cache
def _wording() -> validation.Wording:
    """How the trunk loaders word a schema mistake (``validation.first_issue``).

    Built on first use: ``config_cache`` imports this module, so this one imports
    ``config_cache.validation`` only when it loads a trunk section."""
    from config_cache import validation

    return validation.Wording(
        kind=_kind,
        want={
            "object": "a mapping",
            "array": "a list",
            "string": "a string",
            "non-empty string": "a non-empty string",
            "integer": "an integer",
            "number": "a number",
            "boolean": "true or false",
            "null": "nothing",
        },
        type="expected {want}, got {got}",
        missing="missing field '{key}'",
        unknown="unknown field (expected one of: {names})",
        empty="expected a non-empty string, got {got}",
        range="must be between {low} and {high}, got {value}",
        minimum="must be at least {low}, got {value}",
        exclusive_minimum="must be greater than {low:g}, got {value}",
        enum="expected one of: {names}, got {value!r}",
        pattern="invalid value {value!r}",
        min_items="must not be empty",
        key_type="keys must be strings, got {key!r}",
        at_parent=True,
    )


def _check(schema: str, value: object, *, source: str, path: str = "") -> None:
    from config_cache import validation

    issue = validation.first_issue(schema, value, _wording())
    if issue is not None:
        raise TrunkConfigError(issue.message, source=source, field=_field(path, issue.path))


class _Fail:
    """Raises ``TrunkConfigError`` for ``source`` naming a field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, path: str, message: str) -> NoReturn:
        raise TrunkConfigError(message, source=self.source, field=path)


def _networks(fail: _Fail, values: Sequence[str], path: str) -> tuple[IPNetwork, ...]:
    nets: list[IPNetwork] = []
    for i, item in enumerate(values):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            fail(f"{path}[{i}]", f"invalid address or network {item!r}")
    return tuple(nets)


def _load_span(fail: _Fail, m: Mapping[str, Any], path: str, trunk: str, index: int) -> Span:
    name = m.get("name", f"{trunk}/{index + 1}")
    kind = m.get("type")
    if kind is None:
        if "channels" not in m:
            fail(path, "a span needs 'type' (E1 or T1) or 'channels'")
        return Span(
            name,
            "custom",
            _in_range(fail, m["channels"], f"{path}.channels", 1, _MAX_SPAN_CHANNELS),
        )
    if not isinstance(kind, str) or kind.upper() not in SPAN_CHANNELS:
        fail(_join(path, "type"), f"unknown span type {kind!r} (expected E1 or T1)")
    kind = kind.upper()
    full = SPAN_CHANNELS[kind]
    return Span(name, kind, _in_range(fail, m.get("channels", full), f"{path}.channels", 1, full))


def _in_range(fail: _Fail, value: int, path: str, low: int, high: int) -> int:
    if not low <= value <= high:
        fail(path, f"must be between {low} and {high}, got {value}")
    return value


def _load_did(fail: _Fail, value: str, path: str) -> DidRange:
    text = value.strip().removeprefix("+")
    low, dash, high = text.partition("-")
    low, high = low.strip().removeprefix("+"), high.strip().removeprefix("+")
    if not low.isdigit() or not low.isascii():
        fail(path, f"invalid DID {value!r} (digits, or a range 'low-high')")
    if not dash:
        return DidRange(low)
    if not high.isdigit() or not high.isascii() or len(high) != len(low) or high < low:
        fail(path, f"invalid DID range {value!r} (equal-length low-high, low <= high)")
    return DidRange(low, high)


def _load_health(fail: _Fail, m: Mapping[str, Any], path: str) -> HealthConfig:
    d = HealthConfig()
    config = HealthConfig(
        probe=m.get("probe", d.probe),
        probe_interval=float(m.get("probe_interval", d.probe_interval)),
        probe_timeout=float(m.get("probe_timeout", d.probe_timeout)),
        down_after=m.get("down_after", d.down_after),
        up_after=m.get("up_after", d.up_after),
        cool_down=float(m.get("cool_down", d.cool_down)),
    )
    if config.probe_timeout > config.probe_interval:
        fail(
            _join(path, "probe_timeout"),
            f"must not exceed probe_interval ({config.probe_interval:g}), "
            f"got {config.probe_timeout:g}",
        )
    return config


def _load_trunk(fail: _Fail, name: str, m: Mapping[str, Any], path: str) -> Trunk:
    g = m["gateway"]
    gateway = Gateway(g["host"], g.get("port", 5060), g.get("transport", "udp").lower())
    spans = [_load_span(fail, v, f"{path}.spans[{i}]", name, i) for i, v in enumerate(m["spans"])]
    seen: set[str] = set()
    for i, span in enumerate(spans):
        if span.name in seen:
            fail(f"{path}.spans[{i}].name", f"duplicate span name {span.name!r}")
        seen.add(span.name)
    auth = m.get("auth")
    credentials = (
        Credentials(auth["username"], auth["password"], auth.get("realm"))
        if auth is not None
        else None
    )
    dids = [_load_did(fail, v, f"{path}.dids[{i}]") for i, v in enumerate(m.get("dids", []))]
    if "sources" in m:
        sources = _networks(fail, m["sources"], _join(path, "sources"))
    else:
        # A gateway given as an IP literal is its own trusted source.
        address = _parse_ip(gateway.host)
        sources = (ipaddress.ip_network(address),) if address is not None else ()
    health = (
        _load_health(fail, m["health"], _join(path, "health")) if "health" in m else HealthConfig()
    )
    return Trunk(
        name,
        carrier=m["carrier"],
        gateway=gateway,
        spans=spans,
        credentials=credentials,
        dids=dids,
        sources=sources,
        enabled=m.get("enabled", True),
        health=health,
    )


def _load_group(
    fail: _Fail,
    name: str,
    m: Mapping[str, Any],
    path: str,
    trunks: Mapping[str, Trunk],
    rng: random.Random,
) -> TrunkGroup:
    chosen: list[Trunk] = []
    weights: list[int] = []
    for i, member in enumerate(m["trunks"]):
        member_path = f"{path}.trunks[{i}]"
        trunk_name = member if isinstance(member, str) else member["trunk"]
        if trunk_name not in trunks:
            fail(member_path, f"unknown trunk {trunk_name!r}")
        trunk = trunks[trunk_name]
        if trunk in chosen:
            fail(member_path, f"trunk {trunk_name!r} is listed twice")
        chosen.append(trunk)
        weights.append(1 if isinstance(member, str) else member.get("weight", 1))
    max_attempts = _in_range(
        fail, m.get("max_attempts", len(chosen)), _join(path, "max_attempts"), 1, len(chosen)
    )
    return TrunkGroup(
        name,
        chosen,
        strategy=Hunting(m.get("strategy", Hunting.PRIORITY.value)),
        weights=weights,
        setup_timeout=float(m.get("setup_timeout", 5.0)),
        max_attempts=max_attempts,
        rng=rng,
    )


def _load_route(
    fail: _Fail, m: Mapping[str, Any], path: str, groups: Mapping[str, TrunkGroup]
) -> OutboundRoute:
    group = m["group"]
    if group is None:
        fail(path, "missing field 'group'")
    if not isinstance(group, str) or group not in groups:
        fail(_join(path, "group"), f"unknown trunk group {group!r}")
    sources = _networks(fail, m["sources"], _join(path, "sources")) if "sources" in m else ()
    return OutboundRoute(
        m["prefix"],
        group,
        m.get("strip", 0),
        m.get("prepend", ""),
        sources,
        record=bool(m.get("record", False)),
    )


def load_trunks(
    data: Mapping[str, Any], *, source: str, rng: random.Random | None = None
) -> TrunkPlan:
    """Load the trunk part of an engine config (``trunks``, ``trunk_groups``,
    ``outbound_routes``, ``trusted_sources``); other top-level keys are ignored.

    ``rng`` drives weighted hunting (pass a seeded ``random.Random`` for
    reproducible tests). Checked against ``config_cache/schemas/trunks.json``, then
    the references and values a schema cannot check. Raises ``TrunkConfigError``
    naming ``source`` and the field path of the first mistake.
    """
    _check("trunks", data, source=source)
    fail = _Fail(source)
    shared_rng = rng if rng is not None else random.Random()

    trunks: dict[str, Trunk] = {}
    for name, value in (data.get("trunks") or {}).items():
        trunks[name] = _load_trunk(fail, name, value, f"trunks.{name}")

    groups: dict[str, TrunkGroup] = {}
    for name, value in (data.get("trunk_groups") or {}).items():
        path = f"trunk_groups.{name}"
        groups[name] = _load_group(fail, name, value, path, trunks, shared_rng)

    routes: list[OutboundRoute] = []
    seen: dict[tuple[str, tuple[IPNetwork, ...]], int] = {}
    for i, value in enumerate(data.get("outbound_routes") or []):
        route_path = f"outbound_routes[{i}]"
        route = _load_route(fail, value, route_path, groups)
        key = (route.prefix, route.sources)
        if key in seen:
            fail(
                _join(route_path, "prefix"),
                f"prefix {route.prefix!r} already routed by outbound_routes[{seen[key]}]",
            )
        seen[key] = i
        routes.append(route)

    trusted = _networks(fail, data.get("trusted_sources") or [], "trusted_sources")
    policy = DialPolicy().override(
        load_dial_policy(data.get("dial_policy") or {}, source=source, path="dial_policy")
    )
    return TrunkPlan(trunks, groups, tuple(routes), trusted, source, policy)


def load_dial_policy(value: object, *, source: str, path: str) -> dict[str, Any]:
    """Validate a ``dial_policy`` mapping (node or tenant): the fields it sets, typed.

    Checked against ``config_cache/schemas/dial_policy.json``. Raises
    ``TrunkConfigError`` naming ``source`` and the field.
    """
    _check("dial_policy", value, source=source, path=path)
    assert isinstance(value, Mapping)
    out: dict[str, Any] = {key: value[key] for key in POLICY_FIELDS if key in value}
    for key in ("premium_prefixes", "allow", "deny"):
        if key in out:
            out[key] = tuple(out[key])
    return out
