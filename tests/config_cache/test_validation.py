"""config_cache.validation: the one YAML loader and the JSON Schema layer under the config loaders.

Each bad document must name the exact field, in the caller's error type and words.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from benchmarks.config_validation import large_tenant
from callengine.config import load_config
from config_cache import ConfigError, load_tenant_file, validate_tenant, validation
from config_cache.schema import INVITE_AUTH_MODES
from ivr import FlowValidationError, load_flow_file, load_flows
from ivr.loader import _PARSERS, WEEKDAYS
from pri.dialplan import POLICY_FIELDS
from pri.trunk import Hunting, TrunkConfigError, load_trunks

TENANT: dict[str, Any] = {
    "id": "acme",
    "users": {"100": {"password": "pw"}, "101": {"password": "pw", "voicemail": False}},
    "ring_groups": {"sales": {"members": ["100", "101"]}},
    "prompts": {"promo": {"file": "acme/promo.wav"}},
    "numbers": {"+3210": {"route": "user:100"}, "+3211": "group:sales"},
    "outbound_routes": [{"prefix": "0", "trunk_group": "pstn"}],
    "limits": {"max_calls": 10},
}

# (path to set, value, field of the ConfigError, message)
TENANT_ERRORS: list[tuple[tuple[Any, ...], Any, str, str]] = [
    (("rev",), -1, "rev", "must be >= 0, not -1"),
    (("name",), "", "name", "must not be empty"),
    (("realm",), ["x"], "realm", "must be a non-empty string, not a list"),
    (("users",), [], "users", "must be a mapping, not a list"),
    (("users", "10 0"), {"password": "x"}, "users.10 0",
     "invalid extension '10 0' (expected [A-Za-z0-9][A-Za-z0-9_.+-]{0,31})"),
    (("users", "100", "name"), 7, "users.100.name", "must be a string, not an integer"),
    (("users", "100", "voicemail"), "no", "users.100.voicemail",
     "must be true or false, not a string"),
    (("users", "100", "pin"), "1", "users.100.pin", "unknown field"),
    (("users", "100", "password"), "", "users.100.password", "must not be empty"),
    (("ring_groups", "sales", "members"), [], "ring_groups.sales.members",
     "must be a non-empty list, not a list"),
    (("ring_groups", "sales", "members"), ["100", 5], "ring_groups.sales.members.1",
     "must be a non-empty string, not an integer"),
    (("ring_groups", "sales", "strategy"), "random", "ring_groups.sales.strategy",
     "must be one of parallel, sequential, not 'random'"),
    (("ring_groups", "sales", "timeout"), 0, "ring_groups.sales.timeout", "must be > 0, not 0"),
    (("numbers", "33x"), "user:100", "numbers.33x",
     "invalid number '33x' (expected \\+?[0-9]{1,20})"),
    (("numbers", "+3210"), 5, "numbers.+3210", "must be a mapping, not an integer"),
    (("numbers", "+3210"), {"name": "x"}, "numbers.+3210.route", "missing"),
    (("numbers", "+3210", "route"), "voicemail:101", "numbers.+3210.route",
     "user '101' has no voicemail"),
    (("default_route",), "group:nope", "default_route", "unknown ring group 'nope'"),
    (("default_route",), 3, "default_route", "must be a non-empty string, not an integer"),
    (("outbound_routes", 0, "prefix"), "9x", "outbound_routes.0.prefix",
     "must be a string of digits, not '9x'"),
    (("outbound_routes", 0, "trunk_group"), "bad name", "outbound_routes.0.trunk_group",
     "invalid value 'bad name' (expected [A-Za-z0-9][A-Za-z0-9_.-]{0,63})"),
    (("outbound_routes", 0, "strip"), -2, "outbound_routes.0.strip", "must be >= 0, not -2"),
    (("prompts", "promo", "file"), None, "prompts.promo.file",
     "must be a non-empty string, not null"),
    (("flows",), {"main": 3}, "flows.main", "must be a mapping, not an integer"),
    (("limits", "max_cps"), "2", "limits.max_cps", "must be a number >= 0, not '2'"),
    (("limits", "burst"), 2, "limits.burst", "unknown field"),
    (("invite_auth",), "some", "invite_auth", "must be one of all, external, off"),
    (("deleted",), "yes", "deleted", "must be true or false, not a string"),
    (("dial_policy", "max_digits"), "9", "dial_policy.max_digits",
     "expected an integer, got string '9'"),
]  # fmt: skip


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    node[path[-1]] = value
    return doc


def test_the_base_documents_are_valid() -> None:
    tenant = validate_tenant(TENANT)
    assert tenant.users["101"].voicemail is False and tenant.limits == {"max_calls": 10}
    assert str(tenant.numbers["+3211"].route) == "group:sales"
    assert load_trunks(TRUNKS, source="n.yaml").groups["pstn"].max_attempts == 1


@pytest.mark.parametrize(
    ("path", "value", "field", "message"), TENANT_ERRORS, ids=[e[2] for e in TENANT_ERRORS]
)
def test_tenant_errors_name_the_field(
    path: tuple[Any, ...], value: Any, field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate_tenant(_set(TENANT, path, value), file="t.yaml")
    assert (info.value.file, info.value.tenant, info.value.field) == ("t.yaml", "acme", field)
    assert info.value.message == message


def test_tenant_non_string_key_and_comment_fields() -> None:
    doc = _set(TENANT, ("users", "100", "_note"), "kept out of the schema")
    doc["_comment"] = "top-level comments are dropped"
    tenant = validate_tenant(doc)
    assert "_comment" not in tenant.to_doc()
    with pytest.raises(ConfigError) as info:
        validate_tenant(_set(TENANT, ("ring_groups", "sales", 7), "x"))
    assert info.value.field == "ring_groups.sales.7"
    assert info.value.message == "key must be a string (quote it in YAML), not an integer"


TRUNKS: dict[str, Any] = {
    "trunks": {
        "a": {
            "carrier": "c",
            "gateway": {"host": "192.0.2.1"},
            "spans": [{"type": "E1"}],
            "health": {"probe_interval": 10},
        }
    },
    "trunk_groups": {"pstn": {"trunks": ["a"]}},
    "outbound_routes": [{"prefix": "0", "group": "pstn"}],
    "trusted_sources": ["10.0.0.0/8"],
}

TRUNK_ERRORS: list[tuple[tuple[Any, ...], Any, str, str]] = [
    (("trunks",), [], "trunks", "expected a mapping, got a list"),
    (("trunks", "a", "gateway"), {"port": 5060}, "trunks.a.gateway", "missing field 'host'"),
    (("trunks", "a", "gateway", "transport"), 5, "trunks.a.gateway.transport",
     "unknown transport 5 (expected one of: udp, tcp, tls)"),
    (("trunks", "a", "spans", 0, "channels"), "30", "trunks.a.spans[0].channels",
     "expected an integer, got string '30'"),
    (("trunks", "a", "spans", 0), {"channels": 32}, "trunks.a.spans[0].channels",
     "must be between 1 and 31, got 32"),
    (("trunks", "a", "health", "cool_down"), True, "trunks.a.health.cool_down",
     "expected a number of seconds, got boolean True"),
    (("trunks", "a", "health", "up_after"), 1001, "trunks.a.health.up_after",
     "must be between 1 and 1000, got 1001"),
    (("trunks", "a", "auth"), {"username": "u", "password": "p", "realm": ""},
     "trunks.a.auth.realm", "expected a non-empty string, got string ''"),
    (("trunks", "a", "sources"), [10], "trunks.a.sources[0]",
     "expected an address or network, got number 10"),
    (("trunk_groups", "pstn", "trunks"), [3], "trunk_groups.pstn.trunks[0]",
     "expected a trunk name, got number 3"),
    (("trunk_groups", "pstn", "trunks"), [{"trunk": "a", "cost": 1}],
     "trunk_groups.pstn.trunks[0].cost", "unknown field (expected one of: trunk, weight)"),
    (("trunk_groups", "pstn", "max_attempts"), 0, "trunk_groups.pstn.max_attempts",
     "must be between 1 and 1, got 0"),
    (("outbound_routes", 0, "group"), None, "outbound_routes[0]", "missing field 'group'"),
    (("outbound_routes", 0, "prepend"), "+x", "outbound_routes[0].prepend",
     "invalid number '+x' (digits, '+', '*', '#')"),
    (("trusted_sources", 0), "10.0.0.0/33", "trusted_sources[0]",
     "invalid address or network '10.0.0.0/33'"),
    (("dial_policy", "deny"), ["1900", ""], "dial_policy.deny[1]",
     "invalid number '' (digits, '+', '*', '#')"),
    (("dial_policy", "home_country"), "0044", "dial_policy.home_country",
     "expected a country code like '1' or '32'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "field", "message"), TRUNK_ERRORS, ids=[e[2] for e in TRUNK_ERRORS]
)
def test_trunk_errors_name_the_field(
    path: tuple[Any, ...], value: Any, field: str, message: str
) -> None:
    with pytest.raises(TrunkConfigError) as info:
        load_trunks(_set(TRUNKS, path, value), source="n.yaml")
    assert (info.value.source, info.value.field, info.value.message) == ("n.yaml", field, message)


def test_schemas_are_valid_and_agree_with_the_code() -> None:
    for name in ("tenant", "trunks", "dial_policy", "flow"):
        schema = validation.schema(name)
        assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
        # Each schema and each of its definitions compiles (fastjsonschema refuses a
        # malformed one with JsonSchemaDefinitionException).
        for part in (None, *schema.get("definitions", {})):
            validation._validator(name, part, True)
            validation._validator(name, part, False)
    assert tuple(validation.schema("dial_policy")["properties"]) == POLICY_FIELDS
    tenant = validation.schema("tenant")["properties"]
    assert set(tenant["invite_auth"]["enum"]) == INVITE_AUTH_MODES
    group = validation.schema("trunks")["properties"]["trunk_groups"]["additionalProperties"]
    assert group["properties"]["strategy"]["enum"] == [h.value for h in Hunting]
    flow = validation.schema("flow")["definitions"]
    kinds = flow["node"]["properties"]["type"]["enum"]
    assert kinds == list(_PARSERS) and all(kind in flow for kind in kinds)
    assert tuple(flow["schedule"]["propertyNames"]["enum"]) == WEEKDAYS


def test_a_large_tenant_validates() -> None:
    tenant = validate_tenant(large_tenant(users=1000, flows=100))
    assert len(tenant.users) == 1000 and len(tenant.compiled_flows) == 100


# -- load_yaml -------------------------------------------------------------------


def test_load_yaml_reads_yaml_1_2_scalars(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("t: 17:00\nd: 2026-12-25\ni: 10\nf: 1.5\nb: true\ns: '010'\nn: ~\n")
    assert validation.load_yaml(path) == {
        "t": "17:00",
        "d": "2026-12-25",
        "i": 10,
        "f": 1.5,
        "b": True,
        "s": "010",
        "n": None,
    }


def test_load_yaml_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(validation.DocumentError) as info:
        validation.load_yaml(missing)
    assert str(info.value).startswith("cannot read: [Errno 2] No such file or directory")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(validation.DocumentError, match=r"^cannot read: 'utf-8' codec"):
        validation.load_yaml(latin)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1,\n")
    with pytest.raises(validation.DocumentError) as info:
        validation.load_yaml(broken)
    assert str(info.value).startswith("invalid YAML: while parsing a flow node")
    assert "line 2, column 1" in str(info.value) and "\n" not in str(info.value)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(validation.DocumentError, match=r"^invalid YAML: could not determine"):
        validation.load_yaml(unsafe)


def test_every_loader_words_bad_yaml_the_same(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1,\n")
    with pytest.raises(validation.DocumentError) as base:
        validation.load_yaml(broken)
    with pytest.raises(ConfigError) as node:
        load_config(broken)
    with pytest.raises(ConfigError) as tenants:
        load_tenant_file(broken)
    assert node.value.message == tenants.value.message == str(base.value)
    assert node.value.file == tenants.value.file == str(broken)
    with pytest.raises(ConfigError, match=r"missing.yaml: no such file$"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read: \[Errno 2\]"):
        load_tenant_file(tmp_path / "missing.yaml")


# -- IVR flows -------------------------------------------------------------------

FLOW: dict[str, Any] = {
    "start": "menu",
    "nodes": {
        "menu": {"type": "menu", "prompt": "welcome", "options": {"1": "ask"}, "on_failure": "bye"},
        "ask": {"type": "gather", "variable": "pin", "max_digits": 4, "next": "hours"},
        "hours": {
            "type": "time_condition",
            "schedule": {"mon": [["09:00", "17:00"]]},
            "open": "hook",
            "closed": "bye",
        },
        "hook": {"type": "webhook", "url": "http://h/x", "allowed_next": ["bye"]},
        "bye": {"type": "hangup"},
    },
}

# (path to set, value, node, field, message)
FLOW_ERRORS: list[tuple[tuple[Any, ...], Any, str | None, str | None, str]] = [
    (("nodes",), [], None, "nodes", "expected object, got array"),
    (("timezone",), 1, None, "timezone", "expected string, got number"),
    (("nodes", "bye", "type"), 5, "bye", "type", "expected string, got number"),
    (("nodes", "menu", "options", "1"), 1, "menu", "options.1", "expected string, got number"),
    (("nodes", "menu", "retries"), 2.0, "menu", "retries", "expected integer, got number"),
    (("nodes", "ask", "max_digits"), 0, "ask", "max_digits", "must be between 1 and 64, got 0"),
    (("nodes", "ask", "variable"), "a-b", "ask", "variable",
     "bad variable name (expected letters, digits and _)"),
    (("nodes", "ask", "prompt"), [], "ask", "prompt", "expected at least one prompt"),
    (("nodes", "hours", "schedule"), {}, "hours", "schedule", "must not be empty"),
    (("nodes", "hours", "schedule", "mon", 0), "09:00-17:00", "hours", "schedule.mon[0]",
     "expected [start, end] pair, got '09:00-17:00'"),
    (("nodes", "hook", "allowed_next"), [], "hook", "allowed_next", "expected at least one node"),
    (("nodes", "hook", "body"), "x=1", "hook", "body", "expected object, got string"),
    (("nodes", "hook", "timeout"), 0, "hook", "timeout", "must be > 0, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "node", "field", "message"),
    FLOW_ERRORS,
    ids=[f"{e[2]}.{e[3]}" for e in FLOW_ERRORS],
)
def test_flow_errors_name_node_and_field(
    path: tuple[Any, ...], value: Any, node: str | None, field: str | None, message: str
) -> None:
    with pytest.raises(FlowValidationError) as info:
        load_flows("acme", {"main": _set(FLOW, path, value)}, prompts={"welcome"})
    error = info.value
    assert (error.tenant, error.flow, error.node, error.field) == ("acme", "main", node, field)
    assert error.message == message


def test_flow_nulls_are_absent_and_yaml_digits_are_keys(tmp_path: Path) -> None:
    flow = _set(FLOW, ("nodes", "menu", "timeout"), None)
    flow["nodes"]["ask"]["terminator"] = None
    loaded = load_flows("acme", {"main": flow}, prompts={"welcome"})["main"]
    assert loaded.nodes["menu"].timeout == 5.0  # type: ignore[union-attr]
    assert loaded.nodes["ask"].terminator is None  # type: ignore[union-attr]
    path = tmp_path / "main.yaml"
    path.write_text(
        "start: m\nnodes:\n  m: {type: menu, prompt: welcome, options: {1: m, 0: bye}}\n"
        "  bye: {type: hangup}\n"
    )
    menu = load_flow_file(path, tenant="acme", prompts={"welcome"}).nodes["m"]
    assert dict(menu.options) == {"1": "m", "0": "bye"}  # type: ignore[union-attr]


# -- anchors: a trailing newline is not a digit ----------------------------------
#
# JSON Schema's "pattern" is a search, and Python's "$" also matches before a final
# "\n": the schemas anchor with "^...\Z", so "12\n" is refused wherever digits are.


def test_tenant_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        validate_tenant(_set(TENANT, ("numbers", "+3212\n"), "user:100"))
    assert info.value.field == "numbers.+3212\n"
    assert info.value.message == "invalid number '+3212\\n' (expected \\+?[0-9]{1,20})"
    with pytest.raises(ConfigError) as info:
        validate_tenant(_set(TENANT, ("outbound_routes", 0, "prefix"), "0\n"))
    assert info.value.field == "outbound_routes.0.prefix"
    assert info.value.message == "must be a string of digits, not '0\\n'"
    with pytest.raises(ConfigError) as info:
        validate_tenant(_set(TENANT, ("users", "100\n"), {"password": "x"}))
    assert info.value.field == "users.100\n"


def test_trunk_and_policy_trailing_newline_is_refused() -> None:
    with pytest.raises(TrunkConfigError) as info:
        load_trunks(_set(TRUNKS, ("dial_policy", "home_country"), "32\n"), source="n.yaml")
    assert info.value.field == "dial_policy.home_country"
    assert info.value.message == "expected a country code like '1' or '32'"
    with pytest.raises(TrunkConfigError) as info:
        load_trunks(_set(TRUNKS, ("dial_policy", "deny"), ["1900\n"]), source="n.yaml")
    assert info.value.field == "dial_policy.deny[0]"
    assert info.value.message == "invalid number '1900\\n' (digits, '+', '*', '#')"


def test_flow_trailing_newline_is_refused() -> None:
    flow = _set(FLOW, ("nodes", "hours", "schedule", "mon", 0), ["09:00\n", "17:00"])
    with pytest.raises(FlowValidationError) as info:
        load_flows("acme", {"main": flow}, prompts={"welcome"})
    assert (info.value.node, info.value.field) == ("hours", "schedule.mon[0][0]")
    assert info.value.message == "bad time '09:00\\n' (expected HH:MM)"
    flow = _set(FLOW, ("nodes", "ask", "variable"), "account\n")
    with pytest.raises(FlowValidationError) as info:
        load_flows("acme", {"main": flow}, prompts={"welcome"})
    assert (info.value.node, info.value.field) == ("ask", "variable")
