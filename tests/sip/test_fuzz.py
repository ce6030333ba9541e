"""Hostile input and the sans-IO core (issue 11): a seeded run of the mutation fuzzer
(benchmarks/fuzz_sip.py) must find no escape, and each class of escape it found has a
regression test here: the right 4xx before any dialog exists, or a counted drop."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from benchmarks import fuzz_sip
from callengine.sip.errors import RemoteProtocolError
from callengine.sip.message import PartialRequestError, StreamFramer, parse_message
from callengine.sip.useragent import InviteSession

FUZZ_COUNT = 30_000


def test_seeded_fuzz_run_has_no_escape() -> None:
    report = fuzz_sip.run(FUZZ_COUNT, seed=20261130)
    assert report.count == FUZZ_COUNT
    assert report.escapes == {}, report.to_dict()["examples"]
    # the run reached every layer: parse errors answered and dropped, calls answered,
    # SDP refused, REGISTER challenged, in-dialog requests and responses handled
    for outcome in (
        "response 400",
        "response 200",
        "response 488",
        "response 401",
        "response 481",
        "dropped parse_errors",
        "dropped dropped_responses",
        "requests sent",
    ):
        assert report.outcomes[outcome] > 0, (outcome, report.outcomes)


def test_fuzzer_detects_an_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle can fail: a core that drops a request unanswered is an escape, and
    the example is minimized to the lines that matter."""
    from callengine.sip.useragent import UserAgent

    def silent(self: UserAgent, *args: object, **kw: object) -> None:
        return None

    monkeypatch.setattr(UserAgent, "_reply", silent)
    seed = next(s for s in fuzz_sip.seeds() if s.name == "options")
    result = fuzz_sip.run_case(seed, seed.data)
    assert result.escape == "no response to a request"
    small = fuzz_sip.minimize(seed, seed.data, result.escape)
    assert len(small) < len(seed.data) // 2
    assert fuzz_sip.run_case(seed, small).escape == result.escape
    assert b"\nVia:" in small and b"\nCSeq:" in small and b"\nCall-ID:" in small


# ----------------------------------------------------------------- regressions
def options(**kw: object) -> bytes:
    return fuzz_sip._request("OPTIONS", **kw).encode()  # type: ignore[arg-type]


def with_header(data: bytes, name: str, value: str) -> bytes:
    """``data`` with every ``name`` header replaced by one line ``name: value``."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = [
        ln for ln in head.split(b"\r\n") if not ln.lower().startswith(name.lower().encode() + b":")
    ]
    lines.insert(1, f"{name}: {value}".encode("utf-8", "surrogateescape"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def reason(sent: SimpleNamespace) -> str:
    return sent.start_line.split(" ", 2)[2]


@pytest.mark.parametrize(
    ("branch", "from_"),
    [
        ("z9hG4bK-jtag", "<sip:a@127.0.0.1>Jtag=1"),
        ("rfc2543-branch", "<sip:a@127.0.0.1>Jtag=1"),  # RFC 2543 matching reads the From tag
        ("1234", '"unterminated <sip:a@127.0.0.1>;tag=1'),
        ("1234", "<sip:a@127.0.0.1>;tag=1;;x"),
    ],
)
def test_malformed_from_gets_400_naming_from(kit: SimpleNamespace, branch: str, from_: str) -> None:
    h = kit.Harness()
    sent = h.receive(with_header(options(branch=branch), "From", from_))
    [resp] = sent
    assert resp.status == 400 and "From" in reason(resp), resp.start_line
    assert f";branch={branch}".encode() in resp.data
    assert h.ua.counters.internal_errors == 0 and h.ua.counters.parse_errors == 1


@pytest.mark.parametrize(
    ("header", "value", "named"),
    [
        ("Record-Route", "<sip:proxy;lr", "Record-Route"),
        ("Record-Route", "<sip:a@127.0.0.1>Jtag=1", "Record-Route"),
        ("Record-Route", "sip:p1, <sip:", "Record-Route"),
        ("Record-Route", "<tel:>", "Record-Route"),
        ("Contact", "<sip:a@[::1>", "Contact"),
        ("To", "<sip:100@example.com>;;tag", "To"),
    ],
)
def test_invite_fault_gets_400_before_any_call(
    kit: SimpleNamespace, header: str, value: str, named: str
) -> None:
    """What the 200 would copy or the dialog would keep is checked on arrival: the
    probe's 221 answers of 500 with tracebacks came from these, failing at answer time."""
    h = kit.Harness()
    sent = h.receive(with_header(kit.build_invite(), header, value))
    assert [s.status for s in sent] == [400], [s.start_line for s in sent]
    assert named in reason(sent[0])
    assert h.app.names() == [] and not h.ua.sessions and not h.ua.dialogs


