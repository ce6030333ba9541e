"""The application's view of one call (asyncio), over an :class:`InviteSession`.

The Engine creates a :class:`Call` for each incoming INVITE and runs the handler the
call was routed to; outgoing calls come from :meth:`Engine.originate`. Every method
turns into commands on the sans-IO user agent; nothing here parses SIP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ivr import CallHangup
from pri.causes import format_reason

from .sip import sdes
from .sip import sdp as sdpmod
from .sip.message import Request, Response
from .sip.useragent import InviteSession, SessionState, UserAgent

if TYPE_CHECKING:
    from .calls import CallBook

log = logging.getLogger("callengine.call")

__all__ = [
    "Call",
    "CallControl",
    "CallEnded",
    "CallEvent",
    "RecordResult",
    "MediaUnavailable",
    "SipError",
    "TransferResult",
]


class SipError(Exception):
    """A call attempt that ended with a SIP failure (drachtio's ``SipError``)."""

    def __init__(self, status: int, reason: str = "", cause: int | None = None) -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        self.reason = reason
        self.cause = cause


class MediaUnavailable(SipError):
    """No RTP port (or socket) for the call: the node is full, answer 503 + Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(503, "Service Unavailable - no media port", 47)
        self.retry_after = retry_after


class CallEnded(SipError, CallHangup):
    """Raised by media operations (play, gather, record) when the call has ended:
    what the caller would have heard or said never happened."""

    def __init__(self, cause: int = 16) -> None:
        super().__init__(487, "call ended", cause)


@dataclass(frozen=True, slots=True)
class CallEvent:
    """Something that happened to a call: ``kind`` is one of ringing, progress,
    answered, confirmed, dtmf, hold, unhold, ended."""

    kind: str
    at: float
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordResult:
    key: str
    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class TransferResult:
    answered: bool
    status: int
    cause: int
    target: str | None


class CallControl(Protocol):
    """What a :class:`Call` needs from the engine that made it (the Engine is one):
    the user agent to command, the time, the media, and the book whose hooks it
    reports to."""

    codecs: list[Any]
    telephone_event: Any
    book: CallBook
    media_manager: Any

    @property
    def ua(self) -> UserAgent: ...

    def now(self) -> float: ...

    def wallclock(self) -> float: ...

    def flush(self) -> None: ...

    def media_address(self, local_host: str) -> str: ...

    async def open_media(self, call: Call, negotiated: Any) -> int: ...

    async def transfer(
        self, call: Call, targets: Sequence[str], *, strategy: str, timeout: float
    ) -> TransferResult: ...


class Call:
    """One call leg as application code sees it (see docs/interfaces.md)."""

    def __init__(self, engine: CallControl, session: InviteSession, *, direction: str) -> None:
        self.engine = engine
        self.session = session
        self.direction = direction
        inv = session.invite
        self.call_id = inv.call_id
        from_uri = inv.from_.uri if inv.from_ else None
        self.caller = (from_uri.user_unescaped or from_uri.host) if from_uri else ""
        self.caller_display = inv.from_.display if inv.from_ else None
        self.callee = inv.uri.user_unescaped or ""
        self._headers: Mapping[str, str] | None = None
        self.source = inv.source
        self.tenant: str | None = None
        self.did: str | None = None
        self.variables: dict[str, str] = {}
        self.ivr_path: list[dict[str, Any]] = []
        self.digits: list[str] = []
        self.trunk_attempts: list[dict[str, Any]] = []
        self.recordings: list[str] = []
        self.started_at = engine.wallclock()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason = ""
        self.cause = 0
        self.status = 0
        self.media: Any = None  # media.session.RtpSession once answered
        self.sdp_answer: sdpmod.Answer | None = None
        self._sdp_session: sdpmod.SdpSession | None = None
        self._ended = asyncio.get_running_loop().create_future()
        self._confirmed = asyncio.get_running_loop().create_future()
        # created on first use: most handlers never read the event stream
        self._events: asyncio.Queue[CallEvent] | None = None
        self._history: list[CallEvent] = []
        self._offer: sdpmod.SessionDescription | None = None
        self._offered_cryptos: list[sdes.CryptoAttribute] = []
        self.srtp: sdes.SrtpNegotiation | None = None
        """The SRTP (SDES) of this call's media, when it is secured."""
        self.quality: dict[str, Any] = {}
        self.media_stopping: asyncio.Task[None] | None = None
        """The media plane's stop of this call's session (its quality figures)."""
        self.task: asyncio.Task[None] | None = None
        self.outcome: asyncio.Future[Response | SipError] = (
            asyncio.get_running_loop().create_future()
        )
        """An outgoing call's result: the 2xx, or the failure as a SipError value."""
        self.recording: Any = None
        """The call recording in progress (:meth:`start_recording`), if any."""
        self._far_media: Any = None
        self.recording_defaults: tuple[str, float] = ("stereo", 14400.0)
        """Channels and length limit of :meth:`start_recording` (the node sets the
        tenant's)."""
        self.finished = False
        self.webrtc = False
        """Our offer (the engine calling out) is a WebRTC one: the target registered
        with ``+sip.ice`` (a browser, docs/webrtc.md)."""
        self.logged = True
        """Writes a call log and counts in ``callengine_calls`` (a B2BUA's outgoing
        legs do not: the bridged call is the caller's)."""

    # ------------------------------------------------------------ properties
    @property
    def headers(self) -> Mapping[str, str]:
        """The INVITE's headers (first value of each, canonical names)."""
        if self._headers is None:
            self._headers = self.session.invite.headers.first_values()
        return self._headers

    @property
    def state(self) -> str:
        return self.session.state.value

    @property
    def active(self) -> bool:
        return self.session.state is not SessionState.TERMINATED

    @property
    def ended(self) -> asyncio.Future[Any]:
        """Resolved when the call has ended, whoever ended it (await it, or wait on
        it beside other futures; :meth:`wait_hangup` shields it)."""
        return self._ended

    @property
    def answered(self) -> bool:
        """True once a 2xx answered the INVITE (sent by us or received)."""
        return 200 <= self.status < 300

    def __repr__(self) -> str:
        return f"<Call {self.direction} {self.caller}->{self.callee} {self.state} {self.call_id}>"

    # ------------------------------------------------------------- signalling
    async def ring(self, *, early_media: bool = False) -> None:
        """Send 180 Ringing (or 183 Session Progress with SDP when ``early_media``)."""
        if early_media:
            answer = await self._prepare_media()
            self.engine.ua.provisional(self.session, self.engine.now(), 183, answer)
        else:
            self.engine.ua.provisional(self.session, self.engine.now(), 180)
        self.engine.flush()

    async def answer(self, *, sdp: bytes | None = None) -> None:
        """Answer with 200 OK and the negotiated SDP; media starts at once.

        ``sdp`` answers with that body as it is, opening no media here (a B2BUA
        passing the far end's SDP through)."""
        if self.answered or not self.active:
            if not self.active:
                raise SipError(487, "call ended before answer")
            return
        answer = sdp if sdp is not None else await self._prepare_media()
        if answer is None:
            return
        if not self.active:
            raise SipError(487, "call ended before answer")
        # The call log's "open" record is on disk before the 200 OK leaves (nothing lost).
        self.answered_at = self.engine.wallclock()
        for wait in self.engine.book.before_answer(self):
            await wait
        if not self.active:
            self.answered_at = None
            raise SipError(487, "call ended before answer")
        self.engine.ua.answer(self.session, answer, self.engine.now())
        self.status = 200
        self.engine.flush()
        self.engine.book.answered(self)
        self._emit("answered")

    async def _prepare_media(self) -> bytes | None:
        """Negotiate SDP (488 when nothing is common) and open the RTP session."""
        engine = self.engine
        offer_body = self.session.invite.body
        if self._sdp_session is None:
            self._sdp_session = sdpmod.SdpSession(engine.media_address(self.session.local_addr[0]))
        if not offer_body:
            # late offer: we offer in the 200, the ACK answers (RFC 3261 §13.2.1)
            return await self.make_offer()
        try:
            offer = sdpmod.SessionDescription.parse(offer_body)
        except ValueError as exc:
            self.send_reject(400, f"Bad Request - SDP: {exc}"[:120])
            return None
        if engine.media_manager.is_webrtc(offer_body):
            return await self._webrtc_media(offer_body)
        offer, cryptos = sdes.screen_offer(
            offer, allow_srtp=engine.media_manager.srtp_accepted(self.session.transport)
        )
        negotiated = sdpmod.negotiate(offer, engine.codecs)
        if negotiated is None:
            self.send_reject(488)
            return None
        self.sdp_answer = negotiated
        port = await engine.open_media(self, negotiated)
        # No await between opening the media and keying it: no packet goes out plain.
        description = negotiated.to_sdp(
            self._sdp_session, address=self._sdp_session.address, port=port
        )
        self._secure_answer(negotiated, cryptos.get(negotiated.media_index), description)
        return description.serialize()

    def _secure_answer(
        self,
        negotiated: sdpmod.Answer,
        offered: sdes.CryptoAttribute | None,
        description: sdpmod.SessionDescription,
    ) -> bool:
        """Key the media with the offered ``a=crypto`` and put ours in the answer.
        False when the call's SRTP state cannot follow the offer (re-INVITE: 488)."""
        index = negotiated.media_index
        if offered is None:
            return self.srtp is None
        if self.srtp is not None and self.srtp.local.suite == offered.suite:
            # A re-offer: keep our key (RFC 4568 7.1.4 allows it), take the peer's.
            local = sdes.CryptoAttribute(offered.tag, offered.suite, self.srtp.local.key)
        elif self.srtp is None and (self.media is None or not self.answered):
            local = sdes.answer_crypto(offered)
        else:
            return False
        self.srtp = sdes.SrtpNegotiation(local, offered)
        if self.media is not None:
            current = getattr(self.media, "srtp", None)
            if current is not None and current.tx_key == local.key:
                current.rekey_rx(offered.key)
            else:
                self.media.set_srtp(sdes.context_for(self.srtp))
        assert negotiated.offer is not None
        sdes.secure_media(description, index, [local], proto=negotiated.offer.media[index].proto)
        return True

    def reoffer(self, body: bytes) -> bytes | None:
        """A re-INVITE/UPDATE offer (hold/unhold): our answer, or None for 488."""
        if self._sdp_session is None or self.webrtc:
            return None  # a WebRTC leg's media is negotiated once (docs/webrtc.md)
        try:
            offer = sdpmod.SessionDescription.parse(body)
        except ValueError:
            return None
        offer, cryptos = sdes.screen_offer(
            offer,
            allow_srtp=self.engine.media_manager.srtp_accepted(self.session.transport),
        )
        negotiated = sdpmod.negotiate(offer, self.engine.codecs)
        if negotiated is None:
            return None
        port = self.media.rtp_port if self.media is not None else 9
        description = negotiated.to_sdp(
            self._sdp_session, address=self._sdp_session.address, port=port
        )
        # A secured call stays secured and a plain one plain (else 488).
        if not self._secure_answer(negotiated, cryptos.get(negotiated.media_index), description):
            return None
        self.sdp_answer = negotiated
        if self.media is not None:
            from ._media import apply_answer

            apply_answer(self.media, negotiated)
        self._emit("hold" if negotiated.on_hold else "unhold")
        return description.serialize()

    async def reject(
        self,
        status: int = 486,
        reason: str | None = None,
        *,
        cause: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Refuse an unanswered call with a final response (``cause``: a Q.850 cause
        for the RFC 3326 Reason header; ``retry_after``: seconds, for 503)."""
        self.send_reject(status, reason, cause=cause, retry_after=retry_after)

    def send_reject(
        self,
        status: int,
        reason: str | None = None,
        *,
        cause: int | None = None,
        retry_after: int | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """:meth:`reject` for synchronous callers; nothing once answered or ended.
        ``headers``: more header fields for the response (a digest challenge)."""
        if not self.active or self.answered:
            return
        fields = [*headers]
        if cause is not None:
            fields.append(("Reason", format_reason(cause)))
        if retry_after is not None:
            fields.append(("Retry-After", str(retry_after)))
        self.engine.ua.reject(self.session, status, self.engine.now(), reason, headers=fields)
        self.status = status
        self.engine.flush()

    async def hangup(self, cause: int = 16) -> None:
        """End the call: BYE when answered, a final response (or CANCEL) before."""
        if not self.active:
            return
        self.engine.ua.hangup(self.session, self.engine.now(), cause)
        self.engine.flush()

    async def wait_hangup(self) -> None:
        """Wait until the call has ended, whoever ended it."""
        await asyncio.shield(self._ended)

    async def wait_confirmed(self, timeout: float = 32.0) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._confirmed), timeout)
        except TimeoutError:
            return False
        return True

    async def events(self) -> AsyncIterator[CallEvent]:
        """Events in order until (and including) ``ended``."""
        while True:
            if self._events is None:
                # events so far are replayed, then the live stream follows
                self._events = asyncio.Queue()
                for past in self._history:
                    self._events.put_nowait(past)
            ev = await self._events.get()
            yield ev
            if ev.kind == "ended":
                return

    def log_event(self, kind: str, **fields: Any) -> None:
        """Append a step (IVR node, prompt, digits) to the call log's path."""
        entry = {"kind": kind, "at": round(self.engine.wallclock(), 3)}
        entry.update(fields)
        self.ivr_path.append(entry)

    # ------------------------------------------------------------------ media
    def _need_media(self) -> Any:
        if not self.active:
            raise CallEnded(self.cause)
        if self.media is None:
            raise SipError(500, "call has no media session (answer first)")
        return self.media

    async def play(self, prompts: Sequence[str], *, barge_in: bool = True) -> str | None:
        """Play prompts (names, or ``tone:ringback|busy|beep``) in order.

        Returns the digit that barged in (when ``barge_in``), else ``None``."""
        media = self._need_media()
        digit = await self.engine.media_manager.play(media, prompts, self.tenant, barge_in=barge_in)
        if digit is not None:
            self.digits.append(digit)
        elif not self.active:
            raise CallEnded(self.cause)
        return digit

    async def gather(
        self,
        *,
        max_digits: int,
        timeout: float,
        terminator: str | None = "#",
        inter_digit_timeout: float | None = None,
        first_digit: str | None = None,
    ) -> str:
        """Collect DTMF digits (RFC 4733, SIP INFO or in-band Goertzel).

        Ends on ``max_digits``, the ``terminator`` (not returned), ``timeout`` before the
        first digit, ``inter_digit_timeout`` between digits, or hangup."""
        media = self._need_media()
        queue = media.digits()
        collected = first_digit or ""
        if collected and (collected == terminator):
            return ""
        wait = timeout if not collected else (inter_digit_timeout or timeout)
        while len(collected) < max_digits and self.active:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                {getter, self._ended}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                break
            digit = getter.result().digit
            self.digits.append(digit)
            if terminator is not None and digit == terminator:
                break
            collected += digit
            wait = inter_digit_timeout or timeout
        if not self.active and len(collected) < max_digits:
            raise CallEnded(self.cause)
        return collected

    async def record(
        self,
        key: str,
        *,
        max_seconds: float,
        beep: bool = True,
        silence_timeout: float | None = None,
        stop_on_dtmf: bool = True,
    ) -> RecordResult:
        """Record what the caller says into media storage under ``key``
        (``voicemail/...``, ``recordings/...``); WAV or FLAC by the key's suffix."""
        media = self._need_media()
        if beep:
            await self.play(["tone:beep"], barge_in=False)
        recording = self.engine.media_manager.record(
            media,
            self.tenant or "default",
            key,
            max_seconds=max_seconds,
            silence_timeout=silence_timeout,
            stop_on_dtmf=stop_on_dtmf,
        )
        # the key is the call's from the first frame: a hangup must not lose it
        self.recordings.append(key)
        try:
            result = await recording
        except OSError:
            # refused before the first frame (the spool at its quota, a disk error)
            self.recordings.remove(key)
            raise
        return RecordResult(key=key, seconds=result.seconds, reason=result.reason)

    def start_recording(
        self,
        *,
        channels: str | None = None,
        key: str | None = None,
        max_seconds: float | None = None,
    ) -> str:
        """Record both directions of the call from now until :meth:`stop_recording` or
        the end of the call; returns the key (``recordings/<call-id>.wav`` by default).

        ``stereo``: the caller left, the other side right (the IVR's prompts, or the
        bridged party); ``mono``: both mixed. ``channels`` and ``max_seconds`` default
        to :attr:`recording_defaults` (the tenant's ``recording`` settings). Stored
        like voicemail (through the spool with remote storage); the call log records
        where. Already recording: no-op."""
        if self.recording is not None:
            return str(self.recording.key)
        media = self._need_media()
        if _recording_source(media) is None and not getattr(media, "remote", False):
            raise SipError(500, "call has no RTP media to record")
        channels = channels or self.recording_defaults[0]
        max_seconds = max_seconds or self.recording_defaults[1]
        if key is None:
            n = sum(1 for k in self.recordings if k.startswith("recordings/"))
            key = f"recordings/{self.call_id}{f'-{n + 1}' if n else ''}.wav"
        recording = self.engine.media_manager.call_recording(
            self.tenant or "default",
            key,
            media,
            channels=channels,
            max_seconds=max_seconds,
            call_id=self.call_id,
            now=self.engine.now(),
        )
        self.recording = recording
        media.recording = recording
        self.recordings.append(key)
        if getattr(recording, "remote", False):
            # the media plane may refuse it (its spool full): then as if it never started
            recording.on_refused = self._recording_refused
        self._tap_far_side()
        self.log_event("recording", event="start", key=key, channels=channels)
        return key

    def _recording_refused(self, recording: Any) -> None:
        """The media plane could not start ``recording`` (a spool at its quota, a disk
        error): logged, and the call log names no recording for it, as when a recording
        fails to start in the engine's process (``start_recording_safely``)."""
        if self.recording is recording:
            self.recording = None
            if self.media is not None and getattr(self.media, "recording", None) is recording:
                self.media.recording = None
        if recording.key in self.recordings:
            self.recordings.remove(recording.key)
        error, message = recording.refused
        why = recording.why or "by the API"
        log.warning("call not recorded (%s): %s", why, message, extra={"call_id": self.call_id})
        self.log_event("recording", event="failed", error=f"{error}: {message}")

    def stop_recording(self, reason: str = "stopped") -> RecordResult | None:
        """Stop the call recording (``None`` when none is running)."""
        recording, self.recording = self.recording, None
        if recording is None:
            return None
        if self.media is not None and getattr(self.media, "recording", None) is recording:
            self.media.recording = None
        far = self._far_media
        if far is not None and getattr(getattr(far, "recording", None), "owner", None) is recording:
            far.recording = None
        result = recording.close(self.engine.now(), reason)
        self.log_event(
            "recording", event="stop", key=recording.key, seconds=result.seconds, reason=reason
        )
        return RecordResult(key=recording.key, seconds=result.seconds, reason=result.reason)

    def record_far_side(self, media: Any) -> None:
        """A bridge to another leg's session starts (``media``) or ends (``None``): a
        call recording's right channel is what that leg receives while bridged."""
        old = self._far_media
        if old is media:
            return
        recording = self.recording
        if old is not None and recording is not None:
            if getattr(getattr(old, "recording", None), "owner", None) is recording:
                old.recording = None
            recording.detach_far()
        self._far_media = media
        self._tap_far_side()

    def _tap_far_side(self) -> None:
        far, recording = self._far_media, self.recording
        if far is None or recording is None:
            return
        if getattr(recording, "remote", False):
            recording.tap(far)  # both sessions are in the media plane
        else:
            source = _recording_source(far)
            if source is not None:
                far.recording = recording.attach_far(source)

    async def send_dtmf(self, digits: str, *, duration_ms: int = 100) -> None:
        """Send digits as RFC 4733 events, one after the other."""
        media = self._need_media()
        for digit in digits:
            media.send_digit(digit, duration_ms=duration_ms)
            await asyncio.sleep(duration_ms / 1000 + 0.1)

    async def transfer(
        self, targets: Sequence[str], *, strategy: str = "parallel", timeout: float = 20.0
    ) -> TransferResult:
        """Connect the caller to targets (users, groups, external numbers) and bridge."""
        return await self.engine.transfer(self, targets, strategy=strategy, timeout=timeout)

    async def make_offer(self, *, prefer: str | None = None) -> bytes:
        """Open this call's media and return our SDP offer: every configured codec,
        ``prefer`` (a codec name) first."""
        engine = self.engine
        if self.webrtc:
            body = await self._webrtc_media(None, prefer=prefer)
            assert body is not None
            return body
        if self._sdp_session is None:
            self._sdp_session = sdpmod.SdpSession(engine.media_address(self.session.local_addr[0]))
        codecs = [c for c in engine.codecs if not c.is_dtmf]
        if prefer is not None:
            codecs.sort(key=lambda c: c.name != prefer)
        port = await engine.open_media(self, None)
        offer = sdpmod.build_offer(
            self._sdp_session,
            codecs,
            address=self._sdp_session.address,
            port=port,
            telephone_event=engine.telephone_event,
        )
        self._offer = offer
        if engine.media_manager.srtp_offered(self.session.transport):
            # SDES over TLS (RFC 4568): the media waits for the answer's key.
            self._offered_cryptos = sdes.offer_cryptos()
            sdes.secure_media(offer, 0, self._offered_cryptos)
            self.media.await_srtp()
        return offer.serialize()

    async def _webrtc_media(
        self, offer: bytes | None, *, prefer: str | None = None
    ) -> bytes | None:
        """Answer a browser's offer, or make ours to one, with a WebRTC media session
        (media/webrtc.py); None after a 488 for an offer we cannot take."""

        def lost() -> None:
            # ICE consent or DTLS gone (a closed tab): end the call, as an RTP timeout does
            if self.active:
                asyncio.get_running_loop().create_task(self.hangup(cause=102))

        try:
            self.media, body = await self.engine.media_manager.open_webrtc(
                offer, prefer=prefer, on_timeout=lost, label=self.call_id
            )
        except ValueError as exc:
            if offer is None:
                raise SipError(488, str(exc)) from None
            log.warning("%s: %s", self.call_id, exc)
            self.send_reject(488)
            return None
        self.webrtc = True
        return bytes(body)

    def accept_answer(self, body: bytes) -> bool:
        """Take the far end's SDP answer to our offer (a 2xx, or a 183's early media):
        point our media at it. False when it is unusable."""
        if self.webrtc and self.media is not None and body:
            return bool(self.media.accept_answer(body))
        if self._offer is None or not body:
            return False
        try:
            answer = sdpmod.accept_answer(self._offer, sdpmod.SessionDescription.parse(body))
        except ValueError:
            log.warning("unusable SDP answer from %s", self.callee)
            return False
        if answer is None:
            return False
        if self._offered_cryptos:
            assert answer.offer is not None
            negotiation = sdes.match_answer(
                self._offered_cryptos, answer.offer.media[answer.media_index]
            )
            if negotiation is None:
                log.warning("SDP answer from %s accepts none of our SRTP keys", self.callee)
                return False
            if negotiation != self.srtp:  # a 183 then the 200: keyed once
                self.srtp = negotiation
                if self.media is not None:
                    self.media.set_srtp(sdes.context_for(negotiation))
        self.sdp_answer = answer
        if self.media is not None:
            from ._media import apply_answer

            apply_answer(self.media, answer)
        return True

    def on_answered(self, response: Response) -> None:
        """An outgoing call's 2xx arrived (from :attr:`outcome`): take its SDP answer."""
        self.answered_at = self.engine.wallclock()
        self.status = response.status
        self.accept_answer(response.body)

    # --------------------------------------------------- from the engine (sync)
    def _emit(self, kind: str, **data: Any) -> None:
        event = CallEvent(kind, self.engine.wallclock(), data)
        if self._events is None:
            self._history.append(event)
        else:
            self._events.put_nowait(event)

    def _on_confirmed(self) -> None:
        if not self._confirmed.done():
            self._confirmed.set_result(True)
        self._emit("confirmed")

    def _on_ended(self, reason: str, cause: int) -> None:
        self.ended_at = self.engine.wallclock()
        self.end_reason = reason
        self.cause = cause
        if self.recording is not None:
            self.stop_recording("hangup")
        self._far_media = None
        if self.session.final_status and not self.status:
            self.status = self.session.final_status
        if not self._ended.done():
            self._ended.set_result(None)
        if not self._confirmed.done():
            self._confirmed.set_result(False)
        self._emit("ended", reason=reason, cause=cause)

    def _on_info(self, request: Request) -> None:
        from media.dtmf import parse_dtmf_info

        if request.content_type not in ("application/dtmf-relay", "application/dtmf"):
            return
        try:
            event = parse_dtmf_info(request.content_type, request.body)
        except ValueError:
            return
        self._emit("dtmf", digit=event.digit, source="info")
        if self.media is not None:
            self.media.deliver_digit(event)

    def _on_progress(self, response: Response) -> None:
        self._emit("ringing" if response.status == 180 else "progress", status=response.status)


def _recording_source(media: Any) -> Any:
    """What a call recording of ``media`` reads the codec from: an RTP session's
    stream, a WebRTC session itself; ``None`` for media that cannot be recorded here
    (silent media, a session in the media plane)."""
    if getattr(media, "webrtc", False):
        return media
    return getattr(media, "stream", None)
