from __future__ import annotations

from media.jitterbuffer import RecordingJitterBuffer


def test_reorders_fills_gaps_and_drops_duplicates() -> None:
    jb = RecordingJitterBuffer(frame_seconds=0.02, delay=0.06)
    t = 10.0
    jb.push(1600, b"a", t)
    jb.push(1920, b"c", t + 0.01)
    jb.push(1760, b"b", t + 0.02)  # reordered
    assert jb.push(1760, b"b", t + 0.025) is False  # duplicate
    jb.push(2240, b"e", t + 0.03)  # frame at 2080 lost
    assert jb.pop(t + 0.05) == []  # playout delay not reached
    assert jb.pop(t + 0.06 + 0.085) == [b"a", b"b", b"c", None, b"e"]
    assert jb.duplicates == 1
    assert jb.push(1920, b"late", t + 0.2) is False and jb.late == 1


def test_frame_count_follows_wall_time_through_silence_suppression() -> None:
    jb = RecordingJitterBuffer(frame_seconds=0.02, delay=0.0)
    jb.push(0, b"x", 0.0)
    frames = jb.pop(1.0)
    # Peer stops sending for 3 s (VAD) and resumes: timestamp jumps 3 s ahead.
    jb.push(3 * 8000, b"y", 3.0)
    frames += jb.pop(3.0)
    frames += jb.flush(3.0)
    assert len(frames) == 151  # 3.0 s of 20 ms frames, plus frame 0
    assert frames[0] == b"x" and frames[150] == b"y"
    assert frames.count(None) == 149


def test_timestamp_wrap_and_resync_on_new_stream() -> None:
    jb = RecordingJitterBuffer(frame_seconds=0.02, delay=0.0, max_jump=50)
    jb.push(0xFFFFFFFF - 159, b"a", 0.0)
    jb.push(0, b"b", 0.01)
    assert jb.pop(0.025) == [b"a", b"b"]
    jb.push(123456789, b"z", 0.03)  # new stream (random timestamp): re-based
    assert jb.resyncs == 1
    jb.push(123456789 + 160, b"z2", 0.05)
    assert jb.pop(0.065) == [b"z", b"z2"]


def test_30ms_packets_are_cut_into_20ms_frames() -> None:
    # SIPp's g711a.pcap: 240 octets every 30 ms. 3 packets = 90 ms = 4.5 frames.
    jb = RecordingJitterBuffer(frame_seconds=0.02, delay=0.0, silence=b"\xd5" * 160)
    for k in range(3):
        assert jb.push(1000 + 240 * k, bytes([k + 1]) * 240, 0.03 * k)
    frames = jb.flush(0.09)
    assert [len(f or b"") for f in frames] == [160] * 5
    audio = b"".join(f or b"" for f in frames)
    assert audio[:720] == b"\x01" * 240 + b"\x02" * 240 + b"\x03" * 240
    assert audio[720:] == b"\xd5" * 80  # the half frame no packet covered stays silent


def test_10ms_packets_fill_one_frame_each_pair() -> None:
    jb = RecordingJitterBuffer(frame_seconds=0.02, delay=0.0, silence=b"\xff" * 160)
    for k in range(4):
        jb.push(80 * k, bytes([k]) * 80, 0.01 * k)
    frames = jb.flush(0.04)
    assert frames[:2] == [b"\x00" * 80 + b"\x01" * 80, b"\x02" * 80 + b"\x03" * 80]
    assert jb.duplicates == 0 and jb.late == 0


def test_silence_frame_must_match_the_timestamp_step() -> None:
    import pytest

    with pytest.raises(ValueError, match="silence frame has 10 octets, expected 160"):
        RecordingJitterBuffer(silence=b"\x00" * 10)
