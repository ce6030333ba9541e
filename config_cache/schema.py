"""Tenant configuration schema and validation (pure: no I/O besides the tz database).

Theory of operation: a tenant document is a JSON-able mapping (from a file, from
the master Configuration DB or from LevelDB). :func:`validate_tenant` checks it
against the JSON Schema ``config_cache/schemas/tenant.json`` (every field's type,
unknown fields), then what a schema cannot say (time zone, route targets, ring
group members, IVR flows, ``dial_policy``) in Python, and returns a frozen
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

from . import validation
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
#: Call recording channel layouts: caller left / other side right, or both mixed.
RECORDING_CHANNELS: frozenset[str] = frozenset({"stereo", "mono"})

#: ``invite_auth`` values: which calls from this tenant's users get a 407 challenge.
INVITE_AUTH_MODES: frozenset[str] = frozenset({"off", "external", "all"})


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


# -- validation -----------------------------------------------------------------

#: How tenant documents word a schema mistake (``validation.first_issue``).
_WORDING = validation.Wording(
    kind=lambda value: _type_name(value),
    want={
        "object": "a mapping",
        "array": "a list",
        "string": "a string",
        "non-empty string": "a non-empty string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "null": "null",
    },
    type="must be {want}, not {got}",
    missing="missing",
    unknown="unknown field",
    empty="must not be empty",
    range="must be between {low} and {high}, not {value}",
    minimum="must be >= {low}, not {value}",
    exclusive_minimum="must be > {low}, not {value}",
    enum="must be one of {names}, not {value!r}",
    pattern="invalid value {value!r}",
    min_items="must not be empty",
    key_type="key must be a string (quote it in YAML), not {got}",
)


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


def _route(ctx: _Ctx, text: str, path: str) -> Route:
    kind, sep, target = text.partition(":")
    if not sep or kind not in ROUTE_KINDS or not target:
        raise ctx.error(
            path,
            f"invalid route {text!r} (expected one of {', '.join(sorted(ROUTE_KINDS))}:<name>)",
        )
    return Route(kind, target)


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


def _validate_flows(
    ctx: _Ctx,
    tenant: str,
    flows: Mapping[str, Any],
    prompts: Collection[str],
    *,
    timezone: str = "UTC",
) -> Mapping[str, Any]:
    """Check the flows; return ``ivr.load_flows``'s result (or ``{}``).

    The schema checked the outer shape (flow name -> mapping). Uses
    ``ivr.load_flows`` when the ``ivr`` package provides it and turns
    ``ivr.FlowValidationError`` into :class:`ConfigError` with the field path
    ``flows.<flow>.nodes.<node>.<field>``.
    """
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


def _dial_policy(ctx: _Ctx, value: object) -> dict[str, Any]:
    try:
        return load_dial_policy(value, source=ctx.file or "", path="dial_policy")
    except TrunkConfigError as exc:
        raise ctx.error(exc.field or "dial_policy", exc.message) from None


def _recording(value: Mapping[str, Any]) -> RecordingPolicy:
    """``recording`` (its shape checked by the schema)."""
    return RecordingPolicy(
        enabled=bool(value.get("enabled", False)),
        channels=str(value.get("channels", "stereo")),
        max_seconds=float(value.get("max_seconds", 14400.0)),
    )


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
    The shape and types are checked by ``config_cache/schemas/tenant.json``;
    the id, time zone, routes and their targets, ring group members, IVR flows
    (``ivr.load_flows``) and ``dial_policy`` after it, here.
    Raises :class:`ConfigError` naming ``file``, the tenant and the field.
    """
    ctx = _Ctx(file, tenant)
    if not isinstance(doc, Mapping):
        raise ctx.error("", f"must be a mapping, not {_type_name(doc)}")
    data = dict(doc)
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
    issue = validation.first_issue("tenant", data, _WORDING)
    if issue is not None:
        raise ctx.error(".".join(str(part) for part in issue.path), issue.message)
    # "_"-prefixed fields are comments / master metadata: not kept at the top level.
    data = {key: value for key, value in data.items() if not key.startswith("_")}
    tz = data.get("timezone", "UTC")
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ctx.error("timezone", f"unknown time zone {tz!r}") from exc

    users = {
        ext: User(
            ext, u["password"], u.get("name"), u.get("voicemail", True), u.get("record", False)
        )
        for ext, u in data.get("users", {}).items()
    }
    groups: dict[str, RingGroup] = {}
    for name, g in data.get("ring_groups", {}).items():
        for i, ext in enumerate(g["members"]):
            if ext not in users:
                raise ctx.error(f"ring_groups.{name}.members.{i}", f"unknown user {ext!r}")
        groups[name] = RingGroup(
            name, tuple(g["members"]), g.get("strategy", "parallel"), float(g.get("timeout", 20))
        )
    prompts = {
        name: Prompt(
            name,
            p["file"],
            p.get("text"),
            p.get("language"),
            None if p.get("version") is None else str(p["version"]),
        )
        for name, p in data.get("prompts", {}).items()
    }
    flows = dict(data.get("flows", {}))
    compiled = _validate_flows(
        ctx, tid, flows, frozenset(bundled_prompts) | prompts.keys(), timezone=tz
    )

    numbers: dict[str, NumberEntry] = {}
    for did, raw in data.get("numbers", {}).items():
        path = f"numbers.{did}" if isinstance(raw, str) else f"numbers.{did}.route"
        text = raw if isinstance(raw, str) else raw["route"]
        route = _route(ctx, text, f"numbers.{did}" if isinstance(raw, str) else path)
        _check_route_target(ctx, route, path, users=users, groups=groups, flows=flows)
        numbers[did] = NumberEntry(did, route, None if isinstance(raw, str) else raw.get("name"))
    default_route: Route | None = None
    if data.get("default_route") is not None:
        default_route = _route(ctx, data["default_route"], "default_route")
        _check_route_target(
            ctx, default_route, "default_route", users=users, groups=groups, flows=flows
        )
    outbound = tuple(
        OutboundRoute(
            r.get("prefix", ""), r["trunk_group"], r.get("strip", 0), r.get("prepend", "")
        )
        for r in data.get("outbound_routes", [])
    )
    dial_policy = _dial_policy(ctx, data.get("dial_policy", {}))
    limits = {key: float(v) if key == "max_cps" else v for key, v in data.get("limits", {}).items()}
    limits = {key: v for key, v in limits.items() if not key.startswith("_")}
    try:
        doc_json = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ctx.error(None, f"not JSON-serialisable: {exc}") from exc

    return TenantConfig(
        id=tid,
        rev=data.get("rev", 0),
        name=data.get("name", tid),
        timezone=tz,
        realm=data.get("realm", tid),
        numbers=MappingProxyType(numbers),
        default_route=default_route,
        users=MappingProxyType(users),
        ring_groups=MappingProxyType(groups),
        flows=MappingProxyType(flows),
        outbound_routes=outbound,
        prompts=MappingProxyType(prompts),
        dial_policy=MappingProxyType(dial_policy),
        limits=MappingProxyType(limits),
        recording=_recording(data.get("recording", {})),
        compiled_flows=MappingProxyType(dict(compiled)),
        doc_json=doc_json,
        invite_auth=data.get("invite_auth", "external"),
    )
