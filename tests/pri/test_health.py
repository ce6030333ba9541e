"""Probe schedule and circuit breaker, driven by a fake clock."""

from __future__ import annotations

import pytest

from pri import (
    Gateway,
    HealthBoard,
    HealthChanged,
    HealthConfig,
    HealthState,
    RemoteHealthBoard,
    SendProbe,
    Span,
    Trunk,
    TrunkHealth,
    options_target,
)

CFG = HealthConfig(probe_interval=2.0, probe_timeout=1.0, down_after=2, up_after=2, cool_down=10.0)


def make_trunk(name: str = "a", *, enabled: bool = True, config: HealthConfig = CFG) -> Trunk:
    return Trunk(
        name,
        carrier="A",
        gateway=Gateway("127.0.0.1", 5071),
        spans=[Span("s", "E1", 30)],
        enabled=enabled,
        health=config,
    )


def probes(items: list[SendProbe | HealthChanged]) -> list[SendProbe]:
    return [i for i in items if isinstance(i, SendProbe)]


def changes(items: list[SendProbe | HealthChanged] | list[HealthChanged]) -> list[tuple[str, str]]:
    return [(i.old.value, i.new.value) for i in items if isinstance(i, HealthChanged)]


def test_options_target() -> None:
    assert options_target(Gateway("127.0.0.1", 5071)) == "sip:127.0.0.1:5071;transport=udp"
    assert options_target(Gateway("gw.example", 5060, "tcp")) == "sip:gw.example:5060;transport=tcp"
    assert options_target(Gateway("gw.example", 5061, "tls")) == "sips:gw.example:5061"
    assert options_target(Gateway("::1", 5071)) == "sip:[::1]:5071;transport=udp"


def test_probe_schedule() -> None:
    h = TrunkHealth(make_trunk(), now=100.0)
    assert h.next_deadline() == 100.0
    [probe] = probes(h.handle_timer(100.0))
    assert probe.request_uri == "sip:127.0.0.1:5071;transport=udp"
    assert (probe.host, probe.port, probe.transport) == ("127.0.0.1", 5071, "udp")
    assert probe.deadline == 101.0
    assert h.next_deadline() == 101.0  # the probe's timeout
    assert h.on_probe_response(probe.probe_id, 200, now=100.2) == []
    assert h.next_deadline() == 102.0  # the next probe
    assert h.handle_timer(101.5) == []  # nothing due
    [second] = probes(h.handle_timer(102.0))
    assert second.probe_id == probe.probe_id + 1


def test_down_after_n_failures_then_half_open_then_up() -> None:
    h = TrunkHealth(make_trunk(), now=0.0)
    [p1] = probes(h.handle_timer(0.0))
    assert h.handle_timer(1.0) == []  # first timeout: 1 failure, still up
    assert h.state is HealthState.UP and h.failures == 1
    [p2] = probes(h.handle_timer(2.0))
    items = h.handle_timer(3.0)  # second timeout
    assert changes(items) == [("up", "down")]
    assert items[0].reason == "probe timeout (2 consecutive failures)"  # type: ignore[union-attr]
    assert h.state is HealthState.DOWN and not h.available
    # probes pause while down; the only deadline is the end of the cool-down
    assert h.next_deadline() == 13.0
    assert h.on_probe_response(p2.probe_id, 200, now=3.5) == []  # stale
    items = h.handle_timer(13.0)
    assert changes(items) == [("down", "half_open")]
    [trial] = probes(items)
    assert h.available
    assert h.on_probe_response(trial.probe_id, 200, now=13.1) == []  # 1 of 2
    [trial2] = probes(h.handle_timer(15.0))
    assert changes(h.on_probe_response(trial2.probe_id, 404, now=15.1)) == [("half_open", "up")]
    assert h.state is HealthState.UP and h.failures == 0
    assert p1.probe_id < p2.probe_id < trial.probe_id < trial2.probe_id


def test_half_open_failure_goes_back_down_with_a_fresh_cool_down() -> None:
    h = TrunkHealth(make_trunk(), now=0.0)
    for _ in range(2):
        h.record_call_result(False, now=0.0, reason="call 503")
    assert h.state is HealthState.DOWN
    assert changes(h.handle_timer(10.0)) == [("down", "half_open")]
    events = h.record_call_result(False, now=10.5, reason="call timeout")
    assert changes(events) == [("half_open", "down")]
    assert events[0].reason == "call timeout (half-open trial failed)"
    assert h.next_deadline() == 20.5


def test_success_resets_the_failure_count() -> None:
    h = TrunkHealth(make_trunk(), now=0.0)
    h.record_call_result(False, now=0.0, reason="x")
    h.record_call_result(True, now=0.1, reason="y")
    h.record_call_result(False, now=0.2, reason="x")
    assert h.state is HealthState.UP


@pytest.mark.parametrize(
    ("status", "transport_error", "fails"),
    [
        (200, False, False),
        (404, False, False),
        (405, False, False),
        (603, False, False),
        (408, False, True),
        (500, False, True),
        (503, False, True),
        (None, True, True),
    ],
)
def test_probe_result_classes(status: int | None, transport_error: bool, fails: bool) -> None:
    h = TrunkHealth(make_trunk(config=HealthConfig(down_after=1)), now=0.0)
    [p] = probes(h.handle_timer(0.0))
    h.on_probe_response(p.probe_id, status, now=0.1, transport_error=transport_error)
    assert (h.state is HealthState.DOWN) is fails


