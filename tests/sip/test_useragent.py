"""The user agent core (RFC 3261 §8.2 UAS rules, §12-§15 INVITE sessions, RFC 3581),
as bytes in and bytes out with a fake clock."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from callengine.sip.auth import AuthStatus, DigestServer
from callengine.sip.message import Request, Response
from callengine.sip.sdp import SdpSession, SessionDescription, negotiate
from callengine.sip.useragent import ALLOWED, InviteSession
from media.codecs import PCMA, PCMU, TELEPHONE_EVENT

ALLOW = ", ".join(ALLOWED)
ACCEPT = "application/sdp, application/dtmf-relay, application/dtmf"
NAT = ("203.0.113.5", 40000)  # where a NATed peer's packets really come from


def one(sent: list) -> SimpleNamespace:
    assert len(sent) == 1, [s.start_line for s in sent]
    return sent[0]


def header(sent: SimpleNamespace, name: str) -> str | None:
    return sent.msg.headers.get(name)


def confirmed_uas_call(kit: SimpleNamespace, h: SimpleNamespace) -> tuple[InviteSession, str]:
    ok = h.receive(kit.build_invite())[-1]
    assert ok.status == 200
    h.receive(kit.build_ack(to_tag=ok.msg.to_tag))
    [event] = h.app.of("incoming_call")
    h.clear()
    return event.session, ok.msg.to_tag


# ---------------------------------------------------------- outside a dialog
def test_options_outside_dialog(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    ok = one(h.receive(kit.build_request("OPTIONS", contact=None)))
    assert ok.start_line == "SIP/2.0 200 OK"
    assert header(ok, "Allow") == ALLOW
    assert header(ok, "Accept") == ACCEPT
    assert header(ok, "Supported") == "replaces, timer"
    assert ok.msg.to_tag and ok.msg.from_tag == "from-1"
    assert ok.msg.call_id == "call-1@192.0.2.10" and (ok.msg.cseq, ok.msg.cseq_method) == (
        1,
        "OPTIONS",
    )
    assert ok.dest == kit.PEER and h.app.names() == []


def test_unknown_method_is_501_with_allow(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    resp = one(h.receive(kit.build_request("FROBNICATE")))
    assert resp.start_line == "SIP/2.0 501 Not Implemented"
    assert header(resp, "Allow") == ALLOW


@pytest.mark.parametrize("method", ["SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH"])
def test_known_but_unsupported_method_is_405_with_allow(
    kit: SimpleNamespace, h: SimpleNamespace, method: str
) -> None:
    resp = one(h.receive(kit.build_request(method)))
    assert resp.start_line == "SIP/2.0 405 Method Not Allowed"
    assert header(resp, "Allow") == ALLOW


@pytest.mark.parametrize("method", ["BYE", "INFO", "UPDATE"])
@pytest.mark.parametrize("to_tag", [None, "no-such-dialog"])
def test_in_dialog_methods_without_dialog_are_481(
    kit: SimpleNamespace, h: SimpleNamespace, method: str, to_tag: str | None
) -> None:
    resp = one(h.receive(kit.build_request(method, to_tag=to_tag)))
    assert resp.start_line == "SIP/2.0 481 Call/Transaction Does Not Exist"
    assert h.app.names() == []


def test_invite_with_to_tag_for_unknown_dialog_is_481(
    kit: SimpleNamespace, h: SimpleNamespace
) -> None:
    resp = one(h.receive(kit.build_invite(to_tag="stale")))
    assert resp.start_line == "SIP/2.0 481 Call/Transaction Does Not Exist"
    assert h.app.names() == []


def test_merged_request_is_482(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="ring"))
    h.receive(kit.build_invite(branch="z9hG4bK-path-a"))
    resp = one(h.receive(kit.build_invite(branch="z9hG4bK-path-b")))
    assert resp.start_line == "SIP/2.0 482 Loop Detected"
    assert len(h.app.of("incoming_call")) == 1


def test_unknown_require_is_420_listing_the_tags(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    data = kit.build_invite(extra=["Require: 100rel, timer, foo"])
    resp = one(h.receive(data))
    assert resp.start_line == "SIP/2.0 420 Bad Extension"
    assert header(resp, "Unsupported") == "100rel, foo"
    assert h.app.names() == []


def test_supported_require_passes(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    resp = one(h.receive(kit.build_request("OPTIONS", extra=["Require: timer"])))
    assert resp.status == 200


def test_invite_with_text_body_is_415_with_accept(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    resp = one(h.receive(kit.build_invite(body=b"hello", content_type="text/plain")))
    assert resp.start_line == "SIP/2.0 415 Unsupported Media Type"
    assert header(resp, "Accept") == ACCEPT
    assert h.app.names() == []


def test_invite_with_content_encoding_is_415(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    resp = one(h.receive(kit.build_invite(extra=["Content-Encoding: gzip"])))
    assert resp.start_line == "SIP/2.0 415 Unsupported Media Type"
    assert header(resp, "Accept-Encoding") == "identity"


def test_invite_accepting_no_sdp_is_406(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    resp = one(h.receive(kit.build_invite(extra=["Accept: text/html"])))
    assert resp.start_line == "SIP/2.0 406 Not Acceptable"
    assert header(resp, "Warning") == '304 callengine "Media type not available"'


def test_unsupported_uri_scheme_is_416(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    resp = one(h.receive(kit.build_invite(uri="mailto:someone@example.com")))
    assert resp.start_line == "SIP/2.0 416 Unsupported URI Scheme"


def test_cseq_method_mismatch_is_400(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    resp = one(h.receive(kit.build_request("OPTIONS", cseq_method="INVITE")))
    assert resp.start_line == "SIP/2.0 400 Bad Request - CSeq method does not match the request"


def test_register_without_registrar_is_405(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    resp = one(h.receive(kit.build_request("REGISTER", uri="sip:example.com")))
    assert resp.start_line == "SIP/2.0 405 Method Not Allowed"
    assert header(resp, "Allow") == ALLOW
    assert h.app.names() == ["register"]


def test_malformed_contact_in_invite_is_400(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    resp = one(h.receive(kit.build_invite(contact="<sip:caller@192.0.2.10")))
    assert resp.start_line == "SIP/2.0 400 Bad Request - missing > in Contact"
    assert h.app.names() == []


def test_broken_to_in_an_otherwise_broken_request_does_not_raise(
    kit: SimpleNamespace, h: SimpleNamespace
) -> None:
    """Nothing from the network may raise out of receive (DESIGN.md principle 4): the
    400 for the bad Max-Forwards must not die on the equally bad To."""
    data = kit.build_request("OPTIONS", max_forwards=300).replace(
        b"To: <sip:service@example.com>", b'To: "tag" <sip:service@example.com'
    )
    resp = one(h.receive(data))
    assert resp.start_line == "SIP/2.0 400 Bad Request - Max-Forwards out of range"


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (
            b'From: "Caller" <sip:',
            b'From: "Caller <sip:',
            "Bad Request - unterminated quoted display name in From",
        ),
        (
            b"To: <sip:service@example.com>",
            b"To: sip:service@example.com?x=y",
            "Bad Request - URI with headers must be in <> in To",
        ),
    ],
)
def test_new_request_with_bad_from_or_to_is_400(
    kit: SimpleNamespace, h: SimpleNamespace, old: bytes, new: bytes, reason: str
) -> None:
    resp = one(h.receive(kit.build_invite().replace(old, new)))
    assert resp.start_line == f"SIP/2.0 400 {reason}"
    assert h.app.names() == []


def test_receive_ignores_keepalives(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    assert h.receive(b"\r\n\r\n") == [] and h.receive(b"\r\n") == []
    assert h.ua.counters.parse_errors == 0


def test_ack_without_dialog_is_dropped_and_counted(
    kit: SimpleNamespace, h: SimpleNamespace
) -> None:
    assert h.receive(kit.build_ack(to_tag="nothing")) == []
    assert h.ua.counters.dropped_acks == 1


# ------------------------------------------------------------- RFC 3581 rport
def test_rport_and_received_are_stamped_and_response_goes_to_source_port(
    kit: SimpleNamespace, h: SimpleNamespace
) -> None:
    sent = h.receive(kit.build_request("OPTIONS", rport=True), source=NAT)
    resp = one(sent)
    assert resp.dest == NAT
    via = header(resp, "via")
    assert (
        via == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-inv-1;rport=40000;received=203.0.113.5"
    )


def test_without_rport_response_goes_to_received_and_sent_by_port(
    kit: SimpleNamespace, h: SimpleNamespace
) -> None:
    resp = one(h.receive(kit.build_request("OPTIONS"), source=NAT))
    assert resp.dest == ("203.0.113.5", 5060)
    assert (
        header(resp, "via")
        == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-inv-1;received=203.0.113.5"
    )


def test_rport_invite_all_responses_and_2xx_retransmissions_go_to_source(
    kit: SimpleNamespace,
) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="ring_answer"))
    sent = h.receive(kit.build_invite(rport=True), source=NAT)
    assert [s.status for s in sent] == [100, 180, 200]
    sent += h.advance(1.0)
    assert {s.dest for s in sent} == {NAT}
    for s in sent:
        assert ";rport=40000;received=203.0.113.5" in header(s, "via")


def test_stream_responses_go_back_on_the_connection(
    kit: SimpleNamespace, h: SimpleNamespace
) -> None:
    data = kit.build_request("OPTIONS", transport="TCP", sent_by="client.invalid:5060")
    resp = one(h.receive(data, transport="TCP", source=NAT))
    assert (resp.dest, resp.transport) == (NAT, "TCP")


def test_multiple_vias_copied_in_order(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    data = kit.build_request(
        "OPTIONS",
        extra=[
            "Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-p2",
            "Via: SIP/2.0/TCP p3.example.com;branch=z9hG4bK-p3",
        ],
    )
    resp = one(h.receive(data))
    assert resp.msg.headers.get_all("via") == [
        "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-inv-1",
        "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-p2",
        "SIP/2.0/TCP p3.example.com;branch=z9hG4bK-p3",
    ]


# ------------------------------------------------------------------ UAS calls
def test_incoming_call_answer_flow(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    sent = h.receive(kit.build_invite(extra=["Record-Route: <sip:proxy.example.com;lr>"]))
    assert [s.start_line for s in sent] == [
        "SIP/2.0 100 Trying",
        "SIP/2.0 180 Ringing",
        "SIP/2.0 200 OK",
    ]
    trying, ringing, ok = (s.msg for s in sent)
    assert trying.to_tag is None
    assert ringing.to_tag == ok.to_tag and ok.to_tag
    assert ok.headers.get("contact") == "<sip:192.0.2.1:5060>"
    assert ok.headers.get("content-type") == "application/sdp" and ok.body == kit.SDP_ANSWER
    [event] = h.app.of("incoming_call")
    assert event.session.remote_sdp == kit.SDP_OFFER
    h.receive(kit.build_ack(to_tag=ok.to_tag))
    assert h.app.names() == ["incoming_call", "call_confirmed"]


def test_record_route_is_copied_into_2xx(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    """§12.1.1: the UAS MUST copy Record-Route into every response that creates a dialog."""
    rr = "<sip:proxy.example.com;lr>"
    ok = h.receive(kit.build_invite(extra=[f"Record-Route: {rr}"]))[-1]
    assert ok.msg.headers.get_all("record-route") == [rr]


def test_in_dialog_bye_ends_the_call(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    _, tag = confirmed_uas_call(kit, h)
    resp = one(h.receive(kit.build_bye(to_tag=tag, extra=["Reason: Q.850;cause=17"])))
    assert resp.start_line == "SIP/2.0 200 OK"
    assert resp.msg.to_tag == tag
    [ended] = h.app.of("call_ended")
    assert (ended.reason, ended.cause) == ("remote_bye", 17)
    # a retransmitted BYE is answered again by its transaction, no second event
    assert one(h.receive(kit.build_bye(to_tag=tag))).status == 200
    assert len(h.app.of("call_ended")) == 1


def test_out_of_order_cseq_in_dialog_is_500(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    _, tag = confirmed_uas_call(kit, h)
    one(h.receive(kit.build_request("INFO", to_tag=tag, cseq=5, branch="z9hG4bK-i5")))
    resp = one(h.receive(kit.build_request("INFO", to_tag=tag, cseq=4, branch="z9hG4bK-i4")))
    assert resp.start_line == "SIP/2.0 500 Server Internal Error - CSeq out of order"
    assert len(h.app.of("info")) == 1


def sdp_reoffer(session: InviteSession, sdp: bytes) -> bytes | None:
    """The application's real offer/answer: negotiate(), then our SDP."""
    answer = negotiate(SessionDescription.parse(sdp), [PCMU, PCMA, TELEPHONE_EVENT])
    if answer is None:
        return None
    return answer.to_sdp(
        SdpSession("192.0.2.1", session_id=7), address="192.0.2.1", port=30000
    ).serialize()


