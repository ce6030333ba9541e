"""Shared helpers for the sans-IO SIP core tests: no sockets, a fake clock.

The pieces, as h11's and aioquic's tests have them:

* :class:`Harness` owns a :class:`UserAgent`, a fake network (``send`` records every
  ``(data, dest, transport)`` with the fake time it was sent) and the fake clock;
  ``receive`` feeds one datagram, ``advance`` runs the timer heap deadline by deadline.
* :class:`RecordingApp` is the application above the UA: it records every callback
  as an :class:`Event` and reacts as configured (ring, answer, reject, renegotiate).
* ``build_*`` make raw request bytes as a peer would send them; ``build_response``
  answers a request the UA sent; ``parse`` reads what the UA sent.

Test modules get all of this through the ``kit`` fixture (pytest runs with
``--import-mode=importlib``, so this file cannot be imported by name).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from callengine.sip.message import Request, Response, parse_message
from callengine.sip.useragent import InviteSession, UserAgent

Address = tuple[str, int]

PEER: Address = ("192.0.2.10", 5060)  # where requests come from (matches the Via sent-by)
LOCAL: Address = ("192.0.2.1", 5060)  # the UA's own listening address
CALLEE: Address = ("192.0.2.20", 5080)  # the far end of calls the UA places

SDP_OFFER = (
    b"v=0\r\n"
    b"o=peer 1000 1000 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=sendrecv\r\n"
)
SDP_ANSWER = (
    b"v=0\r\n"
    b"o=callengine 2000 2000 IN IP4 192.0.2.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 30000 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=sendrecv\r\n"
)


def parse(data: bytes) -> Request | Response:
    """Parse bytes the UA sent (they must always be well-formed)."""
    return parse_message(data)


def start_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode("utf-8", "replace")


# --------------------------------------------------------------------- builders
def build_request(
    method: str,
    *,
    uri: str = "sip:service@192.0.2.1:5060",
    call_id: str = "call-1@192.0.2.10",
    from_tag: str | None = "from-1",
    to_tag: str | None = None,
    cseq: int = 1,
    cseq_method: str | None = None,
    branch: str = "z9hG4bK-inv-1",
    sent_by: str = "192.0.2.10:5060",
    transport: str = "UDP",
    rport: bool = False,
    max_forwards: int | None = 70,
    contact: str | None = "<sip:caller@192.0.2.10:5060>",
    body: bytes = b"",
    content_type: str | None = None,
    extra: Sequence[str] = (),
) -> bytes:
    """A request as a peer at ``sent_by`` writes it (every part overridable)."""
    via = f"SIP/2.0/{transport} {sent_by};branch={branch}" + (";rport" if rport else "")
    lines = [f"{method} {uri} SIP/2.0", f"Via: {via}"]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines.append(
        'From: "Caller" <sip:caller@example.net>' + (f";tag={from_tag}" if from_tag else "")
    )
    lines.append("To: <sip:service@example.com>" + (f";tag={to_tag}" if to_tag else ""))
    lines.append(f"Call-ID: {call_id}")
    lines.append(f"CSeq: {cseq} {cseq_method or method}")
    if contact:
        lines.append(f"Contact: {contact}")
    lines.extend(extra)
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def build_invite(**kw: Any) -> bytes:
    kw.setdefault("body", SDP_OFFER)
    kw.setdefault("content_type", "application/sdp" if kw["body"] else None)
    return build_request("INVITE", **kw)


def build_ack(
    *, to_tag: str | None, cseq: int = 1, branch: str = "z9hG4bK-ack-1", **kw: Any
) -> bytes:
    """An ACK; for a 2xx it is its own transaction (new branch), for a non-2xx pass the
    INVITE's branch."""
    kw.setdefault("contact", None)
    return build_request("ACK", to_tag=to_tag, cseq=cseq, branch=branch, **kw)


def build_bye(*, to_tag: str, cseq: int = 2, branch: str = "z9hG4bK-bye-1", **kw: Any) -> bytes:
    kw.setdefault("contact", None)
    return build_request("BYE", to_tag=to_tag, cseq=cseq, branch=branch, **kw)


def build_cancel(*, cseq: int = 1, branch: str = "z9hG4bK-inv-1", **kw: Any) -> bytes:
    """A CANCEL for the INVITE with ``branch`` (§9.1: same branch, same CSeq number)."""
    kw.setdefault("contact", None)
    return build_request("CANCEL", cseq=cseq, branch=branch, **kw)


