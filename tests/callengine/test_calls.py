"""The call registry and hook bus (:class:`CallBook`, sans-IO) and the dialler's one
path for an outgoing INVITE (:class:`Dialler`), driven over a real user agent with a
fake network and a fake clock: no sockets."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from callengine.call import Call, SipError
from callengine.calls import CallBook, call_key
from callengine.dialler import Dialler
from callengine.sip.message import Response, parse_message
from callengine.sip.useragent import InviteSession, UserAgent

LOCAL = ("192.0.2.1", 5060)
CALLEE = ("192.0.2.20", 5080)
OFFER = b"v=0\r\no=x 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


# ------------------------------------------------------------------ CallBook
class Hook:
    def __init__(self, name: str, said: list[tuple[str, str, str]], *, durable: bool = False):
        self.name = name
        self.said = said
        if durable:
            self.before_answer = self._before_answer

    def on_call_started(self, call: Any) -> None:
        self.said.append((self.name, "started", call.call_id))

    def on_call_answered(self, call: Any) -> None:
        self.said.append((self.name, "answered", call.call_id))

    def on_call_ended(self, call: Any) -> None:
        self.said.append((self.name, "ended", call.call_id))

    def _before_answer(self, call: Any) -> str:
        self.said.append((self.name, "before_answer", call.call_id))
        return f"{self.name}:{call.call_id}"


def fake_call(call_id: str, tag: str = "t1", *, logged: bool = True, status: int = 0) -> Any:
    session = SimpleNamespace(call_id=call_id, local_tag=tag, context=None)
    call = SimpleNamespace(
        call_id=call_id,
        session=session,
        logged=logged,
        finished=False,
        answered=200 <= status < 300,
        active=True,
        media=None,
    )
    session.context = call
    return call


def test_an_incoming_call_is_kept_under_its_key_and_the_hooks_hear_of_it_in_order() -> None:
    said: list[tuple[str, str, str]] = []
    book = CallBook()
    book.hooks += [Hook("log", said), Hook("rec", said)]
    call = fake_call("c1", "ours")
    book.open(call)
    assert book.calls == {"c1ours": call}
    assert call_key(call.session) == "c1ours"
    assert said == [("log", "started", "c1"), ("rec", "started", "c1")]
    book.answered(call)
    assert said[2:] == [("log", "answered", "c1"), ("rec", "answered", "c1")]


def test_a_call_that_comes_back_through_us_is_two_entries() -> None:
    book = CallBook()
    out, back = fake_call("same", "a"), fake_call("same", "b")
    book.open(out)
    book.open(back)
    assert len(book) == 2
    assert book.close(out)
    assert list(book) == [back]


def test_close_writes_the_log_once_and_lets_the_session_go() -> None:
    said: list[tuple[str, str, str]] = []
    book = CallBook()
    book.hooks.append(Hook("log", said))
    call = fake_call("c1", status=200)
    book.open(call)
    book.ended(call, "bye")
    assert book.close(call) is True
    assert book.close(call) is False  # a second end (media stop after a reap) writes nothing
    assert [s for s in said if s[1] == "ended"] == [("log", "ended", "c1")]
    assert book.calls == {}
    assert call.session.context is None  # no session <-> call cycle left behind
    assert book.results == {"answered": 1}


def test_results_count_how_unanswered_calls_ended_and_never_a_bridged_leg() -> None:
    book = CallBook()
    for reason in ("cancel", "cancel", "rejected"):
        call = fake_call(reason)
        book.open(call)
        book.ended(call, reason)
    leg = fake_call("leg", logged=False, status=200)
    book.add(leg)  # a B2BUA's outgoing leg: the bridged call is the caller's
    book.ended(leg, "bye")
    assert book.results == {"cancel": 2, "rejected": 1}
    assert "leg" + "t1" not in book.calls
    assert book.close(leg) is False
    assert leg.session.context is None


def test_a_placed_call_that_writes_a_log_is_in_the_book_and_forget_takes_it_out() -> None:
    said: list[tuple[str, str, str]] = []
    book = CallBook()
    book.hooks.append(Hook("log", said))
    call = fake_call("out")
    book.add(call)
    assert list(book) == [call]
    assert said == []  # started is an incoming call's; a placed one is heard when answered
    book.forget(call)
    assert len(book) == 0
    assert call.session.context is call  # its session's end still reaches it


def test_before_answer_asks_only_the_hooks_that_must_finish_first() -> None:
    said: list[tuple[str, str, str]] = []
    book = CallBook()
    book.hooks += [Hook("admin", said), Hook("log", said, durable=True)]
    call = fake_call("c1")
    assert book.before_answer(call) == ["log:c1"]  # type: ignore[comparison-overlap]
    assert said == [("log", "before_answer", "c1")]


def test_using_media_finds_the_active_calls_of_a_lost_media_plane() -> None:
    book = CallBook()
    lost_media, kept_media = object(), object()
    hit, ended, other = fake_call("hit"), fake_call("ended"), fake_call("other")
    hit.media, ended.media, other.media = lost_media, lost_media, kept_media
    ended.active = False
    for call in (hit, ended, other):
        book.open(call)
    assert book.using_media([lost_media]) == [hit]


# ------------------------------------------------------------------- Dialler
class NullApp:
    """The user agent's application: the dialler's events are what this test feeds."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class Control:
    """The engine as a call sees it: a user agent on a fake network, a fake clock."""

    codecs: list[Any] = []
    telephone_event = None
    media_manager = None

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.clock = 100.0
        self.ua = UserAgent(NullApp(), lambda data, dest, transport: self.sent.append(data))
        self.book = CallBook()
        self.flushed = 0

    def now(self) -> float:
        return self.clock

    def wallclock(self) -> float:
        return 1_700_000_000.0 + self.clock

    def flush(self) -> None:
        self.flushed += 1

    def media_address(self, local_host: str) -> str:
        return local_host

    async def open_media(self, call: Call, negotiated: Any) -> int:
        raise AssertionError("these calls carry their own offer")

    async def transfer(self, call: Call, targets: Any, *, strategy: str, timeout: float) -> Any:
        raise AssertionError("no transfer here")


