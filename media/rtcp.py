"""RTCP (RFC 3550 section 6): SR, RR, SDES and BYE packets in compound packets,
and per-source reception statistics (RFC 3550 appendix A.1, A.3 and A.8).

Theory of operation: :func:`parse_compound` turns one datagram into a list of
packet objects (unknown packet types are kept as :class:`RtcpUnknown`);
:func:`serialize_compound` joins packets back. :class:`ReceptionStats` is fed
every accepted RTP packet with its arrival time and produces the report block
we put in our SR/RR; :func:`rtt_from_report` turns the LSR/DLSR the peer echoes
back into a round-trip time (RFC 3550 6.4.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SDES",
    "RTCP_SR",
    "ReceptionStats",
    "ReportBlock",
    "RtcpBye",
    "RtcpPacket",
    "RtcpReceiverReport",
    "RtcpSdes",
    "RtcpSenderReport",
    "RtcpUnknown",
    "SdesChunk",
    "ntp_middle32",
    "ntp_timestamp",
    "parse_compound",
    "rtt_from_report",
    "serialize_compound",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203

SDES_CNAME = 1

_COMMON = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IQIII")
_BLOCK = struct.Struct("!IB3sIIII")

# Seconds between the NTP epoch (1900) and whatever epoch `now` uses; callers pass
# wall-clock seconds (Unix epoch) to ntp_timestamp().
_NTP_UNIX_OFFSET = 2208988800


def ntp_timestamp(unix_seconds: float) -> int:
    """Return the 64-bit NTP timestamp (RFC 3550 4) for Unix time ``unix_seconds``."""
    whole = int(unix_seconds)
    frac = int((unix_seconds - whole) * (1 << 32)) & 0xFFFFFFFF
    return (((whole + _NTP_UNIX_OFFSET) & 0xFFFFFFFF) << 32) | frac


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp, as used in LSR (RFC 3550 6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def rtt_from_report(arrival_ntp: int, lsr: int, dlsr: int) -> float | None:
    """Round-trip time in seconds from a report block (RFC 3550 6.4.1, figure 2).

    ``arrival_ntp`` is the 64-bit NTP time the report arrived; ``lsr`` and ``dlsr``
    are the block's fields. Returns ``None`` when the peer has had no SR from us
    (LSR = 0) or the result is negative (clock or report error).
    """
    if lsr == 0:
        return None
    rtt = (ntp_middle32(arrival_ntp) - lsr - dlsr) & 0xFFFFFFFF
    if rtt & 0x80000000:
        return None
    return rtt / 65536.0


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """A reception report block (RFC 3550 6.4.1)."""

    ssrc: int
    fraction_lost: int
    packets_lost: int
    highest_sequence: int
    jitter: int
    lsr: int
    dlsr: int

    def serialize(self) -> bytes:
        lost = max(-0x800000, min(0x7FFFFF, self.packets_lost)) & 0xFFFFFF
        return _BLOCK.pack(
            self.ssrc,
            self.fraction_lost & 0xFF,
            lost.to_bytes(3, "big"),
            self.highest_sequence & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.lsr & 0xFFFFFFFF,
            self.dlsr & 0xFFFFFFFF,
        )

    @classmethod
    def parse(cls, data: memoryview, pos: int) -> ReportBlock:
        ssrc, fraction, lost3, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, pos)
        lost = int.from_bytes(lost3, "big")
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, fraction, lost, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class RtcpSenderReport:
    """SR (RFC 3550 6.4.1)."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class RtcpReceiverReport:
    """RR (RFC 3550 6.4.2)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One SDES chunk: an SSRC and its (item type, value) pairs (RFC 3550 6.5)."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class RtcpSdes:
    """SDES (RFC 3550 6.5)."""

    chunks: tuple[SdesChunk, ...]


@dataclass(frozen=True, slots=True)
class RtcpBye:
    """BYE (RFC 3550 6.6)."""

    sources: tuple[int, ...]
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RtcpUnknown:
    """Any other RTCP packet type (APP, feedback...), kept as raw body bytes."""

    packet_type: int
    count: int
    body: bytes


RtcpPacket: TypeAlias = RtcpSenderReport | RtcpReceiverReport | RtcpSdes | RtcpBye | RtcpUnknown


def _header(count: int, packet_type: int, body_len: int) -> bytes:
    # RFC 3550 6.4.1: length is in 32-bit words minus one, header included.
    return _COMMON.pack(0x80 | count, packet_type, (body_len + 4) // 4 - 1)


def _serialize_one(packet: RtcpPacket) -> bytes:
    if isinstance(packet, RtcpSenderReport | RtcpReceiverReport):
        if len(packet.reports) > 31:
            raise ValueError("RTCP report has more than 31 report blocks")
        blocks = b"".join(r.serialize() for r in packet.reports)
        if isinstance(packet, RtcpSenderReport):
            body = (
                _SR_INFO.pack(
                    packet.ssrc,
                    packet.ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
                    packet.rtp_timestamp & 0xFFFFFFFF,
                    packet.packet_count & 0xFFFFFFFF,
                    packet.octet_count & 0xFFFFFFFF,
                )
                + blocks
            )
            return _header(len(packet.reports), RTCP_SR, len(body)) + body
        body = struct.pack("!I", packet.ssrc) + blocks
        return _header(len(packet.reports), RTCP_RR, len(body)) + body
    if isinstance(packet, RtcpSdes):
        parts = []
        for chunk in packet.chunks:
            item_bytes = b"".join(bytes((kind, len(value))) + value for kind, value in chunk.items)
            raw = struct.pack("!I", chunk.ssrc) + item_bytes
            # RFC 3550 6.5: the item list ends with a null octet, padded to 32 bits.
            raw += bytes(4 - (len(raw) % 4))
            parts.append(raw)
        body = b"".join(parts)
        return _header(len(packet.chunks), RTCP_SDES, len(body)) + body
    if isinstance(packet, RtcpBye):
        body = b"".join(struct.pack("!I", s) for s in packet.sources)
        if packet.reason is not None:
            reason = packet.reason.encode()[:255]
            body += bytes((len(reason),)) + reason
            body += bytes(-len(body) % 4)
        return _header(len(packet.sources), RTCP_BYE, len(body)) + body
    body = packet.body + bytes(-len(packet.body) % 4)
    return _header(packet.count, packet.packet_type, len(body)) + body


def serialize_compound(packets: list[RtcpPacket] | tuple[RtcpPacket, ...]) -> bytes:
    """Serialize packets into one compound RTCP datagram (RFC 3550 6.1)."""
    return b"".join(_serialize_one(p) for p in packets)


def _parse_one(view: memoryview, count: int, packet_type: int) -> RtcpPacket:
    length = len(view)
    if packet_type in (RTCP_SR, RTCP_RR):
        fixed = 24 if packet_type == RTCP_SR else 4
        if length < fixed + 24 * count:
            name = "SR" if packet_type == RTCP_SR else "RR"
            raise ValueError(f"RTCP {name} length {length} too short for {count} report blocks")
        reports = tuple(ReportBlock.parse(view, fixed + 24 * i) for i in range(count))
        if packet_type == RTCP_SR:
            ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(view, 0)
            return RtcpSenderReport(ssrc, ntp, rtp_ts, packets, octets, reports)
        return RtcpReceiverReport(struct.unpack_from("!I", view, 0)[0], reports)
    if packet_type == RTCP_SDES:
        chunks = []
        pos = 0
        for _ in range(count):
            if pos + 4 > length:
                raise ValueError("RTCP SDES chunk exceeds packet length")
            ssrc = struct.unpack_from("!I", view, pos)[0]
            pos += 4
            items = []
            while True:
                if pos >= length:
                    raise ValueError("RTCP SDES item list is not terminated")
                kind = view[pos]
                if kind == 0:
                    pos = (pos + 4) & ~3
                    break
                if pos + 2 > length or pos + 2 + view[pos + 1] > length:
                    raise ValueError("RTCP SDES item exceeds packet length")
                size = view[pos + 1]
                items.append((kind, bytes(view[pos + 2 : pos + 2 + size])))
                pos += 2 + size
            chunks.append(SdesChunk(ssrc, tuple(items)))
        return RtcpSdes(tuple(chunks))
    if packet_type == RTCP_BYE:
        if length < 4 * count:
            raise ValueError(f"RTCP BYE length {length} too short for {count} sources")
        sources = struct.unpack_from(f"!{count}I", view, 0)
        reason = None
        pos = 4 * count
        if pos < length:
            size = view[pos]
            if pos + 1 + size > length:
                raise ValueError("RTCP BYE reason exceeds packet length")
            reason = bytes(view[pos + 1 : pos + 1 + size]).decode("utf-8", "replace")
        return RtcpBye(tuple(sources), reason)
    return RtcpUnknown(packet_type, count, bytes(view))


def parse_compound(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Parse a (compound) RTCP datagram; raise ``ValueError`` if malformed."""
    view = memoryview(data)
    total = len(view)
    if total < 4:
        raise ValueError(f"RTCP packet length {total} is less than 4 bytes")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < total:
        if pos + 4 > total:
            raise ValueError("RTCP packet header exceeds datagram length")
        b0, packet_type, words = _COMMON.unpack_from(view, pos)
        version = b0 >> 6
        if version != 2:
            raise ValueError(f"RTCP packet has invalid version {version}")
        end = pos + 4 * (words + 1)
        if end > total:
            raise ValueError(f"RTCP packet length {4 * (words + 1)} exceeds datagram length")
        body_end = end
        if b0 & 0x20:
            padding = view[end - 1]
            if padding == 0 or padding > end - pos - 4:
                raise ValueError(f"RTCP padding length {padding} is invalid")
            body_end = end - padding
        packets.append(_parse_one(view[pos + 4 : body_end], b0 & 0x1F, packet_type))
        pos = end
    return packets


