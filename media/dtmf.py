"""DTMF: RFC 4733 telephone-events (receive and send), in-band detection
(Goertzel), and SIP INFO bodies (application/dtmf-relay, application/dtmf).

Theory of operation (RFC 4733 2.5): one key press is one *event*; all packets
of an event carry the same RTP timestamp (the event start) and a growing
duration; the first has the marker bit; the last three repeat the final
duration with the E bit set. :class:`DtmfReceiver` reports a digit once per
event: when the first E packet arrives, or - if every end packet was lost - as
soon as a packet of a new event (a different timestamp) arrives. Repeated end
packets and retransmissions of an already reported event are ignored.
"""

from __future__ import annotations

import functools
import struct
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DIGIT_TO_EVENT",
    "EVENT_TO_DIGIT",
    "DtmfEvent",
    "DtmfPacket",
    "DtmfReceiver",
    "DtmfSender",
    "InbandDtmfDetector",
    "event_payload",
    "parse_dtmf_info",
    "parse_event_payload",
]

# RFC 4733 3.2 table 3: DTMF named events.
EVENT_TO_DIGIT: dict[int, str] = {i: str(i) for i in range(10)} | {
    10: "*",
    11: "#",
    12: "A",
    13: "B",
    14: "C",
    15: "D",
}
DIGIT_TO_EVENT: dict[str, int] = {d: e for e, d in EVENT_TO_DIGIT.items()}

_EVENT = struct.Struct("!BBH")


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """One detected key press.

    ``duration_ms`` is as reported (RFC 4733 duration, INFO Duration, or the
    measured tone length); ``source`` is ``"rfc4733"``, ``"inband"`` or ``"info"``.
    """

    digit: str
    duration_ms: int
    source: str
    volume: int | None = None
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class DtmfPacket:
    """One telephone-event RTP packet to send: payload, marker, and its RTP timestamp."""

    payload: bytes
    marker: bool
    timestamp: int
    end: bool


def event_payload(event: int, *, end: bool, volume: int, duration: int) -> bytes:
    """Build the 4-byte telephone-event payload (RFC 4733 2.3)."""
    return _EVENT.pack(event, (0x80 if end else 0) | (volume & 0x3F), duration & 0xFFFF)


def parse_event_payload(payload: bytes) -> tuple[int, bool, int, int]:
    """Return ``(event, end, volume, duration)``; ``ValueError`` if shorter than 4 bytes."""
    if len(payload) < 4:
        raise ValueError(f"telephone-event payload length {len(payload)} is less than 4 bytes")
    event, flags, duration = _EVENT.unpack_from(payload, 0)
    return event, bool(flags & 0x80), flags & 0x3F, duration


class DtmfReceiver:
    """Sans-IO RFC 4733 receiver: feed telephone-event packets, get :class:`DtmfEvent`.

    ``clock_rate`` converts durations (timestamp units) to milliseconds.
    """

    def __init__(self, clock_rate: int = 8000, *, history: int = 8) -> None:
        self.clock_rate = clock_rate
        self._reported: deque[int] = deque(maxlen=history)
        self._current_ts: int | None = None
        self._current: tuple[int, int, int] | None = None  # event, volume, duration
        self.ignored = 0

    def _make(self, timestamp: int, event: int, volume: int, duration: int) -> DtmfEvent | None:
        self._reported.append(timestamp)
        digit = EVENT_TO_DIGIT.get(event)
        if digit is None:
            return None
        return DtmfEvent(
            digit,
            duration * 1000 // self.clock_rate,
            "rfc4733",
            volume=volume,
            timestamp=timestamp,
        )

    def feed(self, payload: bytes, timestamp: int) -> list[DtmfEvent]:
        """Process one telephone-event packet's payload and RTP timestamp.

        Returns zero, one or (when an unterminated event is followed by a new
        one) two events. Raises ``ValueError`` for a short payload.
        """
        event, end, volume, duration = parse_event_payload(payload)
        out: list[DtmfEvent] = []
        if timestamp in self._reported:
            # Retransmitted end packet, or a late packet of a finished event.
            self.ignored += 1
            return out
        if timestamp != self._current_ts:
            if self._current_ts is not None and self._current is not None:
                # RFC 4733 2.5.1.5: a new event ends the previous one even if
                # we never saw its end packets.
                prev = self._make(self._current_ts, *self._current)
                if prev is not None:
                    out.append(prev)
            self._current_ts = timestamp
        self._current = (event, volume, duration)
        if end:
            done = self._make(timestamp, event, volume, duration)
            self._current_ts = None
            self._current = None
            if done is not None:
                out.append(done)
        return out

    def flush(self) -> list[DtmfEvent]:
        """Report an event still in progress (e.g. the stream stopped before its end)."""
        if self._current_ts is None or self._current is None:
            return []
        done = self._make(self._current_ts, *self._current)
        self._current_ts = None
        self._current = None
        return [done] if done is not None else []


