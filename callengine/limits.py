"""Limits on what one source or one tenant can make the node do (sans-IO, fake-clock tested).

:class:`SourceLimiter` sits in front of the SIP core, like Kamailio's ``pike``: every
datagram (or framed stream message) from an address spends a token of that address's
bucket (``rate`` per second, up to ``burst``). An address that runs dry is dropped
without parsing; one that keeps sending faster than ``rate`` (``ban_after`` drops
before its bucket is full again) is banned for ``ban`` seconds, and the ban is logged once, in a line fail2ban can read::

    flood from 192.0.2.7: banned for 60 s (rate 100/s exceeded)

Exempt addresses (the node's balancers, trunk gateways, trusted sources, loopback by
default) are never limited: a Kamailio in front sends everything from one address.
The table of addresses is bounded (``max_sources``): idle entries are swept first,
then the oldest; an attacker spraying source addresses cannot grow it.

:class:`CallCaps` caps concurrent calls and new calls per second per key (a source
address, a tenant), each key's limits given by the caller; memory is bounded the same
way (keys with no call in progress and a full bucket are forgotten).
:class:`CapsTable` is the same for the worker processes of one node, in one shared
buffer, so that N workers admit what one process would, not N times it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

__all__ = [
    "DROP_BACKLOG",
    "BacklogGate",
    "CallCaps",
    "Caps",
    "CapsTable",
    "LogThrottle",
    "SourceLimiter",
    "networks_matcher",
]

log = logging.getLogger(__name__)

_EXEMPT: Final = -1.0  # the banned-until slot of an exempt address
_HASH: Final = struct.Struct("=Q")


DROP_BACKLOG: Final = 512 * 1024
"""Bytes waiting for a node's SIP core (kernel accounting, ~1-2 KB per datagram) beyond
which new INVITEs are dropped unread until it is down to a quarter of that."""


class BacklogGate:
    """Whether new INVITEs are dropped unread, from the bytes queued ahead of them: shut
    at ``high`` (:data:`DROP_BACKLOG`), open again once below a quarter of it (so that
    it does not flap around one value). The front of a multi-worker node keeps one per
    worker (what the front handed over that the worker has not read yet)."""

    def __init__(self, high: int = DROP_BACKLOG) -> None:
        self.high = high
        self.shut = False

    def update(self, queued: int) -> bool:
        """The gate after ``queued`` bytes were seen waiting: True while shut."""
        self.shut = queued > self.high // 4 if self.shut else queued >= self.high
        return self.shut


def networks_matcher(networks: Iterable[str]) -> Callable[[str], bool]:
    """A predicate: is this address inside one of ``networks`` (CIDR strings)?"""
    nets = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def match(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in nets)

    return match


class SourceLimiter:
    """Per-source message rate limit with temporary bans (see the module docstring)."""

    def __init__(
        self,
        *,
        rate: float,
        burst: float,
        ban: float = 60.0,
        ban_after: int = 0,
        exempt: Callable[[str], bool] = lambda address: False,
        max_sources: int = 65536,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.ban = ban
        self.ban_after = ban_after if ban_after > 0 else int(burst)
        self.exempt = exempt
        self.max_sources = max_sources
        # address -> [tokens, last refill, banned until (or _EXEMPT), drops since calm]
        self._table: dict[str, list[float]] = {}
        self.dropped = 0
        """Messages dropped (rate exceeded or banned)."""
        self.bans = 0
        """Bans started."""

    def __len__(self) -> int:
        return len(self._table)

    def allow(self, address: str, now: float) -> bool:
        """Spend one token of ``address``; ``False``: drop the message unread."""
        entry = self._table.get(address)
        if entry is None:
            if len(self._table) >= self.max_sources:
                self._sweep(now)
            banned = _EXEMPT if self.exempt(address) else 0.0
            entry = self._table[address] = [self.burst, now, banned, 0.0]
        banned_until = entry[2]
        if banned_until == _EXEMPT:
            return True
        if banned_until > now:
            self.dropped += 1
            return False
        tokens = min(self.burst, entry[0] + (now - entry[1]) * self.rate)
        entry[1] = now
        if tokens >= 1.0:
            entry[0] = tokens - 1.0
            if tokens >= self.burst:
                entry[3] = 0.0  # calm again (a full bucket): past drops are forgiven
            return True
        entry[0] = tokens
        self.dropped += 1
        entry[3] += 1
        if self.ban > 0 and entry[3] >= self.ban_after:
            entry[2] = now + self.ban
            entry[3] = 0.0
            self.bans += 1
            log.warning(
                "flood from %s: banned for %g s (rate %g/s exceeded)", address, self.ban, self.rate
            )
        return False

    def banned(self, now: float) -> list[str]:
        """Addresses banned at ``now``."""
        return [a for a, e in self._table.items() if e[2] > now]

    def _sweep(self, now: float) -> None:
        """Forget idle entries (full bucket, not banned); if that is not enough, the
        oldest half. Amortised: runs when the table is full."""
        rate, burst = self.rate, self.burst
        for address, e in list(self._table.items()):
            if e[2] == _EXEMPT or (e[2] <= now and e[0] + (now - e[1]) * rate >= burst):
                del self._table[address]
        if len(self._table) >= self.max_sources:
            for address in list(self._table)[: len(self._table) // 2]:
                del self._table[address]


class Caps(Protocol):
    """What the engine asks of its call caps: :class:`CallCaps` in one process, the
    shared table of a multi-worker node (``callengine.cluster.SharedCaps``)."""

    refused: dict[str, int]

    def admit(
        self, key: str, now: float, *, max_calls: int = 0, cps: float = 0.0
    ) -> str | None: ...

    def release(self, key: str) -> None: ...

    def active(self, key: str) -> int: ...


class CallCaps:
    """Concurrent calls and call rate per key (a source address, a tenant).

    ``admit(key, now, max_calls=..., cps=...)`` returns ``None`` and counts the call in,
    or the reason it is refused (``"calls"``: too many in progress; ``"rate"``: too many
    per second); ``release(key)`` when the call ends. A limit of 0 is no limit.
    """

    def __init__(self, *, max_keys: int = 65536) -> None:
        self.max_keys = max_keys
        self._active: dict[str, int] = {}
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill, cps]
        self.refused: dict[str, int] = {}
        """Refusals by ``"<kind>:<reason>"`` (e.g. ``source:rate``)."""

    def active(self, key: str) -> int:
        return self._active.get(key, 0)

    def admit(self, key: str, now: float, *, max_calls: int = 0, cps: float = 0.0) -> str | None:
        if max_calls and self._active.get(key, 0) >= max_calls:
            return self._refuse(key, "calls")
        if cps > 0:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._sweep(now)
                bucket = self._buckets[key] = [max(cps, 1.0), now, cps]
            tokens = min(max(cps, 1.0), bucket[0] + (now - bucket[1]) * cps)
            bucket[1] = now
            if tokens < 1.0:
                bucket[0] = tokens
                return self._refuse(key, "rate")
            bucket[0] = tokens - 1.0
        self._active[key] = self._active.get(key, 0) + 1
        return None

    def release(self, key: str) -> None:
        n = self._active.get(key, 0) - 1
        if n > 0:
            self._active[key] = n
        else:
            self._active.pop(key, None)

    def _refuse(self, key: str, reason: str) -> str:
        label = f"{key.split(':', 1)[0]}:{reason}"
        self.refused[label] = self.refused.get(label, 0) + 1
        return reason

    def _sweep(self, now: float) -> None:
        for key, (tokens, at, cps) in list(self._buckets.items()):
            if tokens + (now - at) * cps >= max(cps, 1.0):
                del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            for key in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[key]


class LogThrottle:
    """At most one log line per ``interval`` seconds per kind of event, saying how many
    were left unsaid: a flood must not become a flood of log lines. ``kind`` is a fixed
    name (never a value from the network), so the table stays small."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def ready(self, kind: str, now: float) -> int | None:
        """``None``: stay quiet (counted); else log now, mentioning the returned count of
        events not logged since the previous line."""
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._quiet.pop(kind, 0)


