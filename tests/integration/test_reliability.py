"""Reliability of `callengine serve` (issue #5): nothing lost, offline mode, damage.

Everything here is real: the daemon runs as a subprocess on its LevelDB data
directory, SecantusDB (the test-only MongoDB wire server) runs as its own process
on loopback TCP with its data on disk, and SIPp places the calls. The tests read
only what an operator could observe: documents in the History DB, the daemon's
log lines and exit codes, its /metrics, and `callengine logs|config` output.

How the Call-IDs of SIPp's calls are known: SIPp names call N of process P
``N-P@127.0.0.1``; for the kill test SIPp also writes every message it sends and
receives (``-trace_msg``), from which we read, per Call-ID, the INVITE sent, the
200 OK to it, the 200 OK to SIPp's BYE and any BYE the node sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from integration.support import CALLENGINE, ROOT, SIPP, Daemon, free_port
from pymongo import MongoClient

pytestmark = pytest.mark.integration

TENANTS = ROOT / "tests" / "fixtures" / "tenants"
SECANTUSD = str(Path(sys.executable).with_name("secantusd-py"))
#: The tenant of tests/fixtures/tenants/reliability_*.yaml and its IVR number.
TENANT = "rel"
NUMBER = "5550100"
#: Follower settings for the offline tests: poll (and retry) every second.
POLL = 1.0

DaemonFactory = Callable[..., Daemon]


# --------------------------------------------------------------------- helpers
def wait_for(what: str, predicate: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


class Secantus:
    """A SecantusDB server process: restartable on the same port and storage."""

    def __init__(self, tmp: Path, name: str, *, port: int | None = None) -> None:
        self.storage = tmp / name
        self.port = port or free_port(socket.SOCK_STREAM, both=False)
        self.log_path = tmp / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, timeout: float = 20.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting (see :func:`start_all`)."""
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [
                    SECANTUSD,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--storage-path",
                    str(self.storage),
                    "--log-level",
                    "WARNING",
                ],
                stdout=logf,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"SecantusDB exited:\n{self.log_path.read_text()}")
            try:
                with self.client(0.3) as c:
                    c.admin.command("ping")
                return
            except Exception:
                time.sleep(0.1)
        raise AssertionError(f"SecantusDB not up on port {self.port}")

    def stop(self) -> None:
        """Stop cleanly (SIGTERM: acknowledged writes are on disk)."""
        self.terminate()
        self.reap()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def reap(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def client(self, timeout: float = 5.0) -> MongoClient[dict[str, Any]]:
        return MongoClient(self.url, serverSelectionTimeoutMS=int(timeout * 1000))


@pytest.fixture
def secantus(tmp_path: Path) -> Iterator[Callable[..., Secantus]]:
    """Make SecantusDB servers (not started); all are stopped after the test."""
    made: list[Secantus] = []

    def make(name: str, *, port: int | None = None) -> Secantus:
        server = Secantus(tmp_path, name, port=port)
        made.append(server)
        return server

    yield make
    for server in made:
        server.terminate()
    for server in made:
        server.reap()


def start_all(*servers: Secantus) -> None:
    """Start servers side by side (each takes seconds, mostly imports)."""
    for server in servers:
        server.launch()
    for server in servers:
        server.wait_ready()


def calls_in(history: Secantus, database: str = "callengine") -> dict[str, dict[str, Any]]:
    with history.client() as c:
        return {str(doc["_id"]): doc for doc in c[database]["calls"].find()}


def count_and_distinct(history: Secantus, database: str = "callengine") -> tuple[int, int]:
    with history.client() as c:
        coll = c[database]["calls"]
        return coll.count_documents({}), len(coll.distinct("_id"))


def ivr_nodes(doc: dict[str, Any]) -> list[str]:
    """The IVR nodes a call went through, in order (from its call log)."""
    return [str(e["node"]) for e in doc.get("ivr_path", []) if e.get("event") == "step"]


def flow_of(doc: dict[str, Any]) -> str:
    """Which revision of the tenant's flow a call ran: its nodes are named
    ``<node>_v<N>`` and it must start at ``greet_v<N>``."""
    nodes = ivr_nodes(doc)
    assert nodes and nodes[0].startswith("greet_"), nodes
    versions = {n.rpartition("_")[2] for n in nodes}
    assert len(versions) == 1, nodes
    return versions.pop()


def metric(daemon: Daemon, sample: str) -> float | None:
    """The value of one /metrics sample (``name`` or ``name{labels}``), or None."""
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=3) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


