"""Prompt cache: audio files decoded, resampled and encoded once per codec.

A prompt is looked up by name: first in the tenant's prompts (through
:class:`media.storage.MediaStorage`), then in the bundled ``media/prompts/``
directory. The file (WAV, FLAC or OGG, any rate, any channel count) is read
once with soundfile and mixed to mono; for each codec asked for it is
resampled once with soxr to the codec's sample rate and encoded once into 20 ms
payloads. Playback then only walks a tuple of ready ``bytes``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from .codecs import CodecInfo, create_codec, get_codec_info
from .storage import MediaStorage, validate_key
from .tones import render_tone, tone_spec

__all__ = ["AUDIO_EXTENSIONS", "BUNDLED_PROMPTS_DIR", "PromptCache", "PromptNotFound"]

BUNDLED_PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class PromptNotFound(KeyError):
    """No tenant or bundled prompt with this name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "prompt not found"


@dataclass(frozen=True, slots=True)
class _Source:
    pcm: npt.NDArray[np.float32]  # mono, [-1, 1]
    sample_rate: int
    origin: str


def to_int16(samples: npt.NDArray[np.floating]) -> npt.NDArray[np.int16]:
    """Float samples in [-1, 1] to int16 with rounding and clipping."""
    return np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)


class PromptCache:
    """Loads prompts on first use and keeps their encoded payloads per codec."""

    def __init__(
        self,
        storage: MediaStorage | None = None,
        *,
        bundled_dir: str | os.PathLike[str] | None = BUNDLED_PROMPTS_DIR,
        region: str = "us",
    ) -> None:
        self.storage = storage
        self.bundled_dir = Path(bundled_dir) if bundled_dir is not None else None
        self.region = region
        self._sources: dict[tuple[str | None, str], _Source] = {}
        self._encoded: dict[tuple[str | None, str, str], tuple[bytes, ...]] = {}
        self._tenant_misses: set[tuple[str, str]] = set()

    @staticmethod
    def _candidates(name: str) -> list[str]:
        validate_key(name)
        if name.lower().endswith(AUDIO_EXTENSIONS):
            return [name]
        return [name + ext for ext in AUDIO_EXTENSIONS]

    def _find(self, name: str, tenant: str | None) -> tuple[str | None, _Source]:
        if tenant is not None and self.storage is not None:
            key = (tenant, name)
            if key in self._sources:
                return tenant, self._sources[key]
            if key not in self._tenant_misses:
                for candidate in self._candidates(name):
                    if self.storage.exists(tenant, "prompts", candidate):
                        data = self.storage.get(tenant, "prompts", candidate)
                        source = self._read(io.BytesIO(data), f"{tenant}/prompts/{candidate}")
                        self._sources[key] = source
                        return tenant, source
                self._tenant_misses.add(key)
        bundled_key: tuple[str | None, str] = (None, name)
        if bundled_key in self._sources:
            return None, self._sources[bundled_key]
        if self.bundled_dir is not None:
            for candidate in self._candidates(name):
                path = self.bundled_dir / candidate
                if path.is_file():
                    source = self._read(path, str(path))
                    self._sources[bundled_key] = source
                    return None, source
        where = f"tenant {tenant!r} or bundled prompts" if tenant else "bundled prompts"
        raise PromptNotFound(f"prompt {name!r} not found in {where}")

    @staticmethod
    def _read(file: Path | io.BytesIO, origin: str) -> _Source:
        data, rate = soundfile.read(file, dtype="float32", always_2d=True)
        mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
        return _Source(np.ascontiguousarray(mono, dtype=np.float32), int(rate), origin)

    def exists(self, name: str, *, tenant: str | None = None) -> bool:
        """Whether ``name`` resolves (tenant first, then bundled)."""
        try:
            self._find(name, tenant)
        except PromptNotFound:
            return False
        return True

    def names(self, *, tenant: str | None = None) -> set[str]:
        """Prompt names (without extension) available to ``tenant``."""
        found: set[str] = set()
        if self.bundled_dir is not None and self.bundled_dir.is_dir():
            for path in self.bundled_dir.iterdir():
                if path.suffix.lower() in AUDIO_EXTENSIONS:
                    found.add(path.stem)
        if tenant is not None and self.storage is not None:
            for key in self.storage.list(tenant, "prompts"):
                stem, ext = os.path.splitext(key)
                if ext.lower() in AUDIO_EXTENSIONS:
                    found.add(stem)
        return found

    def pcm(
        self, name: str, sample_rate: int, *, tenant: str | None = None
    ) -> npt.NDArray[np.int16]:
        """The prompt as mono int16 at ``sample_rate`` (resampled with soxr)."""
        _, source = self._find(name, tenant)
        samples = source.pcm
        if source.sample_rate != sample_rate:
            samples = soxr.resample(samples, source.sample_rate, sample_rate, quality="HQ")
        return to_int16(samples)

    def payloads(
        self, name: str, codec: CodecInfo | str, *, tenant: str | None = None
    ) -> tuple[bytes, ...]:
        """The prompt's 20 ms payloads for ``codec`` (encoded on first request)."""
        info = get_codec_info(codec) if isinstance(codec, str) else codec
        owner, _ = self._find(name, tenant)
        key = (owner, name, info.name.upper())
        cached = self._encoded.get(key)
        if cached is None:
            pcm = self.pcm(name, info.sample_rate, tenant=owner)
            cached = tuple(create_codec(info).encode_frames(pcm))
            self._encoded[key] = cached
        return cached

    def tone(
        self, name: str, codec: CodecInfo | str, *, region: str | None = None
    ) -> tuple[bytes, ...]:
        """One cycle of a call-progress tone (``ringback``, ``busy``, ``beep``) as payloads.

        Ringback and busy repeat: the caller loops the cycle
        (``itertools.cycle``); a beep plays once.
        """
        info = get_codec_info(codec) if isinstance(codec, str) else codec
        region = region or self.region
        key = (f"tone:{region}", name, info.name.upper())
        cached = self._encoded.get(key)
        if cached is None:
            pcm = render_tone(tone_spec(name, region), info.sample_rate)
            cached = tuple(create_codec(info).encode_frames(pcm))
            self._encoded[key] = cached
        return cached

    def invalidate(self, *, tenant: str | None = None, name: str | None = None) -> None:
        """Forget cached prompts (e.g. after a tenant uploads a new one)."""

        def match(owner: str | None, prompt: str) -> bool:
            return owner == tenant and (name is None or prompt == name)

        self._sources = {k: v for k, v in self._sources.items() if not match(*k)}
        self._encoded = {k: v for k, v in self._encoded.items() if not match(k[0], k[1])}
        if tenant is not None:
            self._tenant_misses = {
                k
                for k in self._tenant_misses
                if not (k[0] == tenant and (name is None or k[1] == name))
            }
