from __future__ import annotations

import numpy as np
import pytest

from media.codecs import CODECS, G722, OPUS, create_codec, get_codec_info


def _best_correlation(x: np.ndarray, y: np.ndarray, max_delay: int) -> float:
    n = len(x) - max_delay
    a = x[:n].astype(np.float64)
    best = 0.0
    for d in range(0, max_delay, 4):
        b = y[d : d + n].astype(np.float64)
        c = float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b) + 1e-9))
        best = max(best, c)
    return best


def test_registry() -> None:
    assert get_codec_info("pcmu").payload_type == 0
    assert get_codec_info("G722") is G722 and G722.clock_rate == 8000 and G722.sample_rate == 16000
    assert G722.samples_per_frame == 320 and G722.timestamp_step == 160
    assert OPUS.timestamp_step == 960 and OPUS.channels == 2
    assert set(CODECS) >= {"PCMU", "PCMA", "G722", "OPUS", "TELEPHONE-EVENT"}
    with pytest.raises(KeyError, match="unknown codec 'GSM'"):
        get_codec_info("GSM")
    with pytest.raises(ValueError, match="no encoder"):
        create_codec("telephone-event")


@pytest.mark.parametrize("name", ["G722", "opus"])
def test_aiortc_codecs_round_trip_a_tone(name: str) -> None:
    codec = create_codec(name)
    rate = codec.info.sample_rate
    t = np.arange(rate // 2) / rate
    x = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    frames = codec.encode_frames(x)
    assert len(frames) == 25
    if name == "G722":
        assert all(len(f) == 160 for f in frames)  # 64 kbit/s
    decoded = np.concatenate([codec.decode(f) for f in frames])
    assert len(decoded) == len(x)
    assert _best_correlation(x, decoded, 400) > 0.99
