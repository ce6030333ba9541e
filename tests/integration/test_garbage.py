"""A call leaves no cyclic garbage (issue "Real time under sustained load", part 1).

A node runs in this process (the real :class:`~callengine.node.Node`: LevelDB, call
logs, the demo IVR, registrar, B2BUA with three SIPp carriers) with the node's
real-time GC policy: automatic collection off, young collections only. Every call
path is then driven from outside over real sockets: answered IVR calls hung up by the
caller, a voicemail left with RFC 4733 DTMF and G.711 audio (SIPp captures), calls
CANCELled while a trunk rings, trunk failover after a 503 and after a setup timeout,
rejected calls (403 toll-fraud guard for a caller at 127.0.0.2, 488 no common codec, 400 bad SDP), REGISTER with
digest (accepted and refused) a call that rings a registered phone and is bridged, and a call from a trunk to
one of its DIDs (a B-channel seized around the tenant's IVR).

Everything a call makes must be freed by reference counting when it ends. After the
calls, and once the transactions have expired (64*T1 = 32 s), the node's full
collection runs (frozen objects included); the garbage it finds, plus what the node's
own young collections found meanwhile, is what the calls left. ``gc.DEBUG_SAVEALL`` keeps it for the failure message (object
types, and which calls' objects they were).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop
from integration.support import (
    OFFER_PCMU,
    SIPP,
    free_port,
    sip_call,
)
from integration.test_ring_user import register

from callengine.config import load_config
from callengine.node import Node
from callengine.sip import transaction, useragent

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sipp"
CAPTURES = Path("/usr/share/sip-tester")

ALLOWANCE = 0
"""Garbage objects the whole run may leave. None today: a cycle anywhere on a call
path fails this test."""


def _config(tmp: Path, fail: int, silent: int, answer: int) -> Path:
    health = "{probe_interval: 30, probe_timeout: 1, down_after: 5, up_after: 1, cool_down: 1}"
    path = tmp / "node.yaml"
    path.write_text(
        f"""
trunks:
  failing: {{carrier: A, gateway: {{host: 127.0.0.1, port: {fail}}}, dids: ["3225550100"], spans: [{{name: a1, type: E1}}], health: {health}}}
  silent: {{carrier: S, gateway: {{host: 127.0.0.1, port: {silent}}}, dids: ["3225550101"], spans: [{{name: s1, type: E1}}], health: {health}}}
  good: {{carrier: B, gateway: {{host: 127.0.0.1, port: {answer}}}, dids: ["3225550102"], spans: [{{name: b1, type: E1}}], health: {health}}}
trunk_groups:
  after-503: {{strategy: priority, trunks: [failing, good], setup_timeout: 2}}
  after-timeout: {{strategy: priority, trunks: [silent, good], setup_timeout: 1}}
  ringing: {{strategy: priority, trunks: [silent], setup_timeout: 10}}
outbound_routes:
  - {{prefix: "9", strip: 1, group: after-503}}
  - {{prefix: "7", strip: 1, group: after-timeout}}
  - {{prefix: "6", strip: 1, group: ringing}}
trusted_sources: [127.0.0.1/32]
"""
    )
    return path


def _uas(scenario: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [SIPP, "-sf", str(FIXTURES / scenario), "-i", "127.0.0.1", "-p", str(port)]
        + ["-mp", str(free_port(both=False)), "-nostdin", "-fd", "1", "-max_socket", "500"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _uac(node_port: int, workdir: Path, *args: str) -> int:
    """SIPp as callers; returns the number of failed calls."""
    stats = workdir / f"stats-{secrets.token_hex(4)}.csv"
    cmd = [SIPP, f"127.0.0.1:{node_port}", "-i", "127.0.0.1", "-p", str(free_port())]
    cmd += ["-mp", str(free_port(both=False)), "-nostdin", "-trace_stat", "-stf", str(stats)]
    cmd += ["-fd", "3600", *args]
    subprocess.run(cmd, cwd=workdir, capture_output=True, timeout=120, check=False)
    lines = [ln for ln in stats.read_text().splitlines() if ln.strip()]
    row = dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))
    return int(row["FailedCall(C)"]) + (
        int(row["TotalCallCreated"]) - int(row["SuccessfulCall(C)"])
    )


def _send_invite(s: socket.socket, node_port: int, number: str, sdp: str) -> tuple[str, str, str]:
    """Send an INVITE from ``s``; returns what its CANCEL and ACK repeat: the
    Request-URI, the Via line and the From/Call-ID/Max-Forwards lines."""
    call_id = secrets.token_hex(8)
    lp = s.getsockname()[1]
    ruri = f"sip:{number}@127.0.0.1:{node_port}"
    via = f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK{call_id};rport\r\n"
    head = (
        f"From: <sip:caller@127.0.0.1:{lp}>;tag=c{call_id}\r\nCall-ID: {call_id}@garbage\r\n"
        "Max-Forwards: 70\r\n"
    )
    s.sendto(
        (
            f"INVITE {ruri} SIP/2.0\r\n{via}{head}To: <{ruri}>\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@127.0.0.1:{lp}>\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
        ).encode(),
        ("127.0.0.1", node_port),
    )
    return ruri, via, head


def _cancelled_call(node_port: int, number: str) -> tuple[int, int]:
    """INVITE, wait for 100, CANCEL after 0.5 s: (CANCEL's status, INVITE's final)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(10)
        ruri, via, head = _send_invite(s, node_port, number, OFFER_PCMU)
        first = s.recv(65535).decode(errors="replace")
        assert first.startswith("SIP/2.0 100"), first
        time.sleep(0.5)
        s.sendto(
            f"CANCEL {ruri} SIP/2.0\r\n{via}{head}To: <{ruri}>\r\nCSeq: 1 CANCEL\r\n"
            "Content-Length: 0\r\n\r\n".encode(),
            ("127.0.0.1", node_port),
        )
        statuses: dict[str, int] = {}
        to = ""
        while len(statuses) < 2:
            reply = s.recv(65535).decode(errors="replace")
            status = int(reply.split()[1])
            method = "CANCEL" if "CANCEL\r\n" in reply else "INVITE"
            if status >= 200:
                statuses[method] = status
                for line in reply.split("\r\n"):
                    if method == "INVITE" and line.lower().startswith("to:"):
                        to = line
        s.sendto(
            f"ACK {ruri} SIP/2.0\r\n{via}{head}{to}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n".encode(),
            ("127.0.0.1", node_port),
        )
    return statuses["CANCEL"], statuses["INVITE"]