def test_unknown_probe_id_is_ignored() -> None:
    h = TrunkHealth(make_trunk(config=HealthConfig(down_after=1)), now=0.0)
    probes(h.handle_timer(0.0))
    assert h.on_probe_response(999, 503, now=0.1) == []
    assert h.state is HealthState.UP


def test_disabled_trunk_never_probes_until_enabled() -> None:
    h = TrunkHealth(make_trunk(enabled=False), now=0.0)
    assert h.state is HealthState.DISABLED and not h.available
    assert h.next_deadline() is None
    assert h.record_call_result(False, now=1.0, reason="x") == []
    assert changes(h.set_enabled(True, now=5.0)) == [("disabled", "up")]
    assert h.next_deadline() == 5.0
    assert changes(h.set_enabled(False, now=6.0)) == [("up", "disabled")]
    assert h.set_enabled(False, now=6.0) == []
    assert h.next_deadline() is None


def test_probe_off_still_breaks_on_calls() -> None:
    config = HealthConfig(probe=False, down_after=1, up_after=1, cool_down=5.0)
    h = TrunkHealth(make_trunk(config=config), now=0.0)
    assert h.next_deadline() is None
    h.record_call_result(False, now=1.0, reason="call timeout")
    assert h.next_deadline() == 6.0
    assert changes(h.handle_timer(6.0)) == [("down", "half_open")]
    assert h.next_deadline() is None  # no probes: the next call is the trial
    assert changes(h.record_call_result(True, now=7.0, reason="call 200")) == [("half_open", "up")]


def test_events_are_frozen() -> None:
    h = TrunkHealth(make_trunk(enabled=False), now=0.0)
    [event] = h.set_enabled(True, now=1.0)
    with pytest.raises(AttributeError):
        event.new = HealthState.DOWN  # type: ignore[misc]


def test_board_drives_all_trunks_as_one_timer() -> None:
    a, b = make_trunk("a"), make_trunk("b", config=HealthConfig(probe_interval=5.0))
    board = HealthBoard([a, b], now=0.0)
    assert len(board) == 2
    sent = probes(board.handle_timer(0.0))
    assert sorted(p.trunk for p in sent) == ["a", "b"]
    for p in sent:
        board.on_probe_response(p.trunk, p.probe_id, 200, now=0.1)
    assert board.next_deadline() == 2.0
    assert [p.trunk for p in probes(board.handle_timer(2.0))] == ["a"]
    assert board.is_available("a") and board.is_available("unknown")
    assert board.on_probe_response("unknown", 1, 200, now=3.0) == []
    assert board.record_call_result("unknown", False, now=3.0, reason="x") == []
    assert board.state("b") is HealthState.UP


def test_remote_board_forwards_results_and_applies_the_owners_changes() -> None:
    """A worker's view of the front's board: results go to the owner, states come back;
    two workers and the owner agree, and the trunk is probed once (by the owner)."""
    trunks = [make_trunk("a"), make_trunk("b")]
    owner = HealthBoard(trunks, now=0.0)
    sent: list[tuple[object, ...]] = []
    views = [RemoteHealthBoard(trunks, now=0.0, forward=sent.append) for _ in range(2)]
    assert [v.next_deadline() for v in views] == [None, None]
    assert views[0].handle_timer(100.0) == []  # no probes of its own
    # a failed call on each worker: the owner counts both (down_after=2)
    assert views[0].record_call_result("a", False, now=1.0, reason="call 503") == []
    assert views[1].record_call_result("a", False, now=1.1, reason="call 503") == []
    assert views[0].record_call_result("nope", False, now=1.2, reason="x") == []
    assert sent == [("call_result", "a", False, "call 503")] * 2
    events = []
    for _, trunk, ok, reason in sent:
        events += owner.record_call_result(trunk, ok, now=1.1, reason=reason)
    assert changes(events) == [("up", "down")]
    assert [v.state("a") for v in views] == [HealthState.UP] * 2  # not until applied
    (event,) = events
    for view in views:
        seen = view.apply(event.trunk, event.new.value, at=event.at, reason=event.reason)
        assert seen is not None and (seen.old, seen.new) == (HealthState.UP, HealthState.DOWN)
        assert not view.is_available("a") and view.is_available("b")
        assert view.apply("a", "down", at=2.0, reason="again") is None  # no change
    assert views[0].apply("nope", "down", at=2.0, reason="x") is None
    # a probe the owner asked a worker to send: its result goes back to the owner
    sent.clear()
    assert views[1].on_probe_response("b", 7, 200, now=3.0) == []
    assert views[1].on_probe_response("b", 8, None, now=3.0, transport_error=True) == []
    assert sent == [("probe_result", "b", 7, 200, False), ("probe_result", "b", 8, None, True)]


def test_a_probe_nobody_could_send_counts_neither_way() -> None:
    board = HealthBoard([make_trunk("a")], now=0.0)
    (probe,) = probes(board.handle_timer(0.0))
    board.skip_probe("a", probe.probe_id, now=0.1)
    board.skip_probe("nope", 1, now=0.1)
    assert board.handle_timer(1.5) == []  # its timeout (1.0) is not counted
    assert board["a"].failures == 0 and board.next_deadline() == 2.1
    (again,) = probes(board.handle_timer(2.1))
    assert again.probe_id == probe.probe_id + 1
    board.skip_probe("a", probe.probe_id, now=2.2)  # a stale id: the new one stays
    assert changes(board.handle_timer(3.2)) == []
    assert board["a"].failures == 1  # the second probe's own timeout
