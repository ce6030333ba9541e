"""Mutation fuzzer for the sans-IO SIP core: what a node does with one hostile datagram.

Every case runs on a fresh :class:`UserAgent` with a fake clock and no socket, fed exactly
as ``Engine._deliver`` feeds it (``ua.receive(data, source, "UDP", local, now)``), up to
the point where the node answers: the application above the UA does what ``Call`` does
for an incoming INVITE (read caller, callee and headers, parse and negotiate the SDP
offer -> 400 / 488, open no media, 180 then 200 with the SDP answer, which builds the
Contact, Record-Route, To tag and dialog), and REGISTER goes to a :class:`Registrar` with
digest authentication as the node's does.

A case is a scenario (a prelude of valid messages, e.g. an INVITE answered and ACKed,
or an INVITE we sent) and one message mutated from a seed: the RFC 4475 torture
messages and typical INVITE / REGISTER / OPTIONS / BYE / CANCEL / ACK / responses with
SDP. Mutations: byte flips, insert / delete / duplicate lines and headers, header values
spliced between messages and from a list of hostile values (malformed From, bad
Record-Route, RFC 2543 branches, missing or repeated Call-ID / CSeq / Via, huge values,
bad Content-Length, bad SDP lines, escaped CR LF, NULs, non-UTF-8).

An *escape* is any of:

* an exception leaving the core (``receive`` or the answering application);
* a request that gets no response when it should (not ACK, a request line, Via, CSeq and
  Call-ID headers present, not a retransmission of a transaction that exists);
* a 500 caused by an internal exception (the application's handler failed).

    python -m benchmarks.fuzz_sip --count 1000000 --seed 1

prints outcome counts (responses by status, drops by counter, escapes) and, for each
kind of escape, a minimized example; exit status 1 when there was an escape.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callengine.sip import sdp as sdpmod
from callengine.sip.auth import DigestServer
from callengine.sip.errors import RemoteProtocolError
from callengine.sip.message import Request, Response, StreamFramer, parse_message
from callengine.sip.registrar import MemoryBindingStore, Registrar, UserRecord
from callengine.sip.useragent import InviteSession, UserAgent
from media.codecs import CODECS

Address = tuple[str, int]

PEER: Address = ("192.0.2.10", 5060)
LOCAL: Address = ("192.0.2.1", 5060)
CALLEE: Address = ("192.0.2.20", 5080)
CODEC_LIST = [CODECS["PCMU"], CODECS["PCMA"], CODECS["TELEPHONE-EVENT"]]

_CORPUS_DIRS = (
    Path(__file__).resolve().parents[2] / "shared/conformance/rfc4475",
    Path("/work/shared/conformance/rfc4475"),
)

SDP_OFFER = (
    "v=0\r\n"
    "o=peer 1000 1000 IN IP4 192.0.2.10\r\n"
    "s=-\r\n"
    "c=IN IP4 192.0.2.10\r\n"
    "t=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)

# Placeholders a scenario fills in after its prelude ran (tags and branches we chose).
TO_TAG = "@@TOTAG@@"
BRANCH = "@@BRANCH@@"
CALL_ID = "@@CALLID@@"
FROM_TAG = "@@FROMTAG@@"


def _request(
    method: str,
    *,
    uri: str = "sip:100@192.0.2.1:5060",
    call_id: str = "fuzz-1@192.0.2.10",
    from_tag: str = "f1",
    to_tag: str | None = None,
    cseq: int = 1,
    branch: str = "z9hG4bK-fz-1",
    extra: Iterable[str] = (),
    body: str = "",
    content_type: str | None = None,
) -> str:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch};rport",
        "Max-Forwards: 70",
        f'From: "Alice" <sip:alice@example.net>;tag={from_tag}',
        "To: <sip:100@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@192.0.2.10:5060>",
        *extra,
    ]
    if body:
        lines.append(f"Content-Type: {content_type or 'application/sdp'}")
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


_RR = "Record-Route: <sip:proxy1.example.com;lr>, <sip:192.0.2.30:5070;lr;transport=udp>"


def _invite(**kw: Any) -> str:
    kw.setdefault("body", SDP_OFFER)
    kw.setdefault("extra", [_RR, "Allow: INVITE, ACK, BYE, CANCEL", "Supported: timer"])
    return _request("INVITE", **kw)


def _response(status: int, reason: str, *, body: str = "", extra: Iterable[str] = ()) -> str:
    lines = [
        f"SIP/2.0 {status} {reason}",
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={BRANCH};rport",
        f"From: <sip:callengine@192.0.2.1:5060>;tag={FROM_TAG}",
        "To: <sip:bob@192.0.2.20:5080>" + (";tag=callee-1" if status > 100 else ""),
        f"Call-ID: {CALL_ID}",
        "CSeq: 1 INVITE",
        "Contact: <sip:bob@192.0.2.20:5080>",
        "Record-Route: <sip:192.0.2.30:5070;lr>",
        *extra,
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


@dataclass(frozen=True)
class Seed:
    """A message to mutate and the scenario it is fed in (``kind``)."""

    name: str
    data: bytes
    kind: str = "fresh"  # fresh | dialog (after an answered, ACKed INVITE) | uac


def seeds(corpus: Path | None = None) -> list[Seed]:
    """The RFC 4475 corpus plus typical messages of each kind a node receives."""
    out: list[Seed] = []
    folder = corpus or next((p for p in _CORPUS_DIRS if p.is_dir()), None)
    if folder is not None:
        for path in sorted(folder.glob("*.dat")):
            out.append(Seed(f"rfc4475/{path.name}", path.read_bytes()))
    in_dialog = {"to_tag": TO_TAG, "cseq": 2}
    typical = [
        Seed("invite", _invite().encode()),
        Seed("invite-late-offer", _invite(body="").encode()),
        Seed("invite-2543", _invite(branch="1234abcd", extra=[_RR]).encode()),
        Seed("options", _request("OPTIONS", extra=["Accept: application/sdp"]).encode()),
        Seed(
            "register",
            _request(
                "REGISTER",
                uri="sip:example.com",
                extra=["Expires: 3600", 'Authorization: Digest username="100", realm="x"'],
            ).encode(),
        ),
        Seed("cancel", _request("CANCEL", branch="z9hG4bK-fz-1").encode(), "dialog"),
        Seed("ack", _request("ACK", to_tag=TO_TAG, branch="z9hG4bK-ack").encode(), "dialog"),
        Seed("bye", _request("BYE", branch="z9hG4bK-bye", **in_dialog).encode(), "dialog"),  # type: ignore[arg-type]
        Seed(
            "reinvite",
            _invite(branch="z9hG4bK-re", **in_dialog).encode(),  # type: ignore[arg-type]
            "dialog",
        ),
        Seed(
            "update",
            _request(
                "UPDATE",
                branch="z9hG4bK-up",
                body=SDP_OFFER,
                **in_dialog,  # type: ignore[arg-type]
            ).encode(),
            "dialog",
        ),
        Seed(
            "info",
            _request(
                "INFO",
                branch="z9hG4bK-info",
                body="Signal=5\r\nDuration=160\r\n",
                content_type="application/dtmf-relay",
                **in_dialog,  # type: ignore[arg-type]
            ).encode(),
            "dialog",
        ),
        Seed("100", _response(100, "Trying").encode(), "uac"),
        Seed("180", _response(180, "Ringing").encode(), "uac"),
        Seed("183", _response(183, "Session Progress", body=SDP_OFFER).encode(), "uac"),
        Seed("200", _response(200, "OK", body=SDP_OFFER).encode(), "uac"),
        Seed(
            "407",
            _response(
                407,
                "Proxy Authentication Required",
                extra=['Proxy-Authenticate: Digest realm="x", nonce="abc", algorithm=MD5'],
            ).encode(),
            "uac",
        ),
        Seed("486", _response(486, "Busy Here").encode(), "uac"),
    ]
    return out + typical


# ----------------------------------------------------------------------- mutations
HOSTILE_VALUES: list[bytes] = [
    b"<sip:a@127.0.0.1>Jtag=1",
    b"<sip:a@127.0.0.1",
    b"sip:a@127.0.0.1>",
    b'"unterminated <sip:a@127.0.0.1>;tag=1',
    b"<sip:a@127.0.0.1>;tag=",
    b"<sip:a@127.0.0.1>;;tag=1",
    b"<sip:a@127.0.0.1>;tag=1;tag=2",
    b"<>",
    b"<sip:>",
    b"<sip:@>",
    b"<sip:a@[::1>",
    b"<sip:a@[zz::1]>",
    b"<sip:a@host:0>",
    b"<sip:a@host:99999>",
    b"<sip:a@host:1" + b"0" * 30 + b">",
    b"<tel:+1234>",
    b"<tel:>",
    b"<mailto:a@b>",
    b"<sip:9123%0D%0AX:1@127.0.0.1>",
    b"<sip:9123%40127.0.0.1:5072@127.0.0.1>",
    b"<sip:%00@127.0.0.1>",
    b"<sip:a@127.0.0.1;lr",
    b"<sip:proxy;lr>, <sip:",
    b"sip:p1, <sip:p2>",
    b"<sip:p1>,,<sip:p2>",
    b",",
    b"*",
    b"<sip:a@127.0.0.1?Route=%3Csip:x%3E>",
    b"sip:a@127.0.0.1?h=1",
    b"SIP/2.0/UDP 127.0.0.1;branch=1234",
    b"SIP/2.0/UDP 127.0.0.1:5060",
    b"SIP/2.0/UDP 127.0.0.1:99999;branch=z9hG4bK1",
    b"SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK",
    b"SIP/2.0/UDP 127.0.0.1;maddr=;branch=z9hG4bK2",
    b"SIP/2.0/UDP 127.0.0.1;rport=abc;branch=z9hG4bK3",
    b"SIP/2.0/UDP 127.0.0.1;received=;branch=z9hG4bK4",
    b"SIP/2.0/UDP 192.0.2.10:5060;received=a\x00b;branch=z9hG4bK4a",
    b'SIP/2.0/UDP 192.0.2.10:5060;received="x y";branch=z9hG4bK4b',
    b'SIP/2.0/UDP 127.0.0.1;maddr="a b";branch=z9hG4bK4c',
    b"SIP/2.0/UDP 127.0.0.1;maddr=a\x00b;branch=z9hG4bK4d",
    b"SIP/2.0/UDP 127.0.0.1;maddr=[::1;branch=z9hG4bK4e",
    b"SIP/2.0/UDP [::1;branch=z9hG4bK5",
    b"SIP/3.0/UDP 127.0.0.1;branch=z9hG4bK6",
    b"SIP/2.0/UDP",
    b"1 INVITE",
    b"0 ACK",
    b"4294967296 INVITE",
    b"-1 BYE",
    b"1 FOO",
    b"1",
    b"\xc2\xb2 INVITE",
    b"9" * 5000,
    b"9" * 5000 + b" INVITE",
    b"-1",
    b"999999999999",
    b"\xc2\xb2",
    b"\xd9\xa3",
    b"",
    b" ",
    b"\x00",
    b"a\x00b",
    b"\xff\xfe\xfd",
    b"%0D%0A",
    b"x%0D%0AX-Injected: 1",
    b'"' * 3,
    b"\\",
    b'"x\\',
    b"a" * 70000,
    b"a" * 3000,
    b"<sip:" + b"a" * 3000 + b"@h>",
    b'Digest username="100", realm="x", nonce="", uri="sip:x", response="0"',
    b"Digest ,,,",
    b"Digest username=",
    b"Q.850;cause=abc",
    b"Q.850;cause=" + b"9" * 5000,
    b"application/sdp;charset",
    b"multipart/mixed;boundary=",
    b"text/plain",
    b"replaces, timer, foo",
    b"3600;foo",
    b"Mon, 01 Jan 2000 00:00:00 EST",
]

HEADER_NAMES = [
    b"Via", b"v", b"From", b"f", b"To", b"t", b"Call-ID", b"i", b"CSeq", b"Contact", b"m",
    b"Record-Route", b"Route", b"Max-Forwards", b"Content-Length", b"l", b"Content-Type",
    b"c", b"Require", b"Accept", b"Expires", b"Reason", b"Authorization",
    b"Proxy-Authenticate", b"WWW-Authenticate", b"Content-Encoding", b"Date", b"Timestamp",
    b"Session-Expires", b"Replaces", b"Supported", b"X-Foo",
]  # fmt: skip

SDP_LINES = [
    b"a=rtpmap:31 LPC",
    b"a=rtpmap:x",
    b"a=rtpmap:0",
    b"a=rtpmap:0 PCMU/",
    b"a=rtpmap:0 PCMU/abc",
    b"a=rtpmap:0 PCMU/8000/x",
    b"a=rtpmap:96 opus/48000/2",
    b"a=rtpmap:101 telephone-event/16000",
    b"a=rtpmap:" + b"9" * 5000 + b" PCMU/8000",
    b"a=fmtp:",
    b"a=fmtp:101",
    b"a=ptime:abc",
    b"a=ptime:" + b"9" * 5000,
    b"a=ptime:0",
    b"a=rtcp:",
    b"a=rtcp:abc",
    b"a=rtcp:99999",
    b"a=rtcp:" + b"9" * 5000,
    b"a=sendonly",
    b"a=inactive",
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:xyz",
    b"a=",
    b"a",
    b"m=audio 99999 RTP/AVP 0",
    b"m=audio 0 RTP/AVP 0",
    b"m=audio 1000 RTP/AVP",
    b"m=audio 1000 RTP/AVP 200",
    b"m=audio 1000/2 RTP/AVP 0",
    b"m=audio 1000/x RTP/AVP 0",
    b"m=audio 1000 RTP/SAVP 0",
    b"m=audio 1000 udp 0",
    b"m=video 1000 RTP/AVP 31",
    b"m=audio " + b"9" * 5000 + b" RTP/AVP 0",
    b"m=",
    b"c=IN IP4",
    b"c=IN IP4 999.1.1.1",
    b"c=IN IP4 0.0.0.0",
    b"c=IN IP6 ::1",
    b"c=IN IP6 zz",
    b"c=IN IP4 224.2.1.1/127/3",
    b"c=XX IP4 1.2.3.4",
    b"o=- x y IN IP4 1.1.1.1",
    b"o=- 1 1 IN IP4",
    b"o=- " + b"9" * 5000 + b" 1 IN IP4 1.1.1.1",
    b"t=a b",
    b"t=" + b"9" * 5000 + b" 0",
    b"v=1",
    b"s=",
    b"b=AS:64",
    b"x=unknown",
    b"\xff=\xfe",
]

METHOD_NAMES = [
    b"INVITE", b"ACK", b"BYE", b"CANCEL", b"OPTIONS", b"REGISTER", b"INFO", b"UPDATE",
    b"PRACK", b"SUBSCRIBE", b"NOTIFY", b"MESSAGE", b"FOO", b"invite", b"",
]  # fmt: skip


def _split(data: bytes) -> tuple[list[bytes], bytes, bytes]:
    """Header lines (start line first), the separator used, and the body."""
    for sep in (b"\r\n", b"\n"):
        end = data.find(sep + sep)
        if end >= 0:
            return data[:end].split(sep), sep, data[end + 2 * len(sep) :]
    return data.split(b"\r\n"), b"\r\n", b""


def _join(lines: list[bytes], sep: bytes, body: bytes) -> bytes:
    return sep.join(lines) + sep + sep + body


class Mutator:
    """Random edits of one message; ``donors`` are values taken from every seed."""

    def __init__(self, rng: random.Random, donors: list[bytes], donor_lines: list[bytes]) -> None:
        self.rng = rng
        self.donors = donors
        self.donor_lines = donor_lines
        self.ops: list[Callable[[bytes], bytes]] = [
            self.flip,
            self.flip,
            self.delete_line,
            self.duplicate_line,
            self.insert_line,
            self.splice_value,
            self.hostile_value,
            self.hostile_value,
            self.hostile_value,
            self.hostile_header,
            self.content_length,
            self.sdp_line,
            self.sdp_line,
            self.request_line,
            self.truncate,
            self.lf_only,
            self.remove_header,
            self.escape_crlf,
        ]

    def mutate(self, data: bytes) -> bytes:
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3))):
            data = self.rng.choice(self.ops)(data)
        return data

    # -- byte level --
    def flip(self, data: bytes) -> bytes:
        if not data:
            return data
        buf = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(len(buf))
            if self.rng.random() < 0.5:
                buf[i] ^= 1 << self.rng.randrange(8)
            else:
                buf[i] = self.rng.choice(b'\x00\r\n :;,<>"@%=/\\\xff\x80?[]')
        return bytes(buf)

    def truncate(self, data: bytes) -> bytes:
        return data[: self.rng.randrange(len(data) + 1)]

    # -- line level --
    def _pick(self, lines: list[bytes], *, header: bool = True) -> int:
        lo = 1 if header and len(lines) > 1 else 0
        return self.rng.randrange(lo, len(lines))

    def delete_line(self, data: bytes) -> bytes:
        lines, sep, body = _split(data)
        if len(lines) > 1:
            del lines[self._pick(lines)]
        return _join(lines, sep, body)

    def duplicate_line(self, data: bytes) -> bytes:
        lines, sep, body = _split(data)
        i = self._pick(lines)
        lines.insert(self.rng.randrange(1, len(lines) + 1), lines[i])
        return _join(lines, sep, body)

    def insert_line(self, data: bytes) -> bytes:
        lines, sep, body = _split(data)
        lines.insert(self.rng.randrange(1, len(lines) + 1), self.rng.choice(self.donor_lines))
        return _join(lines, sep, body)

    def remove_header(self, data: bytes) -> bytes:
        lines, sep, body = _split(data)
        name = self.rng.choice(HEADER_NAMES).lower()
        kept = [ln for ln in lines[1:] if ln.split(b":", 1)[0].strip().lower() != name]
        return _join(lines[:1] + kept, sep, body)

    def _set_value(self, data: bytes, value: bytes, name: bytes | None = None) -> bytes:
        lines, sep, body = _split(data)
        if name is not None:
            matches = [
                i
                for i, ln in enumerate(lines[1:], 1)
                if ln.split(b":", 1)[0].strip().lower() == name.lower()
            ]
            if not matches or self.rng.random() < 0.2:
                lines.insert(self.rng.randrange(1, len(lines) + 1), name + b": " + value)
                return _join(lines, sep, body)
            i = self.rng.choice(matches)
        else:
            if len(lines) < 2:
                return data
            i = self._pick(lines)
        head, colon, old = lines[i].partition(b":")
        if not colon:
            lines[i] = value
        elif self.rng.random() < 0.3 and old:
            # splice: keep a prefix of the old value
            cut = self.rng.randrange(len(old) + 1)
            lines[i] = head + b":" + old[:cut] + value
        else:
            lines[i] = head + b": " + value
        return _join(lines, sep, body)

    def splice_value(self, data: bytes) -> bytes:
        return self._set_value(data, self.rng.choice(self.donors))

    def hostile_value(self, data: bytes) -> bytes:
        name = self.rng.choice(HEADER_NAMES) if self.rng.random() < 0.8 else None
        return self._set_value(data, self.rng.choice(HOSTILE_VALUES), name)

    def hostile_header(self, data: bytes) -> bytes:
        return self._set_value(data, self.rng.choice(self.donors), self.rng.choice(HEADER_NAMES))

    def content_length(self, data: bytes) -> bytes:
        lines, sep, body = _split(data)
        value = self.rng.choice(
            [
                str(len(body) + self.rng.randint(-5, 5)).encode(),
                b"-1",
                b"0",
                b"99999999999999999999",
                b"\xc2\xb2",
                b"",
                b"1" * 5000,
                str(len(body)).encode() + b", 0",
            ]
        )
        kept = [
            ln
            for ln in lines[1:]
            if ln.split(b":", 1)[0].strip().lower() not in (b"content-length", b"l")
        ]
        if self.rng.random() < 0.8:
            kept.append(b"Content-Length: " + value)
        if self.rng.random() < 0.2:
            kept.append(b"l: " + str(len(body)).encode())
        return _join(lines[:1] + kept, sep, body)

    def sdp_line(self, data: bytes) -> bytes:
        lines, sep, body = _split(data)
        blines = body.split(b"\r\n") if body else [b"v=0"]
        op = self.rng.random()
        new = self.rng.choice(SDP_LINES)
        if op < 0.4:
            blines[self.rng.randrange(len(blines))] = new
        elif op < 0.8:
            blines.insert(self.rng.randrange(len(blines) + 1), new)
        else:
            del blines[self.rng.randrange(len(blines))]
        body = b"\r\n".join(blines)
        out = []
        for ln in lines:
            if ln.split(b":", 1)[0].strip().lower() in (b"content-length", b"l"):
                ln = b"Content-Length: " + str(len(body)).encode()
            out.append(ln)
        return _join(out, sep, body)

    def request_line(self, data: bytes) -> bytes:
        lines, sep, body = _split(data)
        parts = lines[0].split(b" ")
        choice = self.rng.random()
        if data.startswith(b"SIP/"):
            lines[0] = self.rng.choice(
                [b"SIP/2.0 200", b"SIP/2.0 2000 OK", b"SIP/2.0 099 x", b"SIP/2.0 700 x",
                 b"SIP/2.0 abc OK", b"SIP/3.0 200 OK", b"SIP/2.0 183 \xff", b"SIP/2.0"]
            )  # fmt: skip
        elif choice < 0.4 and parts:
            parts[0] = self.rng.choice(METHOD_NAMES)
            lines[0] = b" ".join(parts)
        elif choice < 0.8 and len(parts) > 1:
            parts[1] = self.rng.choice(
                [v.strip(b"<>") for v in HOSTILE_VALUES if v.startswith(b"<")]
                + [b"sip:100@192.0.2.1;transport=tcp", b"tel:+1234", b"*", b""]
            )
            lines[0] = b" ".join(parts)
        else:
            lines[0] = self.rng.choice(
                [b"INVITE sip:a@b SIP/2.0 ", b"INVITE  sip:a@b SIP/2.0", b"INVITE sip:a@b",
                 b"INVITE sip:a@b SIP/7.0", b"INVITE", b"", b"\x00INVITE sip:a@b SIP/2.0"]
            )  # fmt: skip
        return _join(lines, sep, body)

    def lf_only(self, data: bytes) -> bytes:
        return data.replace(b"\r\n", b"\n")

    def escape_crlf(self, data: bytes) -> bytes:
        lines, sep, body = _split(data)
        i = self.rng.randrange(len(lines))
        at = lines[i].find(b"@")
        esc = self.rng.choice([b"%0D%0AX:1", b"%40127.0.0.1:5072", b"%3B", b"%00", b"%", b"%4"])
        if at > 0:
            lines[i] = lines[i][:at] + esc + lines[i][at:]
        else:
            lines[i] = lines[i] + esc
        return _join(lines, sep, body)


def _donors(all_seeds: list[Seed]) -> tuple[list[bytes], list[bytes]]:
    values: set[bytes] = set()
    lines: set[bytes] = set()
    for s in all_seeds:
        head, _, _ = _split(s.data)
        for ln in head[1:]:
            lines.add(ln)
            _, colon, value = ln.partition(b":")
            if colon:
                values.add(value.strip())
    return sorted(values), sorted(lines)


# --------------------------------------------------------------------- the node
class InternalError(Exception):
    """The answering application failed (the engine would answer 500 and log it)."""


class NodeApp:
    """The application above the UA, as the engine behaves for one call: ``Call`` reads
    the caller, callee and headers, negotiates the SDP (400 / 488), rings and answers."""

    def __init__(self) -> None:
        self.ua: UserAgent | None = None
        self.registrar = Registrar(
            lookup_user=lambda domain, user: (
                UserRecord(password="pw", tenant="t1") if user == "100" else None
            ),
            store=MemoryBindingStore(),
            auth=DigestServer("example.com", b"fuzz secret"),
        )
        self.sessions: list[InviteSession] = []
        self.failure: BaseException | None = None

    def on_incoming_call(self, session: InviteSession, now: float) -> None:
        self.sessions.append(session)
        ua = self.ua
        assert ua is not None
        try:
            self._answer(ua, session, now)
        except Exception as exc:
            # Engine._run: "call handler failed" + traceback, then 500
            self.failure = exc
            ua.reject(session, 500, now)

    @staticmethod
    def _answer(ua: UserAgent, session: InviteSession, now: float) -> None:
        inv = session.invite
        # Call.__init__
        from_uri = inv.from_.uri if inv.from_ else None
        _ = (from_uri.user_unescaped or from_uri.host) if from_uri else ""
        _ = inv.from_.display if inv.from_ else None
        _ = inv.uri.user_unescaped or ""
        _ = inv.headers.first_values()
        # Call._prepare_media
        sdp_session = sdpmod.SdpSession("192.0.2.1")
        if not inv.body:
            answer = sdpmod.build_offer(
                sdp_session, CODEC_LIST[:2], address="192.0.2.1", port=30000
            ).serialize()
        else:
            try:
                offer = sdpmod.SessionDescription.parse(inv.body)
            except ValueError as exc:
                ua.reject(session, 400, now, f"Bad Request - SDP: {exc}"[:120])
                return
            negotiated = sdpmod.negotiate(offer, CODEC_LIST)
            if negotiated is None:
                ua.reject(session, 488, now)
                return
            answer = negotiated.to_sdp(sdp_session, address="192.0.2.1", port=30000).serialize()
        ua.provisional(session, now, 180)
        ua.answer(session, answer, now)

    def on_call_confirmed(self, session: InviteSession, now: float) -> None:
        return None

    def on_call_ended(self, session: InviteSession, reason: str, cause: int, now: float) -> None:
        return None

    def on_reoffer(self, session: InviteSession, sdp: bytes) -> bytes | None:
        # Call.reoffer
        try:
            offer = sdpmod.SessionDescription.parse(sdp)
        except ValueError:
            return None
        negotiated = sdpmod.negotiate(offer, CODEC_LIST)
        if negotiated is None:
            return None
        return negotiated.to_sdp(
            sdpmod.SdpSession("192.0.2.1"), address="192.0.2.1", port=30000
        ).serialize()

    def on_info(self, session: InviteSession, request: Request) -> None:
        _ = request.body.decode("utf-8", "replace")

    def on_progress(self, session: InviteSession, response: Response, now: float) -> None:
        if response.body:
            self._accept(response.body)

    def on_answered(self, session: InviteSession, response: Response, now: float) -> None:
        if response.body:
            self._accept(response.body)

    @staticmethod
    def _accept(body: bytes) -> None:
        offer = sdpmod.SessionDescription.parse(SDP_OFFER)
        try:
            answer = sdpmod.SessionDescription.parse(body)
            sdpmod.accept_answer(offer, answer)
        except ValueError:
            pass  # the engine drops a bad answer's media (call.py on_answered)

    def on_failed(
        self, session: InviteSession, status: int, response: Response | None, now: float
    ) -> None:
        return None

    def on_register(self, request: Request, now: float) -> Response | None:
        return self.registrar.handle(request, 1_700_000_000.0 + now)


# ----------------------------------------------------------------------- a case
@dataclass
class Result:
    outcome: str  # "response 400", "dropped parse_errors", "escape ..." ...
    escape: str | None = None  # signature of an escape (kind + exception + where)
    detail: str = ""


class Node:
    """A fresh UA + app per case, so that every escape reproduces from its bytes."""

    def __init__(self) -> None:
        self.app = NodeApp()
        self.sent: list[tuple[bytes, Address]] = []
        self.ua = UserAgent(self.app, self._send)
        self.app.ua = self.ua
        self.now = 100.0

    def _send(self, data: bytes, dest: Address, transport: str) -> None:
        self.sent.append((data, dest))

    def feed(self, data: bytes, transport: str = "UDP") -> None:
        """``ua.receive`` without its last guard, so that an exception is seen with its
        traceback (the guard would count it as ``internal_errors`` and log one line)."""
        if data and not (data[0] in (10, 13) and not data.strip(b"\r\n")):
            self.ua._receive(data, PEER, transport, LOCAL, self.now)
        self.now += 0.01

    def settle(self, seconds: float = 40.0) -> None:
        """Run every timer due in the next ``seconds`` (retransmissions, Timer H, the
        BYE after an unacknowledged 2xx ...), each at its deadline: ``Engine._on_timer``."""
        end = self.now + seconds
        while True:
            deadline = self.ua.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.ua.handle_timer(self.now)


def _prepare(node: Node, seed: Seed) -> dict[bytes, bytes]:
    """Run the scenario's prelude; returns the placeholder values for the message."""
    if seed.kind == "dialog":
        node.feed(_invite().encode())
        session = node.app.sessions[-1]
        ack = _request("ACK", to_tag=session.local_tag, branch="z9hG4bK-ack0").encode()
        node.feed(ack)
        return {TO_TAG.encode(): session.local_tag.encode()}
    if seed.kind == "uac":
        session = node.ua.invite(
            "sip:bob@192.0.2.20:5080",
            node.now,
            dest=CALLEE,
            local=LOCAL,
            sdp=SDP_OFFER.encode(),
            from_uri="sip:callengine@192.0.2.1:5060",
        )
        inv = session.invite
        return {
            BRANCH.encode(): inv.branch.encode(),
            CALL_ID.encode(): inv.call_id.encode(),
            FROM_TAG.encode(): (inv.from_tag or "").encode(),
        }
    return {}


