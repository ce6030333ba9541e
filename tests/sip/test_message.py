"""SIP message parse/serialize (RFC 3261 §7, §18.3, §20) and stream framing, no sockets."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callengine.sip.errors import RemoteProtocolError
from callengine.sip.message import (
    MAX_MESSAGE,
    Headers,
    PartialRequestError,
    Request,
    Response,
    StreamFramer,
    make_response,
    parse_message,
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds, "
    b"SIP/2.0/TCP proxy.example.com:5070;branch=z9hG4bK-p1;received=192.0.2.7\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"X-Custom-Header: Keep Me\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)

RESPONSE = (
    b"SIP/2.0 180 Ringing Now\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"To: <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def req(data: bytes, **kw: bool) -> Request:
    msg = parse_message(data, **kw)
    assert isinstance(msg, Request)
    return msg


def options(*extra: str, body: bytes = b"", length: str | None = None) -> bytes:
    lines = [
        "OPTIONS sip:user@example.com SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-opt",
        "From: <sip:a@example.com>;tag=f1",
        "To: <sip:user@example.com>",
        "Call-ID: opt-1@192.0.2.10",
        "CSeq: 1 OPTIONS",
        *extra,
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def reason_of(exc: pytest.ExceptionInfo[RemoteProtocolError]) -> tuple[int, str]:
    return exc.value.status, exc.value.reason


# ------------------------------------------------------------------- parsing
def test_parse_request_fields() -> None:
    msg = req(INVITE)
    assert (msg.method, msg.uri_text) == ("INVITE", "sip:bob@biloxi.example.com")
    assert (msg.uri.scheme, msg.uri.user, msg.uri.host) == ("sip", "bob", "biloxi.example.com")
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (msg.cseq, msg.cseq_method) == (314159, "INVITE")
    assert msg.from_tag == "1928301774" and msg.to_tag is None
    assert msg.from_ is not None and msg.from_.display == "Alice"
    assert msg.to is not None and msg.to.display == "Bob"
    assert msg.max_forwards == 70
    assert [(v.transport, v.host, v.port) for v in msg.vias] == [
        ("UDP", "pc33.atlanta.example.com", None),
        ("TCP", "proxy.example.com", 5070),
    ]
    assert msg.branch == "z9hG4bK776asdhds"
    assert msg.vias[1].params["received"] == "192.0.2.7"
    assert msg.body == b"v=0\n"
    assert msg.content_type == "application/sdp"
    assert msg.headers.get("x-custom-header") == "Keep Me"
    assert [str(c.uri) for c in msg.contacts] == ["sip:alice@pc33.atlanta.example.com"]


def test_parse_response_fields() -> None:
    msg = parse_message(RESPONSE)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (180, "Ringing Now")
    assert msg.to_tag == "a6c85cf" and msg.cseq_method == "INVITE"


def test_round_trip_preserves_fields() -> None:
    first = req(INVITE)
    data = first.to_bytes()
    second = req(data)
    for attr in (
        "method",
        "uri_text",
        "call_id",
        "cseq",
        "cseq_method",
        "from_tag",
        "to_tag",
        "body",
    ):
        assert getattr(second, attr) == getattr(first, attr), attr
    assert [str(v) for v in second.vias] == [str(v) for v in first.vias]
    assert list(second.headers.items()) == list(first.headers.items())
    # serialization is stable: a second round trip gives the same bytes
    assert second.to_bytes() == data
    # unknown header keeps the peer's spelling; Content-Length written from the body
    assert b"\r\nX-Custom-Header: Keep Me\r\n" in data
    assert data.endswith(b"Content-Length: 4\r\n\r\nv=0\n")


def test_round_trip_response() -> None:
    first = parse_message(RESPONSE)
    second = parse_message(first.to_bytes())
    assert isinstance(second, Response)
    assert (second.status, second.reason, second.call_id) == (180, "Ringing Now", first.call_id)
    assert first.to_bytes().startswith(b"SIP/2.0 180 Ringing Now\r\n")


def test_to_bytes_rewrites_wrong_content_length() -> None:
    msg = req(options(body=b"abc", length="3"))
    msg.body = b"hello"
    out = msg.to_bytes()
    assert out.count(b"Content-Length") == 1
    assert out.endswith(b"Content-Length: 5\r\n\r\nhello")


def test_compact_header_forms() -> None:
    data = (
        b"INVITE sip:bob@example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-c1\r\n"
        b"f: <sip:a@example.com>;tag=ft\r\n"
        b"t: <sip:bob@example.com>\r\n"
        b"i: compact-1@example.com\r\n"
        b"CSeq: 2 INVITE\r\n"
        b"m: <sip:a@192.0.2.1>\r\n"
        b"k: timer\r\n"
        b"s: hello\r\n"
        b"c: application/sdp\r\n"
        b"l: 3\r\n"
        b"\r\n"
        b"v=0"
    )
    msg = req(data)
    assert msg.call_id == "compact-1@example.com" and msg.from_tag == "ft"
    assert msg.vias[0].branch == "z9hG4bK-c1"
    assert str(msg.contacts[0].uri) == "sip:a@192.0.2.1"
    assert msg.headers.get("Supported") == "timer" and msg.headers.get("Subject") == "hello"
    assert msg.content_type == "application/sdp" and msg.body == b"v=0"
    out = msg.to_bytes()
    for name in (
        b"Via: ",
        b"From: ",
        b"To: ",
        b"Call-ID: ",
        b"Contact: ",
        b"Supported: ",
        b"Subject: ",
    ):
        assert b"\r\n" + name in out, name
    assert b"\r\ni: " not in out and b"\r\nl: " not in out


def test_header_folding_is_unfolded_to_one_space() -> None:
    data = options("Subject: first part", "   second part", "\tthird part")
    msg = req(data)
    assert msg.headers.get("subject") == "first part second part third part"


def test_folded_via_and_cseq() -> None:
    data = (
        b"OPTIONS sip:u@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1\r\n"
        b"  ;branch=z9hG4bK-fold\r\n"
        b"From: <sip:a@example.com>;tag=1\r\n"
        b"To: <sip:u@example.com>\r\n"
        b"Call-ID: fold@x\r\n"
        b"CSeq: 7\r\n"
        b"  OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    msg = req(data)
    assert msg.branch == "z9hG4bK-fold"
    assert (msg.cseq, msg.cseq_method) == (7, "OPTIONS")


def test_continuation_before_any_header_is_400() -> None:
    data = b"OPTIONS sip:u@example.com SIP/2.0\r\n continued\r\nVia: x\r\n\r\n"
    with pytest.raises(RemoteProtocolError) as exc:
        parse_message(data)
    assert reason_of(exc) == (400, "Bad Request - continuation line before any header")


def test_leading_crlf_before_start_line_is_ignored() -> None:
    assert req(b"\r\n\r\n" + options(length="0")).method == "OPTIONS"


def test_bare_lf_line_endings_are_accepted() -> None:
    msg = req(options(length="0").replace(b"\r\n", b"\n"))
    assert msg.call_id == "opt-1@192.0.2.10"


def test_headers_are_case_insensitive_and_lists_split_outside_quotes() -> None:
    msg = req(options('Accept: application/sdp, "a,b" <x>, text/plain', "ACCEPT: */*", length="0"))
    assert msg.headers.get("accept") == 'application/sdp, "a,b" <x>, text/plain'
    assert msg.headers.get_all("Accept") == ['application/sdp, "a,b" <x>, text/plain', "*/*"]
    assert msg.headers.get_list("accept") == ["application/sdp", '"a,b" <x>', "text/plain", "*/*"]
    assert "aCcEpT" in msg.headers and "Require" not in msg.headers


def test_headers_set_remove_copy() -> None:
    h = Headers()
    h.add("X-Thing", "1")
    h.add("x-thing", "2")
    h.set("via", "SIP/2.0/UDP a;branch=z9hG4bK1")
    copy = h.copy()
    h.remove("X-THING")
    assert "x-thing" not in h and copy.get_all("X-Thing") == ["1", "2"]
    assert list(copy.items()) == [
        ("X-Thing", "1"),
        ("X-Thing", "2"),
        ("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"),
    ]


# -------------------------------------------------------------- framing (UDP)
def test_datagram_without_content_length_takes_the_rest() -> None:
    msg = req(options(body=b"the whole rest\r\n"))
    assert msg.body == b"the whole rest\r\n"


def test_datagram_trailing_octets_after_content_length_are_ignored() -> None:
    msg = req(options(body=b"abcJUNK JUNK", length="3"))
    assert msg.body == b"abc"


def test_datagram_content_length_larger_than_body_is_400_with_partial_request() -> None:
    with pytest.raises(PartialRequestError) as exc:
        parse_message(options(body=b"abc", length="10"))
    assert reason_of(exc) == (400, "Bad Request - Content-Length larger than the body")
    assert exc.value.request.call_id == "opt-1@192.0.2.10"


def test_response_content_length_too_large_raises() -> None:
    data = RESPONSE.replace(b"Content-Length: 0", b"Content-Length: 50")
    with pytest.raises(RemoteProtocolError) as exc:
        parse_message(data)
    assert not isinstance(exc.value, PartialRequestError)
    assert exc.value.reason == "Bad Request - Content-Length larger than the body"


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "0x10", ""])
def test_datagram_malformed_content_length_is_400(value: str) -> None:
    with pytest.raises(PartialRequestError) as exc:
        parse_message(options(body=b"x", length=value))
    assert reason_of(exc) == (400, "Bad Request - malformed Content-Length")


def test_datagram_conflicting_content_length_is_400() -> None:
    with pytest.raises(PartialRequestError) as exc:
        parse_message(options("Content-Length: 1", body=b"xy", length="2"))
    assert reason_of(exc) == (400, "Bad Request - conflicting Content-Length values")


def test_stream_requires_content_length() -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        parse_message(options(), stream=True)
    assert exc.value.reason == "Bad Request - Content-Length required on a stream"


def test_no_end_of_headers() -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        parse_message(b"OPTIONS sip:u@example.com SIP/2.0\r\nVia: x\r\n")
    assert reason_of(exc) == (400, "Bad Request - no end of headers")


# ------------------------------------------------------------ faults by name
@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (
            options(length="0").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1),
            505,
            "Version Not Supported",
        ),
        (options("Call-ID: second@x", length="0"), 400, "Bad Request - more than one Call-ID"),
        (
            options(length="0").replace(
                b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-opt\r\n", b""
            ),
            400,
            "Bad Request - missing Via",
        ),
        (
            options(length="0").replace(b"Call-ID: opt-1@192.0.2.10\r\n", b""),
            400,
            "Bad Request - missing Call-ID",
        ),
        (
            options(length="0").replace(b"CSeq: 1 OPTIONS", b"CSeq: 2147483648 OPTIONS"),
            400,
            "Bad Request - CSeq number out of range",
        ),
        (
            options(length="0").replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS"),
            400,
            "Bad Request - malformed CSeq",
        ),
        (options("Max-Forwards: 256", length="0"), 400, "Bad Request - Max-Forwards out of range"),
        (
            options("Date: Sat, 13 Nov 2010 23:29:00 PST", length="0"),
            400,
            "Bad Request - Date not in GMT",
        ),
        (
            options(length="0").replace(b"branch=z9hG4bK-opt", b"branch=z9hG4bK"),
            400,
            "Bad Request - Via branch is only the magic cookie",
        ),
    ],
)
def test_request_faults_are_partial_requests_with_named_reason(
    data: bytes, status: int, reason: str
) -> None:
    with pytest.raises(PartialRequestError) as exc:
        parse_message(data)
    assert reason_of(exc) == (status, reason)
    assert exc.value.request.method == "OPTIONS"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"OPTIONS  sip:user@example.com SIP/2.0", "Bad Request - malformed Request-Line"),
        (b"OPTIONS sip:user@example.com SIP/2.0 ", "Bad Request - malformed Request-Line"),
        (b"OPTIONS <sip:user@example.com> SIP/2.0", "Bad Request - Request-URI in <>"),
        (
            b"OPTIONS sip:user@example.com?Route=%3Csip:x%3E SIP/2.0",
            "Bad Request - Request-URI carries headers",
        ),
    ],
)
def test_request_line_faults_still_allow_an_answer(line: bytes, reason: str) -> None:
    """RFC 4475 §3.1.2.7-§3.1.2.11: a 400 is the expected answer, so the headers needed
    to build it (Via, From, To, Call-ID, CSeq) must come back with the error."""
    data = line + options(length="0")[len(b"OPTIONS sip:user@example.com SIP/2.0") :]
    with pytest.raises(PartialRequestError) as exc:
        parse_message(data)
    assert reason_of(exc) == (400, reason)
    assert exc.value.request.call_id == "opt-1@192.0.2.10"


@pytest.mark.parametrize("code", [b"099", b"700", b"1000", b"20", b"2x0"])
def test_response_status_code_out_of_range(code: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        parse_message(RESPONSE.replace(b"180", code, 1))
    assert exc.value.reason == "Bad Response - status code out of range"


def test_from_and_to_are_parsed_on_first_use() -> None:
    msg = req(options(length="0").replace(b"From: <sip:a", b'From: "unterminated <sip:a'))
    with pytest.raises(RemoteProtocolError) as exc:
        _ = msg.from_
    assert reason_of(exc) == (400, "Bad Request - unterminated quoted display name in From")
    assert msg.to is not None and msg.to.uri.user == "user"


def test_response_empty_reason_phrase() -> None:
    msg = parse_message(RESPONSE.replace(b"180 Ringing Now", b"183 ", 1))
    assert isinstance(msg, Response) and (msg.status, msg.reason) == (183, "")


# -------------------------------------------------------------- make_response
def test_make_response_copies_dialog_headers_and_adds_to_tag() -> None:
    request = req(INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nTimestamp: 54\r\n"))
    resp = make_response(request, 180, to_tag="uas-tag")
    data = resp.to_bytes()
    assert data.startswith(b"SIP/2.0 180 Ringing\r\n")
    back = parse_message(data)
    assert isinstance(back, Response)
    assert [str(v) for v in back.vias] == [str(v) for v in request.vias]
    assert back.headers.get("from") == request.headers.get("from")
    assert back.headers.get("to") == '"Bob" <sip:bob@biloxi.example.com>;tag=uas-tag'
    assert (back.call_id, back.cseq, back.cseq_method) == (request.call_id, 314159, "INVITE")
    assert "timestamp" not in back.headers  # only 100 Trying echoes Timestamp (§8.2.6.1)
    trying = make_response(request, 100)
    assert trying.headers.get("timestamp") == "54" and trying.to_tag is None
    assert make_response(request, 486).reason == "Busy Here"
    assert make_response(request, 299).reason == "Unknown"


def test_make_response_keeps_existing_to_tag_and_sets_body() -> None:
    request = req(
        INVITE.replace(
            b'To: "Bob" <sip:bob@biloxi.example.com>', b"To: <sip:bob@b.example.com>;tag=old"
        )
    )
    resp = make_response(
        request, 200, "Fine", to_tag="new", body=b"v=0\r\n", content_type="application/sdp"
    )
    data = resp.to_bytes()
    assert data.startswith(b"SIP/2.0 200 Fine\r\n")
    assert b"\r\nTo: <sip:bob@b.example.com>;tag=old\r\n" in data
    assert data.endswith(b"Content-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n")


# --------------------------------------------------------- StreamFramer (TCP)
def framed(body: bytes = b"hello", *, call: str = "s1") -> bytes:
    return options(body=body, length=str(len(body))).replace(b"opt-1@", f"{call}@".encode())


def test_framer_byte_by_byte() -> None:
    data = framed()
    f = StreamFramer()
    out: list[bytes] = []
    for i in range(len(data)):
        got = f.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert got == []
        out += got
    assert out == [data]
    assert req(out[0], stream=True).body == b"hello"


def test_framer_two_messages_in_one_feed_and_a_split_third() -> None:
    a, b, c = framed(b"one", call="a"), framed(b"", call="b"), framed(b"three\r\n\r\n3", call="c")
    f = StreamFramer()
    assert f.feed(a + b + c[:20]) == [a, b]
    assert f.feed(c[20:-1]) == []
    assert f.feed(c[-1:]) == [c]
    assert req(c, stream=True).body == b"three\r\n\r\n3"


def test_framer_skips_keepalive_crlfs() -> None:
    a, b = framed(call="a"), framed(call="b")
    f = StreamFramer()
    assert f.feed(b"\r\n\r\n") == []
    assert f.feed(b"\r\n" + a + b"\r\n\r\n") == [a]
    assert f.feed(b"\r\n\r\n\r\n" + b) == [b]


def test_framer_compact_content_length() -> None:
    data = framed(b"xyz").replace(b"Content-Length: 3", b"l: 3")
    assert StreamFramer().feed(data + b"NEXT") == [data]


def test_framer_duplicate_equal_content_length_is_fine() -> None:
    data = options("Content-Length: 2", body=b"ab", length="2")
    assert StreamFramer().feed(data) == [data]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (options(body=b""), "Bad Request - Content-Length required on a stream"),
        (
            options("Content-Length: 3", body=b"abcd", length="4"),
            "Bad Request - conflicting Content-Length values",
        ),
        (options(body=b"", length="-5"), "Bad Request - malformed Content-Length"),
        (options(body=b"", length="5x"), "Bad Request - malformed Content-Length"),
        (options(body=b"", length=str(MAX_MESSAGE)), "Bad Request - message too large"),
    ],
)
def test_framer_errors_are_fatal(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        StreamFramer().feed(data)
    assert exc.value.reason == reason


def test_framer_oversize_header_section() -> None:
    f = StreamFramer()
    assert f.feed(b"OPTIONS sip:u@example.com SIP/2.0\r\n") == []
    with pytest.raises(RemoteProtocolError) as exc:
        f.feed(b"X-Pad: " + b"a" * MAX_MESSAGE)
    assert exc.value.reason == "Bad Request - header section too large"


# ------------------------------------------------------------------- fuzzing
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_SEEDS = [INVITE, RESPONSE, options(body=b"abc", length="3")]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid message with a few random edits: flips, cuts, inserted octets."""
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(
                st.binary(max_size=8)
                | st.sampled_from(
                    [b"\r\n", b" ", b";", b",", b"<", b'"', b"%", b":", b"\x00", b"\r\n\r\n"]
                )
            )
        elif pos < len(data):
            del data[pos : pos + draw(st.integers(1, 20))]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=400) | mutated())
