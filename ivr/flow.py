"""The immutable flow model: one frozen dataclass per node type.

Flows are built by :func:`ivr.load_flows` (which validates everything) and
never change afterwards; the runner only reads them. Sequences are tuples and
mappings are read-only proxies so a loaded flow can be shared by every call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import ClassVar

__all__ = [
    "Flow",
    "GatherNode",
    "GotoNode",
    "HangupNode",
    "MenuNode",
    "Node",
    "PlayNode",
    "PythonNode",
    "SetNode",
    "TimeConditionNode",
    "TransferNode",
    "VoicemailNode",
    "WebhookNode",
]


@dataclass(frozen=True, slots=True)
class PlayNode:
    """Play ``prompts`` in order, then go to ``next``.

    With ``barge_in`` a digit pressed during playback stops it; the digit is
    kept as type-ahead for the next ``menu`` or ``gather`` node.
    """

    type: ClassVar[str] = "play"
    id: str
    prompts: tuple[str, ...]
    barge_in: bool = True
    next: str | None = None


@dataclass(frozen=True, slots=True)
class MenuNode:
    """Play ``prompt`` and wait ``timeout`` seconds for one digit from ``options``.

    A wrong digit plays ``invalid_prompt``, no digit plays ``timeout_prompt``;
    the menu is then repeated up to ``retries`` more times before ``on_failure``
    (``None``: the flow ends).
    """

    type: ClassVar[str] = "menu"
    id: str
    prompt: tuple[str, ...]
    options: Mapping[str, str]
    invalid_prompt: tuple[str, ...] = ()
    timeout_prompt: tuple[str, ...] = ()
    timeout: float = 5.0
    retries: int = 2
    on_failure: str | None = None


@dataclass(frozen=True, slots=True)
class GatherNode:
    """Collect ``min_digits``..``max_digits`` digits into variable ``variable``.

    ``timeout`` bounds the wait for the first digit, ``inter_digit_timeout``
    the wait between digits; ``terminator`` ends input early (``null`` or ``""``
    in the document: no terminator). When ``pattern``
    is set the digits must match it entirely. A failed attempt plays
    ``invalid_prompt`` and is retried ``retries`` times, then ``on_failure``.
    """

    type: ClassVar[str] = "gather"
    id: str
    variable: str
    max_digits: int
    prompt: tuple[str, ...] = ()
    min_digits: int = 1
    terminator: str | None = "#"
    timeout: float = 5.0
    inter_digit_timeout: float | None = 3.0
    pattern: re.Pattern[str] | None = None
    retries: int = 0
    invalid_prompt: tuple[str, ...] = ()
    next: str | None = None
    on_failure: str | None = None


@dataclass(frozen=True, slots=True)
class TimeConditionNode:
    """Branch on the local time in ``timezone`` (an IANA zone name).

    ``schedule`` maps a weekday (0 = Monday) to ``(start, end)`` ranges in
    minutes after local midnight, end exclusive (``24:00`` = 1440). A date in
    ``holidays`` is closed all day.
    """

    type: ClassVar[str] = "time_condition"
    id: str
    timezone: str
    schedule: Mapping[int, tuple[tuple[int, int], ...]]
    open: str
    closed: str
    holidays: frozenset[date] = frozenset()


@dataclass(frozen=True, slots=True)
class TransferNode:
    """Transfer the call to ``targets`` (``user:``, ``group:``, ``ext:``, ``external:``).

    Answered: ``next`` once the transfer ends. Busy: ``on_busy`` (falling back to
    ``on_no_answer``, then ``next``). Otherwise ``on_no_answer`` (then ``next``).
    """

    type: ClassVar[str] = "transfer"
    id: str
    targets: tuple[str, ...]
    strategy: str = "parallel"
    timeout: float = 20.0
    on_no_answer: str | None = None
    on_busy: str | None = None
    next: str | None = None


@dataclass(frozen=True, slots=True)
class VoicemailNode:
    """Play ``greeting``, then record to ``voicemail/<call_id>.wav``."""

    type: ClassVar[str] = "voicemail"
    id: str
    greeting: tuple[str, ...] = ()
    beep: bool = True
    max_seconds: float = 120.0
    silence_timeout: float | None = 5.0
    next: str | None = None


@dataclass(frozen=True, slots=True)
class SetNode:
    """Assign ``variables``; values may use ``${name}`` substitution."""

    type: ClassVar[str] = "set"
    id: str
    variables: Mapping[str, str]
    next: str | None = None


@dataclass(frozen=True, slots=True)
class GotoNode:
    """Continue at ``node``."""

    type: ClassVar[str] = "goto"
    id: str
    node: str


@dataclass(frozen=True, slots=True)
class HangupNode:
    """Hang up with Q.850 ``cause`` (16: normal call clearing)."""

    type: ClassVar[str] = "hangup"
    id: str
    cause: int = 16


@dataclass(frozen=True, slots=True)
class WebhookNode:
    """Ask an HTTP service which node comes next.

    The request body is ``body`` (a JSON object whose strings use ``${name}``
    substitution; stored as JSON text to stay immutable) or, when absent, a
    default object describing the call. The reply must be a JSON object
    ``{"next": <one of allowed_next>, "variables": {...}}``; without ``"next"``
    the node's ``next`` is used (the reply may also name ``next`` explicitly). Timeouts, HTTP errors and bad replies go to
    ``on_failure``.
    """

    type: ClassVar[str] = "webhook"
    id: str
    url: str
    allowed_next: tuple[str, ...]
    method: str = "POST"
    timeout: float = 5.0
    body: str | None = None
    next: str | None = None
    on_failure: str | None = None


@dataclass(frozen=True, slots=True)
class PythonNode:
    """Run the registered Python action ``action``.

    The action returns the next node id, which must be one of ``allowed_next``
    (declared so that load-time validation sees every edge), or ``None`` for
    ``next``; an exception or any other node id goes to ``on_failure``.
    """

    type: ClassVar[str] = "python"
    id: str
    action: str
    allowed_next: tuple[str, ...] = ()
    next: str | None = None
    on_failure: str | None = None


Node = (
    PlayNode
    | MenuNode
    | GatherNode
    | TimeConditionNode
    | TransferNode
    | VoicemailNode
    | SetNode
    | GotoNode
    | HangupNode
    | WebhookNode
    | PythonNode
)


@dataclass(frozen=True, slots=True)
class Flow:
    """A validated flow: ``nodes`` by id, entered at ``start``."""

    tenant: str
    name: str
    start: str
    nodes: Mapping[str, Node]
    recording: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))
    """Nodes with a ``record`` option: entering one starts (``True``) or stops
    (``False``) recording the call."""
