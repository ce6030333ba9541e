"""SIP transports over asyncio: UDP, TCP, TLS, WS and WSS, IPv4 and IPv6 (the only SIP
socket code; WebSocket framing, RFC 7118, lives in :mod:`callengine.transport.ws`).

A :class:`TransportSet` owns every listening socket and connection of one worker and
gives the sans-IO core two things: ``deliver(data, source, transport, local)`` calls for
what arrives, and a ``send(data, dest, transport)`` function for what leaves. Stream
messages are framed by Content-Length (:class:`~callengine.sip.message.StreamFramer`);
a connection whose framing breaks is closed (RFC 3261 §18.3). Responses over TCP go back
on the connection the request came in on (RFC 3261 §18.2.2): connections are keyed by
the peer's address, so sending to the request's source finds it.

Connections are bounded (a peer must not exhaust the worker's descriptors): at most
``max_per_source`` accepted connections per peer address (exempt addresses, e.g. a
proxy in front, have no per-source cap) and ``max_connections`` in all; a connection
that sends no complete message within ``first_message_timeout`` seconds, or nothing at
all for ``idle_timeout`` seconds, is closed. Refusals and closings are counted.

WebSocket connections (WS, WSS) count and time out the same way. They are never opened
by the node: a WebSocket client is reachable only over the connection it opened (RFC
7118 §5.2), so a send to a WS peer without a live connection is a transport error
(``on_send_error``), and ``on_flow_closed`` tells the owner when such a flow ends.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..sip.errors import RemoteProtocolError
from ..sip.message import StreamFramer

log = logging.getLogger("callengine.transport")

Address = tuple[str, int]
_SO_MEMINFO = 55  # Linux: struct of u32, [0] = bytes allocated to the receive queue
Deliver = Callable[[bytes, Address, str, Address], None]

__all__ = ["WEBSOCKET", "ListenSpec", "TransportSet", "parse_listen"]

WEBSOCKET = ("WS", "WSS")
"""Transports whose peers can only be reached over the connection they opened."""


@dataclass(frozen=True, slots=True)
class ListenSpec:
    host: str
    port: int
    transport: str  # UDP, TCP, TLS, WS or WSS


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"bad listen address {text!r}: expected HOST:PORT")
    return host, int(port)


def _norm(addr: tuple[object, ...]) -> Address:
    return (str(addr[0]), int(addr[1]))  # type: ignore[call-overload]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: TransportSet, local: Address) -> None:
        self.owner = owner
        self.local = local
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner.deliver(data, (addr[0], addr[1]), "UDP", self.local)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable etc. on a connected-less socket: counted, not fatal
        self.owner.send_errors += 1


class _Stream(asyncio.Protocol):
    def __init__(
        self,
        owner: TransportSet,
        name: str,
        local: Address | None = None,
        *,
        accepted: bool = False,
    ) -> None:
        self.owner = owner
        self.name = name
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.local: Address = local or ("", 0)
        self.accepted = accepted
        """Opened by the peer (counted against its per-source cap)."""
        self.counted = False
        self.opened = self.last_rx = 0.0
        self.messages = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = _norm(transport.get_extra_info("peername"))
        self.local = _norm(transport.get_extra_info("sockname"))
        owner = self.owner
        self.opened = self.last_rx = owner.clock()
        if self.accepted and not owner.admit_connection(self.peer[0]):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.counted = self.accepted
        owner.connections[(self.name, self.peer)] = self
        owner.ensure_sweeper()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.owner.clock()
        try:
            messages = self.framer.feed(data)
        except RemoteProtocolError as exc:
            self.owner.framing_errors += 1
            log.info("closing %s connection from %s: %s", self.name, self.peer, exc.reason)
            if self.transport:
                self.transport.close()
            return
        self.messages += len(messages)
        for msg in messages:
            self.owner.deliver(msg, self.peer, self.name, self.local)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner.connections.get((self.name, self.peer)) is self:
            del self.owner.connections[(self.name, self.peer)]
        if self.counted:
            self.counted = False
            self.owner.release_connection(self.peer[0])

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def shutdown(self) -> None:
        """Close the connection (the node is stopping)."""
        if self.transport is not None:
            self.transport.close()


class TransportSet:
    """Every SIP socket of one worker."""

    def __init__(
        self,
        deliver: Deliver,
        *,
        tls_context: ssl.SSLContext | None = None,
        max_connections: int = 4096,
        max_per_source: int = 256,
        idle_timeout: float = 600.0,
        first_message_timeout: float = 30.0,
        exempt: Callable[[str], bool] = lambda address: False,
        max_message_size: int = 65535,
    ) -> None:
        self.deliver = deliver
        self.tls_context = tls_context
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.idle_timeout = idle_timeout
        self.first_message_timeout = first_message_timeout
        self.exempt = exempt
        self.max_message_size = max_message_size
        self.per_source: dict[str, int] = {}
        self.accepted = 0
        self.refused_connections = 0
        self.idle_closed = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._meminfo = sys.platform == "linux"
        self.udp: list[_Udp] = []
        self._udp4: asyncio.DatagramTransport | None = None
        self._udp6: asyncio.DatagramTransport | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.connections: dict[tuple[str, Address], _Stream] = {}
        self._pending: dict[tuple[str, Address], list[bytes]] = {}
        self.send_errors = 0
        self.framing_errors = 0
        self.refused_upgrades = 0
        self.bound: list[ListenSpec] = []
        self.on_send_error: Callable[[Address, str], None] | None = None
        self.on_flow_closed: Callable[[Address, str], None] | None = None
        """Called with (peer, transport) when a WS/WSS connection ends."""

    # ------------------------------------------------------- connection limits
    def clock(self) -> float:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    def admit_connection(self, address: str) -> bool:
        """Count a connection the peer at ``address`` opened; ``False``: refuse it."""
        n = self.per_source.get(address, 0)
        over_source = n >= self.max_per_source and not self.exempt(address)
        if over_source or self.accepted >= self.max_connections:
            self.refused_connections += 1
            return False
        self.per_source[address] = n + 1
        self.accepted += 1
        return True

    def release_connection(self, address: str) -> None:
        self.accepted -= 1
        n = self.per_source.get(address, 0) - 1
        if n > 0:
            self.per_source[address] = n
        else:
            self.per_source.pop(address, None)

    def ensure_sweeper(self) -> None:
        if self._sweeper is None and self._loop is not None:
            # a look every few seconds: O(connections), so not on every tick
            interval = max(0.5, min(5.0, self.first_message_timeout / 2))
            self._sweeper = self._loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Close connections that stayed silent too long (see the module docstring)."""
        self._sweeper = None
        now = self.clock()
        for conn in list(self.connections.values()):
            if conn.transport is None or conn.transport.is_closing():
                continue
            if conn.messages == 0:
                silent = now - conn.opened > self.first_message_timeout
            else:
                silent = now - conn.last_rx > self.idle_timeout
            if silent and conn.accepted:
                self.idle_closed += 1
                conn.transport.abort()
        if self.connections:
            self.ensure_sweeper()

    async def listen(
        self, host: str, port: int, transports: tuple[str, ...] = ("UDP", "TCP")
    ) -> None:
        """Open the given transports on host:port. Raises OSError (port in use...)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for name in transports:
            if name == "UDP":
                sock = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)
                    sock.bind((host, port))
                except OSError:
                    sock.close()
                    raise
                local = _norm(sock.getsockname())
                proto = _Udp(self, local)
                await loop.create_datagram_endpoint(lambda p=proto: p, sock=sock)  # type: ignore[misc]
                self.udp.append(proto)
                # the first socket of each family sends every UDP message of that family
                if ":" in local[0]:
                    self._udp6 = self._udp6 or proto.transport
                else:
                    self._udp4 = self._udp4 or proto.transport
                self.bound.append(ListenSpec(local[0], local[1], "UDP"))
                port = local[1]
            else:
                ctx = self.tls_context if name in ("TLS", "WSS") else None
                if name in ("TLS", "WSS") and ctx is None:
                    raise ValueError(f"{name} listen needs a certificate and key")
                self._loop = loop
                factory: Callable[[], asyncio.Protocol]
                if name in WEBSOCKET:
                    from .ws import WsStream

                    factory = functools.partial(WsStream, self, name)
                else:
                    factory = functools.partial(_Stream, self, name, accepted=True)
                server = await loop.create_server(
                    factory,
                    host,
                    port,
                    ssl=ctx,
                    reuse_address=True,
                    backlog=1024,
                    ssl_handshake_timeout=10.0 if ctx is not None else None,
                )
                self.servers.append(server)
                sockname = _norm(server.sockets[0].getsockname())
                self.bound.append(ListenSpec(sockname[0], sockname[1], name))
                port = sockname[1]

    def is_open(self, transport: str, peer: Address) -> bool:
        """A connection of ``transport`` with ``peer`` is up (for WS/WSS: a live flow)."""
        conn = self.connections.get((transport, peer))
        return conn is not None and conn.transport is not None and not conn.transport.is_closing()

    def receive_backlog(self) -> int:
        """Bytes queued in the fullest UDP receive buffer (Linux ``SO_MEMINFO``); 0 where
        the platform does not say."""
        if not self._meminfo:
            return 0
        worst = 0
        for proto in self.udp:
            sock = proto.transport.get_extra_info("socket") if proto.transport else None
            if sock is None:
                continue
            try:
                raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 64)
            except OSError:
                self._meminfo = False
                return 0
            worst = max(worst, int.from_bytes(raw[:4], sys.byteorder))
        return worst

    def local_for(self, transport: str, family_host: str = "") -> Address:
        want_v6 = ":" in family_host
        for spec in self.bound:
            if spec.transport == transport and ((":" in spec.host) == want_v6 or not family_host):
                return (spec.host, spec.port)
        for spec in self.bound:
            if spec.transport == "UDP":
                return (spec.host, spec.port)
        raise RuntimeError("no listening address")

    def send(self, data: bytes, dest: Address, transport: str) -> None:
        """Send one message (non-blocking). Stream connections are opened on demand."""
        if transport == "UDP":
            udp = self._udp6 if ":" in dest[0] else self._udp4
            if udp is None:
                self.send_errors += 1
                return
            try:
                udp.sendto(data, dest)
            except OSError:
                self.send_errors += 1
            return
        key = (transport, dest)
        conn = self.connections.get(key)
        if conn is not None:
            conn.write(data)
            return
        if transport in WEBSOCKET:
            # RFC 7118 §5.2: no connection, no way to reach it; fail the transaction
            # once it is registered (the send happens while it is being created)
            self.send_errors += 1
            if self.on_send_error is not None:
                asyncio.get_running_loop().call_soon(self.on_send_error, dest, transport)
            return
        pending = self._pending.get(key)
        if pending is not None:
            pending.append(data)
            return
        self._pending[key] = [data]
        asyncio.get_running_loop().create_task(self._connect(transport, dest))

    async def _connect(self, transport: str, dest: Address) -> None:
        loop = asyncio.get_running_loop()
        key = (transport, dest)
        try:
            ctx: ssl.SSLContext | None = None
            if transport == "TLS":
                ctx = ssl.create_default_context()
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Stream(self, transport), dest[0], dest[1], ssl=ctx),
                timeout=5.0,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.info("cannot connect %s to %s: %s", transport, dest, exc)
            self._pending.pop(key, None)
            self.send_errors += 1
            if self.on_send_error is not None:
                self.on_send_error(dest, transport)
            return
        for data in self._pending.pop(key, []):
            proto.write(data)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for proto in self.udp:
            if proto.transport is not None:
                proto.transport.close()
        for server in self.servers:
            server.close()
        for conn in list(self.connections.values()):
            conn.shutdown()
        for server in self.servers:
            await server.wait_closed()
