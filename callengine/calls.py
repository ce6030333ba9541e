"""The calls in progress on one engine, and the hooks that hear of them (sans-IO).

Theory of operation
-------------------
A :class:`CallBook` is the engine's call registry and its hook bus, and nothing
else: no sockets, no clock, no tasks. The engine's user-agent events feed it:

- an incoming INVITE *opens* a call (:meth:`CallBook.open`): it is registered under
  its key (Call-ID + our tag: a hairpinned call has two) and every hook hears
  ``on_call_started``;
- a call the dialler places is *added* (:meth:`CallBook.add`) when it writes a call
  log (a B2BUA's outgoing legs do not: the bridged call is the caller's, and it
  counts once in ``callengine_calls``);
- an answer asks the hooks first (:meth:`CallBook.before_answer`: the call log's
  "open" record is on disk before the 200 OK leaves), then tells them
  (:meth:`CallBook.answered`);
- the SIP session's end is *counted* (:meth:`CallBook.ended`) by result;
- when the call and everything that ran for it are over, it is *closed*
  (:meth:`CallBook.close`): removed, the session's reference to it dropped (no
  session <-> call cycle: reference counting frees both, DESIGN principle 4), and
  the hooks hear ``on_call_ended`` once, which writes its call log.

When those steps happen (a handler still running, the media plane's figures still
on their way) is the engine's business; what each step does is here, tested in
``tests/callengine/test_calls.py`` without a socket or a loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .call import Call
    from .sip.useragent import InviteSession

__all__ = ["CallBook", "CallHook", "call_key"]


class CallHook(Protocol):
    """What hears of calls (the call-log writer, the recording hook, the admin feed).

    A hook may also define ``before_answer(call) -> Awaitable[None]``: the answer
    waits for it (the call log's first record is durable before the 200 OK)."""

    def on_call_started(self, call: Call) -> None: ...

    def on_call_answered(self, call: Call) -> None: ...

    def on_call_ended(self, call: Call) -> None: ...


def call_key(session: InviteSession) -> str:
    """A call's key in the book: its Call-ID and our tag (the two legs of a call that
    leaves and comes back through us share the Call-ID)."""
    return session.call_id + session.local_tag


class CallBook:
    """The calls in progress, their results so far, and the hooks that hear of them."""

    def __init__(self) -> None:
        self.calls: dict[str, Call] = {}
        """Calls in progress that write a call log, by :func:`call_key`."""
        self.hooks: list[Any] = []
        """:class:`CallHook` s, told in order."""
        self.results: dict[str, int] = {}
        """Ended calls by result: ``answered``, or how an unanswered one ended."""

    def __len__(self) -> int:
        return len(self.calls)

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self.calls.values()))

    def open(self, call: Call) -> None:
        """An incoming call: registered, and every hook hears ``on_call_started``."""
        self.calls[call_key(call.session)] = call
        for hook in self.hooks:
            hook.on_call_started(call)

    def add(self, call: Call) -> None:
        """A call we place: registered when it writes a call log (a B2BUA leg does
        not). The hooks hear of it when it is answered and when it ends."""
        if call.logged:
            self.calls[call_key(call.session)] = call

    def forget(self, call: Call) -> None:
        """Out of the book, no call log: a call we placed that was never sent, or
        that was not answered."""
        self.calls.pop(call_key(call.session), None)

    def before_answer(self, call: Call) -> list[Awaitable[None]]:
        """What must be done before ``call``'s 200 OK leaves (the hooks that ask)."""
        return [hook.before_answer(call) for hook in self.hooks if hasattr(hook, "before_answer")]

    def answered(self, call: Call) -> None:
        for hook in self.hooks:
            hook.on_call_answered(call)

    def ended(self, call: Call, reason: str) -> None:
        """The call's SIP session ended (``reason``: bye, cancel, timeout...): counted
        by result when the call writes a log."""
        if call.logged:
            result = "answered" if call.answered else reason
            self.results[result] = self.results.get(result, 0) + 1

    def close(self, call: Call) -> bool:
        """The call and all that ran for it are over: out of the book, and its hooks
        told (its call log written). Once per call; False when there was nothing to
        tell (closed before, or a call that writes no log)."""
        if call.finished:
            return False
        call.finished = True
        self.forget(call)
        call.session.context = None
        if not call.logged:
            return False
        for hook in self.hooks:
            hook.on_call_ended(call)
        return True

    def using_media(self, sessions: Iterable[Any]) -> list[Call]:
        """The active calls whose media session is one of ``sessions`` (a media plane
        that died had them)."""
        lost = {id(session) for session in sessions}
        return [call for call in self.calls.values() if id(call.media) in lost and call.active]
