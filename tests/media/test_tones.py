from __future__ import annotations

import numpy as np
import pytest

from media.tones import render_tone, tone_spec


def _power_at(x: np.ndarray, f: float, rate: int) -> float:
    t = np.arange(len(x)) / rate
    return float(abs(np.dot(x, np.exp(-2j * np.pi * f * t))) ** 2)


def test_us_ringback_cadence_and_frequencies() -> None:
    pcm = render_tone(tone_spec("ringback"), 8000)
    assert len(pcm) == 6 * 8000
    on, off = pcm[:16000].astype(float), pcm[16000:]
    assert not off.any()
    p440, p480, p1000 = (_power_at(on, f, 8000) for f in (440, 480, 1000))
    assert p440 > 1000 * p1000 and p480 > 1000 * p1000
    assert p440 == pytest.approx(p480, rel=0.05)


def test_busy_and_beep_and_regions() -> None:
    busy = render_tone(tone_spec("busy"), 8000)
    assert len(busy) == 8000 and busy[:4000].any() and not busy[4000:].any()
    beep = render_tone(tone_spec("beep"), 16000)
    assert len(beep) == 4000
    assert _power_at(beep.astype(float), 1000, 16000) > 100 * _power_at(
        beep.astype(float), 500, 16000
    )
    uk = tone_spec("ringback", "uk")
    assert uk.frequencies == (400.0, 450.0) and uk.cycle_ms == 3000
    with pytest.raises(KeyError, match="unknown tone"):
        tone_spec("ringback", "mars")
