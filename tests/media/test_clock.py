"""The media clock's slots, with a fake clock: cadence, catch-up, and each callback
ticking only its own slot's streams (no sockets)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.clock import TickSchedule
from media.codecs import PCMU
from media.rtp import RtpPacket
from media.session import MediaClock
from media.stream import RtpStream

INTERVAL = 0.02
T0 = 1000.0


def run_schedule(
    schedule: TickSchedule[str],
    start: float,
    end: float,
    *,
    stalls: dict[float, float] | None = None,
) -> dict[str, list[float]]:
    """Fire ``schedule`` as a timer would from ``start`` to ``end``: always the earliest
    deadline, at that deadline, except that at each stall time the loop stands still
    for the given seconds (the deadlines that pass meanwhile fire late)."""
    sent: dict[str, list[float]] = {}
    now = start
    pending = sorted((stalls or {}).items())
    while True:
        deadline = schedule.next_deadline()
        assert deadline is not None
        when, slot = deadline
        if when > end:
            return sent
        now = max(now, when)
        if pending and now >= pending[0][0]:
            now += pending.pop(0)[1]
        items, late = schedule.fire(slot, now)
        assert late == pytest.approx(now - when)
        for item in items:
            sent.setdefault(item, []).append(now)


def test_streams_spread_over_the_slots_by_least_load() -> None:
    schedule: TickSchedule[str] = TickSchedule(interval=INTERVAL, slots=4)
    slots = [schedule.add(f"s{i}", f"s{i}", T0) for i in range(10)]
    assert slots == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert schedule.loads() == [3, 3, 2, 2]
    # calls leave slot 0: the next ones fill it again (no stream moves)
    for key in ("s0", "s4", "s8"):
        assert schedule.remove(key) == 0
    assert [schedule.add(f"n{i}", f"n{i}", T0 + 1) for i in range(5)] == [0, 0, 0, 2, 3]
    assert schedule.slot_of("s1") == 1 and schedule.slot_of("n0") == 0
    assert schedule.remove("unknown") is None


def test_slots_are_phases_of_the_period_and_each_fires_only_its_streams() -> None:
    schedule: TickSchedule[str] = TickSchedule(interval=INTERVAL, slots=4)
    for i in range(8):
        schedule.add(f"s{i}", f"s{i}", T0)
    # one deadline per slot, a quarter period apart: slot 0 one interval from now
    deadlines = []
    for _ in range(4):
        deadline = schedule.next_deadline()
        assert deadline is not None
        when, slot = deadline
        items, late = schedule.fire(slot, when)
        deadlines.append((round(when - T0, 6), slot))
        assert late == 0.0
        # slot k holds s{k} and s{k+4}, and its callback gets those and nothing else
        assert sorted(items) == [f"s{slot}", f"s{slot + 4}"]
    assert deadlines == [(0.005, 1), (0.01, 2), (0.015, 3), (0.02, 0)]


def test_every_stream_ticks_once_per_period_without_drift() -> None:
    schedule: TickSchedule[str] = TickSchedule(interval=INTERVAL, slots=4)
    for i in range(50):
        schedule.add(f"s{i}", f"s{i}", T0)
    sent = run_schedule(schedule, T0, T0 + 60.0)
    assert len(sent) == 50
    for times in sent.values():
        # 60 s at 50 packets/s, deadlines stay on the absolute grid (no accumulated drift)
        assert len(times) == 3000
        deltas = [b - a for a, b in itertools.pairwise(times)]
        assert min(deltas) == pytest.approx(INTERVAL, abs=1e-9)
        assert max(deltas) == pytest.approx(INTERVAL, abs=1e-9)
        assert times[-1] - times[0] == pytest.approx(2999 * INTERVAL, abs=1e-6)


def test_a_late_slot_catches_up_one_tick_per_callback_without_skipping() -> None:
    schedule: TickSchedule[str] = TickSchedule(interval=INTERVAL, slots=4, max_lag_ticks=5)
    for i in range(8):
        schedule.add(f"s{i}", f"s{i}", T0)
    # the loop stands still 50 ms at +0.5 s: 2-3 deadlines of each slot pass meanwhile
    sent = run_schedule(schedule, T0, T0 + 2.0, stalls={T0 + 0.5: 0.05})
    assert schedule.resyncs == 0
    for times in sent.values():
        # no tick lost: as many as without the stall
        assert len(times) == 100
        deltas = [b - a for a, b in itertools.pairwise(times)]
        # the catch-up ticks come at once, then the grid resumes
        assert max(deltas) > 0.05 and min(deltas) == pytest.approx(0.0, abs=1e-9)
        assert deltas[-1] == pytest.approx(INTERVAL, abs=1e-9)


def test_a_stall_beyond_max_lag_skips_ahead_to_the_slot_phase() -> None:
    schedule: TickSchedule[str] = TickSchedule(interval=INTERVAL, slots=4, max_lag_ticks=5)
    for i in range(4):
        schedule.add(f"s{i}", f"s{i}", T0)
    sent = run_schedule(schedule, T0, T0 + 2.0, stalls={T0 + 0.5: 0.3})
    assert schedule.resyncs == 4  # each slot once
    for i, times in enumerate(sorted(sent.items())):
        ticks = times[1]
        deltas = [b - a for a, b in itertools.pairwise(ticks)]
        # no burst of 15 packets: one late tick, then the slot's own phase again
        assert min(deltas) > INTERVAL / 2
        # back on the grid of its phase (slot i: i quarter periods after slot 0)
        offset = ((ticks[-1] - T0) % INTERVAL) / INTERVAL
        assert offset == pytest.approx(i / 4, abs=1e-6) or (i == 0 and offset == pytest.approx(1.0))


def test_an_empty_slot_is_not_scheduled_and_the_last_stream_resets_the_epoch() -> None:
    schedule: TickSchedule[str] = TickSchedule(interval=INTERVAL, slots=4)
    assert schedule.next_deadline() is None
    schedule.add("a", "a", T0)
    assert schedule.next_deadline() == (pytest.approx(T0 + INTERVAL), 0)
    assert schedule.fire(3, T0 + 0.02) == ((), 0.0)  # a stale timer of an empty slot
    schedule.remove("a")
    assert schedule.next_deadline() is None and len(schedule) == 0
    schedule.add("b", "b", T0 + 0.0123)
    assert schedule.next_deadline() == (pytest.approx(T0 + 0.0323), 0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="slots must be 1 or more, not 0"):
        TickSchedule(slots=0)
    with pytest.raises(ValueError, match="interval must be positive, not 0"):
        TickSchedule(interval=0)


@settings(max_examples=60, deadline=None)
@given(
    slots=st.integers(1, 8),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 30), st.floats(0, 0.05)), max_size=80),
)
def test_churn_never_double_sends_and_never_skips(
    slots: int, ops: list[tuple[bool, int, float]]
) -> None:
    """Streams come and go at random moments; between joining and leaving, each one
    ticks once per interval, on its phase."""
    schedule: TickSchedule[int] = TickSchedule(interval=INTERVAL, slots=slots)
    now = T0
    joined: dict[int, float] = {}
    sent: dict[int, list[float]] = {}
    for add, key, wait in ops:
        end = now + wait
        while (deadline := schedule.next_deadline()) is not None and deadline[0] <= end:
            now = deadline[0]
            items, _ = schedule.fire(deadline[1], now)
            for item in items:
                sent.setdefault(item, []).append(now)
        now = end
        if add and key not in joined:
            schedule.add(key, key, now)
            joined[key] = now
            sent[key] = []
        elif not add and key in joined:
            schedule.remove(key)
            start = joined.pop(key)
            times = sent.pop(key)
            # first tick within one interval of joining, then exactly one per interval
            expected = int((now - start) / INTERVAL + 1e-9)
            assert len(times) in (expected, expected + 1) or (not times and now - start < INTERVAL)
            if times:
                assert start < times[0] <= start + INTERVAL + 1e-9
            for a, b in itertools.pairwise(times):
                assert b - a == pytest.approx(INTERVAL, abs=1e-9)
    assert sum(schedule.loads()) == len(joined)


# --- the shell: MediaClock on a fake loop ----------------------------------------------


class FakeHandle:
    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """``time()`` and ``call_at()``, run by hand; a stall is time passing unserved."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self._heap: list[tuple[float, int, FakeHandle]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(
        self, when: float, callback: Callable[..., None], *args: Any, context: Any = None
    ) -> FakeHandle:
        handle = FakeHandle(when, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), handle))
        return handle

    def armed(self) -> list[FakeHandle]:
        return [h for _, _, h in self._heap if not h.cancelled]

    def run_until(self, end: float) -> None:
        while self._heap and self._heap[0][0] <= end:
            when, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            self.now = max(self.now, when)
            handle.callback(*handle.args)
        self.now = max(self.now, end)

    def stall(self, seconds: float) -> None:
        self.now += seconds


