"""A worker's SIP transports in a multi-worker node (``callengine serve --workers N``).

The front process owns the listening sockets and the TCP/TLS/WebSocket connections
(:mod:`callengine.cluster`). It hands each worker the messages of its calls over a Unix
datagram socketpair, with where each came from (:func:`callengine.dispatch.pack_inbound`).
What a worker sends leaves:

- over UDP directly, through the worker's copy of the front's listening socket (the
  same open socket, inherited at start: replies and requests carry the node's one SIP
  address and port, and cost no hop). The worker never reads that socket;
- over TCP, TLS, WS and WSS through the front, which holds the connections
  (:func:`callengine.dispatch.pack_outbound`).

A :class:`RelayTransports` is a :class:`~callengine.transport.TransportSet` to the
engine: the same ``send``/``local_for``/``is_open``/``receive_backlog`` and counters.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from ..dispatch import CONTROL, pack_control, pack_outbound, unpack_control, unpack_inbound
from . import WEBSOCKET, Address, ListenSpec, TransportSet

log = logging.getLogger("callengine.transport")

__all__ = ["RelayTransports"]

_BATCH = 256  # messages read per wake-up: other callbacks (the media clock) run between
_MAX = 1 << 17


class RelayTransports(TransportSet):
    """The transports of one worker (see the module docstring)."""

    def __init__(
        self,
        *,
        data: socket.socket,
        udp: list[socket.socket],
        bound: list[ListenSpec],
        on_front_lost: Callable[[], None] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(lambda *a: None, **options)
        self._data = data
        data.setblocking(False)
        self._udp_socks = udp
        self._send4: socket.socket | None = None
        self._send6: socket.socket | None = None
        for sock in udp:
            sock.setblocking(False)
            if sock.family == socket.AF_INET6:
                self._send6 = self._send6 or sock
            else:
                self._send4 = self._send4 or sock
        self.bound = list(bound)
        self.flows: set[tuple[str, Address]] = set()
        """WebSocket flows this worker has received from and not yet seen closed."""
        self.on_front_lost = on_front_lost
        self.on_control: Callable[[Any], None] | None = None
        """Control messages the front sends in order with the SIP messages."""
        self.received = 0
        self._reading = False

    def start(self) -> None:
        """Begin reading what the front hands over (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._data.fileno(), self._on_readable)
        self._reading = True

    def _on_readable(self) -> None:
        recv = self._data.recv
        for _ in range(_BATCH):
            try:
                msg = recv(_MAX)
            except BlockingIOError:
                return
            except OSError as exc:
                log.error("worker link: %s", exc)
                msg = b""
            if not msg:
                self._stop_reading()
                if self.on_front_lost is not None:
                    self.on_front_lost()
                return
            if msg[:1] == CONTROL:
                if self.on_control is not None:
                    self.on_control(unpack_control(msg))
                continue
            try:
                data, source, transport, local = unpack_inbound(msg)
            except (ValueError, UnicodeDecodeError):
                self.framing_errors += 1
                continue
            self.received += 1
            if transport in WEBSOCKET:
                self.flows.add((transport, source))
            self.deliver(data, source, transport, local)

    def _stop_reading(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._data.fileno())
            self._reading = False

    def flow_closed(self, peer: Address, transport: str) -> None:
        """The front saw a WebSocket connection end."""
        self.flows.discard((transport, peer))
        if self.on_flow_closed is not None:
            self.on_flow_closed(peer, transport)

    def send_failed(self, dest: Address, transport: str) -> None:
        """The front could not deliver to ``dest`` (connect failed, no WS flow)."""
        if self.on_send_error is not None:
            self.on_send_error(dest, transport)

    def send_control(self, message: Any) -> None:
        """A control message to the front, in order with this worker's sends."""
        try:
            self._data.send(pack_control(message))
        except OSError:
            self.send_errors += 1
            log.error("worker link: cannot send %s to the front", message[0])

    # ------------------------------------------------------ TransportSet interface
    def is_open(self, transport: str, peer: Address) -> bool:
        return (transport, peer) in self.flows

    def receive_backlog(self) -> int:
        """0: the kernel charges what the front queued on the socket pair to the front
        (its sender) until this worker reads it, so the front measures the backlog and
        drops new calls for a worker behind (``ClusterFront._behind``)."""
        return 0

    def send(self, data: bytes, dest: Address, transport: str) -> None:
        if transport == "UDP":
            sock = self._send6 if ":" in dest[0] else self._send4
            if sock is None:
                self.send_errors += 1
                return
            try:
                sock.sendto(data, dest)
            except OSError:  # full send buffer (EAGAIN), unreachable...: like a lost datagram
                self.send_errors += 1
            return
        if transport in WEBSOCKET and (transport, dest) not in self.flows:
            self.send_errors += 1
            if self.on_send_error is not None and self._loop is not None:
                self._loop.call_soon(self.on_send_error, dest, transport)
            return
        try:
            self._data.send(pack_outbound(data, dest, transport))
        except OSError:
            self.send_errors += 1

    async def listen(
        self, host: str, port: int, transports: tuple[str, ...] = ("UDP", "TCP")
    ) -> None:
        raise RuntimeError("a worker does not listen: the front owns the sockets")

    async def close(self) -> None:
        self._stop_reading()
        for sock in self._udp_socks:
            sock.close()
        self._data.close()
