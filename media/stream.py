"""Sans-IO RTP stream state for one call leg.

Theory of operation. The session shell calls, with ``now`` from the loop clock:

- :meth:`RtpStream.tick` once per 20 ms with the next payload to play (or
  ``None``): it returns the datagram to send, or ``None``. The RTP timestamp
  advances every tick whether or not a packet goes out (RFC 3550 5.1), so the
  first packet after a pause carries the marker bit (RFC 3551 4.1, talkspurt
  start). Queued RFC 4733 digits replace audio while they are sent.
- :meth:`RtpStream.receive` for every datagram on the RTP port: the packet is
  parsed and checked (payload type negotiated, SSRC, source address); audio is
  returned as an :class:`~media.rtp.RtpPacket`, telephone-events as a list of
  completed :class:`~media.dtmf.DtmfEvent`; anything dropped returns ``None``
  and is counted in :class:`StreamCounters`.
- :meth:`RtpStream.receive_rtcp` for datagrams on the RTCP port, and
  :meth:`RtpStream.rtcp_due` / :meth:`RtpStream.build_rtcp` for our reports.
- :meth:`RtpStream.next_deadline` / :meth:`RtpStream.timed_out` for the RTP
  inactivity timer.

Symmetric RTP (RFC 4961; "latching" as SBCs do it) and its rules against RTP
hijacking (a third party that sends packets to our port to receive the call's
audio). The latched source is the address we receive from and, with
``symmetric``, the one we send to:

1. The first valid packet of the call latches (the peer may be behind a NAT
   and send from an address that its SDP does not name).
2. The address the SDP signalled is always acceptable: a packet from it
   latches at once (sending there is what the offer/answer asked for).
3. While the latched source is live (a packet from it less than
   ``relatch_after`` seconds ago) packets from any other address are dropped
   and counted: ``wrong_ssrc`` for an SSRC we do not know, ``wrong_source``
   for the current SSRC. A new SSRC from the latched address is a new stream
   at once (the peer restarted its stream).
4. Once the latched source has been silent for ``relatch_after`` seconds (NAT
   rebinding), another address may take over, but only after
   ``relatch_packets`` consecutive packets of one SSRC in sequence (RFC 3550
   A.1 probation); the packets on probation are dropped and counted.

An SSRC that was replaced is retired: stragglers from it are dropped
(``wrong_ssrc``), so two sources cannot make the stream flap. A new SDP address
(re-INVITE) starts latching again.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, fields

from .codecs import CodecInfo
from .dtmf import DtmfEvent, DtmfPacket, DtmfReceiver, DtmfSender
from .rtcp import (
    ReceptionStats,
    RtcpBye,
    RtcpPacket,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    SdesChunk,
    ntp_timestamp,
    parse_compound,
    rtt_from_report,
    serialize_compound,
)
from .rtp import RtpPacket, packet_packer

# One generator per process: seeding a new Random from os.urandom costs ~70 us a call.
_RNG = random.Random()

__all__ = ["COMFORT_NOISE_PT", "RtpStream", "StreamCounters", "is_stun"]

Address = tuple[str, int]

COMFORT_NOISE_PT = 13  # RFC 3389
_STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"  # RFC 5389 §6

RELATCH_PACKETS = 5  # in-sequence packets before another address may take over (A.1)
RELATCH_AFTER = 5.0  # seconds the latched source must be silent before that


def is_stun(data: bytes) -> bool:
    """A STUN message (RFC 5389 §6) on a media port, told apart from RTP/RTCP by its
    first byte as RFC 7983 §7 demultiplexes (0-3 STUN, 128-191 RTP/RTCP).

    Peers send them without ICE as NAT keepalives (RFC 6263 §4.6): linphone (liblinphone
    5.1) sends a bare Binding Request to our RTP and RTCP ports every few seconds. They
    are counted as ``stun_received``, not as malformed RTP: the packet is well formed,
    only not ours to parse."""
    return (
        len(data) >= 20
        and data[0] < 4
        and data[4:8] == _STUN_MAGIC_COOKIE
        and int.from_bytes(data[2:4], "big") == len(data) - 20
    )


@dataclass(slots=True)
class StreamCounters:
    """Packet counters for one stream (exported with :meth:`RtpStream.quality`)."""

    packets_sent: int = 0
    octets_sent: int = 0
    packets_received: int = 0
    octets_received: int = 0
    malformed: int = 0
    wrong_pt: int = 0
    wrong_ssrc: int = 0
    wrong_source: int = 0
    ssrc_changes: int = 0
    relatches: int = 0
    srtp_failed: int = 0
    rtcp_sent: int = 0
    rtcp_received: int = 0
    rtcp_malformed: int = 0
    stun_received: int = 0
    """STUN messages on the RTP or RTCP port (:func:`is_stun`): keepalives, not errors."""
    dtmf_sent: int = 0
    dtmf_received: int = 0


class RtpStream:
    """RTP/RTCP state of one media stream; no sockets, no clock reads."""

    def __init__(
        self,
        codec: CodecInfo,
        *,
        now: float,
        remote: Address | None = None,
        remote_rtcp: Address | None = None,
        telephone_event_pt: int | None = 101,
        rng: random.Random | None = None,
        ssrc: int | None = None,
        symmetric: bool = True,
        rtp_timeout: float = 60.0,
        relatch_after: float = RELATCH_AFTER,
        relatch_packets: int = RELATCH_PACKETS,
        rtcp_interval: float = 5.0,
        cname: str = "callengine",
        wallclock_offset: float = 0.0,
    ) -> None:
        self._rng = rng or _RNG
        # RFC 3550 5.1: SSRC, initial sequence number and timestamp are random.
        self.ssrc = (ssrc if ssrc is not None else self._rng.getrandbits(32)) & 0xFFFFFFFF
        self.seq = self._rng.getrandbits(16)
        self.timestamp = self._rng.getrandbits(32)
        self.codec = codec
        self.telephone_event_pt = telephone_event_pt
        self._accepted_pts = self._pts()
        self.remote = remote
        self.remote_rtcp = remote_rtcp or (
            (remote[0], remote[1] + 1) if remote is not None else None
        )
        self.symmetric = symmetric
        self.rtp_timeout = rtp_timeout
        self.relatch_after = relatch_after
        self.relatch_packets = max(1, relatch_packets)
        self._signalled = remote
        self.rtcp_interval = rtcp_interval
        self.cname = cname.encode()
        self.wallclock_offset = wallclock_offset
        self.sending = True
        self.expect_media = True
        self.counters = StreamCounters()
        self._ts_step = codec.timestamp_step
        self._packer_size = -1
        self._packer = packet_packer(0)
        self._talkspurt = True
        self._dtmf_out: deque[DtmfPacket] = deque()
        self._dtmf_sender = DtmfSender(codec.clock_rate)
        self._dtmf_rx = DtmfReceiver(codec.clock_rate)
        self._event_ts = 0
        self._started = now
        self._last_rx: float | None = None
        self._source: Address | None = None
        self._source_rx = 0.0  # when the latched source last sent an accepted packet
        self._rtcp_source: Address | None = None
        self._rtcp_rx = 0.0
        self._remote_ssrc: int | None = None
        self._retired: set[int] = set()
        self._probation: tuple[int, Address, int, int] | None = None  # ssrc, addr, seq, count
        self.stats: ReceptionStats | None = None
        self._past_received = 0
        self._past_lost = 0
        # RFC 3550 6.2: the first report goes out after half the minimum interval.
        self._next_rtcp = now + rtcp_interval * 0.5 * self._rng.uniform(0.5, 1.5)
        self._sent_since_report = False
        self.rtt: float | None = None
        self._rtt_samples: list[float] = []
        self.remote_fraction_lost: int | None = None
        self.remote_bye = False

    def _pts(self) -> frozenset[int]:
        pts = {self.codec.payload_type, COMFORT_NOISE_PT}
        if self.telephone_event_pt is not None:
            pts.add(self.telephone_event_pt)
        return frozenset(pts)

    # --- configuration -------------------------------------------------------

    def set_codec(self, codec: CodecInfo, telephone_event_pt: int | None) -> None:
        """Switch codec after a re-INVITE (the timestamp keeps running)."""
        self.codec = codec
        self.telephone_event_pt = telephone_event_pt
        self._accepted_pts = self._pts()
        self._dtmf_sender = DtmfSender(codec.clock_rate)
        self._ts_step = codec.timestamp_step

    def set_remote(self, remote: Address, remote_rtcp: Address | None = None) -> None:
        """Set the SDP destination (answer, re-INVITE); a new address starts latching
        again, the same one keeps the latched source (a hold/unhold re-INVITE must not
        reopen the stream to whoever sends first)."""
        if remote == self._signalled and self._source is not None:
            return
        self._signalled = remote
        self.remote = remote
        self.remote_rtcp = remote_rtcp or (remote[0], remote[1] + 1)
        self._source = None
        self._probation = None
        self._rtcp_source = None

    # --- sending ---------------------------------------------------------------

    def _pack(self, pt: int, marker: bool, ts: int, payload: bytes) -> bytes:
        # The hot path: one Struct.pack into a new bytes (see rtp.packet_packer); the
        # Struct for the last payload size is kept (G.711 frames are all 160 octets).
        n = len(payload)
        if n != self._packer_size:
            self._packer = packet_packer(n)
            self._packer_size = n
        seq = self.seq
        self.seq = (seq + 1) & 0xFFFF
        counters = self.counters
        counters.packets_sent += 1
        counters.octets_sent += n
        self._sent_since_report = True
        return self._packer.pack(
            (0x8080 if marker else 0x8000) | (pt & 0x7F),
            seq,
            ts & 0xFFFFFFFF,
            self.ssrc & 0xFFFFFFFF,
            payload,
        )

    def queue_digit(self, digit: str, *, duration_ms: int = 100) -> None:
        """Queue an RFC 4733 digit; it starts at the next tick."""
        if self.telephone_event_pt is None:
            raise ValueError("telephone-event was not negotiated")
        self._dtmf_out.extend(self._dtmf_sender.packets(digit, 0, duration_ms=duration_ms))
        self.counters.dtmf_sent += 1

    @property
    def sending_dtmf(self) -> bool:
        return bool(self._dtmf_out)

    def tick(self, payload: bytes | None) -> bytes | None:
        """One 20 ms frame time: the datagram to send (or ``None``)."""
        ts = self.timestamp
        self.timestamp = (ts + self._ts_step) & 0xFFFFFFFF
        if payload is not None and self.sending and not self._dtmf_out and self.remote:
            # Fast path (every stream, every 20 ms): audio, no digit in flight; _pack
            # inlined.
            n = len(payload)
            if n != self._packer_size:
                self._packer = packet_packer(n)
                self._packer_size = n
            seq = self.seq
            self.seq = (seq + 1) & 0xFFFF
            counters = self.counters
            counters.packets_sent += 1
            counters.octets_sent += n
            self._sent_since_report = True
            first = 0x8000 | (self.codec.payload_type & 0x7F)
            if self._talkspurt:
                self._talkspurt = False
                first |= 0x80
            return self._packer.pack(first, seq, ts, self.ssrc, payload)
        if not self.sending or self.remote is None:
            self._talkspurt = True
            self._dtmf_out.clear()
            return None
        if self._dtmf_out:
            assert self.telephone_event_pt is not None
            packet = self._dtmf_out.popleft()
            if packet.marker:
                self._event_ts = ts
            if not self._dtmf_out:
                self._talkspurt = True
            return self._pack(
                self.telephone_event_pt, packet.marker, self._event_ts, packet.payload
            )
        if payload is None:
            self._talkspurt = True
            return None
        marker = self._talkspurt
        self._talkspurt = False
        return self._pack(self.codec.payload_type, marker, ts, payload)

    # --- receiving -------------------------------------------------------------

    def _new_source(self, ssrc: int) -> None:
        if self._remote_ssrc is not None:
            self._retired.add(self._remote_ssrc)
            self.counters.ssrc_changes += 1
        if self.stats is not None:
            self._past_received += self.stats.received
            self._past_lost += max(0, self.stats.lost)
        self._remote_ssrc = ssrc
        self.stats = ReceptionStats(ssrc, self.codec.clock_rate)

    def _latch(self, addr: Address) -> None:
        if self._source is not None:
            self.counters.relatches += 1
        self._source = addr
        self._probation = None
        if self.symmetric:
            self.remote = addr

    def _admit(self, addr: Address, ssrc: int, seq: int, now: float) -> bool:
        # A packet from an address other than the latched source (module docstring,
        # rules 1-4); counts what it drops.
        counters = self.counters
        if ssrc in self._retired:
            counters.wrong_ssrc += 1
            return False
        if self._source is None or addr == self._signalled:
            self._latch(addr)
            return True
        if now - self._source_rx < self.relatch_after:
            # The latched source is live: nobody else may take the stream.
            self._probation = None
            if ssrc == self._remote_ssrc:
                counters.wrong_source += 1
            else:
                counters.wrong_ssrc += 1
            return False
        candidate = self._probation
        count = 1
        if (
            candidate is not None
            and candidate[0] == ssrc
            and candidate[1] == addr
            and (seq - candidate[2]) & 0xFFFF == 1
        ):
            count = candidate[3] + 1
        if count >= self.relatch_packets:
            self._latch(addr)
            return True
        self._probation = (ssrc, addr, seq, count)
        counters.wrong_source += 1
        return False

    def receive(self, data: bytes, addr: Address, now: float) -> RtpPacket | list[DtmfEvent] | None:
        """Handle one RTP datagram: audio packet, completed digits, or ``None`` (dropped)."""
        counters = self.counters
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            if is_stun(data):
                counters.stun_received += 1
            else:
                counters.malformed += 1
            return None
        pt = packet.payload_type
        if pt not in self._accepted_pts:
            counters.wrong_pt += 1
            return None
        ssrc = packet.ssrc
        if addr != self._source and not self._admit(addr, ssrc, packet.sequence_number, now):
            return None
        if ssrc != self._remote_ssrc:
            if ssrc in self._retired:
                counters.wrong_ssrc += 1
                return None
            self._new_source(ssrc)
        self._source_rx = now
        self._last_rx = now
        counters.packets_received += 1
        counters.octets_received += len(packet.payload)
        assert self.stats is not None
        if pt == self.telephone_event_pt:
            self.stats.update(packet.sequence_number, packet.timestamp, now, jitter=False)
            try:
                events = self._dtmf_rx.feed(packet.payload, packet.timestamp)
            except ValueError:
                counters.malformed += 1
                return None
            counters.dtmf_received += len(events)
            return events
        self.stats.update(packet.sequence_number, packet.timestamp, now)
        if pt == COMFORT_NOISE_PT:
            return None
        return packet

    # --- RTCP ------------------------------------------------------------------

    def _ntp(self, now: float) -> int:
        return ntp_timestamp(now + self.wallclock_offset)

    def receive_rtcp(self, data: bytes, addr: Address, now: float) -> list[RtcpPacket] | None:
        """Handle one RTCP datagram; ``None`` if malformed or from an address that may
        not send it (both counted)."""
        try:
            packets = parse_compound(data)
        except ValueError:
            if is_stun(data):
                self.counters.stun_received += 1
            else:
                self.counters.rtcp_malformed += 1
            return None
        if addr != self._rtcp_source:
            # RTCP latches like RTP: from the RTP source's host, and away from a live
            # RTCP source only after it has been silent for relatch_after.
            source = self._source
            if (source is not None and addr[0] != source[0]) or (
                self._rtcp_source is not None and now - self._rtcp_rx < self.relatch_after
            ):
                self.counters.wrong_source += 1
                return None
            self._rtcp_source = addr
            if self.symmetric:
                self.remote_rtcp = addr
        self._rtcp_rx = now
        self.counters.rtcp_received += 1
        for packet in packets:
            if isinstance(packet, RtcpSenderReport | RtcpReceiverReport):
                if (
                    isinstance(packet, RtcpSenderReport)
                    and self.stats is not None
                    and packet.ssrc == self._remote_ssrc
                ):
                    self.stats.on_sender_report(packet.ntp_timestamp, now)
                for block in packet.reports:
                    if block.ssrc != self.ssrc:
                        continue
                    self.remote_fraction_lost = block.fraction_lost
                    rtt = rtt_from_report(self._ntp(now), block.lsr, block.dlsr)
                    if rtt is not None:
                        self.rtt = rtt
                        self._rtt_samples.append(rtt)
            elif isinstance(packet, RtcpBye) and self._remote_ssrc in packet.sources:
                self.remote_bye = True
        return packets

    def rtcp_due(self, now: float) -> bool:
        """Whether our next report is due (RFC 3550 6.3, randomised interval)."""
        return now >= self._next_rtcp

    def _report(self, now: float) -> RtcpSenderReport | RtcpReceiverReport:
        blocks = (self.stats.report_block(now),) if self.stats is not None else ()
        if self._sent_since_report:
            return RtcpSenderReport(
                self.ssrc,
                self._ntp(now),
                self.timestamp,
                self.counters.packets_sent,
                self.counters.octets_sent,
                blocks,
            )
        return RtcpReceiverReport(self.ssrc, blocks)

    def build_rtcp(self, now: float) -> bytes:
        """Our compound report (SR or RR, then SDES CNAME) and schedule the next one."""
        compound: list[RtcpPacket] = [
            self._report(now),
            RtcpSdes((SdesChunk(self.ssrc, ((1, self.cname),)),)),
        ]
        self._sent_since_report = False
        self._next_rtcp = now + self.rtcp_interval * self._rng.uniform(0.5, 1.5)
        self.counters.rtcp_sent += 1
        return serialize_compound(compound)

    def build_bye(self, now: float, reason: str | None = None) -> bytes:
        """Final compound packet: report, SDES and BYE (RFC 3550 6.6)."""
        compound: list[RtcpPacket] = [
            self._report(now),
            RtcpSdes((SdesChunk(self.ssrc, ((1, self.cname),)),)),
            RtcpBye((self.ssrc,), reason),
        ]
        self.counters.rtcp_sent += 1
        return serialize_compound(compound)

    # --- timers ----------------------------------------------------------------

    def _inactivity_deadline(self) -> float | None:
        if not self.expect_media:
            return None
        return (self._last_rx if self._last_rx is not None else self._started) + self.rtp_timeout

    def timed_out(self, now: float) -> bool:
        """No RTP for ``rtp_timeout`` seconds while media is expected."""
        deadline = self._inactivity_deadline()
        return deadline is not None and now >= deadline

    def set_expect_media(self, expect: bool, now: float) -> None:
        """Hold (peer sendonly/inactive): suspend the inactivity timer; resume restarts it."""
        if expect and not self.expect_media:
            self._started = now
            self._last_rx = None
        self.expect_media = expect

    def next_deadline(self) -> float:
        """The earliest time :meth:`rtcp_due` or :meth:`timed_out` can change."""
        deadline = self._inactivity_deadline()
        return self._next_rtcp if deadline is None else min(self._next_rtcp, deadline)

    # --- figures ---------------------------------------------------------------

    @property
    def remote_ssrc(self) -> int | None:
        return self._remote_ssrc

    @property
    def source(self) -> Address | None:
        """The latched source address of the peer's RTP."""
        return self._source

    def flush_dtmf(self) -> list[DtmfEvent]:
        """Report a digit whose end packets never came (call at stream end)."""
        return self._dtmf_rx.flush()

    def quality(self) -> dict[str, float | int | None]:
        """Per-call quality figures for the call log."""
        stats = self.stats
        received = self._past_received + (stats.received if stats else 0)
        lost = self._past_lost + (max(0, stats.lost) if stats else 0)
        expected = received + lost
        figures: dict[str, float | int | None] = {
            "packets_expected": expected,
            "packets_lost": lost,
            "loss_percent": round(100.0 * lost / expected, 2) if expected else 0.0,
            "jitter_ms": round(stats.jitter_seconds * 1000, 2) if stats else None,
            "rtt_ms": round(self.rtt * 1000, 1) if self.rtt is not None else None,
            "rtt_avg_ms": (
                round(1000 * sum(self._rtt_samples) / len(self._rtt_samples), 1)
                if self._rtt_samples
                else None
            ),
            "remote_fraction_lost": self.remote_fraction_lost,
        }
        counters = self.counters
        figures.update({f.name: getattr(counters, f.name) for f in fields(counters)})
        return figures
