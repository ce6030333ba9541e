"""Typed errors raised by the IVR package."""

from __future__ import annotations

__all__ = ["CallHangup", "FlowValidationError"]


class FlowValidationError(ValueError):
    """A flow definition is invalid; raised at load time, never at call time.

    ``str()`` names every known location, e.g.
    ``tenant 'acme' flow 'main' node 'menu' field 'options.7': unknown node 'salez'``.
    Parts that do not apply (``node`` for a flow-level error, ``field`` for a
    whole-node error, ``file`` unless the flow was read from a file) are left out.
    """

    def __init__(
        self,
        message: str,
        *,
        tenant: str,
        flow: str | None,
        node: str | None = None,
        field: str | None = None,
        file: str | None = None,
    ) -> None:
        self.message = message
        self.tenant = tenant
        self.flow = flow
        self.node = node
        self.field = field
        self.file = file
        super().__init__(self._render())

    def _render(self) -> str:
        parts: list[str] = []
        if self.file is not None:
            parts.append(f"file {self.file!r}")
        parts.append(f"tenant {self.tenant!r}")
        if self.flow is not None:
            parts.append(f"flow {self.flow!r}")
        if self.node is not None:
            parts.append(f"node {self.node!r}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return f"{' '.join(parts)}: {self.message}"


class CallHangup(Exception):
    """Raised by a call's media operations (play, gather) once the caller has hung up.

    The runner ends the flow as a hangup (the open step's outcome is ``hangup``)
    instead of treating it as an error."""
