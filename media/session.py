"""The asyncio shell around the media cores: the media clock and RTP sessions.

:class:`MediaClock` (one per worker process) ticks every stream every 20 ms with
``loop.call_at`` on an absolute schedule (drift-corrected: each deadline is the
previous deadline plus the interval, not "now plus the interval"). The period is
split into phases (:mod:`media.clock`): each timer callback runs one slot's
sessions once (next payload out, recording frames in, RTCP and inactivity checks),
so no callback walks every call. Tick lateness goes into a histogram for the
metrics.

:class:`RtpSession` owns one even/odd UDP port pair (RTP, RTCP = RTP + 1), taken
from a :class:`~media.portpool.PortPool` of pre-bound pairs or bound when it opens,
and one :class:`~media.stream.RtpStream`; datagrams are fed to the stream core
with ``now = loop.time()``; decisions stay in the core, I/O stays here. With
:meth:`RtpSession.set_srtp` the session protects what it sends and unprotects
what it receives (SRTP and SRTCP, :mod:`media.srtp`) at this edge: the stream core
sees plain RTP, and a packet that fails authentication never reaches it (so it
cannot move the latch either). A plain session pays nothing for this: the send
and receive callbacks are swapped, not tested per packet.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from .clock import DEFAULT_SLOTS, TickSchedule
from .codecs import Codec, CodecInfo, create_codec
from .dtmf import DtmfEvent, InbandDtmfDetector
from .jitterbuffer import RecordingJitterBuffer
from .portpool import PortPair, PortPool, _drop_datagram, open_pair
from .recorder import Recorder, RecordingResult
from .rtp import RtpPacket
from .srtp import SrtpContext, SrtpError
from .stream import Address, RtpStream, is_stun

# The clock belongs to no call: its ticks must not inherit the first call's context
# (a log line's call id comes from there).
_CLOCK_CONTEXT = contextvars.Context()

# One generator per process: seeding a new Random from os.urandom costs ~70 us a call.
_RNG = random.Random()

__all__ = ["DEFAULT_PORT_RANGE", "DROP_COUNTERS", "MediaClock", "RtpSession"]

logger = logging.getLogger(__name__)

DEFAULT_PORT_RANGE = (10000, 20000)
_OCTET_PER_TICK = frozenset({"PCMU", "PCMA", "G722"})
_LATENESS_BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
_DURATION_BUCKETS_MS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
#: The :class:`~media.stream.StreamCounters` a node exports as dropped-packet reasons.
DROP_COUNTERS = (
    "malformed",
    "wrong_pt",
    "wrong_ssrc",
    "wrong_source",
    "srtp_failed",
    "rtcp_malformed",
    "relatches",
)


class MediaClock:
    """One 20 ms clock per process driving every active :class:`RtpSession`.

    The period is split into ``slots`` phases (:class:`~media.clock.TickSchedule`):
    each timer callback ticks one slot's sessions only, so the longest loop turn the
    clock takes is a ``1 / slots`` share of the streams, not all of them. ``loop``
    is for tests (a fake loop with ``time()`` and ``call_at()``); by default the
    running loop when the first session is added.
    """

    def __init__(
        self,
        *,
        interval: float = 0.02,
        max_lag_ticks: int = 5,
        slots: int = DEFAULT_SLOTS,
        phase: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.interval = interval
        self.max_lag_ticks = max_lag_ticks
        self._schedule: TickSchedule[Callable[[float], None]] = TickSchedule(
            interval=interval, slots=slots, max_lag_ticks=max_lag_ticks, phase=phase
        )
        self._sessions: dict[int, RtpSession] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._loop = loop
        self.ticks = 0  # slot callbacks that ticked at least one session
        self.errors = 0
        self.lateness_buckets_ms: tuple[float, ...] = _LATENESS_BUCKETS_MS
        self.lateness_counts: list[int] = [0] * (len(_LATENESS_BUCKETS_MS) + 1)
        self.lateness_sum = 0.0
        self.lateness_max = 0.0
        # How long each clock callback held the loop (wall time): the turn that
        # everything else queued behind it waited.
        self.duration_buckets_ms: tuple[float, ...] = _DURATION_BUCKETS_MS
        self.duration_counts: list[int] = [0] * (len(_DURATION_BUCKETS_MS) + 1)
        self.duration_sum = 0.0
        self.duration_max = 0.0
        self.srtp_sessions = 0  # sessions that were secured with SRTP, ever
        # Drop counters of the sessions that ended (live ones are summed at read time).
        self._ended_drops: dict[str, int] = dict.fromkeys(DROP_COUNTERS, 0)

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def resyncs(self) -> int:
        """Times a slot skipped ahead after a stall instead of bursting."""
        return self._schedule.resyncs

    @property
    def slots(self) -> int:
        return self._schedule.slots

    def slot_loads(self) -> list[int]:
        """Sessions per slot (phase) of the period."""
        return self._schedule.loads()

    def slot_of(self, session: RtpSession) -> int | None:
        return self._schedule.slot_of(id(session))

    def add(self, session: RtpSession) -> None:
        """Start ticking ``session`` in the least-loaded slot (starts the clock on
        first use)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._sessions[id(session)] = session
        self._schedule.add(id(session), session._on_tick, loop.time())
        self._arm()

    def remove(self, session: RtpSession) -> None:
        """Stop ticking ``session``; the clock stops when none are left."""
        self._sessions.pop(id(session), None)
        self._schedule.remove(id(session))
        if not self._sessions and self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed_at = math.inf

    def retire(self, session: RtpSession) -> None:
        """Keep the drop counters of a session that ends (for :meth:`drops`)."""
        counters = session.stream.counters
        for name in DROP_COUNTERS:
            self._ended_drops[name] += getattr(counters, name)

    def drops(self) -> dict[str, int]:
        """RTP/RTCP packets dropped by every session of this clock, by reason (and the
        number of re-latches), since the process started."""
        totals = dict(self._ended_drops)
        # /metrics runs in prometheus-client's server thread while the loop adds and
        # removes sessions: iterate over a copy (taken in one step under the GIL)
        for session in tuple(self._sessions.values()):
            counters = session.stream.counters
            for name in DROP_COUNTERS:
                totals[name] += getattr(counters, name)
        return totals

    def secure_sessions(self) -> int:
        """Active sessions whose media is SRTP."""
        return sum(1 for session in tuple(self._sessions.values()) if session.secure)

    def lateness_histogram(self) -> dict[str, int]:
        """Tick lateness counts by bucket upper bound in ms (``"+Inf"`` last); not cumulative."""
        labels = [f"{b:g}" for b in self.lateness_buckets_ms] + ["+Inf"]
        return dict(zip(labels, self.lateness_counts, strict=True))

    def _arm(self) -> None:
        """Keep the one timer set for the earliest due slot."""
        deadline = self._schedule.next_deadline()
        if deadline is None:
            return
        when, slot = deadline
        if self._handle is not None:
            if when >= self._armed_at:
                return
            self._handle.cancel()
        assert self._loop is not None
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._tick, slot, context=_CLOCK_CONTEXT)

    def _tick(self, slot: int) -> None:
        loop = self._loop
        assert loop is not None
        self._handle = None
        self._armed_at = math.inf
        now = loop.time()
        ticks, late = self._schedule.fire(slot, now)
        if ticks:
            late_ms = late * 1000.0
            index = 0
            for bound in self.lateness_buckets_ms:
                if late_ms <= bound:
                    break
                index += 1
            self.lateness_counts[index] += 1
            self.lateness_sum += late_ms
            if late_ms > self.lateness_max:
                self.lateness_max = late_ms
            self.ticks += 1
            started = time.perf_counter()
            for on_tick in ticks:
                try:
                    on_tick(now)
                except Exception:
                    # One broken session must not stop every call's audio.
                    self.errors += 1
                    port = getattr(getattr(on_tick, "__self__", None), "rtp_port", None)
                    logger.exception("media tick failed for session on port %s", port)
            took_ms = (time.perf_counter() - started) * 1000.0
            index = 0
            for bound in self.duration_buckets_ms:
                if took_ms <= bound:
                    break
                index += 1
            self.duration_counts[index] += 1
            self.duration_sum += took_ms
            if took_ms > self.duration_max:
                self.duration_max = took_ms
        self._arm()


