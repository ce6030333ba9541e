from __future__ import annotations

import random

import pytest

from callengine.sip.sdp import (
    SdpSession,
    SessionDescription,
    accept_answer,
    build_offer,
    negotiate,
)
from media.codecs import G722, OPUS, PCMA, PCMU, TELEPHONE_EVENT

OFFER = (
    "v=0\r\n"
    "o=- 3712 3712 IN IP4 192.0.2.1\r\n"
    "s=pjmedia\r\n"
    "b=AS:84\r\n"
    "t=0 0\r\n"
    "a=X-nat:0\r\n"
    "m=audio 4000 RTP/AVP 96 8 0 18 101\r\n"
    "c=IN IP4 192.0.2.1\r\n"
    "b=TIAS:64000\r\n"
    "a=rtcp:4001 IN IP4 192.0.2.1\r\n"
    "a=rtpmap:96 opus/48000/2\r\n"
    "a=fmtp:96 useinbandfec=1\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)


def test_parse_fields() -> None:
    sdp = SessionDescription.parse(OFFER)
    assert sdp.origin.session_id == 3712 and sdp.origin.address == "192.0.2.1"
    assert sdp.session_name == "pjmedia" and sdp.timing == [(0, 0)]
    m = sdp.media[0]
    assert (m.media, m.port, m.proto) == ("audio", 4000, "RTP/AVP")
    assert m.payload_types == [96, 8, 0, 18, 101]
    assert m.rtpmap[96].encoding == "opus" and m.rtpmap[96].channels == 2
    assert m.codec_of(18) is not None and m.codec_of(18).encoding == "G729"  # type: ignore[union-attr]
    assert m.fmtp[101] == "0-16" and m.ptime == 20 and m.direction == "sendrecv"
    assert m.attribute("rtcp") == "4001 IN IP4 192.0.2.1"
    assert sdp.media_connection(0) == m.connection and m.connection is not None
    assert ("b", "AS:84") in sdp.other and ("b", "TIAS:64000") in m.other


def test_serialize_round_trip() -> None:
    sdp = SessionDescription.parse(OFFER)
    again = SessionDescription.parse(sdp.serialize())
    assert again == sdp
    text = sdp.serialize().decode()
    assert text.startswith("v=0\r\no=- 3712 3712 IN IP4 192.0.2.1\r\ns=pjmedia\r\n")
    assert "m=audio 4000 RTP/AVP 96 8 0 18 101\r\nc=IN IP4 192.0.2.1\r\nb=TIAS:64000\r\n" in text


def test_negotiate_keeps_offer_order_and_dynamic_payload_types() -> None:
    answer = negotiate(SessionDescription.parse(OFFER), [PCMU, PCMA, OPUS, TELEPHONE_EVENT])
    assert answer is not None
    # opus has no telephone-event/48000 in the offer: PCMA (next in order) leads.
    assert [c.name for c in answer.codecs] == ["PCMA", "opus", "PCMU"]
    assert answer.codecs[1].payload_type == 96  # offerer's number, not our default 111
    assert answer.codecs[1].fmtp == "useinbandfec=1"
    assert answer.telephone_event_pt == 101
    assert (answer.remote_address, answer.remote_port, answer.remote_rtcp_port) == (
        "192.0.2.1",
        4000,
        4001,
    )
    assert answer.direction == "sendrecv" and not answer.on_hold and answer.peer_sends
    body = answer.to_sdp(SdpSession("10.0.0.5", session_id=77), address="10.0.0.5", port=12000)
    text = body.serialize().decode()
    assert "m=audio 12000 RTP/AVP 8 96 0 101\r\n" in text
    assert (
        "a=rtpmap:96 opus/48000/2\r\n" in text and "a=rtpmap:101 telephone-event/8000\r\n" in text
    )
    assert "c=IN IP4 10.0.0.5\r\n" in text and "a=sendrecv" in text


def test_opus_kept_first_when_offered_with_48k_events() -> None:
    offer = SessionDescription.parse(
        OFFER.replace(
            "a=ptime:20\r\n", "a=rtpmap:102 telephone-event/48000\r\na=ptime:20\r\n"
        ).replace("18 101", "18 101 102")
    )
    answer = negotiate(offer, [PCMU, OPUS])
    assert answer is not None and answer.codec.name == "opus" and answer.telephone_event_pt == 102
    assert answer.telephone_event is not None and answer.telephone_event.clock_rate == 48000


def test_negotiate_without_telephone_event_and_static_without_rtpmap() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\n"
        "m=audio 5000 RTP/AVP 18 0\r\n"
    )
    answer = negotiate(offer, [PCMA, PCMU, TELEPHONE_EVENT])
    assert answer is not None and answer.codec.name == "PCMU" and answer.telephone_event is None


