"""AuthGuard (brute-force limits) and the used-nonce registry, with a fake clock."""

from __future__ import annotations

import logging
import re

import pytest

from callengine.sip.auth import (
    REPLAYED,
    WRONG_RESPONSE,
    AuthStatus,
    DigestClient,
    DigestServer,
    UsedNonces,
)
from callengine.sip.authguard import AuthGuard, GuardConfig, Verdict, escape_log_value

T0 = 1_700_000_000.0
SECRET = b"guard test secret"
ATTACKER = "203.0.113.9"
PHONE = "198.51.100.7"
# deploy/fail2ban/filter.d/callengine.conf, with <HOST> as fail2ban expands it
FAILREGEX = re.compile(
    r"^\S+ \S+ WARNING callengine\.security \[-\] "
    r"SIP auth failure from (?P<host>[0-9a-fA-F.:]+) port \d+ "
)


def fail(guard: AuthGuard, address: str, user: str | None, now: float) -> Verdict:
    return guard.failure(address, user, now, reason="wrong-password", claimed_user=user or "x")


def test_source_banned_after_limit_within_window() -> None:
    guard = AuthGuard(GuardConfig(source_limit=3, ban_time=60, user_limit=0))
    assert fail(guard, ATTACKER, None, T0) is Verdict.ALLOW
    assert fail(guard, ATTACKER, None, T0 + 1) is Verdict.ALLOW
    assert guard.check(ATTACKER, None, T0 + 2) is Verdict.ALLOW
    assert fail(guard, ATTACKER, None, T0 + 2) is Verdict.BANNED
    assert guard.banned(ATTACKER, T0 + 61.9)
    assert guard.check(ATTACKER, "alice", T0 + 30) is Verdict.BANNED
    assert guard.check(PHONE, "alice", T0 + 30) is Verdict.ALLOW  # others are not affected
    assert not guard.banned(ATTACKER, T0 + 62)
    assert guard.counters == {"failure:wrong-password": 3, "ban": 1, "banned": 1}


def test_failures_outside_the_window_do_not_add_up() -> None:
    guard = AuthGuard(GuardConfig(source_limit=3, window=10, user_limit=0))
    for i in range(10):  # one failure every 6 s: never 3 within 10 s
        assert fail(guard, ATTACKER, None, T0 + 6 * i) is Verdict.ALLOW
    assert not guard.banned(ATTACKER, T0 + 60)


def test_repeated_bans_double_up_to_max_then_quiet_time_forgives() -> None:
    cfg = GuardConfig(source_limit=2, ban_time=10, max_ban=35, window=5, user_limit=0)
    guard = AuthGuard(cfg)
    now = T0
    lengths = []
    for _ in range(4):
        fail(guard, ATTACKER, None, now)
        fail(guard, ATTACKER, None, now)
        start = now
        while guard.banned(ATTACKER, now):
            now += 1
        lengths.append(now - start)
    assert lengths == [10, 20, 35, 35]
    now += cfg.window * 10  # a long quiet time
    fail(guard, ATTACKER, None, now)
    fail(guard, ATTACKER, None, now)
    assert guard.banned(ATTACKER, now + 9) and not guard.banned(ATTACKER, now + 10)


def test_success_resets_a_source() -> None:
    guard = AuthGuard(GuardConfig(source_limit=3, user_limit=0))
    fail(guard, PHONE, "alice", T0)
    fail(guard, PHONE, "alice", T0)
    guard.success(PHONE, "alice", T0 + 1)
    fail(guard, PHONE, "alice", T0 + 2)
    fail(guard, PHONE, "alice", T0 + 2)
    assert not guard.banned(PHONE, T0 + 2)


def test_user_backoff_slows_a_distributed_guesser_but_not_the_owner() -> None:
    guard = AuthGuard(GuardConfig(source_limit=0, user_limit=3, backoff=2, max_backoff=16))
    guard.success(PHONE, "alice", T0)  # the phone registered earlier from here
    addresses = (f"203.0.113.{i}" for i in range(1, 1000))
    for _ in range(3):
        fail(guard, next(addresses), "alice", T0 + 1)
    bot = next(addresses)
    assert guard.check(bot, "alice", T0 + 1) is Verdict.CHALLENGE
    assert guard.check(bot, "alice", T0 + 3) is Verdict.ALLOW  # 2 s back-off
    assert guard.check(PHONE, "alice", T0 + 1) is Verdict.ALLOW  # the owner is exempt
    assert guard.check(bot, "bob", T0 + 1) is Verdict.ALLOW  # other users unaffected
    # each further failure doubles the back-off, capped at max_backoff
    delays = []
    now = T0 + 3
    for _ in range(6):
        fail(guard, next(addresses), "alice", now)
        start = now
        while guard.check(bot, "alice", now) is Verdict.CHALLENGE:
            now += 1
        delays.append(now - start)
    assert delays == [4, 8, 16, 16, 16, 16]
    # the real user at a new address is slowed for at most max_backoff, never locked out
    assert guard.check("192.0.2.50", "alice", now) is Verdict.ALLOW


