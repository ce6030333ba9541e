"""The shipped Kamailio balancer (deploy/kamailio/) in front of two `callengine serve`
nodes, driven by SIPp's built-in `uac` scenario.

Everything runs on 127.0.0.1 and is started by the test: two nodes (own data dirs,
ports and /metrics), Kamailio 5.6 with the unmodified deploy/kamailio/kamailio.cfg
(site values overridden with `-A NAME=VALUE` defines: port, a generated dispatcher
list, the kamcmd control socket, a 1 s probe interval, a 2 s node reply timer), and
SIPp. What is asserted: SIPp's call counts, each node's own counters
(`callengine_calls_total{result="answered"}`, `callengine_sip_requests_in_total`),
and the dispatcher state Kamailio reports through `kamcmd dispatcher.list`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from integration.support import (
    Daemon,
    SippResult,
    calls,
    free_port,
    run_sipp,
    scrape_fresh,
    start_daemon,
)

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMCMD = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kamailio"
CFG = DEPLOY / "kamailio.cfg"
PING_INTERVAL = 1  # s between OPTIONS probes (production default: 10)
NODE_FR_TIMER = 2000  # ms a node has to send its first reply before failover

# no skip: without kamailio, kamcmd or SIPp these tests fail (`make install` provides them)
pytestmark = [pytest.mark.integration]

_DEST = re.compile(r"URI: (\S+)\s+FLAGS: (\S+)")
_ABORTED = re.compile(
    r"Aborting call on unexpected message for Call-Id '([^']+)'.*?received '([^']*)'", re.S
)
_TIMED_OUT = re.compile(r"Call-Id: (\S+), receive timeout on message [^:\n]*:(\d+)")
ANSWERED = 'callengine_calls_total{result="answered"}'
INVITES = 'callengine_sip_requests_in_total{method="INVITE"}'


def scrape(daemon: Daemon) -> dict[str, float]:
    """The node's /metrics as ``{'name{labels}': value}``, as up to date as the workers'
    last push; a multi-worker node's series are the sums over their ``worker`` label
    (the node seen as one; ``support.scrape_node`` adds them), without the per-worker ones."""
    assert daemon.metrics_port is not None
    return {k: v for k, v in scrape_fresh(daemon.metrics_port).items() if 'worker="' not in k}


@dataclass
class Balancer:
    """A running Kamailio with the shipped config."""

    proc: subprocess.Popen[bytes]
    port: int
    ctl: str
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def destinations(self) -> dict[str, str]:
        """``{'sip:127.0.0.1:PORT': FLAGS}`` from `kamcmd dispatcher.list` (A active,
        I inactive, P probing)."""
        out = subprocess.run(
            [KAMCMD, "-s", self.ctl, "dispatcher.list"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return dict(_DEST.findall(out.stdout))

    def wait_flags(self, want: dict[str, str], timeout: float) -> float:
        """Wait until each destination's flags start with the wanted letter; seconds taken."""
        start = time.monotonic()
        seen: dict[str, str] = {}
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"kamailio exited ({self.proc.returncode}):\n{self.log()}")
            seen = self.destinations()
            if all(seen.get(uri, "").startswith(flag) for uri, flag in want.items()):
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"dispatcher state {seen}, wanted {want}:\n{self.log()}")

    def stop(self) -> None:
        """Stop the whole process group (kamailio forks its workers into it)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # workers left behind by a crashed main process
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_balancer(tmp: Path, nodes: list[Daemon]) -> Balancer:
    run = tmp / "kamailio"
    run.mkdir()
    ds_list = run / "dispatcher.list"
    ds_list.write_text(
        "".join(f"1 sip:{n.address} 0 0 duid=node{i}\n" for i, n in enumerate(nodes))
    )
    port = free_port()
    ctl = f"unixs:{run / 'ctl'}"
    log_path = run / "kamailio.log"
    args = [
        KAMAILIO,
        "-f",
        str(CFG),
        "-DD",
        "-E",
        "-n",
        "1",
        "-m",
        "64",
        "-M",
        "8",
        "-P",
        str(run / "kamailio.pid"),
        "-Y",
        str(run),
        "-w",
        str(run),
        "-A",
        f"LB_PORT={port}",
        "-A",
        f'DS_LIST="{ds_list}"',
        "-A",
        f'CTL_SOCKET="{ctl}"',
        "-A",
        f"DS_PING_INTERVAL={PING_INTERVAL}",
        "-A",
        f"NODE_FR_TIMER={NODE_FR_TIMER}",
        "-A",
        "LB_DEBUG=2",
    ]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            args, stdout=logf, stderr=subprocess.STDOUT, cwd=run, start_new_session=True
        )
    balancer = Balancer(proc, port, ctl, log_path)
    try:
        # up = kamailio answers on its control socket and has probed every node OK
        balancer.wait_flags({f"sip:{n.address}": "A" for n in nodes}, timeout=15)
    except BaseException:
        balancer.stop()
        raise
    return balancer


@pytest.fixture
def pool(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[list[Daemon], Balancer]]:
    """Two nodes (metrics on) behind Kamailio; everything stopped afterwards. A test
    parametrized with ``workers`` runs nodes of that many worker processes."""
    workers = str(getattr(request, "param", 1))
    nodes: list[Daemon] = []
    balancer: Balancer | None = None
    try:
        for name in ("a", "b"):
            node_tmp = tmp_path / name
            node_tmp.mkdir()
            nodes.append(
                start_daemon(
                    node_tmp,
                    "--workers",
                    workers,
                    data_dir=node_tmp / "data",
                    metrics=True,
                )
            )
        balancer = start_balancer(tmp_path, nodes)
        yield nodes, balancer
    finally:
        if balancer is not None:
            balancer.stop()
        for n in nodes:
            n.stop(signal.SIGKILL if n.proc.poll() is None else signal.SIGTERM, timeout=5)


def sipp_uac(tmp: Path, balancer: Balancer, *args: str, errors: Path | None = None) -> SippResult:
    errors = errors or tmp / f"sipp-errors-{time.monotonic_ns()}.log"
    return run_sipp(
        [
            balancer.address,
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port()),
            "-mp",
            str(free_port(both=False)),
            "-sn",
            "uac",
            # a call whose node died after its 100 Trying would wait for the tm
            # timer (NODE_FR_INV_TIMER); SIPp counts it failed after 6 s instead
            "-recv_timeout",
            "6000",
            "-trace_err",
            "-error_file",
            str(errors),
            *args,
        ],
        cwd=tmp,
        timeout=60,
    )


def failed_calls(errors: Path) -> dict[str, str]:
    """``{call_id: why}`` for each call SIPp gave up on, from its -trace_err file:
    ``"<start line> / <CSeq>"`` of an unexpected message, or ``"timeout at N"`` when
    nothing came while it waited at scenario message N."""
    text = errors.read_text(errors="replace") if errors.exists() else ""
    out: dict[str, str] = {}
    for m in _ABORTED.finditer(text):
        cseq = re.search(r"^CSeq:\s*(.+?)\s*$", m.group(2), re.M | re.I)
        out[m.group(1)] = f"{m.group(2).splitlines()[0]} / {cseq.group(1) if cseq else '?'}"
    for m in _TIMED_OUT.finditer(text):
        out[m.group(1)] = f"timeout at {m.group(2)}"
    return out


def wait_idle(node: Daemon, answered: float, timeout: float = 10.0) -> dict[str, float]:
    """The node's metrics once it has ended ``answered`` calls and has none active."""
    deadline = time.monotonic() + timeout
    m: dict[str, float] = {}
    while time.monotonic() < deadline:
        m = scrape(node)
        if m.get(ANSWERED, 0.0) >= answered and m.get("callengine_active_calls") == 0:
            return m
        time.sleep(0.1)
    return m


