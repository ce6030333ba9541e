"""Sans-IO schedule of the media clock: which streams tick when.

Theory of operation. Every stream sends one packet per ``interval`` (20 ms). Doing
all of them in one callback makes the node's longest loop turn grow with the number
of calls (1,000 streams: one callback of several milliseconds, and any signalling
work queued behind it waits that long). So the period is cut into ``slots`` phases:
slot ``i`` is due at ``epoch + i * interval / slots + k * interval``, and a stream
belongs to one slot for its whole life (moving it would shift its packets by a
fraction of the period, i.e. jitter). A new stream joins the slot with the fewest
streams, so the slots stay balanced as calls come and go; an empty slot is not
scheduled at all.

The shell (:class:`media.session.MediaClock`) asks :meth:`TickSchedule.next_deadline`
for the earliest due slot, arms one timer for it, and when the timer fires calls
:meth:`TickSchedule.fire` with ``now``: it gets that slot's items (and nothing
else) and ticks each once. Each slot keeps time on its own absolute schedule
(drift-free: the next deadline is the previous one plus the interval, never "now
plus the interval"). A late slot catches up one tick per callback (its next
deadline is then already past, so it fires again at once: no skipped packet,
timestamps stay steady); more than ``max_lag_ticks`` periods behind (the loop
stalled), it skips ahead to its next phase at least half a period on instead of
bursting, and every other overdue slot skips ahead with it (so that no slot waits
behind the others' catch-up bursts).

No clock is read here, no timer is armed: tests drive it with a fake ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

__all__ = ["DEFAULT_SLOTS", "TickSchedule"]

T = TypeVar("T")

#: Phases of the 20 ms period (one callback every 5 ms, each a quarter of the streams).
DEFAULT_SLOTS = 1


class _Slot(Generic[T]):
    __slots__ = ("due", "index", "items", "offset", "snapshot")

    def __init__(self, index: int, offset: float) -> None:
        self.index = index
        self.offset = offset
        self.due = math.inf  # inf: empty, not scheduled
        self.items: dict[Hashable, T] = {}
        # What a tick iterates, rebuilt lazily after add/remove; replaced, never
        # mutated, so that a tick in progress keeps iterating its own list.
        self.snapshot: list[T] | None = None


class TickSchedule(Generic[T]):
    """The slots of the media clock and their deadlines (fake-clock testable)."""

    def __init__(
        self,
        *,
        interval: float = 0.02,
        slots: int = DEFAULT_SLOTS,
        max_lag_ticks: int = 5,
        phase: float | None = None,
    ) -> None:
        if phase is not None and not 0.0 <= phase < 1.0:
            raise ValueError(f"phase must be in [0, 1), not {phase}")
        if slots < 1:
            raise ValueError(f"slots must be 1 or more, not {slots}")
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.interval = interval
        self.max_lag_ticks = max_lag_ticks
        self._slots: list[_Slot[T]] = [_Slot(i, interval * i / slots) for i in range(slots)]
        self._slot_of: dict[Hashable, _Slot[T]] = {}
        # The origin of every slot's phase; set when the first item arrives, cleared
        # when the last one leaves (the next call starts a fresh schedule).
        self._epoch: float | None = None
        self.phase = phase
        """Where in the period (a fraction) slot 0 ticks, on the grid of multiples of
        ``interval`` of the monotonic clock, which every process of a machine shares:
        the media planes of a node's workers take phases apart (worker i of n: i / n),
        so that their ticks never wake together and compete for the cores. ``None``:
        the first stream's arrival sets the phase (a lone clock)."""
        self.resyncs = 0

    def __len__(self) -> int:
        return len(self._slot_of)

    @property
    def slots(self) -> int:
        return len(self._slots)

    def loads(self) -> list[int]:
        """Items per slot."""
        return [len(slot.items) for slot in self._slots]

    def slot_of(self, key: Hashable) -> int | None:
        slot = self._slot_of.get(key)
        return None if slot is None else slot.index

    def items(self) -> list[T]:
        """Every item, slot by slot."""
        return [item for slot in self._slots for item in slot.items.values()]

    def add(self, key: Hashable, item: T, now: float) -> int:
        """Put ``item`` in the least-loaded slot (lowest index on a tie); returns the
        slot. A slot that was empty is due at its next phase after ``now``."""
        if key in self._slot_of:
            self.remove(key)
        if self._epoch is None:
            if self.phase is None:
                # Slot 0's first tick one interval from now, as a lone clock would.
                self._epoch = now
            else:
                grid = math.floor(now / self.interval) * self.interval
                self._epoch = grid + self.phase * self.interval
        slot = min(self._slots, key=_load)
        if not slot.items:
            slot.due = self._next_phase(slot, now)
        slot.items[key] = item
        slot.snapshot = None
        self._slot_of[key] = slot
        return slot.index

    def remove(self, key: Hashable) -> int | None:
        """Take ``key`` out of its slot; returns the slot it was in (``None``: unknown)."""
        slot = self._slot_of.pop(key, None)
        if slot is None:
            return None
        del slot.items[key]
        slot.snapshot = None
        if not slot.items:
            slot.due = math.inf
            if not self._slot_of:
                self._epoch = None
        return slot.index

    def next_deadline(self) -> tuple[float, int] | None:
        """``(when, slot)`` of the earliest scheduled slot, or ``None`` when empty."""
        best: _Slot[T] | None = None
        for slot in self._slots:
            if slot.due != math.inf and (best is None or slot.due < best.due):
                best = slot
        return None if best is None else (best.due, best.index)

    def fire(self, index: int, now: float) -> tuple[Sequence[T], float]:
        """The timer of slot ``index`` fired at ``now``: its items to tick once each,
        and how late (seconds) the tick is. Advances the slot's deadline by one
        interval (catch-up), or to its next phase after ``now`` when it is more than
        ``max_lag_ticks`` behind. An empty slot gives no items."""
        slot = self._slots[index]
        if slot.due == math.inf:
            return (), 0.0
        late = now - slot.due
        slot.due += self.interval
        if now - slot.due > self.max_lag_ticks * self.interval:
            # The loop stalled: every overdue slot skips ahead together. (One at a time,
            # the slots still under the limit would burst their catch-up ticks first,
            # and the one that skipped would wait behind all of them.)
            for other in self._slots:
                if other is not slot and other.due <= now:
                    self.resyncs += 1
                    other.due = self._next_phase(other, now)
            self.resyncs += 1
            # at least half a period after this late tick: never two packets at once
            slot.due = self._next_phase(slot, now + self.interval / 2)
        snapshot = slot.snapshot
        if snapshot is None:
            snapshot = slot.snapshot = list(slot.items.values())
        return snapshot, late

    def _next_phase(self, slot: _Slot[T], now: float) -> float:
        """The first deadline of ``slot``'s phase strictly after ``now``."""
        assert self._epoch is not None
        base = self._epoch + slot.offset
        k = math.floor((now - base) / self.interval) + 1
        due = base + k * self.interval
        # floor() on a value a rounding error below an integer: never due at or before now
        while due <= now:
            due += self.interval
        return due


def _load(slot: _Slot[T]) -> int:
    return len(slot.items)
