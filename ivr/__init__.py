"""IVR flows as data (tenant config, validated at load time) and as Python coroutines.

* :func:`load_flows` / :func:`load_flow_file` validate flow documents into
  immutable :class:`Flow` objects, raising :class:`FlowValidationError`.
* :func:`run_flow` runs a flow on a call and returns a :class:`FlowOutcome`.
* :class:`Router` routes dialled numbers to ``async def handler(call)`` and
  registers the python actions that ``python`` nodes call.
"""

from __future__ import annotations

from .call import Call
from .errors import CallHangup, FlowValidationError
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
from .loader import BUILTIN_PROMPTS, load_flow, load_flow_file, load_flows
from .machine import FlowContext, FlowMachine
from .router import Action, Handler, Router
from .runner import DEFAULT_MAX_STEPS, FlowOutcome, StepRecord, run_flow

__all__ = [
    "CallHangup",
    "BUILTIN_PROMPTS",
    "DEFAULT_MAX_STEPS",
    "Action",
    "Call",
    "Flow",
    "FlowContext",
    "FlowMachine",
    "FlowOutcome",
    "FlowValidationError",
    "GatherNode",
    "GotoNode",
    "Handler",
    "HangupNode",
    "MenuNode",
    "Node",
    "PlayNode",
    "PythonNode",
    "Router",
    "SetNode",
    "StepRecord",
    "TimeConditionNode",
    "TransferNode",
    "VoicemailNode",
    "WebhookNode",
    "load_flow",
    "load_flow_file",
    "load_flows",
    "run_flow",
]
