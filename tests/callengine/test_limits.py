"""callengine.limits with a fake clock: per-source flood limit and per-key call caps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callengine.limits import BacklogGate, CallCaps, CapsTable, SourceLimiter, networks_matcher


def test_bucket_refills_at_rate_and_drops_beyond_burst() -> None:
    lim = SourceLimiter(rate=10, burst=5, ban=0)
    assert [lim.allow("192.0.2.1", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert lim.dropped == 2
    assert lim.allow("192.0.2.1", 0.05) is False  # half a token
    assert lim.allow("192.0.2.1", 0.15) is True  # 1.5 tokens
    assert lim.allow("192.0.2.2", 0.15) is True  # another source has its own bucket


def test_a_source_that_keeps_flooding_is_banned_then_forgiven(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lim = SourceLimiter(rate=10, burst=5, ban=60, ban_after=3)
    for _ in range(5):
        assert lim.allow("192.0.2.9", 0.0)
    assert [lim.allow("192.0.2.9", 0.0) for _ in range(3)] == [False] * 3
    assert lim.bans == 1 and lim.banned(1.0) == ["192.0.2.9"]
    assert "flood from 192.0.2.9: banned for 60 s" in caplog.text
    assert lim.allow("192.0.2.9", 30.0) is False  # banned although the bucket refilled
    assert lim.allow("192.0.2.9", 61.0) is True
    assert lim.banned(61.0) == []


def test_exempt_sources_are_never_limited() -> None:
    lim = SourceLimiter(rate=1, burst=1, ban=60, exempt=networks_matcher(["10.0.0.0/8", "::1"]))
    assert all(lim.allow("10.1.2.3", 0.0) for _ in range(10_000))
    assert all(lim.allow("::1", 0.0) for _ in range(100))
    assert lim.allow("192.0.2.1", 0.0) and not lim.allow("192.0.2.1", 0.0)


def test_table_of_sources_is_bounded_under_address_spraying() -> None:
    lim = SourceLimiter(rate=1, burst=2, ban=60, ban_after=1, max_sources=1000)
    for i in range(50_000):
        lim.allow(f"198.51.{i // 256 % 256}.{i % 256}:{i}", i * 1e-4)
    assert len(lim) <= 1000
    # an attacker banned a moment ago stays banned while the table churns idle entries
    for _ in range(3):
        lim.allow("203.0.113.5", 5.0)
    assert not lim.allow("203.0.113.5", 5.0)
    for i in range(600):
        lim.allow(f"198.18.0.{i}", 5.0 + 10)  # earlier entries are idle by now
    assert not lim.allow("203.0.113.5", 16.0)


def test_call_caps_per_key_concurrency_and_rate() -> None:
    caps = CallCaps()
    assert caps.admit("source:a", 0.0, max_calls=2) is None
    assert caps.admit("source:a", 0.0, max_calls=2) is None
    assert caps.admit("source:a", 0.0, max_calls=2) == "calls"
    caps.release("source:a")
    assert caps.active("source:a") == 1
    assert caps.admit("source:a", 0.0, max_calls=2) is None
    # rate: 2 per second, a burst of 2
    assert [caps.admit("tenant:t", 0.0, cps=2) for _ in range(3)] == [None, None, "rate"]
    assert caps.admit("tenant:t", 0.5, cps=2) is None
    assert caps.refused == {"source:calls": 1, "tenant:rate": 1}
    for _ in range(4):
        caps.release("source:a")
        caps.release("tenant:t")
    assert caps.active("source:a") == 0 and caps.active("tenant:t") == 0


def test_call_caps_buckets_are_bounded() -> None:
    caps = CallCaps(max_keys=100)
    for i in range(10_000):
        caps.admit(f"source:{i}", i * 1.0, cps=1)
        caps.release(f"source:{i}")
    assert len(caps._buckets) <= 100 and not caps._active


def test_a_steady_flood_above_rate_is_banned_even_though_some_get_through() -> None:
    lim = SourceLimiter(rate=100, burst=10, ban=60, ban_after=50)
    passed = 0
    t = 0.0
    while lim.bans == 0 and t < 5.0:
        passed += lim.allow("192.0.2.3", t)
        t += 1 / 1500  # 15 times the rate: one in 15 finds a token
    assert lim.bans == 1 and t < 1.0 and passed > 10
    # a bursty but polite source is never banned: bursts of 10, then calm
    for second in range(100):
        for _ in range(12):
            lim.allow("192.0.2.4", float(second))
    assert "192.0.2.4" not in lim.banned(100.0)


def test_initial_invite_is_told_from_a_reinvite_without_parsing() -> None:
    from callengine.dispatch import initial_invite as _initial

    new = b"INVITE sip:1@h SIP/2.0\r\nVia: x\r\nTo: <sip:1@h>\r\nFrom: <sip:a@h>;tag=9\r\n\r\nv=0"
    assert _initial(new)
    assert not _initial(new.replace(b"To: <sip:1@h>", b"TO: <sip:1@h>;Tag=abc"))
    assert not _initial(new.replace(b"To: <sip:1@h>", b"t: <sip:1@h>;tag=abc"))
    assert _initial(new.replace(b"To: <sip:1@h>\r\n", b""))  # no To: the parser answers 400
    assert _initial(b"INVITE sip:1@h SIP/2.0\r\nTo: <sip:1@h>")  # no blank line yet


# --- CapsTable: the caps of a multi-worker node, in one shared buffer ---------------


def _table(slots: int = 64, workers: int = 2) -> CapsTable:
    return CapsTable.create(bytearray(CapsTable.size(slots, workers)), slots=slots, workers=workers)


def test_caps_table_counts_calls_once_for_all_workers() -> None:
    table = _table()
    other = CapsTable.attach(table.buf)  # a second process's view of the same map
    assert table.admit(0, "source:a", 0.0, max_calls=3) is None
    assert other.admit(1, "source:a", 0.0, max_calls=3) is None
    assert table.admit(1, "source:a", 0.0, max_calls=3) is None
    assert other.admit(0, "source:a", 0.0, max_calls=3) == "calls"  # 3 in the node
    assert (table.active("source:a"), other.active("source:a")) == (3, 3)
    other.release(1, "source:a")
    assert table.admit(0, "source:a", 0.0, max_calls=3) is None
    # one token bucket for the node: 2 per second, a burst of 2
    results = [t.admit(i % 2, "tenant:t", 0.0, cps=2) for i, t in enumerate([table, other] * 2)]
    assert results == [None, None, "rate", "rate"]
    assert other.admit(1, "tenant:t", 0.5, cps=2) is None
    assert table.active("tenant:t") == 3


def test_caps_table_release_only_what_a_worker_holds() -> None:
    table = _table()
    assert table.admit(0, "source:a", 0.0, max_calls=2) is None
    table.release(1, "source:a")  # worker 1 holds none of them: nothing to give back
    table.release(1, "source:never")
    assert table.active("source:a") == 1
    table.release(0, "source:a")
    table.release(0, "source:a")  # once only
    assert table.active("source:a") == 0


def test_caps_table_reclaims_a_dead_workers_calls() -> None:
    table = _table()
    for key in ("source:a", "source:a", "tenant:t", "node:"):
        assert table.admit(0, key, 0.0, max_calls=10) is None
    for key in ("source:a", "node:"):
        assert table.admit(1, key, 0.0, max_calls=10) is None
    assert table.reclaim(0) == 4
    assert [table.active(k) for k in ("source:a", "tenant:t", "node:")] == [1, 0, 1]
    assert table.reclaim(0) == 0  # nothing left to give back
    table.release(0, "source:a")  # a late release from the dead worker: no effect
    assert table.active("source:a") == 1
    assert table.reclaim(1) == 2 and table.active("node:") == 0


def test_caps_table_is_bounded_and_refuses_a_flood_of_new_keys() -> None:
    table = _table(slots=64, workers=1)
    # keys come and go (released, bucket full again by the next second): never full
    for i in range(5_000):
        assert table.admit(0, f"source:{i}", float(i), cps=1) is None
        table.release(0, f"source:{i}")
    # 32 keys each with a call in progress fill half the table: the next new key
    # with a limit is refused, one without a limit passes uncounted
    for i in range(32):
        assert table.admit(0, f"held:{i}", 10_000.0, max_calls=5) is None
    assert table.admit(0, "held:new", 10_000.0, max_calls=5) == "rate"
    assert table.admit(0, "unlimited", 10_000.0) is None
    assert table.active("unlimited") == 0
    assert table.admit(0, "held:3", 10_000.0, max_calls=5) is None  # known keys still count
    assert table.active("held:3") == 2
    for i in range(32):
        table.release(0, f"held:{i}")
    assert table.admit(0, "held:new", 10_000.0, max_calls=5) is None  # room again


def test_caps_table_refuses_a_buffer_it_did_not_format() -> None:
    with pytest.raises(ValueError, match="not a caps table"):
        CapsTable.attach(bytearray(CapsTable.size(8, 1)))
    with pytest.raises(ValueError, match="too small"):
        CapsTable(bytearray(16), slots=8, workers=1)
    with pytest.raises(ValueError, match="no worker table 2"):
        _table(workers=2).admit(2, "k", 0.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["admit", "release"]),
            st.integers(0, 2),  # worker
            st.sampled_from(["source:a", "source:b", "tenant:t"]),
            st.floats(0, 0.5),  # time step
        ),
        max_size=60,
    )
)
def test_caps_table_agrees_with_one_process_call_caps(
    ops: list[tuple[str, int, str, float]],
) -> None:
    """Whatever the workers do, the shared table admits exactly what one process's
    CallCaps would for the same sequence, and holds the same counts."""
    table = _table(slots=16, workers=3)
    model = CallCaps()
    held: dict[tuple[int, str], int] = {}
    now = 0.0
    for op, worker, key, step in ops:
        now += step
        if op == "admit":
            got = table.admit(worker, key, now, max_calls=3, cps=4)
            assert got == model.admit(key, now, max_calls=3, cps=4)
            if got is None:
                held[worker, key] = held.get((worker, key), 0) + 1
        elif held.get((worker, key), 0) > 0:
            held[worker, key] -= 1
            table.release(worker, key)
            model.release(key)
        for k in ("source:a", "source:b", "tenant:t"):
            assert table.active(k) == model.active(k)


def test_backlog_gate_shuts_at_the_limit_and_opens_below_a_quarter() -> None:
    gate = BacklogGate(high=1000)
    assert [gate.update(q) for q in (0, 999, 1000, 600, 251, 250, 999, 1000)] == [
        False,
        False,
        True,  # shut at the limit
        True,  # and stays shut while more than a quarter waits
        True,
        False,  # open again at a quarter
        False,
        True,
    ]
