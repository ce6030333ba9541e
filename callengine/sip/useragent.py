"""The user agent core: UAS rules, INVITE sessions (UAS and UAC), sans-IO.

Theory of operation
-------------------
:class:`UserAgent` is fed whole messages with ``receive(data, source, transport, local,
now)`` and timer ticks with ``handle_timer(now)``; it asks for a wake-up with
``next_deadline()`` and hands every datagram it wants sent to ``send(data, dest,
transport)``. It never reads a clock and owns no socket.

Data flows one way (DESIGN.md principle 2): transport -> :class:`TransactionLayer` ->
dialogs / :class:`InviteSession` -> the application (the ``app`` object, which the
asyncio Engine implements), and back down as commands on this class (``answer``,
``reject``, ``hangup``, ``invite``, ``cancel``...).

A new request outside any transaction passes the UAS checks of RFC 3261 §8.2 in order:
method (501/405), CSeq method (400), Request-URI scheme (416), Require (420), merged
request (482), Content-Type (415), Accept (406), admission (503), then dispatch by
method. A malformed request gets the response its parse error names; a malformed or
unmatched response is dropped and counted. Nothing that arrives from the network may
raise out of ``receive``.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._abnf import METHODS
from .dialog import Dialog, DialogState, new_tag
from .errors import RemoteProtocolError
from .message import PartialRequestError, Request, Response, make_response, parse_message
from .timers import T1, T2, Timer, TimerHeap
from .transaction import ClientTransaction, ServerTransaction, State, TransactionLayer, new_branch
from .uri import URI, parse_uri

log = logging.getLogger("callengine.sip")

Address = tuple[str, int]
SendFn = Callable[[bytes, Address, str], None]

ALLOWED = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE", "REGISTER")
KNOWN_NOT_ALLOWED = frozenset({"SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER", "PRACK", "MESSAGE"})
SUPPORTED = ("replaces", "timer")  # option tags we understand in Require
ACCEPT = ("application/sdp", "application/dtmf-relay", "application/dtmf")
SDP = "application/sdp"
_SUPPORTED_VALUE = ", ".join(SUPPORTED)  # header values, joined once
_ACCEPT_VALUE = ", ".join(ACCEPT)
_SDP_METHODS = frozenset({"INVITE", "UPDATE", "ACK"})
_INFO_TYPES = frozenset({"application/dtmf-relay", "application/dtmf", SDP})
# one SIP message per datagram / WebSocket message (RFC 7118 §5.1): Content-Length is
# optional there (checked when present); on TCP/TLS streams it frames the message
_MESSAGE_TRANSPORTS = frozenset({"UDP", "WS", "WSS"})


class SessionState(enum.Enum):
    CALLING = "calling"  # UAC: INVITE sent
    EARLY = "early"  # provisional sent / received
    ANSWERED = "answered"  # UAS: 2xx sent, waiting for ACK
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Application(Protocol):
    """What the UA core tells the layer above (the Engine)."""

    def on_incoming_call(self, session: InviteSession, now: float) -> None: ...
    def on_call_confirmed(self, session: InviteSession, now: float) -> None: ...
    def on_call_ended(
        self, session: InviteSession, reason: str, cause: int, now: float
    ) -> None: ...
    def on_reoffer(self, session: InviteSession, sdp: bytes) -> bytes | None: ...
    def on_info(self, session: InviteSession, request: Request) -> None: ...
    def on_progress(self, session: InviteSession, response: Response, now: float) -> None: ...
    def on_answered(self, session: InviteSession, response: Response, now: float) -> None: ...
    def on_failed(
        self, session: InviteSession, status: int, response: Response | None, now: float
    ) -> None: ...
    def on_register(self, request: Request, now: float) -> Response | None: ...


@dataclass(slots=True)
class Counters:
    """Plain counters read at scrape time (no metric library on the hot path)."""

    requests_in: dict[str, int] = field(default_factory=dict)
    responses_in: dict[int, int] = field(default_factory=dict)
    requests_out: dict[str, int] = field(default_factory=dict)
    responses_out: dict[int, int] = field(default_factory=dict)
    parse_errors: int = 0
    dropped_responses: int = 0
    dropped_acks: int = 0
    rejected_overload: int = 0
    oversized: int = 0
    internal_errors: int = 0
    """Exceptions of the core itself while handling a message (a bug: each is logged)."""


class Admission(Protocol):
    """Caps the shell puts on new calls beyond ``max_calls``/``max_cps`` (per source)."""

    def admit_call(self, request: Request, now: float) -> str | None:
        """``None`` to take the INVITE, else the reason phrase of a 503."""

    def release_call(self, request: Request) -> None:
        """A call ``admit_call`` took has ended."""


class InviteSession:
    """One call leg: an INVITE dialog on either side, plus its SDP and timers."""

    __slots__ = (
        "ua",
        "role",
        "state",
        "invite",
        "server_txn",
        "client_txn",
        "dialog",
        "local_tag",
        "local_sdp",
        "remote_sdp",
        "context",
        "final_status",
        "end_cause",
        "local_addr",
        "dest",
        "transport",
        "_ok_bytes",
        "_ok_timer",
        "_ok_interval",
        "_ack_bytes",
        "_pending_bye",
        "_pending_cancel",
        "_cancelled",
        "_reinvite_in",
        "_reinvite_out",
        "credentials",
        "_auth_tried",
        "contact",
        "started_at",
    )

    def __init__(
        self, ua: UserAgent, role: str, invite: Request, local_addr: Address, transport: str
    ) -> None:
        self.ua = ua
        self.role = role
        self.state = SessionState.EARLY if role == "uas" else SessionState.CALLING
        self.invite = invite
        self.server_txn: ServerTransaction | None = None
        self.client_txn: ClientTransaction | None = None
        self.dialog: Dialog | None = None
        self.local_tag = new_tag()
        self.local_sdp: bytes | None = None
        self.remote_sdp: bytes | None = invite.body if role == "uas" and invite.body else None
        self.context: Any = None
        self.final_status = 0
        self.end_cause = 0
        self.local_addr = local_addr
        self.dest: Address = invite.source or ("0.0.0.0", 0)
        self.transport = transport
        self._ok_bytes: bytes | None = None
        self._ok_timer: Timer | None = None
        self._ok_interval = T1
        self._ack_bytes: bytes | None = None
        self._pending_bye: int | None = None
        self._pending_cancel = False
        self._cancelled = False
        self._reinvite_in: ServerTransaction | None = None
        self._reinvite_out: ClientTransaction | None = None
        self.credentials: tuple[str, str] | None = None
        self._auth_tried = False
        self.contact = ""
        self.started_at = 0.0

    @property
    def call_id(self) -> str:
        return self.invite.call_id

    def __repr__(self) -> str:
        return f"<InviteSession {self.role} {self.state.value} call_id={self.call_id!r}>"


def reason_cause(message: Request | Response) -> int | None:
    """The Q.850 cause of a ``Reason: Q.850;cause=N`` header (RFC 3326), if any."""
    for value in message.headers.get_list("reason"):
        proto, _, params = value.partition(";")
        if proto.strip().upper() != "Q.850":
            continue
        for p in params.split(";"):
            name, _, v = p.partition("=")
            v = v.strip()
            if name.strip().lower() == "cause" and len(v) <= 3 and v.isascii() and v.isdigit():
                return int(v)
    return None


class UserAgent:
    """SIP user agent core for a call server (see the module docstring)."""

    def __init__(
        self,
        app: Application,
        send: SendFn,
        *,
        user_agent: str = "callengine",
        max_calls: int = 10000,
        max_cps: float = 0.0,
        retry_after: int = 5,
        max_message_size: int = 16384,
    ) -> None:
        self.app = app
        self._send_fn = send
        self.timers = TimerHeap()
        self.transactions = TransactionLayer(self, self._send, self.timers)
        self.sessions: dict[str, InviteSession] = {}  # by Call-ID + local tag
        self.dialogs: dict[tuple[str, str, str], InviteSession] = {}
        self._merged: dict[tuple[str, str, int], str] = {}
        self.counters = Counters()
        self.user_agent = user_agent
        """``Server``/``User-Agent`` value; empty: no such header at all."""
        self.hide_agent: Callable[[str], bool] | None = None
        self.new_call_id: Callable[[str], str] = _random_call_id
        """Call-IDs of requests this agent starts (a worker of a multi-worker node picks
        ones that the front's dispatch sends back to it)."""
        """Addresses (trunk gateways) that get no ``Server``/``User-Agent`` header."""
        self.max_calls = max_calls
        self.max_cps = max_cps
        self.retry_after = retry_after
        self.max_message_size = max_message_size
        """Larger requests get 513 and keep nothing (no transaction holds their bytes)."""
        self.draining = False
        self.shedding = False  # set by the shell while its event loop is overloaded
        self._bucket = max_cps
        self._bucket_at = 0.0
        self.admission: Admission | None = None
        """Per-source caps (the shell's): asked about each new INVITE, told when it ends."""
        self._allow = ", ".join(ALLOWED)

    # ------------------------------------------------------------------ I/O edge
    def _send(self, data: bytes, dest: Address, transport: str) -> None:
        self._send_fn(data, dest, transport)

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.timers.run(now)

    @property
    def active_calls(self) -> int:
        return len(self.sessions)

    def receive(
        self, data: bytes, source: Address, transport: str, local: Address, now: float
    ) -> None:
        """Feed one datagram / framed stream message. Never raises: a malformed request
        gets its 4xx, a malformed response is dropped; both count as ``parse_errors``."""
        if not data or (data[0] in (10, 13) and not data.strip(b"\r\n")):
            return  # keep-alive (RFC 5626 §3.5.1)
        if len(data) > self.max_message_size:
            self._too_large(data, source, transport)
            return
        try:
            self._receive(data, source, transport, local, now)
        except Exception as exc:
            # Last line of defence: nothing from the network may raise into the event
            # loop. Reaching this is a bug of the core (the fuzzer counts it as one).
            self.counters.internal_errors += 1
            log.error("internal error handling a message from %s: %r", source, exc)
            log.debug("internal error", exc_info=True)

    def _receive(
        self, data: bytes, source: Address, transport: str, local: Address, now: float
    ) -> None:
        try:
            msg = parse_message(data, stream=transport not in _MESSAGE_TRANSPORTS)
        except PartialRequestError as exc:
            self.counters.parse_errors += 1
            req = exc.request
            req.source = source
            req.transport = transport
            if req.method != "ACK":
                self._respond_stateless(req, exc.status, exc.reason, source, transport)
            return
        except (RemoteProtocolError, UnicodeError, ValueError) as exc:
            self.counters.parse_errors += 1
            log.debug("dropped unparseable message from %s: %s", source, exc)
            return
        msg.source = source
        msg.transport = transport
        msg.received_at = now
        try:
            if isinstance(msg, Request):
                c = self.counters.requests_in
                # one bucket for names from the network we do not know: bounded series
                key = msg.method if msg.method in METHODS else "other"
                c[key] = c.get(key, 0) + 1
                self._on_request(msg, local, now)
            else:
                c2 = self.counters.responses_in
                c2[msg.status] = c2.get(msg.status, 0) + 1
                self._on_response(msg, now)
        except PartialRequestError as exc:
            self.counters.parse_errors += 1
            if isinstance(msg, Request) and msg.method != "ACK":
                self._respond_stateless(msg, exc.status, exc.reason, source, transport)
        except RemoteProtocolError as exc:
            # a lazily parsed header was malformed
            self.counters.parse_errors += 1
            if isinstance(msg, Request) and msg.method != "ACK":
                try:
                    txn = self.transactions.match_server(msg) if msg.vias else None
                except RemoteProtocolError:
                    txn = None  # the fault is in what matching reads (From tag, RFC 2543)
                if txn is not None and txn.state in (State.TRYING, State.PROCEEDING):
                    txn.respond(self._response(msg, exc.status, exc.reason), now)
                else:
                    self._respond_stateless(msg, exc.status, exc.reason, source, transport)

    def _too_large(self, data: bytes, source: Address, transport: str) -> None:
        """513 Message Too Large (RFC 3261 §21.5.14) for a request over the size cap,
        answered statelessly so that nothing keeps its bytes; anything else is dropped."""
        self.counters.oversized += 1
        try:
            msg = parse_message(data, stream=transport not in _MESSAGE_TRANSPORTS)
        except (RemoteProtocolError, UnicodeError, ValueError):
            return
        if isinstance(msg, Request) and msg.method != "ACK":
            msg.source = source
            msg.transport = transport
            try:
                self._respond_stateless(msg, 513, "Message Too Large", source, transport)
            except (RemoteProtocolError, UnicodeError, ValueError):
                pass

    # ----------------------------------------------------------------- helpers
    def _agent(self, name: str, peer: Address | None) -> list[tuple[str, str]]:
        """The ``Server`` / ``User-Agent`` header for a message to ``peer`` (or none:
        the product and version tell an attacker which exploits to try)."""
        if not self.user_agent:
            return []
        hide = self.hide_agent
        if hide is not None and peer is not None and hide(peer[0]):
            return []
        return [(name, self.user_agent)]

    def _response_dest(self, request: Request) -> Address:
        """RFC 3261 §18.2.2 with RFC 3581: received/rport, else sent-by.

        ``maddr`` is ignored: honouring it would let anyone aim our responses (and
        their retransmissions) at a third party, a reflection attack. Responses always
        go back to the address the request came from."""
        source = request.source or ("0.0.0.0", 0)
        if not request.vias or request.transport != "UDP":
            return source
        via = request.vias[0]
        params = via.params
        rport = params.get("rport")
        if "rport" in params:
            if rport and len(rport) <= 5 and rport.isascii() and rport.isdigit():
                port = int(rport)
                if 0 < port < 65536:
                    return (source[0], port)
            return source
        host = params.get("received") or via.host
        return (host.strip("[]"), via.port or 5060)

    def _stamp_via(self, request: Request) -> None:
        """Add received/rport to the top Via so responses copy them (§18.2.1, RFC 3581)."""
        via = request.vias[0]
        src = request.source
        if src is None:
            return
        changed = False
        if "rport" in via.params:
            via.params["rport"] = str(src[1])
            changed = True
        if via.host.strip("[]") != src[0] or "received" in via.params:
            # §18.2.1; a received the peer wrote itself is not an address to trust
            via.params["received"] = src[0]
            changed = True
        if changed:
            lines = request.headers._d["via"]
            first = lines[0]
            comma = _top_element_end(first)
            lines[0] = str(via) + first[comma:]

    def _response(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Response:
        resp = make_response(
            request,
            status,
            reason,
            to_tag=to_tag if status > 100 else None,
            headers=headers,
            body=body,
            content_type=content_type,
        )
        c = self.counters.responses_out
        c[status] = c.get(status, 0) + 1
        return resp

    def _respond_stateless(
        self, request: Request, status: int, reason: str, dest: Address, transport: str
    ) -> None:
        if "via" not in request.headers or "cseq" not in request.headers:
            # Without a Via and a CSeq the peer could not match a response to its
            # transaction (§17.1.3): drop it (counted as a parse error) rather than
            # reflect junk at whatever address sent it.
            return
        if request.vias:
            self._stamp_via(request)
            dest = self._response_dest(request)
        resp = self._response(request, status, reason, to_tag=new_tag() if status >= 200 else None)
        self._send(resp.to_bytes(), dest, transport)

    def _reply(
        self, request: Request, status: int, now: float, reason: str | None = None, **kw: Any
    ) -> None:
        """Answer a new request through a fresh server transaction."""
        txn = self.transactions.create_server(request, self._response_dest(request))
        to_tag = kw.pop("to_tag", None) or (request.to_tag or new_tag())
        txn.respond(self._response(request, status, reason, to_tag=to_tag, **kw), now)

    def _admit(self, now: float) -> bool:
        if self.draining or self.shedding or len(self.sessions) >= self.max_calls:
            return False
        if self.max_cps > 0:
            # token bucket: max_cps tokens per second, burst of one second
            self._bucket = min(self.max_cps, self._bucket + (now - self._bucket_at) * self.max_cps)
            self._bucket_at = now
            if self._bucket < 1.0:
                return False
            self._bucket -= 1.0
        return True

    # --------------------------------------------------------------- requests
    def _on_request(self, req: Request, local: Address, now: float) -> None:
        self._stamp_via(req)
        # From and To are read to match transactions (RFC 2543 peers) and dialogs, and
        # copied into every answer: a fault in them is a 400 naming the header, now,
        # before any transaction or dialog exists (RFC 4475 §3.1.2.6, §3.1.2.14-15).
        _ = req.from_, req.to
        method = req.method
        txn = self.transactions.match_server(req)
        if txn is not None:
            txn.on_retransmission(req, now)
            if (
                method == "ACK"
                and txn.invite
                and txn.context is not None
                and txn.final_status >= 300
            ):
                pass  # ACK for a non-2xx: absorbed by the transaction
            return
        if method == "ACK":
            self._on_ack(req, now)
            return
        if method == "CANCEL":
            self._on_cancel(req, now)
            return
        to_tag = req.to_tag
        # §8.2.1 method inspection
        if method not in ALLOWED:
            status = 405 if method in KNOWN_NOT_ALLOWED else 501
            self._reply(req, status, now, headers=[("Allow", self._allow)])
            return
        if req.cseq_method != method:
            self._reply(req, 400, now, "Bad Request - CSeq method does not match the request")
            return
        scheme = req.uri.scheme
        if scheme not in ("sip", "sips", "tel"):
            self._reply(req, 416, now)
            return
        # §8.2.2.3 Require
        unsupported = [
            t for t in req.headers.get_list("require") if t and t.lower() not in SUPPORTED
        ]
        if unsupported:
            self._reply(req, 420, now, headers=[("Unsupported", ", ".join(unsupported))])
            return
        # §8.2.2.2 merged requests
        mkey = (req.call_id, req.from_tag or "", req.cseq)
        if method == "INVITE" and not to_tag:
            branch = self._merged.get(mkey)
            if branch is not None and branch != req.branch:
                self._reply(req, 482, now)
                return
        # §8.2.3 content processing
        if req.body:
            ctype = req.content_type
            if (method in _SDP_METHODS and ctype != SDP) or (
                method == "INFO" and ctype not in _INFO_TYPES
            ):
                self._reply(req, 415, now, headers=[("Accept", _ACCEPT_VALUE)])
                return
            if req.headers.get("content-encoding") not in (None, "identity"):
                self._reply(req, 415, now, headers=[("Accept-Encoding", "identity")])
                return
        if to_tag:
            self._in_dialog(req, now)
            return
        if method in ("INVITE", "OPTIONS") and "accept" in req.headers:
            accepted = {a.partition(";")[0].strip().lower() for a in req.headers.get_list("accept")}
            if accepted and not accepted & {SDP, "application/*", "*/*"}:
                self._reply(
                    req,
                    406,
                    now,
                    headers=[
                        (
                            "Warning",
                            f'304 {self.user_agent.split("/")[0] or "-"} "Media type not available"',
                        )
                    ],
                )
                return
        if method == "INVITE":
            self._new_invite(req, local, mkey, now)
        elif method == "OPTIONS" and self.draining:
            # a load balancer's probe takes a draining node out of rotation
            self._reply(req, 503, now, headers=[("Retry-After", str(self.retry_after))])
        elif method == "OPTIONS":
            self._reply(
                req,
                200,
                now,
                headers=[
                    ("Allow", self._allow),
                    ("Accept", _ACCEPT_VALUE),
                    ("Supported", _SUPPORTED_VALUE),
                    *self._agent("Server", req.source),
                ],
            )
        elif method == "REGISTER":
            _ = req.contacts  # malformed Contact -> 400 (RFC 4475 §3.1.2.13)
            resp = self.app.on_register(req, now)
            if resp is None:
                self._reply(req, 405, now, headers=[("Allow", self._allow)])
            else:
                txn = self.transactions.create_server(req, self._response_dest(req))
                c = self.counters.responses_out
                c[resp.status] = c.get(resp.status, 0) + 1
                txn.respond(resp, now)
        else:
            # BYE, INFO, UPDATE outside a dialog
            self._reply(req, 481, now)

    def _new_invite(
        self, req: Request, local: Address, mkey: tuple[str, str, int], now: float
    ) -> None:
        # What the answer copies or the dialog keeps (§12.1.1): a malformed Contact or
        # Record-Route is a 400 naming it now, not a failure when the call is answered.
        _ = req.contacts
        req.routes("record-route")
        txn = self.transactions.create_server(req, self._response_dest(req))
        if not self._admit(now):
            self.counters.rejected_overload += 1
            txn.respond(
                self._response(
                    req, 503, to_tag=new_tag(), headers=[("Retry-After", str(self.retry_after))]
                ),
                now,
            )
            return
        if self.admission is not None:
            refused = self.admission.admit_call(req, now)
            if refused is not None:
                txn.respond(
                    self._response(
                        req,
                        503,
                        refused,
                        to_tag=new_tag(),
                        headers=[("Retry-After", str(self.retry_after))],
                    ),
                    now,
                )
                return
        session = InviteSession(self, "uas", req, local, req.transport)
        session.server_txn = txn
        session.started_at = now
        session.dest = txn.dest
        txn.context = session
        self._merged[mkey] = req.branch
        self.sessions[req.call_id + session.local_tag] = session
        txn.respond(self._response(req, 100), now)
        self.app.on_incoming_call(session, now)

    def _on_ack(self, req: Request, now: float) -> None:
        session = self.dialogs.get((req.call_id, req.to_tag or "", req.from_tag or ""))
        if session is None or session.role != "uas":
            self.counters.dropped_acks += 1
            return
        if session._reinvite_in is not None and session._reinvite_in.final_status < 300:
            session._reinvite_in = None
            self._stop_ok(session)
            return
        if session.state is SessionState.ANSWERED:
            self._stop_ok(session)
            session.state = SessionState.CONFIRMED
            if req.body:
                session.remote_sdp = req.body
            if session._pending_bye is not None:
                cause = session._pending_bye
                session._pending_bye = None
                self._send_bye(session, cause, now)
                return
            self.app.on_call_confirmed(session, now)

    def _on_cancel(self, req: Request, now: float) -> None:
        """§9.2: 200 to the CANCEL; 487 to the INVITE if it has no final response yet."""
        inv = self.transactions.find_invite_for_cancel(req)
        if inv is None:
            self._reply(req, 481, now)
            return
        session = inv.context
        to_tag = session.local_tag if isinstance(session, InviteSession) else new_tag()
        self._reply(req, 200, now, to_tag=to_tag)
        if inv.state is State.PROCEEDING and isinstance(session, InviteSession):
            inv.respond(self._response(inv.request, 487, to_tag=session.local_tag), now)
            session.final_status = 487
            self._end(session, "cancelled", reason_cause(req) or 487, now)

    def _in_dialog(self, req: Request, now: float) -> None:
        session = self.dialogs.get((req.call_id, req.to_tag or "", req.from_tag or ""))
        if session is None or session.dialog is None:
            self._reply(req, 481, now)
            return
        dialog = session.dialog
        if not dialog.check_remote_cseq(req):
            self._reply(req, 500, now, "Server Internal Error - CSeq out of order")
            return
        method = req.method
        if method == "BYE":
            self._reply(req, 200, now, to_tag=dialog.local_tag)
            self._end(session, "remote_bye", reason_cause(req) or 16, now)
        elif method == "INVITE":
            # re-INVITE (§14.2): glare with our own pending re-INVITE -> 491
            if session._reinvite_out is not None or session._reinvite_in is not None:
                self._reply(req, 491, now, to_tag=dialog.local_tag)
                return
            if session.state is SessionState.ANSWERED:
                self._reply(req, 500, now, to_tag=dialog.local_tag, headers=[("Retry-After", "1")])
                return
            txn = self.transactions.create_server(req, self._response_dest(req))
            txn.context = session
            answer = self.app.on_reoffer(session, req.body) if req.body else session.local_sdp
            if answer is None:
                txn.respond(self._response(req, 488, to_tag=dialog.local_tag), now)
                return
            dialog.refresh_target(req)
            if req.body:
                session.remote_sdp = req.body
            session.local_sdp = answer
            session._reinvite_in = txn
            ok = self._response(
                req,
                200,
                to_tag=dialog.local_tag,
                headers=[
                    ("Contact", session.contact),
                    ("Allow", self._allow),
                    ("Supported", _SUPPORTED_VALUE),
                ],
                body=answer,
                content_type=SDP,
            )
            txn.respond(ok, now)
            self._start_ok(session, ok.to_bytes(), txn.dest, now, reinvite=True)
        elif method == "UPDATE":
            answer = self.app.on_reoffer(session, req.body) if req.body else None
            if req.body and answer is None:
                self._reply(req, 488, now, to_tag=dialog.local_tag)
                return
            dialog.refresh_target(req)
            if req.body:
                session.remote_sdp = req.body
                session.local_sdp = answer
            self._reply(
                req,
                200,
                now,
                to_tag=dialog.local_tag,
                headers=[("Contact", session.contact)],
                body=answer or b"",
                content_type=SDP if answer else None,
            )
        elif method == "INFO":
            self._reply(req, 200, now, to_tag=dialog.local_tag)
            self.app.on_info(session, req)
        elif method == "OPTIONS":
            self._reply(req, 200, now, to_tag=dialog.local_tag, headers=[("Allow", self._allow)])
        else:
            self._reply(req, 405, now, headers=[("Allow", self._allow)])

    # ------------------------------------------------------------- UAS commands
    def _contact(self, session: InviteSession) -> str:
        host, port = session.local_addr
        if ":" in host:
            host = f"[{host}]"
        t = "" if session.transport == "UDP" else f";transport={session.transport.lower()}"
        return f"<sip:{host}:{port}{t}>"

    def provisional(
        self, session: InviteSession, now: float, status: int = 180, sdp: bytes | None = None
    ) -> None:
        txn = session.server_txn
        if txn is None or txn.state is not State.PROCEEDING:
            return
        if session.dialog is None:
            self._make_uas_dialog(session)
        headers = [("Contact", session.contact), *_record_route(session.invite)]
        resp = self._response(
            session.invite,
            status,
            to_tag=session.local_tag,
            headers=headers,
            body=sdp or b"",
            content_type=SDP if sdp else None,
        )
        txn.respond(resp, now)

    def _make_uas_dialog(self, session: InviteSession) -> None:
        session.contact = self._contact(session)
        dialog = Dialog.from_uas(session.invite, session.local_tag, session.local_addr)
        session.dialog = dialog
        self.dialogs[dialog.key] = session

    def answer(
        self,
        session: InviteSession,
        sdp: bytes,
        now: float,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """Send 200 OK with our SDP answer and retransmit it until ACK (§13.3.1.4)."""
        txn = session.server_txn
        if txn is None or txn.state is not State.PROCEEDING:
            return
        if session.dialog is None:
            self._make_uas_dialog(session)
        session.local_sdp = sdp
        hdrs = [
            ("Contact", session.contact),
            *_record_route(session.invite),
            ("Allow", self._allow),
            ("Supported", _SUPPORTED_VALUE),
            *self._agent("Server", session.dest),
        ]
        if headers:
            hdrs.extend(headers)
        ok = self._response(
            session.invite, 200, to_tag=session.local_tag, headers=hdrs, body=sdp, content_type=SDP
        )
        txn.respond(ok, now)
        session.final_status = 200
        session.state = SessionState.ANSWERED
        assert session.dialog is not None
        session.dialog.state = DialogState.CONFIRMED
        self._start_ok(session, txn.last_response or ok.to_bytes(), txn.dest, now)

    def _start_ok(
        self, session: InviteSession, data: bytes, dest: Address, now: float, reinvite: bool = False
    ) -> None:
        session._ok_bytes = data
        session._ok_interval = T1
        if session.transport == "UDP":
            session._ok_timer = self.timers.schedule(
                now + T1, self._retransmit_ok, session, now + 64 * T1
            )
        else:
            session._ok_timer = self.timers.schedule(
                now + 64 * T1, self._retransmit_ok, session, now + 64 * T1
            )

    def _retransmit_ok(self, now: float, session: InviteSession, give_up: float) -> None:
        if session._ok_bytes is None:
            return
        if now >= give_up:
            # §13.3.1.4: no ACK within 64*T1 -> end the dialog with BYE
            session._ok_bytes = None
            if session._reinvite_in is not None:
                session._reinvite_in = None
                return
            session.state = SessionState.CONFIRMED
            self._send_bye(session, 102, now)  # cause 102: recovery on timer expiry
            return
        self._send(session._ok_bytes, session.dest, session.transport)
        self.transactions.retransmissions_out += 1
        session._ok_interval = min(2 * session._ok_interval, T2)
        session._ok_timer = self.timers.schedule(
            min(now + session._ok_interval, give_up), self._retransmit_ok, session, give_up
        )

    def _stop_ok(self, session: InviteSession) -> None:
        session._ok_bytes = None
        if session._ok_timer is not None:
            session._ok_timer.cancel()
            session._ok_timer = None

    def reject(
        self,
        session: InviteSession,
        status: int,
        now: float,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        txn = session.server_txn
        if txn is None or txn.state is not State.PROCEEDING:
            return
        txn.respond(
            self._response(
                session.invite, status, reason, to_tag=session.local_tag, headers=headers
            ),
            now,
        )
        session.final_status = status
        self._end(session, "rejected", 0, now, notify=True)

    def hangup(
        self, session: InviteSession, now: float, cause: int = 16, status: int = 480
    ) -> None:
        """End the call from our side whatever its state: BYE, CANCEL or a final response."""
        state = session.state
        if state is SessionState.TERMINATED:
            return
        if session.role == "uas":
            if state is SessionState.EARLY:
                self.reject(session, status, now, headers=[("Reason", f"Q.850;cause={cause}")])
            elif state is SessionState.ANSWERED:
                # §15: BYE only after the ACK (or its timeout); the first hangup's cause
                # is the one sent (a later one, e.g. the handler's end, changes nothing)
                if session._pending_bye is None:
                    session._pending_bye = cause
            else:
                self._send_bye(session, cause, now)
        else:
            if state in (SessionState.CALLING, SessionState.EARLY):
                self.cancel(session, now, cause)
            else:
                self._send_bye(session, cause, now)

    def _send_bye(self, session: InviteSession, cause: int, now: float) -> None:
        dialog = session.dialog
        if dialog is None:
            self._end(session, "local_hangup", cause, now)
            return
        req = dialog.create_request(
            "BYE",
            via_host=_host_port(session.local_addr),
            extra=[("Reason", f"Q.850;cause={cause}"), *self._agent("User-Agent", session.dest)],
        )
        txn = self.transactions.start_client(req, dialog.next_hop(), dialog.transport, now)
        txn.context = ("bye", session)
        self._count_out(req)
        self._end(session, "local_hangup", cause, now)

    def send_info(self, session: InviteSession, body: bytes, content_type: str, now: float) -> None:
        dialog = session.dialog
        if dialog is None or session.state is SessionState.TERMINATED:
            return
        req = dialog.create_request(
            "INFO", via_host=_host_port(session.local_addr), body=body, content_type=content_type
        )
        txn = self.transactions.start_client(req, dialog.next_hop(), dialog.transport, now)
        txn.context = ("info", session)
        self._count_out(req)

    def reinvite(self, session: InviteSession, sdp: bytes, now: float) -> bool:
        """Send a re-INVITE with a new offer (hold/unhold). False if one is pending (§14.1)."""
        dialog = session.dialog
        if dialog is None or session.state is not SessionState.CONFIRMED:
            return False
        if session._reinvite_out is not None or session._reinvite_in is not None:
            return False
        req = dialog.create_request(
            "INVITE",
            via_host=_host_port(session.local_addr),
            body=sdp,
            content_type=SDP,
            extra=[("Contact", session.contact), ("Allow", self._allow)],
        )
        session.local_sdp = sdp
        txn = self.transactions.start_client(req, dialog.next_hop(), dialog.transport, now)
        txn.context = ("reinvite", session)
        session._reinvite_out = txn
        self._count_out(req)
        return True

    # ------------------------------------------------------------- UAC commands
    def invite(
        self,
        target: URI | str,
        now: float,
        *,
        dest: Address,
        local: Address,
        sdp: bytes,
        from_uri: str,
        from_display: str | None = None,
        to_uri: str | None = None,
        transport: str = "UDP",
        headers: list[tuple[str, str]] | None = None,
        credentials: tuple[str, str] | None = None,
        call_id: str | None = None,
        defer: bool = False,
    ) -> InviteSession:
        """Place a call: INVITE to ``target`` via ``dest`` (an address, already resolved).

        With ``defer`` the INVITE is built but not sent: :meth:`send_invite` sends it
        with the SDP offer once the caller has opened its media."""
        uri = parse_uri(target, where="target") if isinstance(target, str) else target
        req = Request("INVITE", uri)
        h = req.headers
        tag = new_tag()
        h.set("Via", f"SIP/2.0/{transport} {_host_port(local)};branch={new_branch()};rport")
        h.set("Max-Forwards", "70")
        disp = f'"{from_display}" ' if from_display else ""
        h.set("From", f"{disp}<{from_uri}>;tag={tag}")
        h.set("To", f"<{to_uri or uri}>")
        cid = call_id or self.new_call_id(local[0])
        h.set("Call-ID", cid)
        h.set("CSeq", "1 INVITE")
        t = "" if transport == "UDP" else f";transport={transport.lower()}"
        contact = f"<sip:{_host_port(local)}{t}>"
        h.set("Contact", contact)
        h.set("Allow", self._allow)
        h.set("Supported", _SUPPORTED_VALUE)
        for name, value in self._agent("User-Agent", dest):
            h.set(name, value)
        if headers:
            for name, value in headers:
                h.add(name, value)
        h.set("Content-Type", SDP)
        req.body = sdp
        req = _reparse(req)
        req.transport = transport
        session = InviteSession(self, "uac", req, local, transport)
        session.local_tag = tag
        session.local_sdp = sdp
        session.dest = dest
        session.contact = contact
        session.credentials = credentials
        session.started_at = now
        self.sessions[cid + tag] = session
        if not defer:
            self._start_invite(session, req, now)
        return session

    def send_invite(self, session: InviteSession, sdp: bytes, now: float) -> None:
        """Send a deferred INVITE with its SDP offer."""
        inv = session.invite
        req = Request("INVITE", inv.uri, inv.headers.copy(), sdp)
        req = _reparse(req)
        req.transport = session.transport
        session.local_sdp = sdp
        self._start_invite(session, req, now)

    def _start_invite(self, session: InviteSession, req: Request, now: float) -> None:
        session.invite = req
        txn = self.transactions.start_client(req, session.dest, session.transport, now)
        txn.context = ("invite", session)
        session.client_txn = txn
        self._count_out(req)

    def send_options(
        self,
        target: URI | str,
        now: float,
        *,
        dest: Address,
        local: Address,
        on_result: Callable[[Response | None, float], None],
        transport: str = "UDP",
    ) -> None:
        """Send an out-of-dialog OPTIONS (RFC 3261 §11), e.g. a trunk health probe.

        ``on_result`` gets the final response, or ``None`` when Timer F fired or the
        transport failed (§17.1.4)."""
        uri = parse_uri(target, where="target") if isinstance(target, str) else target
        req = Request("OPTIONS", uri)
        h = req.headers
        h.set("Via", f"SIP/2.0/{transport} {_host_port(local)};branch={new_branch()};rport")
        h.set("Max-Forwards", "70")
        h.set("From", f"<sip:ping@{_host_port(local)}>;tag={new_tag()}")
        h.set("To", f"<{uri}>")
        h.set("Call-ID", self.new_call_id(local[0]))
        h.set("CSeq", "1 OPTIONS")
        h.set("Accept", SDP)
        for name, value in self._agent("User-Agent", dest):
            h.set(name, value)
        req = _reparse(req)
        req.transport = transport
        txn = self.transactions.start_client(req, dest, transport, now)
        txn.context = ("options", on_result)
        self._count_out(req)

    def cancel(self, session: InviteSession, now: float, cause: int = 16) -> None:
        """§9.1: CANCEL once a provisional response has arrived; before that, remember."""
        txn = session.client_txn
        if (
            session.role != "uac"
            or txn is None
            or session.state not in (SessionState.CALLING, SessionState.EARLY)
        ):
            return
        if txn.state is State.CALLING:
            session._pending_cancel = True
            session.end_cause = cause
            return
        inv = session.invite
        req = Request("CANCEL", inv.uri)
        h = req.headers
        h.set("Via", inv.headers.get_all("via")[0])
        h.set("Max-Forwards", "70")
        for name in ("from", "to", "call-id"):
            v = inv.headers.get(name)
            if v is not None:
                h.set(name, v)
        h.set("CSeq", f"{inv.cseq} CANCEL")
        routes = inv.headers.get_all("route")
        if routes:
            h.set_all("Route", routes)
        h.set("Reason", f"Q.850;cause={cause}")
        req = _reparse(req)
        ctx = self.transactions.start_client(req, session.dest, session.transport, now)
        ctx.context = ("cancel", session)
        session.end_cause = cause
        session._cancelled = True
        self._count_out(req)

    def _count_out(self, req: Request) -> None:
        c = self.counters.requests_out
        c[req.method] = c.get(req.method, 0) + 1

    # --------------------------------------------------------------- responses
    def _on_response(self, resp: Response, now: float) -> None:
        txn = self.transactions.match_response(resp)
        if txn is None:
            # a retransmitted 2xx after the INVITE transaction ended: re-ACK (§13.2.2.4)
            if resp.cseq_method == "INVITE" and 200 <= resp.status < 300:
                session = self.dialogs.get((resp.call_id, resp.from_tag or "", resp.to_tag or ""))
                if (
                    session is not None
                    and session._ack_bytes is not None
                    and session.dialog is not None
                ):
                    self._send(session._ack_bytes, session.dialog.next_hop(), session.transport)
                    return
            self.counters.dropped_responses += 1
            return
        txn.on_response(resp, now)

    def on_response(self, txn: ClientTransaction, resp: Response, now: float) -> None:
        """TransactionUser: a client transaction's response."""
        ctx = txn.context
        if not isinstance(ctx, tuple):
            return
        kind, session = ctx
        if kind == "invite":
            self._on_invite_response(session, txn, resp, now)
        elif kind == "reinvite":
            if resp.status >= 200:
                session._reinvite_out = None
                if resp.status < 300 and session.dialog is not None:
                    session.dialog.refresh_target(resp)
                    session.remote_sdp = resp.body or session.remote_sdp
                    ack = session.dialog.create_request(
                        "ACK", via_host=_host_port(session.local_addr), cseq=txn.request.cseq
                    )
                    self._send(ack.to_bytes(), session.dialog.next_hop(), session.transport)
                    if resp.body:
                        self.app.on_reoffer(session, resp.body)
        elif kind == "options" and resp.status >= 200:
            session(resp, now)  # out-of-dialog OPTIONS: the caller's callback
        # BYE / INFO / CANCEL responses need no action

    def _on_invite_response(
        self, session: InviteSession, txn: ClientTransaction, resp: Response, now: float
    ) -> None:
        status = resp.status
        if session.state is SessionState.TERMINATED:
            if 200 <= status < 300:
                # answered after we gave up (CANCEL race, §9.1): ACK then BYE
                dialog = Dialog.from_uac(session.invite, resp, session.dest, session.local_addr)
                ack = dialog.create_request(
                    "ACK", via_host=_host_port(session.local_addr), cseq=session.invite.cseq
                )
                self._send(ack.to_bytes(), dialog.next_hop(), session.transport)
                bye = dialog.create_request("BYE", via_host=_host_port(session.local_addr))
                self.transactions.start_client(bye, dialog.next_hop(), dialog.transport, now)
            return
        if status < 200:
            if status > 100:
                session.state = SessionState.EARLY
                if resp.body:
                    session.remote_sdp = resp.body
                self.app.on_progress(session, resp, now)
            if session._pending_cancel:
                session._pending_cancel = False
                self.cancel(session, now, session.end_cause or 16)
            return
        if status < 300:
            if session.dialog is None:
                dialog = Dialog.from_uac(session.invite, resp, session.dest, session.local_addr)
                dialog.state = DialogState.CONFIRMED
                session.dialog = dialog
                self.dialogs[dialog.key] = session
            dialog = session.dialog
            if session.state is SessionState.CONFIRMED and session._ack_bytes is not None:
                # a retransmitted 2xx: the same ACK again (§13.2.2.4)
                self._send(session._ack_bytes, dialog.next_hop(), session.transport)
                return
            ack = dialog.create_request(
                "ACK", via_host=_host_port(session.local_addr), cseq=session.invite.cseq
            )
            session._ack_bytes = ack.to_bytes()
            self._send(session._ack_bytes, dialog.next_hop(), session.transport)
            session.state = SessionState.CONFIRMED
            session.final_status = status
            session.remote_sdp = resp.body or session.remote_sdp
            if session._pending_cancel or session._cancelled:
                # the 2xx crossed our CANCEL (§9.1): confirm, then end it at once
                self._send_bye(session, session.end_cause or 16, now)
                return
            self.app.on_answered(session, resp, now)
            return
        # non-2xx final
        if status in (401, 407) and session.credentials and not session._auth_tried:
            if self._retry_with_auth(session, resp, now):
                return
        session.final_status = status
        self._end(session, "failed", reason_cause(resp) or 0, now, notify=False)
        self.app.on_failed(session, status, resp, now)

    def _retry_with_auth(self, session: InviteSession, resp: Response, now: float) -> bool:
        """Resend the INVITE with digest credentials (§22.2, RFC 7616), once."""
        assert session.credentials is not None
        header = "www-authenticate" if resp.status == 401 else "proxy-authenticate"
        challenge = resp.headers.get(header)
        if challenge is None:
            return False
        from .auth import DigestClient

        client = DigestClient(*session.credentials)
        inv = session.invite
        try:
            value = client.authorize("INVITE", str(inv.uri), challenge, body=inv.body)
        except ValueError:
            return False
        session._auth_tried = True
        req = Request("INVITE", inv.uri, inv.headers.copy(), inv.body)
        h = req.headers
        via = h.get_all("via")[0]
        h.set("Via", via.split(";branch=")[0] + f";branch={new_branch()};rport")
        h.set("CSeq", f"{inv.cseq + 1} INVITE")
        h.set("Authorization" if resp.status == 401 else "Proxy-Authorization", value)
        req = _reparse(req)
        req.transport = session.transport
        self._start_invite(session, req, now)
        return True

    def on_timeout(self, txn: ClientTransaction | ServerTransaction, now: float) -> None:
        """TransactionUser: Timer B/F (client) or H (server) fired, or a transport error."""
        if isinstance(txn, ServerTransaction):
            return
        ctx = txn.context
        if not isinstance(ctx, tuple):
            return
        kind, session = ctx
        if kind == "invite" and session.state in (SessionState.CALLING, SessionState.EARLY):
            session.final_status = 408
            self._end(session, "timeout", 102, now, notify=False)
            self.app.on_failed(session, 408, None, now)
        elif kind == "reinvite":
            session._reinvite_out = None
        elif kind == "options":
            session(None, now)

    def on_terminated(self, txn: ClientTransaction | ServerTransaction) -> None:
        if isinstance(txn, ServerTransaction) and txn.invite:
            req = txn.request
            self._merged.pop((req.call_id, req.from_tag or "", req.cseq), None)

    # ----------------------------------------------------------------- ending
    def _end(
        self, session: InviteSession, reason: str, cause: int, now: float, notify: bool = True
    ) -> None:
        if session.state is SessionState.TERMINATED:
            return
        session.state = SessionState.TERMINATED
        session.end_cause = cause
        self._stop_ok(session)
        self.sessions.pop(session.call_id + session.local_tag, None)
        if self.admission is not None and session.role == "uas":
            self.admission.release_call(session.invite)
        if session.dialog is not None:
            session.dialog.state = DialogState.TERMINATED
            # keep the dialog reachable for a while: late ACK / retransmitted BYE get answers
            self.timers.schedule(now + 32.0, self._forget_dialog, session)
        if notify:
            self.app.on_call_ended(session, reason, cause, now)

    def _forget_dialog(self, now: float, session: InviteSession) -> None:
        if session.dialog is not None and self.dialogs.get(session.dialog.key) is session:
            del self.dialogs[session.dialog.key]


def _record_route(request: Request) -> list[tuple[str, str]]:
    """Record-Route copied, in order, into responses that create a dialog (§12.1.1)."""
    return [("Record-Route", v) for v in request.headers.get_all("record-route")]


def _host_port(addr: Address) -> str:
    host, port = addr
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def _top_element_end(line: str) -> int:
    """Index of the comma ending the first element of a Via line, or len(line)."""
    in_quote = False
    for i, ch in enumerate(line):
        if ch == '"':
            in_quote = not in_quote
        elif ch == "," and not in_quote:
            return i
    return len(line)


def _reparse(req: Request) -> Request:
    """Fill the routing fields of a request we built (parse of our own bytes)."""
    msg = parse_message(req.to_bytes())
    assert isinstance(msg, Request)
    return msg


def _random_call_id(host: str) -> str:
    return f"{secrets.token_hex(12)}@{host}"
