from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config_cache import ConfigError, load_demo_tenant, load_tenant_file, validate_tenant


def test_valid_tenant_fields(acme: Any) -> None:
    t = validate_tenant(acme())
    assert (t.id, t.rev, t.timezone, t.realm) == ("acme", 1, "Europe/Paris", "acme")
    assert str(t.numbers["+33100000002"].route) == "group:sales"
    assert t.ring_groups["sales"].members == ("100", "101")
    assert t.users["100"].password == "pw100"
    assert "main" in t.compiled_flows  # ivr.load_flows ran
    route = t.outbound_route("0044123")
    assert route is not None and route.trunk_group == "intl"
    assert route.translate("0044123") == "+44123"
    assert t.to_doc()["id"] == "acme"


def test_demo_tenant() -> None:
    demo = load_demo_tenant()
    assert demo.id == "demo" and demo.timezone == "UTC"
    assert set(demo.users) == {"100", "101", "102"}
    assert demo.ring_groups["sales"].members == ("100", "101")
    assert demo.ring_groups["support"].members == ("102",)
    assert str(demo.default_route) == "ivr:main"
    nodes = demo.flows["main"]["nodes"]
    assert nodes["hours"]["closed"] and nodes["menu"]["options"]["0"] == "operator"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["users"]["100"].update(password=100),
            "t.json: tenant 'acme': users.100.password: must be a non-empty string, not an integer",
        ),
        (
            lambda d: d["users"]["100"].pop("password"),
            "t.json: tenant 'acme': users.100.password: missing",
        ),
        (
            lambda d: d.update(timezone="Mars/Olympus"),
            "t.json: tenant 'acme': timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            lambda d: d.update(colour="red"),
            "t.json: tenant 'acme': colour: unknown field",
        ),
        (
            lambda d: d.update(rev="3"),
            "t.json: tenant 'acme': rev: must be an integer, not a string",
        ),
        (
            lambda d: d["ring_groups"]["sales"]["members"].append("999"),
            "t.json: tenant 'acme': ring_groups.sales.members.2: unknown user '999'",
        ),
        (
            lambda d: d["numbers"].update({"+33100000003": {"route": "ivr:nope"}}),
            "t.json: tenant 'acme': numbers.+33100000003.route: unknown IVR flow 'nope'",
        ),
        (
            lambda d: d["numbers"].update({"+33100000004": "fax:1"}),
            "t.json: tenant 'acme': numbers.+33100000004: invalid route 'fax:1' "
            "(expected one of group, ivr, user, voicemail:<name>)",
        ),
        (
            lambda d: d["users"].update({100: {"password": "x"}}),
            "t.json: tenant 'acme': users.100: key must be a string (quote it in YAML), not an integer",
        ),
        (
            lambda d: d["outbound_routes"][0].update(strip=True),
            "t.json: tenant 'acme': outbound_routes.0.strip: must be an integer, not a boolean",
        ),
        (
            lambda d: d["flows"]["main"]["nodes"]["sales"].update(targets=["bogus"]),
            "t.json: tenant 'acme': flows.main.nodes.sales.targets[0]: bad target 'bogus' "
            "(expected user:<id>, group:<name>, ext:<number> or external:<number>)",
        ),
        (
            lambda d: d["flows"]["main"]["nodes"]["hello"].update(prompts=["nosuch"]),
            "t.json: tenant 'acme': flows.main.nodes.hello.prompts[0]: unknown prompt 'nosuch'",
        ),
    ],
)
def test_errors_name_file_tenant_field(acme: Any, change: Any, message: str) -> None:
    doc = acme()
    change(doc)
    with pytest.raises(ConfigError) as info:
        validate_tenant(doc, file="t.json")
    assert str(info.value) == message
    assert info.value.file == "t.json" and info.value.tenant == "acme"


def test_tenant_prompts_allowed_in_flows(acme: Any) -> None:
    doc = acme(prompts={"promo": {"file": "acme/promo.wav", "text": "Sale!"}})
    doc["flows"]["main"]["nodes"]["hello"]["prompts"] = ["promo"]
    t = validate_tenant(doc)
    assert t.prompts["promo"].file == "acme/promo.wav"


def test_mongo_id_and_missing_id(acme: Any) -> None:
    doc = acme()
    del doc["id"]
    doc["_id"] = "acme"
    assert validate_tenant(doc).id == "acme"
    del doc["_id"]
    with pytest.raises(ConfigError, match=r"^f: id: missing$"):
        validate_tenant(doc, file="f")


def test_yaml_file_list_and_times(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(
        """
- id: a
  users: {"100": {password: x}}
  flows:
    main:
      start: hours
      nodes:
        hours: {type: time_condition, schedule: {mon: [[09:00, 17:00]]}, open: bye, closed: bye}
        bye: {type: hangup}
- id: b
"""
    )
    tenants = load_tenant_file(path)
    assert [t.id for t in tenants] == ["a", "b"]
    assert tenants[0].flows["main"]["nodes"]["hours"]["schedule"]["mon"] == [["09:00", "17:00"]]


def test_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "a",}')
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 1 column 12"):
        load_tenant_file(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("- id: a\n- id: a\n")
    with pytest.raises(ConfigError) as info:
        load_tenant_file(dup)
    assert str(info.value) == f"{dup}: tenant 'a': id: tenant defined twice"


def test_recording_options(acme: Any) -> None:
    doc = acme(recording={"enabled": True, "channels": "mono", "max_seconds": 600})
    doc["users"]["100"]["record"] = True
    doc["prompts"] = {"promo": {"file": "promo.wav", "version": 3}}
    tenant = validate_tenant(doc)
    assert (tenant.recording.enabled, tenant.recording.channels) == (True, "mono")
    assert tenant.recording.max_seconds == 600.0
    assert tenant.users["100"].record and not tenant.users["101"].record
    assert tenant.prompts["promo"].version == "3"
    default = validate_tenant(acme())
    assert not default.recording.enabled and default.recording.channels == "stereo"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d.update(recording={"enabled": "yes"}),
            "recording.enabled: must be true or false, not a string",
        ),
        (
            lambda d: d.update(recording={"channels": "quad"}),
            "recording.channels: must be stereo or mono, not 'quad'",
        ),
        (
            lambda d: d.update(recording={"max_seconds": 0}),
            "recording.max_seconds: must be a number in (0, 86400], not 0",
        ),
        (lambda d: d.update(recording={"format": "mp3"}), "recording.format: unknown field"),
        (lambda d: d.update(recording=True), "recording: must be a mapping, not a boolean"),
        (
            lambda d: d["users"]["100"].update(record=1),
            "users.100.record: must be true or false, not an integer",
        ),
        (
            lambda d: d.update(prompts={"promo": {"file": "p.wav", "version": 1.5}}),
            "prompts.promo.version: must be a non-empty string or an integer, not a number",
        ),
    ],
)
def test_recording_errors_name_the_field(acme: Any, change: Any, message: str) -> None:
    doc = acme()
    change(doc)
    with pytest.raises(ConfigError) as info:
        validate_tenant(doc, file="t.json")
    assert str(info.value) == "t.json: tenant 'acme': " + message
