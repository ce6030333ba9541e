from __future__ import annotations

import pytest

from media.rtcp import (
    ReceptionStats,
    ReportBlock,
    RtcpBye,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    RtcpUnknown,
    SdesChunk,
    ntp_middle32,
    ntp_timestamp,
    parse_compound,
    rtt_from_report,
    serialize_compound,
)


def test_compound_round_trip() -> None:
    block = ReportBlock(0x11111111, 25, -3, 70000, 12, 0xAABBCCDD, 65536)
    packets = [
        RtcpSenderReport(0x22222222, ntp_timestamp(1_700_000_000.5), 1234, 10, 1600, (block,)),
        RtcpSdes((SdesChunk(0x22222222, ((1, b"callengine@host"),)),)),
        RtcpBye((0x22222222,), "bye now"),
    ]
    data = serialize_compound(packets)
    assert len(data) % 4 == 0
    assert parse_compound(data) == packets
    rr = [RtcpReceiverReport(5, (block,)), RtcpUnknown(204, 1, b"name" + b"\x00" * 4)]
    assert parse_compound(serialize_compound(rr)) == rr


def test_sr_wire_layout() -> None:
    data = serialize_compound([RtcpSenderReport(1, 2 << 32, 3, 4, 5)])
    assert data == bytes.fromhex("80c80006000000010000000200000000000000030000000400000005")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\xc8", "RTCP packet length 2 is less than 4 bytes"),
        (b"\x40\xc9\x00\x01\x00\x00\x00\x01", "RTCP packet has invalid version 1"),
        (b"\x80\xc9\x00\x05\x00\x00\x00\x01", "RTCP packet length 24 exceeds datagram length"),
        (b"\x81\xc9\x00\x01\x00\x00\x00\x01", "RTCP RR length 4 too short for 1 report blocks"),
    ],
)
def test_malformed_rtcp(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_compound(data)
    assert str(info.value) == message


def test_loss_and_fraction_lost() -> None:
    stats = ReceptionStats(7, 8000)
    t = 0.0
    for seq in [100, 101, 102, 104, 105, 108, 109]:  # 103, 106, 107 lost
        stats.update(seq, seq * 160, t)
        t += 0.02
    assert stats.expected == 10
    assert stats.lost == 3
    block = stats.report_block(t)
    assert block.packets_lost == 3
    assert block.fraction_lost == (3 << 8) // 10
    assert block.highest_sequence == 109
    # Next interval without loss: fraction 0, cumulative unchanged.
    for seq in range(110, 120):
        stats.update(seq, seq * 160, t)
    block = stats.report_block(t)
    assert block.fraction_lost == 0 and block.packets_lost == 3


def test_sequence_wrap_extends_highest_seq() -> None:
    stats = ReceptionStats(7, 8000)
    for i, seq in enumerate([65534, 65535, 0, 1]):
        stats.update(seq, i * 160, i * 0.02)
    assert stats.extended_max == 65536 + 1
    assert stats.lost == 0


def test_jitter_zero_for_perfect_timing_and_grows_with_variation() -> None:
    stats = ReceptionStats(7, 8000)
    for i in range(50):
        stats.update(i, i * 160, i * 0.02)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)
    stats2 = ReceptionStats(7, 8000)
    for i in range(200):
        stats2.update(i, i * 160, i * 0.02 + (0.005 if i % 2 else 0.0))
    # Each transit difference is 40 timestamp units; A.8 converges to 40.
    assert stats2.jitter == pytest.approx(40.0, rel=0.01)
    assert stats2.jitter_seconds == pytest.approx(0.005, rel=0.01)


def test_rtt_from_lsr_dlsr() -> None:
    sent = 1_700_000_000.0
    lsr = ntp_middle32(ntp_timestamp(sent))
    dlsr = int(0.25 * 65536)  # peer held our SR for 250 ms
    arrival = ntp_timestamp(sent + 0.25 + 0.080)
    assert rtt_from_report(arrival, lsr, dlsr) == pytest.approx(0.080, abs=1e-4)
    assert rtt_from_report(arrival, 0, 0) is None


def test_report_block_lsr_dlsr_from_sender_report() -> None:
    stats = ReceptionStats(7, 8000)
    stats.update(1, 0, 0.0)
    ntp = ntp_timestamp(1_700_000_000.0)
    stats.on_sender_report(ntp, 10.0)
    block = stats.report_block(10.5)
    assert block.lsr == ntp_middle32(ntp)
    assert block.dlsr == 32768
