"""B2BUA calls per second: SIPp ``-sn uac`` -> ONE ``callengine serve`` -> a SIPp UAS
playing a PRI carrier's gateway, next to SIPp uac -> the same SIPp UAS directly.

Run from the repository root::

    python -m benchmarks.b2bua              # 5 s steps
    python -m benchmarks.b2bua --quick      # 3 s steps, one bisection
    python -m benchmarks.b2bua --modes b2bua --seconds 10

Three set-ups are searched in the same run:

``direct``
    ``sipp -sn uac`` -> ``sipp -sf tests/fixtures/sipp/pri_uas_answer.xml`` (the reference).
``b2bua``
    through the engine with ``--no-media``: the B2BUA passes SDP through and opens no
    RTP socket for either leg (signalling only).
``b2bua+relay``
    through the engine with media: both legs get an RTP session and the B2BUA relays
    RTP between them (silence here: SIPp's ``uac`` sends no RTP, the engine still
    sends every 20 ms on both legs).

The engine's configuration is one trunk (an E1 x 8 spans, so channels never limit)
in one group, an empty-prefix outbound route (SIPp dials ``service``) and
127.0.0.1 as the trusted source; OPTIONS probes run every 30 s. Each step offers
``rate * seconds`` calls (``-d 100``) against freshly started processes; a step
fails when >= 0.1 % of the calls fail or never complete, or SIPp could not create
calls at 95 % of the rate (the rules of ``benchmarks.sip_cps``). The first failing
step is bisected against the last good one. Results are printed and written to
``benchmarks/results/b2bua-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._sipp import SIPP, Peer, StepResult, free_port, run_uac_step, start_engine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CARRIER = ROOT / "tests" / "fixtures" / "sipp" / "pri_uas_answer.xml"
STEPS = (200, 400, 600, 800, 1000, 1200, 1500, 2000, 3000, 4000, 6000, 8000)
MODES = ("direct", "b2bua", "b2bua+relay")

CONFIG = """
workers: 1
trunks:
  carrier:
    carrier: bench
    sources: []  # the gateway shares 127.0.0.1 with SIPp uac: never "from the trunk"
    gateway: {{host: 127.0.0.1, port: {port}}}
    spans: [{spans}]
    health: {{probe_interval: 30, probe_timeout: 5}}
trunk_groups:
  pstn: {{trunks: [carrier], setup_timeout: 5}}
outbound_routes:
  - {{prefix: "", group: pstn}}
trusted_sources: [127.0.0.1/32]
"""


@dataclasses.dataclass
class Setup:
    """The processes of one step: what SIPp's uac calls, and the carrier behind it."""

    front: Peer
    carrier: Peer | None

    def stop(self) -> int:
        rc = self.front.stop()
        if self.carrier is not None:
            self.carrier.stop()
        return rc


def start_carrier(workdir: Path) -> Peer:
    """A SIPp UAS with the carrier scenario (answers INVITEs and OPTIONS probes)."""
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "carrier.log"
    args = [
        SIPP,
        "-sf",
        str(CARRIER),
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-mp",
        str(free_port()),
        "-nostdin",
        "-max_socket",
        "10000",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, cwd=workdir)
    time.sleep(0.3)
    if proc.poll() is not None:
        raise RuntimeError(f"carrier did not start:\n{log_path.read_text(errors='replace')}")
    return Peer("carrier", proc, port, workdir, log_path)


def start_setup(mode: str, workdir: Path) -> Setup:
    carrier = start_carrier(workdir / "carrier")
    if mode == "direct":
        return Setup(carrier, None)
    spans = ", ".join(f"{{name: s{i}, type: E1}}" for i in range(8 * 8))
    config = workdir / "b2bua.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(CONFIG.format(port=carrier.port, spans=spans))
    try:
        engine = start_engine(
            workdir / "engine", media=mode == "b2bua+relay", extra=("--config", str(config))
        )
    except BaseException:
        carrier.stop()
        raise
    engine.name = mode
    return Setup(engine, carrier)


@dataclasses.dataclass
class Search:
    mode: str
    best: int
    first_bad: int | None
    steps: list[StepResult]
    best_step: StepResult | None