def build_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = "callee-1",
    contact: str | None = "<sip:callee@192.0.2.20:5080>",
    body: bytes = b"",
    content_type: str | None = None,
    extra: Sequence[str] = (),
) -> bytes:
    """The response a peer sends to ``request`` (one the UA sent): Via, From, To,
    Call-ID, CSeq copied (§8.2.6.2), our To tag added when the request had none."""
    h = request.headers
    lines = [f"SIP/2.0 {status} {reason or _REASONS.get(status, 'Whatever')}"]
    lines += [f"Via: {v}" for v in h.get_all("via")]
    lines.append(f"From: {h.get('from')}")
    to = h.get("to") or ""
    if to_tag and status > 100 and request.to_tag is None:
        to += f";tag={to_tag}"
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {h.get('call-id')}")
    lines.append(f"CSeq: {h.get('cseq')}")
    if contact and status > 100:
        lines.append(f"Contact: {contact}")
    lines.extend(extra)
    if body:
        lines.append(f"Content-Type: {content_type or 'application/sdp'}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_REASONS = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    401: "Unauthorized",
    407: "Proxy Authentication Required",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    491: "Request Pending",
}


# ---------------------------------------------------------------- fake network
@dataclass
class Sent:
    """One datagram the UA handed to ``send``."""

    data: bytes
    dest: Address
    transport: str
    at: float

    @property
    def msg(self) -> Request | Response:
        return parse(self.data)

    @property
    def start_line(self) -> str:
        return start_line(self.data)

    @property
    def is_response(self) -> bool:
        return self.data.startswith(b"SIP/2.0 ")

    @property
    def status(self) -> int:
        assert self.is_response, self.start_line
        return int(self.data[8:11])

    @property
    def method(self) -> str:
        assert not self.is_response, self.start_line
        return self.start_line.split(" ", 1)[0]


@dataclass
class Event:
    """One application callback."""

    name: str
    session: InviteSession | None = None
    status: int | None = None
    response: Response | None = None
    request: Request | None = None
    reason: str | None = None
    cause: int | None = None
    sdp: bytes | None = None
    now: float | None = None


class RecordingApp:
    """The application above the UA. ``incoming`` says what to do with a new call:
    ``"answer"`` (200 at once), ``"ring"`` (180 only), ``"ring_answer"`` (180 then 200),
    ``("reject", status)``, or ``None`` (the test drives the session)."""

    def __init__(
        self,
        *,
        incoming: str | tuple[str, int] | None = "ring_answer",
        answer_sdp: bytes = SDP_ANSWER,
        reoffer: Callable[[InviteSession, bytes], bytes | None] | None = None,
        register: Callable[[Request, float], Response | None] | None = None,
    ) -> None:
        self.ua: UserAgent | None = None
        self.incoming = incoming
        self.answer_sdp = answer_sdp
        self.reoffer = reoffer
        self.register = register
        self.events: list[Event] = []

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def of(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]

    # -- Application protocol --
    def on_incoming_call(self, session: InviteSession, now: float) -> None:
        self.events.append(Event("incoming_call", session, now=now))
        ua = self.ua
        assert ua is not None
        action = self.incoming
        if action in ("ring", "ring_answer"):
            ua.provisional(session, now, 180)
        if action in ("answer", "ring_answer"):
            ua.answer(session, self.answer_sdp, now)
        if isinstance(action, tuple) and action[0] == "reject":
            ua.reject(session, action[1], now)

    def on_call_confirmed(self, session: InviteSession, now: float) -> None:
        self.events.append(Event("call_confirmed", session, now=now))

    def on_call_ended(self, session: InviteSession, reason: str, cause: int, now: float) -> None:
        self.events.append(Event("call_ended", session, reason=reason, cause=cause, now=now))

    def on_reoffer(self, session: InviteSession, sdp: bytes) -> bytes | None:
        self.events.append(Event("reoffer", session, sdp=sdp))
        if self.reoffer is not None:
            return self.reoffer(session, sdp)
        return self.answer_sdp

    def on_info(self, session: InviteSession, request: Request) -> None:
        self.events.append(Event("info", session, request=request))

    def on_progress(self, session: InviteSession, response: Response, now: float) -> None:
        self.events.append(
            Event("progress", session, status=response.status, response=response, now=now)
        )

    def on_answered(self, session: InviteSession, response: Response, now: float) -> None:
        self.events.append(
            Event("answered", session, status=response.status, response=response, now=now)
        )

    def on_failed(
        self, session: InviteSession, status: int, response: Response | None, now: float
    ) -> None:
        self.events.append(Event("failed", session, status=status, response=response, now=now))

    def on_register(self, request: Request, now: float) -> Response | None:
        self.events.append(Event("register", request=request, now=now))
        if self.register is not None:
            return self.register(request, now)
        return None


