"""Transactions (RFC 3261 §17, RFC 6026) and the UAS core's 2xx/CANCEL rules, driven
through the user agent with a fake clock: every timer fires at its exact deadline."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from callengine.sip.timers import T1, T2, T4, TimerHeap
from callengine.sip.transaction import State

# Timer A/E/G doubling from T1, capped at T2 for E and G; each value is a send time.
INVITE_RETRANSMITS = [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
CAPPED_RETRANSMITS = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def times(sent: list, start: float = 0.0) -> list[float]:
    return [round(s.at - start, 6) for s in sent]


# ----------------------------------------------------------------- TimerHeap
def test_timer_constants() -> None:
    assert (T1, T2, T4) == (0.5, 4.0, 5.0)


def test_timer_heap_orders_cancels_and_never_reads_a_clock() -> None:
    heap = TimerHeap()
    fired: list[tuple[float, str]] = []
    heap.schedule(2.0, lambda now, tag: fired.append((now, tag)), "b")
    first = heap.schedule(1.0, lambda now, tag: fired.append((now, tag)), "a")
    cancelled = heap.schedule(0.5, lambda now, tag: fired.append((now, tag)), "x")
    heap.schedule(2.0, lambda now, tag: fired.append((now, tag)), "c")
    cancelled.cancel()
    assert not cancelled.active and first.active
    assert len(heap) == 3
    assert heap.next_deadline() == 1.0
    assert heap.run(0.99) == 0
    assert heap.run(1.0) == 1 and fired == [(1.0, "a")]
    assert heap.run(5.0) == 2 and fired[1:] == [(5.0, "b"), (5.0, "c")]  # FIFO at equal deadlines
    assert heap.next_deadline() is None and len(heap) == 0


def test_timer_heap_runs_timers_scheduled_by_a_callback_when_due() -> None:
    heap = TimerHeap()
    fired: list[float] = []

    def again(now: float) -> None:
        fired.append(now)
        if len(fired) < 3:
            heap.schedule(now, again)

    heap.schedule(1.0, again)
    assert heap.run(1.0) == 3 and fired == [1.0, 1.0, 1.0]


# ------------------------------------------------------- INVITE client (A/B)
def test_invite_client_timer_a_doubles_and_timer_b_fails_with_408(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, invite = h.place_call()
    first = h.sent[0].data
    sent = h.advance(64)
    invites = h.requests(sent, "INVITE")
    assert times(invites) == INVITE_RETRANSMITS
    assert all(s.data == first and s.dest == kit.CALLEE for s in invites)
    [failed] = h.app.of("failed")
    assert (failed.status, failed.response, failed.now) == (408, None, 32.0)
    assert h.requests(sent) == invites  # no CANCEL, no ACK
    assert h.ua.transactions.client == {} and h.ua.sessions == {}
    assert h.ua.transactions.timeouts == 1


def test_invite_client_over_tcp_does_not_retransmit(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    h.place_call(transport="TCP")
    assert h.sent[0].transport == "TCP"
    assert h.advance(31.9) == []
    assert h.app.names() == []
    h.advance(0.1)
    assert [(e.name, e.status, e.now) for e in h.app.events] == [("failed", 408, 32.0)]


def test_provisional_stops_timer_a(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    _, invite = h.place_call()
    h.advance(0.6)  # one retransmission at 0.5
    h.receive(kit.build_response(invite, 100), source=kit.CALLEE)
    assert h.requests(h.advance(10), "INVITE") == []
    assert h.app.names() == []  # 100 Trying is not progress for the app


def test_ringing_call_is_not_failed_by_timer_b(kit: SimpleNamespace) -> None:
    """§17.1.1.2: Timer B only matters in Calling; a call that rings for a minute is
    still ringing (only the caller's own no-answer timer or a CANCEL ends it)."""
    h = kit.Harness()
    _, invite = h.place_call()
    h.receive(kit.build_response(invite, 180), source=kit.CALLEE)
    sent = h.advance(60)
    assert h.app.names() == ["progress"], h.app.names()
    assert sent == []
    ok = h.receive(kit.build_response(invite, 200, body=kit.SDP_ANSWER), source=kit.CALLEE)
    assert [s.method for s in ok] == ["ACK"]
    assert h.app.names() == ["progress", "answered"]


def test_non_2xx_ack_is_resent_for_each_retransmitted_final(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    _, invite = h.place_call()
    busy = kit.build_response(invite, 486)
    first = h.receive(busy, source=kit.CALLEE)
    again = h.receive(busy, source=kit.CALLEE)
    assert [s.method for s in first] == [s.method for s in again] == ["ACK"]
    assert first[0].data == again[0].data
    assert [e.status for e in h.app.of("failed")] == [486]
    # Timer D (32 s over UDP) then the transaction is gone; a late 486 is dropped
    h.advance(32)
    assert h.ua.transactions.client == {}
    assert h.receive(busy, source=kit.CALLEE) == []
    assert h.ua.counters.dropped_responses == 1


# ---------------------------------------------------- non-INVITE client (E/F)
def confirmed_uac_call(kit: SimpleNamespace, h: SimpleNamespace) -> tuple:
    session, invite = h.place_call()
    h.receive(kit.build_response(invite, 200, body=kit.SDP_ANSWER), source=kit.CALLEE)
    h.clear()
    return session, invite


def test_non_invite_timer_e_caps_at_t2_and_timer_f_ends_it(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, _ = confirmed_uac_call(kit, h)
    h.now = 100.0
    h.ua.hangup(session, h.now)
    h.advance(100)
    byes = h.requests(h.sent, "BYE")
    assert times(byes, 100.0) == [0.0, *CAPPED_RETRANSMITS]
    assert len({s.data for s in h.sent}) == 1
    assert h.ua.transactions.client == {}
    assert h.ua.transactions.timeouts == 1


def test_non_invite_provisional_switches_timer_e_to_t2(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, _ = confirmed_uac_call(kit, h)
    h.ua.hangup(session, h.now)
    bye = h.sent[0].msg
    h.advance(0.6)  # retransmission at 0.5
    h.receive(kit.build_response(bye, 100), source=kit.CALLEE)
    sent = h.advance(40)
    # the next retransmission (scheduled at 1.5) and then every T2
    assert times(h.requests(sent, "BYE")) == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]


def test_non_invite_final_response_stops_retransmissions(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, _ = confirmed_uac_call(kit, h)
    h.ua.hangup(session, h.now)
    bye = h.sent[0].msg
    h.receive(kit.build_response(bye, 200), source=kit.CALLEE)
    assert h.advance(40) == []
    assert h.ua.transactions.client == {}  # Timer K (T4) has run


# ------------------------------------------------------ INVITE server (G/H/I)
def test_retransmitted_invite_gets_the_last_response_and_one_call(kit: SimpleNamespace) -> None:
    app = kit.RecordingApp(incoming=None)
    h = kit.Harness(app)
    invite = kit.build_invite()
    assert h.statuses(h.receive(invite)) == [100]
    assert h.statuses(h.receive(invite)) == [100]
    [event] = app.of("incoming_call")
    h.ua.answer(event.session, kit.SDP_ANSWER, h.now)
    ok = h.sent[-1].data
    again = h.receive(invite)
    assert [s.data for s in again] == [ok]
    assert app.names() == ["incoming_call"]
    assert h.ua.transactions.retransmissions_in == 2


def test_non_2xx_final_timer_g_then_timer_h(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming=("reject", 486)))
    first = h.receive(kit.build_invite())
    assert [(s.status, s.start_line) for s in first][-1] == (486, "SIP/2.0 486 Busy Here")
    sent = h.advance(64)
    assert times(sent) == CAPPED_RETRANSMITS
    assert all(s.data == first[-1].data for s in sent)
    assert h.ua.transactions.server == {}  # Timer H at 32 s
    assert h.ua.transactions.timeouts == 1


def test_ack_stops_timer_g_and_timer_i_ends_the_transaction(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming=("reject", 603)))
    first = h.receive(kit.build_invite())
    tag = first[-1].msg.to_tag
    h.advance(2.0)  # 486 again at 0.5 and 1.5
    assert h.receive(kit.build_ack(to_tag=tag, branch="z9hG4bK-inv-1")) == []
    assert h.advance(30) == []
    assert h.ua.transactions.server == {}
    assert h.ua.counters.dropped_acks == 0


def test_ack_for_non_2xx_reaches_confirmed_then_gone_after_t4(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming=("reject", 486)))
    tag = h.receive(kit.build_invite())[-1].msg.to_tag
    h.receive(kit.build_ack(to_tag=tag, branch="z9hG4bK-inv-1"))
    [txn] = h.ua.transactions.server.values()
    assert txn.state is State.CONFIRMED
    assert h.advance(T4 - 0.01) == []
    assert len(h.ua.transactions.server) == 1
    h.advance(0.01)
    assert h.ua.transactions.server == {}


def test_non_2xx_over_tcp_no_timer_g(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming=("reject", 486)))
    h.receive(kit.build_invite(transport="TCP"), transport="TCP")
    assert h.advance(31) == []


