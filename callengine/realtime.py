"""Keeping time: the event loop's lag, and the cyclic collector off the hot path.

Loop lag
--------
:class:`LoopLagMonitor` sleeps ``interval`` seconds again and again and records how
late each wake-up is (a histogram for /metrics, the last and the largest value);
the engine sheds new calls from it when the loop falls far behind. It is the one
lag monitor of a process.

Garbage collection
------------------
CPython frees an object by reference counting the moment its last reference goes;
the cyclic collector exists only for reference cycles, and it stops the whole
process while it walks a generation. A node under load holds a large live heap by
design (a transaction stays 32 s for retransmissions), so a full collection walks
hundreds of megabytes and stops every call's audio for hundreds of milliseconds
(DESIGN.md, "Measured facts").

So the node makes no cycles per call (``tests/integration/test_garbage.py`` runs every
call path through a real node and checks that ``gc.collect()`` finds nothing it
left), and the collector becomes a bounded safety net:

* At start: one full collection, then ``gc.freeze()`` moves everything loaded so far
  (modules, prompts, tenant configuration) out of the collector's sight for good,
  and automatic collection is switched off.
* Every ``interval`` seconds the young generation (what was allocated since the last
  tick and is still alive) leaves the collector's sight: one tick in
  ``sample_every`` collects it (generation 0), the others ``gc.freeze()`` it, which
  costs nothing (two list heads are joined). Collecting walks every object once, and
  a call's objects live 32 s (its transactions), so walking each tick cost ~90 us per
  call (measured: 7.2 s of 71 s of CPU at 1,300 calls/s); the sample keeps the safety
  net at a tenth of that. A collection holds only one tick's allocations (a few
  thousand objects at hundreds of calls/s, a millisecond or two), so the pause is
  bounded by the allocation rate times the interval, not by the heap. The interval
  is fixed on purpose: ``gc.get_count()[0]`` is allocations minus deallocations, and
  under steady load old objects die as fast as new ones are made, so the count stays
  near 0 while the young generation grows without bound (measured: a 487 ms "young"
  collection after a minute of 300 calls/s when collections waited for the count).
  Cycles that die young (an exception and its traceback, say) and fall in a sampled
  tick are freed at once; the count of what collections free is the alarm: it stays
  0 on a healthy node (``callengine_gc_collected_objects_total``).
* Everything else waits for the node to be idle (no call, few transactions: the
  heap is then small): at most every ``idle_interval`` seconds the frozen objects
  are put back in sight, the whole heap is collected and frozen again
  (:meth:`GcGovernor.collect_all`), so what a rare path left is reclaimed without a
  pause anybody hears.

Every collection, whoever starts it, is timed through ``gc.callbacks`` and exported
per generation: collections, pause seconds (total and max), objects collected.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

log = logging.getLogger("callengine.realtime")

__all__ = ["GcGovernor", "GcStats", "LoopLagMonitor", "StallReporter"]


LAG_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 250, 500, 1000)


class LoopLagMonitor:
    """How late the event loop wakes from a short sleep (see the module comment)."""

    def __init__(
        self,
        *,
        interval: float = 0.01,
        on_sample: Callable[[float], None] | None = None,
    ) -> None:
        self.interval = interval
        self.on_sample = on_sample
        self.last = 0.0
        self.max = 0.0
        self.buckets_ms = LAG_BUCKETS_MS
        self.counts = [0] * (len(LAG_BUCKETS_MS) + 1)
        """Samples per bucket (not cumulative); the last one is +Inf."""
        self.sum_ms = 0.0
        self.beat = time.monotonic()
        """When the loop last woke this monitor (read by :class:`StallReporter`)."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def sample(self, lag: float) -> None:
        """Record one wake-up ``lag`` seconds late."""
        self.last = lag
        if lag > self.max:
            self.max = lag
        lag_ms = lag * 1000.0
        self.sum_ms += lag_ms
        index = 0
        for bound in self.buckets_ms:
            if lag_ms <= bound:
                break
            index += 1
        self.counts[index] += 1
        if self.on_sample is not None:
            self.on_sample(lag)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval
        while True:
            t0 = loop.time()
            await asyncio.sleep(interval)
            self.beat = time.monotonic()
            self.sample(max(0.0, loop.time() - t0 - interval))


