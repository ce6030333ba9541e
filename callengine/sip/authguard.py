"""Brute-force limits for Digest authentication, sans-IO.

Theory of operation
-------------------
A password guesser sends many credentials, from one address or from many. The node
answers each one, so without limits it verifies thousands of guesses a second (issue 11).
:class:`AuthGuard` is fed the outcome of every check and answers one question before
the next: may this request's credentials be verified at all?

* **Per source address** (sliding window): ``source_limit`` failures within ``window``
  seconds ban the address for ``ban_time`` seconds, doubled for each ban in a row (up
  to ``max_ban``). While banned, its credentials are never checked
  (:attr:`Verdict.BANNED`): every REGISTER or challenged INVITE gets the same fresh
  401/407 challenge as anyone, so even the right password fails, and nothing tells the
  attacker that he is banned. (Not 403: sipvicious's svcrack, answered 403, asks again
  for a challenge without end (it ran until killed in our test); challenged, it runs through its list and
  stops, having learnt nothing. Not silence: the SIP core has no way to leave a
  REGISTER unanswered, and a timeout tells the attacker as much as a 403.) fail2ban,
  fed by the log, can drop the address at the firewall on top. A source that
  authenticates successfully starts again from zero.
* **Per user** (sliding window): ``user_limit`` failures for one user, from any
  addresses, put the user into back-off: its credentials are not verified
  (:attr:`Verdict.CHALLENGE`: the request is challenged again as if the password were
  wrong, and counted against the sending address as ``user-backoff``) until ``backoff``
  seconds after the last failure, doubled per extra failure up to ``max_backoff``.
  This slows a distributed guesser to a few guesses a minute
  for that user, but it must not lock the real user out: addresses where the user
  authenticated successfully (``good_sources`` of them, most recent first) are exempt
  from the user back-off, and the back-off is short.

Memory is bounded whatever the network sends: each table is an LRU of at most
``max_tracked`` keys, and each key keeps at most ``limit`` timestamps. Failures for
users that do not exist are counted against the source only (a user table keyed by
names an attacker makes up would be his to fill).

Every failure is logged as one line on the ``callengine.security`` logger in a fixed
format that fail2ban can read (``deploy/fail2ban/``); the address comes first, before
any value the peer chose, and those values are escaped, so a crafted user name can
neither forge a line nor make fail2ban ban someone else::

    SIP auth failure from 192.0.2.7 port 5060 UDP: reason=wrong-password
    method="REGISTER" user="100" realm="demo" action=none   (one line in the log)

``counters`` counts failures per reason and the guard's actions (bans, requests of
banned addresses, back-offs, requests during a back-off), for metrics.

A multi-worker node keeps one guard: each worker hands the failures and successes it
sees to the others (:attr:`AuthGuard.on_event`), which :meth:`~AuthGuard.apply` them
without logging or counting, so the limits count the node's requests whichever worker
each reached. (The front hands them over ahead of the next REGISTER or INVITE it
dispatches; two workers seeing a limit's last failure at the same instant may each
count the ban.)
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AuthGuard", "GuardConfig", "Verdict", "escape_log_value"]

log = logging.getLogger("callengine.security")


class Verdict(enum.Enum):
    """What to do with a request that carries (or needs) credentials."""

    ALLOW = "allow"
    """Verify the credentials as usual."""
    CHALLENGE = "challenge"
    """Do not verify; challenge again (the user is in back-off)."""
    BANNED = "banned"
    """Do not verify; challenge again (the source is banned)."""


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Limits of an :class:`AuthGuard`; the defaults suit one node on a public address."""

    window: float = 60.0
    """Seconds over which failures are counted (sliding)."""
    source_limit: int = 10
    """Failures from one address within ``window`` that ban it; 0 disables the bans."""
    ban_time: float = 60.0
    """First ban, in seconds; each ban that follows an earlier one doubles it."""
    max_ban: float = 3600.0
    user_limit: int = 5
    """Failures for one user (any address) within ``window`` that start its back-off;
    0 disables it."""
    backoff: float = 2.0
    """Back-off after ``user_limit`` failures, doubled per extra failure."""
    max_backoff: float = 60.0
    good_sources: int = 4
    """Addresses remembered per user where it authenticated (exempt from back-off)."""
    max_tracked: int = 10_000
    """Addresses and users tracked at most (least recently seen are forgotten)."""

    def __post_init__(self) -> None:
        if self.window <= 0 or self.ban_time <= 0 or self.backoff <= 0:
            raise ValueError("window, ban_time and backoff must be positive")
        if self.source_limit < 0 or self.user_limit < 0 or self.max_tracked < 1:
            raise ValueError("limits must not be negative (max_tracked at least 1)")
        if self.max_ban < self.ban_time or self.max_backoff < self.backoff:
            raise ValueError("max_ban >= ban_time and max_backoff >= backoff are needed")


@dataclass(slots=True)
class _Source:
    failures: deque[float]
    banned_until: float = 0.0
    bans: int = 0  # bans in a row (reset by a success or a quiet window)


@dataclass(slots=True)
class _User:
    failures: deque[float]
    blocked_until: float = 0.0
    strikes: int = 0  # back-offs in a row: each doubles the next
    good: tuple[str, ...] = ()


_ESCAPES = {'"': '\\"', "\\": "\\\\"}


def escape_log_value(value: str, limit: int = 64) -> str:
    """``value`` quoted for a log line: control characters, quotes, backslashes and
    non-ASCII as escapes, cut to ``limit`` characters (so one line stays one line)."""
    out = []
    for ch in value[:limit]:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
    if len(value) > limit:
        out.append("...")
    return '"' + "".join(out) + '"'


