"""Helpers for tests against real programs: `callengine serve`, SIPp, ports on loopback.

Every external program is started by the test itself and stopped at the end; nothing
is assumed to be running.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from callengine.call import Call
from callengine.config import EngineConfig
from callengine.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
CALLENGINE = str(Path(sys.executable).with_name("callengine"))


def free_port(kind: int = socket.SOCK_DGRAM, *, both: bool = True) -> int:
    """A port free for UDP and TCP on 127.0.0.1 (both, since `--listen` opens both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not both:
            return int(port)
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, other) as s2:
            try:
                s2.bind(("127.0.0.1", port))
            except OSError:
                continue
        return int(port)
    raise RuntimeError("no free port")


def wait_udp_sip(port: int, timeout: float = 15.0, *, call_id: str = "") -> None:
    """Wait until a SIP node answers OPTIONS on 127.0.0.1:port (UDP). ``call_id``: the
    Call-ID of every OPTIONS (a worker's own, to reach that worker), else a new one each."""
    deadline = time.monotonic() + timeout
    msg = (
        "OPTIONS sip:ping@127.0.0.1:{p} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK-ping{n};rport\r\n"
        "From: <sip:ping@127.0.0.1>;tag=p\r\nTo: <sip:ping@127.0.0.1>\r\n"
        "Call-ID: {cid}\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    n = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.3)
        lp = s.getsockname()[1]
        while time.monotonic() < deadline:
            n += 1
            cid = call_id or f"ping{n}@test"
            s.sendto(msg.format(p=port, lp=lp, n=n, cid=cid).encode(), ("127.0.0.1", port))
            try:
                data = s.recv(65535)
            except OSError:
                continue
            if data.startswith(b"SIP/2.0 200"):
                return
    raise TimeoutError(f"no SIP node on 127.0.0.1:{port}")


def wait_tcp(port: int, timeout: float = 15.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} (TCP)")


@dataclass
class Daemon:
    """A running `callengine serve` process."""

    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    metrics_port: int | None = None
    args: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def _chooses_workers(extra: Sequence[str]) -> bool:
    """True when ``serve``'s arguments set ``workers``: ``--workers``, or a ``--config``
    file with a ``workers`` setting."""
    if "--workers" in extra:
        return True
    if "--config" in extra:
        settings = yaml.safe_load(Path(extra[extra.index("--config") + 1]).read_text())
        return isinstance(settings, dict) and "workers" in settings
    return False


def _without_workers(args: list[str]) -> list[str]:
    """``args`` without ``--workers N`` (or ``--workers=N``)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def start_daemon(
    tmp: Path,
    *extra: str,
    port: int | None = None,
    data_dir: Path | None = None,
    metrics: bool = False,
    wait: bool = True,
    env: dict[str, str] | None = None,
) -> Daemon:
    port = port or free_port()
    data_dir = data_dir or (tmp / "data")
    log_path = tmp / f"serve-{port}-{int(time.monotonic() * 1000)}.log"
    args = [CALLENGINE, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
    metrics_port = None
    if metrics:
        metrics_port = free_port(socket.SOCK_STREAM, both=False)
        args += ["--metrics", f"127.0.0.1:{metrics_port}"]
    else:
        args.append("--no-metrics")
    if "--admin" not in extra:
        args.append("--no-admin")  # parallel nodes would share the default admin port
    # a whole-suite pass in another mode, e.g. CALLENGINE_TEST_SERVE_ARGS=--media-process
    mode = os.environ.get("CALLENGINE_TEST_SERVE_ARGS", "").split()
    if _chooses_workers(extra):
        # the test's own choice wins over the pass's (a test about one process, or
        # parametrized over 1 and 2 workers, keeps its meaning in the multi-worker pass)
        mode = _without_workers(mode)
    elif "--workers" not in mode:
        # one process per node unless the test asks (whatever serve's default): the
        # suite is about features, test_workers.py and the multi-worker pass
        # (CALLENGINE_TEST_SERVE_ARGS="--workers 2") about the node's processes; before
        # the test's own arguments, which tests restarting a node take from the end
        args += ["--workers", "1"]
    args += list(extra)
    args += mode
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            args, stdout=logf, stderr=subprocess.STDOUT, cwd=tmp, env={**os.environ, **(env or {})}
        )
    daemon = Daemon(proc, port, data_dir, log_path, metrics_port, args)
    if wait:
        try:
            wait_udp_sip(port)
            if metrics_port is not None:  # serve opens /metrics just after SIP answers
                wait_tcp(metrics_port)
        except TimeoutError:
            daemon.stop(signal.SIGKILL)
            raise AssertionError(f"daemon did not start:\n{daemon.log()}") from None
    return daemon


@dataclass
class SippResult:
    returncode: int
    stats: dict[str, str]
    stdout: str
    stderr: str


def run_sipp(
    args: list[str],
    *,
    cwd: Path,
    timeout: float = 120.0,
) -> SippResult:
    """Run SIPp in the background mode-free way (-nostdin) and read its final CSV stats."""
    stat_file = cwd / f"sipp-stats-{int(time.monotonic() * 1e6)}.csv"
    cmd = [SIPP, *args, "-nostdin", "-trace_stat", "-stf", str(stat_file), "-fd", "3600"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=timeout, check=False)
    stats: dict[str, str] = {}
    if stat_file.exists():
        lines = [ln for ln in stat_file.read_text().splitlines() if ln.strip()]
        if len(lines) >= 2:
            header = lines[0].rstrip(";").split(";")
            last = lines[-1].rstrip(";").split(";")
            stats = dict(zip(header, last, strict=False))
    return SippResult(
        proc.returncode,
        stats,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


_WORKER_OF = re.compile(r'worker="\d+"')
_WORKER_LABEL = re.compile(r'(?:,worker="[^"]+"|worker="[^"]+",?)')  # "front" too


def scrape(port: int) -> dict[str, float]:
    """A node's /metrics as ``{'name{labels}': value}`` (Prometheus text format)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def scrape_node(port: int) -> dict[str, float]:
    """:func:`scrape`, plus the node's figures of a multi-worker node: its front labels
    each worker's series with ``worker``, and their sum is added under the name without
    that label, unless the front has a series of that name itself. (A one-process
    node's series have no ``worker`` label: the same as :func:`scrape`.)"""
    out = scrape(port)
    folded: dict[str, float] = {}
    for name, value in out.items():
        if 'worker="' in name:
            node = _WORKER_LABEL.sub("", name, count=1).replace("{}", "")
            folded[node] = folded.get(node, 0.0) + value
    for name, value in folded.items():
        out.setdefault(name, value)
    return out


def scrape_fresh(port: int, timeout: float = 10.0) -> dict[str, float]:
    """:func:`scrape_node` once every worker of a multi-worker node has pushed its
    samples to the front since this call (they push every second): what the workers
    counted before the call is in the figures. A one-process node's figures are always
    fresh.

    A worker's loop-lag histogram gains a sample every 10 ms, so a new count for every
    worker (``callengine_worker_up`` names them) means a newer push from each."""
    lag = "callengine_event_loop_lag_ms_count"
    first = scrape_node(port)
    workers = [_WORKER_OF.search(k) for k in first if k.startswith("callengine_worker_up{")]
    labels = [m.group(0) for m in workers if m is not None]
    if not labels:
        return first
    before = {w: first.get(f"{lag}{{{w}}}", -1.0) for w in labels}
    deadline = time.monotonic() + timeout
    while True:
        now = scrape_node(port)
        if all(now.get(f"{lag}{{{w}}}", -1.0) > before[w] for w in labels):
            return now
        assert time.monotonic() < deadline, f"the workers pushed no metrics in {timeout} s"
        time.sleep(0.05)


def wait_metric(port: int, name: str, want: float, timeout: float = 10.0) -> None:
    """Poll /metrics until ``name`` equals ``want``."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = scrape_node(port).get(name)
        except OSError:  # serve opens /metrics just after SIP answers: not yet listening
            time.sleep(0.05)
            continue
        if value == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} is {value}, expected {want} within {timeout} s")


def sipp_to(target: Daemon | str, *args: str, local_ip: str = "127.0.0.1") -> list[str]:
    """SIPp arguments aimed at a node, on ports of their own (SIPp and its media)."""
    address = target.address if isinstance(target, Daemon) else target
    return [
        address,
        "-i",
        local_ip,
        "-p",
        str(free_port()),
        "-mp",
        str(free_port(both=False)),
        *args,
    ]


def calls(result: SippResult) -> tuple[int, int]:
    """(successful, failed) calls as SIPp counted them; SIPp's output if it wrote none."""
    if not result.stats:
        raise AssertionError(f"SIPp wrote no statistics (rc {result.returncode}):\n{result.stderr}")
    return int(result.stats["SuccessfulCall(C)"]), int(result.stats["FailedCall(C)"])


Handler = Callable[[Call], Awaitable[Any]]


@contextlib.asynccontextmanager
async def in_process_engine(tmp: Path, handler: Handler) -> AsyncIterator[tuple[Engine, int]]:
    """An Engine on 127.0.0.1:<free port> (UDP) running ``handler`` for every call."""
    port = free_port()
    engine = Engine(
        EngineConfig(
            listen=[f"127.0.0.1:{port}"],
            transports=["UDP"],
            metrics=None,
            data_dir=str(tmp / "data"),
        )
    )
    engine.on_call()(handler)
    await engine.start()
    try:
        yield engine, port
    finally:
        await engine.stop(grace=2.0)


OFFER_PCMU = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    elapsed: float


def sip_call(
    port: int,
    number: str,
    *,
    max_forwards: int = 70,
    hold: float = 0.0,
    timeout: float = 15.0,
    source: str = "127.0.0.1",
    call_id: str | None = None,
) -> Response:
    """Place one call from a raw UDP socket bound to ``source``; returns the final
    response (ACKed, BYE'd). ``call_id``: the whole Call-ID (default: a random one)."""
    full_id = call_id or f"{secrets.token_hex(8)}@test"
    call_id = full_id.partition("@")[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        lp = s.getsockname()[1]
        s.settimeout(timeout)
        branch = f"z9hG4bK{secrets.token_hex(6)}"
        common = (
            f"From: <sip:caller@{source}:{lp}>;tag=ft{call_id}\r\n"
            f"Call-ID: {full_id}\r\nMax-Forwards: {max_forwards}\r\n"
        )
        ruri = f"sip:{number}@127.0.0.1:{port}"
        invite = (
            f"INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {source}:{lp};branch={branch};rport\r\n"
            f"{common}To: <{ruri}>\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{source}:{lp}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(OFFER_PCMU)}\r\n\r\n{OFFER_PCMU}"
        )
        t0 = time.monotonic()
        s.sendto(invite.encode(), ("127.0.0.1", port))
        while True:
            data = s.recv(65535).decode(errors="replace")
            head = data.split("\r\n\r\n", 1)[0].split("\r\n")
            status = int(head[0].split()[1])
            if status >= 200:
                break
        elapsed = time.monotonic() - t0
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        to = headers.get("to", f"<{ruri}>")
        ack_branch = branch if status >= 300 else f"z9hG4bK{secrets.token_hex(6)}"
        ack = (
            f"ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {source}:{lp};branch={ack_branch};rport\r\n"
            f"{common}To: {to}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )
        s.sendto(ack.encode(), ("127.0.0.1", port))
        if 200 <= status < 300:
            time.sleep(hold)
            bye = (
                f"BYE {ruri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {source}:{lp};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
                f"{common}To: {to}\r\nCSeq: 2 BYE\r\nReason: Q.850;cause=16\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            s.sendto(bye.encode(), ("127.0.0.1", port))
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    reply = s.recv(65535).decode(errors="replace")
                except OSError:
                    break
                if reply.startswith("SIP/2.0 200") and "BYE" in reply:
                    break
    return Response(status, headers, elapsed)
