"""What recording a call costs: CPU per recorded call against an unrecorded one.

Two engine processes run side by side in the same run (same machine, same moment, same
load from the rest of the machine): both answer every call and loop a prompt until the
caller hangs up; one of them also records each call (``call.start_recording()``: both
directions, stereo WAV, in its data directory, as a node without remote storage does).
SIPp's built-in ``uac_pcap`` scenario places ``--calls`` calls into each, all at once;
each caller streams SIPp's G.711 capture (~8 s of RTP in both directions). Over a
``--window`` in the middle, while every call is up, the CPU time of each engine process
is read from /proc. Reported: CPU % of each engine, CPU per call (ms per second of
call), and the ratio recorded / unrecorded; then the recordings are counted (one file
per call) and the spread of their lengths is reported (every call lasts as long as the
scenario). The machine is shared: keep the run short (the default takes ~15 s).

Usage::

    .venv/bin/python -m benchmarks.recording --calls 100 --window 4
    .venv/bin/python -m benchmarks.recording --calls 300 --json /tmp/rec.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    from ._sipp import SIPP, cpu_seconds, free_port, options_ping
except ImportError:  # run as a script
    sys.path.insert(0, str(ROOT))
    from benchmarks._sipp import SIPP, cpu_seconds, free_port, options_ping

CAPTURES = Path("/usr/share/sip-tester")


def engine_main(args: argparse.Namespace) -> int:
    """The process under test: Engine + looping prompt (+ recording of every call).

    ``--storage FILE``: a JSON ``media_storage`` section (recordings go through the
    spool to remote storage); ``--stats S``: every S seconds, one JSON line on stdout
    with the calls in progress and the spool's counters (``benchmarks.recording_upload``).
    """
    import uvloop

    sys.path.insert(0, str(ROOT))
    from callengine.call import Call
    from callengine.config import EngineConfig
    from callengine.engine import Engine

    storage = json.loads(Path(args.storage).read_text()) if args.storage else {}

    async def stats(engine: Engine) -> None:
        spool = engine.media_manager.spool if engine.media_manager is not None else None
        while True:
            line: dict[str, float] = {"t": time.time(), "calls": len(engine.calls)}
            if spool is not None:
                core = spool.core
                line.update(
                    files=core.files,
                    bytes=core.bytes,
                    oldest=core.oldest_age(time.time()),
                    ok=core.uploads_ok,
                    ok_bytes=core.uploaded_bytes,
                    present=core.uploads_present,
                    failed=core.uploads_failed,
                    in_flight=core.in_flight,
                )
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            await asyncio.sleep(args.stats)

    async def main() -> None:
        engine = Engine(
            EngineConfig(
                listen=[f"127.0.0.1:{args.port}"],
                transports=["UDP"],
                metrics=None,
                data_dir=args.data_dir,
                rtp_timeout=0,
                codecs=["PCMA", "PCMU", "telephone-event"],
                max_calls=20000,
                media_storage=storage,
            )
        )

        @engine.on_call()
        async def prompt_loop(call: Call) -> None:
            await call.answer()
            if args.record:
                call.start_recording()
            while call.active:
                await call.play(["welcome"], barge_in=False)

        await engine.start()
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        reporter = loop.create_task(stats(engine)) if args.stats else None
        await stop.wait()
        if reporter is not None:
            reporter.cancel()
        await engine.stop(grace=0)

    uvloop.run(main())
    return 0


@dataclass
class Side:
    record: bool
    cpu_percent: float
    cpu_ms_per_call_second: float
    successful: int
    failed: int
    recordings: int = 0
    length_spread_s: float = 0.0
    """Longest minus shortest recording (the calls all last as long as SIPp's
    scenario; they start within ``calls / 200`` s of each other)."""


def _start_engine(workdir: Path, record: bool) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    data = workdir / ("recorded" if record else "plain")
    cmd = [sys.executable, "-m", "benchmarks.recording", "engine", "--port", str(port)]
    cmd += ["--data-dir", str(data)] + (["--record"] if record else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"READY", "engine did not start"
    if not options_ping(port, 10):
        raise RuntimeError("engine does not answer OPTIONS")
    return proc, port, data


def _sipp(workdir: Path, port: int, calls: int, tag: str) -> subprocess.Popen[bytes]:
    stat = workdir / f"{tag}.csv"
    cmd = [SIPP, f"127.0.0.1:{port}", "-sn", "uac_pcap", "-i", "127.0.0.1", "-mi", "127.0.0.1"]
    cmd += ["-p", str(free_port()), "-mp", str(free_port()), "-m", str(calls), "-l", str(calls)]
    cmd += ["-r", str(min(calls, 200)), "-nostdin", "-trace_stat", "-stf", str(stat)]
    cmd += ["-fd", "3600", "-timeout", "60s"]
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stats(path: Path) -> dict[str, str]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
    if len(lines) < 2:
        return {}
    header, last = lines[0].rstrip(";").split(";"), lines[-1].rstrip(";").split(";")
    return dict(zip(header, last, strict=False))


def _check_recordings(data: Path) -> tuple[int, float]:
    """Recordings written, and the spread of their lengths (s)."""
    import soundfile

    files = sorted((data / "media").rglob("recordings/*.wav"))
    lengths = [soundfile.info(str(f)).duration for f in files]
    if not lengths:
        return 0, 0.0
    return len(files), max(lengths) - min(lengths)


def run(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-rec-"))
    (workdir / "pcap").symlink_to(CAPTURES)
    engines = [_start_engine(workdir, False), _start_engine(workdir, True)]
    try:
        sipps = [
            _sipp(workdir, port, args.calls, f"sipp-{i}") for i, (_, port, _) in enumerate(engines)
        ]
        time.sleep(args.warmup)
        before = [cpu_seconds(p.pid) for p, _, _ in engines]
        t0 = time.monotonic()
        time.sleep(args.window)
        after = [cpu_seconds(p.pid) for p, _, _ in engines]
        elapsed = time.monotonic() - t0
        for sipp in sipps:
            sipp.wait(90)
        time.sleep(1.0)  # the last recordings close with the last BYEs
    finally:
        for proc, _, _ in engines:
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in engines:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    sides = []
    for i, ((_, _, data), b, a) in enumerate(zip(engines, before, after, strict=True)):
        stats = _stats(workdir / f"sipp-{i}.csv")
        cpu = (a - b) / elapsed
        side = Side(
            record=i == 1,
            cpu_percent=round(100 * cpu, 1),
            cpu_ms_per_call_second=round(1000 * cpu / args.calls, 3),
            successful=int(stats.get("SuccessfulCall(C)", 0)),
            failed=int(stats.get("FailedCall(C)", 0)),
        )
        if side.record:
            side.recordings, spread = _check_recordings(data)
            side.length_spread_s = round(spread, 3)
        sides.append(side)
    plain, recorded = sides
    ratio = recorded.cpu_percent / plain.cpu_percent if plain.cpu_percent else float("nan")
    extra = recorded.cpu_ms_per_call_second - plain.cpu_ms_per_call_second
    return {
        "calls": args.calls,
        "window_s": args.window,
        "load_average": os.getloadavg()[0],
        "unrecorded": asdict(plain),
        "recorded": asdict(recorded),
        "cpu_ratio_recorded_to_unrecorded": round(ratio, 3),
        "recording_cpu_ms_per_call_second": round(extra, 3),
        "workdir": str(workdir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    engine = sub.add_parser("engine")
    engine.add_argument("--port", type=int, required=True)
    engine.add_argument("--data-dir", required=True)
    engine.add_argument("--record", action="store_true")
    engine.add_argument("--storage", help="JSON file: the media_storage section")
    engine.add_argument("--stats", type=float, default=0.0, help="seconds between stats lines")
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls per engine")
    parser.add_argument("--warmup", type=float, default=2.5, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=4.0, help="seconds measured")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if args.command == "engine":
        return engine_main(args)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
