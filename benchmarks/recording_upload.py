"""Recording throughput with uploads running: recorded calls per core, and the upload
rate Azurite sustains from one node (issue #12's benchmark).

One engine process (``benchmarks.recording``'s: answer, record both directions, loop a
prompt until the caller hangs up) keeps its media in Azurite (``media_storage: azure``,
started here on loopback from the project's ``node_modules``) through the spool, so
every recording is uploaded while the next calls run. SIPp's built-in ``uac_pcap``
scenario holds ``--calls`` calls at once (``-l``), each streaming SIPp's G.711 capture
(~8 s, then BYE), new calls started at ``calls / 8`` per second so that as many end
(and upload) as start. Three phases:

1. **Load with uploads** (``--window`` s after the ``--warmup``): the engine's CPU time
   (from /proc, every thread: the uploads' MD5 runs in a worker thread) gives CPU per
   recorded call and **recorded calls per core** (calls / CPU fraction, a linear
   extrapolation); the spool's counters (the engine prints them every 0.2 s) give the
   upload rate while calls run (files/s, MB/s), whether it keeps up (spool files,
   oldest age) and failed uploads. Azurite's own CPU is reported beside it.
2. **Backlog** (``--backlog`` s): Azurite is paused (SIGSTOP) while the load goes on,
   so recordings pile up in the spool (uploads in flight time out and are retried).
3. **Drain**: the load ends, Azurite resumes (SIGCONT); the time until the spool is
   empty gives the **upload rate Azurite sustains from one node** (files/s, MB/s, with
   ``upload_concurrency`` uploads in flight).

The machine is shared: keep runs short; the figures are indicative. ``--quick`` takes
about a minute and a half.

Usage::

    .venv/bin/python -m benchmarks.recording_upload --quick
    .venv/bin/python -m benchmarks.recording_upload --calls 150 --window 30 --backlog 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
try:
    from ._sipp import SIPP, cpu_seconds, free_port, options_ping
    from .recording import CAPTURES, _stats
except ImportError:  # run as a script
    sys.path.insert(0, str(ROOT))
    from benchmarks._sipp import SIPP, cpu_seconds, free_port, options_ping
    from benchmarks.recording import CAPTURES, _stats

AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public: every emulator has it)
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CALL_SECONDS = 8.0
"""How long one ``uac_pcap`` call lasts (its capture, then BYE)."""


class Engine:
    """The engine process and the stats lines it prints (read by a thread)."""

    def __init__(self, workdir: Path, storage: dict[str, Any]) -> None:
        self.port = free_port()
        config = workdir / "storage.json"
        config.write_text(json.dumps(storage))
        cmd = [sys.executable, "-m", "benchmarks.recording", "engine", "--port", str(self.port)]
        cmd += ["--data-dir", str(workdir / "engine"), "--record", "--storage", str(config)]
        cmd += ["--stats", "0.2"]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=open(workdir / "engine.log", "wb")
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"READY":
            raise RuntimeError(f"engine did not start (see {workdir / 'engine.log'})")
        if not options_ping(self.port, 10):
            raise RuntimeError("engine does not answer OPTIONS")
        self.lines: list[dict[str, float]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                continue

    def last(self) -> dict[str, float]:
        deadline = time.monotonic() + 5
        while not self.lines:
            if time.monotonic() > deadline:
                raise RuntimeError("no stats from the engine")
            time.sleep(0.05)
        return dict(self.lines[-1])

    def between(self, t0: float, t1: float) -> list[dict[str, float]]:
        return [line for line in list(self.lines) if t0 <= line["t"] <= t1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start_azurite(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    if not AZURITE.exists():
        raise SystemExit(f"{AZURITE} missing: run `make install` (npm ci)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    location = workdir / "azurite"
    location.mkdir()
    args = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port)]
    args += ["--location", str(location), "--skipApiVersionCheck", "--loose"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Azurite did not start") from None
            time.sleep(0.05)
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )
    return proc, connection


def _sipp(workdir: Path, port: int, calls: int, rate: float, total: int) -> subprocess.Popen[bytes]:
    cmd = [SIPP, f"127.0.0.1:{port}", "-sn", "uac_pcap", "-i", "127.0.0.1", "-mi", "127.0.0.1"]
    cmd += ["-p", str(free_port()), "-mp", str(free_port()), "-m", str(total), "-l", str(calls)]
    cmd += ["-r", f"{rate:g}", "-nostdin", "-trace_stat", "-stf", str(workdir / "sipp.csv")]
    cmd += ["-fd", "1", "-timeout", "120s"]
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _rate(first: dict[str, float], last: dict[str, float]) -> dict[str, float]:
    """Uploads between two stats lines: files/s and MB/s."""
    dt = last["t"] - first["t"]
    files = last["ok"] - first["ok"]
    data = last["ok_bytes"] - first["ok_bytes"]
    return {
        "seconds": round(dt, 2),
        "files": int(files),
        "files_per_s": round(files / dt, 2) if dt > 0 else 0.0,
        "mb_per_s": round(data / dt / 1e6, 3) if dt > 0 else 0.0,
        "mean_file_kb": round(data / files / 1e3, 1) if files else 0.0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-recup-"))
    (workdir / "pcap").symlink_to(CAPTURES)
    azurite, connection = _start_azurite(workdir)
    storage = {
        "kind": "azure",
        "connection_string": connection,
        "container": "bench",
        "upload_concurrency": args.concurrency,
        "retry_initial": 0.2,
        "retry_max": 1.0,
        "timeout": 3,
    }
    engine = Engine(workdir, storage)
    rate = math.ceil(args.calls / CALL_SECONDS)
    total = int(rate * (args.warmup + args.window + args.backlog))
    sipp: subprocess.Popen[bytes] | None = None
    try:
        sipp = _sipp(workdir, engine.port, args.calls, rate, total)
        # 1. load with uploads running
        time.sleep(args.warmup)
        cpu0, az0, t0 = cpu_seconds(engine.proc.pid), cpu_seconds(azurite.pid), time.time()
        start = engine.last()
        time.sleep(args.window)
        cpu1, az1, t1 = cpu_seconds(engine.proc.pid), cpu_seconds(azurite.pid), time.time()
        end = engine.last()
        window = engine.between(t0, t1)
        # 2. backlog: storage paused while the calls go on
        azurite.send_signal(signal.SIGSTOP)
        paused_at = engine.last()
        sipp.wait(args.backlog + CALL_SECONDS + 60)
        deadline = time.monotonic() + 15
        while engine.last()["calls"] > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.6)  # the last recordings enter the spool as their calls end
        backlog = engine.last()
        # 3. drain
        azurite.send_signal(signal.SIGCONT)
        resumed = time.time()
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            last = engine.last()
            if last["t"] > resumed and last["files"] == 0 and last["in_flight"] == 0:
                break
            time.sleep(0.1)
        drained = engine.last()
    finally:
        if sipp is not None and sipp.poll() is None:
            sipp.kill()
            sipp.wait()
        if azurite.poll() is None:
            azurite.send_signal(signal.SIGCONT)
        engine.stop()
        azurite.kill()
        azurite.wait()
    stats = _stats(workdir / "sipp.csv")
    cpu = (cpu1 - cpu0) / (t1 - t0)
    held = sum(line["calls"] for line in window) / len(window) if window else float(args.calls)
    drain = _rate(backlog, drained)
    drain["seconds"] = round(drained["t"] - resumed, 2)
    if drain["seconds"] > 0:
        drain["files_per_s"] = round(drain["files"] / drain["seconds"], 2)
        drain["mb_per_s"] = round(
            (drained["ok_bytes"] - backlog["ok_bytes"]) / drain["seconds"] / 1e6, 3
        )
    # uploads cut by the pause whose blob was stored after all: found there on retry
    drain["present"] = int(drained["present"] - backlog["present"])
    result: dict[str, Any] = {
        "calls": args.calls,
        "new_calls_per_s": rate,
        "upload_concurrency": args.concurrency,
        "load_average": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "load": {
            "window_s": round(t1 - t0, 2),
            "calls_in_progress_mean": round(held, 1),
            "engine_cpu_percent": round(100 * cpu, 1),
            "cpu_ms_per_call_second": round(1000 * cpu / held, 3) if held else None,
            "recorded_calls_per_core": round(held / cpu, 1) if cpu else None,
            "azurite_cpu_percent": round(100 * (az1 - az0) / (t1 - t0), 1),
            "uploads": _rate(start, end),
            "spool_files_max": int(max((line["files"] for line in window), default=0)),
            "spool_bytes_max": int(max((line["bytes"] for line in window), default=0)),
            "spool_oldest_max_s": round(max((line["oldest"] for line in window), default=0), 2),
            "uploads_failed": int(end["failed"] - start["failed"]),
        },
        "backlog": {
            "paused_s": round(backlog["t"] - paused_at["t"], 2),
            "spool_files": int(backlog["files"]),
            "spool_mb": round(backlog["bytes"] / 1e6, 2),
            "spool_oldest_s": round(backlog["oldest"], 2),
        },
        "drain": {**drain, "left_in_spool": int(drained["files"])},
        "uploads_failed_total": int(drained["failed"]),
        "sipp": {
            "successful": int(stats.get("SuccessfulCall(C)", 0)),
            "failed": int(stats.get("FailedCall(C)", 0)),
        },
        "workdir": str(workdir),
    }
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
        result["workdir"] = None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=150, help="calls held at once")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--backlog", type=float, default=30.0, help="seconds storage is paused")
    parser.add_argument("--concurrency", type=int, default=4, help="upload_concurrency")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="40 calls, 15 s window and backlog")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.warmup, args.window, args.backlog = 40, 9.0, 15.0, 15.0
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
