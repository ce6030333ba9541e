"""Load-time validation: raw tenant config (JSON/YAML dicts) -> immutable :class:`Flow`.

Every mistake a tenant can make in a flow is found here, when configuration is
loaded, never while a call is running. The first mistake found raises
:class:`FlowValidationError` naming tenant, flow, node and field. Checks run in
a fixed order (flow fields, then nodes in definition order and their fields in
the order listed below, then node references, then reachability), so a given
document always reports the same error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from .errors import FlowValidationError
from .flow import (
    Flow,
    GatherNode,
    GotoNode,
    HangupNode,
    MenuNode,
    Node,
    PlayNode,
    PythonNode,
    SetNode,
    TimeConditionNode,
    TransferNode,
    VoicemailNode,
    WebhookNode,
)

__all__ = [
    "BUILTIN_PROMPTS",
    "DTMF_DIGITS",
    "WEEKDAYS",
    "load_flow",
    "load_flow_file",
    "load_flows",
]

#: Prompt names every tenant may use without defining them.
BUILTIN_PROMPTS = frozenset({"tone:beep", "tone:ringback", "tone:busy"})
#: The DTMF alphabet (RFC 4733 events 0-15).
DTMF_DIGITS = frozenset("0123456789*#ABCD")
#: Schedule keys, in ``datetime.weekday()`` order.
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_T = TypeVar("_T")
_MISSING: Any = object()
_TIME_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TARGET_RE = re.compile(r"(user|group|ext):[A-Za-z0-9_.\-]+|external:\+?[0-9]+")
_COMMON_FIELDS = frozenset({"type", "description", "record"})
_FLOW_FIELDS = frozenset({"start", "nodes", "timezone", "description"})


def _kind(value: object) -> str:
    """Name a value's type in JSON terms, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