def _fill(data: bytes, values: dict[bytes, bytes]) -> bytes:
    for key, value in values.items():
        data = data.replace(key, value)
    return data


def _expects_response(data: bytes, node: Node, *, stream: bool = False) -> bool:
    """A request the node must answer: request line, not ACK, Via + CSeq + Call-ID present,
    and not a retransmission absorbed by a transaction that already exists."""
    if data.startswith(b"SIP/") or not data.strip(b"\r\n"):
        return False
    first = data.lstrip(b"\r\n").split(b"\n", 1)[0]
    if first.rstrip(b"\r").split(b" ", 1)[0] == b"ACK":  # never answered (§17.2.1)
        return False
    head = data.lstrip(b"\r\n")
    ends = [i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0]
    head = head[: min(ends)] if ends else head
    lines = head.split(b"\n")
    names = {ln.split(b":", 1)[0].strip().lower() for ln in lines[1:] if b":" in ln}
    if not ({b"via", b"v"} & names and b"cseq" in names and {b"call-id", b"i"} & names):
        return False
    try:
        msg = parse_message(data, stream=stream)
    except Exception:
        return True  # a request the parser refused: it must still be answered
    if isinstance(msg, Request) and msg.vias and msg.method != "ACK":
        msg.source = PEER
        try:
            if node.ua.transactions.match_server(msg) is not None:
                return False  # a retransmission: answered (or absorbed) by its transaction
        except Exception:
            return True
    return isinstance(msg, Request) and msg.method != "ACK"


