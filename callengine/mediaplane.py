"""The media plane: a node's RTP in a process of its own (``media_process: true``).

Why. The 20 ms media clock and SIP signalling shared one event loop: sending one
RTP packet costs ~11 us (mostly the kernel's ``sendto``), so 1,000 held calls take
10-20 ms of every 20 ms period, and any signalling work queued behind a tick waits
that long (the 10-minute soak measured the signalling loop up to 85 ms late), while
a burst of signalling delays the tick. As rtpengine sits beside Kamailio, the media
plane is a child process of the engine (one per engine process: a multi-worker
node's workers each have theirs) holding every RTP session, the media clock, the
prompts and the recorders. The engine keeps SIP and call control; it commands the
plane (open, answer, play, record, digit, bridge, stop) and the plane sends back
events (digit, RTP timeout) and results (play done, record done, quality). Each
process has a core to itself, and neither one's bursts stop the other's loop.

Wire. One Unix stream socket (a ``socketpair``; the child inherits its end),
frames of a 4-byte length and a pickled tuple: both ends are this module, in
processes of the same installation, and nothing else can reach the socket.

* engine -> plane: ``("req", id, op, args)`` wants ``("ok", id, value)`` or
  ``("err", id, kind, text)``; ``("cmd", op, args)`` wants nothing. Frames arrive in
  order, so a command sent after a request is applied after it.
* plane -> engine: ``("ev", kind, args)``: ``digit`` (a DTMF digit for the call's
  queue: barge-in and "stop recording on a digit" are decided in the plane, as in
  process) and ``timeout`` (no RTP for ``rtp_timeout``); and ``("stats", dict)``.

Session ids are chosen by the engine, so commands for a session can follow its
``open`` without waiting. A plane that dies (``kill -9``) closes the socket: the
engine fails what waits on it, hangs up the calls whose media was there (Q.850 41)
and starts a new plane for the next calls. The plane exits when the engine's end of
the socket closes, so it never outlives its engine; it ignores SIGINT and SIGTERM
(the engine drains its calls first, then closes the plane).

With remote Media Storage the plane owns the spool (it writes, uploads and, after a
``kill -9``, recovers the recordings) and the tenant prompt cache; the engine keeps
the spool's naming for call logs and sends the tenants' prompt lists when the
configuration changes. A browser's WebRTC leg is the plane's too: its aiortc session
(ICE, DTLS-SRTP, Opus) runs there, and the engine reads only the SDP (``open_webrtc``
answers or makes the offer; ``accept_answer`` takes the browser's answer). A node that
listens on WebSocket tells the plane to load aiortc when it starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from media.codecs import CodecInfo
from media.dtmf import DtmfEvent
from media.recorder import RecordingResult
from media.srtp import SrtpContext
from media.storage import LocalMediaStorage
from media.webrtcsdp import is_webrtc_sdp, webrtc_answer_codec

from ._media import SrtpPolicy

log = logging.getLogger("callengine.mediaplane")

__all__ = [
    "FrameDecoder",
    "PlaneLost",
    "PlaneMedia",
    "RemoteSession",
    "RestartPolicy",
    "encode_frame",
]

_HEADER = struct.Struct("!I")
MAX_FRAME = 16 << 20
"""Largest frame either side accepts (a stats snapshot is a few KB)."""
STATS_INTERVAL = 1.0
"""Seconds between the plane's figures (for /metrics)."""
WATCHDOG = 5.0
"""Seconds without a word from the plane (it answers the figures request every
:data:`STATS_INTERVAL`) after which the engine kills it as hung: a stopped plane would
otherwise hold its calls' media, and the new calls waiting for ports, for good."""


class RestartPolicy:
    """How long to wait before starting a plane again (sans-IO: fed times, returns
    seconds). A plane that ran ``stable`` seconds or more is started again at once; one
    that died sooner waits ``first``, doubling with each quick death in a row up to
    ``longest``: a plane that crashes as it starts does not become a restart storm."""

    def __init__(self, *, stable: float = 10.0, first: float = 0.5, longest: float = 30.0) -> None:
        self.stable = stable
        self.first = first
        self.longest = longest
        self.quick_deaths = 0

    def delay(self, started_at: float, died_at: float) -> float:
        if died_at - started_at >= self.stable:
            self.quick_deaths = 0
            return 0.0
        self.quick_deaths += 1
        return float(min(self.longest, self.first * 2 ** (self.quick_deaths - 1)))


class PlaneLost(ConnectionError):
    """The media plane went away (it died, or the engine is closing)."""