class DtmfSender:
    """Builds the RFC 4733 packet train for one digit (RFC 4733 2.5.1).

    Packets are produced every ``packet_ms``: the first with the marker, then
    updates with growing duration, then ``end_packets`` (3) repeats of the
    final duration with the E bit.
    """

    def __init__(
        self,
        clock_rate: int = 8000,
        *,
        packet_ms: int = 20,
        volume: int = 10,
        end_packets: int = 3,
    ) -> None:
        self.clock_rate = clock_rate
        self.packet_ms = packet_ms
        self.volume = volume
        self.end_packets = end_packets

    def packets(self, digit: str, timestamp: int, *, duration_ms: int = 100) -> list[DtmfPacket]:
        """All packets for ``digit`` starting at RTP ``timestamp``."""
        try:
            event = DIGIT_TO_EVENT[digit.upper()]
        except KeyError:
            raise ValueError(f"not a DTMF digit: {digit!r}") from None
        step = self.clock_rate * self.packet_ms // 1000
        total = max(step, self.clock_rate * duration_ms // 1000)
        out: list[DtmfPacket] = []
        duration = step
        while duration < total:
            out.append(
                DtmfPacket(
                    event_payload(event, end=False, volume=self.volume, duration=duration),
                    not out,
                    timestamp,
                    False,
                )
            )
            duration += step
        end = event_payload(event, end=True, volume=self.volume, duration=total)
        for _ in range(self.end_packets):
            out.append(DtmfPacket(end, not out, timestamp, True))
        return out


# ITU-T Q.23 frequencies.
_ROWS = (697.0, 770.0, 852.0, 941.0)
_COLS = (1209.0, 1336.0, 1477.0, 1633.0)
_KEYPAD = ("123A", "456B", "789C", "*0#D")


class InbandDtmfDetector:
    """In-band DTMF detector (ITU-T Q.24 style) on int16 PCM.

    Each block of ``block_size`` samples (205 at 8 kHz, ~25.6 ms) is evaluated at
    the eight DTMF frequencies. The Goertzel output for a frequency equals the
    single-bin DFT at that frequency, so all eight are computed at once as one
    matrix product (no per-sample Python loop). A block holds a digit when:
    the strongest row and column tones carry most of the block energy, each
    beats the other tones of its group by ``min_group_ratio``, the twist (the
    column/row power ratio) is within limits, and the signal is above
    ``min_level_dbfs``. A digit is reported once, after ``min_blocks``
    consecutive blocks agree, and re-armed only by a block without it.
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        *,
        block_size: int = 205,
        min_level_dbfs: float = -36.0,
        max_normal_twist_db: float = 8.0,
        max_reverse_twist_db: float = 4.0,
        min_tone_ratio: float = 0.6,
        min_group_ratio_db: float = 6.0,
        min_blocks: int = 2,
    ) -> None:
        self.sample_rate = sample_rate
        self.block_size = block_size
        self._basis = _goertzel_basis(sample_rate, block_size)
        self._min_power = (10 ** (min_level_dbfs / 20) * 32768) ** 2 / 2  # per-sample power
        self._normal_twist = 10 ** (max_normal_twist_db / 10)
        self._reverse_twist = 10 ** (max_reverse_twist_db / 10)
        self._min_tone_ratio = min_tone_ratio
        self._group_ratio = 10 ** (min_group_ratio_db / 10)
        self._min_blocks = min_blocks
        self._buffer = np.zeros(0, dtype=np.float64)
        self._candidate: str | None = None
        self._count = 0
        self._reported: str | None = None
        self._samples_in_tone = 0

    def _classify(self, block: npt.NDArray[np.float64]) -> str | None:
        energy = float(np.dot(block, block))
        n = self.block_size
        if energy / n < self._min_power:
            return None
        # |X(f)|^2 * 2 / N is the energy of a sinusoid at f within the block.
        powers = np.abs(self._basis @ block) ** 2 * (2.0 / n)
        rows, cols = powers[:4], powers[4:]
        r = int(np.argmax(rows))
        c = int(np.argmax(cols))
        row_p, col_p = float(rows[r]), float(cols[c])
        if row_p + col_p < self._min_tone_ratio * energy:
            return None
        others_r = np.delete(rows, r)
        others_c = np.delete(cols, c)
        if row_p < self._group_ratio * float(others_r.max()):
            return None
        if col_p < self._group_ratio * float(others_c.max()):
            return None
        # Twist: normal = column (high group) weaker than row; reverse = stronger.
        if col_p * self._normal_twist < row_p or row_p * self._reverse_twist < col_p:
            return None
        return _KEYPAD[r][c]

    def feed(self, pcm: npt.NDArray[np.int16]) -> list[DtmfEvent]:
        """Feed samples (any length); return digits whose tone just qualified."""
        self._buffer = np.concatenate([self._buffer, pcm.astype(np.float64)])
        out: list[DtmfEvent] = []
        n = self.block_size
        while len(self._buffer) >= n:
            block = self._buffer[:n]
            self._buffer = self._buffer[n:]
            digit = self._classify(block)
            if digit is not None and digit == self._candidate:
                self._count += 1
                self._samples_in_tone += n
            else:
                self._candidate = digit
                self._count = 1 if digit is not None else 0
                self._samples_in_tone = n if digit is not None else 0
                if digit != self._reported:
                    self._reported = None
            if (
                self._candidate is not None
                and self._count >= self._min_blocks
                and self._reported != self._candidate
            ):
                self._reported = self._candidate
                out.append(
                    DtmfEvent(
                        self._candidate,
                        self._samples_in_tone * 1000 // self.sample_rate,
                        "inband",
                    )
                )
        return out


@functools.lru_cache(maxsize=8)
def _goertzel_basis(sample_rate: int, block_size: int) -> npt.NDArray[np.complex128]:
    """The DFT rows at the eight DTMF frequencies (shared by every detector: read-only)."""
    n = np.arange(block_size)
    freqs = np.array(_ROWS + _COLS)
    basis = np.exp(-2j * np.pi * np.outer(freqs, n) / sample_rate)
    basis.setflags(write=False)
    return basis


def parse_dtmf_info(content_type: str, body: bytes | str) -> DtmfEvent:
    """Parse a SIP INFO DTMF body.

    ``application/dtmf-relay``: lines ``Signal=5`` and ``Duration=160`` (ms).
    ``application/dtmf``: the body is the digit itself (or its event number).
    Raises ``ValueError`` naming the problem for anything else.
    """
    ctype = content_type.split(";", 1)[0].strip().lower()
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if ctype == "application/dtmf-relay":
        fields: dict[str, str] = {}
        for line in text.replace("\r\n", "\n").split("\n"):
            if not line.strip():
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"dtmf-relay line without '=': {line.strip()!r}")
            fields[key.strip().lower()] = value.strip()
        if "signal" not in fields:
            raise ValueError("dtmf-relay body has no Signal line")
        digit = _info_digit(fields["signal"])
        duration = 250
        if "duration" in fields:
            try:
                duration = int(fields["duration"])
            except ValueError:
                raise ValueError(
                    f"dtmf-relay Duration is not an integer: {fields['duration']!r}"
                ) from None
        return DtmfEvent(digit, duration, "info")
    if ctype == "application/dtmf":
        return DtmfEvent(_info_digit(text.strip()), 250, "info")
    raise ValueError(f"unsupported DTMF INFO content type {content_type!r}")


def _info_digit(value: str) -> str:
    upper = value.upper()
    if upper in DIGIT_TO_EVENT:
        return upper
    if value.isdigit() and int(value) in EVENT_TO_DIGIT:
        return EVENT_TO_DIGIT[int(value)]
    raise ValueError(f"invalid DTMF signal {value!r}")
