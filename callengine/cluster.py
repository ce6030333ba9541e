"""One node on every core: ``callengine serve --workers N``.

Theory of operation
-------------------
A multi-worker node is one **front** process and N **worker** processes.

The front owns what must exist once per node:

- the SIP addresses: every listening socket and every TCP/TLS/WS/WSS connection. It
  reads each message only far enough to choose its worker (:mod:`callengine.dispatch`:
  the Call-ID, or a REGISTER's address-of-record) and hands it over a Unix datagram
  socketpair, so every message of a call reaches the worker that holds it even when
  all calls come from one address (a carrier gateway, a Kamailio, a SIPp). The
  per-source flood limit (``source_rate``) is applied here, once for the node;
- the LevelDB directory (one process may open it): the configuration cache with its
  master follower and ``tenant_files``, the registrations, and the call-log outbox
  with its History DB shipper. Workers get a replica of the tenant configuration and
  of the registrations, pushed on every change, and send their call-log records to
  the front, which group-commits them (fsynced) before it acknowledges: an answered
  call's "open" record is on disk before its 200 OK leaves the worker, as in a
  single process;
- the B-channel table (:class:`pri.channels.SharedChannels`, a shared memory map):
  a T1 with 23 channels carries 23 calls across all workers;
- /metrics for the node: each worker pushes its samples every second; the front
  serves them with a ``worker`` label beside its own.

A worker is a whole :class:`~callengine.node.Node` (transactions, dialogs, calls,
IVR, media) without sockets of its own for SIP: it reads what the front hands it and
sends UDP directly through its copy of the listening socket (same address and port),
streams through the front (:mod:`callengine.transport.relay`). Each worker has its own
slice of the RTP port range, media clock and event loop: a call's media stays with the
worker that holds its signalling.

Isolation. When a worker dies (``kill -9``, a crash), the front at once:
closes the call logs it had open as ``interrupted`` (after the records it had already
handed over are on disk), gives back its B-channels, sends new calls that would have
hashed to it to the live workers (and keeps sending those calls there until they
end), and starts it again. Calls on the other workers are not touched. SIGTERM to the
front drains every worker (new calls 503, active calls get ``drain_grace``).

Node-wide limits. ``max_calls``, ``max_cps`` and the per-source and per-tenant caps
(``source_max_*``, ``tenant_max_*``, tenant ``limits``) count once for the node
(:class:`SharedCaps`, a shared memory map like the B-channel table); ``source_rate``/
``source_burst`` apply once, in the front.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import logging
import mmap
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from media.spool import spool_name
from pri.health import HealthBoard, HealthChanged, HealthState, SendProbe

from .config import EngineConfig, storage_settings
from .dispatch import (
    CONTROL,
    FrameReader,
    call_id_for,
    call_id_of,
    choose_worker,
    frame,
    initial_invite,
    pack_control,
    pack_inbound,
    register_aor_of,
    unpack_control,
    unpack_outbound,
)
from .limits import BacklogGate, CapsTable
from .realtime import GcGovernor, LoopLagMonitor
from .sip.registrar import Binding as RegBinding
from .transport import ListenSpec

log = logging.getLogger("callengine.cluster")

__all__ = ["ClusterFront", "WorkerLink", "rtp_slice", "worker_main"]

WORKER_ENV = "CALLENGINE_WORKER"
_SOCKBUF = 4 * 1024 * 1024
_SO_MEMINFO = 55
_WMEM_ALLOC = 2
"""``SO_MEMINFO``'s write-allocation slot: the kernel charges a datagram queued on a Unix
socket pair to its *sender* until it is read, so the front sees there how far behind
its worker is (the worker's own receive accounting stays at 0)."""
_SHED_LOG_EVERY = 10.0
"""Seconds between two log lines about a worker behind (see ``ClusterFront._behind``)."""
_REDIRECTS = 200_000
"""Calls the front remembers having sent away from a dead worker (LRU)."""
_METRICS_EVERY = 1.0
_now = time.monotonic
"""The front's clock for the node's trunk health board."""


def rtp_slice(lo: int, hi: int, index: int, workers: int) -> tuple[int, int]:
    """Worker ``index``'s part of the RTP port range [lo, hi] (even-aligned pairs)."""
    pairs = (hi - lo + 1) // 2
    per = max(pairs // workers, 1)
    start = lo + 2 * per * index
    end = start + 2 * per - 1 if index < workers - 1 else hi
    return start, min(end, hi)


def worker_config(cfg: EngineConfig, index: int, workers: int) -> EngineConfig:
    """What a worker runs with: its RTP ports and share of the node's limits; no
    metrics or admin endpoint of its own, no per-source limiter (the front's)."""
    lo, hi = rtp_slice(cfg.rtp_port_min, cfg.rtp_port_max, index, workers)
    # the spool quota is the node's disk: each worker's spool holds its share
    quota = storage_settings(cfg).spool_quota
    storage = {**cfg.media_storage, "spool_quota": max(1, quota // workers)}
    return dataclasses.replace(
        cfg,
        rtp_port_min=lo,
        rtp_port_max=hi,
        media_storage=storage,
        metrics=None,
        admin=None,
        source_rate=0.0,
        tenant_files=[],
        workers=1,
    )


# ============================================================== node-wide caps
class SharedCaps:
    """The call caps of a multi-worker node, counted once for the node in a shared
    memory map (``DATA_DIR/caps.map``) under ``flock``, like the B-channel table
    (:mod:`pri.channels`): ``max_calls``/``max_cps`` (key ``node:``) and the
    per-source and per-tenant caps (``source:ADDRESS``, ``tenant:ID``), so that N
    workers admit what one process would. The table is :class:`~callengine.limits.
    CapsTable`; each worker's share is given back when it dies (:meth:`reclaim`).

    It is the engine's ``caps`` in a worker (the API of :class:`~callengine.limits.
    CallCaps`). The front creates the map (``create=True``) before starting workers.
    """

    SLOTS = 1 << 16

    def __init__(
        self, path: str | os.PathLike[str], *, slot: int, workers: int, create: bool
    ) -> None:
        self.slot = slot
        self.refused: dict[str, int] = {}
        """Refusals by ``"<kind>:<reason>"``, as :class:`CallCaps` counts them."""
        size = CapsTable.size(self.SLOTS, workers)
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        self._fd = os.open(path, flags, 0o600)
        if create:
            os.ftruncate(self._fd, size)  # sparse: pages are touched as keys arrive
        self._mm = mmap.mmap(self._fd, size)
        view = memoryview(self._mm)
        if create:
            self.table = CapsTable.create(view, slots=self.SLOTS, workers=workers)
        else:
            self.table = CapsTable.attach(view)

    def admit(self, key: str, now: float, *, max_calls: int = 0, cps: float = 0.0) -> str | None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            reason = self.table.admit(self.slot, key, now, max_calls=max_calls, cps=cps)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        if reason is not None:
            label = f"{key.split(':', 1)[0]}:{reason}"
            self.refused[label] = self.refused.get(label, 0) + 1
        return reason

    def release(self, key: str) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self.table.release(self.slot, key)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def active(self, key: str) -> int:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            return self.table.active(key)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def reclaim(self, slot: int) -> int:
        """A worker died: its calls no longer count. Returns how many it held."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            return self.table.reclaim(slot)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.table.buf.release()  # no view of the map may outlive it
        self._mm.close()
        os.close(self._fd)


class NodeAdmission:
    """A worker's admission of new calls: the node's caps (:class:`SharedCaps`), then
    the engine's own (per-source caps), as the user agent's ``admission``."""

    KEY = "node:"

    def __init__(
        self,
        caps: SharedCaps,
        inner: Any,
        *,
        max_calls: int,
        max_cps: float,
        counters: Any = None,
    ) -> None:
        self.caps = caps
        self.inner = inner
        self.max_calls = max_calls
        self.max_cps = max_cps
        self.counters = counters
        """The user agent's counters: a refusal by the node's cap counts in
        ``callengine_overload_rejected_total`` as in a one-process node."""

    def admit_call(self, request: Any, now: float) -> str | None:
        refused = self.caps.admit(self.KEY, now, max_calls=self.max_calls, cps=self.max_cps)
        if refused is not None:
            if self.counters is not None:
                self.counters.rejected_overload += 1
            return "Node Call Limit Reached" if refused == "calls" else "Node Call Rate Reached"
        if self.inner is not None:
            reason = self.inner.admit_call(request, now)
            if reason is not None:
                self.caps.release(self.KEY)
                return str(reason)
        return None

    def release_call(self, request: Any) -> None:
        self.caps.release(self.KEY)
        if self.inner is not None:
            self.inner.release_call(request)


# =========================================================================== worker
class ReplicaConfig:
    """A worker's copy of the tenant configuration (the front owns the LevelDB cache);
    the read side of :class:`config_cache.store.ConfigCache`."""

    def __init__(self) -> None:
        from config_cache.snapshot import Snapshot

        self.serving_demo = False
        self._snapshot = Snapshot.build([])

    @property
    def snapshot(self) -> Any:
        return self._snapshot

    def lookup(self, number: str) -> Any:
        return self._snapshot.lookup(number)

    def tenant(self, tenant_id: str) -> Any:
        return self._snapshot.tenants.get(tenant_id)

    def replace(self, state: tuple[list[dict[str, Any]], str | None, bool, int]) -> None:
        """Install the front's configuration (tenant documents, default tenant,
        serving-demo flag, version); validation compiles the IVR flows here."""
        from config_cache.schema import validate_tenant
        from config_cache.snapshot import Snapshot

        docs, default, demo, version = state
        tenants = [validate_tenant(doc, file="<front>") for doc in docs]
        self._snapshot = Snapshot.build(tenants, default_tenant=default, version=version)
        self.serving_demo = demo


class ReplicaBindings:
    """A worker's copy of the node's registrations, the registrars' binding store.

    A change made here (a REGISTER, a WebSocket flow that closed) goes to the front,
    which stores it and pushes it to the other workers. Dropping expired bindings on
    read is not sent: every worker drops them itself, and sending it could race with a
    REGISTER on the AOR's home worker."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._table: dict[str, list[RegBinding]] = {}

    def load(self, table: dict[str, list[dict[str, Any]]]) -> None:
        for aor, records in table.items():
            self.apply(aor, records)

    def apply(self, aor: str, records: list[dict[str, Any]]) -> None:
        bindings = []
        for record in records:
            try:
                bindings.append(RegBinding.from_dict(record))
            except (KeyError, TypeError, ValueError):
                log.error("bad binding for %s from the front ignored", aor)
        if bindings:
            self._table[aor] = bindings
        else:
            self._table.pop(aor, None)

    def get(self, aor: str) -> list[RegBinding]:
        return list(self._table.get(aor, ()))

    def put(self, aor: str, bindings: list[RegBinding]) -> None:
        old = self._table.get(aor, [])
        if bindings:
            self._table[aor] = list(bindings)
        else:
            self._table.pop(aor, None)
        now = time.time()
        purge = all(b in old for b in bindings) and all(
            b.expires_at <= now for b in old if b not in bindings
        )
        if not purge:
            self._send(("bind", aor, [b.to_dict() for b in bindings]))


class RemoteCallLogWriter:
    """A worker's call-log writer: records go to the front, which writes them to the
    outbox (fsynced) and acknowledges; the future resolves then."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._seq = 0
        self._pending: dict[int, asyncio.Future[None]] = {}

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def submit(self, state: str, rec: Any) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._seq += 1
        self._pending[self._seq] = fut
        self._send(("log", self._seq, state, rec))
        return fut

    def acked(self, seq: int, error: str | None) -> None:
        fut = self._pending.pop(seq, None)
        if fut is None or fut.done():
            return
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(OSError(f"call-log write failed in the front: {error}"))

    def fail_all(self, reason: str) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(OSError(reason))
        self._pending.clear()


class _ReplicaStore:
    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config

    def close(self) -> None:
        return None


class WorkerLink:
    """A worker's side of the front: the control channel and the replicas."""

    def __init__(self, ctl: socket.socket, index: int, init: dict[str, Any]) -> None:
        self.index = index
        self.workers: int = init["workers"]
        self._ctl = ctl
        self._writer: asyncio.StreamWriter | None = None
        self.config = ReplicaConfig()
        self.config.replace(init["config"])
        self.store = _ReplicaStore(self.config)
        self.bindings = ReplicaBindings(self._send_ordered)
        self.bindings.load(init["bindings"])
        self.writer = RemoteCallLogWriter(self.send)
        self.channels_path: str = init["channels"]
        self.node: Any = None
        self.relay: Any = None
        self.board: Any = None
        """The B2BUA's view of the front's trunk health board."""
        self.lost = asyncio.Event()
        self._auth: Any = None

    def send(self, message: Any) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(frame(message))

    def _send_ordered(self, message: Any) -> None:
        """Over the data channel: a binding reaches the front before the REGISTER's
        200 leaves this worker (see :mod:`callengine.dispatch`, ``CONTROL``)."""
        if self.relay is not None:
            self.relay.send_control(message)

    def flow_registered(self, flow: tuple[str, tuple[str, int]], realm: str, aor: str) -> None:
        """A WebSocket client registered over ``flow`` here: tell the other workers (in
        order with the binding), so that they can ring it through the front."""
        self._send_ordered(("flow", flow, realm, aor))

    def share_auth(self, auth: Any) -> None:
        """One authentication state for the node (:class:`~callengine.userauth.UserAuth`):
        the nonces this worker uses up and the failures and successes its guard sees go
        to the other workers, in order with the SIP messages (the front hands them on
        before the next REGISTER or INVITE it dispatches). Nonces issued before this
        worker started are refused as used: it cannot know which ones the node used."""
        self._auth = auth
        auth.used_nonces.on_use = lambda *use: self._send_ordered(("nonce", *use))
        auth.used_nonces.refuse_issued_before(time.time())
        auth.guard.on_event = lambda *event: self._send_ordered(("auth", *event))

    def on_control(self, message: tuple[Any, ...]) -> None:
        """An ordered control message from the front (a registration, a nonce used, an
        authentication failure or success elsewhere)."""
        kind = message[0]
        if kind == "bind":
            self.bindings.apply(message[1], message[2])
        elif kind == "flow":
            _, flow, realm, aor = message
            self._add_flow(flow, realm, aor)
        elif kind == "nonce" and self._auth is not None:
            self._auth.used_nonces.apply(*message[1:])
        elif kind == "auth" and self._auth is not None:
            self._auth.guard.apply(*message[1:])

    def _add_flow(self, flow: tuple[str, tuple[str, int]], realm: str, aor: str) -> None:
        if self.relay is not None:
            self.relay.flows.add(flow)
        if self.node is not None:
            self.node.add_flow(flow, realm, aor)

    def share_channels(self, plan: Any) -> None:
        from pri.channels import SharedChannels, channel_layout

        bases, size = channel_layout({n: t.capacity for n, t in plan.trunks.items()})
        if not size:
            return
        table = SharedChannels(self.channels_path, size, owner=self.index + 1, create=False)
        for name, trunk in plan.trunks.items():
            trunk.share(table, bases[name])

    def health_board(self, plan: Any) -> Callable[[float], Any]:
        """The B2BUA's health board: a view of the front's (one board per node)."""
        from pri.health import RemoteHealthBoard

        def make(now: float) -> RemoteHealthBoard:
            self.board = RemoteHealthBoard(plan.trunks.values(), now=now, forward=self.send)
            return self.board

        return make

    async def run(self) -> None:
        """Read the front's messages until the channel closes."""
        reader, self._writer = await asyncio.open_connection(sock=self._ctl)
        frames = FrameReader()
        self.send(("ready", self.index, os.getpid()))
        metrics = asyncio.ensure_future(self._push_metrics())
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                for message in frames.feed(data):
                    await self._handle(message)
        finally:
            metrics.cancel()
            self.writer.fail_all("the front is gone")
            self.lost.set()

    async def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ack":
            self.writer.acked(message[1], message[2])
        elif kind == "config":
            state = message[1]
            replica = ReplicaConfig()
            await asyncio.to_thread(replica.replace, state)
            self.config._snapshot, self.config.serving_demo = (
                replica._snapshot,
                replica.serving_demo,
            )
        elif kind == "sync":
            self.send(("synced", os.getpid()))
        elif kind == "prompt" and self.node is not None:
            # the front fetched (or evicted) a tenant's prompt in the shared cache
            self.node.engine.media_manager.prompt_changed(message[1], message[2])
        elif kind == "health" and self.board is not None:
            _, trunk, state, at, reason = message
            event = self.board.apply(trunk, state, at=at, reason=reason)
            b2bua = getattr(self.node, "b2bua", None)
            if event is not None and b2bua is not None:
                b2bua.health_changed(event, log_it=False)  # the front logged it
        elif kind == "probe":
            from pri.health import SendProbe

            b2bua = getattr(self.node, "b2bua", None)
            if b2bua is not None:
                b2bua.send_probe(SendProbe(*message[1:]))
        elif kind == "flow_closed" and self.relay is not None:
            self.relay.flow_closed(message[1], message[2])
        elif kind == "send_error" and self.relay is not None:
            self.relay.send_failed(message[1], message[2])

    async def _push_metrics(self) -> None:
        from prometheus_client import generate_latest

        while True:
            await asyncio.sleep(_METRICS_EVERY)
            node = self.node
            if node is not None:
                try:
                    self.send(("metrics", generate_latest(node.registry)))
                except Exception:  # a collector failing must not end the worker
                    log.exception("worker metrics")


def worker_main() -> int:
    """Entry point of a worker process (started by the front; see ``WORKER_ENV``)."""
    from .cli import _event_loop_run
    from .logs import setup_logging

    index_s, ctl_fd, data_fd, udp_fds = os.environ[WORKER_ENV].split(":")
    ctl = socket.socket(fileno=int(ctl_fd))
    data = socket.socket(fileno=int(data_fd))
    udp = [socket.socket(fileno=int(fd)) for fd in udp_fds.split(",") if fd]
    # the first message is the worker's configuration; read it before the loop runs
    frames = FrameReader()
    init: dict[str, Any] | None = None
    while init is None:
        chunk = ctl.recv(1 << 20)
        if not chunk:
            return 1
        got = frames.feed(chunk)
        if got:
            init = got[0]
    cfg: EngineConfig = init["cfg"]
    writer = setup_logging(cfg.log_format, cfg.log_level)
    try:
        return int(_event_loop_run(_run_worker(int(index_s), cfg, init, ctl, data, udp)))
    except KeyboardInterrupt:
        return 0
    finally:
        writer.stop()


async def _run_worker(
    index: int,
    cfg: EngineConfig,
    init: dict[str, Any],
    ctl: socket.socket,
    data: socket.socket,
    udp: list[socket.socket],
) -> int:
    from .metrics import EngineCollector
    from .node import Node
    from .transport.relay import RelayTransports

    loop = asyncio.get_running_loop()
    link = WorkerLink(ctl, index, init)
    node = Node(cfg, auth_secret=init["auth_secret"])
    node.link = link
    link.node = node
    link.share_auth(node.auth)
    relay = RelayTransports(
        data=data,
        udp=udp,
        bound=[ListenSpec(*spec) for spec in init["bound"]],
        on_front_lost=link.lost.set,
    )
    link.relay = relay
    relay.on_control = link.on_control
    for flow, realm, aor in init.get("flows", ()):
        link._add_flow(flow, realm, aor)
    node.engine.relay = relay
    node.engine.new_call_id = functools.partial(call_id_for, index, link.workers)
    node.engine.worker_index = index
    node.engine.clock_phase = index / link.workers  # the workers' media clocks apart
    await node.start()
    # the node's caps (max_calls / max_cps, per source, per tenant), counted once for
    # all workers
    caps = SharedCaps(init["caps"], slot=index, workers=link.workers, create=False)
    node.engine.caps = caps
    ua = node.engine.ua
    ua.max_calls, ua.max_cps = 1 << 62, 0.0
    ua.admission = NodeAdmission(
        caps, ua.admission, max_calls=cfg.max_calls, max_cps=cfg.max_cps, counters=ua.counters
    )
    node.registry.register(EngineCollector(node.engine))
    admin = None
    if init.get("admin_socket"):
        from .admin import AdminServer

        admin = AdminServer(node, "127.0.0.1", 0, unix=init["admin_socket"])
        await admin.start()
    relay.start()
    runner = asyncio.ensure_future(link.run())
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the front decides
    stopping = asyncio.ensure_future(stop.wait())
    lost = asyncio.ensure_future(link.lost.wait())
    await asyncio.wait({stopping, lost}, return_when=asyncio.FIRST_COMPLETED)
    if link.lost.is_set() and not stop.is_set():
        # the front died (kill -9 of the node): nothing can be logged or sent any
        # more; the next start closes the open call logs as interrupted
        log.error("worker %d: the front is gone; exiting", index)
        os._exit(1)
    log.info("worker %d draining %d calls", index, len(node.engine.calls))
    if admin is not None:
        admin.stopping = True
    await node.stop()
    if admin is not None:
        await admin.stop()
    runner.cancel()
    lost.cancel()
    return 0


# ============================================================================ front
class _Worker:
    """The front's handle on one worker process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.data: socket.socket | None = None
        self.ctl: asyncio.StreamWriter | None = None
        self.live = False
        self.started_at = 0.0
        self.restarts = 0
        self.dispatched = 0
        self.dropped = 0
        self.shed = 0
        """New INVITEs for it dropped unread while it was behind (:meth:`ClusterFront.
        _dispatch`); part of its ``callengine_overload_dropped_total``."""
        self.gate = BacklogGate()
        self.shed_episodes = 0
        self.shed_logged = -_SHED_LOG_EVERY
        self.metrics = b""
        self.open_calls: set[str] = set()
        self.pending: set[asyncio.Future[None]] = set()
        self.reader_task: asyncio.Task[None] | None = None

    def send(self, message: Any) -> None:
        if self.ctl is not None and not self.ctl.is_closing():
            self.ctl.write(frame(message))


class _PromptNotices:
    """The front's prompt cache tells the workers each prompt that changed (each
    forgets its decoded copy, and its plane's)."""

    def __init__(self, workers: list[_Worker]) -> None:
        self.workers = workers

    def invalidate(self, *, tenant: str | None = None, name: str | None = None) -> None:
        if tenant is None or name is None:
            return
        for w in self.workers:
            if w.live:
                w.send(("prompt", tenant, name))


class ClusterFront:
    """The front process of a multi-worker node (see the module docstring)."""

    def __init__(self, cfg: EngineConfig, workers: int) -> None:
        from .node import Node

        if not 2 <= workers <= 254:
            raise ValueError("workers must be 2..254")
        self.cfg = cfg
        self.n = workers
        self.node = Node(cfg)  # its state only: the engine is never started here
        self.auth_secret = secrets.token_bytes(32)
        """The workers' Digest nonce key: a nonce one worker issued is valid on all."""
        self.node.registry.unregister(self.node.auth_collector)  # the workers' registrars
        self.workers = [_Worker(i) for i in range(workers)]
        self.transports: Any = None
        self.limiter: Any = None
        self.channels: Any = None
        self.caps: SharedCaps | None = None
        self.board: HealthBoard | None = None
        """The node's trunk health (the workers hold views of it)."""
        self._health_wake = asyncio.Event()
        self.stopping = False
        self.redirects: OrderedDict[bytes, int] = OrderedDict()
        self.flows: dict[tuple[str, tuple[str, int]], set[tuple[str, str]]] = {}
        """Live WebSocket flows -> the (realm, AOR)s registered over them (for new workers)."""
        self.unparsed = 0
        self.limited = 0
        self._config_version = -1
        self._tasks: list[asyncio.Task[Any]] = []
        self._udp_fds: list[int] = []
        self._run_dir: str | None = None
        self.prompt_sync: Any = None
        """With remote Media Storage: the tenants' prompts, fetched once for the node
        into ``DATA_DIR/prompt-cache``, from which the workers play."""
        self._prompt_target: Any = None
        self.all_live = asyncio.Event()
        """Every worker has started and taken the node's state (set once)."""
        self.lag = LoopLagMonitor()
        """The front's own loop: every SIP message of the node waits on it."""
        self.gc = GcGovernor(self._quiet, mode=cfg.gc)
        self._seen_dispatched = -1

    # ------------------------------------------------------------------- start
    async def start(self) -> None:
        from pri.channels import SharedChannels, channel_layout

        from .engine import listen_all, make_transports
        from .limits import SourceLimiter, networks_matcher
        from .node import _trunk_networks

        cfg = self.cfg
        await self.node.open_state(spools=[spool_name(i) for i in range(self.n)])
        plan = self.node.trunk_plan()
        _, size = channel_layout({n: t.capacity for n, t in plan.trunks.items()})
        self.channels = SharedChannels(self._channels_path(), size, owner=0, create=True)
        self.caps = SharedCaps(self._caps_path(), slot=0, workers=self.n, create=True)
        exempt = networks_matcher(
            [*cfg.source_exempt, *cfg.trusted_sources, *_trunk_networks(plan)]
        )
        if cfg.source_rate > 0:
            self.limiter = SourceLimiter(
                rate=cfg.source_rate,
                burst=max(cfg.source_burst, 1.0),
                ban=cfg.source_ban,
                exempt=exempt,
            )
        self.transports = make_transports(cfg, self._dispatch, exempt)
        self.transports.on_flow_closed = self._flow_closed
        self.transports.on_send_error = self._send_error
        await listen_all(self.transports, cfg)
        for proto in self.transports.udp:
            sock = proto.transport.get_extra_info("socket")
            self._udp_fds.append(sock.fileno())
        self._config_version = self.node._local().config.snapshot.version
        if plan.trunks:
            # one trunk health board for the node; workers send the probes it asks for
            self.board = HealthBoard(plan.trunks.values(), now=asyncio.get_running_loop().time())
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        if self.node.follower is not None:
            self.node.follower.on_change = lambda _tenants: self.push_config()
        self._tasks.append(asyncio.ensure_future(self._watch_config()))
        if self.board is not None:
            self._tasks.append(asyncio.ensure_future(self._run_health()))
        self._follow_prompts()
        self.lag.start()
        self.gc.start()  # the collector as a worker's (realtime.py), once started
        log.info(
            "front listening on %s with %d workers",
            ", ".join(f"{s.transport} {s.host}:{s.port}" for s in self.transports.bound),
            self.n,
        )

    def _follow_prompts(self) -> None:
        """With remote Media Storage, the front keeps the tenants' prompts cached for
        the node (one fetch per version) and tells every worker what changed."""
        storage = storage_settings(self.cfg)
        if storage.kind != "azure" or not self.cfg.media:
            return
        from media.tenantprompts import CACHE_DIR, CachedPromptStorage, PromptSync

        from ._media import media_target

        self._prompt_target = media_target(storage)
        self.prompt_sync = PromptSync(
            CachedPromptStorage(Path(self.cfg.data_dir) / CACHE_DIR),
            self._prompt_target,
            _PromptNotices(self.workers),
            cap=storage.prompt_cache_bytes,
            interval=storage.prompt_refresh,
        )
        store = self.node._local()
        self.prompt_sync.start(lambda: store.config.snapshot.tenants)

    def admin_socket(self, w: _Worker) -> str:
        """The worker's control API: a Unix socket in the front's private (0700)
        run directory (short: a socket path has at most 107 bytes)."""
        if self._run_dir is None:
            self._run_dir = tempfile.mkdtemp(prefix="callengine-")
        return os.path.join(self._run_dir, f"worker-{w.index}.sock")

    def worker_admin_sockets(self) -> list[str]:
        return [self.admin_socket(w) for w in self.workers if w.live]

    def _caps_path(self) -> str:
        return str(Path(self.cfg.data_dir) / "caps.map")

    def _channels_path(self) -> str:
        return str(Path(self.cfg.data_dir) / "channels.map")

    def _config_state(self) -> tuple[list[dict[str, Any]], str | None, bool, int]:
        cache = self.node._local().config
        snap = cache.snapshot
        return (
            [t.to_doc() for t in snap.tenants.values()],
            snap.default_tenant,
            cache.serving_demo,
            snap.version,
        )

    def _bindings_dump(self) -> dict[str, list[dict[str, Any]]]:
        return self.node._local().bindings.all_aors()

    async def _spawn(self, w: _Worker) -> None:
        front_data, worker_data = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for sock in (front_data, worker_data):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKBUF)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKBUF)
        front_ctl, worker_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (worker_ctl.fileno(), worker_data.fileno(), *self._udp_fds)
        env = dict(os.environ)
        udp_fds = ",".join(map(str, self._udp_fds))
        env[WORKER_ENV] = f"{w.index}:{worker_ctl.fileno()}:{worker_data.fileno()}:{udp_fds}"
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from callengine.cluster import worker_main; sys.exit(worker_main())",
            pass_fds=fds,
            env=env,
        )
        worker_ctl.close()
        worker_data.close()
        w.started_at = time.monotonic()
        front_data.setblocking(False)
        w.data = front_data
        loop = asyncio.get_running_loop()
        loop.add_reader(front_data.fileno(), self._on_worker_data, w)
        reader, w.ctl = await asyncio.open_connection(sock=front_ctl)
        w.send(
            {
                "cfg": worker_config(self.cfg, w.index, self.n),
                "workers": self.n,
                "config": self._config_state(),
                "bindings": self._bindings_dump(),
                "bound": [(s.host, s.port, s.transport) for s in self.transports.bound],
                "channels": self._channels_path(),
                "caps": self._caps_path(),
                "auth_secret": self.auth_secret,
                "flows": [
                    (flow, realm, aor) for flow, keys in self.flows.items() for realm, aor in keys
                ],
                "admin_socket": self.admin_socket(w) if self.cfg.admin else None,
            }
        )
        w.reader_task = asyncio.ensure_future(self._read_worker(w, reader))

    # ---------------------------------------------------------------- dispatch
    def _choose(self, data: bytes) -> _Worker | None:
        workers = self.workers
        index = choose_worker(data, self.n)
        w = workers[index]
        if w.live and not self.redirects:
            return w
        key = _dispatch_key(data)
        if key is not None and key in self.redirects:
            self.redirects.move_to_end(key)
            moved = workers[self.redirects[key]]
            if moved.live:
                return moved
        if w.live:
            return w
        live = [x for x in workers if x.live]
        if not live:
            return None
        crc = zlib.crc32(key) if key is not None else 0
        moved = live[crc % len(live)]
        if key is not None:
            # this call stays on the worker that took it, also after its home returns
            self.redirects[key] = moved.index
            if len(self.redirects) > _REDIRECTS:
                self.redirects.popitem(last=False)
        return moved

    def _dispatch(
        self, data: bytes, source: tuple[str, int], transport: str, local: tuple[str, int]
    ) -> None:
        limiter = self.limiter
        if limiter is not None and not limiter.allow(source[0], time.monotonic()):
            self.limited += 1
            return
        if data.startswith((b"INVITE ", b"REGISTER ")):
            # a registration a worker just made must reach the others before a call
            # that may be for it, and a nonce it used up or a failure its guard saw
            # before the next credentials: read what the workers sent before handing
            # this on
            for x in self.workers:
                if x.data is not None:
                    self._on_worker_data(x)
        w = self._choose(data)
        if w is None or w.data is None:
            self.unparsed += 1
            return
        if data.startswith(b"INVITE ") and initial_invite(data) and self._behind(w):
            # as a one-process node does with its receive queue: a new call is dropped
            # unread (its caller retransmits or its proxy fails over) so that what is
            # queued behind it (OPTIONS from the balancer, BYEs, ACKs) gets through
            w.shed += 1
            return
        try:
            w.data.send(pack_inbound(data, source, transport, local))
            w.dispatched += 1
        except OSError:  # the worker is behind by its whole socket buffer, or gone
            w.dropped += 1

    def _behind(self, w: _Worker) -> bool:
        """The worker's queue from the front is past :data:`~callengine.limits.
        DROP_BACKLOG` bytes (and not yet back under a quarter of it)."""
        assert w.data is not None
        try:
            raw = w.data.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 64)
        except OSError:
            return False
        was = w.gate.shut
        queued = int.from_bytes(raw[4 * _WMEM_ALLOC : 4 * _WMEM_ALLOC + 4], sys.byteorder)
        if w.gate.update(queued) and not was:
            # under a sustained flood the gate opens and shuts several times a second:
            # one line per _SHED_LOG_EVERY seconds at most (the count is in /metrics)
            w.shed_episodes += 1
            now = time.monotonic()
            if now - w.shed_logged >= _SHED_LOG_EVERY:
                log.warning(
                    "worker %d is %d KB behind: new calls dropped unread until it catches "
                    "up (episodes since the last such line: %d)",
                    w.index,
                    queued >> 10,
                    w.shed_episodes,
                )
                w.shed_logged, w.shed_episodes = now, 0
        return w.gate.shut

    def _on_worker_data(self, w: _Worker) -> None:
        """Stream messages a worker sends (TCP, TLS, WS, WSS): out through the front."""
        sock = w.data
        if sock is None:
            return
        for _ in range(256):
            try:
                msg = sock.recv(1 << 17)
            except BlockingIOError:
                return
            except OSError:
                msg = b""
            if not msg:
                asyncio.get_running_loop().remove_reader(sock.fileno())
                return
            if msg[:1] == CONTROL:
                self._on_ordered(w, unpack_control(msg))
                continue
            try:
                data, dest, transport = unpack_outbound(msg)
            except (ValueError, UnicodeDecodeError):
                continue
            self.transports.send(data, dest, transport)

    def _on_ordered(self, w: _Worker, message: tuple[Any, ...]) -> None:
        """A control message a worker sent on its data channel: a registration changed
        there. Stored, then handed to the other workers ahead of what comes next."""
        if message[0] == "flow":
            _, flow, realm, aor = message
            self.flows.setdefault(flow, set()).add((realm, aor))
        elif message[0] == "bind":
            _, aor, records = message
            self.node._local().bindings.put_aor(aor, records)
        elif message[0] not in ("nonce", "auth"):  # those only go on to the others
            return
        packed = pack_control(message)
        for other in self.workers:
            if other is not w and other.data is not None:
                try:
                    other.data.send(packed)
                except OSError:
                    other.dropped += 1

    def _flow_closed(self, peer: tuple[str, int], transport: str) -> None:
        self.flows.pop((transport, peer), None)
        for w in self.workers:
            w.send(("flow_closed", peer, transport))

    def _send_error(self, dest: tuple[str, int], transport: str) -> None:
        for w in self.workers:
            w.send(("send_error", dest, transport))

    # ---------------------------------------------------------- control channel
    async def _read_worker(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        frames = FrameReader()
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                for message in frames.feed(data):
                    self._on_control(w, message)
        except (ConnectionError, OSError):
            pass
        await self._worker_gone(w)

    def _on_control(self, w: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "log":
            _, seq, state, rec = message
            writer = self.node.writer
            assert writer is not None
            if state == "open":
                w.open_calls.add(rec.call_id)
            fut = writer.submit(state, rec)
            w.pending.add(fut)
            fut.add_done_callback(functools.partial(self._logged, w, seq, rec.call_id, state))
        elif kind == "metrics":
            w.metrics = message[1]
        elif kind == "call_result" and self.board is not None:
            _, trunk, ok, reason = message
            self._health(self.board.record_call_result(trunk, ok, now=_now(), reason=reason))
        elif kind == "probe_result" and self.board is not None:
            _, trunk, probe_id, status, transport_error = message
            self._health(
                self.board.on_probe_response(
                    trunk, probe_id, status, now=_now(), transport_error=transport_error
                )
            )
        elif kind == "ready":
            # what changed since its start (registrations, configuration, trunk health)
            # is queued on the control channel ahead of this marker: the worker takes
            # calls once it has applied all of it
            for health in self.board or ():
                if health.state is not HealthState.UP:
                    w.send(("health", health.trunk, health.state.value, health.changed_at, ""))
            w.send(("sync",))
        elif kind == "synced":
            w.live = True
            log.info("worker %d ready (pid %d)", w.index, message[1])
            if all(x.live for x in self.workers):
                self.all_live.set()

    def _logged(
        self, w: _Worker, seq: int, call_id: str, state: str, fut: asyncio.Future[None]
    ) -> None:
        w.pending.discard(fut)
        error = None if fut.cancelled() or fut.exception() is None else str(fut.exception())
        if state == "final" and error is None:
            w.open_calls.discard(call_id)
        w.send(("ack", seq, error))

    async def _worker_gone(self, w: _Worker) -> None:
        """The worker's control channel closed: it exited or was killed."""
        w.live = False
        if w.data is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(w.data.fileno())
            w.data.close()
            w.data = None
        if w.proc is not None:
            code = await w.proc.wait()
        else:
            code = None
        # what it handed over is written first, then its open calls are closed
        if w.pending:
            await asyncio.wait(list(w.pending), timeout=10)
        store = self.node._local()
        if w.open_calls:
            closed = store.outbox.recover_interrupted(time.time(), only=w.open_calls)
            w.open_calls.clear()
            log.warning(
                "worker %d ended (exit %s): %d call logs closed as interrupted",
                w.index,
                code,
                len(closed),
            )
        if self.caps is not None:
            self.caps.reclaim(w.index)
        freed = self.channels.reclaim(w.index + 1) if self.channels is not None else 0
        if freed:
            log.warning("worker %d ended: %d B-channels given back", w.index, freed)
        if self.stopping:
            return
        w.restarts += 1
        quick = time.monotonic() - w.started_at < 5.0
        await asyncio.sleep(min(5.0, 0.2 * w.restarts) if quick else 0.2)
        if not self.stopping:
            log.error("worker %d exited (code %s): starting it again", w.index, code)
            await self._spawn(w)

    # ---------------------------------------------------------- trunk health
    async def _run_health(self) -> None:
        """The node's trunk health board: probes (each sent by one live worker, chosen
        by the trunk's name) and breaker changes, logged here and sent to every worker."""
        board = self.board
        assert board is not None
        while True:
            deadline = board.next_deadline()
            delay = 1.0 if deadline is None else max(0.0, deadline - _now())
            self._health_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._health_wake.wait(), min(delay, 1.0))
            changes: list[HealthChanged] = []
            for item in board.handle_timer(_now()):
                if isinstance(item, SendProbe):
                    self._ask_probe(item)
                else:
                    changes.append(item)
            self._health(changes)

    def _ask_probe(self, probe: SendProbe) -> None:
        live = [w for w in self.workers if w.live]
        if not live:  # nobody to send it (starting, or every worker restarting)
            assert self.board is not None
            self.board.skip_probe(probe.trunk, probe.probe_id, now=_now())
            return
        w = live[zlib.crc32(probe.trunk.encode()) % len(live)]
        w.send(("probe", *dataclasses.astuple(probe)))

    def _health(self, events: Iterable[HealthChanged]) -> None:
        for event in events:
            log.log(
                logging.WARNING if event.new is HealthState.DOWN else logging.INFO,
                "trunk %s %s -> %s: %s",
                event.trunk,
                event.old.value,
                event.new.value,
                event.reason,
            )
            for w in self.workers:
                w.send(("health", event.trunk, event.new.value, event.at, event.reason))
        self._health_wake.set()  # the board's next deadline may have moved

    async def _watch_config(self) -> None:
        """Push the tenant configuration to the workers whenever it changes: the master
        follower's updates and ``ctl reload`` at once, anything else within 0.5 s."""
        while True:
            await asyncio.sleep(0.5)
            self.push_config()

    def push_config(self) -> bool:
        """Send the workers the tenant configuration if it changed since the last push
        (``ctl reload`` calls it before answering, so that the next call, on whichever
        worker, runs what was loaded). True when it sent."""
        version = self.node._local().config.snapshot.version
        if version == self._config_version:
            return False
        self._config_version = version
        state = self._config_state()
        for w in self.workers:
            w.send(("config", state))
        return True

    # ------------------------------------------------------------------- stop
    async def stop(self) -> None:
        """Drain: SIGTERM to every worker (each drains for ``drain_grace``), then
        close the node's state."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        self.lag.stop()
        self.gc.stop()
        if self.prompt_sync is not None:
            await self.prompt_sync.stop()
            await self._prompt_target.close()
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)
        timeout = self.cfg.drain_grace + 15
        readers = [w.reader_task for w in self.workers if w.reader_task is not None]
        if readers:
            await asyncio.wait(readers, timeout=timeout)
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()
        if self.transports is not None:
            await self.transports.close()
        if self.channels is not None:
            self.channels.close()
        if self.caps is not None:
            self.caps.close()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        await self.node.stop(0)

    def _quiet(self) -> bool:
        """The front's "idle" for its collector (:class:`GcGovernor`): no message
        dispatched since it last asked (it asks every 50 ms once a full collection is
        due), so the whole-heap collection waits for a pause in the traffic."""
        dispatched = sum(w.dispatched for w in self.workers)
        quiet = dispatched == self._seen_dispatched
        self._seen_dispatched = dispatched
        return quiet

    # ----------------------------------------------------------------- metrics
    def collector(self) -> Any:
        return _WorkerCollector(self)


def _dispatch_key(data: bytes) -> bytes | None:
    if data.startswith(b"REGISTER "):
        aor = register_aor_of(data)
        if aor is not None:
            return aor
    return call_id_of(data)


class _WorkerCollector:
    """/metrics of a multi-worker node: each worker's samples with a ``worker`` label,
    and the front's own (workers up, restarts, messages dispatched and dropped, and
    what only the front holds: the per-source flood limit and the TCP/TLS/WS
    connections, whose series the workers do not export)."""

    def __init__(self, front: ClusterFront) -> None:
        self.front = front

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
        from prometheus_client.parser import text_string_to_metric_families

        from .metrics import loop_metrics

        front = self.front
        up = GaugeMetricFamily("callengine_worker_up", "Worker process is up", labels=["worker"])
        restarts = CounterMetricFamily(
            "callengine_worker_restarts", "Worker processes started again", labels=["worker"]
        )
        dispatched = CounterMetricFamily(
            "callengine_dispatch_messages",
            "SIP messages the front handed to each worker",
            labels=["worker"],
        )
        dropped = CounterMetricFamily(
            "callengine_dispatch_dropped",
            "SIP messages the front could not hand over (worker behind or gone)",
            labels=["worker"],
        )
        merged: dict[str, Metric] = {}
        for w in front.workers:
            label = str(w.index)
            up.add_metric([label], 1 if w.live else 0)
            restarts.add_metric([label], w.restarts)
            dispatched.add_metric([label], w.dispatched)
            dropped.add_metric([label], w.dropped)
            if not w.metrics or not w.live:
                continue
            families = text_string_to_metric_families(w.metrics.decode())
            _merge(merged, families, label, shed=w.shed)
        # the front's own loop and collector, in the same families as the workers'
        _merge(merged, loop_metrics(front.lag, front.gc.stats), "front")
        transports = front.transports
        if transports is not None:
            # the connections' errors are the front's (it holds them), the workers' are
            # their own sends: one family, the front's series labelled worker="front"
            errors = merged.get(_ERRORS)
            if errors is None:
                errors = merged[_ERRORS] = Metric(_ERRORS, "Transport errors", "counter")
            for kind, n in (
                ("send", transports.send_errors),
                ("framing", transports.framing_errors),
                ("ws_upgrade", transports.refused_upgrades),
            ):
                errors.add_sample(_ERRORS + "_total", {"kind": kind, "worker": "front"}, n)
        yield up
        yield restarts
        yield dispatched
        yield dropped
        yield from _front_metrics(front)
        yield from merged.values()


def _merge(merged: dict[str, Any], families: Iterable[Any], worker: str, *, shed: int = 0) -> None:
    """Add one process's metric families to the node's, each sample labelled
    ``worker``; ``shed``: new INVITEs the front dropped for that worker."""
    from prometheus_client.core import Metric

    for family in families:
        if family.name.startswith(_FRONT_FAMILIES):
            continue  # the front's (it owns them: see _front_metrics)
        out = merged.get(family.name)
        if out is None:
            out = merged[family.name] = Metric(
                family.name, family.documentation, family.type, family.unit
            )
        for s in family.samples:
            value = s.value + shed if s.name == _SHED_SERIES else s.value
            out.add_sample(s.name, {**s.labels, "worker": worker}, value, s.timestamp)


_ERRORS = "callengine_transport_errors"
_SHED_SERIES = "callengine_overload_dropped_total"
"""A worker's new INVITEs dropped unread: by the worker (its loop far behind) and by the
front on its behalf (its queue far behind)."""

_FRONT_FAMILIES = (
    "callengine_cache",
    "callengine_outbox",
    "callengine_stream_connections",
    "callengine_prompt_cache",
    "callengine_prompt_fetches",
)
"""Families a worker may export but the front owns (a worker's copy would read 0)."""


def _front_metrics(front: ClusterFront) -> Iterable[Any]:
    """The series of what the front alone holds, named as a one-process node names them."""
    from .metrics import flood_metrics, prompt_metrics, stream_metrics

    if front.prompt_sync is not None:
        yield from prompt_metrics(front.prompt_sync, plays=False)
    if front.limiter is not None:
        yield from flood_metrics(front.limiter)
    if front.transports is not None:
        yield from stream_metrics(front.transports)


async def run_front(cfg: EngineConfig, workers: int) -> int:
    """``callengine serve --workers N`` (N >= 2): the front until SIGTERM/SIGINT."""
    import errno

    from prometheus_client import start_http_server

    from config_cache import ConfigError
    from pri import TrunkConfigError

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # before start: see cli._run_node
    front = ClusterFront(cfg, workers)
    try:
        await front.start()
    except (ConfigError, TrunkConfigError) as exc:
        sys.stderr.write(f"callengine: configuration error: {exc}\n")
        await front.stop()
        return 2
    except OSError as exc:
        what = (
            "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        )
        sys.stderr.write(f"callengine: cannot listen on {', '.join(cfg.listen)}: {what}\n")
        await front.stop()
        return 1
    from .admin import ClusterAdmin, WebPhoneServer
    from .cli import close_endpoints, open_endpoints

    def metrics(host: str, port: int) -> None:
        front.node.registry.register(front.collector())
        start_http_server(port, addr=host, registry=front.node.registry)

    endpoints = await open_endpoints(
        cfg,
        metrics=metrics,
        admin=lambda host, port: ClusterAdmin(
            front.node,
            host,
            port,
            token=cfg.admin_token,
            worker_sockets=front.worker_admin_sockets,
            on_reload=front.push_config,
        ),
        webphone=lambda host, port: WebPhoneServer(
            front.node,
            host,
            port,
            bound=lambda: [(s.transport, s.host, s.port) for s in front.transports.bound],
        ),
    )
    if endpoints is None:
        await front.stop()
        return 1
    admin = endpoints[0]
    # "ready" once every worker takes calls (a worker that cannot start is restarted
    # meanwhile, and the node says nothing until it can); a signal before that drains
    stopping = asyncio.ensure_future(stop.wait())
    started = asyncio.ensure_future(front.all_live.wait())
    await asyncio.wait({stopping, started}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if front.all_live.is_set():
        log.info("node %s ready (%d workers)", cfg.node_id, workers)
    await stopping
    log.info("draining %d workers", workers)
    if admin is not None:
        admin.stopping = True
    await front.stop()
    await close_endpoints(cfg, endpoints)
    log.info("stopped")
    return 0