class FakeSession:
    """What the clock needs of a session: ``_on_tick``; this one sends with a real
    :class:`RtpStream` and keeps the datagrams."""

    def __init__(self, clock: MediaClock, name: str, log: list[tuple[int, str]]) -> None:
        self.clock = clock
        self.name = name
        self.log = log
        self.stream = RtpStream(PCMU, now=T0, remote=("192.0.2.1", 4000), ssrc=len(name))
        self.sent: list[tuple[float, bytes]] = []

    def _on_tick(self, now: float) -> None:
        self.log.append((self.clock.ticks, self.name))
        datagram = self.stream.tick(b"\xff" * 160)
        assert datagram is not None
        self.sent.append((now, datagram))


def _clock_with(
    n: int, slots: int = 4
) -> tuple[FakeLoop, MediaClock, list[FakeSession], list[tuple[int, str]]]:
    loop = FakeLoop()
    clock = MediaClock(slots=slots, loop=loop)  # type: ignore[arg-type]
    log: list[tuple[int, str]] = []
    sessions = [FakeSession(clock, f"s{i}", log) for i in range(n)]
    for session in sessions:
        clock.add(session)  # type: ignore[arg-type]
    return loop, clock, sessions, log


def test_clock_keeps_one_timer_and_each_callback_ticks_one_slot() -> None:
    loop, clock, sessions, log = _clock_with(1000)
    assert clock.slot_loads() == [250, 250, 250, 250]
    assert len(loop.armed()) == 1
    loop.run_until(T0 + 1.0)
    assert len(loop.armed()) == 1
    # 4 callbacks per period; each touched exactly the sessions of one slot
    assert clock.ticks == 200
    by_callback: dict[int, set[str]] = {}
    for tick, name in log:
        by_callback.setdefault(tick, set()).add(name)
    members = {
        slot: {s.name for s in sessions if clock.slot_of(s) == slot}  # type: ignore[arg-type]
        for slot in range(4)
    }
    for names in by_callback.values():
        assert names in members.values()
    assert sum(clock.lateness_counts) == clock.ticks and clock.lateness_max == 0.0
    assert sum(clock.duration_counts) == clock.ticks and clock.duration_max > 0.0


