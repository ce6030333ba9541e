"""The port pool's bookkeeping with a fake clock (no sockets; the shell's socket
tests are in test_session.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.portpool import PoolCore

T0 = 100.0


def test_an_empty_pool_misses_and_wants_its_size() -> None:
    core: PoolCore[str] = PoolCore(size=3)
    assert core.take(T0) is None and core.misses == 1
    assert core.wanted(T0) == 3
    for name in ("a", "b", "c"):
        core.added(name)
    assert core.wanted(T0) == 0 and core.bound == 3
    # oldest first
    assert [core.take(T0), core.take(T0)] == ["a", "b"] and core.hits == 2
    assert core.wanted(T0) == 2


def test_a_released_pair_rests_for_the_quarantine_then_serves_again() -> None:
    core: PoolCore[str] = PoolCore(size=1, quarantine=2.0)
    core.added("fresh")
    assert core.take(T0) == "fresh"
    assert core.release("fresh", T0 + 1.0)  # kept, resting until T0 + 3
    assert core.take(T0 + 2.9) is None  # a miss: it may not serve yet
    assert core.wanted(T0 + 2.9) == 1
    assert core.take(T0 + 3.0) == "fresh"
    assert core.reused == 1


def test_resting_pairs_become_ready_in_release_order_after_fresh_ones() -> None:
    core: PoolCore[str] = PoolCore(size=2, quarantine=1.0)
    core.added("p1")
    core.added("p2")
    first, second = core.take(T0), core.take(T0)
    assert core.release(second, T0)
    assert core.release(first, T0 + 0.1)
    core.added("p3")
    assert [core.take(T0 + 5), core.take(T0 + 5), core.take(T0 + 5)] == ["p3", "p2", "p1"]


def test_a_resting_pair_can_be_cut_short_for_a_call_that_would_be_refused() -> None:
    core: PoolCore[str] = PoolCore(size=1, quarantine=5.0)
    assert core.take_resting() is None
    core.release("old", T0)
    core.release("older", T0 + 1)
    assert core.take(T0 + 2) is None  # both resting
    assert core.take_resting() == "old" and core.early == 1
    assert list(core.cooling) == [(T0 + 6, "older")]


def test_the_pool_is_bounded_beyond_size_plus_max_cooling() -> None:
    core: PoolCore[int] = PoolCore(size=2, quarantine=1.0, max_cooling=3)
    kept = [core.release(i, T0) for i in range(5)]
    assert kept == [True, True, True, False, False] and core.discarded == 2
    # the rested ones come back as ready: 3 ready, 0 resting; size + max_cooling = 5 in all
    assert core.wanted(T0 + 1) == 0 and len(core.ready) == 3
    assert [core.release(i, T0 + 1) for i in range(10, 13)] == [True, True, False]


def test_a_failed_refill_backs_off_quietly() -> None:
    core: PoolCore[str] = PoolCore(size=4, retry_after=1.0)
    core.failed(T0)
    assert core.wanted(T0) == 0 and core.wanted(T0 + 0.99) == 0
    assert core.wanted(T0 + 1.0) == 4 and core.failures == 1


def test_size_zero_keeps_nothing() -> None:
    core: PoolCore[str] = PoolCore(size=0, max_cooling=5)
    assert core.take(T0) is None and core.misses == 0
    assert core.wanted(T0) == 0
    assert not core.release("x", T0) and core.discarded == 1
    with pytest.raises(ValueError, match="pool size must be 0 or more, not -1"):
        PoolCore(size=-1)


def test_drain_all_empties_the_pool() -> None:
    core: PoolCore[str] = PoolCore(size=2)
    core.added("a")
    core.release("b", T0)
    assert sorted(core.drain_all()) == ["a", "b"]
    assert not core.ready and not core.cooling


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(0, 6),
    max_cooling=st.integers(0, 6),
    ops=st.lists(st.tuples(st.sampled_from("tra"), st.floats(0, 1.0)), max_size=120),
)
def test_no_pair_is_ever_in_two_places_and_resting_ones_wait(
    size: int, max_cooling: int, ops: list[tuple[str, float]]
) -> None:
    """Takes, releases and refills in any order: a pair is in a call, ready, resting
    or closed (never two of these), the pool never holds more than ``size +
    max_cooling``, and no pair is taken within the quarantine of its release."""
    quarantine = 0.5
    core: PoolCore[int] = PoolCore(size=size, quarantine=quarantine, max_cooling=max_cooling)
    now = T0
    serial = 0
    in_call: set[int] = set()
    released_at: dict[int, float] = {}
    for op, wait in ops:
        now += wait
        if op == "t":
            pair = core.take(now)
            if pair is not None:
                assert pair not in in_call
                assert now - released_at.get(pair, -1e9) >= quarantine
                in_call.add(pair)
        elif op == "r" and in_call:
            pair = in_call.pop()
            if core.release(pair, now):
                released_at[pair] = now
        else:
            for _ in range(core.wanted(now)):
                serial += 1
                core.added(serial)
        pooled = list(core.ready) + [p for _, p in core.cooling]
        assert len(pooled) == len(set(pooled)) and not set(pooled) & in_call
        assert len(pooled) <= size + max_cooling
        assert len(core.cooling) <= max_cooling
