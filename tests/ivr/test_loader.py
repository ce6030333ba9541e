"""Load-time validation: one test per error kind, with the exact message pinned."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from ivr import (
    Flow,
    FlowValidationError,
    GatherNode,
    MenuNode,
    TimeConditionNode,
    TransferNode,
    load_flow_file,
    load_flows,
)

PROMPTS = frozenset(
    {"welcome", "menu_main", "invalid", "timeout", "goodbye", "vm_greeting", "enter_account"}
)

MAIN: dict[str, Any] = {
    "start": "hours",
    "nodes": {
        "hours": {
            "type": "time_condition",
            "timezone": "America/New_York",
            "schedule": {
                "mon": [["09:00", "12:00"], ["13:00", "17:00"]],
                "sat": [["10:00", "24:00"]],
            },
            "holidays": ["2026-12-25"],
            "open": "welcome",
            "closed": "voicemail",
        },
        "welcome": {"type": "play", "prompts": ["welcome"], "next": "menu"},
        "menu": {
            "type": "menu",
            "prompt": "menu_main",
            "options": {"1": "sales", "2": "account", "3": "lookup", "0": "operator"},
            "invalid_prompt": "invalid",
            "timeout_prompt": "timeout",
            "timeout": 5,
            "retries": 2,
            "on_failure": "bye",
        },
        "sales": {
            "type": "transfer",
            "targets": ["group:sales", "external:+15551234"],
            "strategy": "sequential",
            "timeout": 15,
            "on_no_answer": "voicemail",
            "on_busy": "voicemail",
            "next": "bye",
        },
        "account": {
            "type": "gather",
            "prompt": "enter_account",
            "variable": "account",
            "min_digits": 4,
            "max_digits": 8,
            "pattern": "[0-9]+",
            "next": "route",
            "on_failure": "bye",
        },
        "route": {
            "type": "webhook",
            "url": "http://127.0.0.1:8080/route",
            "allowed_next": ["operator", "bye"],
            "body": {"account": "${account}"},
            "on_failure": "operator",
        },
        "lookup": {"type": "python", "action": "lookup", "next": "mark"},
        "mark": {"type": "set", "variables": {"seen": "yes ${caller}", "n": 1}, "next": "again"},
        "again": {"type": "goto", "node": "menu"},
        "operator": {"type": "transfer", "targets": ["user:100", "ext:101"]},
        "voicemail": {"type": "voicemail", "greeting": ["vm_greeting"], "next": "bye"},
        "bye": {"type": "play", "prompts": ["goodbye", "tone:busy"], "next": "end"},
        "end": {"type": "hangup", "cause": 16, "description": "normal clearing"},
    },
}


def load(doc: dict[str, Any], **kw: Any) -> dict[str, Flow]:
    return load_flows("acme", {"main": doc}, prompts=PROMPTS, **kw)


def error(mutate: Callable[[dict[str, Any]], object], **kw: Any) -> FlowValidationError:
    doc = copy.deepcopy(MAIN)
    mutate(doc)
    with pytest.raises(FlowValidationError) as info:
        load(doc, **kw)
    return info.value


def test_valid_flow_builds_frozen_nodes() -> None:
    flow = load(MAIN)["main"]
    assert flow.tenant == "acme" and flow.name == "main" and flow.start == "hours"
    assert list(flow.nodes) == list(MAIN["nodes"])
    menu = flow.nodes["menu"]
    assert isinstance(menu, MenuNode)
    assert menu.prompt == ("menu_main",) and menu.invalid_prompt == ("invalid",)
    assert dict(menu.options) == {"1": "sales", "2": "account", "3": "lookup", "0": "operator"}
    hours = flow.nodes["hours"]
    assert isinstance(hours, TimeConditionNode)
    assert dict(hours.schedule) == {0: ((540, 720), (780, 1020)), 5: ((600, 1440),)}
    assert hours.holidays == frozenset({date(2026, 12, 25)})
    gather = flow.nodes["account"]
    assert isinstance(gather, GatherNode) and gather.pattern == re.compile("[0-9]+")
    assert gather.terminator == "#" and gather.inter_digit_timeout == 3.0
    assert isinstance(flow.nodes["sales"], TransferNode)
    assert flow.nodes["mark"].variables == {"seen": "yes ${caller}", "n": "1"}  # type: ignore[union-attr]
    with pytest.raises(dataclasses.FrozenInstanceError):
        menu.timeout = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        menu.options["9"] = "bye"  # type: ignore[index]
    with pytest.raises(TypeError):
        flow.nodes["x"] = menu  # type: ignore[index]


def test_time_condition_defaults_to_tenant_zone_and_flow_zone_overrides() -> None:
    doc = copy.deepcopy(MAIN)
    del doc["nodes"]["hours"]["timezone"]
    hours = load(doc, timezone="Europe/Paris")["main"].nodes["hours"]
    assert isinstance(hours, TimeConditionNode) and hours.timezone == "Europe/Paris"
    doc["timezone"] = "Asia/Tokyo"
    hours = load(doc, timezone="Europe/Paris")["main"].nodes["hours"]
    assert isinstance(hours, TimeConditionNode) and hours.timezone == "Asia/Tokyo"
    assert isinstance(load(doc)["main"].nodes["hours"], TimeConditionNode)


def test_error_attributes_and_type() -> None:
    exc = error(lambda d: d["nodes"]["menu"]["options"].update({"7": "salez"}))
    assert isinstance(exc, ValueError)
    assert (exc.tenant, exc.flow, exc.node, exc.field) == ("acme", "main", "menu", "options.7")
    assert (
        str(exc) == "tenant 'acme' flow 'main' node 'menu' field 'options.7': unknown node 'salez'"
    )


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target = doc
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return mutate


_DELETE = object()
P = "tenant 'acme' flow 'main'"

CASES = [
    # unknown node type
    ("nodes/welcome/type", "speak", f"{P} node 'welcome' field 'type': unknown node type 'speak'"),
    # missing required fields
    ("nodes/menu/options", _DELETE, f"{P} node 'menu' field 'options': required field missing"),
    ("nodes/welcome/type", _DELETE, f"{P} node 'welcome' field 'type': required field missing"),
    ("start", _DELETE, f"{P} field 'start': required field missing"),
    # unknown fields
    ("nodes/menu/colour", "red", f"{P} node 'menu' field 'colour': unknown field"),
    ("version", 2, f"{P} field 'version': unknown field"),
    # wrong types
    ("nodes/menu/timeout", "5", f"{P} node 'menu' field 'timeout': expected number, got string"),
    ("nodes/menu/timeout", -1, f"{P} node 'menu' field 'timeout': must be > 0, got -1"),
    (
        "nodes/welcome/barge_in",
        "yes",
        f"{P} node 'welcome' field 'barge_in': expected boolean, got string",
    ),
    ("nodes/menu/retries", 1.5, f"{P} node 'menu' field 'retries': expected integer, got number"),
    (
        "nodes/menu/options",
        ["sales"],
        f"{P} node 'menu' field 'options': expected object, got array",
    ),
    ("nodes/welcome", "play", f"{P} node 'welcome': expected object, got string"),
    (
        "nodes/welcome/prompts",
        3,
        f"{P} node 'welcome' field 'prompts': expected string or array, got number",
    ),
    ("nodes/end/cause", 200, f"{P} node 'end' field 'cause': must be between 1 and 127, got 200"),
    (
        "nodes/mark/variables",
        {"1x": "a"},
        f"{P} node 'mark' field 'variables.1x': bad variable name (expected letters, digits and _)",
    ),
    (
        "nodes/sales/strategy",
        "random",
        f"{P} node 'sales' field 'strategy': expected 'parallel' or 'sequential', got 'random'",
    ),
    (
        "nodes/route/method",
        "PUT",
        f"{P} node 'route' field 'method': expected 'GET' or 'POST', got 'PUT'",
    ),
    (
        "nodes/route/url",
        "https://hooks.example/x",
        f"{P} node 'route' field 'url': unsupported URL 'https://hooks.example/x' (only http:// is supported)",
    ),
    (
        "nodes/account/min_digits",
        9,
        f"{P} node 'account' field 'min_digits': 9 is greater than max_digits 8",
    ),
    # dangling node references
    ("nodes/menu/options/7", "salez", f"{P} node 'menu' field 'options.7': unknown node 'salez'"),
    ("nodes/again/node", "nowhere", f"{P} node 'again' field 'node': unknown node 'nowhere'"),
    (
        "nodes/route/allowed_next",
        ["operator", "sales2"],
        f"{P} node 'route' field 'allowed_next[1]': unknown node 'sales2'",
    ),
    ("start", "begin", f"{P} field 'start': unknown node 'begin'"),
    # missing prompts
    (
        "nodes/welcome/prompts",
        ["welcome", "welcom"],
        f"{P} node 'welcome' field 'prompts[1]': unknown prompt 'welcom'",
    ),
    (
        "nodes/menu/invalid_prompt",
        "oops",
        f"{P} node 'menu' field 'invalid_prompt': unknown prompt 'oops'",
    ),
    (
        "nodes/bye/prompts",
        ["tone:dial"],
        f"{P} node 'bye' field 'prompts[0]': unknown prompt 'tone:dial'",
    ),
    # time zones, times, ranges, weekdays, dates
    (
        "nodes/hours/timezone",
        "Mars/Olympus",
        f"{P} node 'hours' field 'timezone': unknown time zone 'Mars/Olympus'",
    ),
    (
        "nodes/hours/schedule/mon",
        [["09:00", "25:00"]],
        f"{P} node 'hours' field 'schedule.mon[0][1]': bad time '25:00' (expected HH:MM)",
    ),
    (
        "nodes/hours/schedule/mon",
        [["9:00", "17:00"]],
        f"{P} node 'hours' field 'schedule.mon[0][0]': bad time '9:00' (expected HH:MM)",
    ),
    (
        "nodes/hours/schedule/mon",
        [["17:00", "09:00"]],
        f"{P} node 'hours' field 'schedule.mon[0]': bad time range '17:00'-'09:00': start must be before end",
    ),
    (
        "nodes/hours/schedule/mon",
        [["09:00"]],
        f"{P} node 'hours' field 'schedule.mon[0]': expected [start, end] pair, got ['09:00']",
    ),
    (
        "nodes/hours/schedule/funday",
        [],
        f"{P} node 'hours' field 'schedule.funday': unknown weekday (expected mon, tue, wed, thu, fri, sat, sun)",
    ),
    (
        "nodes/hours/holidays",
        ["2026-12-25", "2026-13-01"],
        f"{P} node 'hours' field 'holidays[1]': bad date '2026-13-01' (expected YYYY-MM-DD)",
    ),
    # digits
    (
        "nodes/menu/options",
        {"12": "sales"},
        f"{P} node 'menu' field 'options.12': bad digit '12' (expected one of 0-9, *, #, A-D)",
    ),
    (
        "nodes/account/terminator",
        "x",
        f"{P} node 'account' field 'terminator': bad digit 'x' (expected one of 0-9, *, #, A-D)",
    ),
    # regex
    (
        "nodes/account/pattern",
        "([0-9]",
        f"{P} node 'account' field 'pattern': invalid regex '([0-9]': missing ), unterminated subpattern at position 0",
    ),
    # transfer targets
    (
        "nodes/sales/targets",
        ["sales"],
        f"{P} node 'sales' field 'targets[0]': bad target 'sales' (expected user:<id>, group:<name>, ext:<number> or external:<number>)",
    ),
    ("nodes/sales/targets", [], f"{P} node 'sales' field 'targets': expected at least one target"),
    # unreachable nodes
    ("nodes/orphan", {"type": "hangup"}, f"{P} node 'orphan': unreachable from start 'hours'"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"), CASES, ids=[c[2].split(": ", 1)[1] for c in CASES]
)
def test_error_messages(path: str, value: Any, message: str) -> None:
    assert str(error(_set(path, value))) == message


def test_unknown_action_checked_when_actions_given() -> None:
    assert load(MAIN, actions={"lookup"})
    exc = error(lambda d: None, actions={"other"})
    assert str(exc) == f"{P} node 'lookup' field 'action': unknown action 'lookup'"


def test_bad_flow_level_values() -> None:
    with pytest.raises(FlowValidationError) as info:
        load_flows("acme", {"main": MAIN}, prompts=PROMPTS, timezone="Nowhere/City")
    assert str(info.value) == "tenant 'acme' field 'timezone': unknown time zone 'Nowhere/City'"
    with pytest.raises(FlowValidationError) as info:
        load_flows("acme", {"main": []}, prompts=PROMPTS)
    assert str(info.value) == "tenant 'acme' flow 'main': expected object, got array"
    with pytest.raises(FlowValidationError) as info:
        load_flows("acme", {"main": {"start": "a", "nodes": {}}}, prompts=PROMPTS)
    assert str(info.value) == "tenant 'acme' flow 'main' field 'nodes': must not be empty"


YAML_FLOW = """
start: hours
nodes:
  hours:
    type: time_condition
    timezone: Europe/London
    schedule:
      mon: [[09:00, 17:00]]
    holidays: [2026-12-25]
    open: menu
    closed: bye
  menu:
    type: menu
    prompt: menu_main
    options:
      1: bye
      "#": bye
    timeout: 2.5
  bye:
    type: hangup