# ------------------------------------------------------------------ wire (sans-IO)
def encode_frame(message: tuple[Any, ...]) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Bytes from the socket -> whole messages (a frame may arrive in pieces)."""

    def __init__(self, *, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buffer = self._buffer
        buffer += data
        out: list[tuple[Any, ...]] = []
        start = 0
        end = len(buffer)
        while end - start >= 4:
            (size,) = _HEADER.unpack_from(buffer, start)
            if size > self.max_frame:
                raise ValueError(f"media plane frame of {size} bytes")
            if end - start - 4 < size:
                break
            out.append(pickle.loads(buffer[start + 4 : start + 4 + size]))
            start += 4 + size
        if start:
            del buffer[:start]
        return out


class _Connection(asyncio.Protocol):
    """One end of the socket: frames in, ``on_message`` for each; ``send`` out.

    Frames sent during one turn of the event loop leave in one write at its end: a
    call's answer sends the plane several (open, set_remote, play) and each write is a
    system call on both sides (``python -m benchmarks.sip_cps --peers engine``; the
    closing note of the change has the figures)."""

    def __init__(self, on_message: Callable[[tuple[Any, ...]], None]) -> None:
        self.on_message = on_message
        self.decoder = FrameDecoder()
        self.transport: Any = None  # an asyncio (or uvloop) stream transport
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except Exception:
            log.exception("media plane: unreadable frame, closing")
            if self.transport is not None:
                self.transport.close()
            return
        for message in messages:
            try:
                self.on_message(message)
            except Exception:
                log.exception("media plane: message %r failed", message[:2])

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, message: tuple[Any, ...]) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if not self._out:
            self._loop.call_soon(self.flush)
        self._out.append(encode_frame(message))
        return True

    def flush(self) -> None:
        """Write the frames sent since the last flush (one system call)."""
        out = self._out
        if not out:
            return
        self._out = []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        """Close after writing what was sent."""
        self.flush()
        if self.transport is not None:
            self.transport.close()


# ------------------------------------------------------------- the engine's side
class _Figures:
    """Figures the plane reports, kept under the names /metrics reads."""

    def update(self, figures: dict[str, Any]) -> None:
        for name, value in figures.items():
            setattr(self, name, value)


class ClockFigures(_Figures):
    """The plane's media clock figures, as :class:`media.session.MediaClock` exposes
    them to /metrics (refreshed every :data:`STATS_INTERVAL`)."""

    def __init__(self) -> None:
        from media.session import MediaClock

        empty = MediaClock()  # the same buckets, all zero until the plane reports
        self.lateness_buckets_ms = empty.lateness_buckets_ms
        self.lateness_counts = list(empty.lateness_counts)
        self.lateness_sum = 0.0
        self.lateness_max = 0.0
        self.duration_buckets_ms = empty.duration_buckets_ms
        self.duration_counts = list(empty.duration_counts)
        self.duration_sum = 0.0
        self.duration_max = 0.0
        self.errors = 0
        self.resyncs = 0
        self.srtp_sessions = 0
        self.streams = 0
        self.secure = 0
        self.loads: list[int] = []
        self.dropped: dict[str, int] = empty.drops()
        self.pools: dict[str, int] = {}
        self.loop_lag_max_ms = 0.0
        self.gc_pause_max_ms = 0.0
        self.pid = 0
        self.realtime = False

    def __len__(self) -> int:
        return int(self.streams)

    def drops(self) -> dict[str, int]:
        return dict(self.dropped)

    def secure_sessions(self) -> int:
        return int(self.secure)

    def slot_loads(self) -> list[int]:
        return list(self.loads)


class SpoolFigures(_Figures):
    """The plane's spool figures, as :class:`media.spool.SpoolCore` shows them to
    /metrics."""

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0
        self.quota = 0
        self.in_flight = 0
        self.uploads_ok = 0
        self.uploads_present = 0
        self.uploads_failed = 0
        self.rejected = 0
        self.vanished = 0
        self.uploaded_bytes = 0
        self.oldest = 0.0
        self.near_quota = False
        self.refusals = 0

    def oldest_age(self, now: float) -> float:
        return float(self.oldest)  # as of the plane's last report


class RemoteSession:
    """An RTP session held by the media plane: what call control uses of
    :class:`media.session.RtpSession`, as commands to the plane."""

    remote = True

    def __init__(
        self,
        plane: PlaneMedia,
        sid: int,
        codec: CodecInfo,
        on_timeout: Callable[[], None] | None,
    ) -> None:
        self.plane = plane
        self.sid = sid
        self._codec = codec
        self.local: tuple[str, int] = ("", 0)
        self.on_timeout = on_timeout
        self._digits: asyncio.Queue[DtmfEvent] = asyncio.Queue()
        self._srtp: SrtpContext | None = None
        self._srtp_pending = False
        self.stopped = False
        self._quality: dict[str, Any] = {}
        self.recording: Any = None
        self.stream: Any = None  # no in-process stream: call recording needs one

    @property
    def rtp_port(self) -> int:
        return self.local[1]

    @property
    def rtcp_port(self) -> int:
        return self.local[1] + 1

    @property
    def codec(self) -> CodecInfo:
        return self._codec

    @property
    def srtp(self) -> SrtpContext | None:
        return self._srtp

    @property
    def secure(self) -> bool:
        return self._srtp is not None or self._srtp_pending

    def _command(self, op: str, *args: Any) -> None:
        if not self.stopped:
            self.plane.command(op, self.sid, *args)

    def set_remote(
        self,
        remote: tuple[str, int],
        *,
        codec: CodecInfo | None = None,
        telephone_event_pt: int | None = None,
        direction: str = "sendrecv",
        remote_rtcp: tuple[str, int] | None = None,
    ) -> None:
        if codec is not None:
            self._codec = codec
        self._command("set_remote", remote, codec, telephone_event_pt, direction, remote_rtcp)

    def set_direction(self, direction: str) -> None:
        self._command("set_direction", direction)

    def hold(self, on: bool = True) -> None:
        self.set_direction("inactive" if on else "sendrecv")

    def await_srtp(self) -> None:
        self._srtp_pending = True
        self._command("await_srtp")

    def set_srtp(self, context: SrtpContext) -> None:
        self._srtp = context
        self._srtp_pending = False
        self._command("set_srtp", context.suite, context.tx_key, context.rx_key)

    def digits(self) -> asyncio.Queue[DtmfEvent]:
        return self._digits

    def deliver_digit(self, event: DtmfEvent) -> None:
        """A digit from SIP INFO: the plane decides (barge-in, recording, queue)."""
        self._command("deliver_digit", event)

    def send_digit(self, digit: str, *, duration_ms: int = 100) -> None:
        self._command("send_digit", digit, duration_ms)

    def stop_playback(self) -> None:
        self._command("stop_playback")

    def quality(self) -> dict[str, Any]:
        """The figures of the last :meth:`PlaneMedia.refresh_quality` (the call log's
        come with :meth:`stop`)."""
        return dict(self._quality)

    async def stop(self, reason: str = "hangup") -> dict[str, Any]:
        """End the session in the plane; its quality figures for the call log."""
        self.on_timeout = None  # it holds the call: no cycle outlives the call
        if self.stopped:
            return {}
        self.stopped = True
        self.plane.sessions_open.pop(self.sid, None)
        try:
            value = await self.plane.request("stop", self.sid, reason)
        except PlaneLost:
            return {}
        return dict(value)


class RemoteWebRtcSession(RemoteSession):
    """A WebRTC leg held by the media plane (its aiortc session, :mod:`media.webrtc`):
    what call control uses of :class:`media.webrtc.WebRtcSession`, as commands."""

    webrtc = True
    secure = True  # DTLS-SRTP, always

    def __init__(
        self,
        plane: PlaneMedia,
        sid: int,
        codec: CodecInfo,
        on_timeout: Callable[[], None] | None,
    ) -> None:
        super().__init__(plane, sid, codec, on_timeout)
        self.local = ("", 9)  # aiortc's description carries the ICE candidates
        self._answered = False

    def accept_answer(self, body: bytes) -> bool:
        """Take the browser's answer to our offer: decided here from the SDP (a WebRTC
        answer with one of our codecs), applied by the plane's session."""
        if self._answered:
            return True  # a 183's answer, then the 200's: applied once
        if webrtc_answer_codec(body, self.plane.codecs) is None:
            return False
        self._answered = True
        self._command("accept_answer", body)
        return True

    # ICE found the path, DTLS keys the media and the direction never changes
    # (a WebRTC leg's media is negotiated once: docs/webrtc.md)
    def set_remote(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_direction(self, direction: str) -> None:
        pass

    def await_srtp(self) -> None:
        pass

    def set_srtp(self, context: SrtpContext) -> None:
        pass


class RemoteCallRecording:
    """A call recording (both directions, :mod:`media.callrecording`) made in the plane:
    what :class:`~callengine.call.Call` uses of :class:`media.callrecording.CallRecording`.
    The file is the plane's; the seconds :meth:`close` returns are the engine's clock
    from start to stop (the plane's file covers the same span, to a message's delay)."""

    remote = True

    def __init__(self, plane: PlaneMedia, rid: int, key: str, now: float) -> None:
        self.plane = plane
        self.rid = rid
        self.key = key
        self.started = now
        self.result: RecordingResult | None = None
        self.refused: tuple[str, str] | None = None
        """Why the plane could not start it (its spool full, a disk error), if so: the
        exception's name and message."""
        self.on_refused: Callable[[RemoteCallRecording], None] | None = None
        """Called once when the plane refuses it (the call forgets the key); cleared
        when it closes."""
        self.why = ""
        """What asked for it (``tenant demo``, ``user 100``), for the log line."""

    @property
    def owner(self) -> RemoteCallRecording:
        return self

    @property
    def closed(self) -> bool:
        return self.result is not None

    def refuse(self, error: str, message: str) -> None:
        """The plane's answer to ``rec_start``: not recorded (``error``: the exception's
        name)."""
        self.refused = (error, message)
        callback, self.on_refused = self.on_refused, None
        if callback is not None and self.result is None:
            callback(self)

    def tap(self, far: Any) -> None:
        """Bridged to ``far`` (a session in the plane): the right channel is its voice."""
        if isinstance(far, RemoteSession) and self.result is None:
            self.plane.command("rec_far", self.rid, far.sid)

    def detach_far(self) -> None:
        if self.result is None:
            self.plane.command("rec_far", self.rid, None)

    def close(self, now: float, reason: str = "stopped") -> RecordingResult:
        self.on_refused = None
        self.plane.recordings.pop(self.rid, None)
        if self.result is None:
            self.plane.command("rec_stop", self.rid, reason)
            self.result = RecordingResult(round(max(0.0, now - self.started), 3), reason)
        return self.result


class PlaneMedia(SrtpPolicy):
    """The engine's media manager when media runs in the plane: the methods call
    control uses of :class:`callengine._media.MediaManager`, over the socket."""

    remote = True

    def __init__(
        self,
        settings: dict[str, Any],
        *,
        on_lost: Callable[[list[RemoteSession]], None] | None = None,
        stats_interval: float = STATS_INTERVAL,
        watchdog: float = WATCHDOG,
        priority: int = 0,
        webrtc: bool = False,
        log_settings: tuple[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.priority = priority
        """``SCHED_FIFO`` priority of the plane's loop (``media_priority``); 0: normal
        scheduling."""
        self.webrtc = webrtc
        """The node takes browsers (WebSocket): the plane loads aiortc when it starts."""
        self.log_settings = log_settings
        """The node's ``(log_format, log_level)``: the plane's lines follow them (else
        warnings and errors, plain)."""
        self.stats_interval = stats_interval
        self.watchdog = watchdog
        self._heard = 0.0
        self.codecs: list[CodecInfo] = list(settings["codecs"])
        self.sockets = True
        self.srtp = str(settings.get("srtp", "tls"))
        self.storage = LocalMediaStorage(Path(settings["data_dir"]) / "media")
        self.clock = ClockFigures()
        self.spool: Any = None
        """With remote storage: the plane's spool figures for /metrics (``.core``), from
        its first report on (none before: a fresh node must not show an empty spool
        while its plane is still recovering the files a killed one left)."""
        self.prompt_sync: Any = None
        """With remote storage: the plane's tenant prompt cache figures for /metrics."""
        self._names: Any = None
        """With remote storage: the spool's naming (blob names, URLs, files) for call
        logs; the plane's own spool writes, uploads and recovers the files."""
        storage = settings.get("storage")
        if storage is not None and storage.kind == "azure":
            from ._media import make_spool

            self._names, _ = make_spool(
                storage, Path(settings["data_dir"]) / settings["spool_name"]
            )
        self._tenants: Callable[[], Any] | None = None
        self._tenants_sent: Any = None
        self.sessions = 0
        self.webrtc_sessions = 0
        self.restarts = 0
        self.hung = 0
        """Times the watchdog killed a plane that stopped answering."""
        self.restart_policy = RestartPolicy()
        self._started_at = 0.0
        self.on_lost = on_lost
        self.sessions_open: dict[int, RemoteSession] = {}
        self.recordings: dict[int, RemoteCallRecording] = {}
        """Call recordings started and not closed (the plane may still refuse them)."""
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._connection: _Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._closing = False
        self._bridges = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    # --------------------------------------------------------------- life cycle
    async def start(self) -> None:
        """Start the plane process and wait until it is ready for calls."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await self._spawn()
        if self._stats_task is None:
            self._stats_task = asyncio.get_running_loop().create_task(self._poll_stats())

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        from . import _planespawn

        self._process, ours = _planespawn.take() or _planespawn.launch()
        connection = _Connection(self._on_message)
        self._heard = self._started_at = loop.time()
        await loop.create_unix_connection(lambda: connection, sock=ours)
        self._connection = connection
        connection.closed.add_done_callback(functools.partial(self._lost, connection))
        pid = await self.request(
            "init", self.settings, self.priority, self.webrtc, self.log_settings
        )
        log.info("media plane started (pid %s)", pid)
        self._tenants_sent = None  # a new plane: tell it again
        self._push_tenants()

    def _lost(self, connection: _Connection, _closed: Any = None) -> None:
        if connection is not self._connection:
            return
        self._connection = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(PlaneLost("media plane gone"))
        self._pending.clear()
        if self._closing:
            return
        process = self._process
        code = process.poll() if process is not None else None
        log.error("media plane died (exit %s): its calls are hung up; starting a new one", code)
        orphans = list(self.sessions_open.values())
        self.sessions_open.clear()
        for session in orphans:
            session.stopped = True
        if self.on_lost is not None:
            self.on_lost(orphans)
        self.restarts += 1
        asyncio.get_running_loop().create_task(self._respawn())

    async def _respawn(self) -> None:
        loop = asyncio.get_running_loop()
        if self._process is not None:
            await loop.run_in_executor(None, self._process.wait)
        wait = self.restart_policy.delay(self._started_at, loop.time())
        while not self._closing:
            if wait:
                log.error("media plane: starting again in %.1f s", wait)
                await asyncio.sleep(wait)
            try:
                await self._spawn()
                return
            except Exception:
                log.exception("media plane: restart failed")
                wait = self.restart_policy.delay(self._started_at, loop.time())

    async def close(self) -> None:
        self._closing = True
        if self._stats_task is not None:
            self._stats_task.cancel()
            self._stats_task = None
        connection = self._connection
        if connection is not None:
            try:
                await asyncio.wait_for(self.request("shutdown"), 5.0)
            except (TimeoutError, PlaneLost):
                pass
            connection.close()
        process = self._process
        if process is not None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(None, process.wait), 5.0)
            except TimeoutError:
                process.kill()
                await loop.run_in_executor(None, process.wait)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # ------------------------------------------------------------------- wire
    def _on_message(self, message: tuple[Any, ...]) -> None:
        self._heard = asyncio.get_running_loop().time()
        kind = message[0]
        if kind == "ok" or kind == "err":
            future = self._pending.pop(message[1], None)
            if future is None or future.done():
                return
            if kind == "ok":
                future.set_result(message[2])
            elif message[2] == "OSError":
                future.set_exception(OSError(message[3]))
            elif message[2] == "ValueError":  # e.g. a WebRTC offer it cannot take
                future.set_exception(ValueError(message[3]))
            else:
                future.set_exception(RuntimeError(f"media plane: {message[2]}: {message[3]}"))
        elif kind == "ev":
            self._on_event(message[1], message[2])
        elif kind == "stats":
            self._apply_stats(message[1])

    def _apply_stats(self, figures: dict[str, Any]) -> None:
        stats = dict(figures)
        spool, prompts = stats.pop("spool", None), stats.pop("prompts", None)
        self.clock.update(stats)
        if spool is not None:
            if self.spool is None:
                self.spool = SimpleNamespace(core=SpoolFigures())
            self.spool.core.update(spool)
        if prompts is not None:
            if self.prompt_sync is None:
                self.prompt_sync = SimpleNamespace(
                    core=SimpleNamespace(bytes=0, index=()),
                    cache=SimpleNamespace(fallbacks=0),
                )
            self.prompt_sync.core.bytes = prompts["bytes"]
            self.prompt_sync.core.index = range(prompts["files"])
            self.prompt_sync.fetches_ok = prompts["ok"]
            self.prompt_sync.fetches_failed = prompts["failed"]
            self.prompt_sync.fetches_missing = prompts["missing"]
            self.prompt_sync.cache.fallbacks = prompts["fallbacks"]
            self.prompt_sync.fetching = prompts["fetching"]

    def refresh_stats(self, timeout: float = 0.5) -> None:
        """From another thread (/metrics is served by prometheus-client's): fetch the
        plane's figures now, so that a scrape does not show them up to a report old;
        on the loop's own thread, or when the plane does not answer in ``timeout``,
        the last report stays."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread or self._connection is None:
            return
        try:
            figures = asyncio.run_coroutine_threadsafe(self._fetch_stats(), loop).result(timeout)
        except Exception:
            return
        self._apply_stats(figures)  # attribute by attribute, as the loop's reports do

    async def _fetch_stats(self) -> dict[str, Any]:
        figures: dict[str, Any] = await self.request("stats")
        return figures

    def _on_event(self, kind: str, args: tuple[Any, ...]) -> None:
        if kind == "rec_refused":
            recording = self.recordings.pop(args[0], None)
            if recording is not None:
                recording.refuse(args[1], args[2])
            return
        session = self.sessions_open.get(args[0])
        if session is None:
            return
        if kind == "digit":
            session._digits.put_nowait(args[1])
        elif kind == "timeout" and session.on_timeout is not None:
            session.on_timeout()

    def command(self, op: str, *args: Any) -> None:
        if self._connection is not None:
            self._connection.send(("cmd", op, args))

    def request(self, op: str, *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        connection = self._connection
        if connection is None:
            future.set_exception(PlaneLost("no media plane"))
            return future
        rid = next(self._ids)
        self._pending[rid] = future
        connection.send(("req", rid, op, args))
        return future

    async def _poll_stats(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.stats_interval)
            if self._connection is None:
                continue  # starting again
            silent = loop.time() - self._heard
            process = self._process
            if silent > self.watchdog and process is not None and process.poll() is None:
                log.error("media plane silent for %.1f s: killing it as hung", silent)
                self.hung += 1
                process.kill()  # its end of the socket closes: handled as a death
                continue
            self.command("stats")
            self._push_tenants()

    # ------------------------------------------------------ the manager's API
    def preload(self) -> int:
        return 0  # the plane decodes the prompts when it starts

    def is_webrtc(self, body: bytes) -> bool:
        """A browser's offer (DTLS-SRTP, ICE): its leg is opened by :meth:`open_webrtc`."""
        return is_webrtc_sdp(body)

    def follow_tenants(self, tenants: Callable[[], Any]) -> None:
        """With remote storage, the plane caches the tenants' prompts: it gets what they
        want cached (``prompts`` sections) whenever the configuration changes. With
        local storage it reads them where they are."""
        if self._names is not None:
            self._tenants = tenants
            self._push_tenants()

    def prompt_changed(self, tenant: str, name: str) -> None:
        """The front fetched or evicted a tenant's prompt (a worker's plane)."""
        if self._names is not None:
            self.command("prompt_changed", tenant, name)

    def _push_tenants(self) -> None:
        from media.tenantprompts import wanted_prompts

        if self._tenants is None:
            return
        current = self._tenants()
        if current is not self._tenants_sent:
            self._tenants_sent = current
            self.command("tenants", wanted_prompts(current))

    def pool_stats(self) -> dict[str, int]:
        stats = dict.fromkeys(
            ("ready", "resting", "hits", "misses", "bound", "failures", "early", "stale_dropped"),
            0,
        )
        stats.update(self.clock.pools)
        return stats

    def pool(self, host: str) -> None:
        """Fill the plane's port pool of media address ``host`` now (``rtp_port_pool``)."""
        self.command("pool", host)

    def preload_webrtc(self) -> None:
        """The plane loads aiortc when it starts (``webrtc``), never in a call."""
        self.webrtc = True

    async def open_webrtc(
        self,
        offer: bytes | None,
        *,
        prefer: str | None = None,
        on_timeout: Callable[[], None] | None = None,
        label: str = "",
    ) -> tuple[RemoteWebRtcSession, bytes]:
        """A WebRTC leg in the plane answering ``offer``, or offering (``offer`` None,
        codec ``prefer`` first): the session and our SDP. ``ValueError`` for an offer
        the plane cannot take (as :meth:`MediaManager.open_webrtc`)."""
        sid = next(self._ids)
        session = RemoteWebRtcSession(self, sid, self.codecs[0], on_timeout)
        self.sessions_open[sid] = session
        try:
            body, codec = await self.request("open_webrtc", sid, offer, prefer, label)
        except BaseException:
            self.sessions_open.pop(sid, None)
            session.stopped = True
            raise
        session._codec = codec
        self.sessions += 1
        self.webrtc_sessions += 1
        return session, body

    def location(self, tenant: str, key: str) -> dict[str, Any]:
        from ._media import media_location

        return media_location(self.storage, self._names, tenant, key)

    async def open(
        self,
        host: str,
        negotiated: Any,
        *,
        on_timeout: Callable[[], None] | None = None,
    ) -> RemoteSession:
        """An RTP session in the plane (:class:`OSError` when no port pair is free)."""
        sid = next(self._ids)
        codec = negotiated.codec if negotiated is not None else self.codecs[0]
        session = RemoteSession(self, sid, codec, on_timeout)
        answer = dataclasses.replace(negotiated, offer=None) if negotiated is not None else None
        self.sessions_open[sid] = session
        try:
            local = await self.request("open", sid, host, answer)
        except BaseException:
            self.sessions_open.pop(sid, None)
            session.stopped = True
            raise
        session.local = local
        self.sessions += 1
        return session

    async def play(
        self, session: RemoteSession, names: Sequence[str], tenant: str | None, *, barge_in: bool
    ) -> str | None:
        if session.stopped:
            return None
        pid = next(self._ids)
        try:
            digit: str | None = await self.request(
                "play", session.sid, list(names), tenant, barge_in, pid
            )
        except asyncio.CancelledError:
            # this play only, as in process: the command that stops it may reach the
            # plane after the next play on the session began (a bridge's relay
            # replacing ringback), and must not stop that one
            session._command("stop_request", pid)
            raise
        except PlaneLost:
            return None
        return digit

    async def record(
        self,
        session: RemoteSession,
        tenant: str,
        key: str,
        *,
        max_seconds: float,
        silence_timeout: float | None,
        stop_on_dtmf: bool,
    ) -> RecordingResult:
        from .context import current_call_id

        xid = next(self._ids)
        try:
            result: RecordingResult = await self.request(
                "record",
                session.sid,
                tenant,
                key,
                max_seconds,
                silence_timeout,
                stop_on_dtmf,
                current_call_id.get(),
                xid,
            )
        except asyncio.CancelledError:
            # this recording only (it ends with hangup and is kept): the command may
            # reach the plane after the next recording on the session began
            session._command("stop_request", xid)
            raise
        except PlaneLost:
            return RecordingResult(0.0, "hangup")
        return result

    async def refresh_quality(self, sessions: Sequence[Any]) -> None:
        """Fetch the live RTP figures of ``sessions`` (for the control API's call list)
        in one request."""
        remote = {s.sid: s for s in sessions if isinstance(s, RemoteSession) and not s.stopped}
        if not remote:
            return
        try:
            figures: dict[int, dict[str, Any]] = await self.request("quality", list(remote))
        except PlaneLost:
            return
        for sid, quality in figures.items():
            remote[sid]._quality = quality

    def bridge(self, a: Any, b: Any) -> int:
        if not (isinstance(a, RemoteSession) and isinstance(b, RemoteSession)):
            raise TypeError("the media plane bridges its own RTP sessions only")
        bid = next(self._bridges)
        self.command("bridge", bid, a.sid, b.sid)
        return bid

    def unbridge(self, handle: int) -> None:
        self.command("unbridge", handle)

    def call_recording(
        self,
        tenant: str,
        key: str,
        media: RemoteSession,
        *,
        channels: str,
        max_seconds: float,
        call_id: str,
        now: float,
    ) -> RemoteCallRecording:
        """Record both directions of ``media`` into ``key`` (in the plane)."""
        from media.callrecording import CHANNEL_MODES

        if channels not in CHANNEL_MODES:
            raise ValueError(f"recording channels must be stereo or mono, not {channels!r}")
        rid = next(self._ids)
        self.command("rec_start", rid, media.sid, tenant, key, channels, max_seconds, call_id)
        recording = RemoteCallRecording(self, rid, key, now)
        self.recordings[rid] = recording  # until it closes: the plane may refuse it
        return recording


# ------------------------------------------------------------------ the plane
class PlaneServer:
    """The plane's end: a :class:`~callengine._media.MediaManager` and its sessions,
    driven by the engine's messages."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.connection = _Connection(self.on_message)
        self.manager: Any = None
        self.sessions: dict[int, Any] = {}
        self.bridges: dict[int, Any] = {}
        self.recordings: dict[int, tuple[Any, Any]] = {}
        """Call recordings by id: (the recording, the caller's session)."""
        self.far: dict[int, Any] = {}
        """The bridged session whose voice a call recording's right channel takes."""
        self._loop = asyncio.get_running_loop()
        self.tenants: dict[str, Any] = {}
        self._following = False
        self.realtime = False
        self.lag: Any = None
        self.gc: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.log_writer: Any = None
        """The thread writing log records (the node's format and level), once set up."""
        self.stoppable: dict[int, asyncio.Task[Any]] = {}
        """Play and record requests running, by their id (``stop_request``)."""
        self.begun = 0
        """The highest play or record id whose request has begun."""
        self.stopped_early: set[int] = set()
        """Plays and records stopped before their request began (each ends at once
        when it does)."""

    def send(self, message: tuple[Any, ...]) -> None:
        self.connection.send(message)

    def on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "cmd":
            op, args = message[1], message[2]
            handler = self._commands.get(op)
            if handler is None:
                log.error("media plane: unknown command %r", op)
                return
            handler(self, *args)
        elif kind == "req":
            rid, op, args = message[1], message[2], message[3]
            task = self._loop.create_task(self._answer(rid, op, args))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, rid: int, op: str, args: tuple[Any, ...]) -> None:
        handler = self._requests.get(op)
        try:
            if handler is None:
                raise ValueError(f"unknown request {op!r}")
            value = await handler(self, *args)
        except OSError as exc:
            self.send(("err", rid, "OSError", str(exc)))
        except Exception as exc:
            log.exception("media plane: %s failed", op)
            self.send(("err", rid, type(exc).__name__, str(exc)))
        else:
            self.send(("ok", rid, value))

    # ------------------------------------------------------------- requests
    async def req_init(
        self,
        settings: dict[str, Any],
        priority: int = 0,
        webrtc: bool = False,
        log_settings: tuple[str, str] | None = None,
    ) -> int:
        from ._media import MediaManager
        from .realtime import GcGovernor, LoopLagMonitor

        if log_settings is not None and self.log_writer is None:
            from .logs import setup_logging

            self.log_writer = setup_logging(*log_settings)

        if priority:
            self.realtime = _realtime_priority(priority)

        self.manager = MediaManager(**settings)
        self.manager.preload()
        if webrtc:
            self.manager.preload_webrtc()
        await self.manager.start()
        self.lag = LoopLagMonitor()
        self.lag.start()
        self.gc = GcGovernor(lambda: not self.sessions)
        self.gc.start()
        return os.getpid()

    async def req_open(self, sid: int, host: str, negotiated: Any) -> tuple[str, int]:
        def timeout() -> None:
            self.send(("ev", "timeout", (sid,)))

        session = await self.manager.open(host, negotiated, on_timeout=timeout)
        session.on_digit = lambda event: self.send(("ev", "digit", (sid, event)))
        self.sessions[sid] = session
        return (session.local[0], session.local[1])

    async def req_open_webrtc(
        self, sid: int, offer: bytes | None, prefer: str | None, label: str
    ) -> tuple[bytes, CodecInfo]:
        def timeout() -> None:
            self.send(("ev", "timeout", (sid,)))  # ICE consent or DTLS gone

        session, body = await self.manager.open_webrtc(
            offer, prefer=prefer, on_timeout=timeout, label=label
        )
        session.on_digit = lambda event: self.send(("ev", "digit", (sid, event)))
        self.sessions[sid] = session
        return bytes(body), session.codec

    async def req_play(
        self, sid: int, names: list[str], tenant: str | None, barge_in: bool, pid: int = 0
    ) -> str | None:
        session = self.sessions.get(sid)
        play = (
            None
            if session is None
            else functools.partial(self.manager.play, session, names, tenant, barge_in=barge_in)
        )
        digit: str | None = await self._stoppable(pid, play, None)
        return digit

    async def req_record(
        self,
        sid: int,
        tenant: str,
        key: str,
        max_seconds: float,
        silence_timeout: float | None,
        stop_on_dtmf: bool,
        call_id: str | None,
        xid: int = 0,
    ) -> RecordingResult:
        from .context import current_call_id

        current_call_id.set(call_id or "-")  # this request's own task context
        session = self.sessions.get(sid)
        record = (
            None
            if session is None
            else functools.partial(
                self.manager.record,
                session,
                tenant,
                key,
                max_seconds=max_seconds,
                silence_timeout=silence_timeout,
                stop_on_dtmf=stop_on_dtmf,
            )
        )
        result: RecordingResult = await self._stoppable(xid, record, RecordingResult(0.0, "hangup"))
        return result

    async def _stoppable(
        self, xid: int, start: Callable[[], Awaitable[Any]] | None, stopped: Any
    ) -> Any:
        """Run a play or record request that ``stop_request`` may stop by its id
        (``xid``): its task is cancelled, as the engine's own task is in process (a
        play stops; a recording ends with ``hangup`` and is kept), and the request
        answers ``stopped``, as it does when there is nothing to run (``start`` None:
        the session has ended). Ids grow in the order the engine sends requests, and
        requests begin in that order: see :meth:`cmd_stop_request`."""
        self.begun = max(self.begun, xid)
        if xid in self.stopped_early:  # stopped before it began
            self.stopped_early.discard(xid)
            return stopped
        if start is None:
            return stopped
        task = asyncio.current_task()
        assert task is not None
        self.stoppable[xid] = task
        try:
            return await start()
        except asyncio.CancelledError:
            if xid in self.stoppable:
                raise  # not stop_request's: the plane is stopping
            task.uncancel()
            return stopped
        finally:
            self.stoppable.pop(xid, None)

    async def req_stop(self, sid: int, reason: str) -> dict[str, Any]:
        session = self.sessions.pop(sid, None)
        if session is None:
            return {}
        quality = dict(session.quality())
        await session.stop(reason)
        return quality

    async def req_quality(self, sids: list[int]) -> dict[int, dict[str, Any]]:
        sessions = self.sessions
        return {sid: dict(sessions[sid].quality()) for sid in sids if sid in sessions}

    async def req_stats(self) -> dict[str, Any]:
        return self.stats()

    async def req_shutdown(self) -> None:
        self._loop.call_soon(self._finish)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    _requests: dict[str, Callable[..., Any]] = {
        "init": req_init,
        "open": req_open,
        "open_webrtc": req_open_webrtc,
        "play": req_play,
        "record": req_record,
        "stop": req_stop,
        "quality": req_quality,
        "stats": req_stats,
        "shutdown": req_shutdown,
    }

    # ------------------------------------------------------------- commands
    def cmd_set_remote(
        self,
        sid: int,
        remote: tuple[str, int],
        codec: CodecInfo | None,
        telephone_event_pt: int | None,
        direction: str,
        remote_rtcp: tuple[str, int] | None,
    ) -> None:
        session = self.sessions.get(sid)
        if session is not None:
            session.set_remote(
                remote,
                codec=codec,
                telephone_event_pt=telephone_event_pt,
                direction=direction,
                remote_rtcp=remote_rtcp,
            )

    def cmd_accept_answer(self, sid: int, body: bytes) -> None:
        session = self.sessions.get(sid)
        if session is not None:
            session.accept_answer(body)

    def cmd_set_direction(self, sid: int, direction: str) -> None:
        session = self.sessions.get(sid)
        if session is not None:
            session.set_direction(direction)

    def cmd_await_srtp(self, sid: int) -> None:
        session = self.sessions.get(sid)
        if session is not None:
            session.await_srtp()

    def cmd_set_srtp(self, sid: int, suite: Any, tx_key: bytes, rx_key: bytes) -> None:
        session = self.sessions.get(sid)
        if session is not None:
            session.set_srtp(SrtpContext(suite, tx_key=tx_key, rx_key=rx_key))

    def cmd_deliver_digit(self, sid: int, event: DtmfEvent) -> None:
        session = self.sessions.get(sid)
        if session is not None:
            session.deliver_digit(event)

    def cmd_send_digit(self, sid: int, digit: str, duration_ms: int) -> None:
        session = self.sessions.get(sid)
        if session is not None:
            session.send_digit(digit, duration_ms=duration_ms)

    def cmd_stop_playback(self, sid: int) -> None:
        session = self.sessions.get(sid)
        if session is not None:
            session.stop_playback()

    def cmd_stop_request(self, sid: int, xid: int) -> None:
        """Stop one play or record request (the engine cancelled it), never a later
        one on the session: its task is cancelled, as the engine's own task is in
        process. One whose id is above ``begun`` has not begun, and ends as soon as it
        does."""
        if xid > self.begun:
            self.stopped_early.add(xid)
            return
        task = self.stoppable.pop(xid, None)  # None: it has ended
        if task is not None:
            task.cancel()

    def cmd_bridge(self, bid: int, a: int, b: int) -> None:
        first, second = self.sessions.get(a), self.sessions.get(b)
        if first is not None and second is not None:
            self.bridges[bid] = self.manager.bridge(first, second)

    def cmd_unbridge(self, bid: int) -> None:
        handle = self.bridges.pop(bid, None)
        if handle is not None:
            self.manager.unbridge(handle)

    def cmd_rec_start(
        self,
        rid: int,
        sid: int,
        tenant: str,
        key: str,
        channels: str,
        max_seconds: float,
        call_id: str,
    ) -> None:
        session = self.sessions.get(sid)
        if session is None:
            return
        try:
            recording = self.manager.call_recording(
                tenant,
                key,
                session,
                channels=channels,
                max_seconds=max_seconds,
                call_id=call_id,
                now=self._loop.time(),
            )
        except OSError as exc:  # SpoolFull (counted and logged by the spool), disk errors
            # the engine logs it and its call log forgets the key (RemoteCallRecording)
            self.send(("ev", "rec_refused", (rid, type(exc).__name__, str(exc))))
            return
        session.recording = recording
        self.recordings[rid] = (recording, session)

    def cmd_rec_far(self, rid: int, far_sid: int | None) -> None:
        entry = self.recordings.get(rid)
        if entry is None:
            return
        recording = entry[0]
        old = self.far.pop(rid, None)
        if old is not None:
            if getattr(old.recording, "owner", None) is recording:
                old.recording = None
            recording.detach_far()
        far = self.sessions.get(far_sid) if far_sid is not None else None
        if far is not None:
            far.recording = recording.attach_far(far.stream)
            self.far[rid] = far

    def cmd_rec_stop(self, rid: int, reason: str) -> None:
        entry = self.recordings.pop(rid, None)
        if entry is None:
            return
        recording, session = entry
        if session.recording is recording:
            session.recording = None
        far = self.far.pop(rid, None)
        if far is not None and getattr(far.recording, "owner", None) is recording:
            far.recording = None
        recording.close(self._loop.time(), reason)

    def cmd_tenants(self, wanted: dict[tuple[str, str], tuple[str, str | None]]) -> None:
        """What the tenants want cached from Media Storage (``wanted_prompts``), as the
        tenant configurations the prompt cache reads."""
        tenants: dict[str, Any] = {}
        for (tenant, name), (file, version) in wanted.items():
            entry = tenants.setdefault(tenant, SimpleNamespace(prompts={}))
            entry.prompts[name] = SimpleNamespace(file=file, version=version)
        self.tenants = tenants
        if not self._following:
            self._following = True
            self.manager.follow_tenants(lambda: self.tenants)

    def cmd_prompt_changed(self, tenant: str, name: str) -> None:
        self.manager.prompt_changed(tenant, name)

    def cmd_pool(self, host: str) -> None:
        self.manager.pool(host)

    def cmd_stats(self) -> None:
        self.send(("stats", self.stats()))

    _commands: dict[str, Callable[..., None]] = {
        "set_remote": cmd_set_remote,
        "accept_answer": cmd_accept_answer,
        "set_direction": cmd_set_direction,
        "await_srtp": cmd_await_srtp,
        "set_srtp": cmd_set_srtp,
        "deliver_digit": cmd_deliver_digit,
        "send_digit": cmd_send_digit,
        "stop_playback": cmd_stop_playback,
        "stop_request": cmd_stop_request,
        "bridge": cmd_bridge,
        "unbridge": cmd_unbridge,
        "rec_start": cmd_rec_start,
        "rec_far": cmd_rec_far,
        "rec_stop": cmd_rec_stop,
        "tenants": cmd_tenants,
        "prompt_changed": cmd_prompt_changed,
        "pool": cmd_pool,
        "stats": cmd_stats,
    }

    def stats(self) -> dict[str, Any]:
        """The figures /metrics shows of the media clock, for :class:`ClockFigures`."""
        if self.manager is None:
            return {}
        clock = self.manager.clock
        return {
            "lateness_buckets_ms": clock.lateness_buckets_ms,
            "lateness_counts": list(clock.lateness_counts),
            "lateness_sum": clock.lateness_sum,
            "lateness_max": clock.lateness_max,
            "duration_buckets_ms": clock.duration_buckets_ms,
            "duration_counts": list(clock.duration_counts),
            "duration_sum": clock.duration_sum,
            "duration_max": clock.duration_max,
            "errors": clock.errors,
            "resyncs": clock.resyncs,
            "srtp_sessions": clock.srtp_sessions,
            "streams": len(clock),
            "secure": clock.secure_sessions(),
            "loads": clock.slot_loads(),
            "dropped": clock.drops(),
            "pools": self.manager.pool_stats(),
            "loop_lag_max_ms": self.lag.max * 1000.0 if self.lag is not None else 0.0,
            "gc_pause_max_ms": max(self.gc.stats.pause_max) * 1000.0 if self.gc else 0.0,
            "pid": os.getpid(),
            "realtime": self.realtime,
            **self._storage_stats(),
        }

    def _storage_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        spool = self.manager.spool
        if spool is not None:
            core = spool.core
            out["spool"] = {
                "files": core.files,
                "bytes": core.bytes,
                "quota": core.quota,
                "in_flight": core.in_flight,
                "uploads_ok": core.uploads_ok,
                "uploads_present": core.uploads_present,
                "uploads_failed": core.uploads_failed,
                "rejected": core.rejected,
                "vanished": core.vanished,
                "uploaded_bytes": core.uploaded_bytes,
                "oldest": core.oldest_age(time.time()),
                "near_quota": core.near_quota,
                "refusals": core.refusals,
            }
        sync = self.manager.prompt_sync
        if sync is not None:
            out["prompts"] = {
                "bytes": sync.core.bytes,
                "files": len(sync.core.index),
                "ok": sync.fetches_ok,
                "failed": sync.fetches_failed,
                "missing": sync.fetches_missing,
                "fallbacks": sync.cache.fallbacks,
                "fetching": sync.fetching,
            }
        return out

    async def close(self) -> None:
        for rid in list(self.recordings):
            self.cmd_rec_stop(rid, "shutdown")
        for session in list(self.sessions.values()):
            await session.stop("shutdown")
        self.sessions.clear()
        if self.gc is not None:
            self.gc.stop()
        if self.lag is not None:
            self.lag.stop()
        if self.manager is not None:
            await self.manager.close()


async def _serve(fd: int) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    server = PlaneServer(done)
    sock = socket.socket(fileno=fd)
    await loop.create_unix_connection(lambda: server.connection, sock=sock)
    server.connection.closed.add_done_callback(lambda _f: server._finish())
    await done
    await server.close()
    server.connection.close()
    if server.log_writer is not None:
        server.log_writer.stop()  # what is queued is written
    return 0


def _realtime_priority(priority: int) -> bool:
    """Put the plane's loop (this thread; threads started later get normal scheduling)
    under ``SCHED_FIFO`` at ``priority``. The kernel still caps real-time tasks at 95 %
    of each second (``sched_rt_runtime_us``), so a runaway plane cannot lock a core."""
    try:
        # reset on fork: the threads it starts later (uploads, the executor's) are
        # not real-time; they would inherit SCHED_FIFO, and one busy at the loop's
        # priority would hold its core until it blocks
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except (PermissionError, OSError, AttributeError) as exc:
        log.warning("media_priority %d refused (%s): normal scheduling", priority, exc)
        return False
    log.info("media plane under SCHED_FIFO, priority %d", priority)
    return True


def _die_with_parent(parent: int | None) -> None:
    """A safety net beside end-of-file on the socket: the kernel kills the plane when
    the engine's process goes (``PR_SET_PDEATHSIG``), and a plane whose engine went
    before this ran exits at once."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if parent is not None and os.getppid() != parent:
        raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m callengine.mediaplane FD [ENGINE_PID]``: the plane, on the socket
    ``FD``."""
    args = list(sys.argv[1:] if argv is None else argv)
    fd = int(args[0])
    _die_with_parent(int(args[1]) if len(args) > 1 else None)
    # the engine drains its calls first, then closes the plane (see the module comment)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s media-plane[%(process)d] %(levelname)s %(message)s",
    )
    gc.disable()  # the GcGovernor takes over after init
    started = time.monotonic()
    # what init needs, imported before the engine asks (a prespawned plane waits for
    # the engine's init meanwhile: callengine/_planespawn.py)
    from . import _media, realtime  # noqa: F401

    try:
        import uvloop
    except ImportError:
        code = asyncio.run(_serve(fd))
    else:
        code = uvloop.run(_serve(fd))
    log.debug("media plane ran %.1f s", time.monotonic() - started)
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
