from __future__ import annotations

import random

from media.codecs import PCMU
from media.dtmf import DtmfEvent
from media.rtcp import (
    ReportBlock,
    RtcpReceiverReport,
    RtcpSenderReport,
    ntp_middle32,
    ntp_timestamp,
    parse_compound,
    serialize_compound,
)
from media.rtp import RtpPacket
from media.stream import RtpStream, is_stun

PEER = ("192.0.2.10", 4000)
NAT = ("198.51.100.7", 30000)


def _stream(now: float = 0.0, **kw: object) -> RtpStream:
    return RtpStream(PCMU, now=now, remote=PEER, rng=random.Random(1), **kw)  # type: ignore[arg-type]


def _pkt(seq: int, ssrc: int = 0x1234, pt: int = 0, ts: int | None = None) -> bytes:
    return RtpPacket(
        pt, False, seq, seq * 160 if ts is None else ts, ssrc, payload=b"\xff" * 160
    ).serialize()


def test_send_sequence_timestamp_and_marker_rules() -> None:
    s = _stream()
    seq0, ts0 = s.seq, s.timestamp
    p1 = RtpPacket.parse(s.tick(b"\x01" * 160) or b"")
    p2 = RtpPacket.parse(s.tick(b"\x02" * 160) or b"")
    assert s.tick(None) is None  # silence: nothing sent, the clock runs on
    p3 = RtpPacket.parse(s.tick(b"\x03" * 160) or b"")
    assert (p1.sequence_number, p2.sequence_number, p3.sequence_number) == (
        seq0,
        (seq0 + 1) & 0xFFFF,
        (seq0 + 2) & 0xFFFF,
    )
    assert (p1.timestamp, p2.timestamp, p3.timestamp) == (ts0, ts0 + 160, ts0 + 480)
    assert (p1.marker, p2.marker, p3.marker) == (True, False, True)
    assert p1.ssrc == s.ssrc and p1.payload == b"\x01" * 160
    # Random initial values (RFC 3550 5.1): two streams differ.
    other = RtpStream(PCMU, now=0.0, remote=PEER)
    assert (other.ssrc, other.seq) != (s.ssrc, s.seq)


def test_dtmf_replaces_audio_with_event_packets() -> None:
    s = _stream()
    s.queue_digit("4", duration_ms=60)
    ts0 = s.timestamp
    sent = [RtpPacket.parse(s.tick(b"\x00" * 160) or b"") for _ in range(6)]
    assert [p.payload_type for p in sent] == [101] * 5 + [0]
    assert {p.timestamp for p in sent[:5]} == {ts0}
    assert [p.marker for p in sent[:5]] == [True, False, False, False, False]
    assert sent[5].timestamp == ts0 + 5 * 160


ATTACKER = ("203.0.113.5", 9)


def test_latching_and_source_rules() -> None:
    s = _stream(relatch_after=2.0, relatch_packets=3)
    assert isinstance(s.receive(_pkt(1), NAT, 0.0), RtpPacket)
    assert s.remote == NAT and s.source == NAT  # symmetric RTP: reply to the source
    # Same SSRC from another address while the source is live: dropped.
    assert s.receive(_pkt(2), ATTACKER, 0.02) is None
    assert s.counters.wrong_source == 1 and s.remote == NAT
    # After the source has been silent for relatch_after, the same SSRC may move (NAT
    # rebinding), but only after relatch_packets packets in sequence.
    assert s.receive(_pkt(3), ATTACKER, 2.5) is None
    assert s.receive(_pkt(4), ATTACKER, 2.52) is None
    assert s.remote == NAT and s.counters.wrong_source == 3
    assert s.receive(_pkt(5), ATTACKER, 2.54) is not None
    assert s.remote == ATTACKER and s.counters.relatches == 1
    # A new SSRC from another address while the source is live: dropped, however many
    # packets in sequence it sends.
    for i in range(10):
        assert s.receive(_pkt(500 + i, ssrc=0x9999), NAT, 2.56 + i * 0.02) is None
        assert s.receive(_pkt(6 + i), ATTACKER, 2.56 + i * 0.02) is not None
    assert s.counters.wrong_ssrc == 10 and s.remote_ssrc == 0x1234 and s.remote == ATTACKER
    # A new SSRC from the current source's address is a new stream at once ...
    assert s.receive(_pkt(9, ssrc=0x7777), ATTACKER, 3.0) is not None
    assert s.remote_ssrc == 0x7777 and s.counters.ssrc_changes == 1
    # ... and the old SSRC is retired: its stragglers are dropped, from anywhere.
    assert s.receive(_pkt(16), ATTACKER, 3.02) is None
    assert s.receive(_pkt(17), NAT, 9.0) is None
    assert s.counters.wrong_ssrc == 12 and s.remote == ATTACKER


