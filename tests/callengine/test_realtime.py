"""Loop-lag histogram and the GC policy's decisions (callengine.realtime), no loop."""

from __future__ import annotations

import gc
import time

import pytest

from callengine.realtime import GcGovernor, GcStats, LoopLagMonitor, StallReporter


def test_lag_samples_land_in_their_buckets_and_feed_the_callback() -> None:
    seen: list[float] = []
    lag = LoopLagMonitor(on_sample=seen.append)
    for seconds in (0.0004, 0.003, 0.019, 0.021, 2.0):
        lag.sample(seconds)
    bounds = dict(zip([*lag.buckets_ms, "+Inf"], lag.counts, strict=True))
    assert bounds[1] == 1 and bounds[5] == 1 and bounds[20] == 1 and bounds[50] == 1
    assert bounds["+Inf"] == 1
    assert sum(lag.counts) == 5
    assert lag.last == 2.0 and lag.max == 2.0
    assert lag.sum_ms == pytest.approx(2043.4)
    assert seen == [0.0004, 0.003, 0.019, 0.021, 2.0]


def test_gc_stats_time_each_collection_by_generation() -> None:
    stats = GcStats()
    stats.callback("start", {"generation": 1})
    stats.callback("stop", {"generation": 1, "collected": 7, "uncollectable": 0})
    stats.callback("start", {"generation": 0})
    stats.callback("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    assert stats.collections == [1, 1, 0]
    assert stats.collected == [0, 7, 0]
    assert stats.pause_seconds[1] >= 0.0 and stats.pause_max[1] == stats.pause_seconds[1]


def test_governor_samples_young_freezes_the_rest_and_collects_all_only_when_idle() -> None:
    idle = [False]
    governor = GcGovernor(lambda: idle[0], idle_interval=60.0, sample_every=3)
    gc.callbacks.append(governor.stats.callback)
    try:
        # busy: two ticks in three freeze the young generation, the third collects it
        assert [governor.step(100.0 + i * 0.05) for i in range(6)] == [None, None, 0] * 2
        assert gc.get_freeze_count() > 0
        idle[0] = True
        assert governor.step(101.0) == 2  # idle, and never collected fully yet
        assert governor.step(101.05) is None  # idle again, but within idle_interval
        assert governor.step(161.0) == 2
        idle[0] = False
        assert governor.step(300.0) != 2  # a busy node is never walked whole
    finally:
        gc.callbacks.remove(governor.stats.callback)
        gc.unfreeze()
    assert governor.stats.collections[0] == 2 and governor.stats.collections[2] == 2


def test_collect_all_finds_cycles_among_frozen_objects() -> None:
    governor = GcGovernor(lambda: True)

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.freeze()  # as a busy node's ticks do
    del a, b
    try:
        assert gc.collect() == 0  # frozen: out of the collector's sight
        assert governor.collect_all() >= 2
    finally:
        gc.unfreeze()


def test_gc_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="realtime"):
        GcGovernor(lambda: True, mode="sometimes")


def test_stall_reporter_names_what_the_loop_thread_is_running() -> None:
    lag = LoopLagMonitor()
    reporter = StallReporter(lag, threshold=0.02, poll=0.002)
    reporter.start()  # the "loop thread" is this one
    try:
        lag.beat = time.monotonic()
        deadline = time.monotonic() + 5
        while not reporter.reports and time.monotonic() < deadline:
            _busy_for(0.01)  # the loop never wakes the monitor: a stall
        assert reporter.reports, "no stall reported"
        assert "_busy_for" in reporter.reports[0]
        # the same stall is reported once, however long it lasts
        _busy_for(0.05)
        assert len(reporter.reports) == 1
        # the loop wakes, then stalls again: a second report
        lag.beat = time.monotonic()
        deadline = time.monotonic() + 5
        while len(reporter.reports) < 2 and time.monotonic() < deadline:
            _busy_for(0.01)
        assert len(reporter.reports) == 2
    finally:
        reporter.stop()


def _busy_for(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
