"""Outgoing calls: the one path that sends an INVITE (asyncio shell).

Theory of operation
-------------------
:meth:`Dialler.place_call` is the only code that starts an outgoing INVITE: the
application's :meth:`Engine.originate`, a B2BUA's legs (trunks, users, transfers)
and the ringing of a user's phones (``_ring.py``) all go through it. It asks the
user agent for a deferred session, gives it a :class:`~callengine.call.Call` (or
the caller's leg class), makes the offer (our media, or an SDP passed through),
and sends. What the INVITE becomes arrives as a user-agent event; the engine hands
it to :meth:`Dialler.answered` or :meth:`Dialler.failed`, which settle the call's
``outcome`` future with the 2xx or the failure as a :class:`SipError` *value*: a
raised exception's traceback would hold the awaiting frame, and the call with it
(a reference cycle through the future).

A call whose offer could not be made (no RTP port: 503; a WebRTC offer refused:
488; the caller gone: 487) leaves nothing behind: no session, no book entry, no
media, no timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from .call import Call, CallControl, SipError
from .calls import CallBook, call_key
from .sip.message import Response
from .sip.uri import URI, parse_uri
from .sip.useragent import SessionState

if TYPE_CHECKING:
    from .b2bua import LegTarget
    from .sip.useragent import InviteSession

__all__ = ["Dialler"]


class Dialler:
    """Places calls for one engine: ``control`` is the engine as its calls see it."""

    def __init__(
        self,
        control: CallControl,
        book: CallBook,
        *,
        local_for: Callable[[str, str], tuple[str, int]],
        max_fork: int,
    ) -> None:
        self.control = control
        self.book = book
        self.local_for = local_for
        """(transport, destination host) -> our address for it (the transport set's)."""
        self.max_fork = max_fork
        self.pending: dict[str, asyncio.Future[Response | SipError]] = {}
        """Outgoing INVITEs without a final response yet: their calls' outcome futures."""
        self.locate_user: Callable[[str, str], list[LegTarget]] | None = None
        """(tenant, user) -> where the user's registered phones are rung (the node's
        registrar, as the B2BUA rings them): for ``originate("user:NAME", tenant=)``."""

    async def place_call(
        self,
        target: str | URI,
        *,
        dest: tuple[str, int] | None = None,
        from_user: str = "callengine",
        from_uri: str | None = None,
        from_display: str | None = None,
        transport: str = "UDP",
        headers: list[tuple[str, str]] | None = None,
        credentials: tuple[str, str] | None = None,
        max_forwards: int | None = None,
        sdp: bytes | None = None,
        prefer: str | None = None,
        make_call: Callable[[InviteSession], Call] | None = None,
        proceed: Callable[[], bool] | None = None,
    ) -> Call:
        """Send an INVITE: the one path for :meth:`originate` and a B2BUA's legs.

        Returns as soon as the INVITE is sent; the call's ``outcome`` future gets the
        2xx, or the failure as a :class:`SipError` value. The offer is ``sdp`` as it
        is, or ours (media opened, codec ``prefer`` first). ``make_call`` builds the
        call object for the session (a B2BUA's leg class); ``proceed`` is asked once
        the offer is ready (opening media awaits): when it says no, nothing is sent,
        the media is closed and :class:`SipError` 487 is raised."""
        control = self.control
        ua = control.ua
        uri = parse_uri(target, where="target") if isinstance(target, str) else target
        if dest is None:
            dest = (uri.host.strip("[]"), uri.port or 5060)
        local = self.local_for(transport, dest[0])
        session = ua.invite(
            uri,
            control.now(),
            dest=dest,
            local=local,
            sdp=b"",
            from_uri=from_uri or f"sip:{from_user}@{control.media_address(local[0])}",
            from_display=from_display,
            transport=transport,
            headers=headers,
            credentials=credentials,
            defer=True,
        )
        if max_forwards is not None:
            session.invite.headers.set("Max-Forwards", str(max_forwards))
        call = (
            make_call(session)
            if make_call is not None
            else Call(control, session, direction="outbound")
        )
        session.context = call
        key = call_key(session)
        self.pending[key] = call.outcome
        self.book.add(call)
        try:
            offer = sdp if sdp is not None else await call.make_offer(prefer=prefer)
            if proceed is not None and not proceed():
                raise SipError(487, "not sent")
        except BaseException:
            # nothing was sent: nothing may stay behind, the session has no timer
            self.pending.pop(key, None)
            self.book.forget(call)
            ua.sessions.pop(key, None)
            session.context = None
            if call.media is not None:
                await call.media.stop("not sent")
            raise
        ua.send_invite(session, offer, control.now())
        control.flush()
        return call

    async def originate(
        self,
        target: str,
        *,
        dest: tuple[str, int] | None = None,
        from_uri: str | None = None,
        from_display: str | None = None,
        transport: str = "UDP",
        headers: list[tuple[str, str]] | None = None,
        credentials: tuple[str, str] | None = None,
        timeout: float = 60.0,
        sdp: bytes | None = None,
        tenant: str | None = None,
    ) -> Call:
        """Place a call to ``target`` (a SIP URI); returns the answered :class:`Call`.

        Raises :class:`SipError` with the final status when it is not answered. ``dest``
        defaults to the URI's host and port (an IP address).

        ``user:NAME`` (or ``ext:NAME``) with ``tenant``: ring the user's registered
        phones at once, as a ``user:`` transfer does (a browser registered with
        ``+sip.ice`` gets a WebRTC offer); the first to answer is the call, 480 when
        none is registered (needs a node's registrar: :attr:`locate_user`). ``dest``,
        ``transport``, ``credentials`` and ``sdp`` are for a SIP URI only (the
        registrar says where each phone is; each gets our own offer).
        """
        if target.startswith(("user:", "ext:")):
            from ._ring import ring_user

            return await ring_user(
                self,
                target,
                tenant=tenant,
                timeout=timeout,
                from_uri=from_uri,
                from_display=from_display,
                headers=headers,
            )
        call = await self.place_call(
            target,
            dest=dest,
            from_uri=from_uri,
            from_display=from_display,
            transport=transport,
            headers=headers,
            credentials=credentials,
            sdp=sdp,
        )
        try:
            outcome = await asyncio.wait_for(asyncio.shield(call.outcome), timeout)
        except TimeoutError:
            await call.hangup(cause=102)  # CANCEL (or BYE if it answers meanwhile)
            self.pending.pop(call_key(call.session), None)
            self.book.forget(call)
            raise SipError(408, "no answer") from None
        if isinstance(outcome, SipError):
            self.book.forget(call)
            raise SipError(outcome.status, outcome.reason, outcome.cause)
        call.on_answered(outcome)
        return call

    # ------------------------------------------------ the user agent's events
    def answered(self, session: InviteSession, response: Response) -> None:
        """A 2xx to one of our INVITEs: its call's outcome."""
        fut = self.pending.pop(call_key(session), None)
        if fut is not None and not fut.done():
            fut.set_result(response)

    def failed(self, session: InviteSession, status: int, response: Response | None) -> None:
        """One of our INVITEs failed (a final non-2xx, Timer B, a transport error)."""
        fut = self.pending.pop(call_key(session), None)
        if fut is not None and not fut.done():
            fut.set_result(SipError(status, response.reason if response else "Request Timeout"))

    def abandon(self, call: Call, cause: int) -> None:
        """We no longer want this outgoing call (another leg answered, the caller
        left, the ring timer): CANCEL, or BYE if it was answered meanwhile (Q.850
        ``cause``), and its result no longer matters."""
        control = self.control
        if not call.outcome.done():
            call.outcome.cancel()
        if call.active:
            control.ua.hangup(call.session, control.now(), cause)
            control.flush()
        if call.media is not None and call.session.state is not SessionState.CONFIRMED:
            asyncio.get_running_loop().create_task(call.media.stop("abandoned"))
