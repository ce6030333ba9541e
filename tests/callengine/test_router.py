"""The engine's routing table (callengine.router), with stand-in calls."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from callengine.router import CallRouter


@dataclass
class FakeCall:
    callee: str


async def last_resort(call: Any) -> None: ...
async def toll_free(call: Any) -> None: ...
async def emergency(call: Any) -> None: ...
async def tenant_ivr(call: Any) -> None: ...
async def default(call: Any) -> None: ...


def test_patterns_in_order_then_the_routing_function_then_the_default() -> None:
    router = CallRouter(last_resort)
    router.add("1800*", toll_free)
    router.add(re.compile(r"11[02]"), emergency)
    router.add("1*", default)  # registered later: 1800 numbers still go to toll_free
    assert router.route(FakeCall("18005550100")) is toll_free  # type: ignore[arg-type]
    assert router.route(FakeCall("112")) is emergency  # type: ignore[arg-type]
    assert router.route(FakeCall("1120")) is default  # type: ignore[arg-type]  # regex: whole number
    seen: list[str] = []

    def tenants(call: Any) -> Any:
        seen.append(call.callee)
        return tenant_ivr if call.callee == "2000" else None

    router.fallback = tenants
    assert router.route(FakeCall("2000")) is tenant_ivr  # type: ignore[arg-type]
    assert router.route(FakeCall("3000")) is last_resort  # type: ignore[arg-type]
    router.add(None, default)
    assert router.route(FakeCall("3000")) is default  # type: ignore[arg-type]
    assert seen == ["2000", "3000", "3000"]  # patterns matched first never ask it
