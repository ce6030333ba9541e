"""SIP calls per second: the highest rate SIPp's ``-sn uac`` sustains against ONE
``callengine serve`` process with < 0.1 % failed calls, next to SIPp's own UAS.

Run from the repository root (``make bench`` runs the full search)::

    python -m benchmarks.sip_cps            # full: 10 s steps, ~10 minutes
    python -m benchmarks.sip_cps --quick    # 3 s steps, fewer bisections
    python -m benchmarks.sip_cps --profile 1000   # one step under cProfile, top functions
    python -m benchmarks.sip_cps --peers engine --rates 200 --sustain 20   # one rate, held

Three peers are searched in the same run: the engine with its default demo
configuration (RTP session per call, in the media plane since that is ``serve``'s
default), the engine with ``--no-media`` (signalling only), and ``sipp -sn uas``
(SIPp's C++ UAS, the reference); ``--peers engine-inline`` adds the engine with its RTP
in the engine's own process (``--no-media-process``; ``engine-plane`` is the same as
``engine``, kept for older command lines). For each: offer
250, 500, 1000, 1500, 2000, 3000... calls/s, each step a fixed number of calls
(``rate * step seconds``, ``-d 100`` short calls) against a freshly started peer;
the first failing step is bisected against the last good one. A step fails when
failed or never-completed calls are >= 0.1 % of those offered, or SIPp could not
create calls at 95 % of the target rate (it throttles new calls while too many are
open, which is how a slow peer first shows). Retransmissions are counted, not failed.

Sustained check (``--sustain``, default 60 s, 20 s with ``--quick``, 0 turns it off):
10-second steps miss pauses that come every few tens of seconds (garbage collection of
a heap that grows with the calls held for retransmissions). After the search, the best
rate R runs once more for ``--sustain`` seconds; if that fails, 10 % lower (rounded to
50 like the bisection, at least 50 lower), at most ``--sustain-retries`` (4) more
times. ``sustained_cps`` is the rate that held (0: none of the tries did).

The peer's CPU is read from /proc/PID/stat (utime + stime, all threads) around each
step; 100 % is one core. A multi-worker node's is the whole process tree's, and each
process's (front, worker N, plane N) is printed under the step and kept in the JSON
(``peer_cpu_pct_by_process``). Results go to ``benchmarks/results/sip_cps-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._sipp import SIPP, Peer, StepResult, run_uac_step, start_engine, start_sipp_uas

RESULTS = Path(__file__).resolve().parent / "results"
FULL_STEPS = (250, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000)
QUICK_STEPS = (250, 500, 1000, 2000, 4000, 8000, 12000)
CEILING = 12000  # stop here: the reference UAS was measured at 10,000 CPS on this box

Starter = Callable[[Path], Peer]


@dataclasses.dataclass
class Search:
    peer: str
    best: int
    first_bad: int | None
    steps: list[StepResult]
    best_step: StepResult | None
    sustained: int | None = None
    """Highest rate that also held a ``--sustain`` step (0: none of the tries did;
    None: not measured)."""
    sustain_steps: list[StepResult] = dataclasses.field(default_factory=list)


def _start(workdir: Path, *, media: bool, extra: tuple[str, ...]) -> Peer:
    return start_engine(workdir, media=media, extra=extra)


def _round(rate: float) -> int:
    return max(50, int(round(rate / 50.0)) * 50)


def _step(start: Starter, rate: int, seconds: float, root: Path) -> StepResult:
    workdir = Path(tempfile.mkdtemp(prefix=f"step-{rate}-", dir=root))
    peer = start(workdir)
    try:
        result = run_uac_step(peer, rate, seconds, workdir=workdir)
    finally:
        rc = peer.stop()
    if rc != 0 and result.ok:
        result.reasons.append(f"peer exit code {rc} after the step")
    return result


def _print_step(name: str, r: StepResult) -> None:
    verdict = "ok" if r.ok else "FAIL: " + "; ".join(r.reasons)
    print(
        f"  {name:18s} {r.rate:6d} cps  {r.successful:7d}/{r.calls:<7d} ok  "
        f"{r.failed:5d} failed  {r.retransmissions:6d} retrans  "
        f"created {r.achieved_cps:7.0f}/s  peer CPU {r.peer_cpu_pct:5.1f} %  "
        f"uac CPU {r.uac_cpu_pct:5.1f} %  {verdict}",
        flush=True,
    )
    if len(r.peer_cpu_pct_by_process) > 1:
        parts = ", ".join(f"{k} {v:.1f} %" for k, v in r.peer_cpu_pct_by_process.items())
        print(f"  {'':18s} CPU per process: {parts}", flush=True)


def search(
    name: str,
    start: Starter,
    *,
    steps: tuple[int, ...],
    seconds: float,
    bisections: int,
    root: Path,
    deadline: float,
) -> Search:
    """Step up until a step fails, then bisect between the last good and first bad."""
    done: list[StepResult] = []
    good = 0
    good_step: StepResult | None = None
    bad: int | None = None
    for rate in steps:
        if time.monotonic() > deadline:
            print(f"  {name}: time budget spent, stopping at {good} cps", flush=True)
            break
        r = _step(start, rate, seconds, root)
        done.append(r)
        _print_step(name, r)
        if not r.ok:
            bad = rate
            break
        good, good_step = rate, r
    if bad is not None:
        for _ in range(bisections):
            mid = _round((good + bad) / 2)
            if mid <= good or mid >= bad or time.monotonic() > deadline:
                break
            r = _step(start, mid, seconds, root)
            done.append(r)
            _print_step(name, r)
            if r.ok:
                good, good_step = mid, r
            else:
                bad = mid
    return Search(name, good, bad, done, good_step)


def sustain(
    name: str,
    start: Starter,
    rate: int,
    *,
    seconds: float,
    retries: int,
    root: Path,
    deadline: float,
) -> tuple[int | None, list[StepResult]]:
    """One long step at the search's best ``rate``; on failure 10 % lower (rounded to
    50 like the bisection, at least 50 lower), at most ``retries`` more times.

    Returns (the rate that held, or 0 when none did, or None when not run; the steps)."""
    done: list[StepResult] = []
    for _ in range(retries + 1):
        if time.monotonic() > deadline:
            print(f"  {name}: time budget spent, no sustained step at {rate} cps", flush=True)
            return (0 if done else None), done
        r = _step(start, rate, seconds, root)
        done.append(r)
        _print_step(f"{name} {seconds:g}s", r)
        if r.ok:
            return rate, done
        lower = _round(rate * 0.9)
        if lower >= rate:
            lower = rate - 50
        if lower < 50:
            break
        rate = lower
    return 0, done


def _table(results: list[Search], sustain_seconds: float) -> str:
    out = io.StringIO()
    held = f"held {sustain_seconds:g} s"
    out.write(
        f"\n{'peer':20s} {'max CPS':>8s} {'first bad':>9s} {held:>10s} {'peer CPU':>9s} "
        f"{'uac CPU':>8s} {'retrans':>8s}\n"
    )
    for s in results:
        b = s.best_step
        cpu = f"{b.peer_cpu_pct:7.1f} %" if b else "      -"
        uac = f"{b.uac_cpu_pct:6.1f} %" if b else "     -"
        retrans = f"{b.retransmissions:8d}" if b else "       -"
        first_bad = str(s.first_bad) if s.first_bad else f">{s.best}"
        if s.sustained is None:
            sustained = "-"
        elif s.sustained == 0:
            sustained = f"<{min(r.rate for r in s.sustain_steps)}"
        else:
            sustained = str(s.sustained)
        out.write(
            f"{s.peer:20s} {s.best:8d} {first_bad:>9s} {sustained:>10s} {cpu:>9s} {uac:>8s} "
            f"{retrans}\n"
        )
    ref = next((s for s in results if s.peer == "sipp -sn uas"), None)
    if ref is not None and ref.best:
        for s in results:
            if s is not ref:
                out.write(f"ratio {s.peer} / sipp -sn uas: {s.best / ref.best:.3f}")
                if s.sustained and ref.sustained:
                    out.write(f" ({held}: {s.sustained / ref.sustained:.3f})")
                out.write("\n")
    return out.getvalue()


def _environment() -> dict[str, Any]:
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_at_start": [float(x) for x in load],
        "sipp": SIPP,
    }


def profile(rate: int, seconds: float, *, media: bool, top: int) -> Path:
    """One step at ``rate`` with the engine under cProfile; prints the top functions."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = RESULTS / f"sip_cps-profile-{stamp}.prof"
    with tempfile.TemporaryDirectory(prefix="sip_cps-") as tmp:
        workdir = Path(tmp)
        peer = start_engine(workdir, media=media, profile_to=out)
        try:
            r = run_uac_step(peer, rate, seconds, workdir=workdir)
        finally:
            peer.stop(timeout=60)
    _print_step("engine (cProfile)", r)
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    print(f"profile written to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sip_cps", description=__doc__)
    p.add_argument("--quick", action="store_true", help="3 s steps, 1 bisection")
    p.add_argument("--seconds", type=float, help="step length (default 10, quick 3)")
    p.add_argument("--bisections", type=int, help="default 3, quick 1")
    p.add_argument(
        "--peers",
        default="engine,engine-no-media,uas",
        help="comma-separated subset of engine (media plane), engine-inline "
        "(--no-media-process), engine-plane (= engine), engine-no-media, uas",
    )
    p.add_argument(
        "--rates", help="comma-separated rates to step through instead of the default ladder"
    )
    p.add_argument(
        "--sustain",
        type=float,
        help="seconds of the sustained step at the best rate (default 60, quick 20; 0: off)",
    )
    p.add_argument(
        "--sustain-retries", type=int, default=4, help="10 %% lower retries of the sustained step"
    )
    p.add_argument(
        "--workers",
        default="1",
        help="comma-separated worker counts of the engine peers (e.g. 1,2: each engine "
        "peer is searched once per count; CPU is the whole process tree's)",
    )
    p.add_argument("--budget", type=float, default=2400.0, help="seconds for the whole run")
    p.add_argument("--profile", type=int, metavar="CPS", help="profile the engine at CPS instead")
    p.add_argument("--profile-no-media", action="store_true", help="profile with --no-media")
    p.add_argument("--top", type=int, default=30, help="functions shown by --profile")
    args = p.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    if args.profile:
        profile(args.profile, seconds, media=not args.profile_no_media, top=args.top)
        return 0
    bisections = args.bisections if args.bisections is not None else (1 if args.quick else 3)
    steps: tuple[int, ...] = QUICK_STEPS if args.quick else FULL_STEPS
    if args.rates:
        try:
            steps = tuple(int(r) for r in args.rates.split(",") if r.strip())
        except ValueError:
            p.error("--rates: comma-separated integers")
    sustain_seconds = args.sustain if args.sustain is not None else (20.0 if args.quick else 60.0)
    try:
        worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        p.error("--workers: comma-separated integers")
    starters: dict[str, tuple[str, Starter]] = {"uas": ("sipp -sn uas", start_sipp_uas)}
    peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    known = ("engine", "engine-plane", "engine-inline", "engine-no-media", "uas")
    unknown = [c for c in peers if c not in known]
    if unknown:
        p.error(f"unknown peer(s): {', '.join(unknown)}")
    chosen: list[str] = []
    for peer in peers:
        if peer == "uas":
            chosen.append(peer)
            continue
        media = peer != "engine-no-media"
        plane = {
            "engine-plane": ("--media-process",),
            "engine-inline": ("--no-media-process",),
        }.get(peer, ())
        for n in worker_counts:
            key = peer if n == 1 else f"{peer} x{n}"
            label = {
                "engine": "engine",
                "engine-plane": "engine --media-process",
                "engine-inline": "engine --no-media-process",
            }
            name = label.get(peer, "engine --no-media") + ("" if n == 1 else f" x{n}")
            extra = plane + (() if n == 1 else ("--workers", str(n)))
            starters[key] = (name, functools.partial(_start, media=media, extra=extra))
            chosen.append(key)
    env = _environment()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(
        f"sip_cps: {len(chosen)} peers, {seconds:g} s steps, -d 100, < 0.1 % failed, "
        f"sustained step {sustain_seconds:g} s; load average {env['loadavg_at_start']}",
        flush=True,
    )
    deadline = time.monotonic() + args.budget
    results: list[Search] = []
    with tempfile.TemporaryDirectory(prefix="sip_cps-") as tmp:
        for key in chosen:
            name, start = starters[key]
            found = search(
                name,
                start,
                steps=steps,
                seconds=seconds,
                bisections=bisections,
                root=Path(tmp),
                deadline=deadline,
            )
            if sustain_seconds > 0 and found.best > 0:
                found.sustained, found.sustain_steps = sustain(
                    name,
                    start,
                    found.best,
                    seconds=sustain_seconds,
                    retries=args.sustain_retries,
                    root=Path(tmp),
                    deadline=deadline,
                )
            results.append(found)
    table = _table(results, sustain_seconds)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"sip_cps-{time.strftime('%Y%m%dT%H%M%S')}.json"
    ref = next((s.best for s in results if s.peer == "sipp -sn uas"), 0)
    doc = {
        "benchmark": "sip_cps",
        "started": started,
        "command": " ".join([sys.executable, "-m", "benchmarks.sip_cps", *(argv or sys.argv[1:])]),
        "step_seconds": seconds,
        "sustain_seconds": sustain_seconds,
        "call_duration_ms": 100,
        "max_failed_fraction": 0.001,
        "environment": env,
        "results": [
            {
                "peer": s.peer,
                "max_cps": s.best,
                "first_bad_cps": s.first_bad,
                "ratio_to_sipp_uas": (s.best / ref) if ref else None,
                "peer_cpu_pct_at_max": s.best_step.peer_cpu_pct if s.best_step else None,
                "steps": [dataclasses.asdict(r) | {"ok": r.ok} for r in s.steps],
                "sustained_cps": s.sustained,
                "sustain_steps": [dataclasses.asdict(r) | {"ok": r.ok} for r in s.sustain_steps],
            }
            for s in results
        ],
    }
    path.write_text(json.dumps(doc, indent=2))
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
