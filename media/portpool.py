"""Pre-bound RTP port pairs: answering a call creates no socket.

Theory of operation. Binding a call's even/odd pair (two ``socket()``, two
``bind()``, two asyncio endpoints: about 150 us, and a stall whenever the kernel
or the scheduler makes one of those calls slow) used to happen on the answer path,
between the INVITE and the 200. The node now keeps ``size`` pairs bound in its port
range, ready, per media address:

- :meth:`PortPool.take` hands out the oldest ready pair (no system call but the
  drain below), or ``None`` (a *miss*: the caller binds one itself, as before, and
  the pool refills).
- The refill runs on the loop *off* the answer path: one task binds one pair per
  loop turn (``await asyncio.sleep(0)`` between pairs), so its work per callback is
  bounded; after a failure (the range or the descriptor limit is exhausted) it waits
  ``retry_after`` seconds before trying again, quietly: the call that misses gets
  the 503 and its one log line, exactly as without a pool.
- A call's pair comes back with :meth:`PortPool.release`. It rests ``quarantine``
  seconds before another call may take it, so that the packets the previous peer
  still had in flight (its BYE crosses our last RTP) are gone, and on reuse the
  socket buffers are drained: a new call never hears, or latches onto, what the
  previous peer sent within the quarantine. While pooled, whatever arrives is read
  and dropped. (A peer that goes on sending longer is any third party to the next
  call: the latching rules of :mod:`media.stream` apply.)
  Beyond ``max_cooling`` resting pairs (or ``size + max_cooling`` idle ones in
  all) a released pair is closed instead: the pool never holds more than that.
  The rest is a preference, not a refusal: when a call finds no ready pair and no
  free port (or descriptor) to bind one, it takes the pair that has rested longest,
  drained, so the pool never costs the node a call it could take without one.

:class:`PoolCore` is that bookkeeping without sockets (fake-clock tests);
:class:`PortPool` is the asyncio shell that binds, drains and closes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = [
    "DEFAULT_POOL_SIZE",
    "DEFAULT_QUARANTINE",
    "PoolCore",
    "PortPair",
    "PortPool",
    "bind_pair",
    "open_pair",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

Address = tuple[str, int]

#: Ready pairs kept per media address.
DEFAULT_POOL_SIZE = 0
#: Seconds a released pair rests before reuse.
DEFAULT_QUARANTINE = 1.0
#: Datagrams read and dropped per socket at most when a pair is reused.
_DRAIN_LIMIT = 256
_SO_MEMINFO = 55  # Linux: struct of u32, [0] = bytes allocated to the receive queue
_meminfo = sys.platform.startswith("linux")


def _queued(sock: socket.socket) -> bool:
    """Whether anything waits in ``sock``'s receive queue. Asked with ``getsockopt``
    (which, unlike ``recv``, does not let go of the GIL: another thread cannot take
    the loop's turn meanwhile); ``True`` where the platform does not say."""
    global _meminfo
    if _meminfo:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 16)
        except OSError:
            _meminfo = False
        else:
            return int.from_bytes(raw[:4], sys.byteorder) != 0
    return True


class PoolCore(Generic[T]):
    """Ready and resting pairs, and how many to bind now; no sockets, no clock."""

    def __init__(
        self,
        *,
        size: int,
        quarantine: float = DEFAULT_QUARANTINE,
        max_cooling: int | None = None,
        retry_after: float = 1.0,
    ) -> None:
        if size < 0:
            raise ValueError(f"pool size must be 0 or more, not {size}")
        self.size = size
        self.quarantine = quarantine
        self.max_cooling = 4 * size if max_cooling is None else max_cooling
        self.retry_after = retry_after
        self.ready: deque[T] = deque()
        # (ready_at, pair), oldest first: the quarantine is constant, so the deque
        # stays sorted by ready_at.
        self.cooling: deque[tuple[float, T]] = deque()
        self._retry_at = 0.0
        self.hits = 0
        self.misses = 0
        self.bound = 0  # pairs the refill bound
        self.reused = 0  # pairs released into quarantine (taken again later)
        self.discarded = 0  # released pairs closed (pool full or disabled)
        self.failures = 0  # refills that found no free pair
        self.early = 0  # resting pairs taken before their quarantine ended

    def _cool(self, now: float) -> None:
        cooling = self.cooling
        while cooling and cooling[0][0] <= now:
            self.ready.append(cooling.popleft()[1])

    def take(self, now: float) -> T | None:
        """The oldest ready pair, or ``None`` (a miss)."""
        if self.size == 0:
            return None
        self._cool(now)
        if self.ready:
            self.hits += 1
            return self.ready.popleft()
        self.misses += 1
        return None

    def take_resting(self) -> T | None:
        """The pair that has rested longest, before its quarantine is over: for a call
        that would otherwise be refused (no free port, or no descriptor, left), since
        resting pairs must never cost the node a call it could take without a pool."""
        if not self.cooling:
            return None
        self.early += 1
        return self.cooling.popleft()[1]

    def release(self, pair: T, now: float) -> bool:
        """A call is done with ``pair``: ``True`` if the pool keeps it (resting until
        ``now + quarantine``), ``False`` if the caller must close it."""
        cooling = len(self.cooling)
        full = (
            cooling >= self.max_cooling or len(self.ready) + cooling >= self.size + self.max_cooling
        )
        if self.size == 0 or full:
            self.discarded += 1
            return False
        self.cooling.append((now + self.quarantine, pair))
        self.reused += 1
        return True

    def wanted(self, now: float) -> int:
        """Pairs to bind now to have ``size`` ready (0 while backing off)."""
        if now < self._retry_at:
            return 0
        self._cool(now)
        return max(0, self.size - len(self.ready))

    def added(self, pair: T) -> None:
        """The refill bound ``pair``: ready at once."""
        self.ready.append(pair)
        self.bound += 1

    def failed(self, now: float) -> None:
        """The refill found no free pair: try again ``retry_after`` from ``now``."""
        self.failures += 1
        self._retry_at = now + self.retry_after

    def drain_all(self) -> list[T]:
        """Every pooled pair, for closing (the pool is empty afterwards)."""
        pairs = list(self.ready) + [pair for _, pair in self.cooling]
        self.ready.clear()
        self.cooling.clear()
        return pairs