def _step(mode: str, rate: int, seconds: float, root: Path) -> StepResult:
    workdir = Path(tempfile.mkdtemp(prefix=f"{mode.replace('+', '-')}-{rate}-", dir=root))
    setup = start_setup(mode, workdir)
    try:
        result = run_uac_step(setup.front, rate, seconds, workdir=workdir)
    finally:
        rc = setup.stop()
    if rc not in (0, -15) and result.ok:
        result.reasons.append(f"exit code {rc} after the step")
    return result


def _print_step(mode: str, r: StepResult) -> None:
    verdict = "ok" if r.ok else "FAIL: " + "; ".join(r.reasons)
    print(
        f"  {mode:12s} {r.rate:6d} cps  {r.successful:7d}/{r.calls:<7d} ok  {r.failed:5d} failed"
        f"  {r.retransmissions:6d} retrans  created {r.achieved_cps:6.0f}/s"
        f"  front CPU {r.peer_cpu_pct:5.1f} %  {verdict}",
        flush=True,
    )


def search(
    mode: str, *, steps: tuple[int, ...], seconds: float, bisections: int, root: Path
) -> Search:
    done: list[StepResult] = []
    good, good_step, bad = 0, None, None
    for rate in steps:
        r = _step(mode, rate, seconds, root)
        done.append(r)
        _print_step(mode, r)
        if not r.ok:
            bad = rate
            break
        good, good_step = rate, r
    if bad is not None:
        for _ in range(bisections):
            mid = max(50, round((good + bad) / 2 / 50) * 50)
            if mid <= good or mid >= bad:
                break
            r = _step(mode, mid, seconds, root)
            done.append(r)
            _print_step(mode, r)
            if r.ok:
                good, good_step = mid, r
            else:
                bad = mid
    return Search(mode, good, bad, done, good_step)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.b2bua", description=__doc__)
    p.add_argument("--quick", action="store_true", help="3 s steps, one bisection")
    p.add_argument("--seconds", type=float, help="seconds per step (default 5)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--max-rate", type=int, default=8000)
    args = p.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 5.0)
    bisections = 1 if args.quick else 2
    with open("/proc/loadavg") as f:
        load = [float(x) for x in f.read().split()[:3]]
    print(
        f"b2bua: {', '.join(args.modes)}; {seconds:g} s steps, -d 100, < 0.1 % failed; "
        f"load average {load}",
        flush=True,
    )
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results: list[Search] = []
    with tempfile.TemporaryDirectory(prefix="b2bua-bench-") as tmp:
        for mode in args.modes:
            steps = tuple(r for r in STEPS if r <= args.max_rate)
            results.append(
                search(mode, steps=steps, seconds=seconds, bisections=bisections, root=Path(tmp))
            )
    ref = next((s for s in results if s.mode == "direct"), None)
    print(f"\n{'mode':14s} {'max CPS':>8s} {'first bad':>9s} {'engine/uas CPU':>15s}")
    for s in results:
        cpu = f"{s.best_step.peer_cpu_pct:12.1f} %" if s.best_step else "             -"
        bad = str(s.first_bad) if s.first_bad else f">{s.best}"
        print(f"{s.mode:14s} {s.best:8d} {bad:>9s} {cpu:>15s}")
    if ref is not None and ref.best:
        for s in results:
            if s is not ref:
                print(f"ratio {s.mode} / direct: {s.best / ref.best:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"b2bua-{time.strftime('%Y%m%dT%H%M%S')}.json"
    doc: dict[str, Any] = {
        "benchmark": "b2bua",
        "started": started,
        "command": " ".join([sys.executable, "-m", "benchmarks.b2bua", *(argv or sys.argv[1:])]),
        "step_seconds": seconds,
        "call_duration_ms": 100,
        "max_failed_fraction": 0.001,
        "environment": {"cpus": os.cpu_count(), "loadavg_at_start": load, "sipp": SIPP},
        "results": [
            {
                "mode": s.mode,
                "max_cps": s.best,
                "first_bad_cps": s.first_bad,
                "ratio_to_direct": (s.best / ref.best) if ref is not None and ref.best else None,
                "front_cpu_pct_at_max": s.best_step.peer_cpu_pct if s.best_step else None,
                "steps": [dataclasses.asdict(r) | {"ok": r.ok} for r in s.steps],
            }
            for s in results
        ],
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwritten {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
