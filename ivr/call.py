"""The slice of ``callengine``'s ``Call`` that IVR code uses (docs/interfaces.md).

A structural type, so ``ivr`` does not import ``callengine`` and tests can
pass an in-memory fake.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .machine import RecordResultLike, TransferResultLike

__all__ = ["Call"]


class Call(Protocol):
    """A call as an IVR flow or handler sees it."""

    # Read-only here (properties), so any attribute of a compatible type satisfies them.
    @property
    def call_id(self) -> str: ...
    @property
    def caller(self) -> str: ...
    @property
    def callee(self) -> str: ...
    @property
    def tenant(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, str]: ...

    variables: dict[str, str]

    async def answer(self) -> None: ...
    async def reject(self, status: int, reason: str | None = None) -> None: ...
    async def hangup(self, cause: int = 16) -> None: ...
    async def wait_hangup(self) -> None: ...
    async def play(self, prompts: Sequence[str], *, barge_in: bool = True) -> str | None: ...
    async def gather(
        self,
        *,
        max_digits: int,
        timeout: float,
        terminator: str | None = "#",
        inter_digit_timeout: float | None = None,
    ) -> str: ...
    async def record(
        self,
        key: str,
        *,
        max_seconds: float,
        beep: bool = True,
        silence_timeout: float | None = None,
        stop_on_dtmf: bool = True,
    ) -> RecordResultLike: ...
    async def transfer(
        self, targets: Sequence[str], *, strategy: str = "parallel", timeout: float = 20.0
    ) -> TransferResultLike: ...
    def log_event(self, kind: str, **fields: Any) -> None: ...
    def start_recording(self) -> str: ...
    def stop_recording(self) -> Any: ...