# ----------------------------------------------- 2xx retransmission (§13.3.1.4)
def test_uas_core_retransmits_2xx_until_ack(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="answer"))
    ok = h.receive(kit.build_invite())[-1]
    assert ok.status == 200
    sent = h.advance(4.0)
    assert times(sent) == [0.5, 1.5, 3.5]
    assert all(s.data == ok.data for s in sent)
    assert h.receive(kit.build_ack(to_tag=ok.msg.to_tag)) == []
    assert h.app.names() == ["incoming_call", "call_confirmed"]
    assert h.advance(60) == []


def test_2xx_never_acked_gives_bye_at_64_t1(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="answer"))
    ok = h.receive(kit.build_invite())[-1]
    sent = h.advance(32.0)
    oks = h.responses(sent)
    assert times(oks) == CAPPED_RETRANSMITS
    [bye] = h.requests(sent, "BYE")
    assert bye.at == 32.0 and bye.dest == kit.PEER
    msg = bye.msg
    assert msg.to_tag == "from-1" and msg.from_tag == ok.msg.to_tag
    assert msg.headers.get("reason") == "Q.850;cause=102"
    assert str(msg.uri) == "sip:caller@192.0.2.10:5060"  # the caller's Contact
    assert [e.name for e in h.app.events] == ["incoming_call", "call_ended"]


