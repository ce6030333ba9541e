"""Call recording: both directions of a call, paced by the wall clock.

Theory of operation
-------------------
A call recording taps the caller's RTP session (or WebRTC session, :mod:`media.webrtc`:
the same ``received``/``tick`` calls): what it receives is the caller's voice,
the **left** channel. The **right** channel is the other side: in an IVR, what the
session sends on each media-clock tick (prompts, tones); in a bridged call, what the
other leg's session *receives* (the other party's voice as they sent it, placed by its
own RTP timestamps: the relay forwards packets of any length one per tick, so what goes
out to the caller is not a faithful timeline of it). Mixed mono adds the two. The file's length must be the call's connected time
even when packets are lost, reordered or absent (silence suppression, hold) and when
the event loop stalls, so the recording is paced by time, never by packets:

* :class:`RecordingCore` (sans-IO: it is fed ``now`` and reads no clock) numbers 20 ms
  frames from the moment recording started: frame ``i`` covers
  ``[start + i*F, start + (i+1)*F)``. :meth:`RecordingCore.advance` emits every frame
  whose midpoint has passed, so a tick up to half a frame early or late still emits one
  frame, and a stalled loop emits the frames it missed at once.
* Received packets (either side) go through a
  :class:`~media.jitterbuffer.RecordingJitterBuffer` driven by the core's *frame* time:
  packets land by RTP timestamp (reordering and loss become the right frame or silence)
  and each emitted frame takes exactly one.
* Sent payloads queue (at most :data:`TX_BACKLOG` frames: ticks are paced by the same
  clock, so more means the loop ran ticks in a burst) and each emitted frame takes one;
  a frame with nothing sent is silence. When the loop stalled, the media clock makes up
  the missed ticks (:mod:`media.clock`: up to ``max_lag_ticks`` periods late, one
  callback each, right after the late one), so frames due with no payload queued wait
  for those (at most :data:`CATCH_UP` frames) instead of becoming silence: the caller
  heard every packet, late, and the recording holds them in order. Later than that,
  the clock skips the missed ticks: nothing went out, those frames are silence.
* :meth:`RecordingCore.finish` emits up to the stop time and cuts the last frame, so the
  file is ``(stop - start) * rate`` samples, within half a frame (10 ms).

:class:`CallRecording` is the thin shell an :class:`~media.session.RtpSession` calls
(its ``recording`` attribute): it decodes frames with the stream's current codec, puts
them side by side (or mixes them) and streams them to a :class:`~media.recorder.Recorder`
(which writes to disk a second at a time).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .codecs import Codec, CodecInfo, create_codec
from .jitterbuffer import RecordingJitterBuffer
from .recorder import Recorder, RecordingResult

__all__ = [
    "CATCH_UP",
    "CHANNEL_MODES",
    "TX_BACKLOG",
    "CallRecording",
    "CodecSource",
    "FarSide",
    "RecordingCore",
    "mix",
]


class CodecSource(Protocol):
    """Where a recording reads the codec of the payloads it is fed: an RTP session's
    :class:`~media.stream.RtpStream` (it changes with a re-INVITE), or a
    :class:`~media.webrtc.WebRtcSession` (its engine-side codec, G.711)."""

    @property
    def codec(self) -> CodecInfo: ...


#: ``stereo``: caller left, the other side right; ``mono``: both mixed.
CHANNEL_MODES = frozenset({"stereo", "mono"})
#: Sent frames kept waiting for their slot; older ones are dropped (counted).
TX_BACKLOG = 3
#: Frames due with nothing sent yet that wait for the media clock's catch-up ticks (it
#: makes up ticks up to ``max_lag_ticks`` (5) periods late, plus the late tick's own
#: period and rounding): more than this, the clock skipped them and they are silence.
CATCH_UP = 7
# Octet-per-tick codecs: packets of any ptime are cut into 20 ms frames.
_OCTET_PER_TICK = frozenset({"PCMU", "PCMA", "G722"})
# Codecs decoded a batch at a time (stateless, one octet per sample).
_STATELESS = frozenset({"PCMU", "PCMA"})
_BATCH = 25
"""Frames decoded and written together (0.5 s)."""

Pair = tuple[bytes | None, bytes | None]
"""One frame of the recording: (received payload, sent payload); ``None`` is silence."""


class RecordingCore:
    """Which (received, sent) payload pair fills each frame of a call recording.

    Args:
        start: time the recording starts (the caller's clock, seconds).
        frame_seconds / timestamp_step: the codec's frame (20 ms, 160 at 8 kHz).
        silence: one silent payload of an octet-per-timestamp codec (G.711, G.722),
            so that packets of any length are cut into frames; ``None`` otherwise.
        jitter_delay: how long a received packet may be late and still be recorded.
    """

    def __init__(
        self,
        *,
        start: float,
        frame_seconds: float = 0.02,
        timestamp_step: int = 160,
        silence: bytes | None = None,
        jitter_delay: float = 0.06,
    ) -> None:
        self.start = start
        self.frame_seconds = frame_seconds
        self.frames = 0
        """Frames emitted so far."""
        self.tx_dropped = 0
        self.jitter_delay = jitter_delay
        self._jitter = RecordingJitterBuffer(
            frame_seconds=frame_seconds,
            timestamp_step=timestamp_step,
            delay=jitter_delay,
            silence=silence,
        )
        self._far: RecordingJitterBuffer | None = None
        """The right channel's packets while bridged (else it is what was sent)."""
        self._rx: deque[bytes | None] = deque()
        self._rx_far: deque[bytes | None] = deque()
        self._tx: deque[bytes | None] = deque()
        self.finished = False

    @property
    def bridged(self) -> bool:
        """Whether the right channel is another leg's received audio."""
        return self._far is not None

    def received(self, timestamp: int, payload: bytes, now: float) -> None:
        """An audio packet from the caller (``now``: its arrival)."""
        if not self.finished:
            self._jitter.push(timestamp, payload, now)

    def received_far(self, timestamp: int, payload: bytes, now: float) -> None:
        """An audio packet from the other party of a bridged call."""
        if self._far is not None and not self.finished:
            self._far.push(timestamp, payload, now)

    def bridge(self, *, timestamp_step: int = 160, silence: bytes | None = None) -> None:
        """From the next frame on, the right channel is what :meth:`received_far` gets
        (a bridged call); :meth:`unbridge` goes back to what was sent."""
        self._far = RecordingJitterBuffer(
            frame_seconds=self.frame_seconds,
            timestamp_step=timestamp_step,
            delay=self.jitter_delay,
            silence=silence,
        )
        self._rx_far.clear()

    def unbridge(self) -> None:
        self._far = None
        self._rx_far.clear()
        self._tx.clear()

    def sent(self, payload: bytes | None) -> None:
        """What the session sent on this tick (``None``: nothing, e.g. on hold)."""
        if self.finished or self._far is not None:
            return
        tx = self._tx
        tx.append(payload)
        if len(tx) > TX_BACKLOG:
            tx.popleft()
            self.tx_dropped += 1

    def _emit(self, count: int) -> list[Pair]:
        out: list[Pair] = []
        fs = self.frame_seconds
        rx, jitter, far = self._rx, self._jitter, self._far
        right = self._tx if far is None else self._rx_far
        # more frames due than payloads sent: the loop stalled, nothing went out during
        # the gap, and what was sent since belongs at its end
        gap = max(0, count - len(right)) if far is None else 0
        for i in range(count):
            self.frames += 1
            # the jitter buffers run on frame time: exactly one frame per frame emitted
            at = self.start + self.frames * fs
            rx.extend(jitter.pop(at))
            if far is not None:
                right.extend(far.pop(at))
            sent = right.popleft() if right and i >= gap else None
            out.append((rx.popleft() if rx else None, sent))
        return out

    def advance(self, now: float) -> list[Pair]:
        """The frames whose midpoint is at or before ``now``, in order."""
        if self.finished:
            return []
        due = int((now - self.start) / self.frame_seconds + 0.5) - self.frames
        if self._far is None and len(self._tx) < due <= len(self._tx) + CATCH_UP:
            # the clock is late: its catch-up ticks follow at once, with the rest
            due = len(self._tx)
        return self._emit(due) if due > 0 else []

    def finish(self, now: float) -> tuple[list[Pair], float]:
        """Stop at ``now``: the remaining frames and the fraction (0, 1] of the last one
        to keep, so that the recording lasts ``now - start``."""
        if self.finished:
            return [], 1.0
        exact = max(0.0, (now - self.start) / self.frame_seconds)
        whole = int(exact)
        part = exact - whole
        count = whole - self.frames + (1 if part > 1e-9 else 0)
        pairs = self._emit(count) if count > 0 else []
        self.finished = True
        self._tx.clear()
        self._rx.clear()
        self._rx_far.clear()
        return pairs, (part if pairs and part > 1e-9 else 1.0)


def mix(
    left: npt.NDArray[np.int16], right: npt.NDArray[np.int16], mode: str
) -> npt.NDArray[np.int16]:
    """Two equal-length mono frames as one recording frame: ``(n, 2)`` for stereo
    (left = caller), a clipped sum for mono."""
    if mode == "stereo":
        return np.column_stack((left, right))
    total = left.astype(np.int32) + right
    return np.clip(total, -32768, 32767).astype(np.int16)


def _fit(pcm: npt.NDArray[np.int16], n: int) -> npt.NDArray[np.int16]:
    """A decoded frame at another rate (the codec changed mid-call) resized to ``n``
    samples (linear interpolation: rare, and only has to keep the timing right)."""
    if len(pcm) == n:
        return pcm
    if len(pcm) == 0:
        return np.zeros(n, dtype=np.int16)
    positions = np.linspace(0, len(pcm) - 1, n)
    return np.interp(positions, np.arange(len(pcm)), pcm).astype(np.int16)


class CallRecording:
    """The recording tap of one RTP or WebRTC session (asyncio-free: the session calls
    it from its tick and receive callbacks with the loop's time).

    ``recorder`` is the file (stereo needs ``channels=2``); ``stream`` is read for the
    current codec (an RTP session's stream; a WebRTC session itself). ``on_closed`` is called once with the result."""

    def __init__(
        self,
        recorder: Recorder,
        stream: CodecSource,
        *,
        key: str,
        mode: str,
        now: float,
        on_closed: Callable[[RecordingResult], None] | None = None,
    ) -> None:
        if mode not in CHANNEL_MODES:
            raise ValueError(f"recording channels must be stereo or mono, not {mode!r}")
        if (recorder.channels == 2) != (mode == "stereo"):
            raise ValueError("a stereo recording needs a two-channel recorder")
        codec = stream.codec
        self.key = key
        self.mode = mode
        self.recorder = recorder
        self._stream = stream
        self._samples = recorder.sample_rate * codec.frame_ms // 1000
        self._codec_info: CodecInfo | None = None
        self._rx_codec: Codec | None = None
        self._tx_codec: Codec | None = None
        self._zeros = np.zeros(self._samples, dtype=np.int16)
        self.core = RecordingCore(
            start=now,
            frame_seconds=codec.frame_ms / 1000,
            timestamp_step=codec.timestamp_step,
            silence=create_codec(codec).silence()
            if codec.name.upper() in _OCTET_PER_TICK
            else None,
        )
        self.on_closed = on_closed
        self.result: RecordingResult | None = None
        self._pending: list[Pair] = []
        """Frames emitted and not written yet: decoded and written :data:`_BATCH` at
        a time (the recorder writes the file a second at a time anyway)."""
        self._filler = b""
        self._far_stream: CodecSource | None = None
        self._far_codec: tuple[CodecInfo, Codec] | None = None

    @property
    def closed(self) -> bool:
        return self.result is not None

    def attach_far(self, stream: CodecSource) -> FarSide:
        """Bridged: the right channel becomes what ``stream``'s session receives. Set the
        returned tap as that session's ``recording``."""
        self._flush()  # what is pending was decoded with the previous source's codec
        codec = stream.codec
        octets = codec.name.upper() in _OCTET_PER_TICK
        self.core.bridge(
            timestamp_step=codec.timestamp_step,
            silence=create_codec(codec).silence() if octets else None,
        )
        self._far_stream = stream
        self._far_codec = None
        return FarSide(self)

    def detach_far(self) -> None:
        """No longer bridged: the right channel is what the caller's session sends."""
        self._flush()
        self.core.unbridge()
        self._far_stream = None
        self._far_codec = None

    def received(self, timestamp: int, payload: bytes, now: float) -> None:
        """An audio packet from the far end of this session."""
        self.core.received(timestamp, payload, now)

    def tick(self, payload: bytes | None, now: float) -> None:
        """The media clock ticked: ``payload`` went out (``None``: nothing did)."""
        core = self.core
        if core.finished:
            return
        core.sent(payload)
        pairs = core.advance(now)
        if pairs:
            pending = self._pending
            pending += pairs
            if len(pending) >= _BATCH:
                self._flush()

    def close(self, now: float, reason: str = "stopped") -> RecordingResult:
        """Stop at ``now`` (idempotent): the file lasts from start to ``now``."""
        if self.result is not None:
            return self.result
        pairs, keep = self.core.finish(now)
        self._pending += pairs
        if self._pending and not self.recorder.closed:
            self._flush(keep)
        return self._close(reason)

    def _close(self, reason: str) -> RecordingResult:
        self.core.finished = True
        self._pending.clear()
        result = self.recorder.close(reason)
        self.result = result
        callback, self.on_closed = self.on_closed, None
        if callback is not None:
            callback(result)
        return result

    def _decoders(self) -> tuple[Codec, Codec]:
        info = self._stream.codec
        if info is not self._codec_info or self._rx_codec is None or self._tx_codec is None:
            # separate decoder states per direction (G.722 and Opus are stateful)
            self._codec_info = info
            self._rx_codec = create_codec(info)
            self._tx_codec = create_codec(info)
        far = self._far_stream
        if far is None:
            return self._rx_codec, self._tx_codec
        cached = self._far_codec
        if cached is None or cached[0] is not far.codec:
            cached = self._far_codec = (far.codec, create_codec(far.codec))
        return self._rx_codec, cached[1]

    def _channel(self, codec: Codec, payloads: list[bytes | None]) -> npt.NDArray[np.int16]:
        """One channel of the pending frames, decoded (silence where ``None``)."""
        n = self._samples
        if codec.info.name.upper() in _STATELESS and all(
            p is None or len(p) == n for p in payloads
        ):
            # G.711 at 8 kHz: one table lookup for the whole batch instead of one per
            # frame (per frame, decoding was the recording's main cost)
            filler = self._filler
            if len(filler) != n:
                filler = self._filler = b"\xff" * n
            pcm: Any = codec.decode(b"".join(filler if p is None else p for p in payloads))
            for i, p in enumerate(payloads):
                if p is None:
                    pcm[i * n : (i + 1) * n] = 0
            return pcm
        frames = []
        for p in payloads:
            if p is None:
                frames.append(self._zeros)
                continue
            try:
                frames.append(_fit(codec.decode(p), n))
            except (ValueError, IndexError):
                frames.append(self._zeros)
        return np.concatenate(frames)

    def _flush(self, keep: float = 1.0) -> None:
        """Decode the pending frames, lay them out (or mix them) and write them."""
        pending, self._pending = self._pending, []
        if not pending or self.recorder.closed:
            return
        rx_codec, tx_codec = self._decoders()
        left = self._channel(rx_codec, [rx for rx, _ in pending])
        right = self._channel(tx_codec, [tx for _, tx in pending])
        if keep < 1.0:
            cut = len(left) - self._samples + round(self._samples * keep)
            left, right = left[:cut], right[:cut]
        if self.recorder.write(mix(left, right, self.mode)) is not None:
            self._close("max_seconds")


class FarSide:
    """The tap on the other leg of a bridged call: what that session receives is the
    recording's right channel. Its ticks and its session's end do nothing (the
    caller's session paces and closes the recording)."""

    __slots__ = ("owner",)

    def __init__(self, owner: CallRecording) -> None:
        self.owner = owner

    def received(self, timestamp: int, payload: bytes, now: float) -> None:
        self.owner.core.received_far(timestamp, payload, now)

    def tick(self, payload: bytes | None, now: float) -> None:
        return None

    def close(self, now: float, reason: str = "stopped") -> None:
        return None
