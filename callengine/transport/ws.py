"""SIP over WebSocket (RFC 7118), WS and WSS: the one module that imports wsproto.

Theory of operation
-------------------
:class:`WsSipServer` is sans-IO (h11 style): the server side of one WebSocket
connection that carries SIP. ``receive_data(bytes)`` returns the SIP messages that
arrived complete; whatever must go back (the HTTP 101 or the refusal, pongs, close
frames) collects in :meth:`WsSipServer.data_to_send`. ``send_message(sip)`` frames
one SIP message. It reads no clock and owns no socket.

- Handshake (RFC 7118 §4, RFC 6455 §4.2): the HTTP Upgrade must offer the ``sip``
  subprotocol; the 101 names it in ``Sec-WebSocket-Protocol``. An upgrade without it,
  or one wsproto cannot parse, gets an HTTP 400 and the connection closes.
- Framing (RFC 7118 §5.1): one SIP message per WebSocket message, text or binary,
  possibly fragmented; no Content-Length framing (the core parses each message as a
  datagram, so a Content-Length, when present, is checked against the body).
- Size: a message that grows beyond ``max_message_size`` bytes closes the connection
  with 1009 "message too big" (RFC 6455 §7.4.1) before more of it is kept.
- Control frames: a ping is answered with a pong; a close frame is answered with a
  close frame and the connection ends (RFC 6455 §5.5.1); a protocol error closes with
  the code wsproto names (1002, 1007...).

:class:`WsStream` is the asyncio shell: a stream connection of the
:class:`~callengine.transport.TransportSet` (same per-source cap, idle and first-message
timeouts, keyed by the peer's address, so a response or a request for a WS binding
goes out on the connection the client opened: RFC 7118 §5.2, a WebSocket client
cannot be reached any other way). When it ends, the transport set's ``on_flow_closed``
hook is told, so bindings registered over it die with it.
"""

from __future__ import annotations

import logging

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from . import TransportSet, _Stream

log = logging.getLogger("callengine.transport")

__all__ = ["SUBPROTOCOL", "WsSipServer", "WsStream"]

SUBPROTOCOL = "sip"  # RFC 7118 §4 (IANA WebSocket Subprotocol Name Registry)
_REFUSAL = b"WebSocket upgrade needs Sec-WebSocket-Protocol: sip (RFC 7118)\n"