def test_2xx_over_tcp_is_not_retransmitted(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="answer"))
    h.receive(kit.build_invite(transport="TCP"), transport="TCP")
    sent = h.advance(31.9)
    assert sent == []


# ------------------------------------------------------------------- CANCEL
def test_cancel_gets_200_and_the_invite_487(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="ring"))
    ringing = h.receive(kit.build_invite())[-1]
    sent = h.receive(kit.build_cancel())
    assert [s.start_line for s in sent] == ["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]
    cancel_ok, terminated = (s.msg for s in sent)
    assert cancel_ok.cseq_method == "CANCEL" and terminated.cseq_method == "INVITE"
    assert terminated.to_tag == ringing.msg.to_tag
    [ended] = h.app.of("call_ended")
    assert ended.reason == "cancelled"
    assert h.ua.sessions == {}
    # the 487 is retransmitted until the ACK (same branch as the INVITE)
    assert h.statuses(h.advance(0.5)) == [487]
    assert h.receive(kit.build_ack(to_tag=terminated.to_tag, branch="z9hG4bK-inv-1")) == []
    assert h.advance(40) == []


def test_cancel_after_200_race_keeps_the_call(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="ring_answer"))
    ok = h.receive(kit.build_invite())[-1]
    assert ok.status == 200
    sent = h.receive(kit.build_cancel())
    assert [s.start_line for s in sent] == ["SIP/2.0 200 OK"]
    assert sent[0].msg.cseq_method == "CANCEL"
    assert "call_ended" not in h.app.names()
    h.receive(kit.build_ack(to_tag=ok.msg.to_tag))
    assert h.app.names() == ["incoming_call", "call_confirmed"]
    assert len(h.ua.sessions) == 1


