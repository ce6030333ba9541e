"""Call recording core and tap: timing with a fake clock (no sockets, no event loop)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from media.callrecording import TX_BACKLOG, CallRecording, RecordingCore, mix
from media.clock import TickSchedule
from media.codecs import PCMA, PCMU, alaw_encode, ulaw_encode
from media.recorder import Recorder
from media.stream import RtpStream

F = 0.02  # frame seconds
START = 1000.0


def _ticks(start: float, count: int, *, jitter: float = 0.0, seed: int = 1) -> list[float]:
    """The media clock's tick times: on a 20 ms grid (phase: the first tick comes
    some time after recording started), each up to ``jitter`` late."""
    rng = random.Random(seed)
    phase = 0.013
    return [start + phase + i * F + rng.uniform(0, jitter) for i in range(count)]


def test_one_frame_per_tick_even_with_late_ticks() -> None:
    core = RecordingCore(start=START)
    counts = []
    for i, now in enumerate(_ticks(START, 500, jitter=0.009)):
        core.sent(bytes([i % 256]) * 160)
        counts.append(len(core.advance(now)))
    # a tick up to 9 ms late still emits exactly one frame (the first may emit none)
    assert set(counts[1:]) == {1}, counts[:10]
    pairs, keep = core.finish(START + 10.0)
    assert core.frames == 500 and 0 < keep <= 1
    assert core.frames - 1 + keep == pytest.approx(10.0 / F)


def test_length_matches_elapsed_time_for_any_stop() -> None:
    for stop in (0.0, 0.005, 0.31, 1.0, 7.777):
        core = RecordingCore(start=START)
        frames = 0
        for now in _ticks(START, 1000):
            if now > START + stop:
                break
            core.sent(None)
            frames += len(core.advance(now))
        pairs, keep = core.finish(START + stop)
        frames += len(pairs)
        samples = (frames - 1) * 160 + round(keep * 160) if frames else 0
        assert abs(samples - stop * 8000) <= 80, (stop, samples)  # half a frame


def test_a_stalled_loop_gets_its_missed_frames_as_silence() -> None:
    core = RecordingCore(start=START)
    emitted: list[tuple[bytes | None, bytes | None]] = []
    for now in _ticks(START, 10):
        core.sent(b"\x01" * 160)
        emitted += core.advance(now)
    # the loop stalls 300 ms; the clock resyncs and ticks once
    now = START + 0.013 + 9 * F + 0.3
    core.sent(b"\x02" * 160)
    burst = core.advance(now)
    assert len(burst) == 15  # 300 ms of frames at once
    # nothing went out during the stall; what the tick after it sent comes last
    assert [tx for _, tx in burst] == [None] * 14 + [b"\x02" * 160]
    assert core.frames == round((now - START) / F)


def _clock_ticks(start: float, count: int, stalls: dict[int, float]) -> list[float]:
    """Tick times as the media clock (:class:`~media.clock.TickSchedule`) makes them
    when the loop stalls ``stalls[i]`` seconds before tick ``i``: late by less than
    ``max_lag_ticks`` periods, the missed ticks come at once, one callback each (no
    packet skipped); later, the clock skips ahead."""
    schedule: TickSchedule[None] = TickSchedule()
    schedule.add("call", None, start)
    now, out = start, []
    while len(out) < count:
        deadline = schedule.next_deadline()
        assert deadline is not None
        now = max(now, deadline[0]) + stalls.get(len(out), 0.0)
        schedule.fire(deadline[1], now)
        out.append(now)
    return out


@pytest.mark.parametrize("stall", [0.045, 0.09])
def test_a_short_stall_made_up_by_the_clock_loses_no_sent_frame(stall: float) -> None:
    # recording starts at a random point of the clock's period (an IVR node, the API)
    for phase in (0.001, 0.007, 0.0101, 0.016):
        core = RecordingCore(start=START + phase)
        emitted: list[tuple[bytes | None, bytes | None]] = []
        for i, now in enumerate(_clock_ticks(START, 60, {17: stall})):
            if now < core.start:
                continue
            core.sent(bytes([i]) * 160)
            emitted += core.advance(now)
        sent = [tx[0] if tx else None for _, tx in emitted]
        # what went out, in order, none lost and no silence in between: the clock made
        # up the ticks the stall delayed, one callback each right after it
        assert None not in sent[1:], (phase, sent)
        assert sent[1:] == list(range(sent[1], sent[1] + len(sent) - 1)), (phase, sent)
        assert core.tx_dropped == 0


def test_a_long_stall_the_clock_skips_is_silence() -> None:
    core = RecordingCore(start=START)
    emitted: list[tuple[bytes | None, bytes | None]] = []
    for i, now in enumerate(_clock_ticks(START, 40, {10: 0.3})):
        core.sent(bytes([i]) * 160)
        emitted += core.advance(now)
    sent = [tx[0] if tx else None for _, tx in emitted]
    # tick 10 came 300 ms late, and the clock skipped the 15 it missed: silence
    start = sent.index(None)
    assert sent[start - 1] == 9 and sent[start : start + 16] == [None] * 15 + [10], sent
    assert sent[start + 16 :] == list(range(11, 40))
    assert core.frames == len(emitted)


def test_tx_backlog_is_bounded() -> None:
    core = RecordingCore(start=START)
    for i in range(10):  # ticks in a burst at one instant
        core.sent(bytes([i]) * 160)
    assert core.tx_dropped == 10 - TX_BACKLOG
    pairs = core.advance(START + 5 * F)
    # the newest kept; the two other frames due wait for the clock's catch-up ticks
    assert [tx[0] if tx else None for _, tx in pairs] == [7, 8, 9]
    core.sent(b"\x0a" * 160)
    core.sent(b"\x0b" * 160)
    assert [tx[0] if tx else None for _, tx in core.advance(START + 5 * F)] == [10, 11]


def test_received_packets_are_placed_by_timestamp() -> None:
    core = RecordingCore(start=START, jitter_delay=0.04)
    ticks = _ticks(START, 60)
    # the caller's packets 0..39 (each 20 ms) arrive from 100 ms on, 5 and 6 swapped,
    # 20 lost; packet k is sent at 100 ms + k*20 ms and arrives 5 ms later
    order = list(range(40))
    order[5], order[6] = order[6], order[5]
    order.remove(20)
    arrivals = {k: START + 0.105 + k * F for k in order}
    arrivals[5], arrivals[6] = arrivals[6], arrivals[5]
    pending = sorted(order, key=lambda k: arrivals[k])
    out: list[tuple[bytes | None, bytes | None]] = []
    for now in ticks:
        while pending and arrivals[pending[0]] <= now:
            k = pending.pop(0)
            core.received(5000 + k * 160, bytes([k]) * 160, arrivals[k])
        core.sent(None)
        out += core.advance(now)
    rx = [p[0] if p is not None else None for p, _ in out]
    first = rx.index(0)
    # packet 0 arrived at 105 ms: recorded within the jitter delay (+ a frame) of that
    assert 0.105 <= first * F <= 0.105 + 0.04 + F
    assert rx[first : first + 40] == [k if k != 20 else None for k in range(40)]


def test_bridged_right_channel_is_the_far_legs_packets_of_any_length() -> None:
    silence = b"\xd5" * 160
    core = RecordingCore(start=START, silence=silence)
    ticks = _ticks(START, 100)
    out: list[tuple[bytes | None, bytes | None]] = []
    for i, now in enumerate(ticks):
        if i == 10:
            core.bridge(timestamp_step=160, silence=silence)
        if i >= 10 and i % 3 == 0:  # 30 ms packets (240 octets), every 1.5 ticks
            k = (i - 10) // 3
            for j in (2 * k, 2 * k + 1):
                core.received_far(j * 240, bytes([j % 200 + 1]) * 240, now)
        core.sent(b"\x00" * 160)  # ignored while bridged
        out += core.advance(now)
    right = [tx for _, tx in out]
    assert right[:9] == [b"\x00" * 160] * 9
    far = b"".join(tx for tx in right[10:] if tx is not None and tx != b"\x00" * 160)
    # the far audio laid out contiguously: 240-octet packets cut into 160-octet frames
    start = far.index(bytes([1]))
    assert far[start : start + 240 * 5] == b"".join(bytes([j + 1]) * 240 for j in range(5))
    core.unbridge()
    core.sent(b"\x07" * 160)
    assert core.advance(ticks[-1] + F)[-1][1] == b"\x07" * 160


def _tone(freq: float, n: int, level: float = 8000.0) -> npt.NDArray[np.int16]:
    t = np.arange(n) / 8000
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _stream(codec: object = PCMA) -> RtpStream:
    return RtpStream(codec, now=START, remote=("127.0.0.1", 4000), rng=random.Random(1))  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["stereo", "mono"])
def test_tap_writes_both_directions_for_the_connected_time(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "call.wav"
    recorder = Recorder(path, max_seconds=60, channels=2 if mode == "stereo" else 1)
    stream = _stream()
    results = []
    rec = CallRecording(recorder, stream, key="recordings/x.wav", mode=mode, now=START)
    rec.on_closed = results.append
    caller = _tone(440, 8000 * 3)  # what the caller says
    prompt = _tone(1000, 8000 * 3, 6000)  # what we play
    for i, now in enumerate(_ticks(START, 150, jitter=0.005)):
        rec.received(i * 160, alaw_encode(caller[i * 160 : (i + 1) * 160]), now - 0.003)
        rec.tick(alaw_encode(prompt[i * 160 : (i + 1) * 160]), now)
    stop = START + 2.995
    result = rec.close(stop, "hangup")
    assert rec.close(stop + 1) is result and results == [result]
    assert result.reason == "hangup"
    data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    assert rate == 8000 and abs(len(data) - 2.995 * 8000) <= 80
    assert result.seconds == pytest.approx(len(data) / 8000)
    if mode == "stereo":
        assert data.shape[1] == 2
        left, right = data[:, 0].astype(float), data[:, 1].astype(float)
        # each channel is its own tone (G.711 round trip, slightly delayed)
        spectrum_l, spectrum_r = np.abs(np.fft.rfft(left)), np.abs(np.fft.rfft(right))
        freqs = np.fft.rfftfreq(len(left), 1 / 8000)
        assert abs(freqs[np.argmax(spectrum_l)] - 440) < 5
        assert abs(freqs[np.argmax(spectrum_r)] - 1000) < 5
        assert spectrum_l[np.argmin(abs(freqs - 1000))] < 0.01 * spectrum_l.max()
    else:
        assert data.shape[1] == 1
        spectrum = np.abs(np.fft.rfft(data[:, 0].astype(float)))
        freqs = np.fft.rfftfreq(len(data), 1 / 8000)
        peaks = sorted(freqs[np.argsort(spectrum)[-2:]])
        assert abs(peaks[0] - 440) < 5 and abs(peaks[1] - 1000) < 5


def test_tap_stops_at_max_seconds(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "m.wav", max_seconds=1.0, channels=2)
    rec = CallRecording(recorder, _stream(PCMU), key="k", mode="stereo", now=START)
    for now in _ticks(START, 100):
        rec.tick(ulaw_encode(_tone(300, 160)), now)
    assert rec.closed and rec.result is not None and rec.result.reason == "max_seconds"
    assert soundfile.info(str(tmp_path / "m.wav")).frames == 8000


def test_tap_refuses_a_layout_its_recorder_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stereo or mono"):
        CallRecording(Recorder(tmp_path / "a.wav"), _stream(), key="k", mode="both", now=0.0)
    with pytest.raises(ValueError, match="two-channel recorder"):
        CallRecording(Recorder(tmp_path / "b.wav"), _stream(), key="k", mode="stereo", now=0.0)


def test_mix_clips_the_mono_sum() -> None:
    a = np.array([30000, -30000, 5], dtype=np.int16)
    assert mix(a, a, "mono").tolist() == [32767, -32768, 10]
    assert mix(a, a[::-1], "stereo").tolist() == [[30000, 5], [-30000, -30000], [5, 30000]]


def test_stereo_recorder_silence_is_judged_on_both_channels(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "s.wav", channels=2, silence_timeout=0.1)
    quiet = np.zeros((160, 2), dtype=np.int16)
    loud = np.column_stack((np.zeros(160, dtype=np.int16), _tone(500, 160)))
    assert rec.write(loud) is None
    assert [rec.write(quiet) for _ in range(5)][-1] == "silence"
    with pytest.raises(ValueError, match="channels must be 1 or 2"):
        Recorder(tmp_path / "x.wav", channels=3)