class CapsTable:
    """:class:`CallCaps` for the processes of one node, in one shared buffer (sans-IO).

    The buffer (a memory map the workers share, or a ``bytearray`` in the tests) holds
    an open-addressing table of keys (a 64-bit hash of each key: calls in progress,
    bucket tokens, last refill, calls per second), then one table per worker of what
    that worker holds (key hash -> calls). The caller serialises access (the shell
    takes an ``flock`` around each call). When a worker dies, :meth:`reclaim` takes its
    calls back out of the node's counts.

    Memory is bounded as in :class:`CallCaps`: when a table is more than half full,
    keys with no call in progress and a full bucket are forgotten (the table is rebuilt
    in place); if it is still full, the new key is refused (``"rate"``), as a flood of
    distinct sources should be.
    """

    _HEAD = struct.Struct("=4sII")  # magic, slots per table, worker tables
    _USED = struct.Struct("=I")  # slots in use: the keys' table, then each worker's
    _KEY = struct.Struct("=Qqddd")  # hash, calls, tokens, last refill, cps
    _HELD = struct.Struct("=Qq")  # hash, calls held by the worker
    MAGIC = b"cap1"

    def __init__(self, buf: memoryview | bytearray, *, slots: int, workers: int) -> None:
        self.buf = memoryview(buf)
        self.slots = slots
        self.workers = workers
        self._keys_at = self._HEAD.size + self._USED.size * (workers + 1)
        self._held_at = self._keys_at + self._KEY.size * slots
        if len(self.buf) < self.size(slots, workers):
            raise ValueError("buffer too small for the caps table")

    @classmethod
    def size(cls, slots: int, workers: int) -> int:
        """Bytes a table of ``slots`` keys and ``workers`` worker tables takes."""
        head = cls._HEAD.size + cls._USED.size * (workers + 1)
        return head + (cls._KEY.size + cls._HELD.size * workers) * slots

    @classmethod
    def create(cls, buf: memoryview | bytearray, *, slots: int, workers: int) -> CapsTable:
        """Format a zeroed buffer."""
        cls._HEAD.pack_into(buf, 0, cls.MAGIC, slots, workers)
        return cls(buf, slots=slots, workers=workers)

    @classmethod
    def attach(cls, buf: memoryview | bytearray) -> CapsTable:
        """Open a buffer :meth:`create` formatted (another process's view of it)."""
        magic, slots, workers = cls._HEAD.unpack_from(buf, 0)
        if magic != cls.MAGIC:
            raise ValueError("not a caps table")
        return cls(buf, slots=slots, workers=workers)

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def key_hash(key: str) -> int:
        h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
        return h or 1  # 0 marks an empty slot

    # ------------------------------------------------------------------ lookups
    def _find(self, base: int, entry: struct.Struct, h: int) -> tuple[int, bool]:
        """(offset of ``h``'s slot, found) in the table at ``base``; offset -1 when
        ``h`` is absent and the table has no empty slot."""
        buf = self.buf
        slots = self.slots
        i = h % slots
        for _ in range(slots):
            at = base + entry.size * i
            (seen,) = _HASH.unpack_from(buf, at)
            if seen == h:
                return at, True
            if seen == 0:
                return at, False
            i = (i + 1) % slots
        return -1, False

    def _used_at(self, base: int) -> int:
        """Where the count of slots in use of the table at ``base`` is kept."""
        table = (
            0
            if base == self._keys_at
            else 1 + (base - self._held_at) // (self._HELD.size * self.slots)
        )
        return self._HEAD.size + self._USED.size * table

    def _used(self, base: int) -> int:
        return int(self._USED.unpack_from(self.buf, self._used_at(base))[0])

    def _set_used(self, base: int, n: int) -> None:
        self._USED.pack_into(self.buf, self._used_at(base), n)

    def _held_base(self, worker: int) -> int:
        if not 0 <= worker < self.workers:
            raise ValueError(f"no worker table {worker}")
        return self._held_at + self._HELD.size * self.slots * worker

    # --------------------------------------------------------------- operations
    def active(self, key: str) -> int:
        at, found = self._find(self._keys_at, self._KEY, self.key_hash(key))
        return self._KEY.unpack_from(self.buf, at)[1] if found else 0

    def admit(
        self, worker: int, key: str, now: float, *, max_calls: int = 0, cps: float = 0.0
    ) -> str | None:
        """Count a call for ``key`` held by ``worker``; else ``"calls"`` or ``"rate"``.

        A key without limits is counted while there is room, and admitted uncounted
        when there is none (nothing to enforce for it)."""
        h = self.key_hash(key)
        limited = bool(max_calls) or cps > 0
        refuse = "rate" if limited else None
        keys = self._keys_at
        at, found = self._find(keys, self._KEY, h)
        if not found and (at < 0 or self._crowded(keys)):
            self._sweep_keys(now)
            at, found = self._find(keys, self._KEY, h)
            if at < 0 or self._crowded(keys):
                return refuse
        if found:
            _, calls, tokens, last, _ = self._KEY.unpack_from(self.buf, at)
        else:
            calls, tokens, last = 0, max(cps, 1.0), now
        if max_calls and calls >= max_calls:
            return "calls"
        if cps > 0:
            tokens = min(max(cps, 1.0), tokens + (now - last) * cps)
            if tokens < 1.0:
                if found:
                    self._KEY.pack_into(self.buf, at, h, calls, tokens, now, cps)
                return "rate"
            tokens -= 1.0
        held_base = self._held_base(worker)
        hat, hfound = self._find(held_base, self._HELD, h)
        if not hfound and (hat < 0 or self._crowded(held_base)):
            self._sweep_held(held_base)
            hat, hfound = self._find(held_base, self._HELD, h)
            if hat < 0 or self._crowded(held_base):
                return refuse
        if not found:
            self._set_used(keys, self._used(keys) + 1)
        self._KEY.pack_into(self.buf, at, h, calls + 1, tokens, now, cps)
        held = 0
        if hfound:
            held = self._HELD.unpack_from(self.buf, hat)[1]
        else:
            self._set_used(held_base, self._used(held_base) + 1)
        self._HELD.pack_into(self.buf, hat, h, held + 1)
        return None

    def release(self, worker: int, key: str) -> None:
        """One call of ``key`` held by ``worker`` ended."""
        h = self.key_hash(key)
        hat, hfound = self._find(self._held_base(worker), self._HELD, h)
        if not hfound:
            return
        held = self._HELD.unpack_from(self.buf, hat)[1]
        if held <= 0:
            return
        self._HELD.pack_into(self.buf, hat, h, held - 1)
        self._take_back(h, 1)

    def reclaim(self, worker: int) -> int:
        """``worker`` died: its calls no longer count. Returns how many it held."""
        base = self._held_base(worker)
        total = 0
        for i in range(self.slots):
            at = base + self._HELD.size * i
            h, held = self._HELD.unpack_from(self.buf, at)
            if h and held > 0:
                self._take_back(h, held)
                total += held
        self._rebuild(base, self._HELD, [])
        return total

    def _take_back(self, h: int, n: int) -> None:
        at, found = self._find(self._keys_at, self._KEY, h)
        if found:
            _, calls, tokens, last, cps = self._KEY.unpack_from(self.buf, at)
            self._KEY.pack_into(self.buf, at, h, max(calls - n, 0), tokens, last, cps)

    # ------------------------------------------------------------------ bounds
    def _crowded(self, base: int) -> bool:
        return self._used(base) * 2 >= self.slots

    def _sweep_keys(self, now: float) -> None:
        keep = []
        for i in range(self.slots):
            h, calls, tokens, last, cps = self._KEY.unpack_from(
                self.buf, self._keys_at + self._KEY.size * i
            )
            if h and (calls > 0 or tokens + (now - last) * cps < max(cps, 1.0)):
                keep.append((h, calls, tokens, last, cps))
        self._rebuild(self._keys_at, self._KEY, keep)

    def _sweep_held(self, base: int) -> None:
        keep = []
        for i in range(self.slots):
            h, held = self._HELD.unpack_from(self.buf, base + self._HELD.size * i)
            if h and held > 0:
                keep.append((h, held))
        self._rebuild(base, self._HELD, keep)

    def _rebuild(self, base: int, entry: struct.Struct, keep: list[Any]) -> None:
        self.buf[base : base + entry.size * self.slots] = bytes(entry.size * self.slots)
        self._set_used(base, len(keep))
        for values in keep:
            at, _ = self._find(base, entry, values[0])
            entry.pack_into(self.buf, at, *values)
