"""Recorder: writes decoded call audio to WAV or FLAC with soundfile.

The session feeds it one decoded frame at a time (from the recording jitter
buffer, with silence for missing frames, so the file's length is the call's
wall time). :meth:`Recorder.write` says when to stop: ``"max_seconds"`` once
the limit is reached, ``"silence"`` after ``silence_timeout`` seconds below
``silence_threshold_dbfs``. The beep before recording is played by the caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import soundfile

__all__ = ["RecordingResult", "Recorder"]


@dataclass(frozen=True, slots=True)
class RecordingResult:
    """How a recording ended: its length in seconds and why it stopped
    (``"max_seconds"``, ``"silence"``, ``"dtmf"``, ``"hangup"``, ``"stopped"``)."""

    seconds: float
    reason: str
    digit: str | None = None


class Recorder:
    """Streams int16 frames to a WAV or FLAC file: mono (1-D arrays) or, with
    ``channels=2``, stereo (``(n, 2)`` arrays: a call recording's two directions)."""

    def __init__(
        self,
        file: str | os.PathLike[str] | BinaryIO,
        *,
        sample_rate: int = 8000,
        format: str = "WAV",
        max_seconds: float = 120.0,
        silence_timeout: float | None = None,
        silence_threshold_dbfs: float = -45.0,
        channels: int = 1,
    ) -> None:
        fmt = format.upper()
        if fmt not in ("WAV", "FLAC"):
            raise ValueError(f"unsupported recording format {format!r}; use WAV or FLAC")
        if max_seconds <= 0:
            raise ValueError("max_seconds must be positive")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels!r}")
        self.channels = channels
        self.sample_rate = sample_rate
        self.max_samples = int(max_seconds * sample_rate)
        self.silence_samples = (
            int(silence_timeout * sample_rate) if silence_timeout is not None else None
        )
        # Mean-square threshold for a frame to count as silence.
        self._threshold = (32768.0 * 10 ** (silence_threshold_dbfs / 20)) ** 2
        self._file = soundfile.SoundFile(
            file, mode="w", samplerate=sample_rate, channels=channels, format=fmt, subtype="PCM_16"
        )
        self.samples = 0
        self._silent_run = 0
        self._pending: list[npt.NDArray[np.int16]] = []
        self._pending_samples = 0
        self.closed = False

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def write(self, pcm: npt.NDArray[np.int16]) -> str | None:
        """Append samples (one row per sample instant); return a stop reason when the
        recording should end.

        Frames are buffered and written to the file a second at a time: one
        ``soundfile`` write per 20 ms frame cost ~120 us here, most of a call's
        recording budget. Silence is judged on integer energy (no float copy)."""
        if self.closed:
            return "stopped"
        room = self.max_samples - self.samples
        chunk = pcm[:room]
        n = len(chunk)
        if n:
            self._pending.append(chunk)
            self._pending_samples += n
            self.samples += n
            if self._pending_samples >= self.sample_rate:
                self._flush()
        if self.samples >= self.max_samples:
            return "max_seconds"
        if self.silence_samples is not None and n:
            wide = chunk.astype(np.int64).ravel()
            energy = int(np.dot(wide, wide))
            quiet = energy < self._threshold * len(wide)
            self._silent_run = self._silent_run + n if quiet else 0
            if self._silent_run >= self.silence_samples:
                return "silence"
        return None

    def _flush(self) -> None:
        if self._pending:
            self._file.write(np.concatenate(self._pending))
            self._pending.clear()
            self._pending_samples = 0

    def close(self, reason: str = "stopped", digit: str | None = None) -> RecordingResult:
        """Finish the file and return the result (idempotent on the file)."""
        if not self.closed:
            self._flush()
            self._file.close()
            self.closed = True
        return RecordingResult(round(self.seconds, 3), reason, digit)
