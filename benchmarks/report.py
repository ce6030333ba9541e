"""The benchmark report: ``make bench`` (full) and ``make bench-quick`` (a smoke run).

``python -m benchmarks.report run [--quick]`` runs, one after the other on a machine
that should otherwise be quiet, the three benchmarks whose figures the project
publishes, each as its own process:

* ``benchmarks.sip_cps``: the calls-per-second search of SIPp's ``-sn uac`` against
  ``callengine serve`` (with and without media) and against ``sipp -sn uas``, the
  reference measured in the same invocation;
* ``benchmarks.media_streams``: concurrent RTP streams one engine process sends on time
  (tshark's max delta per stream);
* ``benchmarks.soak``: held calls + churn for minutes (RSS, event-loop lag over time).

It gathers their JSON under ``benchmarks/results/<UTC timestamp>/`` (``sip_cps.json``,
``media_streams.json``, ``soak.json`` and ``run.json``, which records the commands,
exit codes, durations and load averages), draws the plots (``cps.png``, ``media.png``,
``soak.png``, 100 dpi) and writes ``summary.md``, whose headline figures are ratios to
the reference run of the same invocation, never absolute timings alone. The folder is
then copied to ``benchmarks/results/latest/``, which the README's images point at.

``python -m benchmarks.report render DIR`` draws the plots and the summary again from
the JSON in DIR (any of the three may be missing).

This is the only module of the project that imports matplotlib.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
PACKET_MS = 20.0
"""RTP packet time of the benchmarks' G.711 streams: the ideal max delta."""
REFERENCE_PEER = "sipp -sn uas"
LOADED = 1.0
"""A 1-minute load average above this at the start of a benchmark marks it as measured
on a busy machine."""
DPI = 100

# The reference peer first: it is measured even if the time budget runs out later.
PEERS = ["--peers", "uas,engine-no-media,engine"]
FULL: dict[str, list[str]] = {
    "sip_cps": PEERS,
    "media_streams": ["--steps", "500,1000,1500,2000", "--window", "8"],
    "soak": [],
}
QUICK: dict[str, list[str]] = {
    "sip_cps": [*PEERS, "--quick", "--budget", "900", "--sustain-retries", "2"],
    "media_streams": ["--steps", "250,500,1000", "--window", "5"],
    "soak": ["--quick"],
}
TIMEOUT_S: dict[str, float] = {"sip_cps": 3600.0, "media_streams": 1800.0, "soak": 1800.0}
"""Upper bounds per benchmark process (each also bounds itself)."""


# ---------------------------------------------------------------- figures from the JSON


@dataclass(frozen=True, slots=True)
class CpsRow:
    """One peer of a ``sip_cps`` run, with its ratios to the reference peer."""

    peer: str
    max_cps: int
    first_bad_cps: int | None
    sustained_cps: int | None
    cpu_pct_at_max: float | None
    ratio: float | None
    """max_cps / the reference's max_cps."""
    sustained_ratio: float | None
    """sustained_cps / the reference's sustained_cps, when both held a rate."""
    sustained_below: int | None
    """When no sustained step held (sustained_cps 0): the lowest rate tried."""
    cpu_per_call_ratio: float | None
    """(CPU % / max_cps) / the same for the reference: how many times the reference's
    CPU one call costs."""