def test_in_dialog_request_with_bad_from_is_400_not_an_exception(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    ok = h.receive(kit.build_invite())[-1]
    to_tag = ok.msg.to_tag
    h.receive(kit.build_ack(to_tag=to_tag))
    bye = with_header(kit.build_bye(to_tag=to_tag, branch="rfc2543"), "From", "<sip:x>Jtag=1")
    [resp] = h.receive(bye)
    assert resp.status == 400 and "From" in reason(resp)
    assert h.ua.counters.internal_errors == 0
    # the call is still up: a good BYE ends it
    assert [s.status for s in h.receive(kit.build_bye(to_tag=to_tag))] == [200]


def test_ack_with_bad_from_is_dropped_and_counted(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    ack = with_header(kit.build_ack(to_tag="x", branch="2543"), "From", "<sip:x>Jtag=1")
    assert h.receive(ack) == []
    assert h.ua.counters.parse_errors == 1 and h.ua.counters.internal_errors == 0


@pytest.mark.parametrize(
    ("header", "value", "fault"),
    [
        ("CSeq", "\u00b2 OPTIONS", "CSeq"),  # str.isdigit() is true, int() refuses it
        ("CSeq", "9" * 5000 + " OPTIONS", "CSeq"),  # over int()'s 4300-digit limit
        ("Max-Forwards", "9" * 5000, "Max-Forwards"),
        ("Max-Forwards", "\u00b2", "Max-Forwards"),
        ("Content-Length", "\u00b2", "Content-Length"),
        ("Content-Length", "9" * 5000, "Content-Length"),
        ("Via", "SIP/2.0/UDP 192.0.2.10:\u00b2;branch=z9hG4bK-1", "Via"),
        ("Via", "SIP/2.0/UDP 192.0.2.10:" + "9" * 5000 + ";branch=z9hG4bK-1", "Via"),
    ],
)
def test_numbers_that_int_refuses_get_400(
    kit: SimpleNamespace, header: str, value: str, fault: str
) -> None:
    h = kit.Harness()
    sent = h.receive(with_header(options(), header, value))
    assert [s.status for s in sent] == [400], [s.start_line for s in sent]
    assert fault in reason(sent[0])


@pytest.mark.parametrize(
    ("line", "fault"),
    [
        ("NoColonHere", "Bad Request - header line without colon"),
        ("Bad Name: x", "Bad Request - bad header name"),
    ],
)
def test_a_broken_header_line_is_answered(kit: SimpleNamespace, line: str, fault: str) -> None:
    data = options().replace(b"\r\nMax-Forwards", f"\r\n{line}\r\nMax-Forwards".encode())
    with pytest.raises(PartialRequestError) as exc:
        parse_message(data)
    assert exc.value.reason == fault
    [resp] = kit.Harness().receive(data)
    assert resp.status == 400 and reason(resp) == fault


def test_mixed_line_ends_split_at_every_lf() -> None:
    data = options().replace(b"\r\nCall-ID", b"\nCall-ID")
    msg = parse_message(data)
    assert msg.call_id == "fuzz-1@192.0.2.10" and msg.cseq_method == "OPTIONS"


@pytest.mark.parametrize("rport", ["99999", "\u00b2", "0", "9" * 5000])
def test_bad_rport_answers_the_source_port(kit: SimpleNamespace, rport: str) -> None:
    """RFC 3581: rport names the source port; a value that is no port is not used (a
    port out of range made the transport's sendto raise)."""
    h = kit.Harness()
    via = f"SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-rp;rport={rport}"
    [resp] = h.receive(with_header(options(), "Via", via), source=("192.0.2.10", 40000))
    assert resp.status == 200 and resp.dest == ("192.0.2.10", 40000)


@pytest.mark.parametrize(
    "via",
    [
        # a received= the peer wrote itself (its sent-by is its source address)
        "SIP/2.0/UDP 192.0.2.10:5060;received=a\x00b;branch=z9hG4bK-rc",
        'SIP/2.0/UDP 192.0.2.10:5060;received="x y";branch=z9hG4bK-rc',
        # a maddr that is no host
        "SIP/2.0/UDP 192.0.2.10:5060;maddr=a\x00b;branch=z9hG4bK-ma",
        'SIP/2.0/UDP 192.0.2.10:5060;maddr="a b";branch=z9hG4bK-ma',
    ],
)
def test_response_goes_to_an_address_sendto_accepts(kit: SimpleNamespace, via: str) -> None:
    h = kit.Harness()
    [resp] = h.receive(with_header(options(), "Via", via), source=("192.0.2.10", 5060))
    assert resp.status == 200 and resp.dest == ("192.0.2.10", 5060)
    if "received" in via:
        assert b";received=192.0.2.10;" in resp.data


@pytest.mark.parametrize("cause", ["\u00b2", "9" * 5000])
def test_bad_reason_cause_in_cancel_is_ignored(kit: SimpleNamespace, cause: str) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="ring"))
    h.receive(kit.build_invite())
    sent = h.receive(with_header(kit.build_cancel(), "Reason", f"Q.850;cause={cause}"))
    assert [s.status for s in sent] == [200, 487]
    assert h.app.of("call_ended")[0].cause == 487


