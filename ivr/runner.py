"""Run a flow on a call: the asyncio shell around :class:`~ivr.machine.FlowMachine`.

Theory of operation
-------------------
One coroutine, :func:`run_flow`, per call. It owns a sans-IO
:class:`FlowMachine` and loops: take the machine's next command, perform it
(``call.play``, ``call.gather``, ``call.record``, ``call.transfer``,
``call.hangup``, an HTTP request through :mod:`ivr._http`, a registered
python action, reading ``clock``), and feed the result back. All decisions
(which node is next, retries, DST-correct time conditions, webhook reply
checks, the loop guard) are the machine's; this module only does I/O and
timing, and is the only one in ``ivr`` that awaits call operations.

Steps: the machine brackets every node visit with ``StepStarted`` and
``StepFinished``. The runner stamps both with ``clock()`` (seconds since the
epoch), builds a :class:`StepRecord`, logs it with
``call.log_event("ivr", event="step", ...)`` and returns all of them in the
:class:`FlowOutcome`.

Hangup: the engine cancels this coroutine when the caller hangs up. The
``CancelledError`` arrives inside whatever call operation is pending; the
runner closes the open step (outcome ``"cancelled"``), logs it, and lets the
``CancelledError`` propagate. Any other exception from the call is handled the
same way with outcome ``"error"``. Exceptions raised by python actions are not
fatal: they send the flow to the node's ``on_failure``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import _http
from .call import Call
from .errors import CallHangup
from .flow import Flow
from .machine import (
    ActionFailed,
    ActionReturned,
    End,
    FlowMachine,
    Gather,
    Hangup,
    HttpFailed,
    HttpReply,
    HttpRequest,
    Log,
    Now,
    Play,
    Record,
    RunAction,
    StepFinished,
    StepStarted,
    Transfer,
)
from .router import Action

__all__ = ["DEFAULT_MAX_STEPS", "FlowOutcome", "StepRecord", "run_flow"]

#: Node visits allowed per call before the loop guard hangs up.
DEFAULT_MAX_STEPS = 1000


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One node visit, as logged to the call's IVR path."""

    node: str
    type: str
    prompts: tuple[str, ...]
    digits: tuple[str, ...]
    outcome: str
    next: str | None
    started: float
    ended: float
    details: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class FlowOutcome:
    """How a flow ended.

    ``reason``: ``"hangup"`` (a hangup node), ``"end"`` (a node without a next
    node; the call was hung up with cause 16) or ``"max_steps"`` (the loop
    guard hung up with cause 16). ``path`` lists the visited node ids,
    ``digits`` every menu choice and gather entry.
    """

    reason: str
    hangup_cause: int | None
    path: tuple[str, ...]
    digits: tuple[str, ...]
    steps: tuple[StepRecord, ...]
    variables: Mapping[str, str]