class Playback:
    """Playing payload sequences, one per 20 ms tick: the one ``play`` contract of
    :class:`RtpSession` and :class:`media.webrtc.WebRtcSession`. The session's tick takes
    the next payload from ``_play_iter``; the end of it, or a digit that barges in,
    calls :meth:`_finish_play`."""

    _loop: asyncio.AbstractEventLoop
    _play_iter: Iterator[bytes] | None
    _play_future: asyncio.Future[str | None] | None
    _barge_in: bool

    async def play(
        self, payloads: Iterable[Iterable[bytes]], *, barge_in: bool = True
    ) -> str | None:
        """Play the payload sequences in order, one per tick.

        Returns the digit that interrupted playback (``barge_in``), or ``None``
        when everything was played. A digit that barges in is returned, not
        queued in :meth:`digits`. Cancelling the awaiting task stops playback.
        """
        self._finish_play(None)
        future: asyncio.Future[str | None] = self._loop.create_future()
        self._play_iter = itertools.chain.from_iterable(payloads)
        self._play_future = future
        self._barge_in = barge_in
        try:
            return await future
        finally:
            if self._play_future is future:
                self._play_iter = None
                self._play_future = None

    def stop_playback(self) -> None:
        """Stop what is playing; :meth:`play` returns ``None``."""
        self._finish_play(None)

    def _finish_play(self, digit: str | None) -> None:
        future = self._play_future
        self._play_iter = None
        self._play_future = None
        if future is not None and not future.done():
            future.set_result(digit)

    @property
    def playing(self) -> bool:
        return self._play_iter is not None