def test_fuzz_parse_message_only_raises_remote_protocol_error(data: bytes) -> None:
    for stream in (False, True):
        try:
            msg = parse_message(data, stream=stream)
        except RemoteProtocolError:
            continue
        # whatever was accepted serializes into something that parses the same way
        again = parse_message(msg.to_bytes())
        assert (again.call_id, again.cseq, again.cseq_method) == (
            msg.call_id,
            msg.cseq,
            msg.cseq_method,
        )
        assert again.body == msg.body


def check_sent(kit: SimpleNamespace, sent: list) -> None:
    """What the UA sends is SIP: an error answer to a broken request may echo broken
    headers (RFC 4475 §3.3.1 wants a 400 even without Call-ID), anything else parses."""
    for s in sent:
        assert re.match(rb"(SIP/2\.0 [1-6]\d\d |[A-Z]+ sip:)", s.data), s.data[:60]
        if not s.data.startswith((b"SIP/2.0 4", b"SIP/2.0 5")):
            kit.parse(s.data)


@FUZZ
@given(data=st.binary(max_size=400) | mutated(), transport=st.sampled_from(["UDP", "TCP"]))
def test_fuzz_useragent_receive_never_raises(
    kit: SimpleNamespace, data: bytes, transport: str
) -> None:
    h = kit.Harness()
    h.receive(data, transport=transport)
    check_sent(kit, h.sent)


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.sampled_from(["invite", "bye", "cancel", "ack"]).flatmap(
        lambda m: st.tuples(st.just(m), st.data())
    )
)
def test_fuzz_useragent_mutated_dialog_requests(
    kit: SimpleNamespace, case: tuple[str, st.DataObject]
) -> None:
    method, data = case
    h = kit.Harness()
    ok = h.receive(kit.build_invite())[-1]
    tag = ok.msg.to_tag
    seeds = {
        "invite": kit.build_invite(branch="z9hG4bK-other", cseq=3, to_tag=tag),
        "bye": kit.build_bye(to_tag=tag),
        "cancel": kit.build_cancel(),
        "ack": kit.build_ack(to_tag=tag),
    }
    raw = bytearray(seeds[method])
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    h.receive(bytes(raw))
    h.advance(40)
    check_sent(kit, h.sent)
