"""Glue between calls and the media package: one clock, one prompt cache, storage.

The Engine owns one :class:`MediaManager`; a :class:`~callengine.call.Call` asks it for
an RTP session when it answers or offers, and for ready payloads when it plays.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from media.bridge import start_bridge, stop_bridge
from media.callrecording import CHANNEL_MODES, CallRecording
from media.clock import DEFAULT_SLOTS
from media.codecs import CodecInfo
from media.dtmf import DtmfEvent
from media.portpool import DEFAULT_POOL_SIZE, DEFAULT_QUARANTINE, PortPool
from media.prompts import PromptCache
from media.recorder import Recorder, RecordingResult
from media.session import MediaClock, RtpSession
from media.spool import Spool, SpoolCore
from media.srtp import SrtpContext
from media.storage import LocalMediaStorage
from media.stream import RELATCH_AFTER
from media.tenantprompts import CACHE_DIR, CachedPromptStorage, PromptSync
from media.webrtcsdp import is_webrtc_sdp

from .sip import sdp as sdpmod

if TYPE_CHECKING:
    from media.azure import AzureBlobStorage

    from .config import StorageSettings

log = logging.getLogger("callengine.media")


class SrtpPolicy:
    """The node's ``srtp`` setting (``tls``, ``any``, ``off``) as call control asks it,
    for both media managers (in process and the media plane)."""

    srtp: str

    def srtp_accepted(self, transport: str) -> bool:
        """Whether an SDES (``a=crypto``) offer received over ``transport`` is taken:
        the keys are in the SDP, so by default only over TLS."""
        return self.srtp == "any" or (self.srtp == "tls" and transport == "TLS")

    def srtp_offered(self, transport: str) -> bool:
        """Whether our offers over ``transport`` carry SRTP (TLS only: never keys in
        clear-text signalling)."""
        return self.srtp != "off" and transport == "TLS"


class MediaManager(SrtpPolicy):
    """Per-process media resources."""

    def __init__(
        self,
        *,
        data_dir: str,
        port_range: tuple[int, int],
        rtp_timeout: float,
        codecs: Sequence[CodecInfo],
        sockets: bool = True,
        storage: StorageSettings | None = None,
        relatch_after: float = RELATCH_AFTER,
        srtp: str = "tls",
        port_pool: int = DEFAULT_POOL_SIZE,
        port_quarantine: float = DEFAULT_QUARANTINE,
        clock_slots: int = DEFAULT_SLOTS,
        clock_phase: float | None = None,
        spool_name: str = "spool",
        prompt_owner: bool = True,
    ) -> None:
        self.clock = MediaClock(slots=clock_slots, phase=clock_phase)
        self.port_pool = port_pool
        self.port_quarantine = port_quarantine
        self.pools: dict[str, PortPool] = {}
        """Pre-bound RTP port pairs per media address (``media/portpool.py``)."""
        self.storage = LocalMediaStorage(Path(data_dir) / "media")
        self.spool: Spool | None = None
        """With remote storage: recordings and voicemail are written here first and
        uploaded in the background (docs/storage.md)."""
        if storage is not None and storage.kind == "azure":
            # one spool directory per process: each recovers only its own files after a
            # kill -9 (a multi-worker node's workers have spool-w0, spool-w1...)
            self.spool, target = make_spool(storage, Path(data_dir) / spool_name)
        self.prompts = PromptCache(self.storage)
        self.prompt_sync: PromptSync | None = None
        """With remote storage: tenants' prompts are fetched into a local cache that
        calls play from (docs/storage.md, "Tenant prompts"); :meth:`follow_tenants`."""
        if self.spool is not None and storage is not None:
            cache = CachedPromptStorage(Path(data_dir) / CACHE_DIR)
            self.prompts = PromptCache(cache)
            # a worker of a multi-worker node plays from the directory its front keeps
            # (callengine/cluster.py): one fetch per prompt version for the node
            self.prompt_sync = PromptSync(
                cache,
                target,
                self.prompts,
                cap=storage.prompt_cache_bytes,
                interval=storage.prompt_refresh,
                fetching=prompt_owner,
            )
        self.port_range = port_range
        self.rtp_timeout = rtp_timeout
        self.codecs = list(codecs)
        self.sessions = 0
        self.sockets = sockets
        self.relatch_after = relatch_after
        if srtp not in ("tls", "any", "off"):
            raise ValueError(f"srtp must be tls, any or off, not {srtp!r}")
        self.srtp = srtp
        self.webrtc_sessions = 0
        """WebRTC legs opened since start (docs/webrtc.md)."""

    def preload(self) -> int:
        """Decode, resample and encode every bundled prompt for every codec now, at
        start-up, so that no first call stalls the event loop doing it."""
        count = 0
        names = sorted(self.prompts.names())
        for codec in self.codecs:
            if codec.is_dtmf:
                continue
            for name in names:
                self.prompts.payloads(name, codec)
                count += 1
            for tone in ("beep", "ringback", "busy"):
                self.prompts.tone(tone, codec)
        return count

    def pool(self, host: str) -> PortPool | None:
        """The port pool of media address ``host`` (made on first use, and filling);
        ``None`` without sockets or with ``rtp_port_pool: 0``."""
        if not self.sockets or self.port_pool <= 0:
            return None
        pool = self.pools.get(host)
        if pool is None:
            pool = self.pools[host] = PortPool(
                host, self.port_range, size=self.port_pool, quarantine=self.port_quarantine
            )
            pool.warm()
        return pool

    def pool_stats(self) -> dict[str, int]:
        """The port pools' figures, summed over media addresses (for /metrics)."""
        stats = dict.fromkeys(
            ("ready", "resting", "hits", "misses", "bound", "failures", "early", "stale_dropped"),
            0,
        )
        for pool in self.pools.values():
            core = pool.core
            stats["ready"] += len(core.ready)
            stats["resting"] += len(core.cooling)
            stats["hits"] += core.hits
            stats["misses"] += core.misses
            stats["bound"] += core.bound
            stats["failures"] += core.failures
            stats["early"] += core.early
            stats["stale_dropped"] += pool.stale_dropped
        return stats

    async def open(
        self,
        host: str,
        negotiated: sdpmod.Answer | None,
        *,
        on_timeout: Callable[[], None] | None = None,
    ) -> RtpSession:
        """Bind a port pair; with an SDP answer, point it at the peer at once.

        Without sockets (signalling-only mode) the call gets :class:`SilentMedia`."""
        codec = negotiated.codec if negotiated is not None else self.codecs[0]
        if not self.sockets:
            return SilentMedia(codec)  # type: ignore[return-value]
        te = negotiated.telephone_event_pt if negotiated is not None else 101
        # 0 disables the inactivity hang-up (the stream's own default is 60 s)
        options: dict[str, Any] = {
            "rtp_timeout": self.rtp_timeout or float("inf"),
            "relatch_after": self.relatch_after,
        }
        session = await RtpSession.open(
            codec,
            clock=self.clock,
            host=host,
            port_range=self.port_range,
            ports=self.pool(host),
            telephone_event_pt=te,
            inband_dtmf=negotiated is not None and negotiated.telephone_event is None,
            on_timeout=on_timeout,
            **options,
        )
        self.sessions += 1
        if negotiated is not None:
            apply_answer(session, negotiated)
        return session

    def preload_webrtc(self) -> None:
        """Import aiortc's WebRTC stack now (~0.7 s), not in the first browser's call:
        there, it stalled the event loop (and every call's media) for 750 ms."""
        import media.webrtc  # noqa: F401

    def is_webrtc(self, body: bytes) -> bool:
        """A browser's offer (DTLS-SRTP, ICE), for :meth:`open_webrtc`; never on a
        signalling-only node."""
        return self.sockets and is_webrtc_sdp(body)

    async def open_webrtc(
        self,
        offer: bytes | None,
        *,
        prefer: str | None = None,
        on_timeout: Callable[[], None] | None = None,
        label: str = "",
    ) -> tuple[Any, bytes]:
        """A WebRTC media session (:class:`media.webrtc.WebRtcSession`) answering
        ``offer``, or offering (``offer`` None, codec ``prefer`` first); returns it and
        our SDP. ``ValueError`` for an offer it cannot take."""
        from media.webrtc import WebRtcSession

        if offer is None:
            session, body = await WebRtcSession.offer(
                self.codecs, prefer=prefer, on_timeout=on_timeout, label=label
            )
        else:
            session, body = await WebRtcSession.answer(
                offer, self.codecs, on_timeout=on_timeout, label=label
            )
        self.sessions += 1
        self.webrtc_sessions += 1
        return session, body

    # ------------------------------------------------ what calls do with media
    # The media plane (callengine/mediaplane.py) offers the same methods for sessions
    # held in its own process: call control goes through these, never around them.
    async def play(
        self, session: RtpSession, names: Sequence[str], tenant: str | None, *, barge_in: bool
    ) -> str | None:
        """Play prompts (names, or ``tone:NAME``) on ``session``; the digit that barged
        in, or ``None``."""
        return await session.play(self.payloads(names, session.codec, tenant), barge_in=barge_in)

    async def record(
        self,
        session: RtpSession,
        tenant: str,
        key: str,
        *,
        max_seconds: float,
        silence_timeout: float | None,
        stop_on_dtmf: bool,
    ) -> RecordingResult:
        """Record what ``session`` receives into ``key`` until max_seconds, silence,
        a digit (``stop_on_dtmf``) or hangup; cancelling stops it (``hangup``)."""
        recorder, _ = self.recorder(
            tenant,
            key,
            sample_rate=session.codec.sample_rate,
            max_seconds=max_seconds,
            silence_timeout=silence_timeout,
        )
        future = session.start_recording(recorder, stop_on_dtmf=stop_on_dtmf)
        try:
            return await future
        except asyncio.CancelledError:
            session.stop_recording("hangup", only=future)
            raise

    def bridge(self, a: Any, b: Any) -> Any:
        """Relay media both ways between two sessions (RTP or WebRTC); the handle is
        for :meth:`unbridge`."""
        return start_bridge(a, b)

    def unbridge(self, handle: Any) -> None:
        stop_bridge(handle)

    def payloads(
        self, names: Sequence[str], codec: CodecInfo, tenant: str | None
    ) -> list[Iterable[bytes]]:
        """Prompt names (or ``tone:NAME``) -> payload sequences for ``codec``."""
        out: list[Iterable[bytes]] = []
        for name in names:
            if name.startswith("tone:"):
                tone = name[5:]
                cycle = self.prompts.tone(tone, codec)
                # ringback/busy repeat for a few seconds; a beep plays once
                out.append(
                    cycle
                    if tone == "beep"
                    else itertools.chain.from_iterable(itertools.repeat(cycle, 10))
                )
            else:
                out.append(self.prompts.payloads(name, codec, tenant=tenant))
        return out

    def recorder(
        self,
        tenant: str,
        key: str,
        *,
        sample_rate: int,
        max_seconds: float,
        silence_timeout: float | None,
        channels: int = 1,
        call_id: str | None = None,
    ) -> tuple[Recorder, Path]:
        """A recorder writing ``key`` (``voicemail/...``, ``recordings/...``) of
        ``tenant``: into local media storage, or into the spool (raises
        :class:`~media.spool.SpoolFull` at its quota) to be uploaded when closed."""
        kind, rest = _split(key)
        fmt = "FLAC" if key.lower().endswith(".flac") else "WAV"
        options: dict[str, Any] = {
            "sample_rate": sample_rate,
            "format": fmt,
            "max_seconds": max_seconds,
            "silence_timeout": silence_timeout,
            "channels": channels,
        }
        spool = self.spool
        if spool is None or kind == "prompts":
            path = self.storage.path(tenant, kind, rest)
            path.parent.mkdir(parents=True, exist_ok=True)
            return Recorder(path, **options), path
        from .context import current_call_id

        call_id = call_id if call_id is not None else current_call_id.get()
        path = spool.begin(tenant, kind, rest, {"tenant": tenant, "call_id": call_id})

        def closed() -> None:
            spool.finished(tenant, kind, rest)

        return _SpooledRecorder(path, on_closed=closed, **options), path

    def call_recording(
        self,
        tenant: str,
        key: str,
        media: RtpSession,
        *,
        channels: str,
        max_seconds: float,
        call_id: str,
        now: float,
    ) -> CallRecording:
        """A recording of both directions of ``media`` (the caller's session) into
        ``key``, through the spool like voicemail (docs/storage.md, "Call recording")."""
        if channels not in CHANNEL_MODES:
            raise ValueError(f"recording channels must be stereo or mono, not {channels!r}")
        recorder, _ = self.recorder(
            tenant,
            key,
            sample_rate=media.codec.sample_rate,
            max_seconds=max_seconds,
            silence_timeout=None,
            channels=2 if channels == "stereo" else 1,
            call_id=call_id,
        )
        # a WebRTC session is its own codec source (media/webrtc.py)
        source = media if getattr(media, "webrtc", False) else media.stream
        return CallRecording(recorder, source, key=key, mode=channels, now=now)

    def location(self, tenant: str, key: str) -> dict[str, Any]:
        """Where a recording is, for the call log (:func:`media_location`)."""
        return media_location(self.storage, self.spool, tenant, key)

    async def start(self) -> None:
        """Start the uploader (it first queues what a previous run left in the spool)."""
        if self.spool is not None:
            await self.spool.start()

    def follow_tenants(self, tenants: Callable[[], Mapping[str, Any]]) -> None:
        """Keep the tenants' prompts (``tenants()``: id -> configuration) cached from
        Media Storage (no-op with local storage: prompts are read where they are)."""
        if self.prompt_sync is not None:
            self.prompt_sync.start(tenants)

    def prompt_changed(self, tenant: str, name: str) -> None:
        """The front fetched or evicted a tenant's prompt (a worker's manager)."""
        if self.prompt_sync is not None:
            self.prompt_sync.changed(tenant, name)

    async def close(self) -> None:
        if self.prompt_sync is not None:
            await self.prompt_sync.stop()
        if self.spool is not None:
            await self.spool.stop()
        for pool in self.pools.values():
            await pool.close()
        await asyncio.sleep(0)


