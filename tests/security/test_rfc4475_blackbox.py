"""RFC 4475 over UDP against a running `callengine serve` (demo configuration): every
torture message of the corpus, sent as it is, gets the answer the RFC asks for, or is
dropped where it says so; plus the probe's hostile OPTIONS (malformed From, RFC 2543
branch) that got no reply at all.

The peer sends from its own loopback address (127.x.y.z) so that it can listen on the
ports the messages' Via headers name: without rport the node answers to the received
address and the sent-by port (RFC 3261 §18.2.2: 5060, or 5050 for quotbal), and with
rport (mpart01) to the source port. Both are sockets of this test, so whichever rule
the node follows, the answer is seen.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from integration.support import Daemon, start_daemon

from callengine.dispatch import choose_worker
from callengine.sip.errors import RemoteProtocolError
from callengine.sip.message import Request, parse_message

pytestmark = pytest.mark.integration

CORPUS = next(
    p
    for p in (
        Path(__file__).resolve().parents[3] / "shared/conformance/rfc4475",
        Path("/work/shared/conformance/rfc4475"),
    )
    if p.is_dir()
)
MANIFEST: list[dict[str, object]] = json.loads((CORPUS / "manifest.json").read_text())
FILES = [str(m["file"]) for m in MANIFEST]

# What the node answers. An int: that final status. "parsed": a valid request whose
# answer depends on the demo's routing or registrar (404, 401 ...), never a 400 and never
# a 5xx. None: dropped (responses the node did not ask for, a response code above 699).
PARSED = "parsed"
EXPECT: dict[str, int | str | None] = {
    # 3.1.1 valid messages
    "wsinv.dat": 481,  # a To tag for a dialog the node does not have
    "intmeth.dat": 501,
    "esc01.dat": PARSED,
    "escnull.dat": PARSED,
    "esc02.dat": 501,
    "lwsdisp.dat": 200,
    "longreq.dat": PARSED,
    "dblreq.dat": PARSED,
    "semiuri.dat": 200,
    "transports.dat": 200,
    "mpart01.dat": 405,
    "unreason.dat": None,
    "noreason.dat": None,
    # 3.1.2 invalid messages
    "badinv01.dat": 400,
    "clerr.dat": 400,
    "ncl.dat": 400,
    "scalar02.dat": 400,
    "scalarlg.dat": None,
    "quotbal.dat": 400,
    "ltgtruri.dat": 400,
    "lwsruri.dat": 400,
    "lwsstart.dat": 400,
    "trws.dat": 400,
    "escruri.dat": 400,
    "baddate.dat": 400,
    "regbadct.dat": 400,
    "badaspec.dat": 400,
    "baddn.dat": 400,
    "badvers.dat": 505,
    "mismatch01.dat": 400,
    "mismatch02.dat": 501,
    "bigcode.dat": None,
    # 3.2 transaction layer
    "badbranch.dat": 400,
    # 3.3 application layer
    "insuf.dat": 400,
    "unkscm.dat": 416,
    "novelsc.dat": 416,
    "unksm2.dat": 400,
    "bext01.dat": 420,
    "invut.dat": 415,
    "regaut01.dat": PARSED,
    "multi01.dat": 400,
    "mcl01.dat": 400,
    "bcast.dat": None,
    "zeromf.dat": 200,
    "cparam01.dat": PARSED,
    "cparam02.dat": PARSED,
    "regescrt.dat": PARSED,
    "sdp01.dat": 406,
    # 3.4 backward compatibility
    "inv2543.dat": PARSED,
}

_CALL_ID = re.compile(rb"\r\n(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]*)", re.I)


def call_id_of(data: bytes) -> bytes | None:
    m = _CALL_ID.search(data)
    return m.group(1).strip() if m else None


@dataclass
class Reply:
    status: int
    reason: str
    data: bytes
    port: int  # the peer port it arrived at


class Peer:
    """A SIP peer on 127.x.y.z with sockets on the ports the corpus's Vias name."""

    def __init__(self, node_port: int) -> None:
        self.node = ("127.0.0.1", node_port)
        rng = random.Random()
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            # another program may hold 5060 on the wildcard address for a moment
            self.host = f"127.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(2, 254)}"
            socks = []
            try:
                for port in (5060, 5050):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    socks.append(s)
                    s.bind((self.host, port))
            except OSError:
                for s in socks:
                    s.close()
                time.sleep(0.05)
                continue
            self.socks = socks
            self.probes = 0
            return
        raise RuntimeError("no free loopback address for the peer")

    def close(self) -> None:
        for s in self.socks:
            s.close()

    def send(self, data: bytes) -> None:
        self.socks[0].sendto(data, self.node)

    def recv(self, until: float) -> Iterator[tuple[bytes, int]]:
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select(self.socks, [], [], left)
            for s in ready:
                yield s.recv(65535), s.getsockname()[1]

    def options(self, *, from_: str, branch: str, tag: str = "", beside: bytes = b"") -> bytes:
        """An OPTIONS; with ``beside``, one a multi-worker node's front hands to the same
        worker as that message (whatever the node's worker count, up to 8), so that it
        is answered after it."""
        self.probes += 1
        for attempt in itertools.count():
            probe = (
                f"OPTIONS sip:ping@127.0.0.1:{self.node[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.host}:5060;branch={branch}\r\n"
                f"From: {from_}{tag}\r\nTo: <sip:ping@127.0.0.1>\r\n"
                f"Call-ID: probe{self.probes}.{attempt}-{self.host}\r\nCSeq: 1 OPTIONS\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            if not beside or all(
                choose_worker(probe, n) == choose_worker(beside, n) for n in range(2, 9)
            ):
                return probe
        raise AssertionError("unreachable")

    def exchange(self, data: bytes, *, final: bool, timeout: float = 10.0) -> list[Reply]:
        """Send ``data``; collect the responses to it until a final one arrived (``final``)
        or, for messages answered at once or dropped, until an OPTIONS sent right after it
        is answered (a process handles one socket's datagrams in order; a multi-worker
        node's front keeps that order per worker, so the OPTIONS goes to ``data``'s)."""
        call_id = call_id_of(data)
        self.send(data)
        probe = None
        if not final:
            probe = self.options(
                from_=f"<sip:probe@{self.host}>",
                tag=";tag=p",
                branch=f"z9hG4bK-probe{self.probes + 1}",
                beside=data,
            )
            self.send(probe)
        probe_id = call_id_of(probe) if probe else None
        replies: list[Reply] = []
        done = False
        deadline = time.monotonic() + timeout
        while not done:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing conclusive within {timeout} s; got {replies}")
            for got, port in self.recv(deadline):
                if not got.startswith(b"SIP/2.0 "):
                    continue  # e.g. a BYE after an unacknowledged 200
                got_id = call_id_of(got)
                if probe_id is not None and got_id == probe_id:
                    done = True
                    break
                if got_id is not None and call_id is not None and got_id != call_id:
                    continue  # a retransmission of an earlier answer
                status = int(got[8:11])
                reason = got.split(b"\r\n", 1)[0][12:].decode("utf-8", "replace")
                replies.append(Reply(status, reason, got, port))
                if final and status >= 200:
                    done = True
                    break
        # what was sent before the conclusive datagram is already queued on loopback,
        # possibly on the other socket: read it without waiting
        for got, port in self.recv(time.monotonic() + 0.001):
            got_id = call_id_of(got)
            if got.startswith(b"SIP/2.0 ") and (got_id == call_id or got_id is None):
                status = int(got[8:11])
                reason = got.split(b"\r\n", 1)[0][12:].decode("utf-8", "replace")
                replies.append(Reply(status, reason, got, port))
        return replies