def dialler() -> tuple[Dialler, Control]:
    control = Control()
    return Dialler(control, control.book, local_for=lambda t, h: LOCAL, max_fork=4), control


def test_place_call_sends_one_invite_and_the_2xx_settles_the_outcome() -> None:
    async def main() -> None:
        d, control = dialler()
        call = await d.place_call(f"sip:bob@{CALLEE[0]}:{CALLEE[1]}", sdp=OFFER, from_user="ivr")
        (sent,) = control.sent
        invite = parse_message(sent)
        assert invite.method == "INVITE"
        assert invite.body == OFFER
        assert str(invite.from_.uri) == "sip:ivr@192.0.2.1"
        assert control.flushed == 1
        assert list(control.book) == [call]
        assert call.session.context is call
        assert not call.outcome.done()
        ok = Response(200, "OK")
        d.answered(call.session, ok)
        assert call.outcome.result() is ok
        assert d.pending == {}

    asyncio.run(main())


def test_a_failure_is_a_sip_error_value_not_a_raised_exception() -> None:
    async def main() -> None:
        d, _ = dialler()
        call = await d.place_call("sip:bob@192.0.2.20:5080", sdp=OFFER)
        d.failed(call.session, 486, Response(486, "Busy Here"))
        outcome = call.outcome.result()
        assert isinstance(outcome, SipError)
        assert (outcome.status, outcome.reason) == (486, "Busy Here")
        assert outcome.__traceback__ is None  # nothing holds the awaiting frame
        timed_out = await d.place_call("sip:carol@192.0.2.20:5080", sdp=OFFER)
        d.failed(timed_out.session, 408, None)
        assert timed_out.outcome.result().reason == "Request Timeout"  # type: ignore[union-attr]

    asyncio.run(main())


def test_an_invite_not_sent_leaves_nothing_behind() -> None:
    async def main() -> None:
        d, control = dialler()
        sessions: list[InviteSession] = []

        def make(session: InviteSession) -> Call:
            sessions.append(session)
            return Call(control, session, direction="outbound")

        with pytest.raises(SipError) as refused:
            await d.place_call(
                "sip:bob@192.0.2.20:5080", sdp=OFFER, make_call=make, proceed=lambda: False
            )
        assert refused.value.status == 487
        assert control.sent == []
        assert (control.book.calls, control.ua.sessions, d.pending) == ({}, {}, {})
        assert sessions[0].context is None
        assert control.ua.next_deadline() is None  # no timer left for a session never sent

    asyncio.run(main())


def test_a_leg_that_writes_no_log_is_placed_but_not_counted() -> None:
    async def main() -> None:
        d, control = dialler()

        def leg(session: InviteSession) -> Call:
            call = Call(control, session, direction="outbound")
            call.logged = False
            return call

        call = await d.place_call(
            "sip:trunk@192.0.2.20:5080", sdp=OFFER, make_call=leg, max_forwards=69
        )
        assert parse_message(control.sent[0]).headers.get("Max-Forwards") == "69"
        assert len(control.book) == 0
        assert call_key(call.session) in d.pending

    asyncio.run(main())


def test_originate_raises_the_final_status_and_forgets_the_call() -> None:
    async def main() -> None:
        d, control = dialler()
        task = asyncio.ensure_future(d.originate("sip:bob@192.0.2.20:5080", sdp=OFFER))
        while not control.sent:
            await asyncio.sleep(0)
        (session,) = control.ua.sessions.values()
        d.failed(session, 603, Response(603, "Decline"))
        with pytest.raises(SipError) as failed:
            await task
        assert (failed.value.status, failed.value.reason) == (603, "Decline")
        assert len(control.book) == 0

    asyncio.run(main())
