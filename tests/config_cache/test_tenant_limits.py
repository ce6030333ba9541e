"""Tenant ``limits`` (call caps): validated, errors name file, tenant and field."""

from __future__ import annotations

import pytest

from config_cache.errors import ConfigError
from config_cache.schema import validate_tenant


def test_limits_are_kept_typed() -> None:
    tenant = validate_tenant({"id": "acme", "limits": {"max_calls": 30, "max_cps": 2}})
    assert dict(tenant.limits) == {"max_calls": 30, "max_cps": 2.0}
    assert dict(validate_tenant({"id": "acme"}).limits) == {}


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"max_calls": -1}, "limits.max_calls"),
        ({"max_calls": "10"}, "limits.max_calls"),
        ({"max_cps": -0.5}, "limits.max_cps"),
        ({"max_cps": True}, "limits.max_cps"),
        ({"channels": 3}, "limits.channels"),
    ],
)
def test_bad_limits_name_file_tenant_and_field(limits: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        validate_tenant({"id": "acme", "limits": limits}, file="tenants/acme.json")
    text = str(exc.value)
    assert "tenants/acme.json" in text and "acme" in text and field in text
