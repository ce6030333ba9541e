"""RFC 4475 torture tests: every message of the corpus, parsed directly and fed to the
user agent as one UDP datagram, answered as the manifest's ``rfc_says`` requires."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from callengine.sip.auth import DigestServer
from callengine.sip.errors import RemoteProtocolError
from callengine.sip.headers import parse_name_addr
from callengine.sip.message import PartialRequestError, Request, Response, parse_message
from callengine.sip.registrar import MemoryBindingStore, Registrar, UserRecord
from callengine.sip.useragent import ALLOWED

# ../shared beside the checkout (as CI lays it out), else the workplace's copy.
CORPUS = next(
    p
    for p in (
        Path(__file__).resolve().parents[3] / "shared/conformance/rfc4475",
        Path("/work/shared/conformance/rfc4475"),
    )
    if p.is_dir()
)
MANIFEST: list[dict[str, object]] = json.loads((CORPUS / "manifest.json").read_text())
FILES = [str(m["file"]) for m in MANIFEST]
SOURCE = ("192.0.2.99", 5060)
# §18.2.2: over UDP without rport the response goes to received + the Via's sent-by port
DEST = {"quotbal.dat": ("192.0.2.99", 5050)}
T0 = 1_700_000_000.0  # the registrar works on wall-clock seconds
ALLOW = ", ".join(ALLOWED)


def raw(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


@dataclass(frozen=True)
class Expect:
    """What the UA must send back for one corpus message.

    ``statuses`` lists every response, in order (empty: dropped); ``reason`` is the exact
    reason phrase of the last one, or with ``in_reason`` a word it must contain."""

    statuses: tuple[int, ...]
    reason: str | None = None
    in_reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    dropped: str | None = None  # the counter a dropped message increments
    auth: bool = False  # a registrar with Digest authentication answers REGISTER


def bad(word: str) -> Expect:
    return Expect((400,), in_reason=word)


OK_CALL = (100, 180, 200)

EXPECT: dict[str, Expect] = {
    # 3.1.1 valid messages
    "wsinv.dat": Expect((481,), "Call/Transaction Does Not Exist"),  # To tag, no such dialog
    "intmeth.dat": Expect((501,), "Not Implemented", headers=(("Allow", ALLOW),)),
    "esc01.dat": Expect(OK_CALL, "OK"),
    "escnull.dat": Expect((200,), "OK"),
    "esc02.dat": Expect((501,), "Not Implemented", headers=(("Allow", ALLOW),)),
    "lwsdisp.dat": Expect((200,), "OK", headers=(("Allow", ALLOW),)),
    "longreq.dat": Expect(OK_CALL, "OK"),
    "dblreq.dat": Expect((200,), "OK"),
    "semiuri.dat": Expect((200,), "OK"),
    "transports.dat": Expect((200,), "OK"),
    "mpart01.dat": Expect((405,), "Method Not Allowed", headers=(("Allow", ALLOW),)),
    "unreason.dat": Expect((), dropped="dropped_responses"),
    "noreason.dat": Expect((), dropped="dropped_responses"),
    # 3.1.2 invalid messages
    "badinv01.dat": bad("Via"),
    "clerr.dat": bad("Content-Length"),
    "ncl.dat": bad("Content-Length"),
    "scalar02.dat": bad("CSeq"),
    "scalarlg.dat": Expect((), dropped="parse_errors"),
    "quotbal.dat": bad("quote"),
    "ltgtruri.dat": bad("Request-URI"),
    "lwsruri.dat": bad("Request-"),
    "lwsstart.dat": bad("Request-Line"),
    "trws.dat": bad("Request-Line"),
    "escruri.dat": bad("Request-URI"),
    "baddate.dat": bad("Date"),
    "regbadct.dat": bad("Contact"),
    "badaspec.dat": bad("To"),
    "baddn.dat": bad("display name"),
    "badvers.dat": Expect((505,), "Version Not Supported"),
    "mismatch01.dat": bad("CSeq"),
    "mismatch02.dat": Expect((501,), "Not Implemented", headers=(("Allow", ALLOW),)),
    "bigcode.dat": Expect((), dropped="parse_errors"),
    # 3.2 transaction layer
    "badbranch.dat": bad("branch"),
    # 3.3 application layer
    "insuf.dat": bad("missing"),
    "unkscm.dat": Expect((416,), "Unsupported URI Scheme"),
    "novelsc.dat": Expect((416,), "Unsupported URI Scheme"),
    "unksm2.dat": Expect((400,), "Bad Request - To is not a SIP URI"),
    "bext01.dat": Expect(
        (420,),
        "Bad Extension",
        headers=(("Unsupported", "nothingSupportsThis, nothingSupportsThisEither"),),
    ),
    "invut.dat": Expect((415,), "Unsupported Media Type"),
    "regaut01.dat": Expect((401,), "Unauthorized", auth=True),
    "multi01.dat": bad("more than one"),
    "mcl01.dat": bad("Content-Length"),
    "bcast.dat": Expect((), dropped="dropped_responses"),
    "zeromf.dat": Expect((200,), "OK"),
    "cparam01.dat": Expect((200,), "OK"),
    "cparam02.dat": Expect((200,), "OK"),
    "regescrt.dat": Expect((200,), "OK"),
    "sdp01.dat": Expect((406,), "Not Acceptable"),
    # 3.4 backward compatibility
    "inv2543.dat": Expect(OK_CALL, "OK"),
}

# Messages parse_message itself must refuse (the rest parse; some fail later, lazily).
PARSE_FAILS = {
    "badinv01.dat": 400,
    "clerr.dat": 400,
    "ncl.dat": 400,
    "scalar02.dat": 400,
    "scalarlg.dat": 400,
    "ltgtruri.dat": 400,
    "lwsruri.dat": 400,
    "lwsstart.dat": 400,
    "trws.dat": 400,
    "escruri.dat": 400,
    "baddate.dat": 400,
    "badvers.dat": 505,
    "bigcode.dat": 400,
    "badbranch.dat": 400,
    "insuf.dat": 400,
    "multi01.dat": 400,
    "mcl01.dat": 400,
}


def make_registrar(*, auth: bool) -> Registrar:
    return Registrar(
        lookup_user=lambda domain, user: UserRecord(password="pw", tenant="t1"),
        store=MemoryBindingStore(),
        auth=DigestServer("example.com", b"rfc4475 secret") if auth else None,
    )


def feed(kit: SimpleNamespace, name: str, *, auth: bool = False) -> tuple[SimpleNamespace, list]:
    registrar = make_registrar(auth=auth)
    app = kit.RecordingApp(incoming="ring_answer", register=registrar.handle)
    h = kit.Harness(app)
    h.now = T0
    sent = h.receive(raw(name), source=SOURCE)
    return h, sent


# ---------------------------------------------------------------- the corpus
def test_manifest_is_complete_and_matches_the_files() -> None:
    assert len(MANIFEST) == 49
    assert set(EXPECT) == set(FILES)
    for m in MANIFEST:
        data = raw(str(m["file"]))
        assert len(data) == m["bytes"], m["file"]
        assert hashlib.sha256(data).hexdigest() == m["sha256"], m["file"]


# ------------------------------------------------------ through the user agent
@pytest.mark.parametrize("name", FILES)
def test_useragent_answers_per_rfc(kit: SimpleNamespace, name: str) -> None:
    meta = next(m for m in MANIFEST if m["file"] == name)
    exp = EXPECT[name]
    h, sent = feed(kit, name, auth=exp.auth)  # must not raise
    counters = h.ua.counters
    if not exp.statuses:
        assert sent == [], f"{name}: {meta['rfc_says']}"
        assert getattr(counters, exp.dropped or "") == 1
        return
    assert [s.start_line.split(" ", 2)[1] for s in sent] == [str(c) for c in exp.statuses], (
        f"{name}: {meta['rfc_says']} -- sent {[s.start_line for s in sent]}"
    )
    assert all(s.is_response for s in sent)
    assert [(s.dest, s.transport) for s in sent] == [(DEST.get(name, SOURCE), "UDP")] * len(sent)
    last = sent[-1]
    reason = last.start_line.split(" ", 2)[2]
    if exp.reason is not None:
        assert reason == exp.reason
    if exp.in_reason is not None:
        assert reason.startswith("Bad Request - ") and exp.in_reason in reason, reason
    text = last.data.decode("utf-8", "surrogateescape")
    for header, value in exp.headers:
        assert f"\r\n{header}: {value}\r\n" in text, f"{header}: {value} missing in\n{text}"
    if exp.statuses[-1] >= 400:
        assert "incoming_call" not in h.app.names()


ERROR_ANSWERS = [n for n in FILES if EXPECT[n].statuses and EXPECT[n].statuses[-1] >= 400]


@pytest.mark.parametrize("name", ERROR_ANSWERS)
def test_error_responses_carry_a_to_tag(kit: SimpleNamespace, name: str) -> None:
    """RFC 3261 §8.2.6.2: the UAS MUST add a tag to the To of a final response (unless
    the request already had one), also to a 400 for a request that was broken elsewhere."""
    _, sent = feed(kit, name, auth=EXPECT[name].auth)
    assert sent, "no answer at all"
    data = sent[-1].data
    if b"\r\nTo: " not in data:
        assert name == "insuf.dat"  # the request had no To
        return
    to_text = data.split(b"\r\nTo: ", 1)[1].split(b"\r\n", 1)[0].decode("utf-8", "surrogateescape")
    try:
        to = parse_name_addr(to_text, where="To")
    except RemoteProtocolError:
        return  # the peer's To is unreadable (quotbal, baddn, badaspec): nothing to tag
    assert to.tag, f"no To tag in {to_text!r}"


def test_wsinv_unknown_header_is_not_echoed(kit: SimpleNamespace) -> None:
    _, sent = feed(kit, "wsinv.dat")
    assert b"UnknownHeaderWithUnusualValue" not in sent[0].data
    assert b"\r\nCall-ID: wsinv.ndaksdj@192.0.2.1\r\n" in sent[0].data


def test_esc01_invite_reaches_the_app_with_unescaped_uris(kit: SimpleNamespace) -> None:
    h, sent = feed(kit, "esc01.dat")
    [event] = h.app.of("incoming_call")
    invite = event.session.invite
    assert invite.uri.user_unescaped == "sips:user@example.com"
    assert invite.to.uri.user_unescaped == "user"
    assert invite.from_.uri.user_unescaped == "I have spaces"
    ok = sent[-1].msg
    assert (
        isinstance(ok, Response)
        and ok.to_tag
        and ok.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    )


def test_escnull_registers_two_distinct_contacts(kit: SimpleNamespace) -> None:
    _, sent = feed(kit, "escnull.dat")
    ok = sent[0].msg
    assert [c.uri.user for c in ok.contacts] == ["%00", "%00%00"]


def test_dblreq_trailing_invite_is_ignored(kit: SimpleNamespace) -> None:
    h, sent = feed(kit, "dblreq.dat")
    assert len(sent) == 1
    assert sent[0].msg.cseq_method == "REGISTER"
    assert h.app.names() == ["register"]
    assert h.ua.counters.requests_in == {"REGISTER": 1}
    assert [c.uri.raw for c in sent[0].msg.contacts] == ["sip:j.user@host.example.com"]


def test_cparam01_unknownparam_is_a_contact_param(kit: SimpleNamespace) -> None:
    _, sent = feed(kit, "cparam01.dat")
    [contact] = sent[0].msg.contacts
    assert "unknownparam" not in contact.uri.params
    assert str(contact.uri) == "sip:+19725552222@gw1.example.net"


def test_cparam02_unknownparam_stays_a_uri_param(kit: SimpleNamespace) -> None:
    _, sent = feed(kit, "cparam02.dat")
    [contact] = sent[0].msg.contacts
    assert contact.uri.params == {"unknownparam": None}


def test_regescrt_binding_keeps_the_escaped_route(kit: SimpleNamespace) -> None:
    _, sent = feed(kit, "regescrt.dat")
    [contact] = sent[0].msg.contacts
    assert contact.uri.headers == "Route=%3Csip:sip.example.com%3E"


def test_regaut01_without_auth_registers(kit: SimpleNamespace) -> None:
    _, sent = feed(kit, "regaut01.dat", auth=False)
    assert [s.status for s in sent] == [200]


def test_regaut01_challenge_is_digest(kit: SimpleNamespace) -> None:
    _, sent = feed(kit, "regaut01.dat", auth=True)
    challenge = sent[0].msg.headers.get("www-authenticate")
    assert challenge is not None and challenge.startswith('Digest realm="example.com", nonce="')


def test_sdp01_406_carries_a_warning(kit: SimpleNamespace) -> None:
    _, sent = feed(kit, "sdp01.dat")
    assert (sent[0].msg.headers.get("warning") or "").startswith("304 ")


def test_invut_415_lists_accept(kit: SimpleNamespace) -> None:
    _, sent = feed(kit, "invut.dat")
    accept = sent[0].msg.headers.get_list("accept")
    assert "application/sdp" in accept


def test_inv2543_is_answered_and_matched_rfc2543_style(kit: SimpleNamespace) -> None:
    h, sent = feed(kit, "inv2543.dat")
    assert h.app.names() == ["incoming_call"]
    ok = sent[-1].msg
    assert ok.to_tag and ok.headers.get("via").startswith(
        "SIP/2.0/UDP iftgw.example.com;received=192.0.2.99"
    )
    # the same datagram again is a retransmission: the 200 again, no new call
    again = h.receive(raw("inv2543.dat"), source=SOURCE)
    assert [s.status for s in again] == [200]
    assert h.app.names() == ["incoming_call"]


def test_bext01_does_not_list_proxy_require_tags(kit: SimpleNamespace) -> None:
    _, sent = feed(kit, "bext01.dat")
    assert b"noProxiesSupportThis" not in sent[0].data


# --------------------------------------------------------- parsed directly
@pytest.mark.parametrize("name", FILES)
def test_parse_message_directly(name: str) -> None:
    data = raw(name)
    if name in PARSE_FAILS:
        with pytest.raises(RemoteProtocolError) as exc:
            parse_message(data)
        assert exc.value.status == PARSE_FAILS[name]
        meta = next(m for m in MANIFEST if m["file"] == name)
        if meta["kind"] == "request":
            assert isinstance(exc.value, PartialRequestError), (
                "a request error must allow an answer"
            )
        return
    msg = parse_message(data)
    assert isinstance(
        msg, Request if name not in ("unreason.dat", "noreason.dat", "bcast.dat") else Response
    )
    length = msg.headers.get("content-length")
    if length is not None and name != "dblreq.dat":
        assert len(msg.body) == int(length)


def req(name: str) -> Request:
    msg = parse_message(raw(name))
    assert isinstance(msg, Request)
    return msg


def test_wsinv_fields() -> None:
    msg = req("wsinv.dat")
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (msg.cseq, msg.cseq_method) == (9, "INVITE")
    assert msg.from_tag == "98asjd8" and msg.to_tag == "1918181833n"
    assert msg.from_ is not None and msg.from_.display == 'J Rosenberg \\"'
    assert len(msg.vias) == 3
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.max_forwards == 68
    assert len(msg.body) == 150 and msg.body.startswith(b"v=0\r\n")
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert msg.headers.get("subject") == ""
    [contact] = msg.contacts
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert msg.uri.params == {"unknownparam": None}


def test_intmeth_fields() -> None:
    msg = req("intmeth.dat")
    assert msg.method == msg.cseq_method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.max_forwards == 255 and msg.cseq == 139122385
    assert msg.uri.host == "example.com"
    assert msg.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"


def test_esc01_fields() -> None:
    msg = req("esc01.dat")
    assert msg.uri.user == "sips%3Auser%40example.com" and msg.uri.host == "example.net"
    assert msg.uri.user_unescaped == "sips:user@example.com"
    assert msg.to is not None and msg.to.uri.user_unescaped == "user"
    assert msg.from_ is not None and msg.from_.uri.user_unescaped == "I have spaces"
    assert msg.contacts[0].uri.user_unescaped == "caller"
    assert msg.call_id == "esc01.239409asdfakjkn23onasd0-3234"


def test_escnull_fields() -> None:
    msg = req("escnull.dat")
    assert msg.to is not None and msg.to.uri.user_unescaped == "null-\x00-null"
    assert [c.uri.user_unescaped for c in msg.contacts] == ["\x00", "\x00\x00"]


def test_esc02_fields() -> None:
    msg = req("esc02.dat")
    assert msg.method == "RE%47IST%45R" and msg.method != "REGISTER"
    assert msg.from_ is not None and msg.from_.display == "%Z%45"
    # "C%6Fntact" is an unknown header, not a third Contact
    assert [c.uri.host for c in msg.contacts] == ["host1.example.com", "host3.example.com"]
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_fields() -> None:
    msg = req("lwsdisp.dat")
    assert msg.from_ is not None and msg.from_.display == "caller" and msg.from_tag == "323"


def test_longreq_fields() -> None:
    msg = req("longreq.dat")
    assert msg.call_id.startswith("longreq.onereally") and msg.cseq == 3882340
    assert len(msg.vias) >= 30
    assert msg.to is not None and msg.to.uri.port == 6000


def test_dblreq_fields() -> None:
    msg = req("dblreq.dat")
    assert msg.method == "REGISTER" and msg.body == b""
    assert msg.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def test_semiuri_fields() -> None:
    msg = req("semiuri.dat")
    assert msg.uri.user == "user;par=u%40example.net"
    assert msg.uri.user_unescaped == "user;par=u@example.net"
    assert msg.uri.host == "example.com" and msg.uri.params == {}


def test_transports_fields() -> None:
    msg = req("transports.dat")
    assert [v.transport for v in msg.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert msg.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_body_framing() -> None:
    data = raw("mpart01.dat")
    msg = req("mpart01.dat")
    assert len(msg.body) == 553
    assert msg.body == data[-553:]
    assert b"\x00" in msg.body and msg.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert msg.content_type == "multipart/mixed"


def test_unreason_and_noreason_fields() -> None:
    msg = parse_message(raw("unreason.dat"))
    assert isinstance(msg, Response)
    assert msg.status == 200 and msg.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    msg = parse_message(raw("noreason.dat"))
    assert isinstance(msg, Response) and (msg.status, msg.reason) == (100, "")


@pytest.mark.parametrize(
    ("name", "attr", "reason"),
    [
        ("quotbal.dat", "to", "Bad Request - unterminated quoted display name in To"),
        ("badaspec.dat", "to", "Bad Request - no scheme in To"),
        ("baddn.dat", "from_", "Bad Request - unquoted display name in From"),
    ],
)
def test_from_to_faults_fail_lazily(name: str, attr: str, reason: str) -> None:
    """From/To are parsed on first use; the UA validates them for new requests."""
    msg = req(name)
    with pytest.raises(RemoteProtocolError) as exc:
        getattr(msg, attr)
    assert exc.value.reason == reason


def test_regbadct_fails_lazily_on_contact() -> None:
    msg = req("regbadct.dat")
    with pytest.raises(RemoteProtocolError) as exc:
        _ = msg.contacts
    assert exc.value.reason == "Bad Request - URI with headers must be in <> in Contact"


def test_application_level_fields() -> None:
    assert req("unkscm.dat").uri.scheme == "nobodyknowsthisscheme"
    assert req("novelsc.dat").uri.scheme == "soap.beep"
    unksm2 = req("unksm2.dat")
    assert unksm2.to is not None and unksm2.to.uri.scheme == "isbn"
    assert req("bext01.dat").headers.get_list("require") == [
        "nothingSupportsThis",
        "nothingSupportsThisEither",
    ]
    assert req("zeromf.dat").max_forwards == 0
    assert req("cparam01.dat").contacts[0].params == {"unknownparam": None}
    assert req("cparam02.dat").contacts[0].uri.params == {"unknownparam": None}
    bcast = parse_message(raw("bcast.dat"))
    assert bcast.vias[1].host == "255.255.255.255"
    assert req("mismatch01.dat").cseq_method == "INVITE"


def test_inv2543_fields() -> None:
    msg = req("inv2543.dat")
    assert msg.branch == "" and msg.from_tag is None and msg.max_forwards is None
    assert msg.body.startswith(b"v=0\r\n") and msg.body.endswith(b"RTP/AVP 0\r\n")
    assert msg.cseq == 56


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("badinv01.dat", "Bad Request - empty or bad parameter in Via"),
        ("clerr.dat", "Bad Request - Content-Length larger than the body"),
        ("ncl.dat", "Bad Request - malformed Content-Length"),
        ("scalar02.dat", "Bad Request - CSeq number out of range"),
        ("badvers.dat", "Version Not Supported"),
        ("badbranch.dat", "Bad Request - Via branch is only the magic cookie"),
        ("insuf.dat", "Bad Request - missing Call-ID, From, To"),
        ("mcl01.dat", "Bad Request - conflicting Content-Length values"),
        ("baddate.dat", "Bad Request - Date not in GMT"),
    ],
)
def test_parse_errors_name_the_fault(name: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        parse_message(raw(name))
    assert exc.value.reason == reason
