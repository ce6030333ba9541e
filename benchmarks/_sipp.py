"""Shared pieces of the SIPp benchmarks: ports, the processes under test, SIPp runs and
their statistics, CPU time from /proc.

Nothing here imports the engine: the node is measured as a separate process, exactly
as an operator runs it (``callengine serve``), next to SIPp's own UAS as the reference.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# SIPp's default socket buffers are 64 KiB: one scheduling hiccup on a busy 2-core box
# overflows them and shows as retransmissions and failed calls of the *harness*. The
# engine asks for 8 MiB; the kernel caps both at net.core.rmem_max / wmem_max.
SIPP_BUFFER = ["-buff_size", str(4 * 1024 * 1024)]

__all__ = [
    "SIPP",
    "Peer",
    "StepResult",
    "cpu_seconds",
    "free_port",
    "options_ping",
    "read_stats",
    "run_uac_step",
    "start_engine",
    "start_sipp_uas",
]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s2:
            try:
                s2.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, all threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its live descendants (a multi-worker node's workers)."""
    return sum(tree_cpu_by_process(pid).values())


def tree_cpu_by_process(pid: int) -> dict[str, float]:
    """CPU time of ``pid`` and each live descendant, by role: ``engine`` (a
    one-process node) or ``front``, ``worker N``, ``plane`` (a one-process node's media
    plane) or ``plane N`` (worker N's), else ``pid P``."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_bytes()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(raw[raw.rindex(b")") + 2 :].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        nxt = [child for child, parent in parents.items() if parent in frontier]
        frontier = [c for c in nxt if c not in tree]
        tree.update(frontier)
    roles = {p: _role(p) for p in tree}
    workers = {p: r for p, r in roles.items() if r.startswith("worker")}
    out: dict[str, float] = {}
    for p in sorted(tree):
        role = roles[p]
        if p == pid:
            role = "front" if workers else "engine"
        elif role == "plane" and parents.get(p) in workers:
            role = "plane " + workers[parents[p]].split()[1]
        try:
            out[role] = out.get(role, 0.0) + cpu_seconds(p)
        except OSError:
            pass
    return out


def media_pid(pid: int) -> int:
    """The process that holds a one-process node's media: its media plane when it has
    one (``callengine serve``'s default), else the node itself."""
    for child in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = child.read_bytes()
        except OSError:
            continue
        if int(raw[raw.rindex(b")") + 2 :].split()[1]) == pid:
            if _role(int(child.parent.name)) == "plane":
                return int(child.parent.name)
    return pid


def _role(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"callengine.mediaplane" in cmdline:
            return "plane"
        if b"worker_main" in cmdline:
            for var in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if var.startswith(b"CALLENGINE_WORKER="):
                    return "worker " + var.split(b"=", 1)[1].split(b":")[0].decode()
    except OSError:
        pass
    return f"pid {pid}"


@dataclass
class Peer:
    """A UAS under test (the engine or SIPp's own UAS), one process."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path

    def cpu(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def cpu_by_process(self) -> dict[str, float]:
        return tree_cpu_by_process(self.proc.pid)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def options_ping(port: int, timeout: float) -> bool:
    msg = (
        "OPTIONS sip:ping@127.0.0.1:{p} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK-ping{n};rport\r\n"
        "From: <sip:ping@127.0.0.1>;tag=p\r\nTo: <sip:ping@127.0.0.1>\r\n"
        "Call-ID: ping{n}@bench\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        lp = s.getsockname()[1]
        n = 0
        while time.monotonic() < deadline:
            n += 1
            s.sendto(msg.format(p=port, lp=lp, n=n).encode(), ("127.0.0.1", port))
            try:
                if s.recv(65535).startswith(b"SIP/2.0 200"):
                    return True
            except OSError:
                continue
    return False


def _udp_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def start_engine(
    workdir: Path,
    *,
    media: bool = True,
    profile_to: Path | None = None,
    metrics_port: int | None = None,
    extra: Sequence[str] = (),
) -> Peer:
    """Start one ``callengine serve`` (default demo configuration) on a free port.

    With ``profile_to`` it runs under cProfile and writes the stats there on SIGTERM.
    /metrics is off unless ``metrics_port`` is given (then on 127.0.0.1:metrics_port).
    The data directory is ``workdir / "data"`` (prepare it before, e.g. with
    ``callengine config import``, to serve other tenants than the demo).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    python = [sys.executable]
    if profile_to is not None:
        python += ["-m", "cProfile", "-o", str(profile_to)]
    args = [
        *python,
        "-m",
        "callengine.cli",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(workdir / "data"),
        *(("--metrics", f"127.0.0.1:{metrics_port}") if metrics_port else ("--no-metrics",)),
        "--log-level",
        "WARNING",
        "--no-admin",  # benchmarks run several nodes: no fight over the admin port
        *(() if media else ("--no-media",)),
        # one process unless asked: serve's default is a worker per core
        *(() if "--workers" in extra or "--config" in extra else ("--workers", "1")),
        *extra,
    ]
    log_path = workdir / "engine.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    peer = Peer("engine" if media else "engine --no-media", proc, port, workdir, log_path)
    if not options_ping(port, 30.0):
        peer.stop()
        raise RuntimeError(f"engine did not start:\n{log_path.read_text(errors='replace')}")
    return peer


def start_sipp_uas(workdir: Path) -> Peer:
    """SIPp's built-in UAS (``-sn uas``): the harness's C++ reference peer."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "uas.log"
    args = [SIPP, "-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-nostdin", *SIPP_BUFFER]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, cwd=workdir)
    deadline = time.monotonic() + 10
    while not _udp_bound(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"SIPp UAS did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    return Peer("sipp -sn uas", proc, port, workdir, log_path)


@dataclass
class StepResult:
    """One fixed-rate step of SIPp's ``-sn uac`` against a peer."""

    rate: int
    calls: int
    successful: int
    failed: int
    retransmissions: int
    achieved_cps: float
    """Calls created per second (from SIPp's periodic statistics): SIPp throttles new
    calls when too many are open, so a slow peer shows here before it shows as failures."""
    seconds: float
    peer_cpu_pct: float
    uac_cpu_pct: float
    sipp_rc: int
    reasons: list[str] = field(default_factory=list)
    peer_cpu_pct_by_process: dict[str, float] = field(default_factory=dict)
    """The peer's CPU per process (a multi-worker node: front, each worker and plane)."""

    @property
    def ok(self) -> bool:
        return not self.reasons


def _epoch(cell: str) -> float:
    # SIPp writes "2026-01-01\t12:00:00.123456\t1767268800.123456"
    return float(cell.split("\t")[-1])


def read_stats(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return []
    header = lines[0].rstrip(";").split(";")
    return [dict(zip(header, ln.rstrip(";").split(";"), strict=False)) for ln in lines[1:]]


def creation_rate(rows: list[dict[str, str]], calls: int) -> float:
    """Calls per second from SIPp's start until the ``calls``-th call was created,
    interpolated between the periodic (1 s) statistics rows."""
    start = _epoch(rows[0]["StartTime"])
    prev_t, prev_n = 0.0, 0
    for row in rows:
        t = _epoch(row["CurrentTime"]) - start
        n = int(row["TotalCallCreated"])
        if n >= calls:
            if n == prev_n:
                return calls / max(t, 1e-6)
            t_at = prev_t + (calls - prev_n) / (n - prev_n) * (t - prev_t)
            return calls / max(t_at, 1e-6)
        prev_t, prev_n = t, n
    return 0.0


def run_uac_step(
    peer: Peer,
    rate: int,
    seconds: float,
    *,
    workdir: Path,
    max_failed: float = 0.001,
    min_rate: float = 0.95,
    duration_ms: int = 100,
) -> StepResult:
    """Offer ``rate`` calls/s for ``seconds`` with SIPp's ``-sn uac`` (``-d duration_ms``).

    The step fails when failed (or never completed) calls are >= ``max_failed`` of the
    calls offered, or when SIPp could not create calls at ``min_rate`` of the target.
    """
    calls = max(1, int(rate * seconds))
    stat_file = workdir / f"uac-{rate}-{time.monotonic_ns()}.csv"
    args = [
        SIPP,
        "-sn",
        "uac",
        f"127.0.0.1:{peer.port}",
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port()),
        "-mp",
        str(free_port()),
        "-r",
        str(rate),
        "-m",
        str(calls),
        "-d",
        str(duration_ms),
        "-recv_timeout",
        "10000",
        "-timeout",
        f"{int(seconds) + 40}s",
        "-nostdin",
        *SIPP_BUFFER,
        "-trace_stat",
        "-stf",
        str(stat_file),
        "-fd",
        "1",
    ]
    by_process0 = peer.cpu_by_process()
    peer_cpu0 = sum(by_process0.values())
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run(
        args,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=seconds + 90,
        check=False,
    )
    elapsed = time.monotonic() - t0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    by_process = peer.cpu_by_process() if peer.proc.poll() is None else {}
    peer_cpu = sum(by_process.values()) - peer_cpu0 if by_process else float("nan")
    per_process = {
        role: round(100.0 * (cpu - by_process0.get(role, 0.0)) / elapsed, 1)
        for role, cpu in by_process.items()
    }
    uac_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    rows = read_stats(stat_file)
    reasons: list[str] = []
    if not rows:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        reasons.append(f"no SIPp statistics (rc {proc.returncode}): {err[-1:] or ''}")
        return StepResult(
            rate, calls, 0, calls, 0, 0.0, elapsed, 0.0, 0.0, proc.returncode, reasons
        )
    last = rows[-1]
    successful = int(last["SuccessfulCall(C)"])
    failed = int(last["FailedCall(C)"])
    retrans = int(last["Retransmissions(C)"])
    achieved = creation_rate(rows, calls)
    lost = calls - successful
    if lost / calls >= max_failed:
        reasons.append(f"{lost} of {calls} calls failed or never completed")
    if achieved < min_rate * rate:
        reasons.append(f"SIPp created only {achieved:.0f} calls/s")
    if peer.proc.poll() is not None:
        reasons.append(f"peer exited with {peer.proc.returncode}")
    return StepResult(
        rate=rate,
        calls=calls,
        successful=successful,
        failed=failed,
        retransmissions=retrans,
        achieved_cps=achieved,
        seconds=elapsed,
        peer_cpu_pct=100.0 * peer_cpu / elapsed,
        uac_cpu_pct=100.0 * uac_cpu / elapsed,
        sipp_rc=proc.returncode,
        reasons=reasons,
        peer_cpu_pct_by_process=per_process,
    )
