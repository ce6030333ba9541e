"""SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state), sans-IO.

Theory of operation
-------------------
A :class:`TransactionLayer` owns every transaction of one user agent and the one
:class:`TimerHeap` that drives their Timers A-M. It is fed requests and responses that
the transport already parsed, plus ``now``; it hands bytes to send to the ``send``
callable it was built with and reports to its transaction user (the ``tu``) through
plain method calls:

* ``tu.on_response(txn, response, now)`` for a client transaction's responses
  (provisional and final, each once: retransmissions are absorbed here),
* ``tu.on_timeout(txn, now)`` when Timer B/F fires (or H for a server INVITE),
* ``tu.on_terminated(txn)`` when a transaction is gone.

Server transactions are matched by (branch, sent-by, method) (§17.2.3), with ACK
matching its INVITE and CANCEL kept apart; client transactions by (branch, method)
(§17.1.3). A retransmitted request is answered with the last response sent and never
reaches the transaction user a second time. Over reliable transports (TCP, TLS) the
retransmission timers A, E and G are not started and the wait timers D, I, J and K are 0.

2xx responses to INVITE are retransmitted by the UAS core, not here (§13.3.1.4): the
server transaction moves to Accepted (RFC 6026 §8.7) and absorbs INVITE retransmissions
until Timer L.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from typing import Protocol

from .headers import BRANCH_COOKIE
from .message import Request, Response
from .timers import T1, T2, T4, TIMER_D, Timer, TimerHeap

Address = tuple[str, int]
SendFn = Callable[[bytes, Address, str], None]
ServerKey = tuple[object, ...]


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class TransactionUser(Protocol):
    def on_response(self, txn: ClientTransaction, response: Response, now: float) -> None: ...
    def on_timeout(self, txn: ClientTransaction | ServerTransaction, now: float) -> None: ...
    def on_terminated(self, txn: ClientTransaction | ServerTransaction) -> None: ...


def new_branch() -> str:
    return BRANCH_COOKIE + secrets.token_hex(8)


def is_reliable(transport: str) -> bool:
    return transport != "UDP"


def server_key(request: Request) -> ServerKey:
    """RFC 3261 §17.2.3 matching key (ACK maps to its INVITE's transaction).

    The sent-by is compared as (host, port): the same test as comparing the text."""
    via = request.vias[0]
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.params.get("branch") or ""
    if branch.startswith(BRANCH_COOKIE):
        return (branch, via.host, via.port, method)
    # RFC 2543 peers: no usable branch, match on the dialog-ish identifiers (§17.2.3).
    return (
        "2543",
        request.call_id,
        request.from_tag or "",
        str(request.cseq),
        via.host,
        via.port,
        method,
        request.uri_text,
    )


class ServerTransaction:
    """A server transaction (INVITE or non-INVITE: ``invite`` tells which)."""

    __slots__ = (
        "layer",
        "key",
        "request",
        "invite",
        "state",
        "last_response",
        "final_status",
        "dest",
        "transport",
        "_retransmit",
        "_interval",
        "_wait",
        "context",
    )

    def __init__(
        self, layer: TransactionLayer, key: ServerKey, request: Request, dest: Address
    ) -> None:
        self.layer = layer
        self.key = key
        self.request = request
        self.invite = request.method == "INVITE"
        self.state = State.PROCEEDING if self.invite else State.TRYING
        self.last_response: bytes | None = None
        self.final_status = 0
        self.dest = dest
        self.transport = request.transport
        self._retransmit: Timer | None = None
        self._wait: Timer | None = None
        self._interval = T1
        self.context: object = None  # the TU's object for this transaction (call, dialog)

    def on_retransmission(self, request: Request, now: float) -> None:
        """A request that matched this transaction (§17.2.1, §17.2.2)."""
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                if self._retransmit:
                    self._retransmit.cancel()
                if self._wait:
                    self._wait.cancel()
                # Timer I (§17.2.1)
                wait = 0.0 if is_reliable(self.transport) else T4
                self._wait = self.layer.timers.schedule(now + wait, self._terminate)
            return
        self.layer.retransmissions_in += 1
        if self.last_response is not None and self.state is not State.TRYING:
            self.layer.send(self.last_response, self.dest, self.transport)

    def respond(self, response: Response, now: float) -> None:
        """Send a response; the transaction follows it into its next state."""
        if self.state in (State.COMPLETED, State.CONFIRMED, State.TERMINATED, State.ACCEPTED):
            return
        data = response.to_bytes()
        self.last_response = data
        status = response.status
        self.layer.send(data, self.dest, self.transport)
        if status < 200:
            self.state = State.PROCEEDING
            return
        self.final_status = status
        timers = self.layer.timers
        if self.invite:
            if status < 300:
                # RFC 6026 §8.7: Accepted, Timer L = 64*T1; the UAS core retransmits the 2xx.
                self.state = State.ACCEPTED
                self._wait = timers.schedule(now + 64 * T1, self._terminate)
            else:
                self.state = State.COMPLETED
                if not is_reliable(self.transport):
                    self._interval = T1
                    self._retransmit = timers.schedule(now + T1, self._timer_g)
                self._wait = timers.schedule(now + 64 * T1, self._timer_h)
        else:
            self.state = State.COMPLETED
            # Timer J (§17.2.2)
            wait = 0.0 if is_reliable(self.transport) else 64 * T1
            self._wait = timers.schedule(now + wait, self._terminate)

    def _timer_g(self, now: float) -> None:
        if self.state is not State.COMPLETED or self.last_response is None:
            return
        self.layer.send(self.last_response, self.dest, self.transport)
        self.layer.retransmissions_out += 1
        self._interval = min(2 * self._interval, T2)
        self._retransmit = self.layer.timers.schedule(now + self._interval, self._timer_g)

    def _timer_h(self, now: float) -> None:
        # No ACK for our non-2xx final response (§17.2.1).
        if self._retransmit:
            self._retransmit.cancel()
        self.layer.timeouts += 1
        self.layer.tu.on_timeout(self, now)
        self._terminate(now)

    def _terminate(self, now: float) -> None:
        if self.state is State.TERMINATED:
            return
        self.state = State.TERMINATED
        if self._retransmit:
            self._retransmit.cancel()
        if self._wait:
            self._wait.cancel()
        self.layer._remove_server(self)


class ClientTransaction:
    """A client transaction (INVITE or non-INVITE)."""

    __slots__ = (
        "layer",
        "key",
        "request",
        "data",
        "invite",
        "state",
        "dest",
        "transport",
        "branch",
        "_retransmit",
        "_timeout",
        "_interval",
        "_ack",
        "context",
        "last_status",
    )

    def __init__(
        self, layer: TransactionLayer, request: Request, dest: Address, transport: str
    ) -> None:
        self.layer = layer
        self.request = request
        self.branch = request.vias[0].branch or ""
        self.key = (self.branch, request.method)
        self.invite = request.method == "INVITE"
        self.state = State.CALLING if self.invite else State.TRYING
        self.dest = dest
        self.transport = transport
        self.data = request.to_bytes()
        self._retransmit: Timer | None = None
        self._timeout: Timer | None = None
        self._interval = T1
        self._ack: bytes | None = None
        self.context: object = None
        self.last_status = 0

    def start(self, now: float) -> None:
        timers = self.layer.timers
        self.layer.send(self.data, self.dest, self.transport)
        if not is_reliable(self.transport):
            # Timer A (INVITE) / Timer E (non-INVITE)
            self._retransmit = timers.schedule(now + T1, self._retransmit_request)
        # Timer B / Timer F
        self._timeout = timers.schedule(now + 64 * T1, self._timed_out)

    def _retransmit_request(self, now: float) -> None:
        if self.state not in (State.CALLING, State.TRYING, State.PROCEEDING):
            return
        if self.invite and self.state is State.PROCEEDING:
            return  # Timer A stops on a provisional response (§17.1.1.2)
        self.layer.send(self.data, self.dest, self.transport)
        self.layer.retransmissions_out += 1
        if self.invite:
            self._interval = 2 * self._interval
        elif self.state is State.PROCEEDING:
            self._interval = T2
        else:
            self._interval = min(2 * self._interval, T2)
        self._retransmit = self.layer.timers.schedule(
            now + self._interval, self._retransmit_request
        )

    def _timed_out(self, now: float) -> None:
        # Timer B matters only while Calling (§17.1.1.2): a ringing call waits as long
        # as the callee rings. Timer F covers Trying and Proceeding (§17.1.2.2).
        live = (State.CALLING,) if self.invite else (State.TRYING, State.PROCEEDING)
        if self.state in live:
            self.layer.timeouts += 1
            self._finish()
            self.layer.tu.on_timeout(self, now)
            self.context = None

    def transport_error(self, now: float) -> None:
        """The transport could not send (§17.1.4): report it as a timeout would be."""
        if self.state in (State.CALLING, State.TRYING, State.PROCEEDING):
            self._finish()
            self.layer.tu.on_timeout(self, now)
            self.context = None

    def on_response(self, response: Response, now: float) -> None:
        status = response.status
        state = self.state
        if self.invite:
            if state in (State.CALLING, State.PROCEEDING):
                if status < 200:
                    self.state = State.PROCEEDING
                    if self._retransmit:
                        self._retransmit.cancel()
                    self.last_status = status
                    self.layer.tu.on_response(self, response, now)
                elif status < 300:
                    # RFC 6026 §8.4: Accepted, Timer M; 2xx retransmissions go to the TU.
                    self.state = State.ACCEPTED
                    self.last_status = status
                    self._cancel_timers()
                    self._timeout = self.layer.timers.schedule(now + 64 * T1, self._terminate)
                    self.layer.tu.on_response(self, response, now)
                else:
                    self.state = State.COMPLETED
                    self.last_status = status
                    self._cancel_timers()
                    self._ack = self._build_ack(response)
                    self.layer.send(self._ack, self.dest, self.transport)
                    wait = 0.0 if is_reliable(self.transport) else TIMER_D
                    self._timeout = self.layer.timers.schedule(now + wait, self._terminate)
                    self.layer.tu.on_response(self, response, now)
            elif state is State.ACCEPTED and 200 <= status < 300:
                self.layer.tu.on_response(self, response, now)  # the TU re-ACKs
            elif state is State.COMPLETED and status >= 300 and self._ack is not None:
                self.layer.send(self._ack, self.dest, self.transport)
            return
        if state in (State.TRYING, State.PROCEEDING):
            self.last_status = status
            if status < 200:
                self.state = State.PROCEEDING
                self.layer.tu.on_response(self, response, now)
                return
            self.state = State.COMPLETED
            self._cancel_timers()
            wait = 0.0 if is_reliable(self.transport) else T4  # Timer K
            self._timeout = self.layer.timers.schedule(now + wait, self._terminate)
            self.layer.tu.on_response(self, response, now)

    def _build_ack(self, response: Response) -> bytes:
        """ACK for a non-2xx final response: same branch, hop-by-hop (§17.1.1.3)."""
        req = self.request
        ack = Request("ACK", req.uri)
        h = ack.headers
        h.set("Via", req.headers.get_all("via")[0])
        h.set("Max-Forwards", "70")
        for name in ("from", "call-id"):
            v = req.headers.get(name)
            if v is not None:
                h.set(name, v)
        to = response.headers.get("to")
        if to is not None:
            h.set("To", to)
        h.set("CSeq", f"{req.cseq} ACK")
        routes = req.headers.get_all("route")
        if routes:
            h.set_all("Route", routes)
        return ack.to_bytes()

    def _cancel_timers(self) -> None:
        if self._retransmit:
            self._retransmit.cancel()
        if self._timeout:
            self._timeout.cancel()

    def _finish(self) -> None:
        self._cancel_timers()
        self.state = State.TERMINATED
        self.layer._remove_client(self)

    def _terminate(self, now: float) -> None:
        if self.state is not State.TERMINATED:
            self._finish()
        # as for server transactions: no session <-> transaction cycle left behind
        self.context = None


class TransactionLayer:
    """Holds and matches transactions; counts what it absorbs and what times out."""

    def __init__(self, tu: TransactionUser, send: SendFn, timers: TimerHeap | None = None) -> None:
        self.tu = tu
        self.send = send
        self.timers = timers if timers is not None else TimerHeap()
        self.server: dict[ServerKey, ServerTransaction] = {}
        self.client: dict[tuple[str, str], ClientTransaction] = {}
        self.retransmissions_in = 0
        self.retransmissions_out = 0
        self.timeouts = 0

    def __len__(self) -> int:
        """Transactions held (server and client)."""
        return len(self.server) + len(self.client)

    # -- server side --
    def match_server(self, request: Request) -> ServerTransaction | None:
        return self.server.get(server_key(request))

    def create_server(self, request: Request, dest: Address) -> ServerTransaction:
        key = server_key(request)
        txn = ServerTransaction(self, key, request, dest)
        self.server[key] = txn
        return txn

    def find_invite_for_cancel(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL targets (§9.2: same key but method)."""
        key = server_key(cancel)
        return (
            self.server.get((*key[:-1], "INVITE"))
            if key[0] != "2543"
            else self.server.get((*key[:-2], "INVITE", key[-1]))
        )

    def _remove_server(self, txn: ServerTransaction) -> None:
        if self.server.get(txn.key) is txn:
            del self.server[txn.key]
        self.tu.on_terminated(txn)
        # Nothing reaches a terminated transaction any more: dropping the TU's object
        # breaks the session <-> transaction cycle, so a finished call is freed by
        # reference counting instead of waiting for the cyclic garbage collector.
        txn.context = None

    # -- client side --
    def start_client(
        self, request: Request, dest: Address, transport: str, now: float
    ) -> ClientTransaction:
        txn = ClientTransaction(self, request, dest, transport)
        self.client[txn.key] = txn
        txn.start(now)
        return txn

    def match_response(self, response: Response) -> ClientTransaction | None:
        if not response.vias:
            return None
        branch = response.vias[0].branch or ""
        return self.client.get((branch, response.cseq_method))

    def _remove_client(self, txn: ClientTransaction) -> None:
        if self.client.get(txn.key) is txn:
            del self.client[txn.key]
        self.tu.on_terminated(txn)
