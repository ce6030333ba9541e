"""The flow interpreter as a sans-IO state machine.

Theory of operation
-------------------
:class:`FlowMachine` walks a validated :class:`~ivr.flow.Flow` node by node but
never touches a call, a socket or a clock. It *yields commands* (frozen
dataclasses: :class:`Play`, :class:`Gather`, :class:`Record`,
:class:`Transfer`, :class:`Hangup`, :class:`HttpRequest`, :class:`RunAction`,
:class:`Now`, :class:`Log`, :class:`StepStarted`, :class:`StepFinished`) and is
fed each command's result through :meth:`FlowMachine.send`. The last command is
:class:`End`. The asyncio shell (:mod:`ivr.runner`) performs the commands on a
real call; tests can drive the machine directly with scripted results.

Every node visit is bracketed by ``StepStarted``/``StepFinished``; the
finished step carries the prompts played, the digits received, the outcome
and the next node. A node without a next node ends the flow: the machine hangs
up with cause 16 (normal clearing). ``max_steps`` node visits end the flow the
same way, after a ``Log("max_steps")``, so a ``goto`` loop cannot run forever.

Type-ahead: a digit that barges into a ``play`` node's prompts is kept and
becomes the first input of the next ``menu`` or ``gather`` node (a ``menu``
then skips its prompt). ``transfer`` and ``voicemail`` discard it.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._template import substitute, substitute_json
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
from .schedule import evaluate

__all__ = [
    "ActionFailed",
    "ActionReturned",
    "Command",
    "End",
    "FlowContext",
    "FlowMachine",
    "Gather",
    "Hangup",
    "HttpFailed",
    "HttpReply",
    "HttpRequest",
    "Log",
    "Now",
    "Play",
    "Record",
    "RunAction",
    "StepFinished",
    "StepStarted",
    "Transfer",
]

#: SIP statuses and Q.850 causes that mean "busy" to a transfer node.
_BUSY_STATUSES = frozenset({486, 600})
_BUSY_CAUSES = frozenset({17})


# -- results the machine reads (the Call API's result types, structurally) ----


class RecordResultLike(Protocol):
    """What the machine reads from ``Call.record``'s result."""

    @property
    def key(self) -> str: ...
    @property
    def seconds(self) -> float: ...
    @property
    def reason(self) -> str: ...


