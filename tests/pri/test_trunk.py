"""Trunks, B-channel accounting, hunting, routes, inbound matching and config loading."""

from __future__ import annotations

import copy
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pri import (
    Gateway,
    Hunting,
    Span,
    Trunk,
    TrunkConfigError,
    TrunkGroup,
    load_trunks,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-carriers.yaml"
SRC = "examples/two-carriers.yaml"


def make_trunk(name: str, channels: int = 23, *, spans: int = 1) -> Trunk:
    return Trunk(
        name,
        carrier=name.upper(),
        gateway=Gateway("127.0.0.1", 5060),
        spans=[Span(f"{name}-s{i}", "custom", channels) for i in range(spans)],
    )


def base_config() -> dict[str, Any]:
    return {
        "trunks": {
            "carrier-a": {
                "carrier": "A",
                "gateway": {"host": "127.0.0.1", "port": 5071},
                "spans": [{"type": "E1"}],
            },
            "carrier-b": {
                "carrier": "B",
                "gateway": {"host": "127.0.0.1", "port": 5072},
                "spans": [{"type": "T1"}],
            },
        },
        "trunk_groups": {"pstn": {"trunks": ["carrier-a", "carrier-b"]}},
        "outbound_routes": [{"prefix": "9", "strip": 1, "group": "pstn"}],
        "trusted_sources": ["127.0.0.1"],
    }


# --- the example file -----------------------------------------------------------


def test_example_file_loads() -> None:
    plan = load_trunks(yaml.safe_load(EXAMPLE.read_text()), source=SRC)
    a, b = plan.trunks["carrier-a"], plan.trunks["carrier-b"]
    assert (a.carrier, a.gateway) == ("A", Gateway("127.0.0.1", 5071, "udp"))
    assert (b.carrier, b.gateway) == ("B", Gateway("127.0.0.1", 5072, "udp"))
    assert [(s.kind, s.channels) for s in a.spans] == [("E1", 30)]
    assert [(s.kind, s.channels) for s in b.spans] == [("T1", 23)]
    for trunk in (a, b):
        assert trunk.health.probe_interval == 2.0
        assert trunk.health.down_after == 2
    group = plan.groups["pstn"]
    assert group.strategy is Hunting.PRIORITY
    assert [t.name for t in group.trunks] == ["carrier-a", "carrier-b"]

    match = plan.route_outbound("900441234567", source_ip="127.0.0.1")
    assert match is not None
    assert match.group is group
    assert match.number == "00441234567"
    assert plan.route_outbound("900441234567", source_ip="10.0.0.9") is None
    assert plan.route_outbound("0441234567", source_ip="127.0.0.1") is None
    assert plan.is_trusted("127.0.0.1") and not plan.is_trusted("10.0.0.1")

    assert plan.match_inbound("127.0.0.1", "3225550142") is a
    assert plan.match_inbound("127.0.0.1", "+3225560999") is b
    assert plan.match_inbound("127.0.0.1", "3225570000") is None
    assert plan.match_inbound("10.1.1.1", "3225550142") is None
    assert plan.match_inbound("not an ip", "3225550142") is None


# --- channel accounting ------------------------------------------------------------


def test_t1_never_carries_a_24th_call_the_24th_goes_to_the_next_trunk() -> None:
    t1, e1 = make_trunk("t1", 23), make_trunk("e1", 30)
    group = TrunkGroup("g", [t1, e1])
    channels = [group.seize(f"c{i}") for i in range(24)]
    assert all(c is not None for c in channels)
    assert [c.trunk for c in channels if c] == ["t1"] * 23 + ["e1"]
    assert sorted(c.number for c in channels[:23] if c) == list(range(1, 24))
    assert t1.seize("extra") is None
    assert (t1.in_use, t1.free) == (23, 0)


def test_release_frees_the_channel_for_reuse() -> None:
    trunk = make_trunk("t", 2)
    group = TrunkGroup("g", [trunk])
    first, second = group.seize("a"), group.seize("b")
    assert first is not None and second is not None
    assert group.seize("c") is None
    assert group.release("a") == first
    assert group.release("a") is None
    again = group.seize("c")
    assert again is not None and again.number == first.number
    assert group.in_use == 2


def test_seize_is_idempotent_per_call() -> None:
    trunk = make_trunk("t", 3)
    assert trunk.seize("x") == trunk.seize("x")
    assert trunk.in_use == 1


def test_channels_fill_spans_in_order() -> None:
    trunk = make_trunk("t", 2, spans=2)
    got = [trunk.seize(f"c{i}") for i in range(4)]
    assert [(c.span, c.number) for c in got if c] == [
        ("t-s0", 1), ("t-s0", 2), ("t-s1", 1), ("t-s1", 2),
    ]  # fmt: skip


def test_disabled_and_skipped_trunks_are_passed_over() -> None:
    a, b = make_trunk("a", 1), make_trunk("b", 1)
    a.enabled = False
    group = TrunkGroup("g", [a, b])
    channel = group.seize("x")
    assert channel is not None and channel.trunk == "b"
    assert group.seize("y", skip=lambda t: t.name == "b") is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["seize", "release"]), st.integers(0, 40)),
        max_size=300,
    )
)
def test_channel_counts_stay_within_capacity(ops: list[tuple[str, int]]) -> None:
    a, b = make_trunk("a", 5, spans=2), make_trunk("b", 7)
    group = TrunkGroup("g", [a, b], strategy=Hunting.LEAST_USED)
    held: dict[str, tuple[str, str, int]] = {}
    for op, n in ops:
        call = f"call-{n}"
        if op == "seize":
            channel = group.seize(call)
            if channel is not None:
                held[call] = (channel.trunk, channel.span, channel.number)
            else:
                assert call not in held
                assert a.free == 0 and b.free == 0
        else:
            released = group.release(call)
            assert (released is not None) == (call in held)
            held.pop(call, None)
        for trunk in (a, b):
            assert 0 <= trunk.in_use <= trunk.capacity
            assert trunk.in_use + trunk.free == trunk.capacity
        # no B-channel is ever given to two calls
        assert len(set(held.values())) == len(held)
    assert a.in_use + b.in_use == len(held) == group.in_use