def cps_rows(doc: dict[str, Any]) -> list[CpsRow]:
    """The peers of a ``sip_cps`` document with ratios to ``sipp -sn uas``."""
    results = doc.get("results", [])
    ref = next((r for r in results if r["peer"] == REFERENCE_PEER), None)
    ref_max = ref["max_cps"] if ref else 0
    ref_sustained = ref.get("sustained_cps") if ref else None
    ref_cpu = ref.get("peer_cpu_pct_at_max") if ref else None
    ref_cost = (ref_cpu / ref_max) if ref_cpu and ref_max else None
    rows = []
    for r in results:
        best = r["max_cps"]
        cpu = r.get("peer_cpu_pct_at_max")
        sustained = r.get("sustained_cps")
        cost = (cpu / best) if cpu and best else None
        rows.append(
            CpsRow(
                peer=r["peer"],
                max_cps=best,
                first_bad_cps=r.get("first_bad_cps"),
                sustained_cps=sustained,
                cpu_pct_at_max=cpu,
                ratio=(best / ref_max) if ref_max else None,
                sustained_ratio=(sustained / ref_sustained)
                if sustained and ref_sustained
                else None,
                sustained_below=min((t["rate"] for t in r.get("sustain_steps", [])), default=None)
                if sustained == 0
                else None,
                cpu_per_call_ratio=(cost / ref_cost) if cost and ref_cost else None,
            )
        )
    return rows


def reference_capped(doc: dict[str, Any]) -> bool:
    """True when the reference never failed a step: its true capacity is above what was
    offered, so the ratios to it are upper bounds."""
    ref = next((r for r in doc.get("results", []) if r["peer"] == REFERENCE_PEER), None)
    return ref is not None and ref.get("first_bad_cps") is None


def _loadavg(doc: dict[str, Any] | None) -> float | None:
    if not doc:
        return None
    load = doc.get("environment", {}).get("loadavg_at_start") or doc.get("loadavg_at_start")
    return float(load[0]) if load else None


