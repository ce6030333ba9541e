"""`callengine serve` as an operator sees it: signals and draining, start-up errors,
the metrics endpoint, JSON logs, IPv6. Each test starts its own daemon process and
asserts exit codes, stderr text, bytes on the wire and SIPp's counts.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from integration.support import (
    CALLENGINE,
    SIPP,
    Daemon,
    calls,
    free_port,
    run_sipp,
    scrape,
    scrape_fresh,
    scrape_node,
    sipp_to,
    wait_metric,
    wait_udp_sip,
)

from callengine.config import cpu_cores

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(SIPP).exists(), reason="SIPp (sip-tester) is not installed"),
]

_SIPP_CALL_ID = re.compile(r"\b\d+-\d+@127\.0\.0\.1\b")


def serve(tmp_path: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run `callengine serve` to completion (for start-up errors), with its default
    workers (one per core)."""
    return subprocess.run(
        [CALLENGINE, "serve", "--data-dir", str(tmp_path / "data"), "--no-metrics", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def invite(port: int, local_port: int, call_id: str, *, host: str = "127.0.0.1") -> bytes:
    return (
        f"INVITE sip:service@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{local_port};branch=z9hG4bK-{call_id}\r\n"
        f"From: <sip:raw@{host}:{local_port}>;tag=f-{call_id}\r\n"
        f"To: <sip:service@{host}:{port}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:raw@{host}:{local_port}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def ack_for(request: bytes, response: bytes) -> bytes:
    """The ACK of a non-2xx final response: same branch, the response's To (§17.1.1.3)."""
    req_lines = request.decode().split("\r\n")
    to = next(ln for ln in response.decode().split("\r\n") if ln.lower().startswith("to:"))
    keep = [ln for ln in req_lines[1:] if ln.split(":", 1)[0] in ("Via", "From", "Call-ID")]
    start = req_lines[0].replace("INVITE", "ACK", 1)
    return (
        "\r\n".join([start, *keep, to, "CSeq: 1 ACK", "Content-Length: 0"]) + "\r\n\r\n"
    ).encode()


def final_response(sock: socket.socket, timeout: float = 3.0) -> bytes:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        data = sock.recv(65535)
        if not data.startswith(b"SIP/2.0 1"):
            return data
    raise AssertionError("no final response")


# ------------------------------------------------------------------------ draining
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_active_calls_then_exits_0(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, sig: signal.Signals
) -> None:
    """After the signal a new INVITE gets 503 + Retry-After, the calls in progress run
    to their end (SIPp counts them successful) and the process exits 0 well before the
    drain grace is over."""
    daemon = daemon_factory("--drain-grace", "20", metrics=True)
    assert daemon.metrics_port is not None
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            run_sipp,
            sipp_to(daemon.address, "-sn", "uac", "-r", "50", "-m", "4", "-d", "2500"),
            cwd=tmp_path,
            timeout=30,
        )
        wait_metric(daemon.metrics_port, "callengine_active_calls", 4.0)
        signalled = time.monotonic()
        daemon.proc.send_signal(sig)
        time.sleep(0.2)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            request = invite(daemon.port, sock.getsockname()[1], "after-signal@raw.test")
            sock.sendto(request, ("127.0.0.1", daemon.port))
            response = final_response(sock)
            sock.sendto(ack_for(request, response), ("127.0.0.1", daemon.port))
        assert response.startswith(b"SIP/2.0 503 "), response
        assert re.search(rb"\r\nRetry-After: *\d+\r\n", response), response
        assert calls(running.result()) == (4, 0)
    assert daemon.proc.wait(15) == 0, daemon.log()
    assert time.monotonic() - signalled < 10, "drain waited for the grace, not for the calls"
    assert "Traceback" not in daemon.log()


# ------------------------------------------------------------------ start-up errors
@pytest.mark.parametrize(
    ("yaml_text", "field", "words"),
    [
        ("max_calls: 100\nmax_cals: 5\n", "max_cals", "unknown setting"),
        ("max_calls: lots\n", "max_calls", "expected int, got str"),
    ],
    ids=["unknown-key", "wrong-type"],
)
def test_bad_config_file_one_line_naming_file_and_field(
    tmp_path: Path, yaml_text: str, field: str, words: str
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(yaml_text)
    port = free_port()
    done = serve(tmp_path, "--config", str(config), "--listen", f"127.0.0.1:{port}")
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert str(config) in lines[0]
    assert field in lines[0]
    assert words in lines[0]
    assert done.stdout == ""


def test_port_in_use_exits_nonzero_with_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        done = serve(tmp_path, "--listen", f"127.0.0.1:{port}")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("callengine:")]
    assert errors == [f"callengine: cannot listen on 127.0.0.1:{port}: address already in use"], (
        done.stderr
    )


# ----------------------------------------------------------------------- workers
@pytest.mark.heavy  # a multi-process node (tests/conftest.py)
def test_serve_runs_a_worker_per_core_by_default(tmp_path: Path) -> None:
    """``callengine serve`` with no ``workers`` setting uses the machine: one worker per
    core it may use (a front and N workers behind the one address), one process on a
    single core. Calls go through, /metrics shows every worker, SIGTERM ends it with 0."""
    cores = cpu_cores()
    port, metrics_port = free_port(), free_port(both=False)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [CALLENGINE, "serve", "--listen", f"127.0.0.1:{port}"]
            + ["--data-dir", str(tmp_path / "data"), "--metrics", f"127.0.0.1:{metrics_port}"],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    daemon = Daemon(proc, port, tmp_path / "data", log_path, metrics_port)
    try:
        wait_udp_sip(port, timeout=30)
        result = run_sipp(
            sipp_to(daemon, "-sn", "uac", "-r", "50", "-m", "40", "-d", "100"),
            cwd=tmp_path,
            timeout=30,
        )
        assert calls(result) == (40, 0)
        workers = {
            k: v for k, v in scrape(metrics_port).items() if k.startswith("callengine_worker_up{")
        }
        if cores == 1:
            assert workers == {}, workers
        else:
            assert len(workers) == cores and set(workers.values()) == {1.0}, (cores, workers)
            text = daemon.log()
            assert f" ready ({cores} workers)" in text, text[-2000:]
            # the node says ready once every worker takes calls
            ready = text.index(f" ready ({cores} workers)")
            assert all(text.index(f"worker {i} ready (pid ") < ready for i in range(cores))
    finally:
        rc = daemon.stop()
    assert rc == 0, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()


# ----------------------------------------------------------------------- metrics
def test_metrics_endpoint(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    daemon = daemon_factory(metrics=True)
    assert daemon.metrics_port is not None
    result = run_sipp(
        sipp_to(daemon.address, "-sn", "uac", "-r", "20", "-m", "5", "-d", "100"),
        cwd=tmp_path,
        timeout=30,
    )
    assert calls(result) == (5, 0)
    wait_metric(daemon.metrics_port, "callengine_active_calls", 0.0)
    # SIPp is done: once every worker has pushed its figures since, they are final
    metrics = scrape_fresh(daemon.metrics_port)
    retransmitted = int(result.stats["Retransmissions(C)"])
    invites = metrics['callengine_sip_requests_in_total{method="INVITE"}']
    assert 5 <= invites <= 5 + retransmitted
    assert metrics['callengine_sip_requests_in_total{method="BYE"}'] >= 5
    assert metrics['callengine_calls_total{result="answered"}'] == 5
    lag = metrics['callengine_event_loop_lag_seconds{stat="last"}']
    assert 0 <= lag < 1.0
    # the loop-lag histogram has samples (one per 10 ms sleep) and adds up
    samples = metrics["callengine_event_loop_lag_ms_count"]
    assert samples > 0
    assert metrics['callengine_event_loop_lag_ms_bucket{le="+Inf"}'] == samples
    # the real-time GC policy: the young generation is collected (sampled) or frozen,
    # the whole heap only at start-up (before any call) or when idle; calls leave no
    # cyclic garbage
    # one tick in ten (every 0.5 s) collects the young generation: wait for one
    young = 'callengine_gc_collections_total{generation="0"}'
    deadline = time.monotonic() + 5
    while metrics[young] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        metrics = scrape_node(daemon.metrics_port)
    assert metrics[young] > 0
    assert metrics['callengine_gc_collections_total{generation="1"}'] == 0
    assert metrics['callengine_gc_collected_objects_total{generation="0"}'] == 0
    for gen in "012":
        assert 0 <= metrics[f'callengine_gc_pause_max_seconds{{generation="{gen}"}}'] < 1.0
    assert metrics["callengine_log_records_dropped_total"] == 0


# --------------------------------------------------------------------- JSON logs
def test_json_log_lines_carry_the_call_id(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Every line is one JSON object; a line about a call carries that call's id.

    An answered call that ends normally logs nothing at INFO, so the call-related line
    used here is the RTP-timeout hangup (SIPp's uac sends no RTP; rtp_timeout: 1)."""
    config = tmp_path / "node.yaml"
    config.write_text("rtp_timeout: 1\n")
    daemon = daemon_factory("--config", str(config), "--log-format", "json")
    run_sipp(
        sipp_to(daemon.address, "-sn", "uac", "-r", "10", "-m", "3", "-d", "4000"),
        cwd=tmp_path,
        timeout=30,
    )
    assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.log().splitlines()]
    assert records, "no log lines"
    for rec in records:
        assert {"ts", "level", "logger", "call_id", "msg"} <= rec.keys(), rec
    about_calls = [(rec, _SIPP_CALL_ID.findall(rec["msg"])) for rec in records]
    about_calls = [(rec, ids) for rec, ids in about_calls if ids]
    assert len({ids[0] for _, ids in about_calls}) == 3, records
    for rec, ids in about_calls:
        assert rec["call_id"] == ids[0], rec


# -------------------------------------------------------------------------- IPv6
def _ipv6_loopback() -> str | None:
    """None when [::1] is usable, else why not."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"cannot bind [::1]: {exc}"
    return None


@pytest.fixture
def v6_daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    why = _ipv6_loopback()
    if why is not None:
        print(f"IPv6 test skipped: {why}")
        pytest.skip(why)
    for _ in range(20):
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
            port = int(s.getsockname()[1])
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s2:
            try:
                s2.bind(("::1", port))
            except OSError:
                continue
        break
    log = open(tmp_path / "serve-v6.log", "wb")
    proc = subprocess.Popen(
        [CALLENGINE, "serve", "--listen", f"[::1]:{port}", "--data-dir", str(tmp_path / "data")]
        + ["--no-metrics", "--workers", "1"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_ipv6_listen_answers_options_and_calls(
    v6_daemon: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    proc, port = v6_daemon
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        lp = sock.getsockname()[1]
        sock.settimeout(0.3)
        answer = b""
        deadline = time.monotonic() + 15
        n = 0
        while not answer and time.monotonic() < deadline:
            n += 1
            options = (
                f"OPTIONS sip:ping@[::1]:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP [::1]:{lp};branch=z9hG4bK-v6-{n}\r\n"
                f"From: <sip:ping@[::1]>;tag=v6\r\nTo: <sip:ping@[::1]>\r\n"
                f"Call-ID: v6-{n}@test\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\n"
                f"Content-Length: 0\r\n\r\n"
            ).encode()
            sock.sendto(options, ("::1", port))
            try:
                answer, source = sock.recvfrom(65535)
            except TimeoutError:
                assert proc.poll() is None, "daemon exited"
                continue
        assert answer.startswith(b"SIP/2.0 200 "), answer
        assert source[:2] == ("::1", port)
        assert f"Call-ID: v6-{n}@test\r\n".encode() in answer
    result = run_sipp(
        sipp_to(f"[::1]:{port}", "-sn", "uac", "-r", "10", "-m", "3", "-d", "100", local_ip="::1"),
        cwd=tmp_path,
        timeout=30,
    )
    assert calls(result) == (3, 0)


def test_number_no_tenant_owns_gets_404(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """With real tenants (no default route), a number nobody owns is refused with 404,
    while a tenant's own number is answered."""
    data = tmp_path / "data"
    tenant = Path(__file__).resolve().parents[1] / "fixtures/tenants/reliability_v1.yaml"
    imported = subprocess.run(
        [CALLENGINE, "config", "import", str(tenant), "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    daemon = daemon_factory(data_dir=data)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        local_port = sock.getsockname()[1]
        request = invite(daemon.port, local_port, "nobody-404").replace(
            b"sip:service@", b"sip:99999@"
        )
        sock.sendto(request, ("127.0.0.1", daemon.port))
        answer = final_response(sock)
        sock.sendto(ack_for(request, answer), ("127.0.0.1", daemon.port))
    assert answer.startswith(b"SIP/2.0 404 Not Found\r\n"), answer
    result = run_sipp(
        sipp_to(daemon.address, "-sn", "uac", "-s", "5550100", "-m", "1", "-d", "100"), cwd=tmp_path
    )
    assert calls(result) == (1, 0)