def media_target(storage: StorageSettings) -> AzureBlobStorage:
    """Remote Media Storage (``media_storage.kind: azure``) as configured."""
    from media.azure import AzureBlobStorage

    return AzureBlobStorage(
        connection_string=storage.connection_string,
        account_url=storage.account_url,
        credential=storage.credential,
        container=storage.container,
        block_size=storage.block_size,
        timeout=storage.timeout,
    )


def make_spool(storage: StorageSettings, root: Path) -> tuple[Spool, AzureBlobStorage]:
    """The spool of remote Media Storage (``media_storage.kind: azure``) in ``root``, not
    started (:meth:`Spool.start` uploads), and the storage it uploads to."""
    target = media_target(storage)
    core = SpoolCore(
        quota=storage.spool_quota,
        concurrency=storage.upload_concurrency,
        retry_initial=storage.retry_initial,
        retry_max=storage.retry_max,
        near=storage.spool_near,
    )
    return Spool(root, target, core), target


def media_location(
    storage: LocalMediaStorage, spool: Spool | None, tenant: str, key: str
) -> dict[str, Any]:
    """Where a recording is, for the call log: the local path, or the blob's URL (fixed
    before the upload) with the spool file and the upload state as of now."""
    kind, rest = _split(key)
    if spool is None or kind == "prompts":
        return {"key": key, "path": str(storage.path(tenant, kind, rest))}
    name = spool.blob_name(tenant, kind, rest)
    waiting = name in spool.core.items or spool.path(tenant, kind, rest).exists()
    return {
        "key": key,
        "blob": name,
        "url": spool.target.url(name),
        "spool": str(spool.path(tenant, kind, rest)),
        "state": "spooled" if waiting else "uploaded",
    }