# --- hunting ---------------------------------------------------------------------


def test_priority_always_starts_at_the_first_trunk() -> None:
    a, b = make_trunk("a"), make_trunk("b")
    group = TrunkGroup("g", [a, b], strategy=Hunting.PRIORITY)
    for i in range(10):
        channel = group.seize(f"c{i}")
        assert channel is not None and channel.trunk == "a"
        group.release(f"c{i}")


def test_round_robin_rotates_over_many_calls() -> None:
    trunks = [make_trunk(n) for n in "abc"]
    group = TrunkGroup("g", trunks, strategy=Hunting.ROUND_ROBIN)
    used = []
    for i in range(9):
        channel = group.seize(f"c{i}")
        assert channel is not None
        used.append(channel.trunk)
        group.release(f"c{i}")
    assert used == list("abcabcabc")


def test_round_robin_skips_a_full_trunk_and_continues_after_the_one_used() -> None:
    a, b, c = make_trunk("a", 1), make_trunk("b", 1), make_trunk("c", 5)
    group = TrunkGroup("g", [a, b, c], strategy=Hunting.ROUND_ROBIN)
    assert b.seize("hog") is not None  # b is full
    used = [ch.trunk for i in range(3) if (ch := group.seize(f"c{i}"))]
    assert used == ["a", "c", "c"]  # a, then b full -> c, then a full, b full -> c


def test_least_used_balances_by_occupancy() -> None:
    small, big = make_trunk("small", 10), make_trunk("big", 30)
    group = TrunkGroup("g", [small, big], strategy=Hunting.LEAST_USED)
    for i in range(20):
        assert group.seize(f"c{i}") is not None
    assert (small.in_use, big.in_use) == (5, 15)


def test_weighted_is_deterministic_and_follows_weights() -> None:
    def run(seed: int) -> list[str]:
        trunks = [make_trunk(n, 30) for n in "abc"]
        group = TrunkGroup(
            "g", trunks, strategy=Hunting.WEIGHTED, weights=[6, 3, 1], rng=random.Random(seed)
        )
        firsts = []
        for i in range(3000):
            channel = group.seize(f"c{i}")
            assert channel is not None
            firsts.append(channel.trunk)
            group.release(f"c{i}")
        return firsts

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    counts = Counter(first)
    assert 0.55 < counts["a"] / 3000 < 0.65
    assert 0.25 < counts["b"] / 3000 < 0.35
    assert 0.07 < counts["c"] / 3000 < 0.13


def test_weighted_order_contains_every_trunk_once() -> None:
    trunks = [make_trunk(n) for n in "abcd"]
    group = TrunkGroup("g", trunks, strategy=Hunting.WEIGHTED, weights=[1, 2, 3, 4],
                       rng=random.Random(1))  # fmt: skip
    for _ in range(50):
        assert sorted(t.name for t in group.hunt_order()) == list("abcd")


