"""pri.dialplan: which numbers may leave through a trunk (sans-IO, no sockets)."""

from __future__ import annotations

import pytest

from config_cache.errors import ConfigError
from config_cache.schema import validate_tenant
from pri import DialPolicy, TrunkConfigError, load_trunks
from pri.dialplan import Verdict

DEFAULT = DialPolicy()


@pytest.mark.parametrize(
    "number",
    [
        "123\r\nX:1",  # escaped CR LF in the Request-URI
        "123@127.0.0.1:5072",  # escaped @ that would rewrite the gateway's R-URI
        "123;transport=tcp",
        "*#abc",
        "1" * 300,
        "",
        "+",
        "12 34",
        "١٢٣",  # non-ASCII digits
    ],
)
def test_numbers_a_carrier_cannot_take_get_484_cause_28(number: str) -> None:
    assert DEFAULT.check(number) == Verdict(484, 28, "invalid_number")


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("0044123456789", "international"),
        ("011441234567", "international"),
        ("+441234567", "international"),
        ("19005551234", "premium"),
        ("19765551234", "premium"),
        ("0900123456", "premium"),
        ("+88212345678", "premium"),
        ("0088212345678", "premium"),
        ("01188312345678", "premium"),
    ],
)
def test_international_and_premium_are_refused_by_default(number: str, reason: str) -> None:
    assert DEFAULT.check(number) == Verdict(403, 21, reason)


@pytest.mark.parametrize("number", ["123", "3225550123", "112", "+3225550123"])
def test_national_numbers_pass(number: str) -> None:
    policy = DialPolicy(home_country="32")
    assert policy.check(number) is None


def test_plus_number_is_international_without_home_country() -> None:
    assert DEFAULT.check("+3225550123") == Verdict(403, 21, "international")


def test_allow_and_deny_lists() -> None:
    policy = DialPolicy(allow=("0044", "+88299"), deny=("00447",))
    assert policy.check("0044123") is None  # allowed although international
    assert policy.check("+8829912") is None  # allowed although premium
    assert policy.check("004471234") == Verdict(403, 21, "denied")  # deny wins over allow
    assert policy.check("0033123") == Verdict(403, 21, "international")
    assert DialPolicy(deny=("118",)).check("118118") == Verdict(403, 21, "denied")
    # the format check comes first, even for allowed prefixes
    assert policy.check("0044;x") == Verdict(484, 28, "invalid_number")


def test_categories_can_be_opened() -> None:
    policy = DialPolicy(allow_international=True, allow_premium=True)
    assert policy.check("0044123") is None
    assert policy.check("19005551234") is None
    assert DialPolicy(max_digits=4).check("12345") == Verdict(484, 28, "invalid_number")


def test_node_policy_from_trunk_config_and_tenant_override() -> None:
    plan = load_trunks(
        {"dial_policy": {"home_country": "1", "deny": ["1900"], "max_digits": 11}},
        source="node.yaml",
    )
    assert plan.dial_policy.check("+15551234567") is None
    assert plan.dial_policy.check("19001234567") == Verdict(403, 21, "denied")
    assert load_trunks({}, source="x").dial_policy == DialPolicy()
    tenant = validate_tenant(
        {"id": "acme", "dial_policy": {"allow_international": True}}, file="acme.json"
    )
    assert dict(tenant.dial_policy) == {"allow_international": True}
    merged = plan.dial_policy.override(tenant.dial_policy)
    assert merged.check("0044123") is None
    assert merged.check("19001234567") == Verdict(403, 21, "denied")  # node deny stays


@pytest.mark.parametrize(
    ("policy", "field", "words"),
    [
        ({"allow_premium": "yes"}, "dial_policy.allow_premium", "true or false"),
        ({"deny": ["12a"]}, "dial_policy.deny[0]", "invalid number"),
        ({"home_country": 32}, "dial_policy.home_country", "quote numbers"),
        ({"max_digits": 99}, "dial_policy.max_digits", "between"),
        ({"allow_everything": True}, "dial_policy.allow_everything", "unknown field"),
    ],
)
def test_bad_policy_names_file_and_field(policy: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(TrunkConfigError) as exc:
        load_trunks({"dial_policy": policy}, source="node.yaml")
    assert exc.value.source == "node.yaml" and exc.value.field == field
    assert words in exc.value.message
    with pytest.raises(ConfigError) as cexc:
        validate_tenant({"id": "acme", "dial_policy": policy}, file="acme.json")
    text = str(cexc.value)
    assert "acme.json" in text and "acme" in text and field in text and words in text