@pytest.mark.parametrize("pool", [1, 2], indirect=True, ids=["1-worker", "2-workers"])
def test_calls_spread_over_both_nodes(pool: tuple[list[Daemon], Balancer], tmp_path: Path) -> None:
    """400 calls at 100 CPS through the balancer: SIPp counts 400 successful and 0
    failed calls; the nodes' answered-calls counters add up to exactly 400 and each
    is above 100 (> 25 %: the Call-ID hash spreads calls); both nodes stay active."""
    nodes, balancer = pool
    result = sipp_uac(tmp_path, balancer, "-m", "400", "-r", "100")
    ok, failed = calls(result)
    assert (ok, failed) == (400, 0), result.stderr[-2000:]

    deadline = time.monotonic() + 10
    per_node = [scrape(n) for n in nodes]
    while sum(m.get(ANSWERED, 0.0) for m in per_node) < 400 and time.monotonic() < deadline:
        time.sleep(0.1)
        per_node = [scrape(n) for n in nodes]
    answered = [m.get(ANSWERED, 0.0) for m in per_node]
    invites = [m.get(INVITES, 0.0) for m in per_node]
    retrans = [m.get('callengine_sip_retransmissions_total{direction="in"}', 0.0) for m in per_node]
    print(f"\nanswered per node {answered}, INVITEs in {invites}, retransmissions in {retrans}")
    assert sum(answered) == 400, answered
    # each node saw an INVITE for every call it answered (plus Kamailio's
    # retransmissions, if the node took longer than T1 = 500 ms to send 100 Trying)
    assert all(i >= a for i, a in zip(invites, answered, strict=True)), (invites, answered)
    assert all(a > 100 for a in answered), answered  # > 25 % each (Call-ID hash)
    # both nodes stayed in rotation
    assert set(balancer.destinations().values()) == {"AP"}, balancer.destinations()