def hold_offer(kit: SimpleNamespace, direction: bytes = b"sendonly") -> bytes:
    return kit.SDP_OFFER.replace(b"a=sendrecv", b"a=" + direction).replace(
        b"1000 1000", b"1000 1001"
    )


def test_reinvite_hold_is_answered_recvonly(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(reoffer=sdp_reoffer))
    session, tag = confirmed_uas_call(kit, h)
    reinvite = kit.build_invite(to_tag=tag, cseq=2, branch="z9hG4bK-re-1", body=hold_offer(kit))
    sent = h.receive(reinvite)
    ok = sent[-1]
    assert ok.start_line == "SIP/2.0 200 OK" and ok.msg.cseq == 2
    assert ok.msg.to_tag == tag
    answer = SessionDescription.parse(ok.msg.body)
    assert answer.media[0].direction == "recvonly"
    assert answer.media[0].port == 30000
    [reoffer] = h.app.of("reoffer")
    assert reoffer.sdp == hold_offer(kit)
    assert session.remote_sdp == hold_offer(kit) and session.local_sdp == ok.msg.body
    # the 2xx is retransmitted until the ACK for the re-INVITE
    assert [s.data for s in h.advance(0.6)] == [ok.data]
    h.receive(kit.build_ack(to_tag=tag, cseq=2, branch="z9hG4bK-re-ack"))
    assert h.advance(40) == []
    assert "call_ended" not in h.app.names()


