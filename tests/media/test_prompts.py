from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile

from media.codecs import G722, PCMA, PCMU, create_codec
from media.prompts import BUNDLED_PROMPTS_DIR, PromptCache, PromptNotFound
from media.storage import LocalMediaStorage

BUNDLED = {
    "welcome",
    "menu",
    "invalid",
    "timeout",
    "goodbye",
    "voicemail_greeting",
    "closed",
    "transfer",
}


def test_bundled_prompts_exist_small_8k_mono() -> None:
    for name in BUNDLED:
        path = BUNDLED_PROMPTS_DIR / f"{name}.wav"
        info = soundfile.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
        assert path.stat().st_size < 100 * 1024
        assert info.duration > 1.0
    assert PromptCache().names() >= BUNDLED


def test_payloads_encoded_once_and_decode_back_to_the_file() -> None:
    cache = PromptCache()
    payloads = cache.payloads("welcome", PCMU)
    assert cache.payloads("welcome", "pcmu") is payloads  # cached tuple
    assert all(len(p) == 160 for p in payloads)
    raw, rate = soundfile.read(str(BUNDLED_PROMPTS_DIR / "welcome.wav"), dtype="int16")
    original = raw.astype(float)
    assert rate == 8000 and len(payloads) == -(-len(original) // 160)
    decoded = create_codec(PCMU).decode(b"".join(payloads))[: len(original)].astype(float)
    corr = np.dot(decoded, original) / np.sqrt(
        np.dot(decoded, decoded) * np.dot(original, original)
    )
    assert corr > 0.99
    assert cache.payloads("welcome", PCMA) != payloads
    g722 = cache.payloads("welcome", G722)  # resampled to 16 kHz once
    assert len(g722) == len(payloads) and all(len(p) == 160 for p in g722)


def test_tenant_prompt_overrides_bundled_and_any_rate_stereo(tmp_path: Path) -> None:
    storage = LocalMediaStorage(tmp_path)
    rate = 44100
    t = np.arange(rate) / rate
    stereo = np.stack([np.sin(2 * np.pi * 500 * t), np.sin(2 * np.pi * 500 * t)], axis=1) * 0.5
    buf = io.BytesIO()
    soundfile.write(buf, stereo, rate, format="FLAC")
    storage.put("acme", "prompts", "welcome.flac", buf.getvalue())
    cache = PromptCache(storage)
    pcm = cache.pcm("welcome", 8000, tenant="acme")
    assert len(pcm) == 8000
    spectrum = np.abs(np.fft.rfft(pcm.astype(float)))
    assert abs(int(np.argmax(spectrum)) - 500) <= 1  # 1 Hz bins
    assert len(cache.payloads("welcome", PCMU, tenant="acme")) == 50
    # Another tenant falls back to the bundled prompt.
    assert len(cache.payloads("welcome", PCMU, tenant="other")) != 50
    assert "welcome" in cache.names(tenant="acme")


def test_missing_prompt_and_bad_names() -> None:
    cache = PromptCache()
    with pytest.raises(PromptNotFound, match="prompt 'nope' not found"):
        cache.payloads("nope", PCMU)
    assert not cache.exists("nope") and cache.exists("menu")
    with pytest.raises(ValueError, match="invalid segment"):
        cache.payloads("../secret", PCMU)


def test_tones_as_payloads() -> None:
    cache = PromptCache()
    ring = cache.tone("ringback", PCMU)
    assert len(ring) == 300  # one 6 s US cadence cycle
    assert ring[-1] == b"\xff" * 160  # off part is digital silence
    assert len(cache.tone("beep", "PCMA")) == 13