def test_response_with_bad_record_route_is_dropped_and_counted(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, invite = h.place_call()
    ok = kit.build_response(invite, 200, body=kit.SDP_ANSWER, extra=["Record-Route: <sip:p;lr"])
    assert h.receive(ok, source=kit.CALLEE) == []
    assert h.ua.counters.parse_errors == 1 and h.ua.counters.internal_errors == 0
    assert h.app.names() == []
    # a good 2xx (the retransmission a real peer sends) still completes the call
    sent = h.receive(kit.build_response(invite, 200, body=kit.SDP_ANSWER), source=kit.CALLEE)
    assert [s.method for s in sent] == ["ACK"] and h.app.names() == ["answered"]


def test_receive_never_raises_and_logs_one_line(
    kit: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    """The last guard: a bug above the parser is counted and logged, not raised into
    the event loop (where asyncio logs 'Unhandled exception' with a traceback)."""

    class Broken(kit.RecordingApp):  # type: ignore[misc,name-defined]
        def on_incoming_call(self, session: InviteSession, now: float) -> None:
            raise KeyError("bug")

    h = kit.Harness(Broken())
    with caplog.at_level(logging.INFO, logger="callengine.sip"):
        h.receive(kit.build_invite())
    assert h.ua.counters.internal_errors == 1
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "KeyError" in record.getMessage() and record.exc_info is None


@pytest.mark.parametrize("length", ["9" * 5000, "\u00b2", "1" * 10])
def test_stream_framer_refuses_a_content_length_it_cannot_read(length: str) -> None:
    """Over TCP a ValueError here went past the transport (it catches only
    RemoteProtocolError) into the event loop as 'Unhandled exception'."""
    data = options().replace(b"Content-Length: 0", f"Content-Length: {length}".encode())
    with pytest.raises(RemoteProtocolError) as exc:
        StreamFramer().feed(data)
    assert exc.value.reason == "Bad Request - malformed Content-Length"