def test_every_stream_sends_one_packet_per_20_ms_with_steady_timestamps() -> None:
    loop, clock, sessions, _ = _clock_with(40)
    loop.run_until(T0 + 0.5)
    loop.stall(0.047)  # the loop stands still: every slot's deadline passes, 2-3 times
    loop.run_until(T0 + 2.0)
    assert clock.resyncs == 0 and clock.lateness_max > 40
    for session in sessions:
        packets = [RtpPacket.parse(datagram) for _, datagram in session.sent]
        # 2 s: 100 packets (the first at most one period after joining), none lost
        assert len(packets) == 100
        for a, b in itertools.pairwise(packets):
            assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
            assert b.timestamp == (a.timestamp + 160) & 0xFFFFFFFF
        times = [t for t, _ in session.sent]
        # after the catch-up, back on the 20 ms grid of its slot
        assert times[-1] - times[-2] == pytest.approx(INTERVAL, abs=1e-9)
        assert times[-1] - times[0] == pytest.approx(99 * INTERVAL, abs=1e-6)


def test_a_new_session_in_an_earlier_slot_rearms_the_timer() -> None:
    loop = FakeLoop()
    clock = MediaClock(slots=4, loop=loop)  # type: ignore[arg-type]
    log: list[tuple[int, str]] = []
    first = FakeSession(clock, "a", log)
    clock.add(first)  # type: ignore[arg-type]
    assert [h.when for h in loop.armed()] == [pytest.approx(T0 + 0.02)]
    second = FakeSession(clock, "b", log)
    clock.add(second)  # type: ignore[arg-type]  # slot 1: due 5 ms from now
    assert [h.when for h in loop.armed()] == [pytest.approx(T0 + 0.005)]
    loop.run_until(T0 + 0.021)
    assert [name for _, name in log] == ["b", "a"]
    clock.remove(first)  # type: ignore[arg-type]
    clock.remove(second)  # type: ignore[arg-type]
    assert loop.armed() == [] and len(clock) == 0


