"""G.722 and Opus through aiortc's codec classes (which wrap FFmpeg via PyAV).

This is the only module of the project that imports av, and with
:mod:`media.webrtc` (its RTC classes) one of two that import aiortc. It is
imported lazily by :func:`media.codecs.create_codec` so that SDP and G.711 users
do not pay for loading FFmpeg. :func:`pcm_frame` and :class:`FrameReader` convert
between the project's mono int16 PCM and the ``av.AudioFrame`` objects that
aiortc's media tracks carry (WebRTC legs).
"""

from __future__ import annotations

import fractions

import av
import numpy as np
from aiortc.codecs import G722Decoder, G722Encoder, OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame

from .base import Codec, CodecInfo, Pcm

__all__ = ["FrameReader", "G722Codec", "OpusCodec", "pcm_frame"]


class _AiortcCodec(Codec):
    """Adapter: mono int16 frames in, payload bytes out, and back."""

    def __init__(
        self,
        info: CodecInfo,
        encoder: G722Encoder | OpusEncoder,
        decoder: G722Decoder | OpusDecoder,
    ) -> None:
        self.info = info
        self._encoder = encoder
        self._decoder = decoder
        self._pts = 0
        self._time_base = fractions.Fraction(1, info.sample_rate)
        self._rx_ts = 0

    def encode(self, pcm: Pcm) -> bytes:
        samples = np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.info.sample_rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._pts += samples.shape[1]
        payloads, _ = self._encoder.encode(frame)
        # aiortc's encoders resample to exactly one frame per 20 ms input, so a
        # full frame in gives one payload out.
        return b"".join(payloads)

    def decode(self, payload: bytes) -> Pcm:
        frames = self._decoder.decode(JitterFrame(data=payload, timestamp=self._rx_ts))
        self._rx_ts += self.info.timestamp_step
        if not frames:
            return np.zeros(0, dtype=np.int16)
        parts = []
        for frame in frames:
            assert isinstance(frame, av.AudioFrame)
            data = frame.to_ndarray().reshape(-1)
            channels = len(frame.layout.channels)
            if channels > 1:
                # Packed stereo s16: average the channels to mono.
                data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
            parts.append(data.astype(np.int16, copy=False))
        return np.concatenate(parts)


class G722Codec(_AiortcCodec):
    """G.722 (RFC 3551 4.5.2: 16 kHz audio, 8 kHz RTP clock). Stateful: one per stream."""

    def __init__(self, info: CodecInfo) -> None:
        super().__init__(info, G722Encoder(), G722Decoder())


class OpusCodec(_AiortcCodec):
    """Opus (RFC 7587: 48 kHz clock, "opus/48000/2" in SDP). Stateful: one per stream."""

    def __init__(self, info: CodecInfo) -> None:
        super().__init__(info, OpusEncoder(), OpusDecoder())


def pcm_frame(pcm: Pcm, sample_rate: int, pts: int) -> av.AudioFrame:
    """One mono s16 frame for an aiortc track (``pts`` in samples at ``sample_rate``)."""
    samples = np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, sample_rate)
    return frame


class FrameReader:
    """Frames an aiortc track received (any rate, mono or stereo) -> mono int16 PCM at
    ``sample_rate``. Stateful (the resampler keeps its filter history): one per track."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)

    def timestamp(self, frame: object) -> int | None:
        """The RTP timestamp of ``frame``'s first sample in ``sample_rate``'s clock
        (aiortc's decoders stamp a frame with its packet's timestamp), modulo 2**32;
        ``None`` when the frame has none."""
        assert isinstance(frame, av.AudioFrame)
        if frame.pts is None or not frame.sample_rate:
            return None
        return (frame.pts * self.sample_rate // frame.sample_rate) & 0xFFFFFFFF

    def feed(self, frame: object) -> Pcm:
        assert isinstance(frame, av.AudioFrame)
        parts = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)]
        if not parts:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(parts).astype(np.int16, copy=False)