def _offer_status(node_port: int, sdp: str) -> int:
    """An INVITE with ``sdp`` to the demo IVR: the final status (ACKed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(10)
        ruri, via, head = _send_invite(s, node_port, "1000", sdp)
        while True:
            reply = s.recv(65535).decode(errors="replace")
            status = int(reply.split()[1])
            if status >= 200:
                break
        to = next(ln for ln in reply.split("\r\n") if ln.lower().startswith("to:"))
        s.sendto(
            f"ACK {ruri} SIP/2.0\r\n{via}{head}{to}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n".encode(),
            ("127.0.0.1", node_port),
        )
    return status


G729_ONLY = OFFER_PCMU.replace("RTP/AVP 0 101", "RTP/AVP 18").replace(
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000", "a=rtpmap:18 G729/8000"
)


async def _drive(tmp: Path, media_process: bool) -> tuple[list[Any], int, dict[str, Any]]:
    fail_port, silent_port, answer_port = (free_port(both=False) for _ in range(3))
    phone_port = free_port(both=False)
    node_port = free_port()
    cfg = load_config(
        _config(tmp, fail_port, silent_port, answer_port),
        listen=[f"127.0.0.1:{node_port}"],
        transports=["UDP"],
        data_dir=str(tmp / "data"),
        metrics=None,
        media_process=media_process,
    )
    workdir = tmp / "sipp"
    workdir.mkdir()
    (workdir / "pcap").symlink_to(CAPTURES)
    peers = [
        _uas("pri_uas_503.xml", fail_port, tmp / "failing"),
        _uas("pri_uas_silent.xml", silent_port, tmp / "silent"),
        _uas("pri_uas_answer.xml", answer_port, tmp / "good"),
    ]
    node = Node(cfg)
    await node.start()
    results: dict[str, Any] = {}
    try:
        run = asyncio.to_thread
        # user 100's phone (a SIPp UAS) registers from its own port, then listens there
        await run(register, node_port, "100", "demo100", phone_port)
        peers.append(_uas("pri_uas_answer.xml", phone_port, tmp / "phone"))
        # First use of every path (codec tables, prompt caches, compiled patterns...)
        # happens before the count starts: those objects live as long as the process.
        await asyncio.gather(
            run(_uac, node_port, workdir, "-sn", "uac", "-d", "100", "-m", "3", "-r", "10"),
            run(sip_call, node_port, "915550000000", hold=0.2),
            run(_offer_status, node_port, G729_ONLY),
        )
        await asyncio.sleep(3)
        # the node's own full collection: frozen objects included (a busy node's
        # ticks freeze most of what they do not collect)
        governor = node.engine.gc
        governor.collect_all()
        stats = governor.stats
        before = sum(stats.collected)
        gc.set_debug(gc.DEBUG_SAVEALL)

        ok = await run(register, node_port, "102", "demo102", free_port(both=False))
        results["register"] = ok.split("\r\n", 1)[0]
        refused = await run(register, node_port, "101", "wrong", free_port(both=False))
        results["register_refused"] = refused.split("\r\n", 1)[0]
        outcome = await asyncio.gather(
            run(_uac, node_port, workdir, "-sn", "uac", "-d", "100", "-m", "60", "-r", "30"),
            run(
                _uac,
                node_port,
                workdir,
                "-sf",
                str(FIXTURES / "ivr_voicemail_short.xml"),
                "-m",
                "1",
            ),
            run(sip_call, node_port, "915551230000", hold=0.3),
            run(sip_call, node_port, "715551230001", hold=0.3),
            run(sip_call, node_port, "915551230002", source="127.0.0.2"),
            run(_cancelled_call, node_port, "615551230003"),
            run(_offer_status, node_port, G729_ONLY),
            run(_offer_status, node_port, "v=0\r\nnot sdp\r\n"),
            run(sip_call, node_port, "1001", hold=0.3),
            run(sip_call, node_port, "3225550100", hold=0.3),
        )
        results.update(
            ivr_failed=outcome[0],
            voicemail_failed=outcome[1],
            after_503=outcome[2].status,
            after_timeout=outcome[3].status,
            untrusted=outcome[4].status,
            cancelled=outcome[5],
            no_codec=outcome[6],
            bad_sdp=outcome[7],
            ring_group=outcome[8].status,
            from_trunk=outcome[9].status,
        )
        # Transactions hold their last messages for 64*T1 (retransmissions): the calls'
        # objects are released only then (T1 is 0.1 s here, see the test).
        deadline = time.monotonic() + 60
        engine = node.engine
        while (engine.calls or len(engine.ua.transactions)) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        results["idle"] = not engine.calls and not len(engine.ua.transactions)
        results["ended"] = dict(engine.results)
        governor.collect_all()
        found = sum(stats.collected) - before
        garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        await node.stop(1.0)
        for peer in peers:
            peer.kill()
            peer.wait()
    return garbage, found, results


def _cycle(garbage: list[Any], start: Any) -> str:
    """One reference cycle through ``start`` among ``garbage`` (shortest, by BFS)."""
    inside = {id(o) for o in garbage}
    parent: dict[int, Any] = {id(start): None}
    queue = collections.deque([start])
    while queue:
        obj = queue.popleft()
        for ref in gc.get_referents(obj):
            if ref is start:
                path = [obj]
                while parent[id(path[-1])] is not None:
                    path.append(parent[id(path[-1])])
                return " -> ".join(_name(o) for o in reversed(path)) + " -> (start)"
            if id(ref) in inside and id(ref) not in parent:
                parent[id(ref)] = obj
                queue.append(ref)
    return f"{_name(start)}: no cycle back to it"


def _name(obj: Any) -> str:
    if isinstance(obj, dict):
        return "dict(" + ",".join(map(str, list(obj)[:5])) + ")"
    qualname = getattr(obj, "__qualname__", None)
    if callable(obj) and qualname:
        return f"{type(obj).__name__} {qualname}"
    return type(obj).__qualname__


def _describe(garbage: list[Any]) -> str:
    types = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage)
    callees = collections.Counter(
        getattr(o, "callee", "?") for o in garbage if type(o).__name__ in ("Call", "_Leg")
    )
    lines = [f"{n:6d} {name}" for name, n in types.most_common(25)]
    lines.append(f"calls by callee: {dict(callees)}")
    seen: set[str] = set()
    for obj in garbage:
        kind = type(obj).__qualname__
        if (
            kind in ("Call", "_Leg", "InviteSession", "RtpSession", "Task", "Timer")
            and kind not in seen
        ):
            seen.add(kind)
            lines.append(_cycle(garbage, obj))
    return "\n".join(lines)


@pytest.mark.parametrize("media_process", [False, True], ids=["inline-media", "media-plane"])
def test_calls_leave_no_cyclic_garbage(
    tmp_path: Path, media_process: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # T1 0.1 s instead of 0.5 and Timer D 6.4 s instead of 32: transactions end 6.4 s
    # after their last message, not 32 s (the garbage is what is left after they end);
    # every setup timer here is shorter than that
    for module in (transaction, useragent):
        monkeypatch.setattr(module, "T1", 0.1)
    monkeypatch.setattr(transaction, "TIMER_D", 6.4)
    garbage, found, results = uvloop.run(_drive(tmp_path, media_process))
    # every path really ran, and as it should
    assert results["register"] == "SIP/2.0 200 OK"
    assert results["register_refused"].startswith("SIP/2.0 401")
    assert results["ivr_failed"] == 0 and results["voicemail_failed"] == 0
    assert results["after_503"] == 200
    assert results["after_timeout"] == 200
    assert results["untrusted"] == 403
    assert results["cancelled"] == (200, 487)
    assert results["no_codec"] == 488
    assert results["bad_sdp"] == 400
    assert results["ring_group"] == 200
    assert results["from_trunk"] == 200
    assert results["idle"], "the node still held calls or transactions after 60 s"
    # every call placed by a caller ended once in callengine_calls, bridged ones too
    # (a B2BUA's legs are not calls of their own): 5 warm-up calls, then 69
    assert sum(results["ended"].values()) == 74, results["ended"]
    assert found <= ALLOWANCE, f"{found} objects in reference cycles:\n{_describe(garbage)}"