def test_reinvite_without_common_codec_is_488(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(reoffer=sdp_reoffer))
    _, tag = confirmed_uas_call(kit, h)
    offer = kit.SDP_OFFER.replace(b"RTP/AVP 0 8 101", b"RTP/AVP 18").replace(
        b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n", b""
    )
    resp = one(
        h.receive(kit.build_invite(to_tag=tag, cseq=2, branch="z9hG4bK-re-2", body=offer))[-1:]
    )
    assert resp.start_line == "SIP/2.0 488 Not Acceptable Here"


def test_reinvite_with_unsupported_body_is_415(kit: SimpleNamespace) -> None:
    """§8.2.3 applies to requests inside a dialog too: the offer is not handed to the
    application when its type is not one we accept."""
    h = kit.Harness()
    _, tag = confirmed_uas_call(kit, h)
    data = kit.build_invite(
        to_tag=tag, cseq=2, branch="z9hG4bK-re-3", body=b"<xml/>", content_type="application/xml"
    )
    resp = h.receive(data)[-1]
    assert resp.start_line == "SIP/2.0 415 Unsupported Media Type"
    assert header(resp, "Accept") == ACCEPT
    assert "reoffer" not in h.app.names()


def test_update_with_offer(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(reoffer=sdp_reoffer))
    _, tag = confirmed_uas_call(kit, h)
    data = kit.build_request(
        "UPDATE",
        to_tag=tag,
        cseq=2,
        branch="z9hG4bK-up",
        body=hold_offer(kit, b"inactive"),
        content_type="application/sdp",
    )
    resp = one(h.receive(data))
    assert resp.start_line == "SIP/2.0 200 OK"
    assert SessionDescription.parse(resp.msg.body).media[0].direction == "inactive"
    assert header(resp, "content-type") == "application/sdp"
    assert len(h.app.of("reoffer")) == 1