"""


def test_load_yaml_file_keeps_times_and_dates_as_written(tmp_path: Path) -> None:
    path = tmp_path / "main.yaml"
    path.write_text(YAML_FLOW)
    flow = load_flow_file(path, tenant="acme", prompts=PROMPTS)
    assert flow.name == "main"
    hours = flow.nodes["hours"]
    assert isinstance(hours, TimeConditionNode)
    assert dict(hours.schedule) == {0: ((540, 1020),)}
    assert hours.holidays == frozenset({date(2026, 12, 25)})
    menu = flow.nodes["menu"]
    assert isinstance(menu, MenuNode)
    assert dict(menu.options) == {"1": "bye", "#": "bye"} and menu.timeout == 2.5


def test_load_json_file_and_errors_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "main.json"
    good.write_text(json.dumps(MAIN))
    assert load_flow_file(good, tenant="acme", prompts=PROMPTS, name="day").name == "day"

    bad = copy.deepcopy(MAIN)
    bad["nodes"]["menu"]["options"]["7"] = "salez"
    good.write_text(json.dumps(bad))
    with pytest.raises(FlowValidationError) as info:
        load_flow_file(good, tenant="acme", prompts=PROMPTS)
    assert str(info.value) == (
        f"file '{good}' tenant 'acme' flow 'main' node 'menu' field 'options.7': unknown node 'salez'"
    )
    assert info.value.file == str(good)

    broken = tmp_path / "broken.yaml"
    broken.write_text("start: [a\n")
    with pytest.raises(FlowValidationError) as info:
        load_flow_file(broken, tenant="acme", prompts=PROMPTS)
    assert str(info.value).startswith(
        f"file '{broken}' tenant 'acme' flow 'broken': invalid YAML: "
    )

    broken_json = tmp_path / "broken.json"
    broken_json.write_text("{")
    with pytest.raises(FlowValidationError) as info:
        load_flow_file(broken_json, tenant="acme", prompts=PROMPTS)
    assert str(info.value) == (
        f"file '{broken_json}' tenant 'acme' flow 'broken': invalid JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )

    txt = tmp_path / "main.txt"
    txt.write_text("{}")
    with pytest.raises(FlowValidationError) as info:
        load_flow_file(txt, tenant="acme", prompts=PROMPTS)
    assert str(info.value) == (
        f"file '{txt}' tenant 'acme' flow 'main': unsupported file type '.txt' "
        "(expected .json, .yaml or .yml)"
    )

    missing = tmp_path / "missing.yml"
    with pytest.raises(FlowValidationError) as info:
        load_flow_file(missing, tenant="acme", prompts=PROMPTS)
    assert str(info.value).startswith(
        f"file '{missing}' tenant 'acme' flow 'missing': cannot read: "
    )


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("*", "*")])
def test_gather_terminator_can_be_disabled(value: str | None, expected: str | None) -> None:
    doc = copy.deepcopy(MAIN)
    doc["nodes"]["account"]["terminator"] = value
    gather = load(doc)["main"].nodes["account"]
    assert isinstance(gather, GatherNode) and gather.terminator == expected


def test_record_option_on_any_node() -> None:
    doc = copy.deepcopy(MAIN)
    doc["nodes"]["menu"]["record"] = True
    doc["nodes"]["bye"]["record"] = False
    flow = load(doc)["main"]
    assert dict(flow.recording) == {"menu": True, "bye": False}
    assert dict(load(copy.deepcopy(MAIN))["main"].recording) == {}
    assert str(error(_set("nodes/menu/record", "yes"))) == (
        f"{P} node 'menu' field 'record': expected boolean, got string"
    )