def test_no_common_codec_means_488() -> None:
    offer = SessionDescription.parse(
        "v=0\no=- 1 1 IN IP4 10.1.1.1\ns=-\nc=IN IP4 10.1.1.1\nt=0 0\n"
        "m=audio 5000 RTP/AVP 18\na=rtpmap:18 G729/8000\n"
    )
    assert negotiate(offer, [PCMU, PCMA]) is None
    video_only = SessionDescription.parse(
        "v=0\no=- 1 1 IN IP4 10.1.1.1\ns=-\nc=IN IP4 10.1.1.1\nt=0 0\nm=video 5002 RTP/AVP 96\n"
    )
    assert negotiate(video_only, [PCMU]) is None


@pytest.mark.parametrize(
    ("attr", "conn", "expected"),
    [
        ("a=sendonly", "192.0.2.1", "recvonly"),
        ("a=recvonly", "192.0.2.1", "sendonly"),
        ("a=inactive", "192.0.2.1", "inactive"),
        ("", "0.0.0.0", "recvonly"),
        ("a=inactive", "0.0.0.0", "inactive"),
        ("", "192.0.2.1", "sendrecv"),
    ],
)
def test_hold_answers(attr: str, conn: str, expected: str) -> None:
    offer = SessionDescription.parse(
        f"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 {conn}\r\nt=0 0\r\n"
        f"m=audio 4000 RTP/AVP 0\r\n{attr}\r\n"
    )
    answer = negotiate(offer, [PCMU])
    assert answer is not None and answer.direction == expected
    text = answer.to_sdp(SdpSession("10.0.0.1"), address="10.0.0.1", port=10000).serialize()
    assert f"a={expected}\r\n".encode() in text


def test_rejected_streams_get_port_zero_and_ipv6() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nt=0 0\r\n"
        "m=video 6000 RTP/AVP 96\r\nc=IN IP6 2001:db8::1\r\na=rtpmap:96 VP8/90000\r\n"
        "m=audio 6002 RTP/AVP 9\r\nc=IN IP6 2001:db8::2\r\n"
    )
    answer = negotiate(offer, [G722, PCMU])
    assert answer is not None and answer.codec.name == "G722" and answer.media_index == 1
    assert answer.remote_address == "2001:db8::2"
    sdp = answer.to_sdp(SdpSession("2001:db8::9"), address="2001:db8::9", port=10002)
    assert [m.port for m in sdp.media] == [0, 10002]
    assert b"c=IN IP6 2001:db8::9\r\n" in sdp.serialize()
    assert b"o=callengine " in sdp.serialize() and b" IN IP6 2001:db8::9\r\n" in sdp.serialize()


def test_origin_version_increments_per_offer_and_answer() -> None:
    session = SdpSession("10.0.0.1", rng=random.Random(3))
    first = build_offer(session, [PCMU], address="10.0.0.1", port=10000)
    second = build_offer(session, [PCMU], address="10.0.0.1", port=10000, direction="sendonly")
    answer = negotiate(SessionDescription.parse(OFFER), [PCMU])
    assert answer is not None
    third = answer.to_sdp(session, address="10.0.0.1", port=10000)
    assert first.origin.session_id == second.origin.session_id == third.origin.session_id
    assert [first.origin.version + 1, first.origin.version + 2] == [
        second.origin.version,
        third.origin.version,
    ]


