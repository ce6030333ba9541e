"""Flows as Python: route dialled numbers to coroutines, register python actions.

Pattern syntax (one, documented):

* a plain string (no ``*``, ``?`` or ``[``) matches that number exactly;
* a string with ``*``, ``?`` or ``[...]`` is a shell-style wildcard matched
  with :func:`fnmatch.fnmatchcase` against the whole number: ``"1800*"``
  matches every number starting with 1800, ``"10?"`` matches 100-109;
* a compiled :class:`re.Pattern` must match the whole number (``fullmatch``).

Exact numbers win over patterns; patterns are tried in registration order.

Usage::

    router = Router()

    @router.route("100", "1800*")
    async def sales(call: Call) -> None:
        await call.answer()
        ...

    @router.action("lookup_account")
    async def lookup(call: Call, ctx: FlowContext) -> str | None:
        return "vip" if ctx.variables.get("account", "").startswith("9") else None

    handler = router.match("18005550100")   # the Engine calls this
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from .machine import FlowContext

__all__ = ["Action", "Handler", "Router"]

#: ``async def handler(call) -> None``: owns the call once routed to it.
Handler = Callable[[Any], Awaitable[None]]
#: ``async def action(call, flow_ctx) -> str | None``: next node id, or None for ``next``.
Action = Callable[[Any, FlowContext], Awaitable[str | None]]

_H = TypeVar("_H", bound=Handler)
_A = TypeVar("_A", bound=Action)
_WILDCARD = re.compile(r"[*?\[]")


class Router:
    """Number -> handler routes and the registry of python actions."""

    def __init__(self) -> None:
        self._exact: dict[str, Handler] = {}
        self._patterns: list[tuple[str | re.Pattern[str], re.Pattern[str], Handler]] = []
        self._actions: dict[str, Action] = {}

    def add(self, pattern: str | re.Pattern[str], handler: Handler) -> None:
        """Route numbers matching ``pattern`` (see the module docstring) to ``handler``.

        Raises ``ValueError`` for an empty pattern or one already registered.
        """
        if isinstance(pattern, re.Pattern):
            compiled = pattern
        elif not isinstance(pattern, str) or not pattern:
            raise ValueError(f"bad route pattern {pattern!r}")
        elif _WILDCARD.search(pattern):
            compiled = re.compile(fnmatch.translate(pattern))
        else:
            if pattern in self._exact:
                raise ValueError(f"route {pattern!r} is already registered")
            self._exact[pattern] = handler
            return
        if any(existing == pattern for existing, _, _ in self._patterns):
            raise ValueError(f"route {pattern!r} is already registered")
        self._patterns.append((pattern, compiled, handler))

    def route(self, *patterns: str | re.Pattern[str]) -> Callable[[_H], _H]:
        """Decorator form of :meth:`add` for one or more patterns."""

        def register(handler: _H) -> _H:
            for pattern in patterns:
                self.add(pattern, handler)
            return handler

        return register

    def match(self, number: str) -> Handler | None:
        """The handler for a dialled ``number``, or ``None`` when no route matches."""
        handler = self._exact.get(number)
        if handler is not None:
            return handler
        for _, compiled, handler in self._patterns:
            if compiled.fullmatch(number):
                return handler
        return None

    def add_action(self, name: str, action: Action) -> None:
        """Register ``action`` for ``python`` nodes naming ``name``."""
        if not name:
            raise ValueError("action name must not be empty")
        if name in self._actions:
            raise ValueError(f"action {name!r} is already registered")
        self._actions[name] = action

    def action(self, name: str | None = None) -> Callable[[_A], _A]:
        """Decorator form of :meth:`add_action`; the name defaults to the function's."""

        def register(action: _A) -> _A:
            self.add_action(name or str(getattr(action, "__name__", "")), action)
            return action

        return register

    @property
    def actions(self) -> Mapping[str, Action]:
        """Registered actions by name (read-only); pass to ``run_flow(actions=...)``."""
        return MappingProxyType(self._actions)