class _Checker:
    """Field parsers bound to one flow; each raises with the full location."""

    def __init__(
        self,
        *,
        tenant: str,
        flow: str,
        prompts: Collection[str],
        actions: Collection[str] | None,
        timezone: str,
        file: str | None,
    ) -> None:
        self.tenant = tenant
        self.flow = flow
        self.prompts = prompts
        self.actions = actions
        self.timezone = timezone
        self.file = file
        self.node: str | None = None
        #: (node, field, target) for every node reference, checked once all nodes are known.
        self.refs: list[tuple[str | None, str, str]] = []

    def fail(self, field: str | None, message: str, *, node: str | None = _MISSING) -> NoReturn:
        raise FlowValidationError(
            message,
            tenant=self.tenant,
            flow=self.flow,
            node=self.node if node is _MISSING else node,
            field=field,
            file=self.file,
        )

    # -- field access ---------------------------------------------------------

    def req(self, raw: Mapping[str, Any], name: str, parse: Callable[[str, Any], _T]) -> _T:
        value = raw.get(name)
        if value is None:
            self.fail(name, "required field missing")
        return parse(name, value)

    def opt(
        self, raw: Mapping[str, Any], name: str, parse: Callable[[str, Any], _T], default: _T
    ) -> _T:
        value = raw.get(name)
        if value is None:
            return default
        return parse(name, value)

    # -- parsers: (field path, raw value) -> typed value ----------------------

    def string(self, field: str, value: Any) -> str:
        if not isinstance(value, str):
            self.fail(field, f"expected string, got {_kind(value)}")
        if not value:
            self.fail(field, "must not be empty")
        return value

    def ref(self, field: str, value: Any) -> str:
        target = self.string(field, value)
        self.refs.append((self.node, field, target))
        return target

    def boolean(self, field: str, value: Any) -> bool:
        if not isinstance(value, bool):
            self.fail(field, f"expected boolean, got {_kind(value)}")
        return value

    def seconds(self, field: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(field, f"expected number, got {_kind(value)}")
        if not value > 0:
            self.fail(field, f"must be > 0, got {value!r}")
        return float(value)

    def integer(self, lo: int, hi: int) -> Callable[[str, Any], int]:
        def parse(field: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(field, f"expected integer, got {_kind(value)}")
            if not lo <= value <= hi:
                self.fail(field, f"must be between {lo} and {hi}, got {value}")
            return value

        return parse

    def choice(self, *allowed: str) -> Callable[[str, Any], str]:
        def parse(field: str, value: Any) -> str:
            if value not in allowed:
                names = " or ".join(repr(a) for a in allowed)
                self.fail(field, f"expected {names}, got {value!r}")
            return str(value)

        return parse

    def digit(self, field: str, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
            value = str(value)  # YAML reads an unquoted 1 as a number
        if not isinstance(value, str) or value not in DTMF_DIGITS:
            self.fail(field, f"bad digit {value!r} (expected one of 0-9, *, #, A-D)")
        return value

    def prompt_list(self, field: str, value: Any) -> tuple[str, ...]:
        """A prompt name or a list of them; every name must exist."""
        if isinstance(value, str):
            items: list[tuple[str, Any]] = [(field, value)]
        elif isinstance(value, list | tuple):
            if not value:
                self.fail(field, "expected at least one prompt")
            items = [(f"{field}[{i}]", v) for i, v in enumerate(value)]
        else:
            self.fail(field, f"expected string or array, got {_kind(value)}")
        names = []
        for path, item in items:
            name = self.string(path, item)
            if name not in BUILTIN_PROMPTS and name not in self.prompts:
                self.fail(path, f"unknown prompt {name!r}")
            names.append(name)
        return tuple(names)

    def mapping(self, field: str, value: Any) -> Mapping[Any, Any]:
        if not isinstance(value, Mapping):
            self.fail(field, f"expected object, got {_kind(value)}")
        if not value:
            self.fail(field, "must not be empty")
        return value

    def array(self, field: str, value: Any) -> list[Any] | tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            self.fail(field, f"expected array, got {_kind(value)}")
        return value

    def ref_list(self, field: str, value: Any) -> tuple[str, ...]:
        items = self.array(field, value)
        if not items:
            self.fail(field, "expected at least one node")
        return tuple(self.ref(f"{field}[{i}]", v) for i, v in enumerate(items))

    def options(self, field: str, value: Any) -> Mapping[str, str]:
        raw = self.mapping(field, value)
        out: dict[str, str] = {}
        for key, target in raw.items():
            path = f"{field}.{key}"
            out[self.digit(path, key)] = self.ref(path, target)
        return MappingProxyType(out)

    def regex(self, field: str, value: Any) -> re.Pattern[str]:
        source = self.string(field, value)
        try:
            return re.compile(source)
        except re.error as exc:
            self.fail(field, f"invalid regex {source!r}: {exc}")

    def zone(self, field: str, value: Any) -> str:
        name = self.string(field, value)
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(field, f"unknown time zone {name!r}")
        return name

    def clock_time(self, field: str, value: Any) -> int:
        if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
            self.fail(field, f"bad time {value!r} (expected HH:MM)")
        hours, minutes = value.split(":")
        return int(hours) * 60 + int(minutes)

    def schedule(self, field: str, value: Any) -> Mapping[int, tuple[tuple[int, int], ...]]:
        raw = self.mapping(field, value)
        out: dict[int, tuple[tuple[int, int], ...]] = {}
        for day, ranges in raw.items():
            path = f"{field}.{day}"
            if day not in WEEKDAYS:
                self.fail(path, "unknown weekday (expected mon, tue, wed, thu, fri, sat, sun)")
            parsed = []
            for i, pair in enumerate(self.array(path, ranges)):
                item = f"{path}[{i}]"
                if not isinstance(pair, list | tuple) or len(pair) != 2:
                    self.fail(item, f"expected [start, end] pair, got {pair!r}")
                start = self.clock_time(f"{item}[0]", pair[0])
                end = self.clock_time(f"{item}[1]", pair[1])
                if start >= end:
                    self.fail(
                        item, f"bad time range {pair[0]!r}-{pair[1]!r}: start must be before end"
                    )
                parsed.append((start, end))
            out[WEEKDAYS.index(day)] = tuple(sorted(parsed))
        return MappingProxyType(out)

    def holidays(self, field: str, value: Any) -> frozenset[date]:
        days = set()
        for i, item in enumerate(self.array(field, value)):
            if isinstance(item, date) and not isinstance(item, datetime):
                days.add(item)
                continue
            try:
                if not isinstance(item, str) or not _DATE_RE.fullmatch(item):
                    raise ValueError(item)
                days.add(date.fromisoformat(item))
            except ValueError:
                self.fail(f"{field}[{i}]", f"bad date {item!r} (expected YYYY-MM-DD)")
        return frozenset(days)

    def targets(self, field: str, value: Any) -> tuple[str, ...]:
        items = self.array(field, value)
        if not items:
            self.fail(field, "expected at least one target")
        out = []
        for i, item in enumerate(items):
            path = f"{field}[{i}]"
            target = self.string(path, item)
            if not _TARGET_RE.fullmatch(target):
                self.fail(
                    path,
                    f"bad target {target!r} (expected user:<id>, group:<name>, "
                    "ext:<number> or external:<number>)",
                )
            out.append(target)
        return tuple(out)

    def url(self, field: str, value: Any) -> str:
        url = self.string(field, value)
        if not re.fullmatch(r"http://[^/?#\s]+[^\s]*", url):
            self.fail(field, f"unsupported URL {url!r} (only http:// is supported)")
        return url

    def json_body(self, field: str, value: Any) -> str:
        if not isinstance(value, Mapping):
            self.fail(field, f"expected object, got {_kind(value)}")
        try:
            return json.dumps(value, sort_keys=True)
        except (TypeError, ValueError):
            self.fail(field, "not JSON-serializable")

    def assignments(self, field: str, value: Any) -> Mapping[str, str]:
        raw = self.mapping(field, value)
        out: dict[str, str] = {}
        for name, val in raw.items():
            path = f"{field}.{name}"
            if not isinstance(name, str) or not _VAR_RE.fullmatch(name):
                self.fail(path, "bad variable name (expected letters, digits and _)")
            if isinstance(val, bool) or not isinstance(val, str | int | float):
                self.fail(path, f"expected string or number, got {_kind(val)}")
            out[name] = str(val)
        return MappingProxyType(out)

    def variable(self, field: str, value: Any) -> str:
        name = self.string(field, value)
        if not _VAR_RE.fullmatch(name):
            self.fail(field, "bad variable name (expected letters, digits and _)")
        return name

    def action(self, field: str, value: Any) -> str:
        name = self.string(field, value)
        if self.actions is not None and name not in self.actions:
            self.fail(field, f"unknown action {name!r}")
        return name


# -- one parser per node type; fields are checked in argument order -----------


def _play(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return PlayNode(
        id=nid,
        prompts=c.req(raw, "prompts", c.prompt_list),
        barge_in=c.opt(raw, "barge_in", c.boolean, True),
        next=c.opt(raw, "next", c.ref, None),
    )


def _menu(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return MenuNode(
        id=nid,
        prompt=c.req(raw, "prompt", c.prompt_list),
        options=c.req(raw, "options", c.options),
        invalid_prompt=c.opt(raw, "invalid_prompt", c.prompt_list, ()),
        timeout_prompt=c.opt(raw, "timeout_prompt", c.prompt_list, ()),
        timeout=c.opt(raw, "timeout", c.seconds, 5.0),
        retries=c.opt(raw, "retries", c.integer(0, 10), 2),
        on_failure=c.opt(raw, "on_failure", c.ref, None),
    )


def _gather(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    node = GatherNode(
        id=nid,
        variable=c.req(raw, "variable", c.variable),
        max_digits=c.req(raw, "max_digits", c.integer(1, 64)),
        prompt=c.opt(raw, "prompt", c.prompt_list, ()),
        min_digits=c.opt(raw, "min_digits", c.integer(0, 64), 1),
        # An explicit null or "" means no terminator; absent means "#".
        terminator=None
        if raw.get("terminator", "#") in (None, "")
        else c.opt(raw, "terminator", c.digit, "#"),
        timeout=c.opt(raw, "timeout", c.seconds, 5.0),
        inter_digit_timeout=c.opt(raw, "inter_digit_timeout", c.seconds, 3.0),
        pattern=c.opt(raw, "pattern", c.regex, None),
        retries=c.opt(raw, "retries", c.integer(0, 10), 0),
        invalid_prompt=c.opt(raw, "invalid_prompt", c.prompt_list, ()),
        next=c.opt(raw, "next", c.ref, None),
        on_failure=c.opt(raw, "on_failure", c.ref, None),
    )
    if node.min_digits > node.max_digits:
        c.fail("min_digits", f"{node.min_digits} is greater than max_digits {node.max_digits}")
    return node


def _time_condition(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return TimeConditionNode(
        id=nid,
        timezone=c.opt(raw, "timezone", c.zone, c.timezone),
        schedule=c.req(raw, "schedule", c.schedule),
        holidays=c.opt(raw, "holidays", c.holidays, frozenset()),
        open=c.req(raw, "open", c.ref),
        closed=c.req(raw, "closed", c.ref),
    )


def _transfer(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return TransferNode(
        id=nid,
        targets=c.req(raw, "targets", c.targets),
        strategy=c.opt(raw, "strategy", c.choice("parallel", "sequential"), "parallel"),
        timeout=c.opt(raw, "timeout", c.seconds, 20.0),
        on_no_answer=c.opt(raw, "on_no_answer", c.ref, None),
        on_busy=c.opt(raw, "on_busy", c.ref, None),
        next=c.opt(raw, "next", c.ref, None),
    )


def _voicemail(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return VoicemailNode(
        id=nid,
        greeting=c.opt(raw, "greeting", c.prompt_list, ()),
        beep=c.opt(raw, "beep", c.boolean, True),
        max_seconds=c.opt(raw, "max_seconds", c.seconds, 120.0),
        silence_timeout=c.opt(raw, "silence_timeout", c.seconds, 5.0),
        next=c.opt(raw, "next", c.ref, None),
    )


def _set(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return SetNode(
        id=nid,
        variables=c.req(raw, "variables", c.assignments),
        next=c.opt(raw, "next", c.ref, None),
    )


def _goto(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return GotoNode(id=nid, node=c.req(raw, "node", c.ref))


def _hangup(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return HangupNode(id=nid, cause=c.opt(raw, "cause", c.integer(1, 127), 16))


def _webhook(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return WebhookNode(
        id=nid,
        url=c.req(raw, "url", c.url),
        allowed_next=c.req(raw, "allowed_next", c.ref_list),
        method=c.opt(raw, "method", c.choice("GET", "POST"), "POST"),
        timeout=c.opt(raw, "timeout", c.seconds, 5.0),
        body=c.opt(raw, "body", c.json_body, None),
        next=c.opt(raw, "next", c.ref, None),
        on_failure=c.opt(raw, "on_failure", c.ref, None),
    )


def _python(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return PythonNode(
        id=nid,
        action=c.req(raw, "action", c.action),
        allowed_next=c.opt(raw, "allowed_next", c.ref_list, ()),
        next=c.opt(raw, "next", c.ref, None),
        on_failure=c.opt(raw, "on_failure", c.ref, None),
    )


_PARSERS: dict[str, Callable[[_Checker, str, Mapping[str, Any]], Node]] = {
    "play": _play,
    "menu": _menu,
    "gather": _gather,
    "time_condition": _time_condition,
    "transfer": _transfer,
    "voicemail": _voicemail,
    "set": _set,
    "goto": _goto,
    "hangup": _hangup,
    "webhook": _webhook,
    "python": _python,
}
_FIELDS: dict[str, frozenset[str]] = {
    "play": frozenset({"prompts", "barge_in", "next"}),
    "menu": frozenset(
        {"prompt", "options", "invalid_prompt", "timeout_prompt", "timeout", "retries"}
        | {"on_failure"}
    ),
    "gather": frozenset(
        {"variable", "max_digits", "prompt", "min_digits", "terminator", "timeout"}
        | {"inter_digit_timeout", "pattern", "retries", "invalid_prompt", "next", "on_failure"}
    ),
    "time_condition": frozenset({"timezone", "schedule", "holidays", "open", "closed"}),
    "transfer": frozenset({"targets", "strategy", "timeout", "on_no_answer", "on_busy", "next"}),
    "voicemail": frozenset({"greeting", "beep", "max_seconds", "silence_timeout", "next"}),
    "set": frozenset({"variables", "next"}),
    "goto": frozenset({"node"}),
    "hangup": frozenset({"cause"}),
    "webhook": frozenset(
        {"url", "allowed_next", "method", "timeout", "body", "next", "on_failure"}
    ),
    "python": frozenset({"action", "allowed_next", "next", "on_failure"}),
}


def _node(c: _Checker, nid: str, raw: Any) -> Node:
    if not isinstance(raw, Mapping):
        c.fail(None, f"expected object, got {_kind(raw)}")
    kind = c.req(raw, "type", c.string)
    parser = _PARSERS.get(kind)
    if parser is None:
        c.fail("type", f"unknown node type {kind!r}")
    for key in raw:
        if key not in _FIELDS[kind] and key not in _COMMON_FIELDS:
            c.fail(str(key), "unknown field")
    return parser(c, nid, raw)


def load_flow(
    tenant: str,
    name: str,
    data: Any,
    *,
    prompts: Collection[str],
    timezone: str = "UTC",
    actions: Collection[str] | None = None,
    file: str | None = None,
) -> Flow:
    """Validate one flow document and build its immutable :class:`Flow`.

    ``timezone`` is the tenant's zone, used by ``time_condition`` nodes that
    name none (a flow may override it with a top-level ``timezone``). When
    ``actions`` is given, ``python`` nodes must name one of them; otherwise
    action names are checked when the call runs. ``file`` is only used in
    error messages. Raises :class:`FlowValidationError`.
    """
    c = _Checker(
        tenant=tenant, flow=name, prompts=prompts, actions=actions, timezone=timezone, file=file
    )
    if not isinstance(data, Mapping):
        c.fail(None, f"expected object, got {_kind(data)}")
    for key in data:
        if key not in _FLOW_FIELDS:
            c.fail(str(key), "unknown field")
    start = c.req(data, "start", c.ref)
    c.timezone = c.opt(data, "timezone", c.zone, timezone)
    raw_nodes = c.req(data, "nodes", c.mapping)
    nodes: dict[str, Node] = {}
    recording: dict[str, bool] = {}
    for nid, raw in raw_nodes.items():
        if not isinstance(nid, str) or not nid:
            c.fail("nodes", f"bad node id {nid!r} (expected a non-empty string)")
        c.node = nid
        nodes[nid] = _node(c, nid, raw)
        if "record" in raw:
            # any node: true starts recording the call when the node is entered, false
            # stops it (the recording otherwise runs until the call ends)
            recording[nid] = c.boolean("record", raw["record"])
    c.node = None

    edges: dict[str | None, list[str]] = {}
    for node, field, target in c.refs:
        if target not in nodes:
            c.fail(field, f"unknown node {target!r}", node=node)
        edges.setdefault(node, []).append(target)
    seen = {start}
    todo = [start]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    for nid in nodes:
        if nid not in seen:
            c.fail(None, f"unreachable from start {start!r}", node=nid)
    return Flow(
        tenant=tenant,
        name=name,
        start=start,
        nodes=MappingProxyType(nodes),
        recording=MappingProxyType(recording),
    )


def load_flows(
    tenant: str,
    flows: Mapping[str, Any],
    *,
    prompts: Collection[str],
    timezone: str = "UTC",
    actions: Collection[str] | None = None,
) -> dict[str, Flow]:
    """Validate a tenant's flows (name -> document) and return them by name.

    This is the hook the config cache calls when tenant configuration is
    loaded. ``prompts`` are the tenant's prompt names (``tone:beep``,
    ``tone:ringback`` and ``tone:busy`` are always allowed); for ``timezone``
    and ``actions`` see :func:`load_flow`. Raises :class:`FlowValidationError`
    for the first mistake found.
    """
    if not isinstance(flows, Mapping):
        raise FlowValidationError(f"expected object, got {_kind(flows)}", tenant=tenant, flow=None)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise FlowValidationError(
            f"unknown time zone {timezone!r}", tenant=tenant, flow=None, field="timezone"
        ) from None
    out = {}
    for name, data in flows.items():
        if not isinstance(name, str) or not name:
            raise FlowValidationError(
                f"bad flow name {name!r} (expected a non-empty string)", tenant=tenant, flow=None
            )
        out[name] = load_flow(
            tenant, name, data, prompts=prompts, timezone=timezone, actions=actions
        )
    return out


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: ``17:00`` is a string, not 1020.

    YAML 1.1 (PyYAML's default) reads ``17:00`` as a base-60 integer and
    ``2026-12-25`` as a date; schedules and holidays must stay strings.
    """


_YamlLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag
        not in (
            "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:float",
            "tag:yaml.org,2002:timestamp",
        )
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789")
)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)


def load_flow_file(
    path: str | Path,
    *,
    tenant: str,
    prompts: Collection[str],
    name: str | None = None,
    timezone: str = "UTC",
    actions: Collection[str] | None = None,
) -> Flow:
    """Read one flow from a ``.json``, ``.yaml`` or ``.yml`` file and validate it.

    The flow is named ``name`` or, by default, after the file's stem. Every
    error (unreadable file, bad syntax, invalid flow) is a
    :class:`FlowValidationError` whose message starts with the file name.
    """
    path = Path(path)
    flow = name if name is not None else path.stem

    def fail(message: str) -> NoReturn:
        raise FlowValidationError(message, tenant=tenant, flow=flow, file=str(path))

    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        fail(f"unsupported file type {suffix!r} (expected .json, .yaml or .yml)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read: {exc}")
    try:
        data = json.loads(text) if suffix == ".json" else yaml.load(text, Loader=_YamlLoader)
    except json.JSONDecodeError as exc:
        fail(f"invalid JSON: {exc}")
    except yaml.YAMLError as exc:
        fail(f"invalid YAML: {' '.join(str(exc).split())}")
    return load_flow(
        tenant, flow, data, prompts=prompts, timezone=timezone, actions=actions, file=str(path)
    )