def test_update_without_body(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    _, tag = confirmed_uas_call(kit, h)
    resp = one(h.receive(kit.build_request("UPDATE", to_tag=tag, cseq=2, branch="z9hG4bK-up2")))
    assert resp.start_line == "SIP/2.0 200 OK" and resp.msg.body == b""
    assert "reoffer" not in h.app.names()


def test_info_dtmf_relay_reaches_the_app(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    session, tag = confirmed_uas_call(kit, h)
    body = b"Signal=5\r\nDuration=160\r\n"
    data = kit.build_request(
        "INFO",
        to_tag=tag,
        cseq=2,
        branch="z9hG4bK-info",
        body=body,
        content_type="application/dtmf-relay",
    )
    resp = one(h.receive(data))
    assert resp.start_line == "SIP/2.0 200 OK"
    [info] = h.app.of("info")
    assert info.session is session
    assert info.request.content_type == "application/dtmf-relay" and info.request.body == body


def test_in_dialog_options(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    _, tag = confirmed_uas_call(kit, h)
    resp = one(h.receive(kit.build_request("OPTIONS", to_tag=tag, cseq=2, branch="z9hG4bK-o")))
    assert resp.start_line == "SIP/2.0 200 OK" and header(resp, "Allow") == ALLOW


def test_hangup_before_ack_waits_for_the_ack(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="answer"))
    ok = h.receive(kit.build_invite())[-1]
    [event] = h.app.of("incoming_call")
    h.ua.hangup(event.session, h.now)
    assert h.requests(h.sent, "BYE") == []
    sent = h.receive(kit.build_ack(to_tag=ok.msg.to_tag))
    bye = one(h.requests(sent, "BYE"))
    assert bye.msg.headers.get("reason") == "Q.850;cause=16"
    assert bye.msg.cseq_method == "BYE" and bye.msg.to_tag == "from-1"


def test_first_hangup_before_ack_decides_the_bye_cause(kit: SimpleNamespace) -> None:
    """A bridged leg ends (cause 41) before the caller's ACK; the handler's own hangup
    (cause 16) follows: the BYE after the ACK carries the first cause."""
    h = kit.Harness(kit.RecordingApp(incoming="answer"))
    ok = h.receive(kit.build_invite())[-1]
    [event] = h.app.of("incoming_call")
    h.ua.hangup(event.session, h.now, cause=41)
    h.ua.hangup(event.session, h.now)
    sent = h.receive(kit.build_ack(to_tag=ok.msg.to_tag))
    bye = one(h.requests(sent, "BYE"))
    assert bye.msg.headers.get("reason") == "Q.850;cause=41"


def test_hangup_while_ringing_rejects(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="ring"))
    h.receive(kit.build_invite())
    [event] = h.app.of("incoming_call")
    h.clear()
    h.ua.hangup(event.session, h.now, cause=21, status=603)
    resp = one(h.sent)
    assert resp.start_line == "SIP/2.0 603 Decline"
    assert header(resp, "reason") == "Q.850;cause=21"


# ---------------------------------------------------------------- admission
def test_max_calls_gives_503_with_retry_after(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="ring"), max_calls=2, retry_after=7)
    for i in range(2):
        assert h.statuses(h.receive(kit.build_invite(call_id=f"c{i}", branch=f"z9hG4bK-{i}"))) == [
            100,
            180,
        ]
    resp = one(h.receive(kit.build_invite(call_id="c2", branch="z9hG4bK-2")))
    assert resp.start_line == "SIP/2.0 503 Service Unavailable"
    assert header(resp, "retry-after") == "7"
    assert len(h.app.of("incoming_call")) == 2
    assert h.ua.counters.rejected_overload == 1
    assert h.ua.active_calls == 2


