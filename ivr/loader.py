"""Load-time validation: raw tenant config (JSON/YAML dicts) -> immutable :class:`Flow`.

Every mistake a tenant can make in a flow is found here, when configuration is
loaded, never while a call is running. The first mistake found raises
:class:`FlowValidationError` naming tenant, flow, node and field. Checks run in
a fixed order: the JSON Schema ``config_cache/schemas/flow.json`` (shape, types,
ranges, unknown fields; shallowest mistake first), then what it cannot say --
prompt names, digits, time zones, regexes, time ranges, dates, actions -- for the
nodes in definition order and their fields in the order listed below, then node
references, then reachability. A given document always reports the same error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from config_cache import validation

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
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


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


#: How flow errors word a schema mistake (``validation.first_issue``).
_WORDING = validation.Wording(
    kind=_kind,
    want={
        "object": "object",
        "array": "array",
        "string": "string",
        "non-empty string": "string",
        "integer": "integer",
        "number": "number",
        "boolean": "boolean",
        "null": "null",
    },
    type="expected {want}, got {got}",
    missing="required field missing",
    unknown="unknown field",
    empty="must not be empty",
    range="must be between {low} and {high}, got {value}",
    minimum="must be at least {low}, got {value}",
    exclusive_minimum="must be > {low}, got {value!r}",
    enum="expected one of {names}, got {value!r}",
    pattern="invalid value {value!r}",
    min_items="must not be empty",
    key_type="bad key {key!r}",
)


def _without_nulls(data: Mapping[Any, Any]) -> dict[Any, Any]:
    """The flow as the schema sees it: a null field counts as absent (for the flow and
    each node), except gather's ``terminator``, where null means "no terminator"."""
    out = {k: v for k, v in data.items() if v is not None}
    nodes = out.get("nodes")
    if isinstance(nodes, Mapping):
        out["nodes"] = {
            nid: {k: v for k, v in raw.items() if v is not None or k == "terminator"}
            if isinstance(raw, Mapping)
            else raw
            for nid, raw in nodes.items()
        }
    return out


def _locate(path: Sequence[str | int]) -> tuple[str | None, str | None]:
    """(node, field) of a schema path: ``nodes.menu.options.7`` -> ("menu", "options.7")."""
    node: str | None = None
    rest = list(path)
    if len(rest) >= 2 and rest[0] == "nodes":
        node, rest = str(rest[1]), rest[2:]
    field: str | None = None
    for part in rest:
        if field is None:
            field = str(part)
        elif isinstance(part, int):
            field += f"[{part}]"
        else:
            field += f".{part}"
    return node, field


