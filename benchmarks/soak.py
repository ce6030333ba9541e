"""Soak: sustained, mixed load against ONE ``callengine serve`` process for minutes,
measuring what 10-second steps cannot see (garbage-collector pauses, memory growth).

Load (both SIPp, UDP on loopback):

* ``--held H`` held calls with media: one SIPp UAC (``benchmarks/scenarios/
  soak_held_uac.xml``: SDP offer PCMU, PCMA, telephone-event) places them at
  ``--held-rate`` calls/s to number 7000, which the benchmark's tenant ``soak`` routes
  to an IVR flow that plays a prompt in a loop until hangup. Each call is held for the
  whole run, then SIPp sends BYE. The node runs with ``rtp_timeout: 0`` (SIPp sends no
  RTP on these calls).
* ``--cps C`` calls/s of churn once every held call is up (warm-up): SIPp's built-in
  ``-sn uac -d 100`` (answered, BYE after 100 ms) to 1000, the demo IVR, for
  ``--minutes D``.

Measured:

* the node's RTP to the held calls, captured with dumpcap on loopback and measured per
  stream by ``tshark -z rtp,streams`` (streams seen vs expected, max delta, lost
  packets): the whole load phase when that is at most ``CAPTURE_PACKETS`` packets
  (H x 50 packets/s x seconds), otherwise 5 windows spread evenly from the start to the
  end of the phase sharing that budget (at least 10 s each: 1,000 held calls for 10
  minutes get 5 windows of 10 s); ``--windows N --window S`` chooses them;
* /metrics every ``--interval`` s: event-loop lag (gauge and histogram), GC collections
  and pauses, media tick lateness, active calls, ended calls by result (missing metrics
  are reported as null);
* RSS (VmRSS) of the node and every descendant process, and CPU of that tree
  (utime + stime, with reaped children) and of both SIPp, from /proc;
* SIPp's statistics files: held calls failed or ended early, churn calls failed.

Usage (repository root)::

    .venv/bin/python -m benchmarks.soak                      # 1000 held + 30 cps, 10 min
    .venv/bin/python -m benchmarks.soak --quick              # 100 held + 30 cps, 1 min
    .venv/bin/python -m benchmarks.soak --held 300 --cps 300 --minutes 5

Writes ``benchmarks/results/soak-<timestamp>.json`` (config, environment, time series,
summary) and ``soak-<timestamp>.png`` (RSS and loop lag over time; needs matplotlib),
and prints a summary with pass/fail against the targets (``TARGETS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ._metrics import (
    Proc,
    Samples,
    highest_bucket,
    histogram_delta,
    histogram_quantile,
    labelled,
    node_wide,
    process_tree,
    scrape,
    value,
)
from ._rtp import Capture, StreamStats, analyse, capture, distribution, sipp_media_port
from ._sipp import (
    SIPP,
    SIPP_BUFFER,
    Peer,
    cpu_seconds,
    creation_rate,
    free_port,
    read_stats,
    start_engine,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SCENARIO = Path(__file__).resolve().parent / "scenarios" / "soak_held_uac.xml"
DEMO_TENANT = ROOT / "config_cache" / "demo" / "demo.json"
HELD_NUMBER = "7000"
CHURN_NUMBER = "1000"  # the demo tenant's main line: IVR flow "main"
PACKETS_PER_SECOND = 50  # 20 ms packets
TAIL = 10.0  # seconds between the end of the load phase and the first held BYE
CAPTURE_PACKETS = 2_500_000  # per run: ~280 MB of pcap at 96-byte snaplen, tshark copes

TARGETS = {
    "stream_max_delta_ms": 30.0,
    "lost_packets": 0,
    "loop_lag_max_ms": 20.0,
    "rss_growth": 0.10,
    "churn_failed_fraction": 0.001,
}

__all__ = ["TARGETS", "main"]


# ------------------------------------------------------------------------ the set-up


def soak_tenant(prompt: str) -> dict[str, Any]:
    """Tenant ``soak``: number 7000 -> a flow that plays ``prompt`` until hangup.

    One node visit plays the prompt ten times; the IVR's loop guard (1,000 node visits
    per call) would end a call only after 10,000 prompts (~17 h with ``menu``)."""
    return {
        "id": "soak",
        "rev": 1,
        "name": "Soak benchmark: held calls on a looping prompt",
        "numbers": {HELD_NUMBER: {"route": "ivr:hold", "name": "soak held calls"}},
        "flows": {
            "hold": {
                "start": "loop",
                "nodes": {
                    "loop": {
                        "type": "play",
                        "prompts": [prompt] * 10,
                        "barge_in": False,
                        "next": "loop",
                    }
                },
            }
        },
    }


def prepare_data_dir(workdir: Path, prompt: str) -> Path:
    """Import the demo tenant (churn) and the soak tenant (held calls) into the node's
    data directory, and write the node configuration file. Returns the config path."""
    tenants = workdir / "tenants.json"
    demo = json.loads(DEMO_TENANT.read_text())
    tenants.write_text(json.dumps([demo, soak_tenant(prompt)], indent=1))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "callengine.cli",
            "config",
            "import",
            str(tenants),
            "--data-dir",
            str(workdir / "data"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"callengine config import failed:\n{proc.stdout}{proc.stderr}")
    config = workdir / "node.yaml"
    # SIPp sends no RTP on the held calls: the node must not hang them up for silence
    lines = ["rtp_timeout: 0", *(os.environ.get("SOAK_NODE_CONFIG", "").split(";"))]
    if not any(line.strip().startswith("workers:") for line in lines):
        lines.append("workers: 1")  # one process unless asked (serve: a worker per core)
    config.write_text("\n".join(line for line in lines if line.strip()) + "\n")
    return config


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclasses.dataclass
class Plan:
    held: int
    cps: int
    minutes: float
    held_rate: float
    windows: int | None
    """None: automatic (see :meth:`capture_windows`)."""
    window: float | None
    interval: float
    settle: float
    prompt: str

    @property
    def duration(self) -> float:
        return self.minutes * 60.0

    @property
    def ramp(self) -> float:
        return self.held / self.held_rate

    @property
    def ramp_timeout(self) -> float:
        return self.ramp * 1.2 + 15.0

    @property
    def hold_seconds(self) -> float:
        """Each held call's hold (SIPp -d): long enough that the first BYE comes TAIL s
        after the load phase even if the ramp takes ``ramp_timeout``."""
        return self.ramp_timeout + self.settle + self.duration + TAIL

    @property
    def rss_reference_offset(self) -> float:
        """RSS reference: after the first minute of load (half the phase if shorter)."""
        return min(60.0, self.duration / 2)

    def capture_windows(self) -> list[tuple[float, float]]:
        """(start, seconds) of each capture window, relative to the load phase start.

        Automatic: the whole phase (from +1 s to 1 s before its end) when it fits in
        ``CAPTURE_PACKETS``; otherwise 5 windows of budget/5 seconds (at least 10 s),
        the first at the start of the phase and the last at its end. One explicit
        window is the last ``window`` seconds."""
        usable = self.duration - 2.0
        if usable <= 1.0:
            return []
        windows, window = self.windows, self.window
        if windows is None or window is None:
            seconds = CAPTURE_PACKETS / (self.held * PACKETS_PER_SECOND)
            if windows is None and window is None and seconds >= usable:
                return [(1.0, usable)]
            windows = windows if windows is not None else 5
            window = window if window is not None else max(10.0, seconds / max(1, windows))
        if windows <= 0:
            return []
        if windows * window >= usable or window >= usable:
            return [(1.0, usable)]
        if windows == 1:
            return [(self.duration - 1.0 - window, window)]
        step = (usable - window) / (windows - 1)
        return [(1.0 + i * step, window) for i in range(windows)]


# ------------------------------------------------------------------------ sampling


@dataclasses.dataclass
class Sample:
    t: float
    """Seconds since the node was started."""
    wall: float
    phase: str
    procs: list[Proc]
    metrics: Samples | None
    sipp_cpu: dict[str, float | None]

    def rss_kb(self) -> int:
        return sum(p.rss_kb for p in self.procs)

    def node_cpu(self) -> float:
        return sum(p.cpu_s for p in self.procs)

    def row(self) -> dict[str, Any]:
        m = self.metrics
        lag_last = value(m, "callengine_event_loop_lag_seconds", stat="last")
        lag_max = value(m, "callengine_event_loop_lag_seconds", stat="max")
        return {
            "t": round(self.t, 2),
            "phase": self.phase,
            "rss_kb": {str(p.pid): p.rss_kb for p in self.procs},
            "rss_total_kb": self.rss_kb(),
            "node_cpu_s": round(self.node_cpu(), 2),
            "loop_lag_last_ms": None if lag_last is None else round(lag_last * 1000, 2),
            "loop_lag_max_ms": None if lag_max is None else round(lag_max * 1000, 2),
            "gc_collections": labelled(m, "callengine_gc_collections_total", "generation") or None,
            "gc_pause_s": labelled(m, "callengine_gc_pause_seconds_total", "generation") or None,
            "gc_pause_max_s": labelled(m, "callengine_gc_pause_max_seconds", "generation") or None,
            "active_calls": value(m, "callengine_active_calls"),
            "media_streams": value(m, "callengine_media_streams"),
            "scrape_ok": m is not None,
        }


class Sampler(threading.Thread):
    """Every ``interval`` s: /metrics, the node's process tree, both SIPp's CPU time."""

    def __init__(self, node: Peer, metrics_port: int, t0: float, interval: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.node = node
        self.metrics_port = metrics_port
        self.t0 = t0
        self.interval = interval
        self.phase = "start"
        self.sipp: dict[str, subprocess.Popen[bytes]] = {}
        self.samples: list[Sample] = []
        self.names: dict[int, str] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def take(self, phase: str | None = None) -> Sample:
        try:
            metrics: Samples | None = node_wide(
                scrape(self.metrics_port, timeout=min(5.0, self.interval))
            )
        except (OSError, ValueError):
            metrics = None
        procs = process_tree(self.node.proc.pid)
        sipp_cpu: dict[str, float | None] = {}
        for name, proc in list(self.sipp.items()):
            try:
                sipp_cpu[name] = cpu_seconds(proc.pid) if proc.poll() is None else None
            except OSError:
                sipp_cpu[name] = None
        sample = Sample(
            time.monotonic() - self.t0, time.time(), phase or self.phase, procs, metrics, sipp_cpu
        )
        with self._lock:
            self.samples.append(sample)
            for p in procs:
                if p.pid not in self.names:
                    self.names[p.pid] = _cmdline(p.pid) or p.name
        return sample

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.take()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.interval + 10)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)[:200]


# ------------------------------------------------------------------------ SIPp


def start_held(
    plan: Plan, node_port: int, media_port: int, workdir: Path
) -> subprocess.Popen[bytes]:
    hold_ms = int(plan.hold_seconds * 1000)
    args = [
        SIPP,
        f"127.0.0.1:{node_port}",
        "-sf",
        str(SCENARIO),
        "-s",
        HELD_NUMBER,
        "-i",
        "127.0.0.1",
        "-mi",
        "127.0.0.1",
        "-p",
        str(free_port()),
        "-mp",
        str(media_port),
        "-r",
        f"{plan.held_rate:g}",
        "-l",
        str(plan.held),
        "-m",
        str(plan.held),
        "-d",
        str(hold_ms),
        "-recv_timeout",
        "10000",
        "-timeout",
        f"{int(plan.hold_seconds + plan.ramp_timeout + 60)}s",
        "-nostdin",
        *SIPP_BUFFER,
        "-trace_stat",
        "-stf",
        str(workdir / "held.csv"),
        "-fd",
        "1",
        "-trace_err",
        "-error_file",
        str(workdir / "held-errors.log"),
    ]
    with open(workdir / "held-sipp.log", "wb") as log:
        return subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=log)


def start_churn(plan: Plan, node_port: int, workdir: Path) -> subprocess.Popen[bytes]:
    calls = max(1, int(plan.cps * plan.duration))
    args = [
        SIPP,
        "-sn",
        "uac",
        f"127.0.0.1:{node_port}",
        "-s",
        CHURN_NUMBER,
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port()),
        "-mp",
        str(sipp_media_port()),
        "-r",
        str(plan.cps),
        "-m",
        str(calls),
        "-d",
        "100",
        "-recv_timeout",
        "10000",
        "-timeout",
        f"{int(plan.duration + 60)}s",
        "-nostdin",
        *SIPP_BUFFER,
        "-trace_stat",
        "-stf",
        str(workdir / "churn.csv"),
        "-fd",
        "1",
    ]
    with open(workdir / "churn-sipp.log", "wb") as log:
        return subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=log)


def _stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _int(row: dict[str, str], key: str) -> int:
    try:
        return int(row.get(key, "0") or 0)
    except ValueError:
        return 0


def _failures(row: dict[str, str]) -> dict[str, int]:
    """SIPp's non-zero failure counters (``Failed...(C)``) of a statistics row."""
    return {
        k[len("Failed") : -len("(C)")]: _int(row, k)
        for k in row
        if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and _int(row, k)
    }


