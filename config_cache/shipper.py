"""Shipping the outbox to the History DB.

Theory of operation: take up to ``batch_size`` final records (oldest first),
upsert them by ``_id`` = call id in one bulk write, and only once the server
acknowledged the write delete them from the outbox (one fsynced WriteBatch that
also appends them to the recently-shipped ring). A crash between the two steps
resends the batch, which the upsert makes harmless. While the History DB fails,
retries back off exponentially. pymongo and the fsync run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import UpstreamError
from .metrics import CacheMetrics
from .outbox import Outbox

__all__ = ["Backoff", "HistorySink", "HistoryShipper"]

log = logging.getLogger("config_cache.shipper")


class HistorySink(Protocol):
    """Where call logs go (``MongoHistory`` provides it)."""

    def upsert(self, docs: Sequence[Mapping[str, Any]]) -> int: ...


@dataclass(slots=True)
class Backoff:
    """Exponential backoff (pure): ``initial * factor**(n-1)`` capped at
    ``maximum`` after ``n`` consecutive failures."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    failures: int = 0

    def failure(self) -> float:
        """Record a failure; return how long to wait before the next try."""
        self.failures += 1
        return min(self.maximum, self.initial * self.factor ** (self.failures - 1))

    def success(self) -> None:
        """Record a success (the next failure starts from ``initial`` again)."""
        self.failures = 0


class HistoryShipper:
    """An asyncio task that empties ``outbox`` into ``sink``.

    Args:
        batch_size: records per bulk write.
        interval: seconds between looks at an empty (or drained) outbox.
        backoff: retry policy while the History DB fails.
        clock: Unix-time source (``shipped_at``, oldest-age gauge).
    """

    def __init__(
        self,
        outbox: Outbox,
        sink: HistorySink,
        *,
        batch_size: int = 500,
        interval: float = 1.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        metrics: CacheMetrics | None = None,
    ) -> None:
        self.outbox = outbox
        self.sink = sink
        self.batch_size = batch_size
        self.interval = interval
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._metrics = metrics or CacheMetrics.private()
        #: The last History DB error while failing, else None.
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """Start shipping in a background task."""
        if self._task is not None:
            raise RuntimeError("shipper already started")
        self._task = asyncio.create_task(self._run(), name="history-shipper")

    async def stop(self) -> None:
        """Cancel the task and wait for it. Records not yet acknowledged stay
        in the outbox (a write in flight may land and be resent: harmless)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def notify(self) -> None:
        """Ship now instead of at the next interval (e.g. after close_call)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.ship_once()
            except UpstreamError as exc:
                delay = self.backoff.failure()
                if self.last_error is None:
                    log.warning("History DB unavailable, keeping call logs in the outbox: %s", exc)
                self.last_error = str(exc)
                await asyncio.sleep(delay)
                continue
            if self.last_error is not None:
                log.warning("History DB available again; shipping the outbox")
                self.last_error = None
            self.backoff.success()
            if sent < self.batch_size:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)

    async def ship_once(self) -> int:
        """Ship one batch; return how many records were acknowledged and
        removed. Raises :class:`UpstreamError` when the History DB failed."""
        batch = self.outbox.pending(self.batch_size)
        if batch:
            docs = [{**rec.to_dict(), "_id": rec.call_id} for rec in batch]
            try:
                await asyncio.to_thread(self.sink.upsert, docs)
            except UpstreamError:
                self._metrics.ship_failures.inc()
                self._update_gauges()
                raise
            await asyncio.to_thread(self.outbox.mark_shipped, batch, shipped_at=self._clock())
            self._metrics.shipped.inc(len(batch))
        self._update_gauges()
        return len(batch)

    async def flush(self) -> int:
        """Ship until the outbox has no final record; return how many.
        Raises :class:`UpstreamError` on the first failure."""
        total = 0
        while True:
            sent = await self.ship_once()
            total += sent
            if sent == 0:
                return total

    def _update_gauges(self) -> None:
        oldest = self.outbox.oldest_end_time()
        self._metrics.outbox_oldest_age.set(
            0 if oldest is None else max(0.0, self._clock() - oldest)
        )