def test_node_killed_mid_run(pool: tuple[list[Daemon], Balancer], tmp_path: Path) -> None:
    """kill -9 of one node while 300 calls (100 CPS, each held 500 ms) run.

    Asserted:
    - Kamailio marks the dead node inactive (kamcmd flags ``I``) within probe
      interval + NODE_FR_TIMER + 1 s of the kill;
    - during that run, successful + failed == 300, and the only failed calls are
      calls the dead node held: at most its active calls just before the kill (+5),
      and each one is either a dialog that died with the node (its BYE is relayed to
      the surviving node, which answers 481) or a call the node had taken (sent
      100 Trying) but not answered (SIPp waits in vain at the 100/180/200 stage:
      Kamailio does not retry a node that has replied, see the README). No new call
      was refused: INVITEs hashed to the dead node failed over after NODE_FR_TIMER,
      or went straight to the live node once the dead one was marked down, which the
      balancer's log shows;
    - a second run of 200 calls started after detection: 0 failed, and the
      surviving node's answered-calls counter grew by exactly 200.
    """
    nodes, balancer = pool
    live, victim = nodes
    errors = tmp_path / "sipp-errors-kill.log"
    with ThreadPoolExecutor(1) as ex:
        running = ex.submit(
            sipp_uac, tmp_path, balancer, "-m", "300", "-r", "100", "-d", "500", errors=errors
        )
        time.sleep(1.5)
        victim_active = scrape(victim).get("callengine_active_calls", 0.0)
        victim.proc.kill()  # SIGKILL
        victim.proc.wait()
        detected = balancer.wait_flags(
            {f"sip:{victim.address}": "I", f"sip:{live.address}": "A"},
            timeout=PING_INTERVAL + NODE_FR_TIMER / 1000 + 5,
        )
        first = running.result()
    ok, failed = calls(first)
    lost = failed_calls(errors)
    kinds = sorted(set(lost.values()))
    print(
        f"\nkilled node: {victim_active:.0f} active calls, marked down after {detected:.2f} s;"
        f" first run {ok} ok / {failed} failed {kinds}"
    )
    assert detected <= PING_INTERVAL + NODE_FR_TIMER / 1000 + 1, detected
    assert ok + failed == 300, first.stats
    assert 0 < failed <= victim_active + 5, (failed, victim_active)
    assert len(lost) == failed, (failed, lost)
    dead_dialog = "SIP/2.0 481 Call/Transaction Does Not Exist / 2 BYE"
    assert all(
        why in (dead_dialog, "timeout at 1", "timeout at 2", "timeout at 4")
        for why in lost.values()
    ), kinds
    assert "failed over to sip:" + live.address in balancer.log()

    before = wait_idle(live, 0).get(ANSWERED, 0.0)
    second = sipp_uac(tmp_path, balancer, "-m", "200", "-r", "100")
    assert calls(second) == (200, 0), second.stderr[-2000:]
    after = wait_idle(live, before + 200)
    assert after.get(ANSWERED, 0.0) - before == 200
    assert balancer.destinations()[f"sip:{victim.address}"].startswith("I")
