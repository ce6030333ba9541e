"""Tenant configuration schema and validation (pure: no I/O besides the tz database).

Theory of operation: a tenant document is a JSON-able mapping (from a file, from
the master Configuration DB or from LevelDB). :func:`validate_tenant` checks every
field, rejects unknown fields and wrong types, and returns a frozen
:class:`TenantConfig`. The first mistake raises :class:`ConfigError` naming the
file, the tenant and the dotted field path (``users.100.password``).

IVR flows are validated by ``ivr.load_flows`` (owned by the ``ivr`` package);
see :func:`_validate_flows`.

Document shape (see ``docs/config.md`` for the full reference)::

    {"id": "acme", "rev": 3, "name": "Acme", "timezone": "Europe/Paris",
     "numbers": {"+33123456789": {"route": "ivr:main"}},
     "default_route": "ivr:main",
     "users": {"100": {"name": "Alice", "password": "s3cret"}},
     "ring_groups": {"sales": {"members": ["100"], "strategy": "parallel", "timeout": 20}},
     "flows": {"main": {"start": "welcome", "nodes": {...}}},
     "outbound_routes": [{"prefix": "0", "trunk_group": "pstn", "strip": 1}],
     "prompts": {"welcome": {"file": "acme/welcome.wav", "text": "Welcome"}}}
"""

from __future__ import annotations

import json
import re
import zoneinfo
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pri.trunk import TrunkConfigError, load_dial_policy

from .errors import ConfigError

__all__ = [
    "BUNDLED_PROMPTS",
    "INVITE_AUTH_MODES",
    "ROUTE_KINDS",
    "NumberEntry",
    "OutboundRoute",
    "Prompt",
    "RECORDING_CHANNELS",
    "RecordingPolicy",
    "RingGroup",
    "Route",
    "TenantConfig",
    "User",
    "validate_tenant",
]

#: Prompt names shipped in ``media/prompts`` and usable by every tenant's flows.
BUNDLED_PROMPTS: frozenset[str] = frozenset(
    {"welcome", "menu", "invalid", "timeout", "goodbye", "voicemail_greeting", "closed", "transfer"}
)

#: Route kinds a number (or the default route) may point at: ``kind:target``.
ROUTE_KINDS: frozenset[str] = frozenset({"ivr", "user", "group", "voicemail"})

