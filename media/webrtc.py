"""WebRTC media legs: ICE, DTLS-SRTP, bundle and rtcp-mux through aiortc.

A browser's SDP (``UDP/TLS/RTP/SAVPF``, ``a=fingerprint``, ``a=ice-ufrag``, RFC 8829 /
8835 practice) cannot be answered by :class:`~media.session.RtpSession`: the keys come
from a DTLS handshake on the ICE-selected path, not from the SDP. :class:`WebRtcSession`
terminates that media with aiortc's ``RTCPeerConnection`` and shows the engine the same
surface as an RTP session: ``codec``, ``play``, ``digits``/``deliver_digit``,
``send_digit``, ``start_recording``/``stop_recording``, ``on_audio`` (a B2BUA's relay),
``quality``, ``stop`` and a call recording's ``recording`` tap. Payloads cross that
surface in ``codec``, always G.711: the wire codec (``wire``) when the browser took G.711,
else the engine's first G.711 codec. aiortc decodes what it receives and encodes what it
sends, so a bridge to a G.711 RTP leg relays payloads unchanged, and Opus on the wire is
transcoded by aiortc (never passed through: docs/webrtc.md, "Bridging").

This module is the only one that imports aiortc's RTC classes (``media.codecs._aiortc``
keeps its codec classes and the av frame conversions).

Theory of operation: the engine either answers a browser's offer (:meth:`WebRtcSession.answer`)
or makes the offer a browser answers (:meth:`WebRtcSession.offer`, then
:meth:`WebRtcSession.accept_answer`). Once ICE and DTLS connect, aiortc pulls one 20 ms
frame every 20 ms from :class:`_EngineTrack` (the next payload of what is playing,
decoded, or silence; an in-band DTMF tone while a digit is being sent) and hands every
received frame to the session, which cuts it into 20 ms frames in ``codec``: they go to
``on_audio``, to the recorder and to a call recording (with the RTP timestamp of their
first sample, from the decoded frame's ``pts``). Each pull also ticks the call
recording with what was sent. Digits from a browser come by SIP INFO (JsSIP's
default) through :meth:`WebRtcSession.deliver_digit`. When the connection fails (ICE
consent lost, RFC 7675: aioice gives up after 6 unanswered checks 5 s apart) or the
peer closes DTLS, ``on_timeout`` is called: the engine hangs the call up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCBundlePolicy

from .codecs import PCMU, Codec, CodecInfo, create_codec
from .codecs._aiortc import FrameReader, pcm_frame
from .dtmf import DtmfEvent
from .recorder import Recorder, RecordingResult
from .session import Playback
from .webrtcsdp import WEBRTC_CODECS, first_codec, is_webrtc_sdp, webrtc_answer_codec

__all__ = ["WEBRTC_CODECS", "WebRtcSession", "is_webrtc_sdp"]

log = logging.getLogger("media.webrtc")
# aioice logs every candidate pair's state change at INFO: a dozen lines per call that
# say nothing a node operator acts on (this module logs connected / failed itself).
logging.getLogger("aioice").setLevel(logging.WARNING)

_MIME = {"OPUS": "audio/opus", "PCMU": "audio/PCMU", "PCMA": "audio/PCMA"}
_FRAME = 0.02
# RFC 4733 / Q.23 DTMF pairs, for in-band digits towards a browser (which takes no
# telephone-event from aiortc).
_DTMF_FREQ = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}  # fmt: skip


class _EngineTrack(MediaStreamTrack):
    """What the engine sends: one frame per 20 ms, paced on the monotonic clock (aiortc
    pulls as fast as ``recv`` returns)."""

    kind = "audio"

    def __init__(self, session: WebRtcSession) -> None:
        super().__init__()
        self._session: WebRtcSession | None = session
        self._start: float | None = None
        self._count = 0
        self._pts = 0

    async def recv(self) -> Any:
        session = self._session
        if self.readyState != "live" or session is None:
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._count += 1
            wait = self._start + self._count * _FRAME - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -5 * _FRAME:  # the loop stalled: skip ahead, do not burst
                self._start, self._count = now, 0
        pcm = session._next_pcm()
        frame = pcm_frame(pcm, session.codec.sample_rate, self._pts)
        self._pts += len(pcm)
        return frame


class WebRtcSession(Playback):
    """One WebRTC media leg (see the module docstring); create with :meth:`answer` or
    :meth:`offer`."""

    webrtc = True
    """What a call recording reads the codec from is the session itself (an RTP
    session's is its ``stream``)."""
    rtp_port = 9
    """No port of ours in the SDP the engine writes: aiortc's description carries the
    ICE candidates (the attribute exists for the engine's bookkeeping)."""
    secure = True
    srtp = None

    def __init__(
        self,
        codecs: Sequence[CodecInfo],
        *,
        on_timeout: Callable[[], None] | None = None,
        label: str = "",
    ) -> None:
        self._codecs = [c for c in codecs if c.name.upper() in WEBRTC_CODECS]
        if not self._codecs:
            raise ValueError(f"no WebRTC codec among {[c.name for c in codecs]}")
        # The engine side is G.711 (prompts are 8 kHz, so is the PSTN): an Opus leg is
        # encoded once, by aiortc, instead of prompt -> Opus -> PCM -> Opus.
        self._narrow = next((c for c in codecs if c.name.upper() in ("PCMU", "PCMA")), PCMU)
        self.wire: CodecInfo = self._codecs[0]
        """The codec on the wire to the browser (Opus, PCMU or PCMA)."""
        self.codec: CodecInfo = self._engine_codec(self.wire)
        """The codec of the payloads the engine plays, relays and records: ``wire`` when
        it is G.711, else the engine's first G.711 codec."""
        self.label = label
        self.on_timeout = on_timeout
        #: Called with each received 20 ms payload in ``codec`` (a B2BUA's relay).
        self.on_audio: Callable[[bytes], None] | None = None
        #: A call recording's tap (:mod:`media.callrecording`), as on an RTP session:
        #: fed what the browser sends (by RTP timestamp) and what the engine sends.
        self.recording: Any = None
        #: Where digits go instead of :meth:`digits` (the media plane forwards them).
        self.on_digit: Callable[[DtmfEvent], None] | None = None
        self._loop = asyncio.get_running_loop()
        self._pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_state)
        self._track = _EngineTrack(self)
        self._tx: Codec = create_codec(self.codec)
        self._rx: Codec | None = None
        self._digits: asyncio.Queue[DtmfEvent] = asyncio.Queue()
        self._play_iter: Iterator[bytes] | None = None
        self._play_future: asyncio.Future[str | None] | None = None
        self._barge_in = False
        self._tone: Iterator[np.ndarray[Any, np.dtype[np.int16]]] | None = None
        self._recorder: Recorder | None = None
        self._record_future: asyncio.Future[RecordingResult] | None = None
        self._record_stop_on_dtmf = False
        self._receiver: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[None] | None = None
        self._closed = False
        self.connected_at: float | None = None
        self.failed: str | None = None
        self.frames_sent = 0
        self.frames_received = 0
        self.timed_out = asyncio.Event()

    # --- negotiation -----------------------------------------------------------------

    @classmethod
    async def answer(
        cls,
        offer: bytes,
        codecs: Sequence[CodecInfo],
        *,
        on_timeout: Callable[[], None] | None = None,
        label: str = "",
    ) -> tuple[WebRtcSession, bytes]:
        """Answer a browser's offer; returns the session and our SDP answer (ICE
        candidates gathered, DTLS fingerprint, bundle, rtcp-mux). ``ValueError`` when
        the offer is unusable (no common codec, no audio, malformed)."""
        self = cls(codecs, on_timeout=on_timeout, label=label)
        try:
            # the transceiver exists before the offer is applied, so that the answer
            # takes our codecs in our order (aiortc would follow the offer's order)
            self._transceiver()
            await self._pc.setRemoteDescription(
                RTCSessionDescription(offer.decode("utf-8", "replace"), "offer")
            )
            answer = await self._pc.createAnswer()
            assert answer is not None
            await self._pc.setLocalDescription(answer)
        except Exception as exc:  # aiortc raises several types for a bad offer
            await self.stop("bad offer")
            raise ValueError(f"WebRTC offer refused: {exc}") from None
        body = self._pc.localDescription.sdp.encode()
        codec = first_codec(body, self._codecs)
        if codec is None:
            await self.stop("no codec")
            raise ValueError("WebRTC offer has none of our codecs")
        self._use(codec)
        return self, body

    @classmethod
    async def offer(
        cls,
        codecs: Sequence[CodecInfo],
        *,
        prefer: str | None = None,
        on_timeout: Callable[[], None] | None = None,
        label: str = "",
    ) -> tuple[WebRtcSession, bytes]:
        """Our offer to a browser: every WebRTC codec we have, ``prefer`` first (the
        caller's codec, so that a bridge needs no transcoding when the browser takes it)."""
        ordered = sorted(codecs, key=lambda c: prefer is None or c.name.upper() != prefer.upper())
        self = cls(ordered, on_timeout=on_timeout, label=label)
        self._transceiver()
        description = await self._pc.createOffer()
        await self._pc.setLocalDescription(description)
        return self, self._pc.localDescription.sdp.encode()

    def _transceiver(self) -> None:
        """Our sendrecv audio transceiver, limited to our codecs in our order."""
        transceiver = self._pc.addTransceiver(self._track, direction="sendrecv")
        capabilities = RTCRtpSender.getCapabilities("audio").codecs
        transceiver.setCodecPreferences(
            [
                cap
                for codec in self._codecs
                for cap in capabilities
                if cap.mimeType.lower() == _MIME[codec.name.upper()].lower()
            ]
        )

    def accept_answer(self, body: bytes) -> bool:
        """Take the browser's answer to :meth:`offer` (synchronous: the codec is known at
        once, the DTLS/ICE start runs in a task). False when it is not a WebRTC answer
        with one of our codecs."""
        if self._pc.remoteDescription is not None or self._pending is not None:
            return True  # a 183's answer, then the 200's: applied once
        codec = webrtc_answer_codec(body, self._codecs)
        if codec is None:
            return False
        self._use(codec)
        self._pending = self._loop.create_task(self._apply_answer(body))
        return True

    async def _apply_answer(self, body: bytes) -> None:
        try:
            await self._pc.setRemoteDescription(
                RTCSessionDescription(body.decode("utf-8", "replace"), "answer")
            )
        except Exception as exc:  # aiortc raises several types for a bad answer
            self._fail(f"answer refused: {exc}")

    def _engine_codec(self, wire: CodecInfo) -> CodecInfo:
        return wire if wire.name.upper() in ("PCMU", "PCMA") else self._narrow

    def _use(self, wire: CodecInfo) -> None:
        self.wire = wire
        codec = self._engine_codec(wire)
        if codec != self.codec:
            self.codec = codec
            self._tx = create_codec(codec)

    # --- connection state ------------------------------------------------------------

    async def _on_state(self) -> None:
        state = self._pc.connectionState
        if state == "connected" and self.connected_at is None:
            self.connected_at = self._loop.time()
            log.info("WebRTC media of %s connected (%s)", self.label, self.wire.name)
        elif state in ("failed", "closed") and not self._closed:
            self._fail("ICE consent lost" if state == "failed" else "DTLS closed by the peer")

    def _fail(self, reason: str) -> None:
        if self.failed is not None or self._closed:
            return
        self.failed = reason
        log.warning("WebRTC media of %s ended: %s", self.label, reason)
        self.timed_out.set()
        if self.on_timeout is not None:
            self.on_timeout()

    # --- what the engine sends ---------------------------------------------------------

    def _next_pcm(self) -> np.ndarray[Any, np.dtype[np.int16]]:
        n = self.codec.samples_per_frame
        payload: bytes | None = None
        it = self._play_iter
        if it is not None:
            payload = next(it, None)
            if payload is None:
                self._finish_play(None)
        self.frames_sent += 1
        tone = self._tone
        pcm = None if tone is None else next(tone, None)
        if pcm is not None:
            payload = None  # a digit's in-band tone replaces this frame
            toned = True
        else:
            self._tone = None
            toned = False
            if payload is None:
                pcm = np.zeros(n, dtype=np.int16)
            else:
                pcm = self._tx.decode(payload)
                if len(pcm) != n:
                    pcm = np.resize(pcm, n) if len(pcm) else np.zeros(n, dtype=np.int16)
        tap = self.recording
        if tap is not None:
            # ticked by aiortc's pulls (every 20 ms once connected); the recording is
            # paced by time, so what came before that is silence in it
            tap.tick(self._tx.encode(pcm) if toned else payload, self._loop.time())
        return pcm

    @property
    def silence(self) -> bytes:
        """One 20 ms frame of silence in ``codec``."""
        return self._tx.silence()

    def send_digit(self, digit: str, *, duration_ms: int = 100) -> None:
        """Send a digit as an in-band tone (the browser side has no telephone-event)."""
        pair = _DTMF_FREQ.get(digit.upper())
        if pair is None:
            return
        rate = self.codec.sample_rate
        n = self.codec.samples_per_frame
        frames = max(1, duration_ms // 20)
        t = np.arange(frames * n) / rate
        wave = 0.35 * 32767 * (np.sin(2 * np.pi * pair[0] * t) + np.sin(2 * np.pi * pair[1] * t))
        pcm = np.clip(wave / 2, -32768, 32767).astype(np.int16)
        gap = [np.zeros(n, dtype=np.int16)] * 3
        self._tone = iter([*np.split(pcm, frames), *gap])

    # --- what the engine receives --------------------------------------------------------

    def digits(self) -> asyncio.Queue[DtmfEvent]:
        """Digits received (by SIP INFO: the engine calls :meth:`deliver_digit`)."""
        return self._digits

    def deliver_digit(self, event: DtmfEvent) -> None:
        """Barge-in, recording stop, or the digits queue (as an RTP session does)."""
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

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._receiver is None:
            self._receiver = self._loop.create_task(self._receive(track))

    async def _receive(self, track: MediaStreamTrack) -> None:
        reader: FrameReader | None = None
        buffered = np.zeros(0, dtype=np.int16)
        timestamp = 0  # of buffered[0], in codec's clock: a call recording places by it
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            codec = self.codec
            n = codec.samples_per_frame
            if reader is None or reader.sample_rate != codec.sample_rate:
                reader = FrameReader(codec.sample_rate)
                self._rx = create_codec(codec)
                buffered = np.zeros(0, dtype=np.int16)
            start = reader.timestamp(frame)
            if start is not None:
                late = (start - timestamp - len(buffered)) & 0xFFFFFFFF
                if min(late, 0x100000000 - late) >= n:
                    # the first frame, or packets lost before this one: what follows
                    # keeps its place in time (the resampler's few samples of slack do not)
                    timestamp = (start - len(buffered)) & 0xFFFFFFFF
            buffered = np.concatenate((buffered, reader.feed(frame)))
            while len(buffered) >= n:
                pcm, buffered = buffered[:n], buffered[n:]
                self._on_pcm(pcm, timestamp)
                timestamp = (timestamp + n) & 0xFFFFFFFF

    def _on_pcm(self, pcm: np.ndarray[Any, np.dtype[np.int16]], timestamp: int = 0) -> None:
        self.frames_received += 1
        tap = self.recording
        if self._rx is not None and (self.on_audio is not None or tap is not None):
            payload = self._rx.encode(pcm)
            if self.on_audio is not None:
                self.on_audio(payload)
            if tap is not None:
                tap.received(timestamp, payload, self._loop.time())
        recorder = self._recorder
        if recorder is not None:
            reason = recorder.write(pcm)
            if reason is not None:
                self._finish_recording(reason)

    def start_recording(
        self, recorder: Recorder, *, stop_on_dtmf: bool = True
    ) -> asyncio.Future[RecordingResult]:
        """Record what the browser sends into ``recorder`` (at ``codec``'s rate)."""
        if self._recorder is not None:
            self._finish_recording("stopped")
        self._recorder = recorder
        self._record_stop_on_dtmf = stop_on_dtmf
        future: asyncio.Future[RecordingResult] = self._loop.create_future()
        self._record_future = future
        return future

    def stop_recording(
        self, reason: str = "stopped", *, only: asyncio.Future[RecordingResult] | None = None
    ) -> None:
        """As :meth:`media.session.RtpSession.stop_recording`."""
        if only is not None and only is not self._record_future:
            return
        self._finish_recording(reason)

    def _finish_recording(self, reason: str, digit: str | None = None) -> None:
        recorder, future = self._recorder, self._record_future
        self._recorder = None
        self._record_future = None
        if recorder is None:
            return
        result = recorder.close(reason, digit)
        if future is not None and not future.done():
            future.set_result(result)

    # --- what an RTP session also answers ------------------------------------------------

    def set_remote(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to point: ICE found the path."""

    def set_srtp(self, context: Any) -> None:
        """Nothing to key: DTLS did."""

    def await_srtp(self) -> None:
        """Nothing to wait for: DTLS keys the media."""

    def quality(self) -> dict[str, Any]:
        """For the call log: the codec, frames each way, and how the leg ended."""
        return {
            "webrtc": True,
            "codec": self.wire.name,
            "engine_codec": self.codec.name,
            "frames_sent": self.frames_sent,
            "frames_received": self.frames_received,
            "connected": self.connected_at is not None,
            "failure": self.failed,
        }

    async def stop(self, reason: str = "hangup") -> None:
        """Close the peer connection (DTLS close_notify), end playback and recording."""
        if self._closed:
            return
        self._closed = True
        self.on_timeout = None
        self.on_audio = None
        self.on_digit = None
        self._finish_play(None)
        self._finish_recording(reason)
        if self.recording is not None:
            self.recording.close(self._loop.time(), reason)
            self.recording = None
        for task in (self._pending, self._receiver):
            if task is not None:
                task.cancel()
        self._track.stop()
        # session -> peer connection -> listeners/track -> session: cut, so that the
        # call is freed by reference counting (DESIGN.md principle 4)
        self._track._session = None
        await self._pc.close()
        self._pc.remove_all_listeners()
