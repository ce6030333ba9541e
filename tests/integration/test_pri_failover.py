"""Issue #6 end to end: `callengine serve` as a B2BUA in front of two PRI carriers.

Each carrier's SIP media gateway is a SIPp UAS on its own port running one of the
``tests/fixtures/sipp/pri_uas_*.xml`` scenarios (answer, 503, 486, silent). Callers
are SIPp UACs (load) or a tiny raw-socket UAC (to read the exact final response and
its Reason header, and to time it). What is asserted is what the outside world sees:
responses and Reason headers, INVITEs counted by each carrier's SIPp, and the call
logs read back with ``callengine logs --json``.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from integration.support import (
    CALLENGINE,
    ROOT,
    SIPP,
    Daemon,
    free_port,
    run_sipp,
    sip_call,
)
from integration.support import (
    OFFER_PCMU as SDP,
)

pytestmark = pytest.mark.integration

FIXTURES = ROOT / "tests" / "fixtures" / "sipp"
SETUP_TIMEOUT = 1.0


# --------------------------------------------------------------------------- helpers


@dataclass
class Carrier:
    """A SIPp UAS playing one carrier's gateway."""

    name: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, scenario: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                SIPP,
                "-sf",
                str(FIXTURES / scenario),
                "-i",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-mp",
                str(free_port(both=False)),
                "-nostdin",
                "-trace_counts",
                "-fd",
                "1",
                "-max_socket",
                "2000",
            ],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)

    def stop(self) -> None:
        """Graceful stop (SIGUSR1): SIPp writes its final counts."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """The gateway dies: no more answers, not even to retransmissions."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def invites(self) -> int:
        """INVITEs received, summed over every SIPp run of this carrier."""
        return self._received("1_INVITE_Recv")

    def options(self) -> int:
        """OPTIONS (health probes) received, summed over every SIPp run."""
        return self._received("0_OPTIONS_Recv")

    def _received(self, name: str) -> int:
        total = 0
        for path in self.workdir.glob("*_counts.csv"):
            lines = [ln for ln in path.read_text().splitlines() if ";" in ln]
            if len(lines) < 2:
                continue
            header = lines[0].split(";")
            last = lines[-1].split(";")
            total += int(last[header.index(name)])
        return total


def q850(headers: dict[str, str]) -> int | None:
    m = re.search(r"Q\.850\s*;\s*cause=(\d+)", headers.get("reason", ""), re.I)
    return int(m.group(1)) if m else None


def config(
    tmp: Path,
    a: int,
    b: int,
    *,
    strategy: str = "priority",
    a_spans: str = "[{name: a-e1-1, type: E1}]",
    b_spans: str = "[{name: b-e1-1, type: E1}]",
    cool_down: float = 3.0,
) -> Path:
    health = (
        f"{{probe_interval: 1, probe_timeout: 0.5, down_after: 2, up_after: 1, "
        f"cool_down: {cool_down}}}"
    )
    path = tmp / "trunks.yaml"
    path.write_text(
        f"""
trunks:
  carrier-a:
    carrier: A
    gateway: {{host: 127.0.0.1, port: {a}}}
    dids: ["3225550100-3225550199"]
    spans: {a_spans}
    health: {health}
  carrier-b:
    carrier: B
    gateway: {{host: 127.0.0.1, port: {b}}}
    dids: ["3225560"]
    spans: {b_spans}
    health: {health}
trunk_groups:
  pstn:
    strategy: {strategy}
    trunks: [carrier-a, carrier-b]
    setup_timeout: {SETUP_TIMEOUT}
outbound_routes:
  - {{prefix: "9", strip: 1, group: pstn}}
  - {{prefix: "8", strip: 1, group: pstn, sources: [10.0.0.0/8]}}
trusted_sources: [127.0.0.1/32]
"""
    )
    return path