def _transaction_key(data: bytes) -> tuple[object, ...] | None:
    """Several corpus messages share a branch and sent-by (``z9hG4bKkdjuw`` from
    ``host5.example.com`` ...): sent to one node within 32 s, the second is rightly a
    retransmission of the first's transaction (RFC 3261 §17.2.3)."""
    try:
        msg = parse_message(data)
    except RemoteProtocolError:
        return None  # answered statelessly
    if not isinstance(msg, Request) or not msg.vias:
        return None
    via = msg.vias[0]
    return (via.branch, via.host, via.port, msg.cseq_method)


def _groups() -> dict[str, int]:
    """Corpus file -> the node it is sent to: no two messages of one node share a key."""
    keys: list[set[tuple[object, ...]]] = []
    out: dict[str, int] = {}
    for name in FILES:
        key = _transaction_key((CORPUS / name).read_bytes())
        index = next((i for i, seen in enumerate(keys) if key not in seen), len(keys))
        if index == len(keys):
            keys.append(set())
        if key is not None:
            keys[index].add(key)
        out[name] = index
    return out


GROUP = _groups()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Daemon]]:
    started: dict[int, Daemon] = {}

    yield started
    for daemon in started.values():
        daemon.stop(signal.SIGKILL)  # answered INVITEs are never ACKed: no drain to wait for


