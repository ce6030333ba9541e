"""What ``GET /calls`` costs the node's event loop with N live calls held by SIPp.

Starts ``callengine serve`` (media on: every call has an RTP session playing a prompt in
a loop), makes SIPp hold N calls (``tests/fixtures/sipp/uac_wait_bye.xml``), then asks
for the whole list R times and reports: the response time seen by the client, the
longest stretch one request held the loop (the node measures its slices, ``/health``
``calls_slice_max_ms``), and the event-loop lag histogram (10 ms sleeps) over the
requests against the same span without requests.

    PYTHONPATH=. python benchmarks/admin_calls.py --calls 1000 --requests 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
CALLENGINE = str(Path(sys.executable).with_name("callengine"))
TENANT = ROOT / "tests" / "fixtures" / "tenants" / "admin_v1.yaml"
SCENARIO = ROOT / "tests" / "fixtures" / "sipp" / "uac_wait_bye.xml"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return bytes(resp.read())


def lag_buckets(metrics_url: str) -> dict[str, float]:
    out = {}
    for line in get(metrics_url).decode().splitlines():
        if line.startswith("callengine_event_loop_lag_ms_bucket"):
            le = line.split('le="')[1].split('"')[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def over(before: dict[str, float], after: dict[str, float], ms: str) -> tuple[int, int]:
    """(samples later than ``ms``, all samples) between two scrapes."""
    total = after["+Inf"] - before["+Inf"]
    within = after[ms] - before[ms]
    return int(total - within), int(total)


LAGS = "2/5/10/20 ms"


def lags(b0: dict[str, float], b1: dict[str, float], *, swap: bool = False) -> str:
    if swap:
        b0, b1 = b1, b0
    counts = [over(b0, b1, ms) for ms in ("2", "5", "10", "20")]
    return "/".join(str(late) for late, _ in counts) + f" of {counts[0][1]}"


def post(url: str) -> bytes:
    req = urllib.request.Request(url, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return bytes(resp.read())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--no-media", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="admin-calls-"))
    shutil.copy(TENANT, tmp / "tenant.yaml")
    # SIPp sends no RTP: the calls must be measured within rtp_timeout (60 s) of answer
    (tmp / "node.yaml").write_text("tenant_files: [tenant.yaml]\nworkers: 1\n")
    sip, metrics, admin = free_port(), free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    cmd = [CALLENGINE, "serve", "--config", str(tmp / "node.yaml"), "--data-dir", str(tmp / "d")]
    cmd += ["--listen", f"127.0.0.1:{sip}", "--metrics", f"127.0.0.1:{metrics}"]
    cmd += ["--admin", f"127.0.0.1:{admin}", "--log-level", "WARNING"]
    cmd += ["--no-media"] if args.no_media else []
    node = subprocess.Popen(cmd, cwd=tmp, stderr=open(tmp / "node.log", "wb"))
    base = f"http://127.0.0.1:{admin}"
    murl = f"http://127.0.0.1:{metrics}/metrics"
    sipp = None
    try:
        for _ in range(100):
            try:
                get(base + "/ready")
                break
            except OSError:
                time.sleep(0.1)
        sipp = subprocess.Popen(
            [SIPP, f"127.0.0.1:{sip}", "-sf", str(SCENARIO), "-s", "5550300"]
            + ["-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port())]
            + ["-m", str(args.calls), "-l", str(args.calls), "-r", "100", "-nostdin"]
            + ["-buff_size", str(4 << 20)],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while json.loads(get(base + "/ready"))["calls"] < args.calls:
            if time.monotonic() > deadline:
                raise SystemExit("SIPp did not bring the calls up")
            time.sleep(0.5)
        time.sleep(3)  # let the set-up burst settle
        quiet0 = lag_buckets(murl)
        time.sleep(args.requests * 0.25)
        quiet1 = lag_buckets(murl)
        results = {}
        for rtp in ("1", "0"):
            b0 = lag_buckets(murl)
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                body = json.loads(get(f"{base}/calls?rtp={rtp}"))
                times.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.2)
            b1 = lag_buckets(murl)
            health = json.loads(get(base + "/health"))
            slices = (health["calls_slice_max_ms"], health["calls_slice_cpu_max_ms"])
            results[rtp] = (body["total"], times, slices, b0, b1)
        # then every call is hung up through the API and the logs are read back
        ids = [c["id"] for c in json.loads(get(f"{base}/calls?rtp=0"))["calls"]]
        for call_id in ids:
            post(f"{base}/calls/{urllib.parse.quote(call_id, safe='')}/hangup")
        while json.loads(get(base + "/ready"))["calls"]:
            time.sleep(0.5)
        time.sleep(2)
        b0 = lag_buckets(murl)
        log_times = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            count = len(json.loads(get(f"{base}/logs?limit=1000"))["logs"])
            log_times.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.2)
        log_lag = lags(lag_buckets(murl), b0, swap=True)
        mode = "no media" if args.no_media else "media on"
        print(f"{args.calls} live calls ({mode}), {args.requests} GET /calls each:")
        for rtp, (total, times, (wall, cpu), b0, b1) in results.items():
            times.sort()
            print(
                f"  rtp={rtp}: {total} calls listed; response median {times[len(times) // 2]:.1f}"
                f" ms, max {times[-1]:.1f} ms; longest loop slice so far {wall:.2f} ms wall,"
                f" {cpu:.2f} ms CPU; loop-lag samples > {LAGS}: {lags(b0, b1)}"
            )
        print(f"  no requests (same span): loop-lag samples > {LAGS}: {lags(quiet0, quiet1)}")
        log_times.sort()
        print(
            f"  GET /logs?limit=1000 ({count} logs, read in a thread, sent 25 per turn): response"
            f" median {log_times[len(log_times) // 2]:.1f} ms, max {log_times[-1]:.1f} ms;"
            f" loop-lag samples > {LAGS}: {log_lag}"
        )
    finally:
        if sipp is not None:
            sipp.kill()
        node.terminate()
        node.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