class AuthGuard:
    """Failure limits per source address and per user (see the module docstring).

    ``now`` is any monotonic clock in seconds (the tests pass a fake one).
    """

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._users: OrderedDict[str, _User] = OrderedDict()
        self.counters: dict[str, int] = {}
        """Failures by reason (``failure:<reason>``) and actions (``ban``, ``banned``,
        ``backoff``, ``challenge``)."""
        self.on_event: Callable[[str, str, str | None, float], None] | None = None
        """Called with each failure (``"fail"``) and success (``"ok"``) fed here, as
        ``(kind, address, user, now)``: a worker of a multi-worker node hands them to the
        others, which :meth:`apply` them, so that the node keeps one guard."""

    # -- bookkeeping -------------------------------------------------------------

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _source(self, address: str, create: bool) -> _Source | None:
        entry = self._sources.get(address)
        if entry is not None:
            self._sources.move_to_end(address)
        elif create:
            entry = _Source(deque(maxlen=max(1, self.config.source_limit)))
            self._sources[address] = entry
            if len(self._sources) > self.config.max_tracked:
                self._sources.popitem(last=False)
        return entry

    def _user(self, user: str, create: bool) -> _User | None:
        entry = self._users.get(user)
        if entry is not None:
            self._users.move_to_end(user)
        elif create:
            entry = _User(deque(maxlen=max(1, self.config.user_limit)))
            self._users[user] = entry
            if len(self._users) > self.config.max_tracked:
                self._users.popitem(last=False)
        return entry

    def _recent(self, failures: deque[float], now: float) -> int:
        horizon = now - self.config.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        return len(failures)

    @property
    def tracked(self) -> tuple[int, int]:
        """(addresses, users) currently tracked."""
        return len(self._sources), len(self._users)

    # -- the questions -------------------------------------------------------------

    def banned(self, address: str, now: float) -> bool:
        """True while ``address`` is banned (nothing is created for an unknown one)."""
        entry = self._sources.get(address)
        return entry is not None and now < entry.banned_until

    def check(self, address: str, user: str | None, now: float) -> Verdict:
        """Before verifying credentials from ``address`` for ``user`` (``None``: unknown)."""
        source = self._sources.get(address)
        if source is not None and now < source.banned_until:
            self._count("banned")
            return Verdict.BANNED
        if user is not None:
            entry = self._users.get(user)
            if entry is not None and now < entry.blocked_until and address not in entry.good:
                self._count("challenge")
                return Verdict.CHALLENGE
        return Verdict.ALLOW

    def failure(
        self,
        address: str,
        user: str | None,
        now: float,
        *,
        reason: str,
        port: int = 0,
        transport: str = "UDP",
        method: str = "REGISTER",
        claimed_user: str = "",
        realm: str = "",
    ) -> Verdict:
        """Record one failed check (``user=None`` for a user that does not exist) and log
        it. Returns what the guard now decides for this address (``BANNED`` when it has
        just been banned)."""
        self._count("failure:" + reason)
        action, verdict = self._failed(address, user, now)
        log.warning(
            "SIP auth failure from %s port %d %s: reason=%s method=%s user=%s realm=%s action=%s",
            address,
            port,
            transport,
            reason,
            escape_log_value(method, 16),
            escape_log_value(claimed_user or (user or "")),
            escape_log_value(realm),
            action,
            extra={"call_id": "-"},
        )
        if self.on_event is not None:
            self.on_event("fail", address, user, now)
        return verdict

    def apply(self, kind: str, address: str, user: str | None, now: float) -> None:
        """A failure or success another worker saw (its :attr:`on_event`): the limits move
        as if it had been seen here, without a log line or a count (that worker made
        them)."""
        if kind == "fail":
            self._failed(address, user, now, count=False)
        elif kind == "ok" and user is not None:
            self._succeeded(address, user, now)

    def _failed(
        self, address: str, user: str | None, now: float, *, count: bool = True
    ) -> tuple[str, Verdict]:
        cfg = self.config
        action = "none"
        verdict = Verdict.ALLOW
        if cfg.source_limit:
            source = self._source(address, create=True)
            assert source is not None
            if source.bans and now >= source.banned_until + cfg.window * 10:
                source.bans = 0  # a long quiet time forgives earlier bans
            source.failures.append(now)
            if self._recent(source.failures, now) >= cfg.source_limit:
                ban = min(cfg.max_ban, cfg.ban_time * 2.0**source.bans)
                source.bans += 1
                source.banned_until = now + ban
                source.failures.clear()
                if count:
                    self._count("ban")
                action = f"ban {ban:g}s"
                verdict = Verdict.BANNED
        if user is not None and cfg.user_limit:
            entry = self._user(user, create=True)
            assert entry is not None
            entry.failures.append(now)
            recent = self._recent(entry.failures, now)
            if recent >= cfg.user_limit:
                delay = min(cfg.max_backoff, cfg.backoff * 2.0**entry.strikes)
                entry.strikes += 1
                entry.blocked_until = now + delay
                if count:
                    self._count("backoff")
                if action == "none":
                    action = f"backoff {delay:g}s"
            else:
                entry.strikes = 0
        return action, verdict

    def success(self, address: str, user: str, now: float) -> None:
        """A successful authentication: the address starts again from zero and becomes
        one of the user's good addresses."""
        self._succeeded(address, user, now)
        if self.on_event is not None:
            self.on_event("ok", address, user, now)

    def _succeeded(self, address: str, user: str, now: float) -> None:
        source = self._sources.get(address)
        if source is not None and now >= source.banned_until:
            del self._sources[address]
        entry = self._user(user, create=self.config.user_limit > 0)
        if entry is not None and address not in entry.good:
            entry.good = (address, *entry.good)[: self.config.good_sources]