@pytest.fixture
def node_for(
    nodes: dict[int, Daemon], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[int], Daemon]:
    def get(index: int) -> Daemon:
        if index not in nodes:
            nodes[index] = start_daemon(tmp_path_factory.mktemp(f"rfc4475-{index}"))
        return nodes[index]

    return get


@pytest.fixture
def node(node_for: Callable[[int], Daemon]) -> Daemon:
    return node_for(0)


@pytest.fixture
def peer(node: Daemon) -> Iterator[Peer]:
    p = Peer(node.port)
    yield p
    p.close()


def _is_invite(data: bytes) -> bool:
    return data.startswith(b"INVITE ")


@pytest.mark.parametrize("name", FILES)
def test_corpus_message_over_udp(node_for: Callable[[int], Daemon], name: str) -> None:
    node = node_for(GROUP[name])
    peer = Peer(node.port)
    try:
        check_message(node, peer, name)
    finally:
        peer.close()


def check_message(node: Daemon, peer: Peer, name: str) -> None:
    data = (CORPUS / name).read_bytes()
    want = EXPECT[name]
    meta = next(m for m in MANIFEST if m["file"] == name)
    # a valid INVITE is answered by a call handler (a task): wait for its final response
    replies = peer.exchange(data, final=_is_invite(data) and want == PARSED)
    finals = [r for r in replies if r.status >= 200]
    if want is None:
        assert replies == [], f"{name}: {meta['rfc_says']}"
        return
    assert len(finals) == 1, f"{name}: {[r.status for r in replies]} -- {meta['rfc_says']}"
    got = finals[0]
    if want == PARSED:
        assert got.status < 500 and not (got.status == 400 or got.reason.startswith("Bad")), (
            f"{name} is valid: {got.status} {got.reason}"
        )
    else:
        assert got.status == want, f"{name}: {got.status} {got.reason} -- {meta['rfc_says']}"
    if got.status == 400:
        assert got.reason.startswith("Bad Request - "), got.reason  # names the fault
    assert node.proc.poll() is None


def test_quotbal_400_names_the_quote(node: Daemon, peer: Peer) -> None:
    [reply] = peer.exchange((CORPUS / "quotbal.dat").read_bytes(), final=False)
    assert reply.reason == "Bad Request - unterminated quoted display name in To"
    # RFC 3261 §18.2.2 sends it to the received address and the Via's sent-by port
    # (5050): the probe, listening only on its source port, saw nothing. Symmetric
    # routing (RFC 3581 for everyone, against reflection) would use the source port.
    assert reply.port in (5050, 5060)


@pytest.mark.parametrize(
    ("from_", "branch"),
    [
        ("<sip:a@127.0.0.1>Jtag=1", "z9hG4bK-jtag"),
        ("<sip:a@127.0.0.1>Jtag=1", "rfc2543-branch-1"),  # RFC 2543: no magic cookie
        ("<sip:a@127.0.0.1>;tag=1", "rfc2543-branch-2"),
        ('"unterminated <sip:a@127.0.0.1>;tag=1', "1234"),
    ],
)
def test_hostile_options_get_an_answer(node: Daemon, peer: Peer, from_: str, branch: str) -> None:
    replies = peer.exchange(peer.options(from_=from_, branch=branch), final=True)
    [reply] = replies
    if "Jtag" in from_ or "unterminated" in from_:
        assert reply.status == 400 and "From" in reply.reason, reply.reason
    else:
        assert reply.status == 200
    assert f";branch={branch}".encode() in reply.data


def test_nodes_logged_no_traceback(nodes: dict[int, Daemon]) -> None:
    """Runs last in this module: nothing sent above made a node log a traceback."""
    assert nodes, "the tests above started the nodes"
    for daemon in nodes.values():
        log = daemon.log()
        for bad in ("Traceback", "Unhandled exception", "call handler failed", "internal error"):
            assert bad not in log, log[-3000:]
