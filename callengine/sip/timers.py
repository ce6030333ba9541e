"""One timer heap for every SIP timer of a worker (DESIGN.md "Hot paths").

Cancelling is O(1): the entry's callback is cleared and the entry is skipped when it
reaches the top. The heap never reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

# RFC 3261 §17.1.1.1 / Table 4
T1 = 0.5
T2 = 4.0
T4 = 5.0
TIMER_D = 32.0
"""How long an INVITE client transaction absorbs retransmitted final responses over
an unreliable transport (§17.1.1.2: at least 32 s)."""

TimerCallback = Callable[..., None]


class Timer:
    """A scheduled callback; ``cancel()`` makes it a no-op."""

    __slots__ = ("when", "callback", "args")

    def __init__(self, when: float, callback: TimerCallback | None, args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args

    def cancel(self) -> None:
        self.callback = None
        self.args = ()

    @property
    def active(self) -> bool:
        return self.callback is not None


class TimerHeap:
    """All timers of one core, ordered by deadline."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0

    def schedule(self, when: float, callback: TimerCallback, *args: Any) -> Timer:
        timer = Timer(when, callback, args)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, timer))
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run(self, now: float) -> int:
        """Fire every timer due at ``now``; returns how many fired."""
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            cb = timer.callback
            if cb is not None:
                args = timer.args
                timer.callback = None
                cb(now, *args)
                fired += 1
        return fired

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if t.callback is not None)