_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_EXTENSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}")
_DID = re.compile(r"\+?[0-9]{1,20}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PREFIX = re.compile(r"\+?[0-9*#]{0,20}")
_STRATEGIES = frozenset({"parallel", "sequential"})
#: ``invite_auth`` values: which calls from this tenant's users get a 407 challenge.
INVITE_AUTH_MODES: frozenset[str] = frozenset({"off", "external", "all"})

_TOP_LEVEL = frozenset(
    {
        "id",
        "rev",
        "name",
        "timezone",
        "realm",
        "numbers",
        "default_route",
        "users",
        "ring_groups",
        "flows",
        "outbound_routes",
        "dial_policy",
        "limits",
        "prompts",
        "description",
        "deleted",
        "invite_auth",
        "recording",
    }
)
#: Call recording channel layouts: caller left / other side right, or both mixed.
RECORDING_CHANNELS: frozenset[str] = frozenset({"stereo", "mono"})


@dataclass(frozen=True, slots=True)
class Route:
    """Where a call goes: ``ivr:<flow>``, ``user:<ext>``, ``group:<ring group>``
    or ``voicemail:<ext>``."""

    kind: str
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


@dataclass(frozen=True, slots=True)
class NumberEntry:
    """An inbound number (DID) owned by a tenant."""

    did: str
    route: Route
    name: str | None = None


@dataclass(frozen=True, slots=True)
class User:
    """A user / extension that can register (SIP digest) and receive calls."""

    extension: str
    #: SIP digest password used by the registrar (plain text, as digest needs it).
    password: str
    name: str | None = None
    #: Whether the user has a voicemail box.
    voicemail: bool = True
    #: Whether calls this user answers (bridged to one of their phones) are recorded,
    #: with the tenant's ``recording`` channels and limit.
    record: bool = False


@dataclass(frozen=True, slots=True)
class RecordingPolicy:
    """A tenant's call recording (``recording`` in the tenant document)."""

    #: Record every answered call of the tenant, from answer to hang-up.
    enabled: bool = False
    #: ``stereo`` (caller left, other side right) or ``mono`` (mixed).
    channels: str = "stereo"
    #: A recording stops after this many seconds (the call goes on).
    max_seconds: float = 14400.0


@dataclass(frozen=True, slots=True)
class RingGroup:
    """Users rung together (``parallel``) or one after another (``sequential``)."""

    name: str
    members: tuple[str, ...]
    strategy: str = "parallel"
    #: Seconds to ring (per member when sequential) before giving up.
    timeout: float = 20.0


@dataclass(frozen=True, slots=True)
class OutboundRoute:
    """Dialled numbers starting with ``prefix`` leave through ``trunk_group``
    after stripping ``strip`` leading digits and prepending ``prepend``."""

    prefix: str
    trunk_group: str
    strip: int = 0
    prepend: str = ""

    def translate(self, number: str) -> str:
        """The number as sent to the trunk."""
        return self.prepend + number[self.strip :]


@dataclass(frozen=True, slots=True)
class Prompt:
    """Metadata of a tenant prompt (the audio lives in Media Storage)."""

    name: str
    #: Media Storage key or path of the audio file.
    file: str
    text: str | None = None
    language: str | None = None
    #: Changes when the audio in Media Storage changes (a version number or the blob's
    #: ETag, set by whoever uploads it): a node holding another version fetches it again.
    version: str | None = None


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """One validated tenant at one revision. Immutable: a call keeps the object
    it started with while newer revisions are swapped in."""

    id: str
    rev: int
    name: str
    timezone: str
    realm: str
    numbers: Mapping[str, NumberEntry]
    default_route: Route | None
    users: Mapping[str, User]
    ring_groups: Mapping[str, RingGroup]
    #: IVR flows as plain data (the ``ivr`` package defines the node format).
    #: Treat as read-only.
    flows: Mapping[str, Mapping[str, Any]]
    outbound_routes: tuple[OutboundRoute, ...]
    prompts: Mapping[str, Prompt]
    #: The tenant's overrides of the node's trunk dial policy (``pri.dialplan``):
    #: validated fields only, e.g. ``{"allow_international": True}``.
    dial_policy: Mapping[str, Any] = field(default_factory=dict)
    #: Caps on the tenant's calls: ``max_calls`` (concurrent), ``max_cps`` (new calls
    #: per second); absent = the node's ``tenant_max_calls``/``tenant_max_cps``.
    limits: Mapping[str, float] = field(default_factory=dict)
    #: What ``ivr.load_flows`` returned (flow name -> ``ivr.Flow``), or empty
    #: when the ``ivr`` package does not provide ``load_flows``.
    compiled_flows: Mapping[str, Any] = field(default_factory=dict)
    #: The canonical JSON text of the tenant document (what LevelDB stores).
    doc_json: str = ""
    #: Digest authentication of INVITEs from this tenant's users (407 challenge):
    #: ``external`` (default) for calls that leave the tenant (trunk routes, other
    #: tenants' numbers), ``all`` for every call, ``off`` never (such calls then only
    #: leave through a trunk from a trusted source). Calls from trunks are never
    #: challenged.
    invite_auth: str = "external"
    #: Call recording of the tenant's calls (off by default).
    recording: RecordingPolicy = field(default_factory=RecordingPolicy)

    def to_doc(self) -> dict[str, Any]:
        """The tenant as a JSON-able document (a fresh copy)."""
        doc: dict[str, Any] = json.loads(self.doc_json)
        return doc

    def outbound_route(self, number: str) -> OutboundRoute | None:
        """The route with the longest prefix matching ``number``, if any."""
        best: OutboundRoute | None = None
        for route in self.outbound_routes:
            if number.startswith(route.prefix) and (
                best is None or len(route.prefix) > len(best.prefix)
            ):
                best = route
        return best


# -- validation helpers ---------------------------------------------------------


class _Ctx:
    """Carries file and tenant so each check only names its field."""

    __slots__ = ("file", "tenant")

    def __init__(self, file: str | None, tenant: str | None) -> None:
        self.file = file
        self.tenant = tenant

    def error(self, path: str | None, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, tenant=self.tenant, field=path)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(ctx: _Ctx, value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ctx.error(path, f"must be a mapping, not {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ctx.error(
                _join(path, str(key)),
                "key must be a string (quote it in YAML), not " + _type_name(key),
            )
    return value


def _str(ctx: _Ctx, value: object, path: str, *, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise ctx.error(path, f"must be a non-empty string, not {_type_name(value)}")
    if not value:
        raise ctx.error(path, "must not be empty")
    if pattern is not None and not pattern.fullmatch(value):
        raise ctx.error(path, f"invalid value {value!r} (expected {pattern.pattern})")
    return value


def _opt_str(ctx: _Ctx, value: object, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ctx.error(path, f"must be a string, not {_type_name(value)}")
    return value


def _int(ctx: _Ctx, value: object, path: str, *, minimum: int = 0) -> int:
    if type(value) is not int:
        raise ctx.error(path, f"must be an integer, not {_type_name(value)}")
    if value < minimum:
        raise ctx.error(path, f"must be >= {minimum}, not {value}")
    return value


def _number(ctx: _Ctx, value: object, path: str) -> float:
    if type(value) not in (int, float):
        raise ctx.error(path, f"must be a number, not {_type_name(value)}")
    assert isinstance(value, int | float)
    if not value > 0:
        raise ctx.error(path, f"must be > 0, not {value}")
    return float(value)


def _bool(ctx: _Ctx, value: object, path: str) -> bool:
    if type(value) is not bool:
        raise ctx.error(path, f"must be true or false, not {_type_name(value)}")
    return value


def _no_unknown(ctx: _Ctx, value: Mapping[str, Any], allowed: Collection[str], path: str) -> None:
    for key in value:
        if key not in allowed and not key.startswith("_"):
            raise ctx.error(_join(path, key), "unknown field")


def _route(ctx: _Ctx, value: object, path: str) -> Route:
    text = _str(ctx, value, path)
    kind, sep, target = text.partition(":")
    if not sep or kind not in ROUTE_KINDS or not target:
        raise ctx.error(
            path,
            f"invalid route {text!r} (expected one of {', '.join(sorted(ROUTE_KINDS))}:<name>)",
        )
    return Route(kind, target)


# -- sections -------------------------------------------------------------------


def _users(ctx: _Ctx, value: object) -> dict[str, User]:
    users: dict[str, User] = {}
    for ext, raw in _mapping(ctx, value, "users").items():
        path = f"users.{ext}"
        if not _EXTENSION.fullmatch(ext):
            raise ctx.error(path, f"invalid extension {ext!r} (expected {_EXTENSION.pattern})")
        entry = _mapping(ctx, raw, path)
        _no_unknown(ctx, entry, {"password", "name", "voicemail", "record"}, path)
        if "password" not in entry:
            raise ctx.error(f"{path}.password", "missing")
        users[ext] = User(
            extension=ext,
            password=_str(ctx, entry["password"], f"{path}.password"),
            name=_opt_str(ctx, entry.get("name"), f"{path}.name"),
            voicemail=_bool(ctx, entry.get("voicemail", True), f"{path}.voicemail"),
            record=_bool(ctx, entry.get("record", False), f"{path}.record"),
        )
    return users


def _ring_groups(ctx: _Ctx, value: object, users: Mapping[str, User]) -> dict[str, RingGroup]:
    groups: dict[str, RingGroup] = {}
    for name, raw in _mapping(ctx, value, "ring_groups").items():
        path = f"ring_groups.{name}"
        if not _NAME.fullmatch(name):
            raise ctx.error(path, f"invalid name {name!r} (expected {_NAME.pattern})")
        entry = _mapping(ctx, raw, path)
        _no_unknown(ctx, entry, {"members", "strategy", "timeout"}, path)
        members = entry.get("members")
        if not isinstance(members, list) or not members:
            raise ctx.error(
                f"{path}.members", f"must be a non-empty list, not {_type_name(members)}"
            )
        for i, member in enumerate(members):
            ext = _str(ctx, member, f"{path}.members.{i}")
            if ext not in users:
                raise ctx.error(f"{path}.members.{i}", f"unknown user {ext!r}")
        strategy = _str(ctx, entry.get("strategy", "parallel"), f"{path}.strategy")
        if strategy not in _STRATEGIES:
            raise ctx.error(
                f"{path}.strategy",
                f"must be one of {', '.join(sorted(_STRATEGIES))}, not {strategy!r}",
            )
        groups[name] = RingGroup(
            name=name,
            members=tuple(members),
            strategy=strategy,
            timeout=_number(ctx, entry.get("timeout", 20), f"{path}.timeout"),
        )
    return groups


def _check_route_target(
    ctx: _Ctx,
    route: Route,
    path: str,
    *,
    users: Mapping[str, User],
    groups: Mapping[str, RingGroup],
    flows: Mapping[str, Any],
) -> None:
    if route.kind == "ivr" and route.target not in flows:
        raise ctx.error(path, f"unknown IVR flow {route.target!r}")
    if route.kind in ("user", "voicemail") and route.target not in users:
        raise ctx.error(path, f"unknown user {route.target!r}")
    if route.kind == "voicemail" and not users[route.target].voicemail:
        raise ctx.error(path, f"user {route.target!r} has no voicemail")
    if route.kind == "group" and route.target not in groups:
        raise ctx.error(path, f"unknown ring group {route.target!r}")


def _numbers(ctx: _Ctx, value: object) -> dict[str, tuple[Route, str | None, str]]:
    """DID -> (route, label, field path of the route)."""
    numbers: dict[str, tuple[Route, str | None, str]] = {}
    for did, raw in _mapping(ctx, value, "numbers").items():
        path = f"numbers.{did}"
        if not _DID.fullmatch(did):
            raise ctx.error(path, f"invalid number {did!r} (expected {_DID.pattern})")
        if isinstance(raw, str):
            numbers[did] = (_route(ctx, raw, path), None, path)
            continue
        entry = _mapping(ctx, raw, path)
        _no_unknown(ctx, entry, {"route", "name"}, path)
        if "route" not in entry:
            raise ctx.error(f"{path}.route", "missing")
        numbers[did] = (
            _route(ctx, entry["route"], f"{path}.route"),
            _opt_str(ctx, entry.get("name"), f"{path}.name"),
            f"{path}.route",
        )
    return numbers


def _outbound(ctx: _Ctx, value: object) -> tuple[OutboundRoute, ...]:
    if not isinstance(value, list):
        raise ctx.error("outbound_routes", f"must be a list, not {_type_name(value)}")
    routes: list[OutboundRoute] = []
    for i, raw in enumerate(value):
        path = f"outbound_routes.{i}"
        entry = _mapping(ctx, raw, path)
        _no_unknown(ctx, entry, {"prefix", "trunk_group", "strip", "prepend"}, path)
        prefix = entry.get("prefix", "")
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ctx.error(f"{path}.prefix", f"must be a string of digits, not {prefix!r}")
        if "trunk_group" not in entry:
            raise ctx.error(f"{path}.trunk_group", "missing")
        prepend = entry.get("prepend", "")
        if not isinstance(prepend, str) or not _PREFIX.fullmatch(prepend):
            raise ctx.error(f"{path}.prepend", f"must be a string of digits, not {prepend!r}")
        routes.append(
            OutboundRoute(
                prefix=prefix,
                trunk_group=_str(ctx, entry["trunk_group"], f"{path}.trunk_group", pattern=_NAME),
                strip=_int(ctx, entry.get("strip", 0), f"{path}.strip"),
                prepend=prepend,
            )
        )
    return tuple(routes)


def _prompts(ctx: _Ctx, value: object) -> dict[str, Prompt]:
    prompts: dict[str, Prompt] = {}
    for name, raw in _mapping(ctx, value, "prompts").items():
        path = f"prompts.{name}"
        if not _NAME.fullmatch(name):
            raise ctx.error(path, f"invalid name {name!r} (expected {_NAME.pattern})")
        entry = _mapping(ctx, raw, path)
        _no_unknown(ctx, entry, {"file", "text", "language", "version"}, path)
        if "file" not in entry:
            raise ctx.error(f"{path}.file", "missing")
        prompts[name] = Prompt(
            name=name,
            file=_str(ctx, entry["file"], f"{path}.file"),
            text=_opt_str(ctx, entry.get("text"), f"{path}.text"),
            language=_opt_str(ctx, entry.get("language"), f"{path}.language"),
            version=_version(ctx, entry.get("version"), f"{path}.version"),
        )
    return prompts


def _version(ctx: _Ctx, value: object, path: str) -> str | None:
    """A prompt version: a string (an ETag) or a whole number."""
    if value is None:
        return None
    if type(value) is int:
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise ctx.error(path, f"must be a non-empty string or an integer, not {_type_name(value)}")


def _recording(ctx: _Ctx, value: object) -> RecordingPolicy:
    m = _mapping(ctx, value, "recording")
    _no_unknown(ctx, m, ("enabled", "channels", "max_seconds"), "recording")
    channels = _str(ctx, m.get("channels", "stereo"), "recording.channels")
    if channels not in RECORDING_CHANNELS:
        raise ctx.error("recording.channels", f"must be stereo or mono, not {channels!r}")
    limit = m.get("max_seconds", 14400.0)
    if type(limit) not in (int, float) or not 0 < limit <= 86400:
        raise ctx.error("recording.max_seconds", f"must be a number in (0, 86400], not {limit!r}")
    return RecordingPolicy(
        enabled=_bool(ctx, m.get("enabled", False), "recording.enabled"),
        channels=channels,
        max_seconds=float(limit),
    )


def _validate_flows(
    ctx: _Ctx,
    tenant: str,
    flows: Mapping[str, Any],
    prompts: Collection[str],
    *,
    timezone: str = "UTC",
) -> Mapping[str, Any]:
    """Check the flows; return ``ivr.load_flows``'s result (or ``{}``).

    Uses ``ivr.load_flows`` when the ``ivr`` package provides it and turns
    ``ivr.FlowValidationError`` into :class:`ConfigError` with the field path
    ``flows.<flow>.nodes.<node>.<field>``. Without it, only the outer shape
    (a mapping of flow name -> mapping) is checked.
    """
    for name, flow in flows.items():
        if not _NAME.fullmatch(name):
            raise ctx.error(f"flows.{name}", f"invalid name {name!r} (expected {_NAME.pattern})")
        _mapping(ctx, flow, f"flows.{name}")
    try:
        import ivr  # late: ivr may import config_cache
    except ImportError:  # pragma: no cover - ivr is part of this project
        return {}
    load_flows = getattr(ivr, "load_flows", None)
    if load_flows is None:
        return {}
    error_type: type[Exception] = getattr(ivr, "FlowValidationError", ValueError)
    try:
        compiled: Mapping[str, Any] = load_flows(tenant, flows, prompts=prompts, timezone=timezone)
    except error_type as exc:
        parts = ["flows"]
        for attr in ("flow", "node", "field"):
            value = getattr(exc, attr, None)
            if value:
                parts.append(str(value) if attr != "node" else f"nodes.{value}")
        raise ctx.error(".".join(parts), str(getattr(exc, "message", exc))) from exc
    return compiled


# -- entry point ----------------------------------------------------------------


def _dial_policy(ctx: _Ctx, value: object) -> dict[str, Any]:
    try:
        return load_dial_policy(value, source=ctx.file or "", path="dial_policy")
    except TrunkConfigError as exc:
        raise ctx.error(exc.field or "dial_policy", exc.message) from None


def _limits(ctx: _Ctx, value: object) -> dict[str, float]:
    m = _mapping(ctx, value, "limits")
    _no_unknown(ctx, m, ("max_calls", "max_cps"), "limits")
    out: dict[str, float] = {}
    if "max_calls" in m:
        out["max_calls"] = _int(ctx, m["max_calls"], "limits.max_calls")
    if "max_cps" in m:
        cps = m["max_cps"]
        if type(cps) not in (int, float) or cps < 0:
            raise ctx.error("limits.max_cps", f"must be a number >= 0, not {cps!r}")
        out["max_cps"] = float(cps)
    return out


def validate_tenant(
    doc: object,
    *,
    file: str | None = None,
    tenant: str | None = None,
    bundled_prompts: Collection[str] = BUNDLED_PROMPTS,
) -> TenantConfig:
    """Validate one tenant document and return its frozen :class:`TenantConfig`.

    ``doc`` may carry its id as ``id`` or (from MongoDB) ``_id``; ``tenant``
    names it when the document does not. ``rev`` defaults to 0 when absent.
    Raises :class:`ConfigError` naming ``file``, the tenant and the field.
    """
    ctx = _Ctx(file, tenant)
    data = dict(_mapping(ctx, doc, ""))
    if "_id" in data:
        oid = data.pop("_id")
        data.setdefault("id", oid)
    tid = data.get("id", tenant)
    if tid is None:
        raise ctx.error("id", "missing")
    if not isinstance(tid, str) or not _TENANT_ID.fullmatch(tid):
        raise ctx.error("id", f"invalid tenant id {tid!r} (expected {_TENANT_ID.pattern})")
    ctx.tenant = tid
    data["id"] = tid
    _no_unknown(ctx, data, _TOP_LEVEL, "")
    # "_"-prefixed top-level fields are comments / master metadata: not kept.
    data = {key: value for key, value in data.items() if not key.startswith("_")}
    rev = _int(ctx, data.get("rev", 0), "rev")
    name = _str(ctx, data.get("name", tid), "name")
    tz = _str(ctx, data.get("timezone", "UTC"), "timezone")
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ctx.error("timezone", f"unknown time zone {tz!r}") from exc
    realm = _str(ctx, data.get("realm", tid), "realm")

    users = _users(ctx, data.get("users", {}))
    groups = _ring_groups(ctx, data.get("ring_groups", {}), users)
    prompts = _prompts(ctx, data.get("prompts", {}))
    flows = dict(_mapping(ctx, data.get("flows", {}), "flows"))
    compiled = _validate_flows(
        ctx, tid, flows, frozenset(bundled_prompts) | prompts.keys(), timezone=tz
    )

    numbers: dict[str, NumberEntry] = {}
    for did, (route, label, path) in _numbers(ctx, data.get("numbers", {})).items():
        _check_route_target(ctx, route, path, users=users, groups=groups, flows=flows)
        numbers[did] = NumberEntry(did, route, label)
    default_route: Route | None = None
    if data.get("default_route") is not None:
        default_route = _route(ctx, data["default_route"], "default_route")
        _check_route_target(
            ctx, default_route, "default_route", users=users, groups=groups, flows=flows
        )
    outbound = _outbound(ctx, data.get("outbound_routes", []))
    dial_policy = _dial_policy(ctx, data.get("dial_policy", {}))
    limits = _limits(ctx, data.get("limits", {}))
    recording = _recording(ctx, data.get("recording", {}))
    invite_auth = _str(ctx, data.get("invite_auth", "external"), "invite_auth")
    if invite_auth not in INVITE_AUTH_MODES:
        raise ctx.error("invite_auth", f"must be one of {', '.join(sorted(INVITE_AUTH_MODES))}")
    if "deleted" in data:
        _bool(ctx, data["deleted"], "deleted")
    try:
        doc_json = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ctx.error(None, f"not JSON-serialisable: {exc}") from exc

    return TenantConfig(
        id=tid,
        rev=rev,
        name=name,
        timezone=tz,
        realm=realm,
        numbers=MappingProxyType(numbers),
        default_route=default_route,
        users=MappingProxyType(users),
        ring_groups=MappingProxyType(groups),
        flows=MappingProxyType(flows),
        outbound_routes=outbound,
        prompts=MappingProxyType(prompts),
        dial_policy=MappingProxyType(dial_policy),
        limits=MappingProxyType(limits),
        compiled_flows=MappingProxyType(dict(compiled)),
        doc_json=doc_json,
        invite_auth=invite_auth,
        recording=recording,
    )
