"""The multi-worker node's pure parts: choosing a worker for a message, the front <->
worker framing, RTP port slices, the shared B-channel table, the binding replica."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from callengine.cluster import ReplicaBindings, SharedCaps, rtp_slice, worker_config
from callengine.config import EngineConfig, storage_settings
from callengine.dispatch import (
    FrameReader,
    aor_worker,
    call_id_for,
    call_id_of,
    choose_worker,
    frame,
    pack_control,
    pack_inbound,
    pack_outbound,
    register_aor_of,
    unpack_control,
    unpack_inbound,
    unpack_outbound,
)
from callengine.sip.registrar import Binding
from pri import load_trunks
from pri.channels import SharedChannels, channel_layout


def invite(call_id_line: str, method: str = "INVITE", to: str = "To: <sip:1000@demo>") -> bytes:
    return (
        f"{method} sip:1000@demo SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
        f"From: <sip:a@x>;tag=1\r\n{to}\r\n{call_id_line}\r\nCSeq: 1 {method}\r\n"
        "Content-Length: 4\r\n\r\nCall"
    ).encode()


@pytest.mark.parametrize(
    "line",
    ["Call-ID: abc@h", "call-id:abc@h", "CALL-ID :  abc@h", "i: abc@h", "I:abc@h"],
)
def test_every_spelling_of_call_id_is_read(line: str) -> None:
    assert call_id_of(invite(line)) == b"abc@h"


def test_a_call_id_in_the_body_is_not_read() -> None:
    data = invite("X-Other: 1").replace(b"Call", b"\r\nCall-ID: body")
    assert call_id_of(invite("X-Other: 1")) is None
    assert call_id_of(data) is None


def test_every_message_of_a_call_goes_to_one_worker() -> None:
    msgs = [
        invite("Call-ID: k1@h"),
        invite("i: k1@h", method="ACK"),
        invite("call-id:   k1@h", method="BYE"),
        b"SIP/2.0 200 OK\r\nCall-ID: k1@h\r\nCSeq: 1 INVITE\r\n\r\n",
    ]
    for n in (2, 3, 8):
        assert len({choose_worker(m, n) for m in msgs}) == 1


def test_call_ids_spread_over_workers() -> None:
    seen = [choose_worker(invite(f"Call-ID: {i}-4242@127.0.0.1"), 4) for i in range(4000)]
    for w in range(4):
        assert 800 < seen.count(w) < 1200


def test_register_goes_by_aor_not_call_id() -> None:
    a = invite("Call-ID: one", method="REGISTER", to="To: <sip:100@Demo.Example>")
    b = invite("Call-ID: two", method="REGISTER", to='t: "Bob" <sips:100@demo.example;x=1>')
    assert register_aor_of(a) == register_aor_of(b) == b"100@demo.example"
    for n in (2, 3, 5):
        assert choose_worker(a, n) == choose_worker(b, n) == aor_worker("100@demo.example", n)


def test_garbage_goes_to_worker_zero() -> None:
    assert choose_worker(b"\r\n\r\n", 4) == 0
    assert choose_worker(b"\x00\xff random", 4) == 0


def test_a_worker_makes_call_ids_that_come_back_to_it() -> None:
    for index in range(3):
        for _ in range(20):
            cid = call_id_for(index, 3, "10.0.0.1")
            assert choose_worker(invite(f"Call-ID: {cid}"), 3) == index


def test_data_channel_framing_round_trips() -> None:
    msg = invite("Call-ID: x")
    packed = pack_inbound(msg, ("::1", 5062), "TCP", ("127.0.0.1", 5060))
    assert unpack_inbound(packed) == (msg, ("::1", 5062), "TCP", ("127.0.0.1", 5060))
    assert unpack_outbound(pack_outbound(msg, ("10.0.0.9", 5070), "TLS")) == (
        msg,
        ("10.0.0.9", 5070),
        "TLS",
    )
    control = pack_control(("bind", "100@demo", []))
    assert control[:1] == b"\x00"
    assert unpack_control(control) == ("bind", "100@demo", [])


def test_control_frames_survive_any_split() -> None:
    stream = frame({"a": 1}) + frame(("ack", 7, None)) + frame(b"x" * 100_000)
    for step in (1, 3, 4096, len(stream)):
        reader = FrameReader()
        out = []
        for i in range(0, len(stream), step):
            out += reader.feed(stream[i : i + step])
        assert out == [{"a": 1}, ("ack", 7, None), b"x" * 100_000]


def test_rtp_slices_do_not_overlap_and_stay_even() -> None:
    for workers in (2, 3, 7):
        slices = [rtp_slice(10000, 20000, i, workers) for i in range(workers)]
        assert slices[0][0] == 10000 and slices[-1][1] == 20000
        for (lo, hi), (nlo, _) in zip(slices, slices[1:], strict=False):
            assert lo % 2 == 0 and hi < nlo and nlo == hi + 1


def test_a_worker_gets_its_share_of_the_ports_and_of_the_spool_quota() -> None:
    """The spool quota is the node's disk: 3 workers' spools hold a third each (the
    default quota too); the rest of the storage settings are the node's."""
    node = EngineConfig(media_storage={"spool_quota": 3_000_000, "upload_concurrency": 2})
    mine = worker_config(node, 2, 3)
    assert storage_settings(mine).spool_quota == 1_000_000
    assert storage_settings(mine).upload_concurrency == 2
    assert (mine.rtp_port_min, mine.rtp_port_max) == rtp_slice(10000, 20000, 2, 3)
    assert mine.workers == 1 and mine.metrics is None and mine.admin is None
    default = storage_settings(worker_config(EngineConfig(), 0, 2)).spool_quota
    assert default == storage_settings(EngineConfig()).spool_quota // 2
    assert node.media_storage == {"spool_quota": 3_000_000, "upload_concurrency": 2}


