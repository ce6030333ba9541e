"""``Engine.originate("user:NAME", tenant=...)``: ring a registered user's phones.

Theory of operation
-------------------
The node's registrar knows where a tenant user's phones are; ``Dialler.locate_user``
(``Engine.locate_user``, set by :class:`callengine.node.Node`) turns them into the same
:class:`~callengine.b2bua.LegTarget` s the B2BUA rings for a ``user:`` transfer: the
binding's source (NAT, the WebSocket connection of a browser, RFC 7118 §5.2), and a
WebRTC offer for a binding registered with ``+sip.ice`` (RFC 5768). Every phone is
rung at once through :meth:`Dialler.place_call` and a :class:`~callengine.fork.Fork`
(the sans-IO core the B2BUA's parallel ringing uses) decides: the first 2xx wins, the
other legs are CANCELled (Q.850 26), and nobody answering in ``timeout`` seconds is
480 (cause 19). There is no caller here: the answered :class:`Call` is returned to
the application, as :meth:`Engine.originate` does for a SIP URI.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .call import Call, SipError
from .fork import Abandon, Command, Connect, Fail, Fork

if TYPE_CHECKING:
    from .b2bua import LegTarget
    from .call import CallControl
    from .dialler import Dialler

__all__ = ["fork_outcomes", "ring_user"]


def fork_outcomes(
    fork: Fork, waiting: dict[asyncio.Future[Any], int], calls: Sequence[Call], now: float
) -> list[Command]:
    """Feed ``fork`` the outcome of every leg whose INVITE has one (taken out of
    ``waiting``, leg index by outcome future): answered, failed, or forgotten (the
    future cancelled); its commands. The B2BUA's parallel ringing and :func:`ring_user`
    share it."""
    commands: list[Command] = []
    for fut in [f for f in waiting if f.done()]:
        i = waiting.pop(fut)
        outcome: Any = None if fut.cancelled() else fut.result()
        if outcome is None:
            commands += fork.forget(i, now)
        elif isinstance(outcome, SipError):
            commands += fork.failed(i, outcome.status, calls[i].session.end_cause, now)
        else:
            calls[i].on_answered(outcome)
            commands += fork.answered(i, now)
    return commands


async def ring_user(
    dialler: Dialler,
    target: str,
    *,
    tenant: str | None,
    timeout: float,
    from_uri: str | None,
    from_display: str | None,
    headers: list[tuple[str, str]] | None,
) -> Call:
    """Ring ``target`` (``user:NAME`` or ``ext:NAME``) of ``tenant``; the answered call.

    :class:`SipError` 480 when the user has no registered phone (or the engine has no
    registrar), else the fork's final status (486 busy, 480 no answer...)."""
    if tenant is None:
        raise ValueError(f"originate({target!r}) needs tenant=: users belong to a tenant")
    name = target.partition(":")[2]
    locate = dialler.locate_user
    targets = [] if locate is None else locate(tenant, name)
    if not targets:
        raise SipError(480, "not registered", 18)
    targets = targets[: dialler.max_fork]
    calls: list[Call] = []
    for leg in targets:
        try:
            calls.append(
                await dialler.place_call(
                    leg.uri,
                    dest=leg.dest,
                    transport=leg.transport,
                    from_uri=from_uri,
                    from_display=from_display,
                    headers=headers,
                    make_call=functools.partial(
                        _user_call, dialler.control, leg=leg, tenant=tenant
                    ),
                )
            )
        except (OSError, RuntimeError, ValueError, SipError):
            continue  # an unreachable binding (its connection just closed): ring the others
    loop = asyncio.get_running_loop()
    fork = Fork(range(len(calls)), timeout=timeout, now=loop.time())
    waiting = {call.outcome: i for i, call in enumerate(calls)}
    try:
        commands = fork.start()
        while True:
            for command in commands:
                if isinstance(command, Abandon):
                    dialler.abandon(calls[command.leg], command.cause)
            for command in commands:
                if isinstance(command, Connect):
                    return calls[command.leg]
                if isinstance(command, Fail):
                    reason = "no answer" if command.cause == 19 else "not answered"
                    raise SipError(command.status, reason, command.cause)
            deadline = fork.next_deadline()
            delay = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait(set(waiting), timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            now = loop.time()
            commands = fork_outcomes(fork, waiting, calls, now)
            commands += fork.handle_timer(now)
    except asyncio.CancelledError:
        # the application gave up (its own timeout): nothing may keep ringing
        for fut, i in waiting.items():
            if not fut.done():
                dialler.abandon(calls[i], 16)
        raise


def _user_call(control: CallControl, session: Any, *, leg: LegTarget, tenant: str) -> Call:
    call = Call(control, session, direction="outbound")
    call.webrtc = leg.webrtc  # make_offer: aiortc's offer (DTLS-SRTP, ICE) to a browser
    call.tenant = tenant
    return call