class TransferResultLike(Protocol):
    """What the machine reads from ``Call.transfer``'s result."""

    @property
    def answered(self) -> bool: ...
    @property
    def status(self) -> int: ...
    @property
    def cause(self) -> int: ...
    @property
    def target(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class FlowContext:
    """What a ``python`` node's action sees besides the call.

    ``variables`` is the call's live variable dict: assignments are visible to
    the rest of the flow.
    """

    flow: Flow
    node: str
    variables: dict[str, str]
    path: tuple[str, ...]
    digits: tuple[str, ...]


# -- commands (machine -> shell) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Play:
    """``call.play(prompts, barge_in=...)``; reply: the barge-in digit or ``None``."""

    prompts: tuple[str, ...]
    barge_in: bool


@dataclass(frozen=True, slots=True)
class Gather:
    """``call.gather(...)``; reply: the digits (``""`` on timeout)."""

    max_digits: int
    timeout: float
    terminator: str | None
    inter_digit_timeout: float | None


@dataclass(frozen=True, slots=True)
class Record:
    """``call.record(key, ...)``; reply: a ``RecordResult``."""

    key: str
    max_seconds: float
    beep: bool
    silence_timeout: float | None


@dataclass(frozen=True, slots=True)
class Transfer:
    """``call.transfer(targets, ...)``; reply: a ``TransferResult``."""

    targets: tuple[str, ...]
    strategy: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Hangup:
    """``call.hangup(cause)``; reply: ``None``."""

    cause: int


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request; reply: :class:`HttpReply` or :class:`HttpFailed`."""

    method: str
    url: str
    body: bytes | None
    timeout: float


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A complete HTTP response."""

    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class HttpFailed:
    """No HTTP response (timeout, connection error, malformed response)."""

    error: str


@dataclass(frozen=True, slots=True)
class RunAction:
    """Run a registered Python action; reply: :class:`ActionReturned` or :class:`ActionFailed`."""

    name: str
    context: FlowContext


@dataclass(frozen=True, slots=True)
class ActionReturned:
    """The action returned a node id, or ``None`` for the node's ``next``."""

    next: str | None


@dataclass(frozen=True, slots=True)
class ActionFailed:
    """The action is not registered or raised."""

    error: str


@dataclass(frozen=True, slots=True)
class Now:
    """Ask for the wall-clock time; reply: seconds since the epoch (float)."""


@dataclass(frozen=True, slots=True)
class Log:
    """Log an IVR event outside any step (``call.log_event("ivr", event=..., **fields)``)."""

    event: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StepStarted:
    """A node visit begins; reply: ``None``."""

    node: str
    type: str


@dataclass(frozen=True, slots=True)
class StepFinished:
    """A node visit ended (``outcome`` ``"cancelled"`` when cut short by :meth:`FlowMachine.abort`)."""

    node: str
    type: str
    prompts: tuple[str, ...]
    digits: tuple[str, ...]
    outcome: str
    next: str | None
    details: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class End:
    """The flow is over: ``reason`` is ``"hangup"`` (a hangup node), ``"end"`` or ``"max_steps"``."""

    reason: str
    hangup_cause: int | None


Command = (
    Play
    | Gather
    | Record
    | Transfer
    | Hangup
    | HttpRequest
    | RunAction
    | Now
    | Log
    | StepStarted
    | StepFinished
    | End
)


@dataclass(slots=True)
class _Draft:
    """The step being executed."""

    node: Node
    prompts: list[str] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def finish(self, outcome: str, next_node: str | None) -> StepFinished:
        return StepFinished(
            node=self.node.id,
            type=self.node.type,
            prompts=tuple(self.prompts),
            digits=tuple(self.digits),
            outcome=outcome,
            next=next_node,
            details=dict(self.details),
        )


@dataclass(frozen=True, slots=True)
class _Exit:
    """A node handler's verdict."""

    outcome: str
    next: str | None
    hangup_cause: int | None = None  # set when the node hung up: the flow is over


_Steps = Generator[Command, Any, _Exit]


class FlowMachine:
    """Interpret one flow for one call; see the module docstring.

    ``variables`` is the call's variable dict (updated in place by ``set``,
    ``gather``, ``webhook`` and python actions); ``builtins`` are read-only
    values also visible to ``${name}`` substitution (``call_id``, ``caller``,
    ``callee``, ``tenant``, ``flow``), which variables of the same name shadow.
    """

    def __init__(
        self,
        flow: Flow,
        *,
        variables: dict[str, str],
        builtins: Mapping[str, str],
        max_steps: int = 1000,
    ) -> None:
        self.flow = flow
        self.variables = variables
        self.builtins = dict(builtins)
        self.max_steps = max_steps
        #: Node ids in visiting order.
        self.path: list[str] = []
        #: Each menu choice and gather entry, in order.
        self.digits: list[str] = []
        self._pending: str | None = None
        self._draft: _Draft | None = None
        self._gen = self._run()
        self._ended = False

    def send(self, result: object = None) -> Command:
        """Feed the previous command's result (``None`` at first) and get the next command."""
        if self._ended:
            raise RuntimeError("flow already ended")
        try:
            return self._gen.send(result)
        except StopIteration as stop:
            self._ended = True
            end: End = stop.value
            return end

    def abort(self, outcome: str = "cancelled") -> StepFinished | None:
        """Stop the flow; returns the open step closed with ``outcome``, if there is one."""
        draft, self._draft = self._draft, None
        self._ended = True
        self._gen.close()
        if draft is None:
            return None
        return draft.finish(outcome, None)

    # -- helpers ---------------------------------------------------------------

    @property
    def _step(self) -> _Draft:
        assert self._draft is not None
        return self._draft

    def _scope(self) -> dict[str, str]:
        return {**self.builtins, **self.variables}

    def _take_pending(self) -> str | None:
        digit, self._pending = self._pending, None
        if digit is not None:
            self._step.digits.append(digit)
        return digit

    def _play(
        self, prompts: tuple[str, ...], *, barge_in: bool
    ) -> Generator[Command, Any, str | None]:
        if not prompts:
            return None
        self._step.prompts.extend(prompts)
        digit = yield Play(prompts, barge_in)
        if not barge_in or not digit:
            return None
        self._step.digits.append(digit)
        return str(digit)

    def _run(self) -> Generator[Command, Any, End]:
        nid: str | None = self.flow.start
        visits = 0
        while nid is not None:
            if visits >= self.max_steps:
                yield Log("max_steps", {"limit": self.max_steps, "node": nid})
                yield Hangup(16)
                return End("max_steps", 16)
            visits += 1
            node = self.flow.nodes[nid]
            self.path.append(nid)
            self._draft = _Draft(node)
            yield StepStarted(nid, node.type)
            verdict = yield from self._visit(node)
            yield self._step.finish(verdict.outcome, verdict.next)
            self._draft = None
            if verdict.hangup_cause is not None:
                return End("hangup", verdict.hangup_cause)
            nid = verdict.next
        yield Hangup(16)
        return End("end", 16)

    def _visit(self, node: Node) -> _Steps:
        match node:
            case PlayNode():
                return (yield from self._play_node(node))
            case MenuNode():
                return (yield from self._menu(node))
            case GatherNode():
                return (yield from self._gather(node))
            case TimeConditionNode():
                return (yield from self._time_condition(node))
            case TransferNode():
                return (yield from self._transfer(node))
            case VoicemailNode():
                return (yield from self._voicemail(node))
            case SetNode():
                return self._set(node)
            case GotoNode():
                return _Exit("goto", node.node)
            case HangupNode():
                yield Hangup(node.cause)
                return _Exit("hangup", None, hangup_cause=node.cause)
            case WebhookNode():
                return (yield from self._webhook(node))
            case PythonNode():
                return (yield from self._python(node))

    # -- node types --------------------------------------------------------------

    def _play_node(self, node: PlayNode) -> _Steps:
        digit = yield from self._play(node.prompts, barge_in=node.barge_in)
        if digit is not None:
            self._pending = digit
            return _Exit("barged_in", node.next)
        return _Exit("played", node.next)

    def _menu(self, node: MenuNode) -> _Steps:
        for attempt in range(1, node.retries + 2):
            choice = self._take_pending()
            if choice is None:
                choice = yield from self._play(node.prompt, barge_in=True)
            if choice is None:
                gathered = yield Gather(
                    max_digits=1, timeout=node.timeout, terminator=None, inter_digit_timeout=None
                )
                if gathered:
                    choice = str(gathered)
                    self._step.digits.append(choice)
            self._step.details["attempts"] = attempt
            if choice:
                self.digits.append(choice)
            if choice is not None and choice in node.options:
                self._step.details["choice"] = choice
                return _Exit("option", node.options[choice])
            error = "invalid" if choice else "timeout"
            self._step.details["error"] = error
            yield from self._play(
                node.invalid_prompt if choice else node.timeout_prompt, barge_in=False
            )
        return _Exit("failure", node.on_failure)

    def _gather(self, node: GatherNode) -> _Steps:
        term = node.terminator
        for attempt in range(1, node.retries + 2):
            self._step.details["attempts"] = attempt
            first = self._take_pending()
            if first is None:
                first = yield from self._play(node.prompt, barge_in=True)
            digits = "" if first is None or first == term else first
            if len(digits) < node.max_digits and first != term:
                # After a barge-in digit the caller is mid-entry: wait inter-digit time.
                timeout = node.timeout
                if digits and node.inter_digit_timeout is not None:
                    timeout = node.inter_digit_timeout
                more = yield Gather(
                    max_digits=node.max_digits - len(digits),
                    timeout=timeout,
                    terminator=term,
                    inter_digit_timeout=node.inter_digit_timeout,
                )
                more = str(more or "")
                if more:
                    self._step.digits.append(more)
                if term is not None and term in more:
                    more = more[: more.index(term)]
                digits += more
            if digits:
                self.digits.append(digits)
            ok = node.min_digits <= len(digits) <= node.max_digits
            if ok and node.pattern is not None:
                ok = node.pattern.fullmatch(digits) is not None
            if ok:
                self.variables[node.variable] = digits
                self._step.details["variable"] = node.variable
                return _Exit("collected", node.next)
            self._step.details["error"] = "invalid" if digits else "timeout"
            yield from self._play(node.invalid_prompt, barge_in=False)
        return _Exit("failure", node.on_failure)

    def _time_condition(self, node: TimeConditionNode) -> _Steps:
        now = yield Now()
        decision = evaluate(node, float(now))
        self._step.details.update(local=decision.local.isoformat(), holiday=decision.holiday)
        if decision.is_open:
            return _Exit("open", node.open)
        return _Exit("closed", node.closed)

    def _transfer(self, node: TransferNode) -> _Steps:
        self._pending = None
        result: TransferResultLike = yield Transfer(node.targets, node.strategy, node.timeout)
        self._step.details.update(status=result.status, cause=result.cause, target=result.target)
        if result.answered:
            return _Exit("answered", node.next)
        if result.status in _BUSY_STATUSES or result.cause in _BUSY_CAUSES:
            return _Exit("busy", node.on_busy or node.on_no_answer or node.next)
        return _Exit("no_answer", node.on_no_answer or node.next)

    def _voicemail(self, node: VoicemailNode) -> _Steps:
        self._pending = None
        yield from self._play(node.greeting, barge_in=False)
        key = f"voicemail/{self.builtins.get('call_id', 'unknown')}.wav"
        self._step.details["key"] = key
        result: RecordResultLike = yield Record(
            key, node.max_seconds, node.beep, node.silence_timeout
        )
        self._step.details.update(key=result.key, seconds=result.seconds, reason=result.reason)
        if result.reason == "hangup":
            return _Exit("recorded", None)  # the caller hung up to end the message: done
        return _Exit("recorded", node.next)

    def _set(self, node: SetNode) -> _Exit:
        for name, template in node.variables.items():
            self.variables[name] = substitute(template, self._scope())
        self._step.details["variables"] = {name: self.variables[name] for name in node.variables}
        return _Exit("set", node.next)

    def _webhook(self, node: WebhookNode) -> _Steps:
        scope = self._scope()
        if node.body is not None:
            payload = substitute_json(json.loads(node.body), scope)
        else:
            payload = {
                **{k: self.builtins.get(k, "") for k in ("call_id", "caller", "callee", "tenant")},
                "flow": self.flow.name,
                "node": node.id,
                "variables": dict(self.variables),
                "digits": list(self.digits),
            }
        body = json.dumps(payload).encode() if node.method == "POST" else None
        reply = yield HttpRequest(node.method, node.url, body, node.timeout)
        error, next_node = self._webhook_reply(node, reply)
        if error is not None:
            self._step.details["error"] = error
            return _Exit("failure", node.on_failure)
        return _Exit("webhook", next_node)

    def _webhook_reply(self, node: WebhookNode, reply: object) -> tuple[str | None, str | None]:
        """Check a webhook reply: (error, None) or (None, next node); applies variables."""
        if isinstance(reply, HttpFailed):
            return reply.error, None
        if not isinstance(reply, HttpReply):
            return f"unexpected reply {reply!r}", None
        self._step.details["status"] = reply.status
        if not 200 <= reply.status < 300:
            return f"HTTP {reply.status}", None
        try:
            data = json.loads(reply.body)
        except (ValueError, UnicodeDecodeError):
            return "reply is not JSON", None
        if not isinstance(data, dict):
            return "reply is not a JSON object", None
        next_node = data.get("next", node.next)
        if next_node is None:
            return "reply has no next node", None
        if next_node != node.next and next_node not in node.allowed_next:
            return f"reply next {next_node!r} is not in allowed_next", None
        variables = data.get("variables", {})
        if not isinstance(variables, dict) or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in variables.values()
        ):
            return "reply variables must be an object of strings and numbers", None
        for name, value in variables.items():
            self.variables[str(name)] = str(value)
        return None, next_node

    def _python(self, node: PythonNode) -> _Steps:
        context = FlowContext(
            flow=self.flow,
            node=node.id,
            variables=self.variables,
            path=tuple(self.path),
            digits=tuple(self.digits),
        )
        reply = yield RunAction(node.action, context)
        if isinstance(reply, ActionFailed):
            self._step.details["error"] = reply.error
            return _Exit("failure", node.on_failure)
        next_node = reply.next if isinstance(reply, ActionReturned) else None
        if next_node is None:
            return _Exit("returned", node.next)
        if next_node not in node.allowed_next:
            self._step.details["error"] = f"action returned {next_node!r}, not in allowed_next"
            return _Exit("failure", node.on_failure)
        return _Exit("returned", next_node)
