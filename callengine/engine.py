"""The Engine: one per process, one event loop; the asyncio shell around the SIP core.

Theory of operation
-------------------
The whole glue is aioquic's: a datagram (or framed stream message) arrives -> it is fed
to the sans-IO :class:`UserAgent` with ``now=loop.time()`` -> the user agent sends what
it must through :class:`TransportSet` and calls back into this class -> the one timer
is re-armed from ``ua.next_deadline()``.

For each new INVITE the Engine builds a :class:`Call`, routes it (handlers registered
with :meth:`on_call`, then the tenant configuration, then the default: ``router.py``)
and runs the handler as one task. When the handler returns, a call it left up is hung
up. The pieces it wires together each live apart: the calls in progress and the hooks
that hear of them in :class:`~callengine.calls.CallBook` (sans-IO), outgoing INVITEs
in :class:`~callengine.dialler.Dialler`, the B2BUA's decisions in ``hunt.py``,
``fork.py`` and ``transfer.py``. What stays here is the I/O: the transports, the one
timer, the tasks, and the order of a call's end (its log waits for the handler and
for the media plane's figures).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .call import Call, MediaUnavailable, SipError, TransferResult
from .calls import CallBook
from .config import EngineConfig, load_config, storage_settings
from .context import current_call_id
from .dialler import Dialler
from .dispatch import initial_invite
from .limits import (
    DROP_BACKLOG,
    CallCaps,
    Caps,
    LogThrottle,
    SourceLimiter,
    networks_matcher,
)
from .realtime import GcGovernor, LoopLagMonitor, StallReporter
from .router import CallRouter, Handler
from .sip.message import Request
from .sip.useragent import InviteSession, UserAgent
from .transport import TransportSet, parse_listen

if TYPE_CHECKING:
    from .b2bua import LegTarget
    from .sip.message import Response

log = logging.getLogger("callengine.engine")

DROP_FACTOR = 4
"""Beyond ``DROP_FACTOR * overload_lag`` of loop lag, new INVITEs are dropped unread (the
caller retransmits or its proxy fails over); between 1x and that, they get 503."""


__all__ = ["Engine", "Handler", "current_call_id"]

IDLE_TRANSACTIONS = 50
"""Transactions a node may hold and still count as idle for a full GC."""

FLOW_CLOSED_CAUSE = 41
"""Q.850 cause (temporary failure) of the BYE for a call whose WebSocket closed."""


class Engine:
    """A call server: SIP transports, the user agent core, call handlers, media.

    >>> engine = Engine(EngineConfig(listen=["127.0.0.1:5060"]))
    >>> @engine.on_call("1800*")
    ... async def toll_free(call): ...
    """

    def __init__(self, config: EngineConfig | str | None = None, **overrides: Any) -> None:
        if config is None or isinstance(config, str):
            config = load_config(config, **overrides)
        self.config = config
        self.routes = CallRouter(_answer_until_hangup)
        self.book = CallBook()
        """The calls in progress, their results, the hooks that hear of them."""
        self.dialler = Dialler(self, self.book, local_for=self._local_for, max_fork=config.max_fork)
        self.place_call = self.dialler.place_call
        """Send an INVITE (:meth:`Dialler.place_call`): the one path for outgoing calls."""
        self.originate = self.dialler.originate
        """Place a call and wait for its answer (:meth:`Dialler.originate`)."""
        self._ua: UserAgent | None = None
        self.transports: TransportSet | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.media_manager: Any = None
        self.transfer_handler: Callable[..., Awaitable[TransferResult]] | None = None
        self.register_handler: Callable[[Request, float], Response | None] | None = None
        self.flow_closed_hooks: list[Callable[[tuple[str, int], str], None]] = []
        """Called with (peer, transport) when a WebSocket client's connection ends (the
        node's registrar drops the bindings that were reachable only through it)."""
        self.exempt_networks: list[str] = [*config.source_exempt, *config.trusted_sources]
        """Sources never rate-limited (balancers, trunk gateways, trusted PBXs); the node
        adds its trunks' sources before ``start()``."""
        self.limiter: SourceLimiter | None = None
        self.relay: TransportSet | None = None
        """Transports handed over by a multi-worker node's front (set before ``start``);
        ``None``: the engine opens its own listeners."""
        self.worker_index: int | None = None
        self.clock_phase: float | None = None
        """Where in the 20 ms period this process's media clock ticks (a fraction):
        worker i of a node of n takes i / n, so that the workers' media clocks never
        wake together (media/clock.py); ``None``: wherever the first call starts it."""
        """A multi-worker node's worker number (its own media spool directory)."""
        self.new_call_id: Callable[[str], str] | None = None
        """Makes the Call-IDs of calls and probes this engine starts (a worker's come
        back to it through the front's dispatch)."""
        self.caps: Caps = CallCaps()
        """Concurrent calls and call rate per source address (here) and per tenant (node)."""
        self._exempt: Callable[[str], bool] = lambda address: False
        self._exempt_seen: dict[str, bool] = {}
        self.log_throttle = LogThrottle()
        self._drop_invites = False
        self.receive_backlog = 0
        """Bytes queued in the UDP receive buffers at the last lag sample."""
        self.overload_dropped = 0
        """New INVITEs dropped unread while the loop was far behind (``DROP_FACTOR``)."""
        self.media_refusals = 0
        """Calls refused because no RTP port could be bound."""
        self.lag = LoopLagMonitor(on_sample=self._on_lag)
        self.gc = GcGovernor(self.idle, mode=config.gc)
        self.stalls = (
            StallReporter(self.lag, threshold=config.stall_report_ms / 1000)
            if config.stall_report_ms > 0
            else None
        )
        from media.codecs import CODECS

        # load_config refuses unknown names; names are case-insensitive there and here
        names = [name.upper() for name in config.codecs]
        self.codecs = [CODECS[n] for n in names if n in CODECS and n != "TELEPHONE-EVENT"]
        te = CODECS.get("TELEPHONE-EVENT")
        self.telephone_event = te if "TELEPHONE-EVENT" in names else None
        if self.telephone_event is not None:
            self.codecs.append(self.telephone_event)

    # -------------------------------------------------------------- handlers
    def on_call(self, pattern: str | re.Pattern[str] | None = None) -> Callable[[Handler], Handler]:
        """Register an async handler for called numbers matching ``pattern``
        (fnmatch syntax such as ``1800*``, or a compiled regex); ``None`` is the default."""

        def register(fn: Handler) -> Handler:
            self.routes.add(pattern, fn)
            return fn

        return register

    @property
    def router(self) -> Callable[[Call], Handler | None] | None:
        """The routing function consulted after the ``on_call`` patterns (the node's)."""
        return self.routes.fallback

    @router.setter
    def router(self, fn: Callable[[Call], Handler | None] | None) -> None:
        self.routes.fallback = fn

    # ------------------------------------------------------------ the book
    @property
    def calls(self) -> dict[str, Call]:
        """The calls in progress that write a call log (:class:`CallBook`)."""
        return self.book.calls

    @property
    def hooks(self) -> list[Any]:
        """What hears of calls: started, answered, ended (call logs, recordings)."""
        return self.book.hooks

    @property
    def results(self) -> dict[str, int]:
        """Ended calls by result (``callengine_calls``)."""
        return self.book.results

    @property
    def locate_user(self) -> Callable[[str, str], list[LegTarget]] | None:
        """(tenant, user) -> where the user's registered phones are rung (the node's
        registrar, as the B2BUA rings them): for ``originate("user:NAME", tenant=)``."""
        return self.dialler.locate_user

    @locate_user.setter
    def locate_user(self, fn: Callable[[str, str], list[LegTarget]] | None) -> None:
        self.dialler.locate_user = fn

    # ------------------------------------------------------------ lifecycle
    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    @staticmethod
    def wallclock() -> float:
        return time.time()

    async def start(self) -> None:
        """Open the listeners. Raises OSError when an address is in use."""
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        self._ua = UserAgent(
            self,
            self._send,
            user_agent=cfg.user_agent,
            max_calls=cfg.max_calls,
            max_cps=cfg.max_cps,
            retry_after=cfg.retry_after,
            max_message_size=cfg.max_message_size,
        )
        # media first: a datagram may arrive as soon as the first socket is bound
        from media.spool import spool_name

        from ._media import MediaManager

        media_settings: dict[str, Any] = {
            "data_dir": cfg.data_dir,
            "port_range": (cfg.rtp_port_min, cfg.rtp_port_max),
            "rtp_timeout": cfg.rtp_timeout,
            "codecs": self.codecs,
            "sockets": cfg.media,
            "storage": storage_settings(cfg),
            "relatch_after": cfg.rtp_relatch_after,
            "srtp": cfg.srtp,
            "port_pool": cfg.rtp_port_pool,
            "port_quarantine": cfg.rtp_port_quarantine,
            "clock_slots": cfg.media_clock_slots,
            "clock_phase": self.clock_phase,
            "spool_name": spool_name(self.worker_index),
            # a worker's prompts are fetched by its front (callengine/cluster.py)
            "prompt_owner": self.worker_index is None,
        }
        if cfg.media and cfg.media_process:
            # RTP in a process of its own (callengine/mediaplane.py)
            from .mediaplane import PlaneMedia

            self.media_manager = PlaneMedia(
                media_settings,
                on_lost=self._media_plane_lost,
                priority=cfg.media_priority,
                log_settings=(cfg.log_format, cfg.log_level),
            )
        else:
            self.media_manager = MediaManager(**media_settings)
            self.media_manager.preload()
        if cfg.media and (cfg.ws_port is not None or cfg.wss_port is not None):
            self.media_manager.preload_webrtc()  # browsers come over WebSocket
        await self.media_manager.start()
        self._exempt = networks_matcher(self.exempt_networks)
        if cfg.source_rate > 0:
            self.limiter = SourceLimiter(
                rate=cfg.source_rate,
                burst=max(cfg.source_burst, 1.0),
                ban=cfg.source_ban,
                exempt=self._exempt,
            )
        if cfg.source_max_calls or cfg.source_max_cps:
            self._ua.admission = self
        if self.new_call_id is not None:
            self._ua.new_call_id = self.new_call_id
        if self.relay is not None:
            # a worker of a multi-worker node: the front owns the sockets and hands
            # over this worker's messages (callengine.cluster)
            self.transports = self.relay
            self.transports.deliver = self._deliver
        else:
            self.transports = make_transports(cfg, self._deliver, self._exempt)
        self.transports.on_send_error = self._on_send_error
        self.transports.on_flow_closed = self._on_flow_closed
        if self.relay is None:
            await listen_all(self.transports, cfg)
        # the RTP port pools fill now, off any answer path (media/portpool.py)
        for bound in self.transports.bound:
            self.media_manager.pool(self.media_address(bound.host))
        self.lag.start()
        if self.stalls is not None:
            self.stalls.start()
        # last: what start-up loaded (prompts, tenants, modules) is frozen out of the GC
        self.gc.start()
        log.info(
            "listening on %s",
            ", ".join(f"{s.transport} {s.host}:{s.port}" for s in self.transports.bound),
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new calls (503), let active calls run for ``grace`` s, then end them."""
        if self._ua is not None:
            self._ua.draining = True
        grace = self.config.drain_grace if grace is None else grace
        deadline = time.monotonic() + grace
        while self.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for call in list(self.calls.values()):
            await call.hangup(cause=16)
        if self.calls:
            await asyncio.sleep(0.2)
        for call in list(self.calls.values()):
            if call.task is not None:
                call.task.cancel()
        if self.media_manager is not None:
            await self.media_manager.close()
        if self._timer is not None:
            self._timer.cancel()
        self.lag.stop()
        if self.stalls is not None:
            self.stalls.stop()
        self.gc.stop()
        if self.transports is not None:
            await self.transports.close()

    def _on_lag(self, lag: float) -> None:
        """Shed load when the loop falls behind (DESIGN: 503, never unbounded memory):
        new INVITEs get 503 with Retry-After while it wakes ``overload_lag`` late."""
        ua = self._ua
        limit = self.config.overload_lag
        if ua is None or limit <= 0:
            return
        shedding = lag > limit
        # Far behind: new INVITEs are not even read (a 503 costs nearly what a call
        # set-up does), so that what is queued behind them (OPTIONS from the balancer,
        # BYEs, ACKs) gets through and the loop catches up. Two signals: the loop's own
        # lateness, and the bytes waiting in the UDP receive queue (a loop busy reading
        # datagrams still runs its timers nearly on time while seconds of work queue up).
        backlog = self.transports.receive_backlog() if self.transports is not None else 0
        self.receive_backlog = backlog
        if self._drop_invites:
            self._drop_invites = shedding or backlog > DROP_BACKLOG // 4
        else:
            self._drop_invites = lag > DROP_FACTOR * limit or backlog >= DROP_BACKLOG
        if shedding != ua.shedding:
            ua.shedding = shedding
            log.warning(
                "event loop %.0f ms late: %s",
                lag * 1000,
                "shedding new calls" if shedding else "taking calls again",
            )

    def idle(self) -> bool:
        """No call up, and at most a few transactions held (health probes, a
        REGISTER): the heap is small, a full collection is cheap."""
        ua = self._ua
        return not self.calls and (ua is None or len(ua.transactions) <= IDLE_TRANSACTIONS)

    @property
    def started(self) -> bool:
        """True once :meth:`start` built the user agent."""
        return self._ua is not None

    @property
    def has_default(self) -> bool:
        """A default handler (``on_call()`` without a pattern) is registered."""
        return self.routes.default is not None

    @property
    def ua(self) -> UserAgent:
        """The SIP user agent core (exists once :meth:`start` ran)."""
        if self._ua is None:
            raise RuntimeError("engine not started")
        return self._ua

    @property
    def bound(self) -> list[tuple[str, str, int]]:
        assert self.transports is not None
        return [(s.transport, s.host, s.port) for s in self.transports.bound]

    # --------------------------------------------------------------- I/O glue
    def _deliver(
        self, data: bytes, source: tuple[str, int], transport: str, local: tuple[str, int]
    ) -> None:
        assert self._loop is not None
        now = self._loop.time()
        limiter = self.limiter
        if limiter is not None and not limiter.allow(source[0], now):
            return  # a flood: dropped unread (counted by the limiter)
        if self._drop_invites and data.startswith(b"INVITE ") and initial_invite(data):
            self.overload_dropped += 1
            return
        self.ua.receive(data, source, transport, local, now)
        self._arm()

    def _send(self, data: bytes, dest: tuple[str, int], transport: str) -> None:
        assert self.transports is not None
        self.transports.send(data, dest, transport)

    def _on_send_error(self, dest: tuple[str, int], transport: str) -> None:
        # §17.1.4: a transport failure is reported to client transactions to that peer
        ua = self._ua
        if ua is None:
            return
        for txn in list(ua.transactions.client.values()):
            if txn.dest == dest and txn.transport == transport:
                txn.transport_error(self.now())
        self._arm()

    def _on_flow_closed(self, peer: tuple[str, int], transport: str) -> None:
        # a WebSocket connection ended: nothing more can reach that peer (RFC 7118
        # §5.2); its pending client transactions fail now (§17.1.4), not at Timer B,
        # and its calls end now (a browser tab closed), not at the RTP timeout: the
        # other leg of a bridged call gets its BYE
        self._on_send_error(peer, transport)
        ua = self._ua
        if ua is not None:
            now = self.now()
            for session in list(ua.sessions.values()):
                if session.dest == peer and session.transport == transport:
                    ua.hangup(session, now, cause=FLOW_CLOSED_CAUSE)
            self._arm()
        for hook in self.flow_closed_hooks:
            hook(peer, transport)

    def flush(self) -> None:
        """Re-arm the timer after a command from application code."""
        self._arm()

    def _arm(self) -> None:
        assert self._loop is not None
        deadline = self.ua.next_deadline()
        if deadline is None:
            return
        if self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _local_for(self, transport: str, host: str) -> tuple[str, int]:
        assert self.transports is not None, "engine not started"
        return self.transports.local_for(transport, host)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        self._timer_at = None
        self.ua.handle_timer(self._loop.time())
        self._arm()

    # ------------------------------------------------ per-source caps (Admission)
    def _is_exempt(self, address: str) -> bool:
        seen = self._exempt_seen
        exempt = seen.get(address)
        if exempt is None:
            if len(seen) >= 4096:
                seen.clear()
            exempt = seen[address] = self._exempt(address)
        return exempt

    def admit_call(self, request: Request, now: float) -> str | None:
        """``source_max_calls`` / ``source_max_cps`` for a new INVITE (exempt sources pass)."""
        address = request.source[0] if request.source else ""
        if self._is_exempt(address):
            return None
        cfg = self.config
        refused = self.caps.admit(
            "source:" + address, now, max_calls=cfg.source_max_calls, cps=cfg.source_max_cps
        )
        if refused is None:
            return None
        quiet = self.log_throttle.ready("source_caps", now)
        if quiet is not None:
            log.warning(
                "503 for a call from %s: too many %s from one source (%d more not logged)",
                address,
                "calls in progress" if refused == "calls" else "calls per second",
                quiet,
            )
        return "Too Many Calls From This Source"

    def release_call(self, request: Request) -> None:
        address = request.source[0] if request.source else ""
        if not self._is_exempt(address):
            self.caps.release("source:" + address)

    # ------------------------------------------------ the user agent's events
    def on_incoming_call(self, session: InviteSession, now: float) -> None:
        call = Call(self, session, direction="inbound")
        log.debug(
            "INVITE %s -> %s from %s",
            call.caller,
            call.callee,
            call.source,
            extra={"call_id": call.call_id},
        )
        session.context = call
        self.book.open(call)
        assert self._loop is not None
        ctx = contextvars.copy_context()
        ctx.run(current_call_id.set, call.call_id)
        call.task = self._loop.create_task(self._run(call), context=ctx)

    async def _run(self, call: Call) -> None:
        try:
            handler = self.routes.route(call)
            await handler(call)
        except asyncio.CancelledError:
            pass
        except SipError as exc:
            if call.active and not call.answered:
                await call.reject(
                    exc.status if exc.status >= 400 else 500,
                    exc.reason or None,
                    retry_after=getattr(exc, "retry_after", None),
                )
        except Exception:
            log.exception("call handler failed")
            if call.active and not call.answered:
                await call.reject(500)
        finally:
            if call.active:
                await call.hangup(cause=16)
            if not call.active:
                self._finish(call)

    def _finish(self, call: Call) -> None:
        """The call and its handler are both done: write its log, forget it (once)."""
        stopping = call.media_stopping
        if stopping is not None and not stopping.done():
            stopping.add_done_callback(functools.partial(self._finish_after, call))
            return
        if self.book.close(call) and log.isEnabledFor(logging.INFO):
            duration = (call.ended_at or call.started_at) - (call.answered_at or call.started_at)
            log.info(
                "call %s %s -> %s: %s, status %s, cause %s, %.1f s",
                call.direction,
                call.caller,
                call.callee,
                call.end_reason,
                call.status,
                call.cause,
                duration if call.answered else 0.0,
                extra={"call_id": call.call_id},
            )

    def _finish_after(self, call: Call, _stopped: Any) -> None:
        self._finish(call)

    async def _stop_remote(self, call: Call, reason: str) -> None:
        call.quality = await call.media.stop(reason)

    def _media_plane_lost(self, sessions: list[Any]) -> None:
        """The media plane died: every call whose media was there is hung up (Q.850 41,
        temporary failure); the plane restarts for the next calls."""
        assert self._loop is not None
        for call in self.book.using_media(sessions):
            ctx = contextvars.copy_context()
            ctx.run(current_call_id.set, call.call_id)
            self._loop.create_task(call.hangup(cause=41), context=ctx)

    def _reap(self, call: Call) -> None:
        # A handler still running 5 s after its call ended is cancelled; its log follows.
        if call.task is not None and not call.task.done():
            log.warning("handler still running 5 s after hangup: cancelled")
            call.task.cancel()

    def on_call_confirmed(self, session: InviteSession, now: float) -> None:
        call = session.context
        if isinstance(call, Call):
            call._on_confirmed()

    def on_call_ended(self, session: InviteSession, reason: str, cause: int, now: float) -> None:
        call = session.context
        if not isinstance(call, Call):
            return
        call._on_ended(reason, cause)
        self.book.ended(call, reason)
        if call.media is not None:
            media = call.media
            assert self._loop is not None
            if getattr(media, "remote", False):
                # in the media plane: its figures come back with the stop (the call
                # log waits for them, see _finish)
                call.media_stopping = self._loop.create_task(self._stop_remote(call, reason))
            else:
                call.quality = media.quality()
                self._loop.create_task(media.stop(reason))
        if call.task is None or call.task.done():
            self._finish(call)
        else:
            assert self._loop is not None
            self._loop.call_later(5.0, self._reap, call)

    def on_reoffer(self, session: InviteSession, sdp: bytes) -> bytes | None:
        call = session.context
        if isinstance(call, Call):
            return call.reoffer(sdp)
        return None

    def on_info(self, session: InviteSession, request: Request) -> None:
        call = session.context
        if isinstance(call, Call):
            call._on_info(request)

    def on_progress(self, session: InviteSession, response: Response, now: float) -> None:
        call = session.context
        if isinstance(call, Call):
            call._on_progress(response)

    def on_answered(self, session: InviteSession, response: Response, now: float) -> None:
        self.dialler.answered(session, response)

    def on_failed(
        self, session: InviteSession, status: int, response: Response | None, now: float
    ) -> None:
        self.dialler.failed(session, status, response)
        call = session.context
        if not isinstance(call, Call):
            return
        # An outgoing call that was never answered ends here (no call log: nothing
        # was connected): its media is released and nothing keeps it alive.
        call._on_ended("timeout" if response is None else "failed", session.end_cause)
        if call.media is not None:
            assert self._loop is not None
            self._loop.create_task(call.media.stop("failed"))
        self.book.forget(call)
        session.context = None

    def on_register(self, request: Request, now: float) -> Response | None:
        if self.register_handler is None:
            return None
        return self.register_handler(request, now)

    # ---------------------------------------------------------------- media
    def media_address(self, local_host: str) -> str:
        """The address we put in SDP: the SIP listening address (never a wildcard)."""
        if local_host in ("0.0.0.0", "::", ""):
            return "127.0.0.1"
        return local_host

    async def open_media(self, call: Call, negotiated: Any) -> int:
        """Open the call's RTP session; returns its port for the SDP.

        With media disabled (signalling-only benchmarks) the call gets silent media: the
        SDP names the discard port 9, no socket is opened, prompts take their time and
        digits come only by SIP INFO."""
        mm = self.media_manager
        assert mm is not None
        if call.media is None:
            host = self.media_address(call.session.local_addr[0])

            def on_timeout(call: Call = call) -> None:
                log.info(
                    "RTP timeout: hanging up %s", call.call_id, extra={"call_id": call.call_id}
                )
                if self._loop is not None:
                    ctx = contextvars.copy_context()
                    ctx.run(current_call_id.set, call.call_id)
                    self._loop.create_task(call.hangup(cause=102), context=ctx)

            try:
                call.media = await mm.open(host, negotiated, on_timeout=on_timeout)
            except OSError as exc:
                # the port range (or the descriptor limit) is exhausted: 503, one line
                self.media_refusals += 1
                quiet = self.log_throttle.ready("media_ports", self.now())
                if quiet is not None:
                    log.error("503 for new calls: %s (%d more not logged)", exc, quiet)
                raise MediaUnavailable(self.config.retry_after) from None
        return int(call.media.rtp_port)

    def storage_path(self, tenant: str, key: str) -> Path:
        assert self.media_manager is not None
        kind, _, rest = key.partition("/")
        return Path(self.media_manager.storage.path(tenant, kind, rest))

    async def transfer(
        self, call: Call, targets: Sequence[str], *, strategy: str, timeout: float
    ) -> TransferResult:
        if self.transfer_handler is None:
            return TransferResult(answered=False, status=480, cause=18, target=None)
        return await self.transfer_handler(call, targets, strategy=strategy, timeout=timeout)


def make_transports(cfg: EngineConfig, deliver: Any, exempt: Callable[[str], bool]) -> TransportSet:
    """The node's transport set as ``cfg`` asks (TLS context, connection limits)."""
    tls = None
    if cfg.tls_cert and cfg.tls_key:
        import ssl

        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    return TransportSet(
        deliver,
        tls_context=tls,
        max_connections=cfg.tcp_max_connections,
        max_per_source=cfg.tcp_max_per_source,
        idle_timeout=cfg.tcp_idle_timeout,
        first_message_timeout=cfg.tcp_first_message_timeout,
        exempt=exempt,
        max_message_size=cfg.max_message_size,
    )


async def listen_all(transports: TransportSet, cfg: EngineConfig) -> None:
    """Open every listener of ``cfg`` (``listen`` x transports, TLS, WS, WSS); on a
    failure (address in use) close what was opened and raise."""
    try:
        for item in cfg.listen:
            host, port = parse_listen(item)
            await transports.listen(host, port, tuple(t for t in cfg.transports if t != "TLS"))
            if transports.tls_context is not None:
                await transports.listen(host, cfg.tls_port, ("TLS",))
            if cfg.ws_port is not None:
                await transports.listen(host, cfg.ws_port, ("WS",))
            if cfg.wss_port is not None:
                await transports.listen(host, cfg.wss_port, ("WSS",))
    except BaseException:
        await transports.close()
        raise


async def _answer_until_hangup(call: Call) -> None:
    """The default for a number nothing else routes: answer and stay up until hangup."""
    await call.answer()
    await call.wait_hangup()
