from __future__ import annotations

import numpy as np
import pytest

from media.dtmf import (
    DtmfReceiver,
    DtmfSender,
    InbandDtmfDetector,
    event_payload,
    parse_dtmf_info,
    parse_event_payload,
)

FREQS = {"1": (697, 1209), "5": (770, 1336), "9": (852, 1477), "#": (941, 1477), "D": (941, 1633)}


def test_sender_packet_train() -> None:
    packets = DtmfSender(8000).packets("5", 1000, duration_ms=100)
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert {p.timestamp for p in packets} == {1000}
    decoded = [parse_event_payload(p.payload) for p in packets]
    assert decoded[:4] == [(5, False, 10, d) for d in (160, 320, 480, 640)]
    assert decoded[4:] == [(5, True, 10, 800)] * 3
    assert [p.end for p in packets] == [False] * 4 + [True] * 3
    with pytest.raises(ValueError, match="not a DTMF digit"):
        DtmfSender().packets("x", 0)


def test_receiver_one_digit_per_event_despite_repeated_end_packets() -> None:
    rx = DtmfReceiver(8000)
    out = []
    for p in DtmfSender().packets("7", 5000):
        out += rx.feed(p.payload, p.timestamp)
    for p in DtmfSender().packets("7", 5000)[-3:]:  # retransmitted ends
        out += rx.feed(p.payload, p.timestamp)
    assert [(e.digit, e.duration_ms, e.timestamp) for e in out] == [("7", 100, 5000)]
    # The same digit again is a new event: new timestamp.
    for p in DtmfSender().packets("7", 6600):
        out += rx.feed(p.payload, p.timestamp)
    assert [e.digit for e in out] == ["7", "7"]


def test_receiver_reports_event_whose_end_packets_were_lost() -> None:
    rx = DtmfReceiver(8000)
    out = []
    first = [p for p in DtmfSender().packets("1", 100) if not p.end]
    for p in first:
        out += rx.feed(p.payload, p.timestamp)
    assert out == []
    for p in DtmfSender().packets("2", 2000):
        out += rx.feed(p.payload, p.timestamp)
    assert [e.digit for e in out] == ["1", "2"]
    assert out[0].duration_ms == 80


def test_receiver_flush_and_short_payload() -> None:
    rx = DtmfReceiver()
    assert rx.feed(event_payload(11, end=False, volume=10, duration=160), 9) == []
    assert [e.digit for e in rx.flush()] == ["#"]
    assert rx.flush() == []
    with pytest.raises(ValueError, match="telephone-event payload length 2 is less than 4 bytes"):
        rx.feed(b"\x01\x02", 10)


def _tone(digit: str, ms: int, level: float = 6000.0, twist_db: float = 0.0) -> np.ndarray:
    low, high = FREQS[digit]
    t = np.arange(8 * ms) / 8000
    high_amp = level * 10 ** (twist_db / 20)
    return (level * np.sin(2 * np.pi * low * t) + high_amp * np.sin(2 * np.pi * high * t)).astype(
        np.int16
    )


def _silence(ms: int) -> np.ndarray:
    return np.zeros(8 * ms, dtype=np.int16)


def _feed_in_frames(det: InbandDtmfDetector, signal: np.ndarray) -> list[str]:
    digits = []
    for i in range(0, len(signal), 160):
        digits += [e.digit for e in det.feed(signal[i : i + 160])]
    return digits


def test_goertzel_detects_each_digit_once_per_burst() -> None:
    signal = np.concatenate(
        [
            _silence(50),
            _tone("1", 100),
            _silence(60),
            _tone("1", 100),
            _silence(60),
            _tone("5", 80),
            _silence(60),
            _tone("#", 200),
            _silence(60),
            _tone("D", 70),
            _silence(50),
        ]
    )
    assert _feed_in_frames(InbandDtmfDetector(), signal) == ["1", "1", "5", "#", "D"]


def test_goertzel_rejects_noise_speechlike_and_excess_twist() -> None:
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(8000) * 3000).astype(np.int16)
    assert _feed_in_frames(InbandDtmfDetector(), noise) == []
    t = np.arange(8000) / 8000
    single = (8000 * np.sin(2 * np.pi * 770 * t)).astype(np.int16)
    assert _feed_in_frames(InbandDtmfDetector(), single) == []
    # Harmonic-rich "voice": 150 Hz fundamental with harmonics.
    voice = sum(3000 / k * np.sin(2 * np.pi * 150 * k * t) for k in range(1, 20))
    assert _feed_in_frames(InbandDtmfDetector(), np.asarray(voice).astype(np.int16)) == []
    assert _feed_in_frames(InbandDtmfDetector(), _tone("5", 200, twist_db=-12)) == []
    assert _feed_in_frames(InbandDtmfDetector(), _tone("5", 200, twist_db=3)) == ["5"]
    assert _feed_in_frames(InbandDtmfDetector(), _tone("5", 200, level=20)) == []  # too quiet


def test_goertzel_survives_g711() -> None:
    from media.codecs import ulaw_decode, ulaw_encode

    signal = np.concatenate([_tone("9", 120), _silence(60), _tone("1", 120)])
    assert _feed_in_frames(InbandDtmfDetector(), ulaw_decode(ulaw_encode(signal))) == ["9", "1"]


def test_parse_info_bodies() -> None:
    e = parse_dtmf_info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n")
    assert (e.digit, e.duration_ms, e.source) == ("5", 160, "info")
    assert (
        parse_dtmf_info("Application/DTMF-Relay; charset=x", "signal= #\nduration=100").digit == "#"
    )
    assert parse_dtmf_info("application/dtmf-relay", "Signal=11\r\n").digit == "#"
    assert parse_dtmf_info("application/dtmf", b"*").digit == "*"
    assert parse_dtmf_info("application/dtmf", "10").digit == "*"
    with pytest.raises(ValueError, match="dtmf-relay body has no Signal line"):
        parse_dtmf_info("application/dtmf-relay", "Duration=100")
    with pytest.raises(ValueError, match="invalid DTMF signal 'x'"):
        parse_dtmf_info("application/dtmf-relay", "Signal=x")
    with pytest.raises(ValueError, match="Duration is not an integer"):
        parse_dtmf_info("application/dtmf-relay", "Signal=1\nDuration=abc")
    with pytest.raises(ValueError, match="unsupported DTMF INFO content type"):
        parse_dtmf_info("text/plain", "1")
