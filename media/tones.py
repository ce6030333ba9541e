"""Call-progress tones (ringback, busy, beep) generated with numpy.

Tones are described by :class:`ToneSpec` (frequencies, cadence, level) and
rendered once to int16 PCM; the caller encodes them once per codec and loops
the payloads (see :func:`media.prompts.PromptCache.tone`). Region defaults
follow ITU-T E.180 supplement 2; the default region is ``"us"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["REGIONS", "ToneSpec", "render_tone", "tone_spec"]


@dataclass(frozen=True, slots=True)
class ToneSpec:
    """A tone: summed sine ``frequencies`` (Hz), ``cadence`` as (on_ms, off_ms)
    pairs making one cycle, and the level of each component in dBFS."""

    frequencies: tuple[float, ...]
    cadence: tuple[tuple[int, int], ...]
    level_dbfs: float = -16.0
    repeat: bool = True

    @property
    def cycle_ms(self) -> int:
        return sum(on + off for on, off in self.cadence)


REGIONS: dict[str, dict[str, ToneSpec]] = {
    "us": {
        "ringback": ToneSpec((440.0, 480.0), ((2000, 4000),), -19.0),
        "busy": ToneSpec((480.0, 620.0), ((500, 500),), -24.0),
    },
    "uk": {
        "ringback": ToneSpec((400.0, 450.0), ((400, 200), (400, 2000)), -19.0),
        "busy": ToneSpec((400.0,), ((375, 375),), -19.0),
    },
    "eu": {
        "ringback": ToneSpec((425.0,), ((1000, 4000),), -19.0),
        "busy": ToneSpec((425.0,), ((500, 500),), -19.0),
    },
}
"""Ringback and busy per region. ``"beep"`` is the same everywhere."""

BEEP = ToneSpec((1000.0,), ((250, 0),), -12.0, repeat=False)


def tone_spec(name: str, region: str = "us") -> ToneSpec:
    """The spec for ``name`` (``ringback``, ``busy``, ``beep``) in ``region``."""
    if name == "beep":
        return BEEP
    try:
        return REGIONS[region][name]
    except KeyError:
        raise KeyError(f"unknown tone {name!r} for region {region!r}") from None


def render_tone(spec: ToneSpec, sample_rate: int) -> npt.NDArray[np.int16]:
    """One cycle of ``spec`` as int16 PCM at ``sample_rate`` (phase-continuous)."""
    total = spec.cycle_ms * sample_rate // 1000
    t = np.arange(total, dtype=np.float64) / sample_rate
    amplitude = 32767 * 10 ** (spec.level_dbfs / 20)
    signal = np.zeros(total, dtype=np.float64)
    for freq in spec.frequencies:
        signal += amplitude * np.sin(2 * np.pi * freq * t)
    gate = np.zeros(total, dtype=bool)
    pos = 0
    for on, off in spec.cadence:
        on_n = on * sample_rate // 1000
        gate[pos : pos + on_n] = True
        pos += on_n + off * sample_rate // 1000
    signal[~gate] = 0.0
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)