def test_cancel_for_unknown_transaction_is_481(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    sent = h.receive(kit.build_cancel(branch="z9hG4bK-nothing"))
    assert [s.start_line for s in sent] == ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    assert sent[0].msg.to_tag


def test_cancel_retransmission_is_absorbed(kit: SimpleNamespace) -> None:
    h = kit.Harness(kit.RecordingApp(incoming="ring"))
    h.receive(kit.build_invite())
    h.receive(kit.build_cancel())
    again = h.receive(kit.build_cancel())
    assert [s.start_line for s in again] == ["SIP/2.0 200 OK"]
    assert len(h.app.of("call_ended")) == 1


# --------------------------------------------------------------- re-INVITE glare
def confirmed_uas_call(kit: SimpleNamespace, h: SimpleNamespace) -> tuple:
    ok = h.receive(kit.build_invite())[-1]
    h.receive(kit.build_ack(to_tag=ok.msg.to_tag))
    [event] = h.app.of("incoming_call")
    h.clear()
    return event.session, ok.msg.to_tag


def test_reinvite_glare_gets_491(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, tag = confirmed_uas_call(kit, h)
    assert h.ua.reinvite(session, kit.SDP_ANSWER, h.now) is True
    [ours] = h.requests(h.sent, "INVITE")
    assert ours.msg.to_tag == "from-1"
    theirs = kit.build_invite(to_tag=tag, cseq=2, branch="z9hG4bK-re-1")
    sent = h.receive(theirs)
    assert [s.start_line for s in sent] == ["SIP/2.0 491 Request Pending"]
    assert "reoffer" not in h.app.names()
    # our own re-INVITE cannot be started twice either
    assert h.ua.reinvite(session, kit.SDP_ANSWER, h.now) is False


# ----------------------------------------------------------- no leaks (J/L)
def test_non_invite_server_transaction_removed_after_timer_j(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    opts = kit.build_request("OPTIONS", branch="z9hG4bK-o1")
    assert h.statuses(h.receive(opts)) == [200]
    assert len(h.ua.transactions.server) == 1
    assert h.statuses(h.receive(opts)) == [200]  # retransmission answered from the transaction
    h.advance(64 * T1 - 0.01)
    assert len(h.ua.transactions.server) == 1
    h.advance(0.01)
    assert len(h.ua.transactions.server) == 0


def test_whole_call_leaves_nothing_behind(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    session, tag = confirmed_uas_call(kit, h)
    sent = h.receive(kit.build_bye(to_tag=tag))
    assert [s.start_line for s in sent] == ["SIP/2.0 200 OK"]
    h.advance(100)
    ua = h.ua
    assert len(ua.transactions.server) == 0 and len(ua.transactions.client) == 0
    assert ua.sessions == {} and ua.dialogs == {} and ua._merged == {}
    assert ua.next_deadline() is None


def test_many_calls_leave_nothing_behind(kit: SimpleNamespace) -> None:
    h = kit.Harness()
    for i in range(20):
        ok = h.receive(kit.build_invite(call_id=f"c{i}", branch=f"z9hG4bK-i{i}"))[-1]
        h.receive(kit.build_ack(to_tag=ok.msg.to_tag, call_id=f"c{i}", branch=f"z9hG4bK-a{i}"))
        h.receive(kit.build_bye(to_tag=ok.msg.to_tag, call_id=f"c{i}", branch=f"z9hG4bK-b{i}"))
        h.advance(1)
    h.advance(100)
    assert len(h.ua.transactions.server) == 0 and h.ua.sessions == {} and h.ua.dialogs == {}
    assert h.ua.next_deadline() is None
    assert len(h.app.of("call_ended")) == 20


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_options_over_each_transport_cleans_up(kit: SimpleNamespace, transport: str) -> None:
    h = kit.Harness()
    h.receive(kit.build_request("OPTIONS", transport=transport), transport=transport)
    h.advance(64 * T1)
    assert len(h.ua.transactions.server) == 0
