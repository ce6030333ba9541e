from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from media.recorder import Recorder


def _frame(level: float, n: int = 160) -> np.ndarray:
    t = np.arange(n) / 8000
    return (level * np.sin(2 * np.pi * 400 * t)).astype(np.int16)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_writes_audio_and_stops_at_max_seconds(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"r.{fmt.lower()}"
    rec = Recorder(path, format=fmt, max_seconds=1.0)
    reasons = [rec.write(_frame(8000)) for _ in range(60)]
    assert reasons.index("max_seconds") == 49
    result = rec.close("max_seconds")
    assert result.seconds == 1.0 and result.reason == "max_seconds"
    data, rate = soundfile.read(str(path), dtype="int16")
    assert rate == 8000 and len(data) == 8000
    assert np.array_equal(data[:160], _frame(8000))


def test_silence_timeout(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "s.wav", max_seconds=10, silence_timeout=0.5)
    for _ in range(20):
        assert rec.write(_frame(5000)) is None
    quiet = 0
    while rec.write(_frame(10)) is None:  # -70 dBFS
        quiet += 1
    assert quiet == 24  # the 25th quiet frame completes 0.5 s
    assert rec.close("silence").seconds == pytest.approx(0.4 + 0.5)


def test_rejects_bad_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported recording format 'MP3'"):
        Recorder(tmp_path / "x.mp3", format="MP3")
