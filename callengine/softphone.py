"""A pjsua2 softphone: ``callengine dial`` and the independent SIP/RTP peer in tests.

This is the only module that imports pjsua2 (pjproject 2.15.1). The prebuilt wheel
allows one endpoint per process and at most four calls (``PJSUA_MAX_CALLS``), so it is
a user agent of a few calls, never the engine's core (see docs/DESIGN.md).

How it runs pjsua2 (measured facts, DESIGN.md):

- ``uaConfig.threadCnt = 0`` and ``mainThreadOnly = True``: every callback runs on the
  thread that polls ``libHandleEvents()``; nothing here is touched from another thread.
- The null audio device, kept running (``sndAutoCloseTime = -1`` and the capture device
  transmitting to the playback device): otherwise each call leaks a conference slot.
- The conference bridge runs at 8 kHz mono with no echo canceller and no VAD, so what
  :meth:`SoftCall.record` writes is what the far end sent, sample for sample, and what
  :meth:`SoftCall.play` sends is the WAV file, frame for frame.

Tests run it in a subprocess (one endpoint per process): ``python -m
callengine.softphone SPEC`` where ``SPEC`` is a JSON object (or ``@file``) with the
keys of :class:`DialSpec`; the result (:class:`DialResult`) is printed as one JSON
object on stdout.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

import pjsua2 as pj

__all__ = ["DialResult", "DialSpec", "SoftCall", "Softphone", "SoftphoneError", "dial", "run"]

log = logging.getLogger("callengine.softphone")

_CLOCK_RATE = 8000
_SRTP_USE = {
    "off": pj.PJMEDIA_SRTP_DISABLED,
    "optional": pj.PJMEDIA_SRTP_OPTIONAL,
    "mandatory": pj.PJMEDIA_SRTP_MANDATORY,
}
_endpoint_in_use = False


class SoftphoneError(Exception):
    """A softphone operation failed (call refused, timeout, pjsua2 error)."""


class _Player(pj.AudioMediaPlayer):
    """A WAV player that notes when it reached the end of the file."""

    def __init__(self) -> None:
        super().__init__()
        self.eof_at: float | None = None

    def onEof2(self) -> None:
        if self.eof_at is None:
            self.eof_at = time.monotonic()


class _Call(pj.Call):
    """pjsua2's call with its callbacks forwarded to a :class:`SoftCall`."""

    def __init__(self, account: pj.Account, owner: SoftCall) -> None:
        super().__init__(account)
        self._owner: SoftCall | None = owner

    def onCallState(self, prm: Any) -> None:
        if self._owner is not None:
            self._owner._on_state(self.getInfo())

    def onCallMediaState(self, prm: Any) -> None:
        if self._owner is not None:
            self._owner._on_media(self)

    def onDtmfDigit(self, prm: Any) -> None:
        if self._owner is not None:
            self._owner.digits_received += str(prm.digit)