class StallReporter:
    """Names what stops the loop: a watchdog thread that, when the loop has not woken
    the lag monitor for ``threshold`` seconds, logs the stack the loop's thread is
    running at that moment (once per stall). A diagnostic, off unless configured
    (``stall_report_ms``): the thread wakes every few milliseconds."""

    def __init__(self, lag: LoopLagMonitor, *, threshold: float, poll: float = 0.005) -> None:
        self.lag = lag
        self.threshold = threshold
        self.poll = poll
        self.reports: list[str] = []
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-reporter", daemon=True)

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        reported = 0.0
        limit = self.lag.interval + self.threshold
        while not self._stop.wait(self.poll):
            beat = self.lag.beat
            if beat == reported or time.monotonic() - beat < limit:
                continue
            reported = beat
            frame = sys._current_frames().get(self._loop_thread)
            if frame is None:
                continue
            stack = "".join(traceback.format_stack(frame, limit=12))
            self.reports = [*self.reports[-19:], stack]
            log.warning(
                "event loop stalled for more than %.0f ms in:\n%s", self.threshold * 1000, stack
            )


class GcStats:
    """Collections seen through ``gc.callbacks``, per generation (0, 1, 2)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.pause_seconds = [0.0, 0.0, 0.0]
        self.pause_max = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self.uncollectable = [0, 0, 0]
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = int(info.get("generation", 2))
        self.collections[generation] += 1
        self.pause_seconds[generation] += pause
        if pause > self.pause_max[generation]:
            self.pause_max[generation] = pause
        self.collected[generation] += int(info.get("collected", 0))
        self.uncollectable[generation] += int(info.get("uncollectable", 0))


class GcGovernor:
    """Runs the policy above on the running event loop (one per process).

    ``idle`` tells whether the node holds nothing (no call, no transaction).
    ``mode="python"`` leaves the interpreter's own collector as it is and only
    measures it.
    """

    def __init__(
        self,
        idle: Callable[[], bool],
        *,
        mode: str = "realtime",
        interval: float = 0.05,
        sample_every: int = 10,
        idle_interval: float = 60.0,
    ) -> None:
        if mode not in ("realtime", "python"):
            raise ValueError(f"gc mode must be 'realtime' or 'python', not {mode!r}")
        self.mode = mode
        self.idle = idle
        self.interval = interval
        self.sample_every = max(1, sample_every)
        self.idle_interval = idle_interval
        self._ticks = 0
        self.stats = GcStats()
        self._task: asyncio.Task[None] | None = None
        self._was_enabled = gc.isenabled()
        self._last_full = 0.0

    def start(self) -> None:
        gc.callbacks.append(self.stats.callback)
        if self.mode != "realtime":
            return
        self._was_enabled = gc.isenabled()
        gc.collect()
        gc.freeze()
        gc.disable()
        loop = asyncio.get_running_loop()
        self._last_full = loop.time()
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.stats.callback in gc.callbacks:
            gc.callbacks.remove(self.stats.callback)
        if self.mode == "realtime":
            # an embedding program goes on after the engine: give it its collector back
            gc.unfreeze()
            if self._was_enabled:
                gc.enable()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            self.step(loop.time())

    def step(self, now: float) -> int | None:
        """One tick: the whole heap when idle (at most every ``idle_interval``
        seconds), else the young generation collected (one tick in ``sample_every``)
        or frozen. Returns the generation collected, or None when it froze."""
        if now - self._last_full >= self.idle_interval and self.idle():
            self._last_full = now
            self.collect_all()
            return 2
        self._ticks += 1
        if self._ticks % self.sample_every == 0:
            gc.collect(0)
            return 0
        gc.freeze()
        return None

    def collect_all(self) -> int:
        """Collect the whole heap, frozen objects included, then freeze what is left.
        Returns the number of unreachable objects found (0 on a healthy node)."""
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        if found:
            log.warning("full collection freed %d objects in reference cycles", found)
        return found