def test_max_cps_token_bucket(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="ring"), max_cps=2)

    def call(i: int) -> list[int]:
        return h.statuses(h.receive(kit.build_invite(call_id=f"c{i}", branch=f"z9hG4bK-{i}")))

    assert call(0) == [100, 180] and call(1) == [100, 180]
    assert call(2) == [503]
    h.advance(0.5)  # one token back
    assert call(3) == [100, 180]
    assert call(4) == [503]
    h.advance(10)  # burst is capped at one second's worth
    assert [call(i)[-1] for i in range(5, 8)] == [180, 180, 503]


def test_draining_gives_503(kit: SimpleNamespace, h: SimpleNamespace) -> None:
    h.ua.draining = True
    resp = one(h.receive(kit.build_invite()))
    assert resp.start_line == "SIP/2.0 503 Service Unavailable"
    assert header(resp, "retry-after") == "5"
    # a load balancer's OPTIONS probe sees the node unavailable, so it stops sending calls
    probe = one(h.receive(kit.build_request("OPTIONS", branch="z9hG4bK-o")))
    assert probe.status == 503
    assert header(probe, "retry-after") == "5"


# ---------------------------------------------------------------------- UAC
def test_invite_request_shape(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, invite = h.place_call(from_display="Alice")
    sent = one(h.sent)
    assert sent.dest == kit.CALLEE and sent.transport == "UDP"
    assert sent.start_line == "INVITE sip:bob@192.0.2.20:5080 SIP/2.0"
    via = invite.vias[0]
    assert (via.transport, via.sent_by) == ("UDP", "192.0.2.1:5060")
    assert via.branch.startswith("z9hG4bK") and len(via.branch) > 7 and "rport" in via.params
    assert invite.headers.get("contact") == "<sip:192.0.2.1:5060>"
    assert invite.headers.get("content-type") == "application/sdp" and invite.body == kit.SDP_OFFER
    assert (invite.cseq, invite.cseq_method, invite.max_forwards) == (1, "INVITE", 70)
    assert invite.from_tag and invite.to_tag is None
    assert invite.headers.get("from").startswith('"Alice" <sip:alice@example.com>;tag=')
    assert invite.headers.get("to") == "<sip:bob@192.0.2.20:5080>"
    assert session.call_id == invite.call_id


def test_invite_over_tcp_contact_has_transport(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    _, invite = h.place_call(transport="TCP")
    assert invite.headers.get("contact") == "<sip:192.0.2.1:5060;transport=tcp>"
    assert invite.vias[0].transport == "TCP"


CONTACT = "<sip:callee@192.0.2.30:5090>"


def test_180_then_200_acks_to_the_contact(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, invite = h.place_call()
    assert h.receive(kit.build_response(invite, 180, contact=CONTACT), source=kit.CALLEE) == []
    [progress] = h.app.of("progress")
    assert progress.status == 180 and progress.session is session
    sent = h.receive(
        kit.build_response(invite, 200, contact=CONTACT, body=kit.SDP_ANSWER), source=kit.CALLEE
    )
    ack = one(sent)
    assert ack.start_line == "ACK sip:callee@192.0.2.30:5090 SIP/2.0"
    assert ack.dest == ("192.0.2.30", 5090)
    msg = ack.msg
    assert msg.branch != invite.branch and msg.branch.startswith("z9hG4bK")
    assert (msg.cseq, msg.cseq_method) == (1, "ACK")
    assert msg.call_id == invite.call_id
    assert msg.to_tag == "callee-1"
    assert msg.headers.get("from") == invite.headers.get("from")  # §13.2.2.4: same From
    [answered] = h.app.of("answered")
    assert answered.status == 200 and session.remote_sdp == kit.SDP_ANSWER


def test_retransmitted_200_is_reacked_and_app_told_once(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    _, invite = h.place_call()
    ok = kit.build_response(invite, 200, contact=CONTACT, body=kit.SDP_ANSWER)
    first = one(h.receive(ok, source=kit.CALLEE))
    second = one(h.receive(ok, source=kit.CALLEE))
    assert first.data == second.data and second.method == "ACK"
    h.advance(40)  # the INVITE transaction is gone (Timer M)
    third = one(h.receive(ok, source=kit.CALLEE))
    assert third.data == first.data
    assert h.app.names() == ["answered"]


def test_486_is_acked_on_the_invite_branch_and_fails(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, invite = h.place_call()
    ack = one(h.receive(kit.build_response(invite, 486), source=kit.CALLEE))
    assert ack.start_line == "ACK sip:bob@192.0.2.20:5080 SIP/2.0"
    assert ack.dest == kit.CALLEE
    msg = ack.msg
    assert msg.branch == invite.branch
    assert (msg.cseq, msg.cseq_method) == (1, "ACK")
    assert msg.to_tag == "callee-1" and msg.headers.get("from") == invite.headers.get("from")
    [failed] = h.app.of("failed")
    assert failed.status == 486 and isinstance(failed.response, Response)
    assert h.ua.sessions == {}


def test_401_challenge_is_answered_with_credentials(kit: SimpleNamespace) -> None:
    server = DigestServer("example.com", b"uac secret")
    h = kit.Harness()
    session, invite = h.place_call(credentials=("alice", "s3cret"))
    challenge = server.challenge(h.now)[0]
    sent = h.receive(
        kit.build_response(invite, 401, extra=[f"WWW-Authenticate: {challenge}"]), source=kit.CALLEE
    )
    assert [s.method for s in sent] == ["ACK", "INVITE"]
    assert sent[0].msg.branch == invite.branch
    retry = sent[1].msg
    assert isinstance(retry, Request)
    assert (retry.cseq, retry.cseq_method) == (2, "INVITE")
    assert retry.call_id == invite.call_id and retry.from_tag == invite.from_tag
    assert retry.branch != invite.branch
    assert retry.body == invite.body
    authorization = retry.headers.get("authorization")
    assert authorization is not None
    result = server.verify(
        "INVITE",
        authorization,
        lambda user: "s3cret" if user == "alice" else None,
        h.now,
        request_uri=str(retry.uri),
    )
    assert result.status is AuthStatus.OK and result.username == "alice"
    assert h.app.names() == []
    # the retried INVITE's own 200 completes the call
    ack = one(h.receive(kit.build_response(retry, 200, body=kit.SDP_ANSWER), source=kit.CALLEE))
    assert ack.msg.cseq == 2 and ack.msg.cseq_method == "ACK"
    assert h.app.names() == ["answered"]


def test_second_401_fails_the_call(kit: SimpleNamespace) -> None:
    server = DigestServer("example.com", b"uac secret")
    h = kit.Harness()
    _, invite = h.place_call(credentials=("alice", "wrong"))
    challenge = f"WWW-Authenticate: {server.challenge(h.now)[0]}"
    retry = h.receive(kit.build_response(invite, 401, extra=[challenge]), source=kit.CALLEE)[-1].msg
    h.receive(kit.build_response(retry, 401, extra=[challenge]), source=kit.CALLEE)
    assert [e.status for e in h.app.of("failed")] == [401]


def test_401_without_credentials_fails(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    _, invite = h.place_call()
    h.receive(
        kit.build_response(invite, 401, extra=['WWW-Authenticate: Digest realm="x", nonce="y"']),
        source=kit.CALLEE,
    )
    assert [e.status for e in h.app.of("failed")] == [401]


def test_cancel_before_provisional_is_deferred(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, invite = h.place_call()
    h.clear()
    h.ua.cancel(session, h.now)
    assert h.sent == []
    sent = h.receive(kit.build_response(invite, 180), source=kit.CALLEE)
    cancel = one(sent)
    assert cancel.start_line == "CANCEL sip:bob@192.0.2.20:5080 SIP/2.0"
    msg = cancel.msg
    assert msg.branch == invite.branch
    assert (msg.cseq, msg.cseq_method) == (1, "CANCEL")
    assert msg.headers.get("to") == invite.headers.get("to")  # §9.1: To without the tag
    assert msg.headers.get("from") == invite.headers.get("from")
    assert msg.headers.get("reason") == "Q.850;cause=16"
    # 200 to the CANCEL, 487 to the INVITE: ACK the 487, the app hears the failure
    assert h.receive(kit.build_response(msg, 200), source=kit.CALLEE) == []
    ack = one(h.receive(kit.build_response(invite, 487), source=kit.CALLEE))
    assert ack.method == "ACK" and ack.msg.branch == invite.branch
    assert [e.status for e in h.app.of("failed")] == [487]


def test_200_after_cancel_is_acked_then_byed(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, invite = h.place_call()
    h.receive(kit.build_response(invite, 180), source=kit.CALLEE)
    h.ua.cancel(session, h.now)
    assert [s.method for s in h.sent[1:]] == ["CANCEL"]
    h.clear()
    sent = h.receive(
        kit.build_response(invite, 200, contact=CONTACT, body=kit.SDP_ANSWER), source=kit.CALLEE
    )
    assert [s.method for s in sent] == ["ACK", "BYE"]
    ack, bye = sent
    assert ack.dest == bye.dest == ("192.0.2.30", 5090)
    assert bye.msg.to_tag == "callee-1" and bye.msg.from_tag == invite.from_tag
    assert bye.msg.cseq == 2
    assert "answered" not in h.app.names()


def test_deferred_cancel_then_200_race_is_acked_then_byed(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, invite = h.place_call()
    h.ua.cancel(session, h.now)
    h.clear()
    sent = h.receive(
        kit.build_response(invite, 200, contact=CONTACT, body=kit.SDP_ANSWER), source=kit.CALLEE
    )
    assert [s.method for s in sent] == ["ACK", "BYE"]
    assert "answered" not in h.app.names()


def test_uac_hangup_sends_bye_in_dialog(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, invite = h.place_call()
    h.receive(
        kit.build_response(invite, 200, contact=CONTACT, body=kit.SDP_ANSWER), source=kit.CALLEE
    )
    h.clear()
    h.ua.hangup(session, h.now)
    bye = one(h.sent)
    assert bye.start_line == "BYE sip:callee@192.0.2.30:5090 SIP/2.0"
    msg = bye.msg
    assert (msg.cseq, msg.cseq_method) == (2, "BYE")
    assert msg.headers.get("from") == invite.headers.get("from")
    assert msg.to_tag == "callee-1"
    [ended] = h.app.of("call_ended")
    assert (ended.reason, ended.cause) == ("local_hangup", 16)


def test_uac_receives_bye_from_callee(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, invite = h.place_call()
    h.receive(
        kit.build_response(invite, 200, contact=CONTACT, body=kit.SDP_ANSWER), source=kit.CALLEE
    )
    h.clear()
    bye = (
        f"BYE sip:192.0.2.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.30:5090;branch=z9hG4bK-callee-bye\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:bob@192.0.2.20:5080>;tag=callee-1\r\n"
        f"To: {invite.headers.get('from')}\r\n"
        f"Call-ID: {invite.call_id}\r\n"
        f"CSeq: 1 BYE\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
    resp = one(h.receive(bye, source=("192.0.2.30", 5090)))
    assert resp.start_line == "SIP/2.0 200 OK"
    assert [e.name for e in h.app.events] == ["answered", "call_ended"]


def test_send_info_in_dialog(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, invite = h.place_call()
    h.receive(
        kit.build_response(invite, 200, contact=CONTACT, body=kit.SDP_ANSWER), source=kit.CALLEE
    )
    h.clear()
    h.ua.send_info(session, b"Signal=1\r\nDuration=100\r\n", "application/dtmf-relay", h.now)
    info = one(h.sent)
    assert info.start_line == "INFO sip:callee@192.0.2.30:5090 SIP/2.0"
    assert info.msg.content_type == "application/dtmf-relay" and info.msg.cseq == 2