# --- routes ----------------------------------------------------------------------


def test_longest_prefix_wins_and_rewrites() -> None:
    data = base_config()
    data["outbound_routes"] = [
        {"prefix": "9", "strip": 1, "group": "pstn"},
        {"prefix": "900", "strip": 3, "prepend": "+", "group": "pstn"},
        {"prefix": "", "group": "pstn", "sources": ["10.0.0.0/8"]},
    ]
    data["trusted_sources"] = ["127.0.0.1", "10.0.0.0/8"]
    plan = load_trunks(data, source=SRC)
    intl = plan.route_outbound("900441234", source_ip="127.0.0.1")
    assert intl is not None and intl.number == "+441234"
    local = plan.route_outbound("91234", source_ip="127.0.0.1")
    assert local is not None and local.number == "1234"
    assert plan.route_outbound("1234", source_ip="127.0.0.1") is None
    anything = plan.route_outbound("1234", source_ip="10.1.2.3")
    assert anything is not None and anything.number == "1234"
    assert plan.route_outbound("9", source_ip="127.0.0.1") is None  # nothing left to dial


# --- config errors ----------------------------------------------------------------


def _mutate(path: list[Any], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(base_config())
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()

ERRORS = [
    (["trunk_groups", "pstn", "trunks", 1], "carrier-c",
     "trunk_groups.pstn.trunks[1]: unknown trunk 'carrier-c'"),
    (["trunk_groups", "pstn", "trunks", 1], "carrier-a",
     "trunk_groups.pstn.trunks[1]: trunk 'carrier-a' is listed twice"),
    (["trunk_groups", "pstn", "trunks"], [],
     "trunk_groups.pstn.trunks: a trunk group needs at least one trunk"),
    (["trunk_groups", "pstn", "strategy"], "random",
     "trunk_groups.pstn.strategy: unknown strategy 'random' "
     "(expected one of: priority, round_robin, least_used, weighted)"),
    (["trunk_groups", "pstn", "trunks", 0], {"trunk": "carrier-a", "weight": 0},
     "trunk_groups.pstn.trunks[0].weight: must be between 1 and 1000000, got 0"),
    (["trunk_groups", "pstn", "max_attempts"], 3,
     "trunk_groups.pstn.max_attempts: must be between 1 and 2, got 3"),
    (["trunk_groups", "pstn", "setup_timeout"], 0,
     "trunk_groups.pstn.setup_timeout: must be greater than 0, got 0"),
    (["trunks", "carrier-a", "spans", 0], {"type": "J1"},
     "trunks.carrier-a.spans[0].type: unknown span type 'J1' (expected E1 or T1)"),
    (["trunks", "carrier-b", "spans", 0], {"type": "T1", "channels": 24},
     "trunks.carrier-b.spans[0].channels: must be between 1 and 23, got 24"),
    (["trunks", "carrier-b", "spans", 0], {"name": "x"},
     "trunks.carrier-b.spans[0]: a span needs 'type' (E1 or T1) or 'channels'"),
    (["trunks", "carrier-b", "spans"], [],
     "trunks.carrier-b.spans: a trunk needs at least one span"),
    (["trunks", "carrier-b", "spans"], [{"name": "s", "type": "T1"}, {"name": "s", "type": "T1"}],
     "trunks.carrier-b.spans[1].name: duplicate span name 's'"),
    (["trunks", "carrier-a", "carrier"], _DELETE,
     "trunks.carrier-a: missing field 'carrier'"),
    (["trunks", "carrier-a", "gateway", "port"], 70000,
     "trunks.carrier-a.gateway.port: must be between 1 and 65535, got 70000"),
    (["trunks", "carrier-a", "gateway", "port"], "5071",
     "trunks.carrier-a.gateway.port: expected an integer, got string '5071'"),
    (["trunks", "carrier-a", "gateway", "transport"], "sctp",
     "trunks.carrier-a.gateway.transport: unknown transport 'sctp' "
     "(expected one of: udp, tcp, tls)"),
    (["trunks", "carrier-a", "gatway"], {},
     "trunks.carrier-a.gatway: unknown field (expected one of: auth, carrier, dids, "
     "enabled, gateway, health, sources, spans)"),
    (["trunks", "carrier-a", "dids"], [3225550100],
     "trunks.carrier-a.dids[0]: expected a number prefix or range 'low-high', "
     "got number 3225550100 (quote numbers in YAML)"),
    (["trunks", "carrier-a", "dids"], ["3225550199-3225550100"],
     "trunks.carrier-a.dids[0]: invalid DID range '3225550199-3225550100' "
     "(equal-length low-high, low <= high)"),
    (["trunks", "carrier-a", "sources"], ["127.0.0.300"],
     "trunks.carrier-a.sources[0]: invalid address or network '127.0.0.300'"),
    (["trunks", "carrier-a", "enabled"], "no",
     "trunks.carrier-a.enabled: expected true or false, got string 'no'"),
    (["trunks", "carrier-a", "auth"], {"username": "u"},
     "trunks.carrier-a.auth: missing field 'password'"),
    (["trunks", "carrier-a", "health"], {"probe_interval": 2, "probe_timeout": 3},
     "trunks.carrier-a.health.probe_timeout: must not exceed probe_interval (2), got 3"),
    (["trunks", "carrier-a", "health"], {"down_after": 0},
     "trunks.carrier-a.health.down_after: must be between 1 and 1000, got 0"),
    (["outbound_routes", 0, "group"], "pstm",
     "outbound_routes[0].group: unknown trunk group 'pstm'"),
    (["outbound_routes", 0, "prefix"], 9,
     "outbound_routes[0].prefix: expected a string of digits, got number 9 "
     "(quote numbers in YAML)"),
    (["outbound_routes", 0, "prefix"], "9x",
     "outbound_routes[0].prefix: invalid number '9x' (digits, '+', '*', '#')"),
    (["outbound_routes", 0, "strip"], -1,
     "outbound_routes[0].strip: must be between 0 and 64, got -1"),
    (["outbound_routes", 0, "record"], "yes",
     "outbound_routes[0].record: expected true or false, got string 'yes'"),
    (["outbound_routes", 1], {"prefix": "9", "group": "pstn"},
     "outbound_routes[1].prefix: prefix '9' already routed by outbound_routes[0]"),
    (["trusted_sources"], "127.0.0.1",
     "trusted_sources: expected a list, got string '127.0.0.1'"),
    (["trunk_groups"], ["pstn"],
     "trunk_groups: expected a mapping, got a list"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "message"), ERRORS)
def test_config_errors_name_the_field(path: list[Any], value: Any, message: str) -> None:
    data = base_config()
    if path[0] == "outbound_routes" and path[1] == 1:
        data["outbound_routes"].append(value)
    else:
        data = _mutate(path, value)
    with pytest.raises(TrunkConfigError) as info:
        load_trunks(data, source=SRC)
    assert str(info.value) == f"{SRC}: {message}"
    assert isinstance(info.value, ValueError)
    assert info.value.source == SRC


def test_a_route_records_its_calls_only_when_asked() -> None:
    data = base_config()
    data["outbound_routes"].append({"prefix": "8", "group": "pstn", "record": True})
    plan = load_trunks(data, source=SRC)
    unrecorded = plan.route_outbound("91234", source_ip="127.0.0.1")
    recorded = plan.route_outbound("81234", source_ip="127.0.0.1")
    assert unrecorded is not None and unrecorded.route.record is False
    assert recorded is not None and recorded.route.record is True


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(TrunkConfigError, match=r"^cfg.yaml: expected a mapping, got a list$"):
        load_trunks([], source="cfg.yaml")  # type: ignore[arg-type]


def test_empty_config_is_an_empty_plan() -> None:
    plan = load_trunks({"listen": "0.0.0.0:5060"}, source=SRC)
    assert not plan.trunks and not plan.groups and not plan.routes
    assert plan.route_outbound("91234", source_ip="127.0.0.1") is None


def test_weights_and_explicit_channels_load() -> None:
    data = base_config()
    data["trunks"]["carrier-a"]["spans"] = [{"type": "E1", "channels": 10}, {"channels": 4}]
    data["trunk_groups"]["pstn"] = {
        "strategy": "weighted",
        "trunks": [{"trunk": "carrier-a", "weight": 3}, "carrier-b"],
    }
    plan = load_trunks(data, source=SRC, rng=random.Random(3))
    assert plan.trunks["carrier-a"].capacity == 14
    assert plan.groups["pstn"].weights == (3, 1)
    # gateway IP literal is the default inbound source
    assert plan.match_inbound("127.0.0.1", "123") is plan.trunks["carrier-a"]
