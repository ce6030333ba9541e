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
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Final

__all__ = ["CallCaps", "LogThrottle", "SourceLimiter", "networks_matcher"]

log = logging.getLogger(__name__)

_EXEMPT: Final = -1.0  # the banned-until slot of an exempt address


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
