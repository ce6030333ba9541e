"""Shared pieces of the benchmarks that watch a running node from outside: its
Prometheus /metrics (parsed with prometheus_client's own parser) and its process tree
in /proc (RSS, CPU time), including any worker or media processes it starts.
"""

from __future__ import annotations

import math
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "Proc",
    "Samples",
    "histogram_buckets",
    "histogram_delta",
    "histogram_quantile",
    "labelled",
    "node_wide",
    "process_tree",
    "scrape",
    "value",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""{(sample name, sorted label pairs): value}, e.g.
``("callengine_calls_total", (("result", "ok"),))``."""


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


MAXED = frozenset({"callengine_event_loop_lag_seconds", "callengine_gc_pause_max_seconds"})
"""Samples whose node-wide value is the worst worker's, not the sum."""


def node_wide(samples: Samples) -> Samples:
    """A multi-worker node's samples with the ``worker`` label folded away: summed
    (calls, streams, counters, histogram buckets), or the highest for :data:`MAXED`
    (loop lag, longest GC pause). A one-process node's samples come back unchanged."""
    out: Samples = {}
    for (name, labels), v in samples.items():
        kept = tuple(kv for kv in labels if kv[0] != "worker")
        key = (name, kept)
        if key not in out:
            out[key] = v
        elif name in MAXED:
            out[key] = max(out[key], v)
        else:
            out[key] += v
    return out


def scrape(port: int, *, host: str = "127.0.0.1", timeout: float = 5.0) -> Samples:
    """The node's /metrics, parsed. Raises OSError when the endpoint does not answer."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as resp:
        return parse(resp.read().decode())


def value(samples: Samples | None, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the node does not export it."""
    if samples is None:
        return None
    return samples.get((name, tuple(sorted(labels.items()))))


def labelled(samples: Samples | None, name: str, label: str) -> dict[str, float]:
    """{label value: sample value} of every sample ``name`` carrying ``label``."""
    out: dict[str, float] = {}
    for (n, labels), v in (samples or {}).items():
        if n == name:
            for k, lv in labels:
                if k == label:
                    out[lv] = v
    return out


def _bound(le: str) -> float:
    return math.inf if le in ("+Inf", "Inf", "inf") else float(le)


def histogram_buckets(samples: Samples | None, name: str) -> list[tuple[str, float]]:
    """[(le, cumulative count)] of histogram ``name``, in bucket order; [] if absent."""
    rows = [(le, v) for le, v in labelled(samples, f"{name}_bucket", "le").items()]
    return sorted(rows, key=lambda kv: _bound(kv[0]))


def histogram_delta(before: Samples | None, after: Samples | None, name: str) -> dict[str, int]:
    """Non-cumulative observations per bucket (keyed by its ``le``) between two scrapes.

    ``before`` None counts from the node's start. {} when the node lacks the histogram."""
    prev_counts = dict(histogram_buckets(before, name))
    out: dict[str, int] = {}
    prev = 0
    for le, acc in histogram_buckets(after, name):
        cum = int(acc - prev_counts.get(le, 0.0))
        out[le] = cum - prev
        prev = cum
    return out


def histogram_quantile(delta: dict[str, int], q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` (0..1) of ``delta`` (from
    :func:`histogram_delta`): a conservative figure, never interpolated. None when
    empty; ``inf`` when it falls in the +Inf bucket."""
    total = sum(delta.values())
    if total <= 0:
        return None
    target = q * total
    acc = 0
    for le, n in sorted(delta.items(), key=lambda kv: _bound(kv[0])):
        acc += n
        if acc >= target and n > 0:
            return _bound(le)
    return math.inf


def highest_bucket(delta: dict[str, int]) -> float | None:
    """Upper bound of the highest non-empty bucket (bounds the maximum observation)."""
    nonempty = [_bound(le) for le, n in delta.items() if n > 0]
    return max(nonempty) if nonempty else None


# ------------------------------------------------------------------- /proc


@dataclass
class Proc:
    """One process of a tree, read from /proc."""

    pid: int
    ppid: int
    name: str
    rss_kb: int
    cpu_s: float
    """utime + stime + cutime + cstime: this process, all threads, and the children it
    has reaped (so CPU of a worker that exited is not lost)."""


def _read_proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    name = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
    fields = stat[stat.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); ppid 4, utime 14, stime 15, cutime 16, cstime 17
    ppid = int(fields[1])
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    rss_kb = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
                break
    except OSError:
        return None
    return Proc(pid, ppid, name, rss_kb, ticks / CLK_TCK)


def _parents() -> dict[int, int]:
    """{pid: ppid} of every live process."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        out[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return out


def process_tree(root: int) -> list[Proc]:
    """``root`` and all its live descendants (root first); [] when root is gone."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    out: list[Proc] = []
    todo = [root]
    while todo:
        pid = todo.pop(0)
        proc = _read_proc(pid)
        if proc is None:
            continue
        out.append(proc)
        todo.extend(sorted(children.get(pid, [])))
    return out
