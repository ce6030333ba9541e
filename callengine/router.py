"""Which handler runs a new call (plain data and functions, no event loop).

In order: the handlers registered for a called-number pattern (``Engine.on_call``), in
registration order; then the routing function (the node's: trunks, then the tenant
configuration), which may decline with None; then the default handler; then answering
and staying up until the caller hangs up.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .call import Call

Handler = Callable[["Call"], Awaitable[None]]

__all__ = ["CallRouter", "Handler"]


class CallRouter:
    """The engine's routing table (see the module comment)."""

    def __init__(self, last_resort: Handler) -> None:
        self._patterns: list[tuple[Callable[[str], bool], Handler]] = []
        self.default: Handler | None = None
        self.fallback: Callable[[Call], Handler | None] | None = None
        """The routing function consulted after the patterns (None: none)."""
        self._last_resort = last_resort

    def add(self, pattern: str | re.Pattern[str] | None, handler: Handler) -> None:
        """``pattern``: fnmatch syntax such as ``1800*``, a compiled regex (whole
        number), or None for the default."""
        if pattern is None:
            self.default = handler
        elif isinstance(pattern, re.Pattern):
            regex = pattern
            self._patterns.append((lambda n: regex.fullmatch(n) is not None, handler))
        else:
            glob = pattern
            self._patterns.append((lambda n: fnmatch.fnmatchcase(n, glob), handler))

    def route(self, call: Call) -> Handler:
        for match, handler in self._patterns:
            if match(call.callee):
                return handler
        if self.fallback is not None:
            routed = self.fallback(call)
            if routed is not None:
                return routed
        return self.default or self._last_resort