class Harness:
    """A UserAgent on a fake network with a fake clock (``now`` starts at 0)."""

    def __init__(self, app: RecordingApp | None = None, **ua_kwargs: Any) -> None:
        self.now = 0.0
        self.sent: list[Sent] = []
        self.app = app if app is not None else RecordingApp()
        self.ua = UserAgent(self.app, self._send, **ua_kwargs)
        self.app.ua = self.ua

    def _send(self, data: bytes, dest: Address, transport: str) -> None:
        assert isinstance(data, bytes)
        self.sent.append(Sent(data, dest, transport, self.now))

    def receive(
        self,
        data: bytes,
        *,
        source: Address = PEER,
        transport: str = "UDP",
        local: Address = LOCAL,
    ) -> list[Sent]:
        """Feed one datagram at the current time; returns what the UA sent in reply."""
        mark = len(self.sent)
        self.ua.receive(data, source, transport, local, self.now)
        return self.sent[mark:]

    def advance_to(self, when: float) -> list[Sent]:
        """Run every timer due up to ``when``, each at its own deadline."""
        mark = len(self.sent)
        while True:
            deadline = self.ua.next_deadline()
            if deadline is None or deadline > when:
                break
            self.now = max(self.now, deadline)
            self.ua.handle_timer(self.now)
        self.now = max(self.now, when)
        return self.sent[mark:]

    def advance(self, seconds: float) -> list[Sent]:
        return self.advance_to(self.now + seconds)

    def clear(self) -> None:
        self.sent.clear()

    def responses(self, sent: list[Sent] | None = None) -> list[Sent]:
        return [s for s in (self.sent if sent is None else sent) if s.is_response]

    def requests(self, sent: list[Sent] | None = None, method: str | None = None) -> list[Sent]:
        return [
            s
            for s in (self.sent if sent is None else sent)
            if not s.is_response and (method is None or s.method == method)
        ]

    def statuses(self, sent: list[Sent] | None = None) -> list[int]:
        return [s.status for s in self.responses(sent)]

    # -- UAC helpers --
    def place_call(self, *, transport: str = "UDP", **kw: Any) -> tuple[InviteSession, Request]:
        """``ua.invite`` to CALLEE; returns the session and the INVITE as sent."""
        mark = len(self.sent)
        session = self.ua.invite(
            kw.pop("target", "sip:bob@192.0.2.20:5080"),
            self.now,
            dest=kw.pop("dest", CALLEE),
            local=kw.pop("local", LOCAL),
            sdp=kw.pop("sdp", SDP_OFFER),
            from_uri=kw.pop("from_uri", "sip:alice@example.com"),
            transport=transport,
            **kw,
        )
        sent = self.requests(self.sent[mark:], "INVITE")
        assert len(sent) == 1
        msg = sent[0].msg
        assert isinstance(msg, Request)
        return session, msg


def _kit() -> SimpleNamespace:
    return SimpleNamespace(
        PEER=PEER,
        LOCAL=LOCAL,
        CALLEE=CALLEE,
        SDP_OFFER=SDP_OFFER,
        SDP_ANSWER=SDP_ANSWER,
        parse=parse,
        start_line=start_line,
        build_request=build_request,
        build_invite=build_invite,
        build_ack=build_ack,
        build_bye=build_bye,
        build_cancel=build_cancel,
        build_response=build_response,
        Sent=Sent,
        Event=Event,
        RecordingApp=RecordingApp,
        Harness=Harness,
    )


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """Every helper of this file, for test modules."""
    return _kit()


@pytest.fixture
def h() -> Harness:
    """A UA whose application rings and answers every incoming call."""
    return Harness()
