"""Recording jitter buffer: frames ordered by RTP position, paced by wall time.

Theory of operation: the buffer turns a stream of RTP payloads (late,
duplicated, reordered, lost, or absent during silence suppression) into
exactly one frame per ``frame_seconds`` of wall time, so a recording lasts as
long as the call did. Packets are placed by their RTP timestamp (one frame
per ``timestamp_step``), which orders them as their sequence numbers do within
a talkspurt and also keeps the gap when the peer stops sending (VAD: the
sequence number continues but the timestamp jumps, RFC 3551 4.1). The first
packet fixes the playout start (its arrival + ``delay``) and frame 0. Each
:meth:`RecordingJitterBuffer.pop` at time ``now`` returns the frames due since
the last call; a frame with no packet is ``None`` (the caller writes silence).
Packets for frames already played out are late and dropped; duplicates are
dropped; a packet more than ``max_jump`` frames away from where wall time says
the stream is (a new SSRC, a re-INVITE) re-bases the position without
changing the pacing. Sans-IO: time is only what the caller passes as ``now``.

Packets need not be 20 ms long (SDP ``ptime``; SIPp's G.711 capture has 30 ms
packets). With ``silence`` given, a payload is taken as one octet per RTP
timestamp unit (true of G.711 and of G.722, RFC 3551 4.5.2) and cut along
frame boundaries, so 10, 30 or 60 ms packets become 20 ms frames; parts of a
frame no packet covered keep ``silence``. Without it, one packet is one frame.
"""

from __future__ import annotations

__all__ = ["RecordingJitterBuffer"]


class RecordingJitterBuffer:
    """Reorders, drops duplicates and late packets, and fills gaps with ``None``
    so that the number of frames matches elapsed wall time."""

    def __init__(
        self,
        *,
        frame_seconds: float = 0.02,
        timestamp_step: int = 160,
        delay: float = 0.06,
        max_jump: int = 250,
        silence: bytes | None = None,
    ) -> None:
        if silence is not None and len(silence) != timestamp_step:
            raise ValueError(f"silence frame has {len(silence)} octets, expected {timestamp_step}")
        self.silence = silence
        self.frame_seconds = frame_seconds
        self.timestamp_step = timestamp_step
        self.delay = delay
        self.max_jump = max_jump
        self._frames: dict[int, bytes | bytearray] = {}  # frame index -> payload
        self._base_ts = 0  # RTP timestamp of frame index 0
        self._start: float | None = None  # wall time frame 0 is due
        self._next = 0  # index of the next frame to emit
        self.duplicates = 0
        self.late = 0
        self.resyncs = 0

    def _offset(self, timestamp: int) -> int:
        delta = (timestamp - self._base_ts) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        return delta

    def push(self, timestamp: int, payload: bytes, now: float) -> bool:
        """Add a packet's payload by RTP timestamp; False if dropped (late/duplicate)."""
        if self._start is None:
            self._start = now + self.delay
            self._base_ts = timestamp
        step = self.timestamp_step
        offset = self._offset(timestamp)
        index = offset // step
        expected = int((now - self._start) / self.frame_seconds)
        if abs(index - expected) > self.max_jump:
            # A new stream: map this packet to the current wall-time position.
            self.resyncs += 1
            target = max(self._next, expected)
            self._base_ts = (timestamp - target * step) & 0xFFFFFFFF
            self._frames.clear()
            index = target
            offset = target * step
        if self.silence is not None and (len(payload) != step or offset % step):
            return self._push_split(offset, payload)
        if index < self._next:
            self.late += 1
            return False
        if index in self._frames:
            self.duplicates += 1
            return False
        self._frames[index] = payload
        return True

    def _push_split(self, offset: int, payload: bytes) -> bool:
        silence = self.silence
        assert silence is not None
        step = self.timestamp_step
        frames = self._frames
        stored = False
        pos, end = offset, offset + len(payload)
        while pos < end:
            index, within = divmod(pos, step)
            n = min(step - within, end - pos)
            if index >= self._next:
                frame = frames.get(index)
                if frame is None:
                    frame = frames[index] = bytearray(silence)
                elif isinstance(frame, bytes):
                    frame = frames[index] = bytearray(frame)
                frame[within : within + n] = payload[pos - offset : pos - offset + n]
                stored = True
            pos += n
        if not stored:
            self.late += 1
        return stored

    def due(self, now: float) -> int:
        """How many frames are due at ``now`` and not yet popped."""
        if self._start is None or now < self._start:
            return 0
        return int((now - self._start) / self.frame_seconds) + 1 - self._next

    def pop(self, now: float) -> list[bytes | None]:
        """Frames due at ``now``, in order; ``None`` where a packet is missing."""
        count = self.due(now)
        if count <= 0:
            return []
        frames = self._frames
        start = self._next
        out = [_frozen(frames.pop(i, None)) for i in range(start, start + count)]
        self._next = start + count
        return out

    def flush(self, now: float) -> list[bytes | None]:
        """At the end of a recording: frames due at ``now`` plus any still buffered."""
        out = self.pop(now)
        if self._frames:
            last = max(self._frames)
            out += [_frozen(self._frames.pop(i, None)) for i in range(self._next, last + 1)]
            self._next = last + 1
        return out


def _frozen(frame: bytes | bytearray | None) -> bytes | None:
    return bytes(frame) if isinstance(frame, bytearray) else frame