def _read_queued(sock: socket.socket, deliver: Callable[[bytes, Any], None] | None) -> int:
    """Read what waits in ``sock``'s receive buffer (at most ``_DRAIN_LIMIT``
    datagrams), handing each to ``deliver`` when given; returns the count."""
    if not _queued(sock):
        return 0
    count = 0
    for _ in range(_DRAIN_LIMIT):
        try:
            data, addr = sock.recvfrom(2048)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            continue  # e.g. ICMP errors queued on the socket: read past them
        count += 1
        if deliver is not None:
            deliver(data, addr)
    return count


class _RtpProtocol(asyncio.DatagramProtocol):
    """Hands each datagram to ``_callback`` (the session's, or a drop while pooled)."""

    def __init__(self, callback: Callable[[bytes, Address], None]) -> None:
        self._callback = callback

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._callback(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable etc. on a connectionless socket: nothing to do.
        logger.debug("RTP socket error: %s", exc)


def _drop_datagram(datagram: bytes, addr: Address) -> None:
    return None


def bind_pair(
    host: str, port_range: tuple[int, int], rng: random.Random
) -> tuple[socket.socket, socket.socket]:
    """Two non-blocking UDP sockets bound to an even port of ``port_range`` and the
    next odd one; :class:`OSError` when none is free (among 200 tried)."""
    lo, hi = port_range
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    first = lo + (lo % 2)
    pairs = (hi - 1 - first) // 2 + ((hi - 1 - first) % 2 > 0)
    if pairs <= 0:
        raise ValueError(f"RTP port range {lo}-{hi} holds no even/odd port pair")
    # A random starting pair, then the following ones: O(1) per call, unlike a shuffle
    # of the whole range (measured: 15 ms per call for 10,000 ports).
    start = rng.randrange(pairs)
    candidates = (first + 2 * ((start + i) % pairs) for i in range(min(pairs, 200)))
    for port in candidates:
        rtp = socket.socket(family, socket.SOCK_DGRAM)
        rtcp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            rtp.bind((host, port))
            rtcp.bind((host, port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        rtp.setblocking(False)
        rtcp.setblocking(False)
        return rtp, rtcp
    raise OSError(f"no free RTP port pair in {lo}-{hi} on {host}")


class PortPair:
    """A bound RTP/RTCP pair with its asyncio transports."""

    __slots__ = ("host", "port", "rtcp", "rtcp_sock", "rtp", "rtp_sock")

    def __init__(
        self,
        host: str,
        port: int,
        rtp_sock: socket.socket,
        rtcp_sock: socket.socket,
        rtp: asyncio.DatagramTransport,
        rtcp: asyncio.DatagramTransport,
    ) -> None:
        self.host = host
        self.port = port
        # The sockets themselves (the transports share their descriptors): read
        # directly to drain a reused pair.
        self.rtp_sock = rtp_sock
        self.rtcp_sock = rtcp_sock
        self.rtp = rtp
        self.rtcp = rtcp

    def route(
        self,
        on_rtp: Callable[[bytes, Address], None],
        on_rtcp: Callable[[bytes, Address], None],
    ) -> None:
        """Send what arrives from now on to these callbacks."""
        rtp_protocol = self.rtp.get_protocol()
        rtcp_protocol = self.rtcp.get_protocol()
        assert isinstance(rtp_protocol, _RtpProtocol)
        assert isinstance(rtcp_protocol, _RtpProtocol)
        rtp_protocol._callback = on_rtp
        rtcp_protocol._callback = on_rtcp

    def receive_waiting(self) -> int:
        """Hand what waits in the RTP socket's buffer to the routed callback now;
        returns the count (at most ``_DRAIN_LIMIT``).

        For a media clock that fired late: after this process did not run for a while
        (descheduled on a loaded machine, a long pause), the event loop runs its due
        timers before it polls the sockets, so the tick would decide what was lost
        (a recording's jitter buffer writes silence for each frame with no packet)
        while the packets of those frames wait in the kernel; read them first."""
        protocol = self.rtp.get_protocol()
        assert isinstance(protocol, _RtpProtocol)

        def deliver(data: bytes, addr: Any) -> None:
            # the callback in force for each datagram (one may end the session)
            protocol._callback(data, (addr[0], addr[1]))

        return _read_queued(self.rtp_sock, deliver)

    def drain(self) -> int:
        """Read and drop what waits in both sockets' buffers; returns the count."""
        # the usual case: nothing, the loop read (and dropped) all while the pair rested
        return _read_queued(self.rtp_sock, None) + _read_queued(self.rtcp_sock, None)

    def close(self) -> None:
        # What still refers to the owner goes first (session -> transport -> protocol
        # -> session would outlive the call otherwise).
        self.route(_drop_datagram, _drop_datagram)
        self.rtp.close()
        self.rtcp.close()


async def open_pair(host: str, port_range: tuple[int, int], rng: random.Random) -> PortPair:
    """Bind a pair now (:func:`bind_pair`) and give it asyncio transports that drop
    what arrives until :meth:`PortPair.route` says where it goes."""
    loop = asyncio.get_running_loop()
    rtp_sock, rtcp_sock = bind_pair(host, port_range, rng)
    try:
        rtp, _ = await loop.create_datagram_endpoint(
            lambda: _RtpProtocol(_drop_datagram), sock=rtp_sock
        )
        rtcp, _ = await loop.create_datagram_endpoint(
            lambda: _RtpProtocol(_drop_datagram), sock=rtcp_sock
        )
    except BaseException:
        rtp_sock.close()
        rtcp_sock.close()
        raise
    return PortPair(host, rtp_sock.getsockname()[1], rtp_sock, rtcp_sock, rtp, rtcp)


class PortPool:
    """Ready port pairs on one media address (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port_range: tuple[int, int],
        *,
        size: int = DEFAULT_POOL_SIZE,
        quarantine: float = DEFAULT_QUARANTINE,
        max_cooling: int | None = None,
        retry_after: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.port_range = port_range
        self.core: PoolCore[PortPair] = PoolCore(
            size=size, quarantine=quarantine, max_cooling=max_cooling, retry_after=retry_after
        )
        self._rng = rng or random.Random()
        self._refill_task: asyncio.Task[None] | None = None
        self._closed = False
        self.stale_dropped = 0  # datagrams drained from reused pairs

    def __len__(self) -> int:
        """Pairs ready now (without those resting)."""
        return len(self.core.ready)

    @property
    def cooling(self) -> int:
        return len(self.core.cooling)

    def warm(self) -> None:
        """Start filling the pool (the first call need not miss)."""
        self._kick()

    def take(self) -> PortPair | None:
        """A ready pair, drained, or ``None`` (a miss); starts the refill either way."""
        if self._closed:
            return None
        loop = asyncio.get_running_loop()
        pair = self.core.take(loop.time())
        if pair is not None:
            self.stale_dropped += pair.drain()
        self._kick()
        return pair

    async def acquire(self) -> PortPair:
        """A pair for a call: from the pool, or (a miss) bound now, or when that fails
        a resting pair cut short; :class:`OSError` when the range is exhausted."""
        pair = self.take()
        if pair is None:
            try:
                pair = await open_pair(self.host, self.port_range, self._rng)
            except OSError:
                pair = self.core.take_resting()
                if pair is None:
                    raise
                self.stale_dropped += pair.drain()
        return pair

    def release(self, pair: PortPair) -> None:
        """A call is done with ``pair``: it rests, then serves another call (or is
        closed when the pool has enough)."""
        pair.route(_drop_datagram, _drop_datagram)
        if self._closed or not self.core.release(pair, asyncio.get_running_loop().time()):
            pair.close()

    def _kick(self) -> None:
        if self._refill_task is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        if self.core.wanted(loop.time()) > 0:
            self._refill_task = loop.create_task(self._refill())

    async def _refill(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closed and self.core.wanted(loop.time()) > 0:
                try:
                    pair = await open_pair(self.host, self.port_range, self._rng)
                except OSError as exc:
                    # Quietly: the call that misses next logs the 503 (throttled).
                    self.core.failed(loop.time())
                    logger.debug("RTP port pool on %s: %s", self.host, exc)
                    return
                if self._closed:
                    pair.close()
                    return
                self.core.added(pair)
                # one pair per loop turn: the refill never holds the loop for long
                await asyncio.sleep(0)
        finally:
            self._refill_task = None

    async def close(self) -> None:
        """Close every pooled pair (pairs in calls are closed when released)."""
        self._closed = True
        task = self._refill_task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for pair in self.core.drain_all():
            pair.close()
        await asyncio.sleep(0)