async def run_flow(
    call: Call,
    flow: Flow,
    *,
    actions: Mapping[str, Action] | None = None,
    clock: Callable[[], float] = time.time,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> FlowOutcome:
    """Run ``flow`` on ``call`` until it hangs up or ends; see the module docstring.

    ``actions`` are the python actions by name (e.g. ``router.actions``);
    ``clock`` returns seconds since the epoch and drives time conditions and
    step timestamps. Cancellation (the caller hung up) propagates as
    ``asyncio.CancelledError`` after the open step has been logged.
    """
    machine = FlowMachine(
        flow,
        variables=call.variables,
        builtins={
            "call_id": call.call_id,
            "caller": call.caller,
            "callee": call.callee,
            "tenant": call.tenant or flow.tenant,
            "flow": flow.name,
        },
        max_steps=max_steps,
    )
    actions = actions or {}
    steps: list[StepRecord] = []
    started = clock()

    def close_step(done: StepFinished) -> None:
        record = StepRecord(
            node=done.node,
            type=done.type,
            prompts=done.prompts,
            digits=done.digits,
            outcome=done.outcome,
            next=done.next,
            started=started,
            ended=clock(),
            details=done.details,
        )
        steps.append(record)
        call.log_event(
            "ivr",
            event="step",
            flow=flow.name,
            node=record.node,
            type=record.type,
            prompts=list(record.prompts),
            digits=list(record.digits),
            outcome=record.outcome,
            next=record.next,
            started=record.started,
            ended=record.ended,
            details=dict(record.details),
        )

    result: object = None
    try:
        while True:
            command = machine.send(result)
            result = None
            match command:
                case End():
                    end = command
                    break
                case StepStarted():
                    started = clock()
                    record = flow.recording.get(command.node)
                    if record is not None:
                        _set_recording(call, record, flow.name)
                case StepFinished():
                    close_step(command)
                case Log():
                    call.log_event("ivr", event=command.event, flow=flow.name, **command.fields)
                case Now():
                    result = clock()
                case Play():
                    result = await call.play(list(command.prompts), barge_in=command.barge_in)
                case Gather():
                    result = await call.gather(
                        max_digits=command.max_digits,
                        timeout=command.timeout,
                        terminator=command.terminator,
                        inter_digit_timeout=command.inter_digit_timeout,
                    )
                case Record():
                    result = await call.record(
                        command.key,
                        max_seconds=command.max_seconds,
                        beep=command.beep,
                        silence_timeout=command.silence_timeout,
                    )
                case Transfer():
                    result = await call.transfer(
                        list(command.targets), strategy=command.strategy, timeout=command.timeout
                    )
                case Hangup():
                    await call.hangup(command.cause)
                case HttpRequest():
                    result = await _webhook(command)
                case RunAction():
                    result = await _run_action(call, actions, command)
    except CallHangup:
        # The caller hung up during a prompt or a gather: the flow ends there.
        aborted = machine.abort("hangup")
        if aborted is not None:
            close_step(aborted)
        call.log_event("ivr", event="end", flow=flow.name, reason="hangup", hangup_cause=None)
        return FlowOutcome(
            reason="hangup",
            hangup_cause=None,
            path=tuple(machine.path),
            digits=tuple(machine.digits),
            steps=tuple(steps),
            variables=dict(call.variables),
        )
    except BaseException as exc:
        # Close the open step so the call log shows where the flow stopped.
        outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
        aborted = machine.abort(outcome)
        if aborted is not None:
            close_step(aborted)
        raise
    call.log_event(
        "ivr", event="end", flow=flow.name, reason=end.reason, hangup_cause=end.hangup_cause
    )
    return FlowOutcome(
        reason=end.reason,
        hangup_cause=end.hangup_cause,
        path=tuple(machine.path),
        digits=tuple(machine.digits),
        steps=tuple(steps),
        variables=dict(call.variables),
    )


def _set_recording(call: Call, on: bool, flow: str) -> None:
    """A node's ``record`` option: start (with the tenant's channels) or stop."""
    if not on:
        call.stop_recording()
        return
    try:
        call.start_recording()
    except Exception as exc:  # no media, a full spool: the call goes on unrecorded
        error = f"{type(exc).__name__}: {exc}"
        call.log_event("ivr", event="recording_failed", flow=flow, error=error)


async def _webhook(command: HttpRequest) -> HttpReply | HttpFailed:
    try:
        response = await _http.request(
            command.method, command.url, body=command.body, timeout=command.timeout
        )
    except _http.HttpError as exc:
        return HttpFailed(str(exc))
    return HttpReply(response.status, response.body)


async def _run_action(
    call: Call, actions: Mapping[str, Action], command: RunAction
) -> ActionReturned | ActionFailed:
    action = actions.get(command.name)
    if action is None:
        return ActionFailed(f"unknown action {command.name!r}")
    try:
        next_node = await action(call, command.context)
    except Exception as exc:  # a tenant's action failing must not kill the call
        return ActionFailed(f"{type(exc).__name__}: {exc}")
    if next_node is not None and not isinstance(next_node, str):
        return ActionFailed(f"action returned {next_node!r}, expected a node id or None")
    return ActionReturned(next_node)
