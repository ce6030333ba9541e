"""The sans-IO core driven by hand: commands out, results in, no event loop."""

from __future__ import annotations

from ivr import FlowMachine, load_flows
from ivr.machine import End, Gather, Hangup, Play, StepFinished, StepStarted


def test_drive_menu_by_hand() -> None:
    flow = load_flows(
        "acme",
        {
            "main": {
                "start": "menu",
                "nodes": {
                    "menu": {"type": "menu", "prompt": "m", "options": {"1": "bye"}, "retries": 0},
                    "bye": {"type": "hangup", "cause": 16},
                },
            }
        },
        prompts={"m"},
    )["main"]
    variables: dict[str, str] = {}
    machine = FlowMachine(flow, variables=variables, builtins={"call_id": "x"})
    assert machine.send() == StepStarted("menu", "menu")
    assert machine.send() == Play(("m",), True)
    assert machine.send(None) == Gather(1, 5.0, None, None)
    finished = machine.send("1")
    assert isinstance(finished, StepFinished)
    assert (finished.outcome, finished.next, finished.digits) == ("option", "bye", ("1",))
    assert machine.send() == StepStarted("bye", "hangup")
    assert machine.send() == Hangup(16)
    assert isinstance(machine.send(), StepFinished)
    assert machine.send() == End("hangup", 16)
    assert machine.path == ["menu", "bye"] and machine.digits == ["1"]


def test_abort_closes_open_step() -> None:
    flow = load_flows(
        "acme",
        {"main": {"start": "p", "nodes": {"p": {"type": "play", "prompts": "tone:beep"}}}},
        prompts=(),
    )["main"]
    machine = FlowMachine(flow, variables={}, builtins={})
    machine.send()
    machine.send()  # Play issued
    aborted = machine.abort()
    assert aborted is not None
    assert (aborted.node, aborted.outcome, aborted.prompts) == ("p", "cancelled", ("tone:beep",))
    assert machine.abort() is None