def _split(key: str) -> tuple[str, str]:
    kind, _, rest = key.partition("/")
    if kind not in ("recordings", "voicemail", "prompts") or not rest:
        return "recordings", key
    return kind, rest


class _SpooledRecorder(Recorder):
    """A recorder that hands its file to the spool once it is closed."""

    def __init__(self, path: Path, *, on_closed: Callable[[], None], **options: Any) -> None:
        super().__init__(path, **options)
        self._on_closed = on_closed

    def close(self, reason: str = "stopped", digit: str | None = None) -> RecordingResult:
        first = not self.closed
        result = super().close(reason, digit)
        if first:
            self._on_closed()
        return result


def apply_answer(session: RtpSession, negotiated: sdpmod.Answer) -> None:
    """Point an RTP session at the peer the SDP names (hold: no sending)."""
    session.set_remote(
        (negotiated.remote_address, negotiated.remote_port),
        codec=negotiated.codec,
        telephone_event_pt=negotiated.telephone_event_pt,
        direction=negotiated.direction,
        remote_rtcp=(negotiated.remote_address, negotiated.remote_rtcp_port),
    )


def _settle(future: asyncio.Future[str | None], value: str | None) -> None:
    if not future.done():
        future.set_result(value)


class SilentMedia:
    """The media of a call on a signalling-only node: no socket, no packets.

    Prompts take as long as they would take to play (so IVR timing holds), digits arrive
    only by SIP INFO, recordings are empty files of the same shape. It answers the
    parts of :class:`~media.session.RtpSession` that calls use.
    """

    rtp_port = 9

    def __init__(self, codec: CodecInfo) -> None:
        self.codec = codec
        self._digits: asyncio.Queue[DtmfEvent] = asyncio.Queue()
        self._ended = asyncio.get_running_loop().create_future()
        self.on_audio: Callable[[bytes], None] | None = None
        self._waiter: asyncio.Future[str | None] | None = None

    def digits(self) -> asyncio.Queue[DtmfEvent]:
        return self._digits

    def deliver_digit(self, event: DtmfEvent) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(event.digit)  # barge-in
        else:
            self._digits.put_nowait(event)

    async def play(
        self, payloads: Iterable[Iterable[bytes]], *, barge_in: bool = True
    ) -> str | None:
        frames = sum(
            len(seq) if isinstance(seq, tuple) else sum(1 for _ in seq) for seq in payloads
        )
        if barge_in and not self._digits.empty():
            return self._digits.get_nowait().digit
        if not barge_in:
            await asyncio.sleep(frames * 0.02)
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str | None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(frames * 0.02, _settle, waiter, None)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def send_digit(self, digit: str, *, duration_ms: int = 100) -> None:
        return None

    def start_recording(
        self, recorder: Recorder, *, stop_on_dtmf: bool = True
    ) -> asyncio.Future[RecordingResult]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RecordingResult] = loop.create_future()
        limit = recorder.max_samples / recorder.sample_rate

        def finish(reason: str) -> None:
            if not future.done():
                future.set_result(recorder.close(reason))

        loop.call_later(limit, finish, "max_seconds")
        self._ended.add_done_callback(lambda _: finish("hangup"))
        return future

    def stop_recording(self, reason: str = "stopped") -> None:
        return None

    def set_remote(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_srtp(self, context: SrtpContext) -> None:
        return None

    def await_srtp(self) -> None:
        return None

    def quality(self) -> dict[str, Any]:
        return {}

    async def stop(self, reason: str = "hangup") -> None:
        if not self._ended.done():
            self._ended.set_result(None)