def run_case(seed: Seed, data: bytes, transport: str = "UDP") -> Result:
    """Feed one (mutated) message in its scenario and classify what the node did.

    Over TCP the bytes go through the :class:`StreamFramer` first, as the transport
    does: a framing error closes the connection (no response is expected)."""
    node = Node()
    try:
        values = _prepare(node, seed)
    except Exception as exc:  # the prelude is valid: a failure here is a bug of the fuzzer
        raise RuntimeError(f"prelude of {seed.name} failed: {exc!r}") from exc
    data = _fill(data, values)
    messages = [data]
    if transport != "UDP":
        try:
            messages = StreamFramer().feed(data)
        except RemoteProtocolError:
            return Result("dropped framing (connection closed)")
        except Exception as exc:  # the transport catches only RemoteProtocolError
            return Result("escape framing", _signature("framer exception", exc), _where(exc))
        if not messages:
            return Result("incomplete on the stream")
        data = messages[0]
    counters = node.ua.counters
    before = (counters.parse_errors, counters.dropped_responses, counters.dropped_acks)
    expect = _expects_response(data, node, stream=transport != "UDP")
    mark = len(node.sent)
    try:
        for message in messages:
            node.feed(message, transport)
    except Exception as exc:
        return Result("escape exception", _signature("exception", exc), _where(exc))
    if node.app.failure is not None:
        exc = node.app.failure
        return Result("escape 500", _signature("internal 500", exc), _where(exc))
    replies = [d for d, _ in node.sent[mark:] if d.startswith(b"SIP/2.0 ")]
    fed = len(node.sent)
    try:
        node.settle()
    except Exception as exc:
        return Result("escape timer", _signature("timer exception", exc), _where(exc))
    for _, dest in node.sent[mark:]:
        if not _valid_dest(dest):
            return Result("escape dest", "unsendable destination", repr(dest))
    del node.sent[fed:]  # classified by what the message itself made the node send
    if replies:
        finals = [r for r in replies if not r.startswith(b"SIP/2.0 1")]
        last = (finals or replies)[-1]
        status = last[8:11].decode()
        if status == "500":  # RFC 3261's own 500s (§12.2.2, §14.2) name their cause
            status += " " + last.split(b"\r\n", 1)[0][12:].decode("utf-8", "replace")
        return Result(f"response {status}")
    if expect:
        return Result("escape no-response", "no response to a request")
    after = (counters.parse_errors, counters.dropped_responses, counters.dropped_acks)
    for name, b, a in zip(
        ("parse_errors", "dropped_responses", "dropped_acks"), before, after, strict=True
    ):
        if a > b:
            return Result(f"dropped {name}")
    if node.sent[mark:]:
        return Result("requests sent")  # e.g. an ACK to a 2xx
    return Result("absorbed")