class _Checker:
    """What the flow schema cannot check, for one flow: prompt names, digits, time
    zones, regexes, time ranges, dates, actions and node references. Each check
    raises with the full location; fields are parsed in the order listed below."""

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

    # -- field access: the schema checked types; ``None`` is absent ------------

    def req(self, raw: Mapping[str, Any], name: str, parse: Callable[[str, Any], _T]) -> _T:
        return parse(name, raw[name])

    def opt(
        self, raw: Mapping[str, Any], name: str, parse: Callable[[str, Any], _T], default: _T
    ) -> _T:
        value = raw.get(name)
        if value is None:
            return default
        return parse(name, value)

    # -- parsers: (field path, schema-checked value) -> typed value ------------

    @staticmethod
    def same(field: str, value: _T) -> _T:
        return value

    @staticmethod
    def seconds(field: str, value: float) -> float:
        return float(value)

    def ref(self, field: str, target: str) -> str:
        self.refs.append((self.node, field, target))
        return target

    def digit(self, field: str, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
            value = str(value)  # YAML reads an unquoted 1 as a number
        if not isinstance(value, str) or value not in DTMF_DIGITS:
            self.fail(field, f"bad digit {value!r} (expected one of 0-9, *, #, A-D)")
        return value

    def prompt_list(self, field: str, value: str | list[str]) -> tuple[str, ...]:
        """A prompt name or a list of them; every name must exist."""
        if isinstance(value, str):
            items = [(field, value)]
        else:
            items = [(f"{field}[{i}]", v) for i, v in enumerate(value)]
        for path, name in items:
            if name not in BUILTIN_PROMPTS and name not in self.prompts:
                self.fail(path, f"unknown prompt {name!r}")
        return tuple(name for _, name in items)

    def ref_list(self, field: str, value: list[str]) -> tuple[str, ...]:
        return tuple(self.ref(f"{field}[{i}]", v) for i, v in enumerate(value))

    def options(self, field: str, value: Mapping[Any, str]) -> Mapping[str, str]:
        out: dict[str, str] = {}
        for key, target in value.items():
            path = f"{field}.{key}"
            out[self.digit(path, key)] = self.ref(path, target)
        return MappingProxyType(out)

    def regex(self, field: str, source: str) -> re.Pattern[str]:
        try:
            return re.compile(source)
        except re.error as exc:
            self.fail(field, f"invalid regex {source!r}: {exc}")

    def zone(self, field: str, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(field, f"unknown time zone {name!r}")
        return name

    def schedule(
        self, field: str, value: Mapping[str, list[list[str]]]
    ) -> Mapping[int, tuple[tuple[int, int], ...]]:
        out: dict[int, tuple[tuple[int, int], ...]] = {}
        for day, ranges in value.items():
            parsed = []
            for i, (start_text, end_text) in enumerate(ranges):
                start, end = _minutes(start_text), _minutes(end_text)
                if start >= end:
                    self.fail(
                        f"{field}.{day}[{i}]",
                        f"bad time range {start_text!r}-{end_text!r}: start must be before end",
                    )
                parsed.append((start, end))
            out[WEEKDAYS.index(day)] = tuple(sorted(parsed))
        return MappingProxyType(out)

    def holidays(self, field: str, value: list[Any]) -> frozenset[date]:
        days = set()
        for i, item in enumerate(value):
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

    @staticmethod
    def targets(field: str, value: list[str]) -> tuple[str, ...]:
        return tuple(value)

    def json_body(self, field: str, value: Mapping[str, Any]) -> str:
        try:
            return json.dumps(value, sort_keys=True)
        except (TypeError, ValueError):
            self.fail(field, "not JSON-serializable")

    def assignments(self, field: str, value: Mapping[Any, Any]) -> Mapping[str, str]:
        out: dict[str, str] = {}
        for name, val in value.items():
            if not isinstance(name, str):  # YAML's unquoted 1: (the schema sees strings)
                self.fail(f"{field}.{name}", "bad variable name (expected letters, digits and _)")
            out[name] = str(val)
        return MappingProxyType(out)

    def action(self, field: str, name: str) -> str:
        if self.actions is not None and name not in self.actions:
            self.fail(field, f"unknown action {name!r}")
        return name


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


# -- one parser per node type; fields are checked in argument order -----------


def _play(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return PlayNode(
        id=nid,
        prompts=c.req(raw, "prompts", c.prompt_list),
        barge_in=c.opt(raw, "barge_in", c.same, True),
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
        retries=c.opt(raw, "retries", c.same, 2),
        on_failure=c.opt(raw, "on_failure", c.ref, None),
    )


def _gather(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    node = GatherNode(
        id=nid,
        variable=c.req(raw, "variable", c.same),
        max_digits=c.req(raw, "max_digits", c.same),
        prompt=c.opt(raw, "prompt", c.prompt_list, ()),
        min_digits=c.opt(raw, "min_digits", c.same, 1),
        # An explicit null or "" means no terminator; absent means "#".
        terminator=None
        if raw.get("terminator", "#") in (None, "")
        else c.opt(raw, "terminator", c.digit, "#"),
        timeout=c.opt(raw, "timeout", c.seconds, 5.0),
        inter_digit_timeout=c.opt(raw, "inter_digit_timeout", c.seconds, 3.0),
        pattern=c.opt(raw, "pattern", c.regex, None),
        retries=c.opt(raw, "retries", c.same, 0),
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
        strategy=c.opt(raw, "strategy", c.same, "parallel"),
        timeout=c.opt(raw, "timeout", c.seconds, 20.0),
        on_no_answer=c.opt(raw, "on_no_answer", c.ref, None),
        on_busy=c.opt(raw, "on_busy", c.ref, None),
        next=c.opt(raw, "next", c.ref, None),
    )


def _voicemail(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return VoicemailNode(
        id=nid,
        greeting=c.opt(raw, "greeting", c.prompt_list, ()),
        beep=c.opt(raw, "beep", c.same, True),
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
    return HangupNode(id=nid, cause=c.opt(raw, "cause", c.same, 16))


def _webhook(c: _Checker, nid: str, raw: Mapping[str, Any]) -> Node:
    return WebhookNode(
        id=nid,
        url=c.req(raw, "url", c.same),
        allowed_next=c.req(raw, "allowed_next", c.ref_list),
        method=c.opt(raw, "method", c.same, "POST"),
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
    error messages. The shape and types are checked by
    ``config_cache/schemas/flow.json`` (a null field counts as absent), the rest
    here. Raises :class:`FlowValidationError`.
    """
    c = _Checker(
        tenant=tenant, flow=name, prompts=prompts, actions=actions, timezone=timezone, file=file
    )
    if not isinstance(data, Mapping):
        c.fail(None, f"expected object, got {_kind(data)}")
    data = _without_nulls(data)
    issue = validation.first_issue("flow", data, _WORDING, string_keys=False)
    if issue is not None:
        node, field = _locate(issue.path)
        c.fail(field, issue.message, node=node)
    start = c.req(data, "start", c.ref)
    c.timezone = c.opt(data, "timezone", c.zone, timezone)
    nodes: dict[str, Node] = {}
    recording: dict[str, bool] = {}
    for nid, raw in data["nodes"].items():
        kind = raw["type"]
        issue = validation.first_issue("flow", raw, _WORDING, part=kind, string_keys=False)
        if issue is not None:
            node, field = _locate(("nodes", nid, *issue.path))
            c.fail(field, issue.message, node=node)
        c.node = nid
        nodes[nid] = _PARSERS[kind](c, nid, raw)
        if "record" in raw:
            # any node: true starts recording the call when the node is entered, false
            # stops it (the recording otherwise runs until the call ends)
            recording[nid] = bool(raw["record"])
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
        if suffix == ".json":
            data = json.loads(validation.read_text(path))
        else:
            data = validation.load_yaml(path)
    except validation.DocumentError as exc:
        fail(str(exc))
    except json.JSONDecodeError as exc:
        fail(f"invalid JSON: {exc}")
    return load_flow(
        tenant, flow, data, prompts=prompts, timezone=timezone, actions=actions, file=str(path)
    )
