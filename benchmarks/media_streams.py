"""How many concurrent RTP streams one engine process sends on time.

Each step starts one engine process (``python benchmarks/media_streams.py engine``: an
:class:`~callengine.engine.Engine` on uvloop whose handler plays a prompt in a loop
until hangup, /metrics on), places N calls into it with SIPp's built-in ``uac``
scenario (G.711, held for the whole step), and once all N streams run captures the
engine's outgoing RTP on loopback with dumpcap for ``--window`` seconds. tshark then
measures every stream independently (``-z rtp,streams``): a step passes when all N
streams are seen with max delta <= 30 ms, mean jitter <= 5 ms and 0 lost packets.

Reported per step: streams seen, worst max delta, worst and average mean jitter, lost
packets, engine CPU % over the window (/proc), and the media clock's tick lateness
histogram over the window (``callengine_media_tick_lateness_ms`` from /metrics).

Usage::

    .venv/bin/python benchmarks/media_streams.py --steps 250,500,1000,1500,2000
    .venv/bin/python benchmarks/media_streams.py --steps 1000 --profile /tmp/media.prof
    .venv/bin/python benchmarks/media_streams.py tick --streams 1000 [--no-send]

Physical bound on this machine (DESIGN.md): uvloop sends ~150k datagrams/s, i.e.
~3,000 streams of 50 packets/s per process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    from ._metrics import Samples, histogram_delta, scrape, value
    from ._rtp import ENGINE_RTP_RANGE, analyse, capture
except ImportError:  # run as a script: python benchmarks/media_streams.py
    sys.path.insert(0, str(ROOT))
    from benchmarks._metrics import Samples, histogram_delta, scrape, value
    from benchmarks._rtp import ENGINE_RTP_RANGE, analyse, capture

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RTP_RANGE = ENGINE_RTP_RANGE

# ------------------------------------------------------------------------- the engine


def engine_main(args: argparse.Namespace) -> int:
    """The process under test: Engine + looping prompt handler + /metrics."""
    import resource

    import uvloop

    sys.path.insert(0, str(ROOT))
    from callengine.call import Call
    from callengine.config import EngineConfig
    from callengine.engine import Engine
    from callengine.metrics import serve_metrics

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main() -> None:
        engine = Engine(
            EngineConfig(
                listen=[f"127.0.0.1:{args.port}"],
                transports=["UDP"],
                metrics=None,
                data_dir=args.data_dir,
                rtp_port_min=RTP_RANGE[0],
                rtp_port_max=RTP_RANGE[1],
                rtp_timeout=0,
                codecs=["PCMU", "PCMA", "telephone-event"],
                max_calls=20000,
            )
        )

        @engine.on_call()
        async def looping_prompt(call: Call) -> None:
            await call.answer()
            while call.active:
                await call.play([args.prompt], barge_in=False)

        await engine.start()
        serve_metrics(engine, "127.0.0.1", args.metrics_port)
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await engine.stop(grace=0)

    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            uvloop.run(main())
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        uvloop.run(main())
    return 0


def tick_main(args: argparse.Namespace) -> int:
    """Per-stream cost of one media clock tick, in CPU time (robust to a busy machine).

    ``args.streams`` RtpSessions play a looping prompt to a UDP sink that never reads;
    the clock's tick is called ``args.ticks`` times back to back. With ``--no-send``
    the transports' sendto is a no-op: the Python part of the path alone.
    """
    import itertools

    import uvloop

    sys.path.insert(0, str(ROOT))
    from media.codecs import PCMU
    from media.prompts import PromptCache
    from media.session import MediaClock, RtpSession

    async def main() -> None:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        dest = sink.getsockname()
        clock = MediaClock()
        payloads = PromptCache(None).payloads(args.prompt, PCMU)
        sessions = [
            await RtpSession.open(PCMU, clock=clock, host="127.0.0.1", remote=dest)
            for _ in range(args.streams)
        ]
        if args.no_send:
            for session in sessions:
                session._sendto = lambda data, addr: None  # type: ignore[method-assign]
        plays = [
            asyncio.ensure_future(s.play([itertools.cycle(payloads)], barge_in=False))
            for s in sessions
        ]
        await asyncio.sleep(0)
        t0 = time.process_time()
        for _ in range(args.ticks):
            # one period: every slot's callback once (each sends its own streams)
            for slot in range(clock.slots):
                clock._tick(slot)
        if clock._handle is not None:
            clock._handle.cancel()
        cpu = time.process_time() - t0
        per = cpu / args.ticks / args.streams * 1e6
        sys.stdout.write(
            json.dumps(
                {
                    "streams": args.streams,
                    "send": not args.no_send,
                    "us_per_stream_tick": round(per, 2),
                    "streams_per_core_at_100pct": int(20000 / per),
                }
            )
            + "\n"
        )
        for play in plays:
            play.cancel()
        for session in sessions:
            await session.stop()
        sink.close()

    uvloop.run(main())
    return 0


# ------------------------------------------------------------------------- the driver


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if RTP_RANGE[0] <= port < RTP_RANGE[1]:
            continue
        return port
    raise RuntimeError("no free port")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def lateness(before: Samples, after: Samples) -> dict[str, int]:
    """Non-cumulative tick-lateness counts over the window, by bucket (ms)."""
    return histogram_delta(before, after, "callengine_media_tick_lateness_ms")


@dataclass
class StepResult:
    n: int
    streams_seen: int = 0
    max_delta_ms: float = 0.0
    worst_mean_jitter_ms: float = 0.0
    avg_mean_jitter_ms: float = 0.0
    worst_max_jitter_ms: float = 0.0
    lost: int = 0
    packets: int = 0
    engine_cpu_percent: float = 0.0
    lateness_ms: dict[str, int] = field(default_factory=dict)
    lateness_mean_ms: float = 0.0
    sipp_failed: int = 0
    passed: bool = False
    note: str = ""


def run_step(n: int, args: argparse.Namespace, workdir: Path) -> StepResult:
    result = StepResult(n)
    sip_port, metrics_port, sipp_port, media_port = (free_port() for _ in range(4))
    data_dir = workdir / f"data-{n}"
    engine_cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "engine",
        "--port",
        str(sip_port),
        "--metrics-port",
        str(metrics_port),
        "--data-dir",
        str(data_dir),
        "--prompt",
        args.prompt,
    ]
    if args.profile:
        engine_cmd += ["--profile", args.profile]
    engine = subprocess.Popen(engine_cmd, stdout=subprocess.PIPE, cwd=ROOT)
    assert engine.stdout is not None
    if engine.stdout.readline().strip() != b"READY":
        engine.kill()
        raise RuntimeError("engine did not start")
    ramp = n / args.rate
    hold_ms = int((ramp + args.settle + args.window + 5) * 1000)
    sipp_cmd = [
        SIPP,
        f"127.0.0.1:{sip_port}",
        "-sn",
        "uac",
        "-s",
        "1000",
        "-i",
        "127.0.0.1",
        "-mi",
        "127.0.0.1",
        "-p",
        str(sipp_port),
        "-mp",
        str(media_port),
        "-r",
        str(args.rate),
        "-l",
        str(n),
        "-m",
        str(n),
        "-d",
        str(hold_ms),
        "-nostdin",
        "-max_socket",
        "100",
        "-timeout",
        str(int(hold_ms / 1000 + ramp + 30)),
        "-trace_stat",
        "-stf",
        str(workdir / f"sipp-{n}.csv"),
    ]
    sipp = subprocess.Popen(
        sipp_cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    pcap = workdir / f"rtp-{n}.pcap"
    try:
        deadline = time.monotonic() + ramp + 30
        streams = 0.0
        while time.monotonic() < deadline:
            streams = value(scrape(metrics_port), "callengine_media_streams") or 0.0
            if streams >= n:
                break
            time.sleep(0.25)
        if streams < n:
            result.note = f"only {int(streams)} streams up"
            return result
        time.sleep(args.settle)
        before, cpu0, t0 = scrape(metrics_port), cpu_seconds(engine.pid), time.monotonic()
        # Only this engine's RTP to this SIPp (other engines may share the range):
        # even source ports (RTP, not RTCP) to SIPp's media port.
        captured = capture(pcap, dst_port=media_port, seconds=args.window, src_range=RTP_RANGE)
        cpu1, t1, after = cpu_seconds(engine.pid), time.monotonic(), scrape(metrics_port)
        if not captured.ok:
            result.note = f"dumpcap failed: {captured.error}"
            return result
        result.engine_cpu_percent = round(100 * (cpu1 - cpu0) / (t1 - t0), 1)
        result.lateness_ms = lateness(before, after)
        ticks = sum(result.lateness_ms.values())
        total = (value(after, "callengine_media_tick_lateness_ms_sum") or 0.0) - (
            value(before, "callengine_media_tick_lateness_ms_sum") or 0.0
        )
        result.lateness_mean_ms = round(total / ticks, 3) if ticks else 0.0
    finally:
        sipp.wait(timeout=hold_ms / 1000 + ramp + 60)
        engine.send_signal(signal.SIGTERM)
        try:
            engine.wait(30)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait()
    stats = _sipp_stats(workdir / f"sipp-{n}.csv")
    result.sipp_failed = int(stats.get("FailedCall(C)", "0") or 0)
    per_stream = analyse(pcap, media_port)
    pcap.unlink(missing_ok=True)
    # The first and last stream packets can be cut by the capture window: drop streams
    # tshark saw for less than a second (none expected: all are up before capture).
    if os.environ.get("MEDIA_BENCH_DEBUG"):
        ports = [s.src_port for s in per_stream]
        print(
            "streams",
            len(per_stream),
            "distinct src ports",
            len(set(ports)),
            "max packets",
            max((s.packets for s in per_stream), default=0),
            file=sys.stderr,
        )
    short = [s for s in per_stream if s.packets < 50]
    if short and os.environ.get("MEDIA_BENCH_DEBUG"):
        print("short streams:", short, file=sys.stderr)
    per_stream = [s for s in per_stream if s.packets >= 50]
    result.streams_seen = len(per_stream)
    if per_stream:
        result.packets = sum(s.packets for s in per_stream)
        result.lost = sum(max(0, s.lost) for s in per_stream)
        result.max_delta_ms = max(s.max_delta for s in per_stream)
        result.worst_mean_jitter_ms = max(s.mean_jitter for s in per_stream)
        result.worst_max_jitter_ms = max(s.max_jitter for s in per_stream)
        result.avg_mean_jitter_ms = round(
            sum(s.mean_jitter for s in per_stream) / len(per_stream), 3
        )
    result.passed = (
        result.streams_seen == n
        and result.lost == 0
        and result.max_delta_ms <= 30.0
        and result.worst_mean_jitter_ms <= 5.0
        and result.sipp_failed == 0
    )
    return result


def _sipp_stats(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return {}
    header = lines[0].rstrip(";").split(";")
    last = lines[-1].rstrip(";").split(";")
    return dict(zip(header, last, strict=False))


def driver_main(args: argparse.Namespace) -> int:
    for tool in (SIPP, "dumpcap", "tshark"):
        if shutil.which(tool) is None:
            sys.stderr.write(f"media_streams: {tool} not found\n")
            return 2
    steps = [int(s) for s in args.steps.split(",")]
    results: list[StepResult] = []
    with tempfile.TemporaryDirectory(prefix="media-streams-") as tmp:
        workdir = Path(tmp)
        for n in steps:
            result = run_step(n, args, workdir)
            results.append(result)
            sys.stderr.write(json.dumps(asdict(result)) + "\n")
            if not result.passed and args.stop_on_fail:
                break
    best = max((r.n for r in results if r.passed), default=0)
    sys.stdout.write(
        json.dumps({"largest_passing_n": best, "steps": [asdict(r) for r in results]}, indent=1)
        + "\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    eng = sub.add_parser("engine", help="(internal) the engine process under test")
    eng.add_argument("--port", type=int, required=True)
    eng.add_argument("--metrics-port", type=int, required=True)
    eng.add_argument("--data-dir", required=True)
    eng.add_argument("--prompt", default="menu")
    eng.add_argument("--profile")
    tick = sub.add_parser("tick", help="CPU cost per stream per tick (micro-benchmark)")
    tick.add_argument("--streams", type=int, default=1000)
    tick.add_argument("--ticks", type=int, default=200)
    tick.add_argument("--no-send", action="store_true")
    tick.add_argument("--prompt", default="menu")
    parser.add_argument("--steps", default="250,500,1000,1500,2000,2500,3000")
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second ramp")
    parser.add_argument("--window", type=int, default=8, help="capture seconds per step")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--prompt", default="menu")
    parser.add_argument("--profile", help="cProfile the engine into this file")
    parser.add_argument("--stop-on-fail", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "engine":
        return engine_main(args)
    if args.cmd == "tick":
        return tick_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