def log_lines(daemon: Daemon, needle: str) -> list[str]:
    return [line for line in daemon.log().splitlines() if needle in line]


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CALLENGINE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def outbox_rows(data_dir: Path) -> list[dict[str, Any]]:
    """`callengine logs --json` of a stopped node: shipped ring, then the outbox."""
    out = cli("logs", "--data-dir", str(data_dir), "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def write_config(tmp: Path, **cache: Any) -> Path:
    path = tmp / f"node-{len(list(tmp.glob('node-*.yaml')))}.yaml"
    path.write_text(json.dumps({"config_cache": cache}))  # JSON is YAML
    return path


# ------------------------------------------------------------------------ SIPp
@dataclass
class SippRun:
    returncode: int
    pid: int
    stats: dict[str, str]
    stderr: str
    trace: Path | None

    @property
    def call_ids(self) -> set[str]:
        """Call-IDs of every call SIPp created (SIPp numbers calls from 1)."""
        total = int(self.stats["TotalCallCreated"])
        return {f"{n}-{self.pid}@127.0.0.1" for n in range(1, total + 1)}


class Sipp:
    """One SIPp UAC process (``-sn uac``) against a daemon."""

    def __init__(self, tmp: Path, daemon: Daemon, *args: str, trace: bool = False) -> None:
        stamp = int(time.monotonic() * 1e6)
        self.stat_file = tmp / f"sipp-{stamp}.csv"
        self.trace = tmp / f"sipp-{stamp}-messages.log" if trace else None
        cmd = [SIPP, "-sn", "uac", daemon.address, "-i", "127.0.0.1", "-p", str(free_port())]
        cmd += [*args, "-nostdin", "-trace_stat", "-stf", str(self.stat_file), "-fd", "3600"]
        if self.trace is not None:
            cmd += ["-trace_msg", "-message_file", str(self.trace)]
        self.proc = subprocess.Popen(
            cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def wait(self, timeout: float = 90.0) -> SippRun:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"SIPp still running after {timeout} s") from None
        text = self.stat_file.read_text() if self.stat_file.exists() else ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) < 2:
            raise AssertionError(f"SIPp wrote no statistics: {err.decode(errors='replace')}")
        header = lines[0].rstrip(";").split(";")
        last = lines[-1].rstrip(";").split(";")
        stats = dict(zip(header, last, strict=False))
        return SippRun(
            self.proc.returncode, self.proc.pid, stats, err.decode(errors="replace"), self.trace
        )


def one_call(tmp: Path, daemon: Daemon, number: str = NUMBER) -> str:
    """Place one call (answered, 300 ms, SIPp hangs up); return its Call-ID."""
    run = Sipp(tmp, daemon, "-s", number, "-m", "1", "-d", "300", "-recv_timeout", "8000").wait(30)
    assert run.returncode == 0 and run.stats["SuccessfulCall(C)"] == "1", run.stderr
    (call_id,) = run.call_ids
    return call_id