class WsSipServer:
    """The server side of one SIP-over-WebSocket connection (see the module docstring).

    ``refused`` says why a handshake was refused; ``close_code`` is the code of the close
    frame this side sent (1009 for an oversized message). ``closed`` becomes true when
    the connection is done and the socket should be closed once ``data_to_send`` is
    flushed."""

    def __init__(self, *, max_message_size: int = 65535) -> None:
        self.max_message_size = max_message_size
        self._ws = WSConnection(ConnectionType.SERVER)
        self._out: list[bytes] = []
        self._parts: list[bytes] = []
        self._size = 0
        self.open = False
        """Handshake done and no close frame yet: messages may be sent."""
        self.closed = False
        self.refused: str | None = None
        self.close_code: int | None = None

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send_message(self, sip: bytes) -> None:
        """Frame one SIP message: a text frame when it is UTF-8 (it nearly always is),
        else a binary frame (RFC 7118 §5.1 allows both)."""
        if not self.open:
            return
        try:
            event: TextMessage | BytesMessage = TextMessage(sip.decode("utf-8"))
        except UnicodeDecodeError:
            event = BytesMessage(sip)
        self._out.append(self._ws.send(event))

    def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame (when open) and end the connection."""
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._out.append(self._ws.send(CloseConnection(code=code, reason=reason)))
            self.close_code = code
        self.open = False
        self.closed = True
        self._parts.clear()

    def receive_data(self, data: bytes | None) -> list[bytes]:
        """Feed bytes from the socket (``None``: it closed). Returns whole SIP messages."""
        if self.closed:
            return []
        messages: list[bytes] = []
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, Request):
                    self._handshake(event)
                elif isinstance(event, TextMessage | BytesMessage):
                    chunk = event.data.encode() if isinstance(event.data, str) else event.data
                    self._size += len(chunk)
                    if self._size > self.max_message_size:
                        self.close(CloseReason.MESSAGE_TOO_BIG, "SIP message too large")
                        break
                    self._parts.append(bytes(chunk))
                    if event.message_finished:
                        messages.append(b"".join(self._parts))
                        self._parts.clear()
                        self._size = 0
                elif isinstance(event, Ping):
                    self._out.append(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    # the peer's close (or wsproto's verdict on a broken frame): answer it
                    self.close(event.code, "")
                    break
                if self.closed:
                    break
        except RemoteProtocolError as exc:
            # an HTTP request wsproto refuses (not an upgrade, a bad key...)
            self.refused = str(exc)
            hint = exc.event_hint
            if isinstance(hint, RejectConnection):
                self._reject(hint.status_code)
            self.closed = True
        except LocalProtocolError:
            self.close(CloseReason.PROTOCOL_ERROR)
        return messages

    def _handshake(self, request: Request) -> None:
        if SUBPROTOCOL not in request.subprotocols:
            # RFC 7118 §4: the sip subprotocol is mandatory; without it this is no SIP
            self.refused = "no sip subprotocol offered"
            self._reject(400, _REFUSAL)
            self.closed = True
            return
        self._out.append(self._ws.send(AcceptConnection(subprotocol=SUBPROTOCOL)))
        self.open = True

    def _reject(self, status: int, body: bytes = b"") -> None:
        headers = [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        if body:
            headers.append((b"content-type", b"text/plain"))
        try:
            self._out.append(
                self._ws.send(RejectConnection(status, headers=headers, has_body=bool(body)))
            )
            if body:
                self._out.append(self._ws.send(RejectData(body)))
        except LocalProtocolError:
            pass  # the HTTP side is already past a response: just close


class WsStream(_Stream):
    """One accepted WS/WSS connection of a :class:`TransportSet` (the asyncio shell)."""

    def __init__(self, owner: TransportSet, name: str) -> None:
        super().__init__(owner, name, accepted=True)
        self.ws = WsSipServer(max_message_size=owner.max_message_size)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.owner.clock()
        self._feed(data)

    def eof_received(self) -> bool | None:
        self._feed(None)
        return None

    def _feed(self, data: bytes | None) -> None:
        ws = self.ws
        messages = ws.receive_data(data)
        out = ws.data_to_send()
        transport = self.transport
        if transport is None:
            return
        if out and not transport.is_closing():
            transport.write(out)
        if ws.refused is not None and ws.closed:
            self.owner.refused_upgrades += 1
            log.info("refused WebSocket upgrade from %s: %s", self.peer, ws.refused)
        elif ws.close_code == CloseReason.MESSAGE_TOO_BIG:
            self.owner.framing_errors += 1
            log.info("closing %s connection from %s: message too large", self.name, self.peer)
        self.messages += len(messages)
        for msg in messages:
            self.owner.deliver(msg, self.peer, self.name, self.local)
        if ws.closed:
            transport.close()  # after the buffered 400 / close frame is written

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.ws.send_message(data)
        out = self.ws.data_to_send()
        if out:
            transport.write(out)

    def shutdown(self) -> None:
        """The node is stopping: a close frame 1001 "going away" (RFC 6455 §7.4.1)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.ws.close(CloseReason.GOING_AWAY, "server stopping")
        out = self.ws.data_to_send()
        if out:
            transport.write(out)
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        registered = self.owner.connections.get((self.name, self.peer)) is self
        super().connection_lost(exc)
        self.ws.open = False
        if registered and self.ws.refused is None and self.owner.on_flow_closed is not None:
            self.owner.on_flow_closed(self.peer, self.name)
