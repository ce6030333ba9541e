"""Node-wide B-channel accounting for a node of several worker processes.

A T1 span has 23 B-channels whichever worker places or takes a call on it, so the
workers of one node share one table: a byte per B-channel in a memory-mapped file of
the node's data directory, 0 for free, else the number (1..255) of the worker that
holds it. A seize is one ``flock`` plus a ``find`` of a zero byte (microseconds, no
round trip to another process, synchronous like the in-process heap it replaces);
when a worker dies, the front gives back every channel marked with its number
(:meth:`SharedChannels.reclaim`).

Each trunk owns a contiguous slice of the table, in the order of the trunk names, so
every process derives the same layout from the same configuration
(:func:`channel_layout`). A single-process node does not use this module: its trunks
keep their free channels in a heap (:class:`pri.trunk.Trunk`).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

__all__ = ["ChannelTable", "SharedChannels", "channel_layout"]


class ChannelTable(Protocol):
    """Where a trunk takes and gives back B-channels (slot numbers of the node)."""

    def take(self, base: int, count: int) -> int | None:
        """Mark the lowest free slot in ``[base, base+count)`` as ours; its offset
        from ``base``, or ``None`` when all are held."""

    def give(self, slot: int) -> None:
        """Free ``slot`` (ours)."""

    def free(self, base: int, count: int) -> int:
        """Free slots in ``[base, base+count)``."""


def channel_layout(capacities: Mapping[str, int]) -> tuple[dict[str, int], int]:
    """Trunk name -> first slot, and the table size, from each trunk's capacity."""
    bases: dict[str, int] = {}
    size = 0
    for name in sorted(capacities):
        bases[name] = size
        size += capacities[name]
    return bases, size


class SharedChannels:
    """The node's B-channel table, shared by its processes (see the module docstring).

    ``owner`` is this process's mark, 1..255 (a worker's index + 1); the front opens it
    with ``owner=0`` and ``create=True`` (zeroed, sized) before starting workers."""

    def __init__(
        self, path: str | os.PathLike[str], size: int, *, owner: int, create: bool
    ) -> None:
        if not 0 <= owner <= 255:
            raise ValueError("owner must be 0..255")
        self.path = Path(path)
        self.owner = owner
        self.size = size
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        self._fd = os.open(self.path, flags, 0o600)
        if create:
            os.ftruncate(self._fd, max(size, 1))
        self._mm = mmap.mmap(self._fd, max(size, 1))

    def _lock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def take(self, base: int, count: int) -> int | None:
        mm = self._mm
        self._lock()
        try:
            at = mm.find(b"\x00", base, base + count)
            if at < 0:
                return None
            mm[at] = self.owner
            return at - base
        finally:
            self._unlock()

    def give(self, slot: int) -> None:
        self._lock()
        try:
            if self._mm[slot] == self.owner:
                self._mm[slot] = 0
        finally:
            self._unlock()

    def free(self, base: int, count: int) -> int:
        return self._mm[base : base + count].count(0)

    def held_by(self, owner: int) -> int:
        """Slots marked with ``owner``."""
        return self._mm[:].count(owner)

    def reclaim(self, owner: int) -> int:
        """Free every slot held by ``owner`` (a worker that died); how many."""
        self._lock()
        try:
            data = bytearray(self._mm[:])
            n = data.count(owner)
            if n:
                self._mm[:] = bytes(0 if b == owner else b for b in data)
            return n
        finally:
            self._unlock()

    def close(self) -> None:
        self._mm.close()
        os.close(self._fd)