def test_b_channels_are_counted_across_processes(tmp_path: Path) -> None:
    plan = load_trunks(plan_doc(), source="test")
    bases, size = channel_layout({n: t.capacity for n, t in plan.trunks.items()})
    assert size == 53
    path = tmp_path / "channels.map"
    SharedChannels(path, size, owner=0, create=True).close()
    # two workers, each with its own Trunk objects over the same table
    mine = [load_trunks(plan_doc(), source="w") for _ in range(2)]
    tables = [SharedChannels(path, size, owner=i + 1, create=False) for i in range(2)]
    for p, table in zip(mine, tables, strict=True):
        for name, trunk in p.trunks.items():
            trunk.share(table, bases[name])
    t1s = [p.trunks["t1"] for p in mine]
    got = [t1s[i % 2].seize(f"call-{i}") for i in range(30)]
    assert sum(c is not None for c in got) == 23
    assert t1s[0].free == t1s[1].free == 0
    assert mine[0].trunks["e1"].free == 30  # another trunk's slice is untouched
    # a worker dies: its channels come back, the other's stay held
    front = SharedChannels(path, size, owner=0, create=False)
    assert front.reclaim(1) == 12
    assert t1s[1].free == 12
    assert t1s[1].release("call-1") is not None
    assert t1s[0].free == 13
    for table in (*tables, front):
        table.close()


def plan_doc() -> dict[str, object]:
    return {
        "trunks": {
            "t1": {
                "carrier": "A",
                "gateway": {"host": "127.0.0.1", "port": 5070},
                "spans": [{"name": "s1", "type": "T1"}],
            },
            "e1": {
                "carrier": "B",
                "gateway": {"host": "127.0.0.1", "port": 5080},
                "spans": [{"name": "s2", "type": "E1"}],
            },
        }
    }


def binding(contact: str, expires_at: float) -> Binding:
    return Binding.from_dict(
        {"contact": contact, "expires_at": expires_at, "call_id": "c", "cseq": 1}
    )


def test_replica_sends_changes_but_not_its_own_purge() -> None:
    sent: list[object] = []
    replica = ReplicaBindings(sent.append)
    now = time.time()
    live, dead = binding("sip:a@1.1.1.1", now + 60), binding("sip:b@1.1.1.1", now - 1)
    replica.put("100@demo", [live, dead])
    assert len(sent) == 1
    replica.put("100@demo", [live])  # dropping an expired one: every worker does it
    assert len(sent) == 1
    replica.put("100@demo", [])  # an unREGISTER of a live one goes to the front
    assert sent[-1] == ("bind", "100@demo", [])
    replica.apply("200@demo", [live.to_dict()])
    assert replica.get("200@demo") == [live]


def test_node_caps_count_once_for_all_workers(tmp_path: Path) -> None:
    """The shared map's shell (mmap + flock) over the CapsTable core: each worker
    opens its own view; the front gives a dead worker's calls back."""
    path = tmp_path / "caps.map"
    front = SharedCaps(path, slot=0, workers=2, create=True)
    workers = [SharedCaps(path, slot=i, workers=2, create=False) for i in (0, 1)]
    got = [workers[i % 2].admit("node:", 0.0, max_calls=5) for i in range(8)]
    assert got == [None] * 5 + ["calls"] * 3
    assert front.active("node:") == 5
    assert workers[0].refused == {"node:calls": 1} and workers[1].refused == {"node:calls": 2}
    workers[0].release("node:")
    assert workers[1].admit("node:", 0.0, max_calls=5) is None  # the room worker 0 freed
    assert workers[1].admit("node:", 0.0, max_calls=5) == "calls"
    # worker 1 dies holding 3 calls (2 from the first round, 1 now): given back
    assert front.reclaim(1) == 3
    assert front.active("node:") == 2
    assert [workers[0].admit("node:", 0.0, max_calls=5) for _ in range(4)] == [None] * 3 + ["calls"]
    for caps in (front, *workers):
        caps.close()


def test_node_rate_is_one_bucket(tmp_path: Path) -> None:
    path = tmp_path / "caps.map"
    front = SharedCaps(path, slot=0, workers=2, create=True)
    a = SharedCaps(path, slot=0, workers=2, create=False)
    b = SharedCaps(path, slot=1, workers=2, create=False)
    got = [(a if i % 2 else b).admit("source:192.0.2.1", 0.0, cps=4.0) for i in range(6)]
    assert got.count(None) == 4 and got[-1] == "rate"  # a burst of one second, node-wide
    for caps in (front, a, b):
        caps.close()