def _row_at(rows: list[dict[str, str]], wall: float) -> dict[str, str] | None:
    """The last statistics row written at or before ``wall`` (Unix time)."""
    best = None
    for row in rows:
        if float(row["CurrentTime"].split("\t")[-1]) <= wall + 0.5:
            best = row
    return best


# ------------------------------------------------------------------------ the run


class Aborted(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Aborted("time budget of the run exceeded")


def _sigterm(signum: int, frame: object) -> None:
    raise Aborted("terminated")


@dataclasses.dataclass
class Window:
    start: float
    seconds: float
    capture: Capture | None = None
    pcap: str = ""
    streams: list[StreamStats] = dataclasses.field(default_factory=list)


def run(plan: Plan, workdir: Path) -> dict[str, Any]:
    """The whole soak; returns the raw observations (see :func:`summarise`)."""
    raise_nofile()
    config = prepare_data_dir(workdir, plan.prompt)
    metrics_port = free_port()
    node = start_engine(
        workdir,
        metrics_port=metrics_port,
        extra=("--config", str(config), "--drain-grace", "5"),
    )
    t0 = time.monotonic()
    sampler = Sampler(node, metrics_port, t0, plan.interval)
    held: subprocess.Popen[bytes] | None = None
    churn: subprocess.Popen[bytes] | None = None
    media_port = sipp_media_port()
    windows = [Window(s, d) for s, d in plan.capture_windows()]
    notes: list[str] = []
    marks: dict[str, float] = {}
    warm: Sample | None = None
    end: Sample | None = None
    held_rows_load_end: dict[str, str] | None = None
    budget = plan.ramp_timeout * 2 + plan.settle + plan.duration + TAIL + plan.ramp + 180
    previous = signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(budget))
    try:
        deadline = time.monotonic() + 30
        while True:  # /metrics answers
            try:
                scrape(metrics_port, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the node's /metrics did not answer") from None
                time.sleep(0.2)
        sampler.take("start")
        sampler.phase = "ramp"
        sampler.start()
        marks["ramp_start"] = time.monotonic() - t0
        held = start_held(plan, node.port, media_port, workdir)
        sampler.sipp["held"] = held
        # Warm-up: every held call answered and streaming.
        deadline = time.monotonic() + plan.ramp_timeout
        up = 0.0
        while time.monotonic() < deadline:
            try:
                m: Samples | None = node_wide(scrape(metrics_port))
            except OSError:
                m = None
            up = value(m, "callengine_media_streams") or value(m, "callengine_active_calls") or 0
            if up >= plan.held or held.poll() is not None or node.proc.poll() is not None:
                break
            time.sleep(0.25)
        if up < plan.held:
            raise RuntimeError(
                f"only {int(up)} of {plan.held} held calls up after {plan.ramp_timeout:.0f} s"
                f" (held SIPp rc {held.poll()}, node rc {node.proc.poll()})"
            )
        marks["held_up"] = time.monotonic() - t0
        sampler.phase = "settle"
        time.sleep(plan.settle)
        warm = sampler.take("warm")
        t_warm = time.monotonic()
        marks["load_start"] = t_warm - t0
        sampler.phase = "load"
        churn = start_churn(plan, node.port, workdir)
        sampler.sipp["churn"] = churn
        for w in windows:
            delay = t_warm + w.start - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if node.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {node.proc.returncode} under load")
            pcap = workdir / f"rtp-{int(w.start)}.pcap"
            w.pcap = str(pcap)
            w.capture = capture(pcap, dst_port=media_port, seconds=w.seconds)
            if not w.capture.ok:
                notes.append(f"capture at +{w.start:.0f} s failed: {w.capture.error}")
        delay = t_warm + plan.duration - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        end = sampler.take("end")
        marks["load_end"] = time.monotonic() - t0
        held_rows_load_end = _row_at(read_stats(workdir / "held.csv"), end.wall)
        sampler.phase = "teardown"
        try:
            churn.wait(30)
        except subprocess.TimeoutExpired:
            notes.append("churn SIPp still running 30 s after the load phase: stopped")
        _stop_process(churn)
        # The held calls end by themselves (hold_seconds), in the order they started.
        try:
            held.wait(max(0.0, t0 + plan.hold_seconds + plan.ramp_timeout - time.monotonic()) + 30)
        except subprocess.TimeoutExpired:
            notes.append("held SIPp still running after the held calls' end: stopped")
        _stop_process(held)
        marks["teardown_end"] = time.monotonic() - t0
    except Aborted as exc:
        notes.append(f"aborted: {exc}")
    except (RuntimeError, OSError) as exc:
        notes.append(f"error: {exc!r}" if isinstance(exc, OSError) else f"error: {exc}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, previous)
        if sampler.is_alive():
            sampler.stop()
        _stop_process(churn)
        _stop_process(held)
        node_rc = node.stop()
    engine_log = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
    # tshark once the load is gone (it would compete for the two cores).
    for w in windows:
        if w.capture is not None and w.capture.ok and Path(w.pcap).exists():
            w.streams = analyse(Path(w.pcap), media_port)
    held_rows = read_stats(workdir / "held.csv")
    churn_rows = read_stats(workdir / "churn.csv")
    held_errors = workdir / "held-errors.log"
    return {
        "samples": sampler.samples,
        "names": sampler.names,
        "warm": warm,
        "end": end,
        "marks": marks,
        "windows": windows,
        "notes": notes,
        "node_rc": node_rc,
        "engine_log_tail": engine_log.splitlines()[-20:],
        "held_rows": held_rows,
        "held_row_load_end": held_rows_load_end,
        "held_errors_head": held_errors.read_text(errors="replace")[:2000]
        if held_errors.exists()
        else "",
        "churn_rows": churn_rows,
    }


# ------------------------------------------------------------------------ summary


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float] | None:
    if not b:
        return None
    return {k: round(b[k] - a.get(k, 0.0), 6) for k in sorted(b)}


def _streams_summary(plan: Plan, windows: list[Window]) -> dict[str, Any]:
    out_windows = []
    worst: dict[int, StreamStats] = {}
    lost_total = 0
    for w in windows:
        expected_packets = w.seconds * PACKETS_PER_SECOND
        streams = w.streams
        short = [s for s in streams if s.packets < 0.9 * expected_packets]
        lost = sum(max(0, s.lost) for s in streams)
        lost_total += lost
        for s in streams:
            if s.src_port not in worst or s.max_delta > worst[s.src_port].max_delta:
                worst[s.src_port] = s
        out_windows.append(
            {
                "start_s": round(w.start, 1),
                "seconds": round(w.seconds, 1),
                "captured": None if w.capture is None else dataclasses.asdict(w.capture),
                "streams_expected": plan.held,
                "streams_seen": len(streams),
                "short_streams": len(short),
                "packets": sum(s.packets for s in streams),
                "lost": lost,
                "max_delta_ms": distribution([s.max_delta for s in streams]),
                "worst_mean_jitter_ms": max((s.mean_jitter for s in streams), default=None),
                "worst_streams": [
                    dataclasses.asdict(s) for s in sorted(streams, key=lambda s: -s.max_delta)[:5]
                ],
            }
        )
    captured = [w for w in windows if w.capture is not None and w.capture.ok]
    ok: bool | None = (
        None
        if not windows
        else (
            len(captured) == len(windows)
            and all(
                ow["streams_seen"] == plan.held and ow["short_streams"] == 0 for ow in out_windows
            )
            and all(s.max_delta <= TARGETS["stream_max_delta_ms"] for s in worst.values())
            and lost_total <= TARGETS["lost_packets"]
        )
    )
    dropped = sum((w.capture.dropped or 0) for w in captured if w.capture is not None)
    return {
        "method": (
            f"{len(windows)} dumpcap window(s) over the load phase (start s, seconds): "
            + ", ".join(f"+{w.start:.0f} s/{w.seconds:.0f} s" for w in windows)
        ),
        "windows": out_windows,
        "per_stream_worst_max_delta_ms": distribution([s.max_delta for s in worst.values()]),
        "streams_seen_any_window": len(worst),
        "lost": lost_total,
        "capture_dropped": dropped,
        "ok": ok,
    }


def _lag_summary(warm: Sample | None, end: Sample | None) -> dict[str, Any]:
    wm = warm.metrics if warm else None
    em = end.metrics if end else None
    g0 = value(wm, "callengine_event_loop_lag_seconds", stat="max")
    g1 = value(em, "callengine_event_loop_lag_seconds", stat="max")
    hist = histogram_delta(wm, em, "callengine_event_loop_lag_ms") if em else {}
    observed = sum(hist.values())
    top = highest_bucket(hist)
    # The gauge's max runs since the node started: it is the load phase's max only if
    # it rose during the load; otherwise the load's max is at most the gauge at warm-up,
    # and at most the highest non-empty histogram bucket.
    load_max: float | None
    if em is None:  # the run stopped before the end of the load phase
        load_max, exact = None, False
    elif g1 is not None and g0 is not None and g1 > g0:
        load_max, exact = g1 * 1000, True
    else:
        bounds = [b for b in (None if g0 is None else g0 * 1000, top) if b is not None]
        load_max, exact = (min(bounds) if bounds else None), False
    return {
        "max_ms_since_node_start": _ms(g1),
        "max_ms_at_warmup": _ms(g0),
        "max_ms_load": None if load_max is None else round(load_max, 3),
        "max_ms_load_is_exact": exact,
        "histogram_observations_load": observed if hist else None,
        "p50_ms_load_bucket": histogram_quantile(hist, 0.50) if hist else None,
        "p99_ms_load_bucket": histogram_quantile(hist, 0.99) if hist else None,
        "histogram_load": hist or None,
    }


def _gc_summary(warm: Sample | None, end: Sample | None) -> dict[str, Any] | None:
    wm = warm.metrics if warm else None
    em = end.metrics if end else None
    c0 = labelled(wm, "callengine_gc_collections_total", "generation")
    c1 = labelled(em, "callengine_gc_collections_total", "generation")
    p0 = labelled(wm, "callengine_gc_pause_seconds_total", "generation")
    p1 = labelled(em, "callengine_gc_pause_seconds_total", "generation")
    pmax = labelled(em, "callengine_gc_pause_max_seconds", "generation")
    if not (c1 or p1 or pmax):
        return None
    return {
        "collections_load": _delta(c0, c1),
        "pause_seconds_load": _delta(p0, p1),
        "pause_max_ms_since_node_start": {k: _ms(v) for k, v in pmax.items()} or None,
    }


def _sipp_summary(
    rows: list[dict[str, str]], planned: int, target_rate: float | None = None
) -> dict[str, Any]:
    if not rows:
        return {"planned": planned, "statistics": None}
    last = rows[-1]
    created = _int(last, "TotalCallCreated")
    successful = _int(last, "SuccessfulCall(C)")
    out: dict[str, Any] = {
        "planned": planned,
        "created": created,
        "successful": successful,
        "failed": _int(last, "FailedCall(C)"),
        "not_completed": planned - successful,
        "failed_fraction": (planned - successful) / planned if planned else None,
        "failures": _failures(last),
        "retransmissions": _int(last, "Retransmissions(C)"),
        "dead_call_msgs": _int(last, "DeadCallMsgs(C)"),
    }
    if target_rate:
        out["created_per_s"] = round(creation_rate(rows, created), 1) if created else 0.0
    return out


def _cpu_pct(a: float | None, b: float | None, seconds: float) -> float | None:
    if a is None or b is None or seconds <= 0:
        return None
    return round(100.0 * (b - a) / seconds, 1)


def _sipp_cpu_pct(name: str, samples: list[Sample], marks: dict[str, float]) -> float | None:
    """A SIPp's CPU % over the load phase, from the first to the last sample of that
    phase in which it was alive (the churn SIPp starts with the phase: from 0 CPU)."""
    if "load_start" not in marks:
        return None
    alive = [
        (s.t, cpu)
        for s in samples
        if s.phase in ("warm", "load", "end") and (cpu := s.sipp_cpu.get(name)) is not None
    ]
    if not alive:
        return None
    t1, c1 = alive[-1]
    t0, c0 = (marks["load_start"], 0.0) if name == "churn" else alive[0]
    return _cpu_pct(c0, c1, t1 - t0)


def summarise(plan: Plan, raw: dict[str, Any]) -> dict[str, Any]:
    samples: list[Sample] = raw["samples"]
    warm: Sample | None = raw["warm"]
    end: Sample | None = raw["end"]
    load_s = (end.t - warm.t) if warm and end else 0.0
    ref: Sample | None = None
    if warm is not None:
        ref = next(
            (s for s in samples if s.t >= warm.t + plan.rss_reference_offset and s.procs), None
        )
    rss_ref = ref.rss_kb() if ref else None
    rss_end = end.rss_kb() if end and end.procs else None
    rss_ratio = (rss_end / rss_ref) if rss_ref and rss_end else None
    streams = _streams_summary(plan, raw["windows"])
    lag = _lag_summary(warm, end)
    # When the lag gauge's max rose during the load (seconds after the load start, ms):
    # against the capture windows, it tells whether a stall fell inside one.
    rises: list[list[float]] = []
    previous: float | None = None
    for sample in samples:
        current = value(sample.metrics, "callengine_event_loop_lag_seconds", stat="max")
        if current is None:
            continue
        in_load = warm is not None and end is not None and warm.t < sample.t <= end.t
        if in_load and warm is not None and previous is not None and current > previous:
            rises.append([round(sample.t - warm.t, 1), round(current * 1000, 1)])
        previous = current
    lag["max_rises_during_load"] = rises
    held_final = _sipp_summary(raw["held_rows"], plan.held)
    load_end_row = raw["held_row_load_end"]
    held_failed_load = _int(load_end_row, "FailedCall(C)") if load_end_row else None
    held_rows_load = [
        r
        for r in raw["held_rows"]
        if warm and end and warm.wall - 0.5 <= float(r["CurrentTime"].split("\t")[-1]) <= end.wall
    ]
    held_min_up = min((_int(r, "CurrentCall") for r in held_rows_load), default=None)
    churn = _sipp_summary(raw["churn_rows"], int(plan.cps * plan.duration), plan.cps)
    wm = warm.metrics if warm else None
    em = end.metrics if end else None
    load_samples = [s for s in samples if s.phase in ("warm", "load", "end")]
    active = [
        v for s in load_samples if (v := value(s.metrics, "callengine_active_calls")) is not None
    ]
    tick = histogram_delta(wm, em, "callengine_media_tick_lateness_ms") if em else {}
    took = histogram_delta(wm, em, "callengine_media_tick_duration_ms") if em else {}
    late_5 = sum(n for le, n in tick.items() if le == "+Inf" or float(le) > 5.0)
    calls_delta = _delta(
        labelled(wm, "callengine_calls_total", "result"),
        labelled(em, "callengine_calls_total", "result"),
    )
    per_proc: dict[str, Any] = {}
    for label, s in (("reference", ref), ("end", end)):
        if s is not None:
            per_proc[label] = {f"{p.pid} {p.name}": round(p.rss_kb / 1024, 1) for p in s.procs}
    sipp_cpu = {name: _sipp_cpu_pct(name, samples, raw["marks"]) for name in ("held", "churn")}
    lag_value = lag["max_ms_load"]
    checks = {
        "held streams: every stream max delta <= 30 ms, 0 lost, all seen": streams["ok"],
        "loop lag max <= 20 ms (load phase)": (
            None if lag_value is None else lag_value <= TARGETS["loop_lag_max_ms"]
        ),
        "RSS end <= 1.10 x RSS after the first minute": (
            None if rss_ratio is None else rss_ratio <= 1.0 + TARGETS["rss_growth"]
        ),
        "churn failed < 0.1 %": (
            None
            if churn.get("failed_fraction") is None
            else churn["failed_fraction"] < TARGETS["churn_failed_fraction"]
        ),
        "held calls: none failed or ended early": (
            None if "successful" not in held_final else held_final["successful"] == plan.held
        ),
    }
    return {
        "load_seconds": round(load_s, 1),
        "rss": {
            "reference_at_s_after_load_start": (
                round(ref.t - warm.t, 1) if ref is not None and warm is not None else None
            ),
            "reference_mb": None if rss_ref is None else round(rss_ref / 1024, 1),
            "end_mb": None if rss_end is None else round(rss_end / 1024, 1),
            "end_over_reference": None if rss_ratio is None else round(rss_ratio, 3),
            "per_process_mb": per_proc,
        },
        "cpu_pct_of_one_core_load": {
            "node_tree": _cpu_pct(
                warm.node_cpu() if warm else None, end.node_cpu() if end else None, load_s
            ),
            "node_tree_since_start": (
                _cpu_pct(0.0, end.node_cpu(), end.t) if end is not None else None
            ),
            "sipp_held": sipp_cpu["held"],
            "sipp_churn": sipp_cpu["churn"],
        },
        "loop_lag": lag,
        "gc": _gc_summary(warm, end),
        "media_tick_lateness_load": {
            "histogram_ms": tick or None,
            "ticks_over_5ms": late_5 if tick else None,
            # clock callbacks observed (one per slot per 20 ms since media_clock_slots)
            "ticks": sum(tick.values()) if tick else None,
        },
        "media_tick_duration_load": {
            "histogram_ms": took or None,
            "p99_ms_bucket": histogram_quantile(took, 0.99) if took else None,
            "max_ms_bucket": highest_bucket(took) if took else None,
            "max_ms_since_node_start": value(em, "callengine_media_tick_duration_max_ms"),
        },
        "active_calls_load": {
            "min": min(active, default=None),
            "max": max(active, default=None),
        },
        "calls_ended_by_result_load": calls_delta,
        "held_calls": {
            **held_final,
            "failed_or_ended_by_load_end": held_failed_load,
            "min_up_during_load": held_min_up,
            "errors_head": raw["held_errors_head"] or None,
        },
        "churn_calls": churn,
        "rtp": streams,
        "complete": end is not None and not raw["notes"],
        "checks": checks,
        "passed": end is not None and all(v is True for v in checks.values()),
    }


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return f"{v:,.1f}{unit}" if abs(v) >= 10 else f"{v:.3g}{unit}"
    return f"{v}{unit}"


def report(plan: Plan, summary: dict[str, Any]) -> str:
    out = io.StringIO()
    rtp = summary["rtp"]
    dist = rtp["per_stream_worst_max_delta_ms"]
    rss = summary["rss"]
    lag = summary["loop_lag"]
    churn = summary["churn_calls"]
    held = summary["held_calls"]
    cpu = summary["cpu_pct_of_one_core_load"]
    gc = summary["gc"]
    out.write(
        f"\nsoak: {plan.held} held calls + {plan.cps} calls/s churn, "
        f"{summary['load_seconds']:.0f} s of load\n"
    )
    out.write(f"RTP: {rtp['method']}\n")
    for w in rtp["windows"]:
        d = w["max_delta_ms"]
        out.write(
            f"  window +{w['start_s']:.0f} s: {w['streams_seen']}/{w['streams_expected']} streams, "
            f"{w['short_streams']} short, lost {w['lost']}, max delta worst {_fmt(d['max'], ' ms')} "
            f"p99 {_fmt(d['p99'], ' ms')} p50 {_fmt(d['p50'], ' ms')}, "
            f"capture dropped {_fmt((w['captured'] or {}).get('dropped'))}\n"
        )
    out.write(f"  per-stream worst max delta buckets (ms): {dist['buckets']}\n")
    out.write(
        f"loop lag (load): max {_fmt(lag['max_ms_load'], ' ms')}"
        f"{'' if lag['max_ms_load_is_exact'] else ' (upper bound)'}, "
        f"p50 <= {_fmt(lag['p50_ms_load_bucket'], ' ms')}, "
        f"p99 <= {_fmt(lag['p99_ms_load_bucket'], ' ms')}; "
        f"max since node start {_fmt(lag['max_ms_since_node_start'], ' ms')}\n"
    )
    if lag["max_rises_during_load"]:
        out.write(
            "  lag max rose during the load at (s after load start, ms): "
            + ", ".join(f"+{t:g} s: {ms:g}" for t, ms in lag["max_rises_during_load"])
            + "\n"
        )
    if gc is None:
        out.write("GC: not exported by the node (null)\n")
    else:
        out.write(
            f"GC (load): collections {gc['collections_load']}, pause s "
            f"{gc['pause_seconds_load']}, max pause ms {gc['pause_max_ms_since_node_start']}\n"
        )
    tick = summary["media_tick_lateness_load"]
    out.write(
        f"media ticks > 5 ms late (load): {_fmt(tick['ticks_over_5ms'])}"
        f" of {_fmt(tick.get('ticks'))} clock callbacks\n"
    )
    took = summary.get("media_tick_duration_load") or {}
    if took.get("histogram_ms"):
        out.write(
            f"media clock callback duration (load): p99 <= {_fmt(took['p99_ms_bucket'], ' ms')}, "
            f"max <= {_fmt(took['max_ms_bucket'], ' ms')} "
            f"(longest since node start {_fmt(took['max_ms_since_node_start'], ' ms')})\n"
        )
    out.write(
        f"RSS: {_fmt(rss['reference_mb'], ' MB')} at +{_fmt(rss['reference_at_s_after_load_start'])}"
        f" s -> {_fmt(rss['end_mb'], ' MB')} at the end (x{_fmt(rss['end_over_reference'])}); "
        f"per process at the end: {rss['per_process_mb'].get('end')}\n"
    )
    out.write(
        f"CPU (% of one core, load phase): node tree {_fmt(cpu['node_tree'])}, "
        f"SIPp held {_fmt(cpu['sipp_held'])}, SIPp churn {_fmt(cpu['sipp_churn'])}\n"
    )
    out.write(
        f"held calls: {_fmt(held.get('successful'))}/{plan.held} completed, failed or ended "
        f"by the end of load {_fmt(held['failed_or_ended_by_load_end'])}, fewest up "
        f"{_fmt(held['min_up_during_load'])}, failures {held.get('failures')}\n"
    )
    ff = churn.get("failed_fraction")
    out.write(
        f"churn calls: {_fmt(churn.get('successful'))}/{churn['planned']} ok, "
        f"{_fmt(churn.get('failed'))} failed, created {_fmt(churn.get('created_per_s'))}/s, "
        f"failed {_fmt(None if ff is None else 100 * ff, ' %')}, "
        f"retrans {_fmt(churn.get('retransmissions'))}\n\n"
    )
    if not summary["complete"]:
        out.write("INCOMPLETE RUN (see the notes below): the checks cover what was measured\n")
    out.write(f"{'check':66s} result\n")
    for name, ok in summary["checks"].items():
        out.write(f"{name:66s} {'n/a' if ok is None else 'PASS' if ok else 'FAIL'}\n")
    out.write(f"{'overall':66s} {'PASS' if summary['passed'] else 'FAIL'}\n")
    if churn.get("failed") == 0 and churn.get("not_completed") == 0:
        out.write("(the 10-minute target asks 0 failed churn calls: met)\n")
    return out.getvalue()


def plot(doc: dict[str, Any], path: Path) -> str | None:
    """RSS and loop lag over time (two panels sharing the time axis) from a result
    document, drawn by :mod:`benchmarks.report` (the one module that imports
    matplotlib). Returns why no plot was written, or None."""
    if not doc["series"]:
        return "no samples: no plot"
    try:
        from .report import plot_soak

        plot_soak(doc, path)
    except ImportError:
        return "matplotlib is not installed in this environment: no plot"
    return None


def _environment() -> dict[str, Any]:
    with open("/proc/loadavg") as f:
        load = [float(x) for x in f.read().split()[:3]]
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    sipp_version = next(
        (
            line.strip()
            for line in subprocess.run(
                [SIPP, "-v"], capture_output=True, text=True, check=False
            ).stdout.splitlines()
            if "SIPp v" in line
        ),
        SIPP,
    )
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout.splitlines()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "loadavg_at_start": load,
        "sipp": sipp_version,
        "git_head": commit,
        "work_tree_modified_files": [ln[3:] for ln in dirty],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    p.add_argument("--held", type=int, help="held calls with media (default 1000; quick 100)")
    p.add_argument("--cps", type=int, help="churn calls per second (default 30)")
    p.add_argument("--minutes", type=float, help="load phase length (default 10; quick 1)")
    p.add_argument("--quick", action="store_true", help="100 held, 30 cps, 1 minute")
    p.add_argument("--held-rate", type=float, default=50.0, help="held calls placed per second")
    p.add_argument("--windows", type=int, help="RTP capture windows (default: automatic)")
    p.add_argument("--window", type=float, help="seconds per capture window (automatic)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the ramp")
    p.add_argument("--prompt", default="menu", help="the held calls' looping prompt")
    p.add_argument("--keep", action="store_true", help="keep the work directory (pcaps, logs)")
    p.add_argument("--plot", metavar="JSON", help="only (re)draw the PNG of an earlier result")
    args = p.parse_args(argv)
    if args.plot:
        source = Path(args.plot)
        note = plot(json.loads(source.read_text()), source.with_suffix(".png"))
        print(note or f"plot written to {source.with_suffix('.png')}")
        return 1 if note else 0
    plan = Plan(
        held=args.held if args.held is not None else (100 if args.quick else 1000),
        cps=args.cps if args.cps is not None else 30,
        minutes=args.minutes if args.minutes is not None else (1.0 if args.quick else 10.0),
        held_rate=args.held_rate,
        windows=args.windows,
        window=args.window,
        interval=args.interval,
        settle=args.settle,
        prompt=args.prompt,
    )
    if plan.held < 1 or plan.cps < 0 or plan.minutes <= 0 or plan.held_rate <= 0:
        p.error("--held, --held-rate and --minutes must be positive, --cps >= 0")
    for tool in (SIPP, "dumpcap", "tshark"):
        if shutil.which(tool) is None:
            print(f"soak: {tool} not found", file=sys.stderr)
            return 2
    env = _environment()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    print(
        f"soak: {plan.held} held calls (at {plan.held_rate:g}/s) + {plan.cps} calls/s churn, "
        f"{plan.minutes:g} min of load; load average {env['loadavg_at_start']}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        raw = run(plan, workdir)
        summary = summarise(plan, raw)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    series = [s.row() for s in raw["samples"]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"soak-{stamp}.json"
    png_path = RESULTS / f"soak-{stamp}.png"
    doc = {
        "benchmark": "soak",
        "started": started,
        "command": " ".join([sys.executable, "-m", "benchmarks.soak", *(argv or sys.argv[1:])]),
        "config": dataclasses.asdict(plan)
        | {
            "held_number": HELD_NUMBER,
            "churn_number": CHURN_NUMBER,
            "hold_seconds": round(plan.hold_seconds, 1),
            "churn_call_ms": 100,
            "node_config": {"rtp_timeout": 0, "drain_grace": 5},
            "targets": TARGETS,
        },
        "environment": env,
        "marks_s": {k: round(v, 2) for k, v in raw["marks"].items()},
        "notes": raw["notes"],
        "node_exit_code": raw["node_rc"],
        "engine_log_tail": raw["engine_log_tail"],
        "processes": {str(k): v for k, v in raw["names"].items()},
        "summary": summary,
        "plot": None,
        "plot_note": None,
        "series": series,
    }
    plot_note = plot(doc, png_path)
    doc["plot"], doc["plot_note"] = (None, plot_note) if plot_note else (str(png_path), None)
    json_path.write_text(json.dumps(doc, indent=1))
    print(report(plan, summary))
    for note in raw["notes"]:
        print(f"note: {note}")
    if args.keep:
        print(f"work directory kept: {workdir}")
    print(f"results written to {json_path}" + (f" and {png_path}" if not plot_note else ""))
    if plot_note:
        print(f"plot: {plot_note}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