class ReceptionStats:
    """Reception statistics for one remote source (RFC 3550 A.1, A.3, A.8).

    Feed :meth:`update` with every RTP packet accepted from the source and its
    arrival time in seconds; :meth:`report_block` produces the block for our
    next SR/RR and resets the per-interval counters.
    """

    MAX_DROPOUT = 3000
    MAX_MISORDER = 100

    def __init__(self, ssrc: int, clock_rate: int, *, min_sequential: int = 1) -> None:
        # min_sequential is 2 in RFC 3550 A.1's example; the stream core has
        # already validated the source (latching), so one packet is enough.
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.min_sequential = min_sequential
        self.max_seq = 0
        self.cycles = 0
        self.base_seq = 0
        self.bad_seq = 0x10001
        self.probation = min_sequential
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.transit: float | None = None
        self.jitter = 0.0  # in timestamp units (A.8)
        self.last_fraction_lost = 0
        self.last_sr_ntp = 0
        self.last_sr_arrival: float | None = None
        self._initialised = False

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = 0x10001
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def _update_seq(self, seq: int) -> bool:
        # RFC 3550 A.1, transcribed.
        if not self._initialised:
            self._init_seq(seq)
            self.max_seq = (seq - 1) & 0xFFFF
            self.probation = self.min_sequential
            self._initialised = True
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = self.min_sequential - 1
                self.max_seq = seq
            return False
        if udelta < self.MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += 1 << 16
            self.max_seq = seq
        elif udelta <= 0x10000 - self.MAX_MISORDER:
            if seq == self.bad_seq:
                # Two sequential packets after a big jump: the source restarted.
                self._init_seq(seq)
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: duplicate or reordered packet, counted as received.
        self.received += 1
        return True

    def update(self, seq: int, rtp_timestamp: int, arrival: float, *, jitter: bool = True) -> bool:
        """Account one packet; return False if A.1 says it is not (yet) valid.

        ``jitter=False`` counts the packet without a jitter sample (RFC 4733
        event packets repeat their timestamp, so they would distort A.8).
        """
        if not self._update_seq(seq):
            return False
        if not jitter:
            return True
        # RFC 3550 A.8: interarrival jitter in timestamp units.
        transit = arrival * self.clock_rate - rtp_timestamp
        if self.transit is not None:
            d = abs(transit - self.transit)
            self.jitter += (d - self.jitter) / 16.0
        self.transit = transit
        return True

    def on_sender_report(self, ntp: int, arrival: float) -> None:
        """Remember an SR from this source for LSR/DLSR (RFC 3550 6.4.1)."""
        self.last_sr_ntp = ntp
        self.last_sr_arrival = arrival

    @property
    def extended_max(self) -> int:
        """Extended highest sequence number received (A.3)."""
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.received else 0

    @property
    def lost(self) -> int:
        """Cumulative packets lost (A.3); negative with duplicates."""
        return self.expected - self.received

    @property
    def jitter_seconds(self) -> float:
        return self.jitter / self.clock_rate

    def report_block(self, now: float) -> ReportBlock:
        """Build a report block at time ``now`` and start a new interval (A.3)."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected
        received_interval = self.received - self.received_prior
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = (lost_interval << 8) // expected_interval
        self.last_fraction_lost = fraction
        if self.last_sr_arrival is None:
            lsr = dlsr = 0
        else:
            lsr = ntp_middle32(self.last_sr_ntp)
            dlsr = int((now - self.last_sr_arrival) * 65536) & 0xFFFFFFFF
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=self.lost,
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter),
            lsr=lsr,
            dlsr=dlsr,
        )