def _f(v: float | None, fmt: str = "{:,.0f}", none: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return fmt.format(v)


def _ratio(v: float | None, *, bound: bool = False) -> str:
    return _f(v, ("<= " if bound else "") + "{:.3f}")


# ------------------------------------------------------------------------------ summary


def summary_markdown(
    *,
    cps: dict[str, Any] | None,
    media: dict[str, Any] | None,
    soak: dict[str, Any] | None,
    manifest: dict[str, Any] | None,
) -> str:
    """The markdown summary of one invocation."""
    out: list[str] = []
    stamp = (manifest or {}).get("stamp", "")
    mode = (manifest or {}).get("mode", "")
    out.append(f"# Benchmark report {stamp}".rstrip())
    out.append("")
    if manifest:
        out.append(
            f"Mode: **{mode}** (`{manifest.get('make', 'make bench')}`), started "
            f"{manifest.get('started', '?')}, {manifest.get('cpus', '?')} CPUs, "
            f"git `{str(manifest.get('git_head', ''))[:12]}`."
        )
        out.append("")
    loads: dict[str, float | None] = {
        name: _loadavg(d) for name, d in (("sip_cps", cps), ("soak", soak)) if d is not None
    }
    for run in (manifest or {}).get("runs", []):
        loads.setdefault(run["name"], run.get("loadavg_before"))
    busy = {k: v for k, v in loads.items() if v is not None and v > LOADED}
    if busy:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
        out.append(
            f"> **Measured on a loaded machine** (1-minute load average at the start: {shown}; "
            f"quiet means < {LOADED:g}). Absolute figures are lower bounds and not the "
            "project's figures; the ratios to the reference run of the same invocation "
            "are less affected but still approximate."
        )
        out.append("")
    out.append(
        "Headline figures are ratios to a reference measured in the same invocation "
        "(SIPp's own UAS for calls per second) or to a physical bound (the 20 ms RTP "
        "packet time for streams); absolute figures are given beside them only."
    )
    out.append("")
    out += _cps_section(cps)
    out += _media_section(media)
    out += _soak_section(soak)
    if manifest and manifest.get("runs"):
        out.append("## Commands")
        out.append("")
        out.append("| benchmark | command | exit code | seconds | load average before |")
        out.append("|---|---|---:|---:|---:|")
        for run in manifest["runs"]:
            out.append(
                f"| {run['name']} | `{run['command']}` | {run['returncode']} | "
                f"{run['seconds']:.0f} | {_f(run.get('loadavg_before'), '{:.2f}')} |"
            )
        out.append("")
        notes = [f"- {run['name']}: {run['note']}" for run in manifest["runs"] if run.get("note")]
        if notes:
            out += [*notes, ""]  # e.g. a benchmark run again after a failed first run
    return "\n".join(out)


def _sustained(r: CpsRow) -> str:
    if r.sustained_below is not None:
        return f"< {r.sustained_below:,}"
    return _f(r.sustained_cps)


def _cps_section(doc: dict[str, Any] | None) -> list[str]:
    out = ["## SIP calls per second (`benchmarks.sip_cps`)", ""]
    if not doc:
        return out + ["Not run.", ""]
    rows = cps_rows(doc)
    capped = reference_capped(doc)
    ref = next((r for r in rows if r.peer == REFERENCE_PEER), None)
    out.append(
        f"SIPp `-sn uac`, {doc.get('step_seconds', '?'):g} s steps, calls of "
        f"{doc.get('call_duration_ms', 100)} ms, a step passes with < "
        f"{100 * doc.get('max_failed_fraction', 0.001):g} % failed calls; sustained step "
        f"{doc.get('sustain_seconds', 0):g} s."
    )
    if doc.get("step_seconds", 10) < 10:
        out.append(
            f"{doc['step_seconds']:g} s steps overstate what a peer holds (pauses come every "
            "few tens of seconds, DESIGN.md): the sustained figures are the ones to quote."
        )
    out.append("")
    if ref is None:
        out.append("The reference (`sipp -sn uas`) was not run: no ratios.")
        out.append("")
    else:
        for r in rows:
            if r.peer == REFERENCE_PEER:
                continue
            out.append(
                f"- **{r.peer}: {_ratio(r.ratio, bound=capped)} x SIPp's UAS** in calls/s "
                f"({r.max_cps:,} vs {ref.max_cps:,}); sustained {_sustained(r)} vs "
                f"{_sustained(ref)} ({_ratio(r.sustained_ratio)}); one call costs "
                f"{_f(r.cpu_per_call_ratio, '{:.1f}')} x the reference's CPU."
            )
        if capped:
            out.append(
                f"- The reference never failed (up to {ref.max_cps:,} calls/s): its capacity "
                "is higher, so the ratios are upper bounds."
            )
        out.append("")
    out.append(
        "| peer | max calls/s | first failing | sustained | CPU at max | ratio to UAS "
        "| sustained ratio | CPU per call vs UAS |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        out.append(
            f"| {r.peer} | {r.max_cps:,} | {_f(r.first_bad_cps)} | {_sustained(r)} | "
            f"{_f(r.cpu_pct_at_max, '{:.0f} %')} | {_ratio(r.ratio, bound=capped)} | "
            f"{_ratio(r.sustained_ratio)} | {_f(r.cpu_per_call_ratio, '{:.1f}')} |"
        )
    out += ["", "![CPS search](cps.png)", ""]
    return out


def _media_section(doc: dict[str, Any] | None) -> list[str]:
    out = ["## RTP streams (`benchmarks.media_streams`)", ""]
    if not doc:
        return out + ["Not run.", ""]
    steps = doc.get("steps", [])
    best = doc.get("largest_passing_n", 0)
    out.append(
        f"Largest stream count meeting every criterion (all seen, max delta <= 30 ms, mean "
        f"jitter <= 5 ms, 0 lost): **{best:,}** per engine process. No SIPp reference "
        f"runs here: the ratio is the worst max delta to the {PACKET_MS:g} ms packet time "
        "(1.00 is perfect pacing, 1.50 the 30 ms target)."
    )
    out.append("")
    out.append(
        "| streams | seen | worst max delta | ratio to 20 ms | worst mean jitter | lost "
        "| engine CPU | CPU per 1,000 streams | passed |"
    )
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in steps:
        n = s["n"]
        cpu = s.get("engine_cpu_percent")
        out.append(
            f"| {n:,} | {s.get('streams_seen', 0):,} | {s.get('max_delta_ms', 0):.1f} ms | "
            f"{s.get('max_delta_ms', 0) / PACKET_MS:.2f} | "
            f"{s.get('worst_mean_jitter_ms', 0):.2f} ms | {s.get('lost', 0):,} | "
            f"{_f(cpu, '{:.0f} %')} | {_f(1000 * cpu / n if cpu and n else None, '{:.0f} %')} | "
            f"{'yes' if s.get('passed') else 'no' + (' (' + s['note'] + ')' if s.get('note') else '')} |"
        )
    out += ["", "![media streams](media.png)", ""]
    return out


def _soak_section(doc: dict[str, Any] | None) -> list[str]:
    out = ["## Soak (`benchmarks.soak`)", ""]
    if not doc:
        return out + ["Not run.", ""]
    cfg, summ = doc.get("config", {}), doc.get("summary", {})
    rtp = summ.get("rtp", {})
    worst = (rtp.get("per_stream_worst_max_delta_ms") or {}).get("max")
    lag = (summ.get("loop_lag") or {}).get("max_ms_load")
    targets = cfg.get("targets", {})
    lag_target = targets.get("loop_lag_max_ms", 20.0)
    rss = summ.get("rss", {})
    churn = summ.get("churn_calls", {})
    cpu = (summ.get("cpu_pct_of_one_core_load") or {}).get("node_tree")
    out.append(
        f"{cfg.get('held', '?')} held calls on a looping prompt + {cfg.get('cps', '?')} "
        f"calls/s of short calls for {cfg.get('minutes', 0):g} min "
        f"({summ.get('load_seconds', 0):.0f} s of load)."
    )
    out.append("")
    out.append(
        f"- Worst held stream max delta: {_f(worst, '{:.1f} ms')}, "
        f"**{_f(worst / PACKET_MS if worst is not None else None, '{:.2f}')} x the "
        f"{PACKET_MS:g} ms packet time**; lost packets {rtp.get('lost', '-')}; "
        f"streams seen {rtp.get('streams_seen_any_window', '-')}/{cfg.get('held', '-')}."
    )
    out.append(
        f"- Event-loop lag max during the load: {_f(lag, '{:.0f} ms')}, "
        f"**{_f(lag / lag_target if lag is not None else None, '{:.2f}')} x the "
        f"{lag_target:g} ms target**."
    )
    out.append(
        f"- RSS at the end / after the first minute: **{_f(rss.get('end_over_reference'), '{:.3f}')}**"
        f" ({_f(rss.get('reference_mb'), '{:.1f}')} -> {_f(rss.get('end_mb'), '{:.1f}')} MB; "
        f"target <= {1 + targets.get('rss_growth', 0.1):.2f})."
    )
    frac = churn.get("failed_fraction")
    out.append(
        f"- Churn calls failed: {_f(100 * frac if frac is not None else None, '{:.2f} %')} "
        f"({churn.get('failed', '-')} of {churn.get('planned', '-')}); node CPU "
        f"{_f(cpu, '{:.0f} %')} of one core."
    )
    checks = summ.get("checks", {})
    if checks:
        out.append("")
        out.append("| check | result |")
        out.append("|---|---|")
        for name, ok in checks.items():
            out.append(f"| {name} | {'-' if ok is None else 'pass' if ok else 'FAIL'} |")
    out += ["", "![soak](soak.png)", ""]
    return out


# -------------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _failed_pct(step: dict[str, Any]) -> float:
    never = max(0, step["calls"] - step["successful"] - step["failed"])
    return 100.0 * (step["failed"] + never) / max(1, step["calls"])


def _ok(step: dict[str, Any]) -> bool:
    return bool(step.get("ok", not step.get("reasons")))


def plot_cps(doc: dict[str, Any], path: Path) -> None:
    """Offered vs achieved calls/s, failed calls and CPU per peer, one colour per peer;
    the search's steps joined by a line, the sustained steps as squares."""
    plt = _pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, sharex=True, figsize=(9, 9))
    low, top = math.inf, 0
    for r in doc.get("results", []):
        steps = sorted(r.get("steps", []), key=lambda s: s["rate"])
        held = r.get("sustain_steps", [])
        if not steps:
            continue
        rate = [s["rate"] for s in steps]
        low, top = min(low, *rate), max(top, *rate)
        (line,) = ax1.plot(rate, [s["achieved_cps"] for s in steps], "o-", label=r["peer"])
        colour = line.get_color()
        ax2.plot(rate, [_failed_pct(s) for s in steps], "o-", color=colour, label=r["peer"])
        ax3.plot(rate, [s["peer_cpu_pct"] for s in steps], "o-", color=colour, label=r["peer"])
        ax3.plot(
            rate,
            [s["uac_cpu_pct"] for s in steps],
            ":",
            color=colour,
            label=f"SIPp uac vs {r['peer']}",
        )
        for ax, key in ((ax1, "achieved_cps"), (ax2, None), (ax3, "peer_cpu_pct")):
            if held:
                ax.plot(
                    [s["rate"] for s in held],
                    [s[key] if key else _failed_pct(s) for s in held],
                    "s",
                    color=colour,
                    markerfacecolor="none",
                    markersize=9,
                )
            bad = [s for s in steps + held if not _ok(s)]
            if bad:
                ax.plot(
                    [s["rate"] for s in bad],
                    [s[key] if key else _failed_pct(s) for s in bad],
                    "x",
                    color="red",
                    markersize=8,
                )
    if top:
        ax1.plot(
            [low, top],
            [low, top],
            color="grey",
            linestyle="--",
            linewidth=0.8,
            label="achieved = offered",
        )
    ax1.set_yscale("log")
    ax1.set_ylabel("achieved calls/s")
    ax1.set_title("search steps (line), sustained steps (squares), failing steps (red x)")
    ax1.legend(loc="upper left", fontsize="small")
    ax2.axhline(
        100 * doc.get("max_failed_fraction", 0.001),
        color="red",
        linestyle=":",
        label="pass threshold",
    )
    ax2.set_yscale("symlog", linthresh=0.1)
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("failed or not completed (%)")
    ax2.legend(loc="upper left", fontsize="small")
    ax3.set_ylabel("CPU (% of one core)")
    ax3.set_xlabel("offered calls/s")
    ax3.set_ylim(bottom=0)
    ax3.legend(loc="upper left", fontsize="x-small", ncol=2)
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
    fig.suptitle(
        f"SIP calls per second, SIPp -sn uac against each peer ({doc.get('started', '')}, "
        f"load average {_f(_loadavg(doc), '{:.2f}')})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_media(doc: dict[str, Any], path: Path) -> None:
    """Concurrent streams vs worst max delta (and the engine's CPU)."""
    plt = _pyplot()
    steps = sorted(doc.get("steps", []), key=lambda s: s["n"])
    fig, ax1 = plt.subplots(figsize=(9, 5))
    n = [s["n"] for s in steps]
    ax1.plot(n, [s.get("max_delta_ms", 0) for s in steps], "o-", label="worst max delta")
    ax1.plot(n, [s.get("worst_mean_jitter_ms", 0) for s in steps], "s--", label="worst mean jitter")
    failed = [s for s in steps if not s.get("passed")]
    if failed:
        ax1.plot(
            [s["n"] for s in failed],
            [s.get("max_delta_ms", 0) for s in failed],
            "x",
            color="red",
            markersize=10,
            label="step failed",
        )
    ax1.axhline(PACKET_MS, color="grey", linestyle="--", label="packet time (20 ms)")
    ax1.axhline(30.0, color="red", linestyle=":", label="target (30 ms)")
    ax1.set_xlabel("concurrent RTP streams (one engine process)")
    ax1.set_ylabel("ms")
    ax1.set_ylim(bottom=0)
    ax2 = ax1.twinx()
    ax2.plot(
        n,
        [s.get("engine_cpu_percent", 0) for s in steps],
        "^:",
        color="green",
        label="engine CPU (right)",
    )
    ax2.set_ylabel("engine CPU (% of one core)")
    ax2.set_ylim(bottom=0)
    lines = ax1.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize="small")
    ax1.grid(True, alpha=0.3)
    ax1.set_title(f"RTP streams vs max delta (largest passing: {doc.get('largest_passing_n', 0)})")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def plot_soak(doc: dict[str, Any], path: Path) -> None:
    """RSS (node tree, and each process when there are several) and event-loop lag over
    time from a soak document; load phase marked, RTP capture windows shaded. Also
    draws ``benchmarks.soak``'s own plot."""
    plt = _pyplot()
    series = doc.get("series", [])
    t = [r["t"] for r in series]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    ax1.plot(t, [r["rss_total_kb"] / 1024 for r in series], label="node + descendants")
    pids = sorted({pid for r in series for pid in r.get("rss_kb", {})})
    if len(pids) > 1:
        names = doc.get("processes", {})
        for pid in pids:
            ax1.plot(
                t,
                [_nan(r["rss_kb"].get(pid)) / 1024 for r in series],
                label=f"{pid} {names.get(pid, '')[:40]}",
            )
    ax1.set_ylabel("RSS (MB)")
    ax1.legend(loc="upper left", fontsize="small")
    ax2.plot(t, [_nan(r.get("loop_lag_last_ms")) for r in series], ".", label="lag, last")
    ax2.plot(t, [_nan(r.get("loop_lag_max_ms")) for r in series], label="lag, max since start")
    target = doc.get("config", {}).get("targets", {}).get("loop_lag_max_ms", 20.0)
    ax2.axhline(target, color="red", linestyle=":", label=f"target ({target:g} ms)")
    ax2.set_ylabel("event-loop lag (ms)")
    ax2.set_xlabel("seconds since the node started")
    ax2.legend(loc="upper left", fontsize="small")
    marks = doc.get("marks_s", {})
    windows = doc.get("summary", {}).get("rtp", {}).get("windows", [])
    for ax in (ax1, ax2):
        for key in ("load_start", "load_end"):
            if key in marks:
                ax.axvline(marks[key], color="grey", linestyle="--")
        if "load_start" in marks:
            for w in windows:
                start = marks["load_start"] + w["start_s"]
                ax.axvspan(start, start + w["seconds"], color="orange", alpha=0.15)
        ax.grid(True, alpha=0.3)
    cfg = doc.get("config", {})
    fig.suptitle(
        f"soak: {cfg.get('held', '?')} held calls + {cfg.get('cps', '?')} calls/s, "
        f"{cfg.get('minutes', 0):g} min ({doc.get('started', '')})\n"
        "dashed: load phase; shaded: RTP capture windows"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# ------------------------------------------------------------------------------- render


def _load(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def render(folder: Path) -> list[Path]:
    """Plots and ``summary.md`` from the JSON in ``folder``; returns the files written."""
    cps = _load(folder / "sip_cps.json")
    media = _load(folder / "media_streams.json")
    soak = _load(folder / "soak.json")
    manifest = _load(folder / "run.json")
    written: list[Path] = []
    for doc, name, draw in (
        (cps, "cps.png", plot_cps),
        (media, "media.png", plot_media),
        (soak, "soak.png", plot_soak),
    ):
        if doc is not None:
            draw(doc, folder / name)
            written.append(folder / name)
    summary = folder / "summary.md"
    summary.write_text(summary_markdown(cps=cps, media=media, soak=soak, manifest=manifest))
    written.append(summary)
    return written


# ---------------------------------------------------------------------------------- run


def _loadavg_now() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


_WRITTEN = re.compile(r"results written to (\S+\.json)")


def _run_one(
    name: str,
    args: Sequence[str],
    folder: Path,
    *,
    module: str | None = None,
    timeout: float | None = None,
    cwd: Path = ROOT,
) -> dict[str, Any]:
    """Run one benchmark module, echoing its output; collect its JSON into ``folder``."""
    command = [sys.executable, "-m", module or f"benchmarks.{name}", *args]
    limit = TIMEOUT_S.get(name, 3600.0) if timeout is None else timeout
    load = _loadavg_now()
    print(f"== {name}: {' '.join(command[1:])} (load average {load:.2f})", flush=True)
    started = time.monotonic()
    lines: list[str] = []
    # Its own process group: on a timeout or an interrupt the benchmark's peers (nodes,
    # SIPp, dumpcap) go with it.
    proc = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        _stop_group(proc)

    watchdog = threading.Timer(limit, expire)
    watchdog.start()
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        rc = proc.wait()
    finally:
        watchdog.cancel()
        _stop_group(proc)
    timed_out = fired.is_set()
    if timed_out:
        print(f"== {name}: stopped after {limit:g} s", flush=True)
    target = folder / f"{name}.json"
    if name == "media_streams":
        # It prints its JSON document on stdout (progress goes to stderr).
        text = "".join(lines)
        start = text.find("{")
        if start >= 0:
            try:
                target.write_text(json.dumps(json.loads(text[start:]), indent=1))
            except ValueError:
                pass
    else:
        found = [m.group(1) for ln in lines if (m := _WRITTEN.search(ln))]
        if found:
            src = Path(found[-1])
            shutil.move(str(src), target)
            png = src.with_suffix(".png")  # soak draws its own plot; ours replaces it
            if png.exists():
                png.unlink()
    return {
        "name": name,
        "command": " ".join(["python", *command[1:]]),
        "returncode": rc,
        "timed_out": timed_out,
        "seconds": round(time.monotonic() - started, 1),
        "loadavg_before": load,
        "json": target.name if target.exists() else None,
    }


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the benchmark's process group, SIGKILL what is left after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader once it exits
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
    if proc.poll() is None:
        proc.wait()


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _git_head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()


def run(*, quick: bool, only: Sequence[str], results: Path = RESULTS) -> Path:
    """Run the benchmarks, gather and render them, refresh ``results/latest``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = results / stamp
    folder.mkdir(parents=True, exist_ok=True)
    plan = QUICK if quick else FULL
    with open("/proc/loadavg") as f:
        loadavg = [float(x) for x in f.read().split()[:3]]
    manifest: dict[str, Any] = {
        "stamp": stamp,
        "mode": "quick" if quick else "full",
        "make": "make bench-quick" if quick else "make bench",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "git_head": _git_head(),
        "loadavg_at_start": loadavg,
        "runs": [],
    }
    signal.signal(signal.SIGTERM, _sigterm)  # stop the running benchmark's group too
    for name in only:
        manifest["runs"].append(_run_one(name, plan[name], folder))
        (folder / "run.json").write_text(json.dumps(manifest, indent=1))
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (folder / "run.json").write_text(json.dumps(manifest, indent=1))
    render(folder)
    latest = results / "latest"
    if latest.is_symlink() or latest.is_file():
        latest.unlink()
    elif latest.exists():
        shutil.rmtree(latest)
    shutil.copytree(folder, latest)
    print(f"report written to {folder}/summary.md and copied to {latest}/")
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the benchmarks and write the report")
    r.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="a few-minute smoke run (also BENCH_QUICK=1)",
    )
    r.add_argument(
        "--only",
        default="sip_cps,media_streams,soak",
        help="comma-separated subset of sip_cps, media_streams, soak",
    )
    g = sub.add_parser("render", help="draw the plots and summary again from a results folder")
    g.add_argument("folder", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "render":
        for path in render(args.folder):
            print(path)
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in FULL]
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}")
    run(quick=args.quick, only=only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