def test_one_failing_session_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    loop, clock, sessions, _ = _clock_with(8)

    def broken(now: float) -> None:
        raise RuntimeError("boom")

    clock.remove(sessions[0])  # type: ignore[arg-type]
    sessions[0]._on_tick = broken  # type: ignore[method-assign]
    clock.add(sessions[0])  # type: ignore[arg-type]
    loop.run_until(T0 + 0.2)
    assert clock.errors == 10
    assert all(len(s.sent) == 10 for s in sessions[1:])
    assert "media tick failed" in caplog.text


def test_after_a_long_stall_on_a_slow_loop_no_slot_waits_behind_the_others() -> None:
    """The loop stalls 150 ms, then each clock callback costs 6 ms (more than the
    5 ms between slots): every stream still gets its next packet within the stall
    plus two periods; no slot starves while the others catch up."""
    loop = FakeLoop()
    clock = MediaClock(slots=4, loop=loop)  # type: ignore[arg-type]
    times: dict[int, list[float]] = {}

    class Slow:
        def __init__(self, key: int) -> None:
            self.key = key

        def _on_tick(self, now: float) -> None:
            times.setdefault(self.key, []).append(now)
            loop.now += 0.006 / 8  # 8 streams per slot: 6 ms per callback

    for key in range(32):
        clock.add(Slow(key))  # type: ignore[arg-type]
    loop.run_until(T0 + 0.3)
    loop.stall(0.15)
    loop.run_until(T0 + 1.5)
    assert clock.resyncs >= 4
    for ticks in times.values():
        worst = max(b - a for a, b in itertools.pairwise(ticks))
        assert worst <= 0.15 + 2 * INTERVAL


@given(
    first=st.floats(min_value=1.0, max_value=1e6),
    second=st.floats(min_value=1.0, max_value=1e6),
    workers=st.integers(min_value=2, max_value=8),
)
def test_phased_clocks_of_workers_keep_apart_whoever_starts_first(
    first: float, second: float, workers: int
) -> None:
    """The media clocks of a node's workers (phase i / n) tick on the monotonic
    clock's 20 ms grid, each at its own offset, whenever each one's first call came:
    two planes never wake together (their ticks are a whole 1/n period apart)."""
    interval = 0.02
    deadlines = []
    for i, start in ((0, first), (1, second)):
        schedule: TickSchedule[str] = TickSchedule(interval=interval, phase=i / workers)
        schedule.add("s", "s", start)
        due = schedule.next_deadline()
        assert due is not None and start < due[0] <= start + interval + 1e-9
        deadlines.append(due[0])
    offset = (deadlines[1] - deadlines[0]) % interval
    gap = interval / workers
    assert min(abs(offset - gap), abs(offset - gap - interval)) < 1e-6, offset
    # unphased (a lone clock): the first stream's arrival sets the phase
    lone: TickSchedule[str] = TickSchedule(interval=interval)
    lone.add("s", "s", first)
    assert lone.next_deadline() == (first + interval, 0)


def test_a_phase_outside_the_period_is_refused() -> None:
    for phase in (-0.1, 1.0, 2.5):
        with pytest.raises(ValueError, match="phase"):
            TickSchedule(phase=phase)
