"""Codec descriptions and the encoder/decoder interface every codec implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Codec", "CodecInfo", "Pcm"]

Pcm = npt.NDArray[np.int16]
"""Mono signed 16-bit samples at the codec's ``sample_rate``."""


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """What SDP and the media path need to know about an RTP audio codec.

    ``clock_rate`` is the RTP clock (the SDP rtpmap rate); ``sample_rate`` is the
    rate of the PCM the encoder takes and the decoder gives (they differ for
    G.722, RFC 3551 4.5.2). ``channels`` is the SDP channel count; the PCM
    interface of every codec here is mono.
    """

    name: str
    payload_type: int
    clock_rate: int
    sample_rate: int
    channels: int = 1
    fmtp: str | None = None
    frame_ms: int = 20

    @property
    def samples_per_frame(self) -> int:
        """PCM samples in one frame at ``sample_rate``."""
        return self.sample_rate * self.frame_ms // 1000

    @property
    def timestamp_step(self) -> int:
        """RTP timestamp increment per frame (at ``clock_rate``)."""
        return self.clock_rate * self.frame_ms // 1000

    @property
    def is_dtmf(self) -> bool:
        return self.name.lower() == "telephone-event"

    def with_payload_type(self, payload_type: int) -> CodecInfo:
        """A copy with another payload type (dynamic types follow the offerer)."""
        return CodecInfo(
            self.name,
            payload_type,
            self.clock_rate,
            self.sample_rate,
            self.channels,
            self.fmtp,
            self.frame_ms,
        )


class Codec(ABC):
    """A codec instance. Stateless codecs may be shared; stateful ones are per stream."""

    info: CodecInfo

    @abstractmethod
    def encode(self, pcm: Pcm) -> bytes:
        """Encode exactly one frame (``info.samples_per_frame`` samples)."""

    @abstractmethod
    def decode(self, payload: bytes) -> Pcm:
        """Decode one payload into mono int16 samples at ``info.sample_rate``."""

    def encode_frames(self, pcm: Pcm) -> list[bytes]:
        """Encode a whole signal into frame payloads; the last frame is zero-padded."""
        n = self.info.samples_per_frame
        pad = -len(pcm) % n
        if pad:
            pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
        return [self.encode(pcm[i : i + n]) for i in range(0, len(pcm), n)]

    def silence(self) -> bytes:
        """One frame of encoded digital silence."""
        return self.encode(np.zeros(self.info.samples_per_frame, dtype=np.int16))