class SoftCall:
    """One call of a :class:`Softphone`. Methods must be called from the polling thread."""

    def __init__(self, phone: Softphone, uri: str) -> None:
        self.phone = phone
        self.uri = uri
        self.state = "null"
        self.status = 0
        self.reason = ""
        self.confirmed_at: float | None = None
        self.disconnected_at: float | None = None
        self.hung_up_locally = False
        self.digits_received = ""
        self._call = _Call(phone._account, self)
        self._media: pj.AudioMedia | None = None
        self._players: list[_Player] = []
        self._recorders: list[pj.AudioMediaRecorder] = []
        self.stats: dict[str, Any] = {}

    # ------------------------------------------------------------ callbacks
    def _on_state(self, info: Any) -> None:
        self.status = int(info.lastStatusCode)
        self.reason = str(info.lastReason)
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.state = "confirmed"
            self.confirmed_at = time.monotonic()
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.state = "disconnected"
            self.disconnected_at = time.monotonic()
            self._release_media()
        else:
            self.state = str(info.stateText).lower()

    def _on_media(self, call: _Call) -> None:
        info = call.getInfo()
        for index, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status in (
                pj.PJSUA_CALL_MEDIA_ACTIVE,
                pj.PJSUA_CALL_MEDIA_REMOTE_HOLD,
            ):
                self._media = call.getAudioMedia(index)
                return

    # ---------------------------------------------------------- properties
    @property
    def active(self) -> bool:
        return self.state != "disconnected"

    @property
    def confirmed(self) -> bool:
        return self.confirmed_at is not None and self.active

    @property
    def playing(self) -> bool:
        """A player started by :meth:`play` has not reached the end of its file."""
        return any(p.eof_at is None for p in self._players)

    @property
    def play_finished_at(self) -> float | None:
        done = [p.eof_at for p in self._players if p.eof_at is not None]
        return max(done) if done and not self.playing else None

    # ------------------------------------------------------------- control
    def wait_confirmed(self, timeout: float = 10.0) -> None:
        """Poll until the call is confirmed with active audio; raise if it failed."""
        self.phone.poll_until(
            lambda: (self._media is not None and self.confirmed) or not self.active, timeout
        )
        if not self.confirmed or self._media is None:
            raise SoftphoneError(f"call to {self.uri} not answered: {self.status} {self.reason}")

    def wait_disconnected(self, timeout: float) -> bool:
        """Poll until the call has ended; ``True`` if it did within ``timeout``."""
        self.phone.poll_until(lambda: not self.active, timeout)
        return not self.active

    def _audio(self) -> pj.AudioMedia:
        if self._media is None:
            raise SoftphoneError("the call has no active audio")
        return self._media

    def send_dtmf(self, digits: str, *, duration_ms: int = 160) -> None:
        """Send ``digits`` as RFC 4733 telephone-events (pjsua2 queues them in order)."""
        param = pj.CallSendDtmfParam()
        param.method = pj.PJSUA_DTMF_METHOD_RFC2833
        param.digits = digits
        param.duration = duration_ms
        self._call.sendDtmf(param)

    def play(self, wav: str | Path) -> None:
        """Send a WAV file into the call once (:attr:`playing` until its end)."""
        player = _Player()
        player.createPlayer(str(wav), pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(self._audio())
        self._players.append(player)

    def record(self, wav: str | Path) -> None:
        """Write what the far end sends to a WAV file (8 kHz mono, 16-bit) until hangup."""
        recorder = pj.AudioMediaRecorder()
        recorder.createRecorder(str(wav))
        self._audio().startTransmit(recorder)
        self._recorders.append(recorder)

    def hangup(self) -> None:
        """Send BYE (or CANCEL before answer); does nothing once disconnected."""
        if not self.active:
            return
        self.hung_up_locally = True
        self._collect_stats()
        param = pj.CallOpParam()
        param.statusCode = pj.PJSIP_SC_OK if self.confirmed_at else pj.PJSIP_SC_DECLINE
        try:
            self._call.hangup(param)
        except pj.Error as exc:
            raise SoftphoneError(f"hangup failed: {exc.info()}") from None

    def _collect_stats(self) -> None:
        if self._media is None or not self.active:
            return
        try:
            rtcp = self._call.getStreamStat(0).rtcp
        except pj.Error:
            return
        self.stats = {
            "rx_packets": int(rtcp.rxStat.pkt),
            "rx_lost": int(rtcp.rxStat.loss),
            "rx_discarded": int(rtcp.rxStat.discard),
            "rx_jitter_ms": round(rtcp.rxStat.jitterUsec.mean / 1000, 2),
            "tx_packets": int(rtcp.txStat.pkt),
        }

    def _detach(self) -> None:
        # Break the SoftCall <-> _Call cycle so pjsua2's Call is deleted now.
        self._call._owner = None
        del self._call

    def _release_media(self) -> None:
        # Destroying a recorder finishes its WAV header; players and recorders go
        # before the call's conference slot does.
        for player in self._players:
            player.eof_at = player.eof_at or time.monotonic()
        self._recorders.clear()
        self._players.clear()
        self._media = None


class Softphone:
    """A pjsua2 user agent (one per process): UDP on ``host:port``, G.711, RFC 4733.

    >>> with Softphone() as phone:
    ...     call = phone.call("sip:1000@127.0.0.1:5060")
    ...     call.send_dtmf("1#")
    ...     phone.poll(2.0)
    ...     call.hangup()
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        codecs: Sequence[str] = ("PCMU", "PCMA"),
        user: str = "softphone",
        log_level: int = 0,
        transport: str = "udp",
        srtp: str = "off",
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        srtp_secure_signaling: int = 1,
    ) -> None:
        if transport not in ("udp", "tls"):
            raise SoftphoneError(f"transport must be udp or tls, not {transport!r}")
        if srtp not in _SRTP_USE:
            raise SoftphoneError(f"srtp must be one of {', '.join(_SRTP_USE)}, not {srtp!r}")
        self.host = host
        self.port = port
        self.codecs = tuple(codecs)
        self.user = user
        self.log_level = log_level
        self.transport = transport
        self.srtp = srtp
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.tls_ca = tls_ca
        self.srtp_secure_signaling = srtp_secure_signaling
        self._ep: pj.Endpoint | None = None
        self._account: pj.Account | None = None
        self.calls: list[SoftCall] = []

    def __enter__(self) -> Softphone:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Create the endpoint, the UDP transport and an account without registration."""
        global _endpoint_in_use
        if _endpoint_in_use:
            raise SoftphoneError("pjsua2 allows one endpoint per process")
        ep = pj.Endpoint()
        ep.libCreate()
        _endpoint_in_use = True
        self._ep = ep
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.userAgent = "callengine-softphone (pjsua2)"
        cfg.logConfig.level = self.log_level
        cfg.logConfig.consoleLevel = self.log_level
        med = cfg.medConfig
        med.sndAutoCloseTime = -1
        med.clockRate = _CLOCK_RATE
        med.sndClockRate = _CLOCK_RATE
        med.channelCount = 1
        med.ecTailLen = 0
        med.noVad = True
        ep.libInit(cfg)
        ep.audDevManager().setNullDev()
        tcfg = pj.TransportConfig()
        tcfg.port = self.port
        tcfg.boundAddress = self.host
        kind = pj.PJSIP_TRANSPORT_UDP
        if self.transport == "tls":
            kind = pj.PJSIP_TRANSPORT_TLS
            tls = tcfg.tlsConfig
            if self.tls_cert and self.tls_key:
                tls.certFile = self.tls_cert
                tls.privKeyFile = self.tls_key
            if self.tls_ca:
                tls.CaListFile = self.tls_ca
                tls.verifyServer = True
        tid = ep.transportCreate(kind, tcfg)
        self.port = int(ep.transportGetInfo(tid).localName.rsplit(":", 1)[1])
        ep.libStart()
        devices = ep.audDevManager()
        devices.getCaptureDevMedia().startTransmit(devices.getPlaybackDevMedia())
        self._set_codecs(ep)
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{self.user}@{self.host}:{self.port}"
        acfg.mediaConfig.transportConfig.boundAddress = self.host
        acfg.mediaConfig.transportConfig.port = 0
        # SDES keys (RFC 4568); pjsua's default secure-signalling rule (1) wants TLS to
        # the next hop before it puts keys in an SDP.
        acfg.mediaConfig.srtpUse = _SRTP_USE[self.srtp]
        acfg.mediaConfig.srtpSecureSignaling = self.srtp_secure_signaling
        if self.transport == "tls":
            acfg.sipConfig.transportId = tid
        account = pj.Account()
        account.create(acfg)
        self._account = account

    def _set_codecs(self, ep: pj.Endpoint) -> None:
        wanted = [c.upper() for c in self.codecs]
        for codec in ep.codecEnum2():
            name = str(codec.codecId).split("/")[0].upper()
            priority = 255 - wanted.index(name) if name in wanted else 0
            ep.codecSetPriority(codec.codecId, priority)

    def close(self) -> None:
        """Hang up what is up, then destroy the endpoint (recordings are finished)."""
        global _endpoint_in_use
        ep = self._ep
        if ep is None:
            return
        for call in self.calls:
            if call.active:
                try:
                    call.hangup()
                except SoftphoneError:
                    pass
        self.poll_until(lambda: all(not c.active for c in self.calls), 3.0)
        for call in self.calls:
            call._release_media()
            call._detach()
        self.calls.clear()
        self._account = None
        self._ep = None
        # pjsua2 objects must be gone before the library is: a Call destroyed after
        # libDestroy() trips an assertion in pjsua_call_set_user_data().
        gc.collect()
        ep.libDestroy()
        _endpoint_in_use = False

    # -------------------------------------------------------------- events
    def poll(self, seconds: float) -> None:
        """Handle pjsua2 events for ``seconds``."""
        self.poll_until(lambda: False, seconds)

    def poll_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Handle events until ``done()`` or ``timeout``; returns ``done()``."""
        assert self._ep is not None
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._ep.libHandleEvents(int(min(left, 0.01) * 1000) or 1)
        return True

    # --------------------------------------------------------------- calls
    def call(self, uri: str, *, timeout: float = 10.0) -> SoftCall:
        """INVITE ``uri``; return once the call is confirmed with active audio."""
        if self._account is None:
            raise SoftphoneError("softphone not started")
        call = SoftCall(self, uri)
        self.calls.append(call)
        try:
            call._call.makeCall(uri, pj.CallOpParam(True))
        except pj.Error as exc:
            raise SoftphoneError(f"cannot call {uri}: {exc.info()}") from None
        call.wait_confirmed(timeout)
        return call


# ------------------------------------------------------------------ scripted dial


@dataclass
class DialSpec:
    """One scripted call: what to send and record, and for how long.

    ``duration`` bounds the connected time; the call also ends when the far end hangs
    up, or (``hangup_after_play``) right after the played file ended.
    """

    uri: str
    dtmf: str = ""
    dtmf_delay: float = 1.0
    dtmf_duration_ms: int = 160
    play: str | None = None
    play_delay: float = 0.0
    hangup_after_play: bool = False
    record: str | None = None
    duration: float = 10.0
    port: int = 0
    host: str = "127.0.0.1"
    codecs: list[str] = field(default_factory=lambda: ["PCMU", "PCMA"])
    answer_timeout: float = 10.0
    transport: str = "udp"
    """``udp`` or ``tls`` (then the URI needs ``;transport=tls``)."""
    srtp: str = "off"
    """``off``, ``optional`` or ``mandatory`` (SDES, RFC 4568)."""
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    """With ``tls_ca`` the node's certificate is verified."""
    srtp_secure_signaling: int = 1
    """pjsua's rule for SRTP keys: 0 any transport, 1 TLS to the next hop, 2 end to end."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> DialSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown dial spec keys: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class DialResult:
    """What happened (printed as JSON by ``python -m callengine.softphone``)."""

    answered: bool = False
    status: int = 0
    reason: str = ""
    hangup_by: str = ""  # "local" or "remote"
    connected_seconds: float = 0.0
    dtmf_sent: str = ""
    digits_received: str = ""
    played_seconds: float | None = None
    recorded: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def run(spec: DialSpec) -> DialResult:
    """Place one call as ``spec`` says and report what happened."""
    result = DialResult()
    with Softphone(
        host=spec.host,
        port=spec.port,
        codecs=spec.codecs,
        transport=spec.transport,
        srtp=spec.srtp,
        tls_cert=spec.tls_cert,
        tls_key=spec.tls_key,
        tls_ca=spec.tls_ca,
        srtp_secure_signaling=spec.srtp_secure_signaling,
    ) as phone:
        try:
            call = phone.call(spec.uri, timeout=spec.answer_timeout)
        except SoftphoneError as exc:
            result.error = str(exc)
            result.status = phone.calls[-1].status if phone.calls else 0
            return result
        result.answered = True
        start = time.monotonic()
        if spec.record:
            call.record(spec.record)
            result.recorded = spec.record
        play_at = start + spec.play_delay if spec.play else None
        play_started: float | None = None
        dtmf_at = start + spec.dtmf_delay if spec.dtmf else None
        deadline = start + spec.duration
        next_stats = start
        while call.active and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_stats:
                # Refreshed while up: once the far end hangs up they are gone.
                call._collect_stats()
                next_stats = now + 0.5
            if play_at is not None and now >= play_at:
                assert spec.play is not None
                call.play(spec.play)
                play_started, play_at = now, None
            if dtmf_at is not None and now >= dtmf_at:
                call.send_dtmf(spec.dtmf, duration_ms=spec.dtmf_duration_ms)
                result.dtmf_sent, dtmf_at = spec.dtmf, None
            finished = call.play_finished_at
            if play_started is not None and finished is not None:
                result.played_seconds = round(finished - play_started, 3)
                if spec.hangup_after_play:
                    break
            phone.poll(0.005)
        if call.active:
            call.hangup()
            result.hangup_by = "local"
            call.wait_disconnected(3.0)
        else:
            result.hangup_by = "remote"
        end = call.disconnected_at or time.monotonic()
        result.connected_seconds = round(end - start, 3)
        result.status = call.status
        result.reason = call.reason
        result.digits_received = call.digits_received
        result.stats = call.stats
    return result


def dial(
    uri: str,
    *,
    dtmf: str = "",
    play: str | None = None,
    record: str | None = None,
    duration: float = 10.0,
    dtmf_delay: float = 1.0,
    port: int = 0,
    play_delay: float = 0.0,
) -> int:
    """``callengine dial``: one call, the result as JSON on stdout; exit 0 if answered."""
    spec = DialSpec(
        uri,
        dtmf=dtmf,
        play=play,
        play_delay=play_delay,
        record=record,
        duration=duration,
        dtmf_delay=dtmf_delay,
        port=port,
    )
    return _run_and_report(spec)


def _run_and_report(spec: DialSpec) -> int:
    # pjlib logs to fd 1 before any log level can be set: keep stdout for the one JSON
    # line and send everything else to stderr.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        result = run(spec)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    sys.stdout.write(json.dumps(asdict(result)) + "\n")
    sys.stdout.flush()
    return 0 if result.answered else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m callengine.softphone SPEC``: SPEC is JSON or ``@path`` to a JSON file."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m callengine.softphone '{\"uri\": ...}' | @spec.json\n")
        return 2
    text = Path(args[0][1:]).read_text() if args[0].startswith("@") else args[0]
    return _run_and_report(DialSpec.from_mapping(json.loads(text)))


if __name__ == "__main__":
    sys.exit(main())
