"""Router: exact numbers, fnmatch wildcards, regex objects, action registry."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ivr import FlowContext, Router


async def h_exact(call: Any) -> None:
    return None


async def h_tollfree(call: Any) -> None:
    return None


async def h_regex(call: Any) -> None:
    return None


async def h_any(call: Any) -> None:
    return None


def make_router() -> Router:
    router = Router()
    router.add("18005550100", h_exact)
    router.add("1800*", h_tollfree)
    router.add(re.compile(r"\+?44[0-9]{10}"), h_regex)
    router.add("10?", h_any)
    return router


@pytest.mark.parametrize(
    ("number", "handler"),
    [
        ("18005550100", h_exact),  # exact beats the earlier-matching wildcard
        ("18005550199", h_tollfree),
        ("1800", h_tollfree),
        ("+442071234567", h_regex),
        ("442071234567", h_regex),
        ("4420712345678", None),  # regex must match the whole number
        ("101", h_any),
        ("1011", None),
        ("999", None),
    ],
)
def test_match(number: str, handler: object) -> None:
    assert make_router().match(number) is handler


def test_decorator_registers_several_patterns() -> None:
    router = Router()

    @router.route("100", "2*")
    async def handler(call: Any) -> None:
        return None

    assert router.match("100") is handler and router.match("2345") is handler
    assert router.match("3") is None


def test_duplicates_and_empty_patterns_are_rejected() -> None:
    router = make_router()
    with pytest.raises(ValueError, match=r"route '18005550100' is already registered"):
        router.add("18005550100", h_any)
    with pytest.raises(ValueError, match=r"route '1800\*' is already registered"):
        router.add("1800*", h_any)
    with pytest.raises(ValueError, match="bad route pattern ''"):
        router.add("", h_any)


def test_action_registry() -> None:
    router = Router()

    @router.action()
    async def lookup(call: Any, ctx: FlowContext) -> str | None:
        return None

    @router.action("vip_check")
    async def other(call: Any, ctx: FlowContext) -> str | None:
        return "vip"

    assert dict(router.actions) == {"lookup": lookup, "vip_check": other}
    with pytest.raises(ValueError, match="action 'lookup' is already registered"):
        router.add_action("lookup", other)
    with pytest.raises(TypeError):
        router.actions["x"] = other  # type: ignore[index]