@dataclass
class SipTrace:
    """What SIPp saw, per Call-ID, read from its ``-trace_msg`` file."""

    invited: set[str] = field(default_factory=set)
    #: got a 200 OK to the INVITE (the node answered)
    answered: set[str] = field(default_factory=set)
    #: got a 200 OK to SIPp's BYE -> Unix time of that 200 (the call completed)
    completed: dict[str, float] = field(default_factory=dict)
    #: received a BYE from the node (the node hung up)
    node_bye: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, path: Path) -> SipTrace:
        out = cls()
        for block in path.read_text(errors="replace").split("-" * 47 + " ")[1:]:
            lines = block.splitlines()
            when = datetime.strptime(lines[0].strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            sent = "message sent" in lines[1]
            sip = [ln.strip() for ln in lines[2:] if ln.strip()]
            start = sip[0]
            headers: dict[str, str] = {}
            for ln in sip[1:]:
                name, sep, value = ln.partition(":")
                if sep:
                    headers.setdefault(name.strip().lower(), value.strip())
            call_id = headers["call-id"]
            method = headers["cseq"].split()[-1]
            if sent and start.startswith("INVITE "):
                out.invited.add(call_id)
            elif not sent and start.startswith("SIP/2.0 200") and method == "INVITE":
                out.answered.add(call_id)
            elif not sent and start.startswith("SIP/2.0 200") and method == "BYE":
                out.completed.setdefault(call_id, when)
            elif not sent and start.startswith("BYE "):
                out.node_bye.add(call_id)
        return out


# ======================================================================= tests
def test_history_down_for_a_whole_1000_call_run(
    tmp_path: Path, daemon_factory: DaemonFactory, secantus: Callable[..., Secantus]
) -> None:
    """1,000 calls while the History DB is down, then it starts: every call log
    arrives exactly once and the outbox empties."""
    history = secantus("history")  # port chosen, nothing listening yet
    node = daemon_factory("--history", history.url, metrics=True)

    run = Sipp(
        tmp_path, node, "-r", "100", "-m", "1000", "-d", "100", "-recv_timeout", "10000"
    ).wait(120)
    assert run.returncode == 0, run.stderr
    assert run.stats["SuccessfulCall(C)"] == "1000", run.stats
    assert run.stats["FailedCall(C)"] == "0", run.stats

    # All 1,000 logs are held locally while the History DB is down.
    wait_for(
        "1000 final logs in the outbox", lambda: metric(node, "callengine_outbox_depth") == 1000, 10
    )
    assert metric(node, "callengine_outbox_open_calls") == 0
    assert (metric(node, "callengine_history_ship_failures_total") or 0) >= 1
    assert log_lines(node, "History DB unavailable, keeping call logs in the outbox")

    history.start()
    wait_for(
        "the outbox to drain into the History DB",
        lambda: (
            metric(node, "callengine_outbox_depth") == 0
            and count_and_distinct(history) == (1000, 1000)
        ),
        60,
        step=0.5,
    )
    docs = calls_in(history)
    assert set(docs) == run.call_ids  # exactly SIPp's 1,000 Call-IDs, no others
    assert {d["result"] for d in docs.values()} == {"completed"}
    assert not any(d["interrupted"] for d in docs.values())
    assert metric(node, "callengine_history_shipped_total") == 1000
    assert log_lines(node, "History DB available again; shipping the outbox")

    assert node.stop() == 0
    rows = outbox_rows(node.data_dir)
    assert [r for r in rows if r["state"] != "shipped"] == []  # outbox empty
    assert {r["call_id"] for r in rows} == run.call_ids  # the shipped ring holds them all
    assert count_and_distinct(history) == (1000, 1000)  # no resend after the stop


def test_kill_9_mid_run_loses_no_call_log(
    tmp_path: Path, daemon_factory: DaemonFactory, secantus: Callable[..., Secantus]
) -> None:
    """`kill -9` of the daemon while calls are up, restart on the same data dir.

    Sets (Call-IDs): INV = INVITEs SIPp sent, ANS = got a 200 to the INVITE,
    DONE = got a 200 to SIPp's BYE, NBYE = the node sent SIPp a BYE; D = documents
    in the History DB, I = those marked interrupted. What is asserted, and why
    it is exact rather than statistical:

    * count == distinct _id == |D| and D <= INV: one document per call, none invented.
    * ANS <= D: the "open" record is fsynced before the 200 OK leaves, so every
      call SIPp saw answered has a log, whether the kill cut it or not; and
      D - ANS <= I (a record whose 200 never reached SIPp was cut by the kill).
    * D - I <= DONE | NBYE, all "completed": a final record is written only when
      a live node ended the call, and a live node tells SIPp (200 to its BYE, or
      its own BYE).
    * ANS - DONE - NBYE <= I: answered, never ended as SIPp saw it -> cut by the
      kill -> recovered at restart as result "interrupted", interrupted: true.
    * I & DONE only within 0.5 s before the kill: the node answers a BYE before
      its final record is group-committed, so a BYE answered just before the
      kill leaves an open record (the call is logged once, as interrupted).
    * The kill really was mid-run: calls completed before it, calls were cut
      by it, and calls completed after the restart.
    """
    history = secantus("history")
    history.start()
    data_dir = tmp_path / "data"
    first = daemon_factory("--history", history.url, data_dir=data_dir)

    sipp = Sipp(
        tmp_path,
        first,
        *("-r", "20", "-m", "100", "-d", "2000", "-l", "100", "-recv_timeout", "8000"),
        trace=True,
    )
    # Kill once the first calls are complete and shipped: at 20 calls/s lasting
    # 2 s, about 40 are up at that moment and about 50 are still to come.
    wait_for("10 completed calls", lambda: count_and_distinct(history)[0] >= 10, 30, step=0.05)
    killed_at = time.time()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(5)
    second = daemon_factory(
        "--history", history.url, port=first.port, data_dir=data_dir, metrics=True
    )
    run = sipp.wait(90)
    assert run.trace is not None
    seen = SipTrace.parse(run.trace)
    assert int(run.stats["SuccessfulCall(C)"]) == len(seen.completed)  # trace agrees with SIPp
    assert seen.invited == run.call_ids

    wait_for(
        "the restarted node to ship every log",
        lambda: (
            metric(second, "callengine_outbox_depth") == 0
            and metric(second, "callengine_outbox_open_calls") == 0
            and count_and_distinct(history)[0] >= len(seen.answered)
        ),
        30,
        step=0.5,
    )
    docs = calls_in(history)
    count, distinct = count_and_distinct(history)
    interrupted = {cid for cid, d in docs.items() if d["interrupted"]}
    done = set(seen.completed)

    assert count == distinct == len(docs)
    assert set(docs) <= seen.invited
    assert seen.answered <= set(docs), seen.answered - set(docs)
    assert set(docs) - seen.answered <= interrupted  # answered, killed before the 200 left
    assert set(docs) - interrupted <= done | seen.node_bye
    assert {docs[c]["result"] for c in set(docs) - interrupted} <= {"completed"}
    assert seen.answered - done - seen.node_bye <= interrupted
    for cid in interrupted:
        doc = docs[cid]
        assert doc["result"] == "interrupted" and doc["end_time"] >= doc["start_time"], doc
    late = {c: seen.completed[c] - killed_at for c in interrupted & done}
    assert all(t > -0.5 for t in late.values()), late

    assert interrupted, "the kill cut no call"
    assert any(t < killed_at for t in seen.completed.values()), "no call completed before the kill"
    assert any(t > killed_at for t in seen.completed.values()), "no call completed after restart"
    (line,) = log_lines(second, "left open by the previous run as interrupted")
    found = re.search(r"closed (\d+) call logs", line)
    assert found is not None, line
    recovered = int(found.group(1))
    # >=: a recovered Call-ID whose INVITE retransmission the new node answered
    # is then logged (once) as the completed call it became.
    assert recovered >= len(interrupted)


class Link:
    """The network between the node and the master: a TCP relay to
    ``upstream_port``. :meth:`cut` drops every connection and closes new ones
    at once (a partition); :meth:`restore` heals it at a known instant."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            if self._cut.is_set():
                conn.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=1)
            except OSError:
                conn.close()  # master down: the node sees the connection drop
                continue
            up.settimeout(None)
            with self._lock:
                self._open += [conn, up]
            for src, dst in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self.cut()
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def link() -> Iterator[Callable[[int], Link]]:
    made: list[Link] = []

    def make(upstream_port: int) -> Link:
        made.append(Link(upstream_port))
        return made[-1]

    yield make
    for item in made:
        item.close()


def test_master_down_calls_use_the_cache_and_catch_up(
    tmp_path: Path,
    daemon_factory: DaemonFactory,
    secantus: Callable[..., Secantus],
    link: Callable[[int], Link],
) -> None:
    """Master down: the tenant's IVR still answers from the LevelDB cache (also
    across a node restart); a flow changed on the master while the node cannot
    reach it is in effect within one poll interval of the link coming back."""
    master = secantus("master")
    history = secantus("history")
    start_all(master, history)
    net = link(master.port)  # the node reaches the master through this link
    pushed = cli("config", "push", str(TENANTS / "reliability_v1.yaml"), "--master", master.url)
    assert (pushed.returncode, pushed.stdout) == (0, "pushed tenant rel rev 1\n"), pushed.stderr

    config = write_config(tmp_path, poll_interval=POLL, timeout=1)
    args = ("--config", str(config), "--master", net.url, "--history", history.url)
    node = daemon_factory(*args, metrics=True)
    assert log_lines(node, "tenant 'rel' rev 1 applied (from master)")
    assert metric(node, "callengine_config_offline") == 0

    master.stop()  # the master Configuration DB goes down
    offline = "master Configuration DB unreachable: OFFLINE, serving 1 cached tenant(s)"
    wait_for("the node to go offline", lambda: log_lines(node, offline), 10)
    assert metric(node, "callengine_config_offline") == 1
    call = one_call(tmp_path, node)
    doc = wait_for("the call log", lambda: calls_in(history).get(call), 10)
    assert (doc["tenant"], doc["did"], flow_of(doc)) == (TENANT, NUMBER, "v1"), doc

    # The cache is on disk: a node restarted while the master is down serves it.
    assert node.stop() == 0
    node = daemon_factory(*args, metrics=True)
    assert log_lines(node, offline)
    call = one_call(tmp_path, node)
    doc = wait_for("the call log", lambda: calls_in(history).get(call), 10)
    assert flow_of(doc) == "v1", doc["ivr_path"]

    # The master comes back, but not for the node: the flow changes meanwhile.
    net.cut()
    master.start()
    pushed = cli("config", "push", str(TENANTS / "reliability_v2.yaml"), "--master", master.url)
    assert (pushed.returncode, pushed.stdout) == (0, "pushed tenant rel rev 2\n"), pushed.stderr
    time.sleep(POLL)
    assert metric(node, 'callengine_config_tenant_rev{tenant="rel"}') == 1
    assert metric(node, "callengine_config_offline") == 1

    net.restore()
    back = time.monotonic()
    wait_for(
        "rev 2 in the node's cache",
        lambda: metric(node, 'callengine_config_tenant_rev{tenant="rel"}') == 2,
        10,
        step=0.05,
    )
    caught_up = time.monotonic() - back
    # Offline, the follower retries every poll interval; a retry in flight
    # finds the server at pymongo's next check (0.5 s minimum heartbeat).
    assert caught_up <= POLL + 0.5 + 0.5, f"caught up {caught_up:.2f} s after the link came back"
    assert metric(node, "callengine_config_offline") == 0
    assert log_lines(node, "master Configuration DB reachable: ONLINE after")
    assert log_lines(node, "tenant 'rel' rev 2 applied (from master)")
    call = one_call(tmp_path, node)
    doc = wait_for("the call log", lambda: calls_in(history).get(call), 10)
    assert flow_of(doc) == "v2", doc["ivr_path"]


def test_damaged_leveldb_is_repaired_and_keeps_the_outbox(
    tmp_path: Path, daemon_factory: DaemonFactory, secantus: Callable[..., Secantus]
) -> None:
    """Damaged LevelDB files: a clear log line naming the path, every readable
    outbox record kept and shipped, calls still served; an unusable path is a
    clear start-up error (exit 2)."""
    data_dir = tmp_path / "data"
    ldb = data_dir / "leveldb"
    # Calls logged while no History DB is configured: they wait in the outbox.
    node = daemon_factory(data_dir=data_dir)
    before = Sipp(tmp_path, node, "-m", "5", "-r", "50", "-d", "100").wait(30)
    assert before.stats["SuccessfulCall(C)"] == "5", before.stderr
    assert node.stop() == 0
    node = daemon_factory(data_dir=data_dir)  # reopening turns the log into a table
    more = Sipp(tmp_path, node, "-m", "3", "-r", "50", "-d", "100").wait(30)
    assert more.stats["SuccessfulCall(C)"] == "3", more.stderr
    node.stop(signal.SIGKILL)  # these 3 stay in the write-ahead log
    waiting = before.call_ids | more.call_ids

    # Damage 1: the metadata (lost CURRENT, truncated MANIFEST); data files intact.
    (ldb / "CURRENT").unlink()
    manifest = next(ldb.glob("MANIFEST-*"))
    with open(manifest, "r+b") as f:
        f.truncate(10)
    history = secantus("history")
    history.start()
    node = daemon_factory("--history", history.url, data_dir=data_dir, metrics=True)
    assert log_lines(node, f"ERROR config_cache.leveldb [-] LevelDB at {ldb} is damaged (")
    assert log_lines(node, f"LevelDB at {ldb} repaired; readable records were kept")
    served = one_call(tmp_path, node, "1000")  # the demo tenant's IVR
    wait_for(
        "the outbox to reach the History DB",
        lambda: set(calls_in(history)) == waiting | {served},
        20,
        step=0.3,
    )
    assert count_and_distinct(history) == (9, 9)
    assert node.stop() == 0

    # Damage 2: a truncated table file. LevelDB opens tables lazily, so only the
    # verifying open sees it; repair sets the table aside, the node serves on.
    table = max(ldb.glob("*.ldb"), key=lambda p: p.stat().st_size)
    with open(table, "r+b") as f:
        f.truncate(table.stat().st_size // 2)
    node = daemon_factory("--history", history.url, data_dir=data_dir)
    assert log_lines(node, f"LevelDB at {ldb} is damaged (IO error: {table}: ")
    assert log_lines(
        node,
        f"LevelDB at {ldb} repaired; unreadable table file(s) moved to {ldb / 'lost'}, "
        f"their records are lost: {table.name}",
    )
    served_after = one_call(tmp_path, node, "1000")
    wait_for("the new call log", lambda: served_after in calls_in(history), 10)
    assert node.stop() == 0

    # Unusable: the LevelDB path is a file. Exit 2, the path named on stderr.
    for path in ldb.iterdir():
        if path.is_dir():
            for inner in path.iterdir():
                inner.unlink()
            path.rmdir()
        else:
            path.unlink()
    ldb.rmdir()
    ldb.write_bytes(b"not a database")
    broken = daemon_factory(data_dir=data_dir, wait=False)
    assert broken.proc.wait(20) == 2
    assert broken.log().strip().splitlines()[-1] == (
        f"callengine: configuration error: {ldb}: LevelDB path is not a directory"
    )


def test_bad_tenant_documents_are_rejected_and_the_last_good_rev_serves(
    tmp_path: Path, daemon_factory: DaemonFactory, secantus: Callable[..., Secantus]
) -> None:
    """Wrong types and garbage in the master: `config push` refuses the file
    (exit 2, file/tenant/field named); documents written around it are logged
    once each and skipped; the node keeps serving rev 1 and still follows."""
    master = secantus("master")
    history = secantus("history")
    start_all(master, history)
    bad = TENANTS / "reliability_bad_types.yaml"
    assert (
        cli(
            "config", "push", str(TENANTS / "reliability_v1.yaml"), "--master", master.url
        ).returncode
        == 0
    )
    refused = cli("config", "push", str(bad), "--master", master.url)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: {bad}: tenant 'rel': users.100.password: "
        "must be a non-empty string, not an integer\n"
    )
    with master.client() as c:
        stored = c.callengine.tenants.find_one({"_id": TENANT})
        assert stored is not None and stored["rev"] == 1  # nothing was written

    config = write_config(tmp_path, poll_interval=POLL, timeout=1)
    node = daemon_factory(
        "--config", str(config), "--master", master.url, "--history", history.url, metrics=True
    )
    # Garbage written around `config push` (another tool, a bad migration).
    with master.client() as c:
        tenants = c.callengine.tenants
        good = tenants.find_one({"_id": TENANT})
        assert good is not None
        wrong = {**good, "rev": 2, "users": {"100": {"name": "Operator", "password": 100}}}
        tenants.replace_one({"_id": TENANT}, wrong)
        tenants.insert_one({"_id": "junk", "rev": "seven"})
        tenants.insert_one({"_id": 42, "rev": 1})
        tenants.insert_one({**good, "_id": "evil", "id": TENANT, "rev": 5})
    expected = [
        "rejected tenant 'rel' rev 2 from master (keeping rev 1): master: tenant 'rel': "
        "users.100.password: must be a non-empty string, not an integer",
        "rejected tenant 'junk' rev -1 from master (tenant not served): master: "
        "tenant 'junk': rev: must be an integer, not a string",
        "rejected tenant 'evil' rev 5 from master (tenant not served): master: "
        "tenant 'evil': id: 'rel' does not match the document _id 'evil'",
        "ignoring master document with _id 42: a tenant _id is its id, a string",
    ]
    wait_for("the rejections", lambda: all(log_lines(node, line) for line in expected), 10)
    time.sleep(2.5 * POLL)  # more polls: each problem is still logged once
    for line in expected:
        assert len(log_lines(node, line)) == 1, line
    assert metric(node, 'callengine_config_rejected_total{tenant="rel"}') == 1
    assert metric(node, 'callengine_config_tenant_rev{tenant="rel"}') == 1
    assert metric(node, "callengine_config_offline") == 0
    assert node.proc.poll() is None
    call = one_call(tmp_path, node)
    doc = wait_for("the call log", lambda: calls_in(history).get(call), 10)
    assert flow_of(doc) == "v1", doc["ivr_path"]  # the last good revision serves

    # A valid change still goes through past the garbage (stored rev 2 -> 3).
    pushed = cli("config", "push", str(TENANTS / "reliability_v2.yaml"), "--master", master.url)
    assert pushed.stdout == "pushed tenant rel rev 3\n", pushed.stderr
    wait_for(
        "rev 3 in the node",
        lambda: metric(node, 'callengine_config_tenant_rev{tenant="rel"}') == 3,
        5,
    )
    call = one_call(tmp_path, node)
    doc = wait_for("the call log", lambda: calls_in(history).get(call), 10)
    assert flow_of(doc) == "v2", doc["ivr_path"]


class JunkServer:
    """A TCP server that answers every connection with junk, on the master port."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + os.urandom(64))
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_master_answering_junk_keeps_the_node_on_its_cache(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """The master URL reaches something that answers junk: the node says it is
    offline (naming the error), serves the tenant from its cache, and its call
    log stays in the outbox (no History DB) for `callengine logs`."""
    data_dir = tmp_path / "data"
    imported = cli(
        "config", "import", str(TENANTS / "reliability_v1.yaml"), "--data-dir", str(data_dir)
    )
    assert (imported.returncode, imported.stdout) == (0, "imported tenant rel rev 0\n")
    junk = JunkServer()
    try:
        url = f"mongodb://127.0.0.1:{junk.port}/?directConnection=true"
        config = write_config(tmp_path, poll_interval=POLL, timeout=1)
        node = daemon_factory("--config", str(config), "--master", url, data_dir=data_dir)
        (line,) = log_lines(node, "master Configuration DB unreachable: OFFLINE")
        assert "serving 1 cached tenant(s): master revisions: " in line
        assert junk.connections >= 1
        call = one_call(tmp_path, node)
        time.sleep(POLL)  # polls keep failing; the node keeps serving
        assert node.proc.poll() is None
        assert node.stop() == 0
    finally:
        junk.close()
    rows = outbox_rows(data_dir)
    assert [(r["state"], r["call_id"], r["tenant"]) for r in rows] == [("final", call, TENANT)]
    assert flow_of(rows[0]) == "v1", rows[0]["ivr_path"]