def test_wrong_ssrc_out_of_sequence_never_passes_probation() -> None:
    s = _stream(relatch_after=0.5, relatch_packets=2)
    s.receive(_pkt(1), NAT, 0.0)
    for i, seq in enumerate((100, 300, 50, 7000)):
        assert s.receive(_pkt(seq, ssrc=0xBAD), ("198.51.100.9", 4000), 0.01 * (i + 1)) is None
    assert s.counters.wrong_ssrc == 4 and s.remote_ssrc != 0xBAD and s.remote == NAT
    # After the silence, packets out of sequence still never pass probation.
    for i, seq in enumerate((100, 300, 50, 7000, 7002, 7001)):
        assert s.receive(_pkt(seq, ssrc=0xBAD), ("198.51.100.9", 4000), 1.0 + i * 0.02) is None
    assert s.counters.wrong_source == 6 and s.remote == NAT and s.counters.relatches == 0


def test_hijack_with_a_new_ssrc_in_sequence_is_rejected_while_the_caller_talks() -> None:
    # The attack of issue 11: in-sequence packets with a new SSRC from another address.
    s = _stream()  # defaults: relatch_after 5 s, relatch_packets 5
    now = 0.0
    caller_seq = 1000
    for i in range(500):  # 10 s of a live caller and an attacker sending in step
        assert s.receive(_pkt(caller_seq + i), NAT, now) is not None
        assert s.receive(_pkt(20000 + i, ssrc=0xEE11), ATTACKER, now + 0.001) is None
        now += 0.02
    assert s.remote == NAT and s.source == NAT and s.remote_ssrc == 0x1234
    assert s.counters.wrong_ssrc == 500 and s.counters.relatches == 0
    # The caller pauses for less than relatch_after: still nobody else.
    now += 4.0
    for i in range(20):
        assert s.receive(_pkt(20500 + i, ssrc=0xEE11), ATTACKER, now + i * 0.02) is None
    assert s.remote == NAT and s.counters.relatches == 0


def test_first_packets_latch_and_the_signalled_address_is_always_accepted() -> None:
    s = _stream()
    # Someone else's packet arrives first (a race, or the phone's NAT address): latched.
    assert s.receive(_pkt(1, ssrc=0xAAAA), ATTACKER, 0.0) is not None
    assert s.remote == ATTACKER
    # The address the SDP named sends: sending there is what signalling asked for.
    assert s.receive(_pkt(7), PEER, 0.02) is not None
    assert s.remote == PEER and s.remote_ssrc == 0x1234 and s.counters.relatches == 1
    # From now on the other address is rejected while the peer talks.
    assert s.receive(_pkt(2, ssrc=0xAAAA), ATTACKER, 0.04) is None
    assert s.remote == PEER and s.counters.wrong_ssrc == 1


def test_rtcp_latches_on_the_rtp_source_host_and_holds_while_live() -> None:
    s = _stream(relatch_after=2.0)
    s.receive(_pkt(1), NAT, 0.0)
    report = serialize_compound([RtcpReceiverReport(0x1234, ())])
    nat_rtcp = (NAT[0], NAT[1] + 7)  # the NAT mapped the RTCP port elsewhere: fine
    assert s.receive_rtcp(report, nat_rtcp, 0.1) is not None and s.remote_rtcp == nat_rtcp
    # Another host, or another port of the same host while the RTCP source is live:
    # dropped and counted, our reports keep going to the peer.
    assert s.receive_rtcp(report, ATTACKER, 0.2) is None
    assert s.receive_rtcp(report, (NAT[0], 40000), 0.3) is None
    assert s.remote_rtcp == nat_rtcp and s.counters.wrong_source == 2
    assert s.counters.rtcp_received == 1
    # After the RTCP source has been silent for relatch_after, the same host may move it.
    assert s.receive_rtcp(report, (NAT[0], 40000), 2.5) is not None
    assert s.remote_rtcp == (NAT[0], 40000)


def test_reinvite_to_the_same_address_keeps_the_latch_a_new_address_relatches() -> None:
    s = _stream()
    s.receive(_pkt(1), NAT, 0.0)
    s.set_remote(PEER)  # hold/unhold re-INVITE: same SDP address
    assert s.source == NAT and s.remote == NAT
    assert s.receive(_pkt(1, ssrc=0x5555), ATTACKER, 0.02) is None
    s.set_remote(("192.0.2.99", 5000))  # the peer moved its media
    assert s.source is None and s.remote == ("192.0.2.99", 5000)
    assert s.receive(_pkt(2), NAT, 0.04) is not None and s.remote == NAT


def test_malformed_and_wrong_payload_type_are_counted() -> None:
    s = _stream()
    assert s.receive(b"\x00" * 5, PEER, 0.0) is None
    assert s.receive(_pkt(1, pt=18), PEER, 0.0) is None
    assert (s.counters.malformed, s.counters.wrong_pt, s.counters.packets_received) == (1, 1, 0)
    assert s.source is None