def _valid_dest(dest: Address) -> bool:
    """What ``sendto`` accepts without raising: a host without blanks, a port 1-65535."""
    host, port = dest
    return (
        isinstance(host, str)
        and bool(host)
        and not any(ch in host for ch in " \t\r\n\x00")
        and isinstance(port, int)
        and 0 < port < 65536
    )


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    at = f"{Path(last.filename).name}:{last.lineno} in {last.name}" if last else "?"
    return f"{type(exc).__name__}: {str(exc)[:200]} at {at}"


def _signature(kind: str, exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    at = f"{Path(last.filename).name}:{last.name}" if last else "?"
    return f"{kind}: {type(exc).__name__} at {at}"


def minimize(
    seed: Seed, data: bytes, signature: str, budget: int = 400, transport: str = "UDP"
) -> bytes:
    """Shrink ``data`` while it still escapes with the same signature (lines, then bytes)."""

    def same(candidate: bytes) -> bool:
        return run_case(seed, candidate, transport).escape == signature

    tries = 0
    lines, sep, body = _split(data)
    i = 1
    while i < len(lines) and tries < budget:
        candidate = _join(lines[:i] + lines[i + 1 :], sep, body)
        tries += 1
        if same(candidate):
            lines = lines[:i] + lines[i + 1 :]
        else:
            i += 1
    if body and tries < budget:
        tries += 1
        if same(_join(lines, sep, b"")):
            body = b""
    data = _join(lines, sep, body)
    chunk = max(1, len(data) // 8)
    while chunk >= 1 and tries < budget:
        pos = 0
        while pos < len(data) and tries < budget:
            candidate = data[:pos] + data[pos + chunk :]
            tries += 1
            if candidate and same(candidate):
                data = candidate
            else:
                pos += chunk
        chunk //= 2
    return data


@dataclass
class Report:
    count: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    escapes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, tuple[str, bytes, str]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seconds": round(self.seconds, 1),
            "outcomes": dict(self.outcomes.most_common()),
            "escapes": dict(self.escapes.most_common()),
            "examples": {
                sig: {"seed": s, "detail": d, "data": data.decode("utf-8", "backslashreplace")}
                for sig, (s, data, d) in self.examples.items()
            },
        }


def run(
    count: int,
    seed: int,
    *,
    minimize_examples: bool = True,
    progress: Callable[[int, Report], None] | None = None,
) -> Report:
    """Fuzz ``count`` mutated messages with ``random.Random(seed)``."""
    rng = random.Random(seed)
    all_seeds = seeds()
    donors, donor_lines = _donors(all_seeds)
    mutator = Mutator(rng, donors, donor_lines)
    report = Report()
    t0 = time.perf_counter()
    for n in range(count):
        s = rng.choice(all_seeds)
        data = mutator.mutate(s.data)
        # one in ten over TCP (framed by Content-Length; responses back on the connection)
        transport = "TCP" if s.kind == "fresh" and rng.random() < 0.1 else "UDP"
        result = run_case(s, data, transport)
        report.outcomes[result.outcome] += 1
        if result.escape is not None:
            report.escapes[result.escape] += 1
            if result.escape not in report.examples:
                small = (
                    minimize(s, data, result.escape, transport=transport)
                    if minimize_examples
                    else data
                )
                report.examples[result.escape] = (
                    f"{s.name} over {transport}",
                    small,
                    result.detail,
                )
        report.count = n + 1
        if progress is not None and (n + 1) % 50_000 == 0:
            report.seconds = time.perf_counter() - t0
            progress(n + 1, report)
    report.seconds = time.perf_counter() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)

    def progress(n: int, report: Report) -> None:
        print(
            f"{n:>9,} messages  {report.seconds:7.1f} s  escapes {sum(report.escapes.values())}",
            file=sys.stderr,
            flush=True,
        )

    report = run(args.count, args.seed, progress=progress)
    out = report.to_dict()
    print(f"{report.count:,} mutated messages, seed {args.seed}, {report.seconds:.1f} s")
    print("outcomes:")
    for name, n in report.outcomes.most_common():
        print(f"  {n:>9,}  {name}")
    total = sum(report.escapes.values())
    print(f"escapes: {total}")
    for sig, n in report.escapes.most_common():
        seed_name, data, detail = report.examples[sig]
        print(f"  {n:>9,}  {sig}\n             {detail}\n             seed {seed_name}:")
        print("             " + repr(data)[:2000])
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