def call_logs(daemon: Daemon) -> list[dict[str, object]]:
    daemon.stop()
    out = subprocess.run(
        [CALLENGINE, "logs", "--data-dir", str(daemon.data_dir), "--json"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]


@pytest.fixture
def carriers(tmp_path: Path) -> Iterator[Callable[[], tuple[Carrier, Carrier]]]:
    made: list[Carrier] = []

    def make() -> tuple[Carrier, Carrier]:
        a = Carrier("A", free_port(both=False), tmp_path / "carrier-a")
        b = Carrier("B", free_port(both=False), tmp_path / "carrier-b")
        made.extend((a, b))
        return a, b

    yield make
    for c in made:
        c.kill()


# --------------------------------------------------------------------------- tests


def test_503_from_carrier_a_completes_through_b(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    carriers: Callable[[], tuple[Carrier, Carrier]],
) -> None:
    a, b = carriers()
    a.start("pri_uas_503.xml")
    b.start("pri_uas_answer.xml")
    daemon = daemon_factory("--config", str(config(tmp_path, a.port, b.port)))
    result = sip_call(daemon.port, "915551230000", hold=0.3)
    assert result.status == 200
    a.stop()
    b.stop()
    assert (a.invites(), b.invites()) == (1, 1)
    (log,) = [c for c in call_logs(daemon) if c["callee"] == "915551230000"]
    assert log["result"] == "completed"
    attempts = log["trunk_attempts"]
    assert isinstance(attempts, list)
    assert [(t["trunk"], t["status"], t["cause"], t["outcome"]) for t in attempts] == [
        ("carrier-a", 503, 41, "failover"),  # the gateway's own Reason: Q.850;cause=41
        ("carrier-b", 200, 16, "connected"),
    ]
    assert attempts[0]["number"] == "15551230000"  # route: prefix 9, strip 1


def test_silent_carrier_a_fails_over_after_setup_timeout(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    carriers: Callable[[], tuple[Carrier, Carrier]],
) -> None:
    a, b = carriers()
    a.start("pri_uas_silent.xml")
    b.start("pri_uas_answer.xml")
    daemon = daemon_factory("--config", str(config(tmp_path, a.port, b.port)))
    result = sip_call(daemon.port, "915551230001")
    assert result.status == 200
    assert SETUP_TIMEOUT <= result.elapsed < SETUP_TIMEOUT + 1.0
    a.stop()
    b.stop()
    assert a.invites() == 1 and b.invites() == 1
    (log,) = [c for c in call_logs(daemon) if c["callee"] == "915551230001"]
    attempts = log["trunk_attempts"]
    assert isinstance(attempts, list)
    assert [(t["trunk"], t["ended_by"], t["cause"]) for t in attempts] == [
        ("carrier-a", "timeout", 102),  # Q.850 102: recovery on timer expiry
        ("carrier-b", "response", 16),
    ]


def test_call_ringing_on_a_gateway_that_dies_moves_to_carrier_b(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    carriers: Callable[[], tuple[Carrier, Carrier]],
) -> None:
    """A's gateway sends 180 (the setup timer stops) and dies: its probes fail, the
    trunk goes down, and the ringing call is CANCELled there and completed through B
    instead of ringing on until the caller gives up."""
    a, b = carriers()
    a.start("pri_uas_ring.xml")
    b.start("pri_uas_answer.xml")
    daemon = daemon_factory("--config", str(config(tmp_path, a.port, b.port)))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(sip_call, daemon.port, "915551230005", hold=0.2, timeout=20.0)
        deadline = time.monotonic() + 10
        while a.invites() == 0 and time.monotonic() < deadline:  # counts every 1 s
            time.sleep(0.05)
        assert a.invites() == 1
        a.kill()
        result = call.result(timeout=30)
    assert result.status == 200
    b.stop()
    assert b.invites() == 1
    (log,) = [c for c in call_logs(daemon) if c["callee"] == "915551230005"]
    assert log["result"] == "completed"
    attempts = log["trunk_attempts"]
    assert isinstance(attempts, list)
    assert [(t["trunk"], t["ended_by"], t["cause"], t["outcome"]) for t in attempts] == [
        ("carrier-a", "trunk_down", 38, "failover"),  # Q.850 38: network out of order
        ("carrier-b", "response", 16, "connected"),
    ]


def test_both_carriers_down_503_cause_34_at_once(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    dead_a, dead_b = free_port(both=False), free_port(both=False)  # nothing listens
    daemon = daemon_factory("--config", str(config(tmp_path, dead_a, dead_b)))
    first = sip_call(daemon.port, "915551230002")
    assert 500 <= first.status < 600 and q850(first.headers) is not None
    # The breaker learns from those timeouts and from failed OPTIONS probes.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = sip_call(daemon.port, "915551230002")
        if (r.status, q850(r.headers)) == (503, 34):
            break
        time.sleep(0.2)
    later = [sip_call(daemon.port, "915551230002") for _ in range(5)]
    assert [(r.status, q850(r.headers)) for r in later] == [(503, 34)] * 5
    assert max(r.elapsed for r in later) < 0.1


def test_busy_stops_and_untrusted_route_and_loop_guard(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    carriers: Callable[[], tuple[Carrier, Carrier]],
) -> None:
    a, b = carriers()
    a.start("pri_uas_486.xml")
    b.start("pri_uas_answer.xml")
    daemon = daemon_factory("--config", str(config(tmp_path, a.port, b.port)))
    busy = sip_call(daemon.port, "915551230003")
    assert (busy.status, q850(busy.headers)) == (486, 17)  # definitive: B never tried
    forbidden = sip_call(daemon.port, "815551230003")  # route only for 10.0.0.0/8
    assert forbidden.status == 403
    loop = sip_call(daemon.port, "915551230003", max_forwards=0)
    assert loop.status == 483
    a.stop()
    b.stop()
    assert (a.invites(), b.invites()) == (1, 0)


def test_load_carrier_a_dies_and_returns(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    carriers: Callable[[], tuple[Carrier, Carrier]],
) -> None:
    a, b = carriers()
    a.start("pri_uas_answer.xml")
    b.start("pri_uas_answer.xml")
    # Two E1s each: while A's gateway is silently dead its channels stay seized for
    # the setup timeout, and B must carry all the traffic plus the failed-over calls.
    spans = "[{{name: {0}1, type: E1}}, {{name: {0}2, type: E1}}]"
    cfg = config(
        tmp_path,
        a.port,
        b.port,
        strategy="round_robin",
        cool_down=2.0,
        a_spans=spans.format("a"),
        b_spans=spans.format("b"),
    )
    daemon = daemon_factory("--config", str(cfg), "--no-media")
    rate, seconds = 100, 12
    uac = subprocess.Popen(
        [
            SIPP,
            daemon.address,
            "-sn",
            "uac",
            "-s",
            "915551230004",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port(both=False)),
            "-r",
            str(rate),
            "-m",
            str(rate * seconds),
            "-d",
            "200",
            "-nostdin",
            "-trace_stat",
            "-stf",
            str(tmp_path / "uac.csv"),
            "-trace_err",
            "-fd",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(3.0)
    a.kill()  # carrier A's gateway disappears mid-run
    a_first = a.invites()
    time.sleep(4.0)  # breaker opens on timeouts and probes; B carries everything
    a.start("pri_uas_answer.xml")  # A returns; a half-open probe brings it back
    try:
        returncode = uac.wait(60)
    except subprocess.TimeoutExpired:  # calls still open: the stats below say which
        uac.kill()
        returncode = uac.wait()
    a.stop()
    b.stop()
    lines = [ln for ln in (tmp_path / "uac.csv").read_text().splitlines() if ln.strip()]
    stats = dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))
    failed = {k: v for k, v in stats.items() if k.startswith("Failed") and v not in ("0", "")}
    assert (returncode, failed) == (0, {}), daemon.log()[-3000:]
    assert int(stats["FailedCall(C)"]) == 0
    assert int(stats["SuccessfulCall(C)"]) == rate * seconds
    a_total, b_total = a.invites(), b.invites()
    assert a_first > 0  # A had traffic before it died...
    assert a_total - a_first > 50  # ...and takes traffic again after it returned
    assert b_total > rate * seconds / 2
    assert a_total + b_total >= rate * seconds


def test_23_channel_span_never_carries_a_24th_call(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    carriers: Callable[[], tuple[Carrier, Carrier]],
) -> None:
    a, b = carriers()
    a.start("pri_uas_answer.xml")
    b.start("pri_uas_answer.xml")
    cfg = config(tmp_path, a.port, b.port, a_spans="[{name: a-t1-1, type: T1}]")
    daemon = daemon_factory("--config", str(cfg))
    result = run_sipp(
        [
            daemon.address,
            "-sn",
            "uac",
            "-s",
            "915551230005",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port(both=False)),
            "-r",
            "100",
            "-m",
            "24",
            "-l",
            "24",
            "-d",
            "2000",
        ],
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    a.stop()
    b.stop()
    assert (a.invites(), b.invites()) == (23, 1)
    logs = [c for c in call_logs(daemon) if c["callee"] == "915551230005"]
    assert len(logs) == 24
    channels = {
        (t["span"], t["channel"])
        for c in logs
        for t in c["trunk_attempts"]  # type: ignore[attr-defined]
        if t["trunk"] == "carrier-a" and t["outcome"] == "connected"
    }
    assert channels == {("a-t1-1", n) for n in range(1, 24)}


def test_early_media_183_is_relayed_to_the_caller_before_the_answer(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    carriers: Callable[[], tuple[Carrier, Carrier]],
) -> None:
    """Carrier A sends 183 Session Progress with SDP (its announcement), answers 1.5 s
    later: the caller gets a 183 with an SDP answer before the 200, and the call is
    bridged through A."""
    a, b = carriers()
    a.start("pri_uas_183.xml")
    b.start("pri_uas_answer.xml")
    daemon = daemon_factory("--config", str(config(tmp_path, a.port, b.port)))
    call_id = secrets.token_hex(8)
    seen: list[tuple[int, str, float]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        lp = s.getsockname()[1]
        s.settimeout(10)
        ruri = f"sip:93225550111@127.0.0.1:{daemon.port}"
        common = (
            f"From: <sip:caller@127.0.0.1:{lp}>;tag=ft{call_id}\r\n"
            f"Call-ID: {call_id}@test\r\nMax-Forwards: 70\r\n"
        )
        invite = (
            f"INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK{call_id};rport\r\n"
            f"{common}To: <{ruri}>\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:{lp}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}"
        )
        t0 = time.monotonic()
        s.sendto(invite.encode(), ("127.0.0.1", daemon.port))
        while True:
            data = s.recv(65535).decode(errors="replace")
            head, _, body = data.partition("\r\n\r\n")
            status = int(head.split()[1])
            seen.append((status, body, time.monotonic() - t0))
            if status >= 200:
                break
        to = next(ln for ln in head.split("\r\n") if ln.lower().startswith("to:"))
        ack = (
            f"ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bKa{call_id};rport\r\n"
            f"{common}{to}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )
        s.sendto(ack.encode(), ("127.0.0.1", daemon.port))
        bye = (
            f"BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bKb{call_id};rport\r\n"
            f"{common}{to}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        )
        s.sendto(bye.encode(), ("127.0.0.1", daemon.port))
    statuses = [status for status, _, _ in seen]
    assert 183 in statuses and statuses[-1] == 200, statuses
    early = next((body, at) for status, body, at in seen if status == 183)
    answer = seen[-1]
    assert "m=audio " in early[0] and "c=IN IP4 127.0.0.1" in early[0], early[0]
    # the 200 came after the carrier's 1.5 s of early media, the 183 well before it
    assert answer[2] - early[1] >= 1.0, seen
    logs = call_logs(daemon)
    ours = [log for log in logs if log["call_id"] == f"{call_id}@test"]
    assert len(ours) == 1, logs
    trunk_attempts = ours[0]["trunk_attempts"]
    assert isinstance(trunk_attempts, list)
    assert [att["trunk"] for att in trunk_attempts] == ["carrier-a"], trunk_attempts