def test_uac_offer_and_answer() -> None:
    session = SdpSession("10.0.0.1")
    offer = build_offer(
        session, [PCMU, PCMA], address="10.0.0.1", port=10000, telephone_event=TELEPHONE_EVENT
    )
    text = offer.serialize().decode()
    assert "m=audio 10000 RTP/AVP 0 8 101\r\n" in text and "a=ptime:20\r\n" in text
    remote = SessionDescription.parse(
        "v=0\r\no=peer 9 9 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
        "m=audio 7000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
    result = accept_answer(offer, remote)
    assert result is not None and result.codec.name == "PCMA" and result.telephone_event_pt == 101
    assert (result.remote_address, result.remote_port) == ("192.0.2.7", 7000)
    held = build_offer(session, [PCMU], address="10.0.0.1", port=10000, direction="sendonly")
    held_answer = SessionDescription.parse(
        "v=0\r\no=peer 9 10 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
        "m=audio 7000 RTP/AVP 0\r\na=recvonly\r\n"
    )
    assert accept_answer(held, held_answer).direction == "sendonly"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "SDP is empty"),
        ("o=- 1 1 IN IP4 1.2.3.4\r\n", "SDP line 1: must be v=0"),
        ("v=1\r\n", "SDP line 1: unsupported version v=1"),
        ("v=0\r\nbogus\r\n", "SDP line 2: expected '<type>=<value>', got 'bogus'"),
        ("v=0\r\no=- 1 IN IP4 1.2.3.4\r\n", "SDP line 2: o= needs 6 fields, got 5"),
        ("v=0\r\ns=-\r\n", "SDP has no o= line"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n", "SDP has no s= line"),
        (
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4\r\n",
            "SDP line 4: c= needs 3 fields, got 2",
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP9 x\r\n",
            "SDP line 4: unsupported address type 'IP9'",
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP6 1:2:zz::\r\n",
            "SDP line 4: invalid IP6 address '1:2:zz::'",
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 5 RTP/AVP 0\r\n",
            "SDP media 0 (audio) has no c= line and no session c=",
        ),
    ],
)
def test_malformed_sdp(body: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        SessionDescription.parse(body)
    assert str(info.value) == message


# ------------------------------------------------ liberal acceptance (issue 11)
HEAD = "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n"


@pytest.mark.parametrize(
    ("media", "codec"),
    [
        # RFC 4475 esc01 / longreq: an rtpmap without clock rate on a stream we decline
        ("m=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n", "PCMU"),
        # an unreadable rtpmap for an offered payload type: that type is not chosen
        ("m=audio 5000 RTP/AVP 96 8\r\na=rtpmap:96 opus\r\n", "PCMA"),
        ("m=audio 5000 RTP/AVP 96 0\r\na=rtpmap:96 x/\u00b2\r\na=rtpmap:0\r\n", "PCMU"),
        # formats that are not payload type numbers, or out of range, are skipped
        ("m=audio 5000 RTP/AVP x 200 \u00b2 0\r\n", "PCMU"),
        ("m=audio 5000 RTP/AVP " + "9" * 5000 + " 8\r\n", "PCMA"),
        # unknown or unreadable attributes and lines are ignored
        (
            "m=audio 5000 RTP/AVP 0\r\na=ptime:abc\r\na=rtcp:" + "9" * 5000 + "\r\n"
            "a=fmtp:x y\r\na=foo\r\nx=unknown\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:k\r\n",
            "PCMU",
        ),
        ("m=audio 5000 RTP/AVP 0\r\na=ptime:1e999\r\n", "PCMU"),
        ("m=audio 5000/x RTP/AVP 0\r\n", "PCMU"),
        # a stream we cannot address is declined, another one is answered
        ("m=audio 99999 RTP/AVP 0\r\nm=audio 5002 RTP/AVP 8\r\n", "PCMA"),
    ],
)
def test_liberal_offers_are_answered(media: str, codec: str) -> None:
    offer = SessionDescription.parse((HEAD + media).encode())
    answer = negotiate(offer, [PCMU, PCMA, TELEPHONE_EVENT])
    assert answer is not None and answer.codec.name == codec
    body = answer.to_sdp(SdpSession("192.0.2.1"), address="192.0.2.1", port=30000).serialize()
    again = SessionDescription.parse(body)  # our answer is well-formed, one m= per offered
    assert len(again.media) == len(offer.media)
    assert [m.port for m in again.media].count(30000) == 1
    assert answer.ptime in (None, 20) and 0 < answer.remote_rtcp_port < 65536


@pytest.mark.parametrize(
    "media",
    [
        "m=audio 99999 RTP/AVP 0\r\n",
        "m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 opus\r\n",
        "m=audio 5000 RTP/AVP x\r\n",
        "m=video 5000 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n",
        "m=audio 0 RTP/AVP 0\r\n",
    ],
)
def test_nothing_usable_left_is_none_for_488(media: str) -> None:
    offer = SessionDescription.parse(HEAD + media)
    assert negotiate(offer, [PCMU, PCMA, TELEPHONE_EVENT]) is None


def test_non_utf8_text_is_kept_and_written_back() -> None:
    offer = SessionDescription.parse(
        HEAD.replace("s=-", "s=caf\xe9").encode("latin-1") + b"m=audio 5000 RTP/AVP 0\r\n"
    )
    assert offer.serialize().split(b"\r\n")[2] == b"s=caf\xe9"
    assert negotiate(offer, [PCMU]) is not None


def test_huge_numbers_are_errors_not_crashes() -> None:
    with pytest.raises(ValueError) as info:
        SessionDescription.parse("v=0\r\no=- " + "9" * 5000 + " 1 IN IP4 1.2.3.4\r\ns=-\r\n")
    assert str(info.value) == "SDP line 2: o= session id and version must be numeric"