# linphone 5.1 (liblinphone 5.1.65, Debian's linphone-cli) sends this bare STUN Binding
# Request (RFC 5389: type 0x0001, length 0, magic cookie, 96-bit transaction id) to our
# RTP and RTCP ports as a NAT keepalive, with no ICE in its SDP; captured on loopback
# in tests/integration/test_interop_linphone.py.
LINPHONE_STUN = bytes.fromhex("000100002112a442c11ba939637eaffb5138c736")


def test_stun_keepalives_are_not_malformed_rtp() -> None:
    s = _stream()
    assert is_stun(LINPHONE_STUN)
    assert s.receive(LINPHONE_STUN, PEER, 0.0) is None
    assert s.receive_rtcp(LINPHONE_STUN, PEER, 0.0) is None
    c = s.counters
    assert (c.stun_received, c.malformed, c.rtcp_malformed) == (2, 0, 0)
    assert s.source is None  # a keepalive latches nothing
    assert s.receive(_pkt(1), PEER, 0.02) is not None
    assert s.quality()["stun_received"] == 2


def test_what_is_not_stun_stays_malformed() -> None:
    s = _stream()
    wrong_cookie = LINPHONE_STUN[:4] + b"\x00\x00\x00\x00" + LINPHONE_STUN[8:]
    wrong_length = LINPHONE_STUN[:2] + b"\x00\x04" + LINPHONE_STUN[4:]
    for data in (LINPHONE_STUN[:19], wrong_cookie, wrong_length, b"\x40" + LINPHONE_STUN[1:]):
        assert not is_stun(data), data.hex()
        assert s.receive(data, PEER, 0.0) is None
    assert (s.counters.malformed, s.counters.stun_received) == (4, 0)


def test_received_dtmf_events() -> None:
    sender = _stream()
    sender.queue_digit("9")
    rx = _stream()
    events: list[DtmfEvent] = []
    for _ in range(10):
        data = sender.tick(None)
        if data is not None:
            out = rx.receive(data, PEER, 0.0)
            if isinstance(out, list):
                events += out
    assert [e.digit for e in events] == ["9"]


def test_inactivity_deadline_and_hold() -> None:
    s = _stream(now=100.0, rtp_timeout=30.0, rtcp_interval=5.0)
    assert not s.timed_out(129.9)
    assert s.timed_out(130.0)
    s.receive(_pkt(1), PEER, 120.0)
    assert not s.timed_out(149.0) and s.timed_out(150.0)
    s.set_expect_media(False, 150.0)
    assert not s.timed_out(1000.0)
    assert s.next_deadline() < 1000.0  # RTCP still scheduled
    s.set_expect_media(True, 1000.0)
    assert s.timed_out(1030.0) and not s.timed_out(1029.0)


def test_rtcp_schedule_and_report_contents() -> None:
    s = _stream(now=0.0, rtcp_interval=5.0)
    first = s.next_deadline()
    assert 1.25 <= first <= 3.75  # half the interval, randomised 0.5..1.5
    for seq in [1, 2, 4]:
        s.receive(_pkt(seq), PEER, seq * 0.02)
    s.tick(b"\xff" * 160)
    assert s.rtcp_due(first) and not s.rtcp_due(first - 0.001)
    packets = parse_compound(s.build_rtcp(first))
    sr = packets[0]
    assert isinstance(sr, RtcpSenderReport) and sr.ssrc == s.ssrc and sr.packet_count == 1
    assert sr.reports[0].packets_lost == 1 and sr.reports[0].highest_sequence == 4
    nxt = s.next_deadline()
    assert first + 2.5 <= nxt <= first + 7.5
    # Nothing sent since: the next report is an RR.
    assert isinstance(parse_compound(s.build_rtcp(nxt))[0], RtcpReceiverReport)


def test_rtt_from_peer_report_and_quality() -> None:
    s = _stream(now=0.0, wallclock_offset=1_700_000_000.0)
    s.receive(_pkt(1), PEER, 0.0)
    s.receive(_pkt(3), PEER, 0.04)
    s.tick(b"\xff" * 160)
    our_sr = parse_compound(s.build_rtcp(1.0))[0]
    assert isinstance(our_sr, RtcpSenderReport)
    # The peer holds our SR for 0.5 s; the report arrives 0.56 s after we sent it.
    block = ReportBlock(s.ssrc, 0, 0, 0, 0, ntp_middle32(our_sr.ntp_timestamp), 32768)
    s.receive_rtcp(serialize_compound([RtcpReceiverReport(0x1234, (block,))]), PEER, 1.56)
    q = s.quality()
    assert q["rtt_ms"] == 60.0
    assert q["packets_lost"] == 1 and q["packets_expected"] == 3
    assert q["loss_percent"] == 33.33
    assert q["packets_received"] == 2 and q["packets_sent"] == 1
    assert s.receive_rtcp(b"\x00\x01", PEER, 2.0) is None and s.counters.rtcp_malformed == 1
    assert ntp_timestamp(1_700_000_001.0) == our_sr.ntp_timestamp