class RtpSession(Playback):
    """RTP/RTCP for one call: playback, DTMF, recording, hold, quality.

    Create with :meth:`open`; the engine then calls :meth:`set_remote` from the
    negotiated SDP. All methods run on the event loop thread.
    """

    def __init__(
        self,
        stream: RtpStream,
        clock: MediaClock,
        pair: PortPair,
        *,
        ports: PortPool | None = None,
        inband_dtmf: bool = False,
        idle_silence: bool = True,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        self.stream = stream
        self.clock = clock
        self._pair = pair
        # where the pair goes back when the call ends (None: it is closed)
        self._ports = ports
        self._rtp = pair.rtp
        self._sendto: Callable[[bytes, Any], None] = pair.rtp.sendto
        self._rtcp = pair.rtcp
        # Next time the RTCP and inactivity checks can change (0: check on the next tick).
        self._checks_at = 0.0
        self.local: Address = (pair.host, pair.port)
        self.idle_silence = idle_silence
        self.on_timeout = on_timeout
        self._loop = asyncio.get_running_loop()
        self._codec: Codec = create_codec(stream.codec)
        self._silence = self._codec.silence()
        self._digits: asyncio.Queue[DtmfEvent] = asyncio.Queue()
        self._play_iter: Iterator[bytes] | None = None
        self._play_future: asyncio.Future[str | None] | None = None
        self._barge_in = False
        self._recorder: Recorder | None = None
        self._record_future: asyncio.Future[RecordingResult] | None = None
        self._record_stop_on_dtmf = False
        self._jitter: RecordingJitterBuffer | None = None
        self._rx_codec: Codec | None = None
        # When a recording ticked last, and a gap after which the clock was late.
        self._ticked_at = -math.inf
        self._stalled_after = 1.5 * clock.interval
        self._inband = InbandDtmfDetector(stream.codec.sample_rate) if inband_dtmf else None
        self.timed_out = asyncio.Event()
        #: Called with each received audio payload (before recording): a B2BUA's
        #: media relay hooks here.
        self.on_audio: Callable[[bytes], None] | None = None
        #: A call recording's tap (:mod:`media.callrecording`): fed what this session
        #: receives and, each tick, what it sent. Apart from the IVR ``record`` above.
        self.recording: Any = None
        #: Where digits go instead of :meth:`digits` (the media plane forwards them).
        self.on_digit: Callable[[DtmfEvent], None] | None = None
        self._closed = False
        self._srtp: SrtpContext | None = None
        self._srtp_pending = False
        pair.route(self._on_rtp, self._on_rtcp)
        clock.add(self)

    @classmethod
    async def open(
        cls,
        codec: CodecInfo,
        *,
        clock: MediaClock,
        host: str = "0.0.0.0",
        port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
        remote: Address | None = None,
        telephone_event_pt: int | None = 101,
        inband_dtmf: bool = False,
        idle_silence: bool = True,
        on_timeout: Callable[[], None] | None = None,
        rng: random.Random | None = None,
        ports: PortPool | None = None,
        **stream_options: Any,
    ) -> RtpSession:
        """Take a port pair (RTP even, RTCP + 1) and start ticking.

        With ``ports`` the pair comes from that pool (bound in advance; ``host`` and
        ``port_range`` are the pool's) and goes back to it at :meth:`stop`; without,
        one is bound in ``port_range`` now and closed at :meth:`stop`. Raises
        :class:`OSError` when no pair is free. ``stream_options`` go to
        :class:`~media.stream.RtpStream` (``rtp_timeout``, ``relatch_after``,
        ``rtcp_interval``, ``cname``...).
        """
        loop = asyncio.get_running_loop()
        rng = rng or _RNG
        if ports is not None:
            pair = await ports.acquire()
        else:
            pair = await open_pair(host, port_range, rng)
        now = loop.time()
        stream = RtpStream(
            codec,
            now=now,
            remote=remote,
            telephone_event_pt=telephone_event_pt,
            rng=rng,
            wallclock_offset=time.time() - now,
            **stream_options,
        )
        return cls(
            stream,
            clock,
            pair,
            ports=ports,
            inband_dtmf=inband_dtmf,
            idle_silence=idle_silence,
            on_timeout=on_timeout,
        )

    # --- properties --------------------------------------------------------------

    @property
    def rtp_port(self) -> int:
        return self.local[1]

    @property
    def rtcp_port(self) -> int:
        return self.local[1] + 1

    @property
    def codec(self) -> CodecInfo:
        return self.stream.codec

    @property
    def silence(self) -> bytes:
        """One 20 ms frame of silence in the sending codec."""
        return self._silence

    # --- configuration -------------------------------------------------------------

    @property
    def srtp(self) -> SrtpContext | None:
        """The SRTP transform in use, if any."""
        return self._srtp

    @property
    def secure(self) -> bool:
        """SRTP is in use or awaited: no packet goes out or comes in in the clear."""
        return self._srtp is not None or self._srtp_pending

    def _receive_srtp(self) -> None:
        # session -> pair -> protocol -> session is a cycle until stop() routes the
        # pair elsewhere (back to the pool, or closed): nothing outlives the call.
        self._pair.route(self._on_srtp, self._on_rtcp)

    def await_srtp(self) -> None:
        """We offered SRTP and the answer has not come: send nothing, drop what comes
        (counted as ``srtp_failed``) until :meth:`set_srtp` gives the keys."""
        self._srtp_pending = True
        self._sendto = _drop_datagram
        self._receive_srtp()

    def set_srtp(self, context: SrtpContext) -> None:
        """Protect and unprotect every packet from now on with ``context``.

        Call it before the first packet is sent (right after the session is opened or
        when the answer arrives); a new context for a running session (a re-INVITE with
        new keys) replaces the old one."""
        if self._srtp is None:
            self.clock.srtp_sessions += 1
        self._srtp = context
        self._srtp_pending = False
        protect = context.protect
        sendto = self._rtp.sendto
        counters = self.stream.counters

        def send_protected(datagram: bytes, addr: Address) -> None:
            try:
                sendto(protect(datagram), addr)
            except SrtpError:
                counters.srtp_failed += 1

        self._sendto = send_protected
        self._receive_srtp()

    def set_remote(
        self,
        remote: Address,
        *,
        codec: CodecInfo | None = None,
        telephone_event_pt: int | None = None,
        direction: str = "sendrecv",
        remote_rtcp: Address | None = None,
    ) -> None:
        """Apply negotiated SDP: destination, codec, telephone-event PT, our direction."""
        if codec is not None and codec != self.stream.codec:
            self.stream.set_codec(codec, telephone_event_pt)
            self._codec = create_codec(codec)
            self._silence = self._codec.silence()
            self._rx_codec = None
        elif telephone_event_pt is not None:
            self.stream.set_codec(self.stream.codec, telephone_event_pt)
        self.stream.set_remote(remote, remote_rtcp)
        self.set_direction(direction)

    def set_direction(self, direction: str) -> None:
        """Our SDP direction: whether we send (``sendrecv``/``sendonly``) and whether
        the peer does (``sendrecv``/``recvonly``: the RTP timeout is armed)."""
        self.stream.sending = direction in ("sendrecv", "sendonly")
        self.stream.set_expect_media(direction in ("sendrecv", "recvonly"), self._loop.time())
        self._checks_at = 0.0

    def hold(self, on: bool = True) -> None:
        """Local hold: stop sending and stop expecting media (and back)."""
        self.set_direction("inactive" if on else "sendrecv")

    # --- DTMF ------------------------------------------------------------------------

    def digits(self) -> asyncio.Queue[DtmfEvent]:
        """Received digits (RFC 4733, in-band if enabled, or fed from SIP INFO)."""
        return self._digits

    def send_digit(self, digit: str, *, duration_ms: int = 100) -> None:
        """Send an RFC 4733 digit (starts on the next tick, replaces audio meanwhile)."""
        self.stream.queue_digit(digit, duration_ms=duration_ms)

    def deliver_digit(self, event: DtmfEvent) -> None:
        """Dispatch a digit: barge-in, recording stop, or the digits queue.

        The stream calls this for RTP digits; the engine calls it for SIP INFO.
        """
        if self._play_future is not None and self._barge_in:
            self._finish_play(event.digit)
            return
        if self._recorder is not None and self._record_stop_on_dtmf:
            self._finish_recording("dtmf", event.digit)
            return
        if self.on_digit is not None:
            self.on_digit(event)
        else:
            self._digits.put_nowait(event)

    # --- recording -----------------------------------------------------------------

    def start_recording(
        self, recorder: Recorder, *, stop_on_dtmf: bool = True
    ) -> asyncio.Future[RecordingResult]:
        """Record received audio into ``recorder``; the future resolves when it stops
        (``max_seconds``, ``silence``, ``dtmf``, ``stopped``, ``hangup``)."""
        if self._recorder is not None:
            self._finish_recording("stopped")
        self._recorder = recorder
        self._record_stop_on_dtmf = stop_on_dtmf
        codec = self.stream.codec
        self._jitter = RecordingJitterBuffer(
            frame_seconds=codec.frame_ms / 1000,
            timestamp_step=codec.timestamp_step,
            # Octet-per-tick codecs: packets of any ptime are cut into 20 ms frames.
            silence=self._silence if codec.name.upper() in _OCTET_PER_TICK else None,
        )
        self._rx_codec = create_codec(self.stream.codec)
        future: asyncio.Future[RecordingResult] = self._loop.create_future()
        self._record_future = future
        return future

    def stop_recording(
        self, reason: str = "stopped", *, only: asyncio.Future[RecordingResult] | None = None
    ) -> None:
        """Stop recording now (the future gets ``reason``). ``only``: the recording
        whose future that is, never one started since (a cancelled ``record`` whose
        cancellation runs after the next recording began)."""
        if only is not None and only is not self._record_future:
            return
        self._finish_recording(reason)

    def _decode(self, payload: bytes | None) -> np.ndarray[Any, np.dtype[np.int16]]:
        n = self.stream.codec.samples_per_frame
        if payload is None or self._rx_codec is None:
            return np.zeros(n, dtype=np.int16)
        return self._rx_codec.decode(payload)

    def _finish_recording(self, reason: str, digit: str | None = None) -> None:
        recorder, future, jitter = self._recorder, self._record_future, self._jitter
        self._recorder = None
        self._record_future = None
        self._jitter = None
        if recorder is None:
            return
        if jitter is not None and reason not in ("max_seconds", "silence"):
            for frame in jitter.flush(self._loop.time()):
                if recorder.write(self._decode(frame)) is not None:
                    break
        result = recorder.close(reason, digit)
        if future is not None and not future.done():
            future.set_result(result)

    # --- I/O callbacks ---------------------------------------------------------------

    def _on_rtp(self, data: bytes, addr: Address) -> None:
        now = self._loop.time()
        result = self.stream.receive(data, addr, now)
        if result is None:
            return
        if isinstance(result, RtpPacket):
            if self.on_audio is not None:
                self.on_audio(result.payload)
            if self.recording is not None:
                self.recording.received(result.timestamp, result.payload, now)
            if self._jitter is not None:
                self._jitter.push(result.timestamp, result.payload, now)
            if self._inband is not None:
                pcm = (self._rx_codec or self._codec).decode(result.payload)
                for event in self._inband.feed(pcm):
                    self.deliver_digit(event)
            return
        for event in result:
            self.deliver_digit(event)

    def _srtp_dropped(self, data: bytes) -> None:
        """Count a datagram SRTP could not take: a STUN keepalive is no SRTP failure."""
        counters = self.stream.counters
        if is_stun(data):
            counters.stun_received += 1
        else:
            counters.srtp_failed += 1

    def _on_srtp(self, data: bytes, addr: Address) -> None:
        srtp = self._srtp
        if srtp is None:
            self._srtp_dropped(data)
            return
        try:
            data = srtp.unprotect(data)
        except SrtpError:
            self._srtp_dropped(data)
            return
        self._on_rtp(data, addr)

    def _on_rtcp(self, data: bytes, addr: Address) -> None:
        if self._srtp_pending or self._srtp is not None:
            if self._srtp is None:
                self._srtp_dropped(data)
                return
            try:
                data = self._srtp.unprotect_rtcp(data)
            except SrtpError:
                self._srtp_dropped(data)
                return
        self.stream.receive_rtcp(data, addr, self._loop.time())

    def _send_rtcp(self, report: bytes, addr: Address) -> None:
        if self._srtp is not None:
            try:
                report = self._srtp.protect_rtcp(report)
            except SrtpError:
                self.stream.counters.srtp_failed += 1
                return
        elif self._srtp_pending:
            return
        self._rtcp.sendto(report, addr)

    def _on_tick(self, now: float) -> None:
        # The per-stream hot path (20 ms, every call): next payload, one sendto, and
        # the rarer work only when due.
        it = self._play_iter
        if it is not None:
            payload = next(it, None)
            if payload is None:
                self._finish_play(None)
                if self.idle_silence:
                    payload = self._silence
        else:
            payload = self._silence if self.idle_silence else None
        stream = self.stream
        datagram = stream.tick(payload)
        if datagram is not None:
            self._sendto(datagram, stream.remote)
        if self.recording is not None or self._jitter is not None:
            if now - self._ticked_at > self._stalled_after:
                # A late tick: what arrived while this process did not run is still in
                # the socket (the loop reads it after its timers); recorded, not lost.
                self._pair.receive_waiting()
            self._ticked_at = now
            if self.recording is not None:
                self.recording.tick(payload if datagram is not None else None, now)
            if self._jitter is not None:
                self._record_tick(now)
        if now >= self._checks_at:
            self._checks(now)

    def _record_tick(self, now: float) -> None:
        jitter, recorder = self._jitter, self._recorder
        if jitter is None or recorder is None:
            return
        for frame in jitter.pop(now):
            reason = recorder.write(self._decode(frame))
            if reason is not None:
                self._finish_recording(reason)
                break

    def _checks(self, now: float) -> None:
        stream = self.stream
        if stream.rtcp_due(now):
            report = stream.build_rtcp(now)
            if stream.remote_rtcp is not None:
                self._send_rtcp(report, stream.remote_rtcp)
        if not self.timed_out.is_set() and stream.timed_out(now):
            self.timed_out.set()
            if self.on_timeout is not None:
                self.on_timeout()
        # The inactivity deadline only moves later as packets arrive, so checking at
        # the earlier of the two deadlines never misses one.
        self._checks_at = (
            stream.next_deadline() if not self.timed_out.is_set() else (stream._next_rtcp)
        )

    # --- figures and teardown --------------------------------------------------------

    def quality(self) -> dict[str, float | int | None]:
        """Loss, jitter, RTT and counters for the call log."""
        return self.stream.quality()

    async def stop(self, reason: str = "hangup") -> None:
        """Send RTCP BYE, end playback and recording, release the ports."""
        if self._closed:
            return
        self._closed = True
        self.clock.retire(self)
        self.clock.remove(self)
        # what the owner hooked in refers back to it: drop it, so that the session and
        # its call are freed by reference counting (no cycle left for the collector)
        self.on_timeout = None
        self.on_audio = None
        self._finish_play(None)
        self._finish_recording(reason)
        if self.recording is not None:
            self.recording.close(self._loop.time(), reason)
            self.recording = None
        for event in self.stream.flush_dtmf():
            self._digits.put_nowait(event)
        if self.stream.remote_rtcp is not None:
            self._send_rtcp(self.stream.build_bye(self._loop.time()), self.stream.remote_rtcp)
        # Nothing may go out of these sockets for this call any more: they may serve
        # another call (a late RTCP of ours would reach this call's peer from it).
        self._sendto = _drop_datagram
        if self._ports is not None:
            self._ports.release(self._pair)
        else:
            self._pair.close()
        await asyncio.sleep(0)