def test_unknown_users_are_not_tracked_and_memory_is_bounded() -> None:
    guard = AuthGuard(GuardConfig(max_tracked=100, source_limit=1000))
    for i in range(5000):
        guard.failure(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", None, T0, reason="x")
        guard.failure("10.0.0.1", f"user{i}", T0, reason="x")
    assert guard.tracked == (100, 100)


def test_log_line_matches_the_fail2ban_filter_and_escapes_the_user(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = AuthGuard(GuardConfig(source_limit=2))
    evil = 'x" from 192.0.2.66 port 1 \n2026-01-01 00:00:00,000 WARNING forged'
    with caplog.at_level(logging.WARNING, logger="callengine.security"):
        guard.failure(ATTACKER, None, T0, reason="unknown-user", port=5062, claimed_user=evil)
        guard.failure(ATTACKER, None, T0, reason="unknown-user", port=5062, claimed_user="100")
    # the daemon's plain format (callengine/logs.py)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(call_id)s] %(message)s")
    lines = [formatter.format(r) for r in caplog.records]
    assert all("\n" not in line for line in lines)
    hosts = [m.group("host") if (m := FAILREGEX.match(line)) else None for line in lines]
    assert hosts == [ATTACKER] * 2
    assert caplog.records[0].getMessage() == (
        "SIP auth failure from 203.0.113.9 port 5062 UDP: reason=unknown-user method="
        '"REGISTER" user="x\\" from 192.0.2.66 port 1 \\x0a2026-01-01 00:00:00,000 WARNING forge..." '
        'realm="" action=none'
    )
    assert caplog.records[1].getMessage().endswith("action=ban 60s")


def test_escape_log_value() -> None:
    assert escape_log_value('a\r\nb\x00\\"é') == '"a\\x0d\\x0ab\\x00\\\\\\"\\xe9"'
    assert escape_log_value("y" * 100, 3) == '"yyy..."'


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        GuardConfig(window=0)
    with pytest.raises(ValueError):
        GuardConfig(ban_time=100, max_ban=10)


# -- the used-nonce registry (DigestServer) ------------------------------------------


def credentials(server: DigestServer, password: str = "pw", *, now: float = T0) -> str:
    challenge = server.challenge(now)[1]  # MD5
    return DigestClient("alice", password).authorize("REGISTER", "sip:x", challenge)


def test_captured_credentials_are_accepted_once() -> None:
    server = DigestServer("example.com", SECRET)
    value = credentials(server)
    lookup = {"alice": "pw"}.get
    assert server.verify("REGISTER", value, lookup, T0).ok
    replay = server.verify("REGISTER", value, lookup, T0 + 1)
    assert (replay.status, replay.reason) == (AuthStatus.STALE, REPLAYED)


def test_rfc2069_nonce_is_single_use() -> None:
    server = DigestServer("example.com", SECRET, algorithms=("MD5",))
    nonce = server.make_nonce(T0)
    value = DigestClient("alice", "pw").authorize(
        "REGISTER", "sip:x", f'Digest realm="example.com", nonce="{nonce}"'
    )
    assert "qop" not in value
    lookup = {"alice": "pw"}.get
    assert server.verify("REGISTER", value, lookup, T0).ok
    assert server.verify("REGISTER", value, lookup, T0).reason == REPLAYED


def test_wrong_password_burns_the_nonce() -> None:
    server = DigestServer("example.com", SECRET)
    challenge = server.challenge(T0)[0]
    guesser = DigestClient("alice", "guess1")
    lookup = {"alice": "pw"}.get
    first = server.verify("REGISTER", guesser.authorize("REGISTER", "sip:x", challenge), lookup, T0)
    assert (first.status, first.reason) == (AuthStatus.BAD, WRONG_RESPONSE)
    # the right password on the same nonce is not even checked: a new challenge is needed
    right = DigestClient("alice", "pw").authorize("REGISTER", "sip:x", challenge)
    assert server.verify("REGISTER", right, lookup, T0).reason == REPLAYED
    assert server.verify("REGISTER", credentials(server), lookup, T0).ok


def test_registry_is_bounded_and_eviction_never_reopens_a_replay() -> None:
    server = DigestServer("example.com", SECRET, max_nonces=50)
    lookup = {"alice": "pw"}.get
    values = [credentials(server, now=T0 + i * 0.01) for i in range(200)]
    for i, value in enumerate(values):
        assert server.verify("REGISTER", value, lookup, T0 + 2 + i * 0.01).ok
    assert server.nonces_tracked == 50
    # the first ones were pushed out: replaying them is still refused
    assert server.verify("REGISTER", values[0], lookup, T0 + 5).reason == REPLAYED
    assert server.verify("REGISTER", values[149], lookup, T0 + 5).reason == REPLAYED
    assert server.verify("REGISTER", credentials(server, now=T0 + 5), lookup, T0 + 5).ok


def test_expired_nonces_leave_the_registry() -> None:
    server = DigestServer("example.com", SECRET, nonce_ttl=60)
    lookup = {"alice": "pw"}.get
    for i in range(20):
        assert server.verify("REGISTER", credentials(server, now=T0 + i), lookup, T0 + i).ok
    assert server.nonces_tracked == 20
    assert server.verify("REGISTER", credentials(server, now=T0 + 200), lookup, T0 + 200).ok
    assert server.nonces_tracked == 1


def test_one_registry_bounds_several_realms() -> None:
    used = UsedNonces(max_nonces=10)
    servers = [DigestServer(f"r{i}.example", SECRET, used=used) for i in range(5)]
    lookup = {"alice": "pw"}.get
    for i in range(20):
        server = servers[i % 5]
        now = T0 + i * 0.01  # later nonces than any pushed out
        challenge = server.challenge(now)[1]
        value = DigestClient("alice", "pw").authorize("REGISTER", "sip:x", challenge)
        assert server.verify("REGISTER", value, lookup, now).ok
        assert server.verify("REGISTER", value, lookup, now).reason == REPLAYED
    assert len(used) == 10
    with pytest.raises(ValueError, match="nonce_ttl"):
        DigestServer("x", SECRET, nonce_ttl=600, used=used)


# -- one guard and one nonce registry for the workers of a node -------------------------


def workers(n: int, cfg: GuardConfig) -> list[AuthGuard]:
    """``n`` guards wired as callengine.cluster wires the workers' (each event applied
    by every other guard, at once)."""
    guards = [AuthGuard(cfg) for _ in range(n)]
    for guard in guards:
        others = [g for g in guards if g is not guard]
        guard.on_event = lambda *event, others=others: [g.apply(*event) for g in others]
    return guards


def test_failures_on_any_worker_count_for_the_node_and_are_counted_once() -> None:
    a, b = workers(2, GuardConfig(source_limit=4, ban_time=60, user_limit=3, backoff=10))
    # a guesser whose requests alternate between the workers
    assert fail(a, ATTACKER, "alice", T0) is Verdict.ALLOW
    assert fail(b, ATTACKER, "alice", T0 + 1) is Verdict.ALLOW
    assert fail(a, ATTACKER, "alice", T0 + 2) is Verdict.ALLOW  # alice's 3rd: back-off
    assert b.check(PHONE, "alice", T0 + 3) is Verdict.CHALLENGE
    assert fail(b, ATTACKER, "alice", T0 + 3) is Verdict.BANNED  # the source's 4th
    assert a.check(ATTACKER, "bob", T0 + 4) is Verdict.BANNED
    assert a.banned(ATTACKER, T0 + 62) and not b.banned(ATTACKER, T0 + 64)
    # each failure, ban and back-off counted by the worker that saw it, once
    total: dict[str, int] = {}
    for guard in (a, b):
        for key, value in guard.counters.items():
            total[key] = total.get(key, 0) + value
    assert total == {
        "failure:wrong-password": 4,
        "backoff": 2,  # the 3rd failure, and the 4th within the back-off
        "ban": 1,
        "banned": 1,
        "challenge": 1,
    }
    # a success seen by one worker makes the phone a good address of alice on both
    b.success(PHONE, "alice", T0 + 5)
    assert a.check(PHONE, "alice", T0 + 6) is Verdict.ALLOW


def test_a_nonce_used_on_one_worker_is_used_up_on_every_worker() -> None:
    regs = [UsedNonces(), UsedNonces()]
    regs[0].on_use = regs[1].apply
    regs[1].on_use = regs[0].apply
    one, two = (DigestServer("example.com", SECRET, used=r) for r in regs)
    lookup = {"alice": "pw"}.get
    value = credentials(one)
    assert one.verify("REGISTER", value, lookup, T0).ok
    # the same credentials replayed to the other worker
    assert two.verify("REGISTER", value, lookup, T0 + 1).reason == REPLAYED
    # a count never goes back when uses arrive out of order
    nonce = one.make_nonce(T0)
    regs[1].apply(nonce, 5, T0, T0)
    regs[1].apply(nonce, 3, T0, T0)
    assert regs[1].used_up(nonce, 5, one.nonce_issued_at)
    assert not regs[1].used_up(nonce, 6, one.nonce_issued_at)


def test_a_worker_started_later_refuses_the_nonces_issued_before_it() -> None:
    server = DigestServer("example.com", SECRET)
    lookup = {"alice": "pw"}.get
    before = credentials(server, now=T0)
    server.used.refuse_issued_before(T0 + 1)
    assert server.verify("REGISTER", before, lookup, T0 + 2).reason == REPLAYED
    assert server.verify("REGISTER", credentials(server, now=T0 + 2), lookup, T0 + 2).ok
