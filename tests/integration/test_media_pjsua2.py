"""Media interop with pjsua2 (pjproject 2.15.1) as the independent SIP stack + RTP peer.

Issue #3 acceptance: audio the engine plays arrives intact at a real softphone, RFC 4733
digits a real softphone sends come out of ``Call.gather``, and audio a real softphone
sends is what ``Call.record`` writes. The engine runs in the test process (handlers
registered with ``@engine.on_call()``); pjsua2 runs in a subprocess, since it allows one
endpoint per process: ``python -m callengine.softphone SPEC`` prints its result as JSON.

Audio is compared by normalised cross-correlation after alignment (numpy), against the
source signal at 8 kHz.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from integration.audio import (
    MIN_CORRELATION,
    RATE,
    correlation,
    prompt_pcm,
    read_wav,
    slip_tolerant_correlation,
)
from integration.support import ROOT, Handler, in_process_engine

from callengine.call import Call
from callengine.engine import Engine
from media.prompts import BUNDLED_PROMPTS_DIR

pytestmark = pytest.mark.integration


async def run_softphone(spec: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
    """Run one scripted pjsua2 call in a subprocess; its JSON result."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callengine.softphone",
        json.dumps(spec),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("pjsua2 softphone did not finish") from None
    lines = out.decode().strip().splitlines()
    assert proc.returncode == 0 and lines, (
        f"softphone exit {proc.returncode}: {out.decode()}\n{err.decode()[-3000:]}"
    )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def call_with_softphone(
    tmp: Path, handler: Handler, spec: dict[str, Any]
) -> tuple[dict[str, Any], Engine]:
    async def main() -> tuple[dict[str, Any], Engine]:
        async with in_process_engine(tmp, handler) as (engine, port):
            result = await run_softphone({"uri": f"sip:1000@127.0.0.1:{port}", **spec})
            # Let the handler see the BYE and finish.
            for _ in range(50):
                if not engine.calls:
                    break
                await asyncio.sleep(0.05)
            return result, engine

    return asyncio.run(main())


# ------------------------------------------------------------------------------- tests


def test_softphone_hears_the_prompt_the_engine_plays(tmp_path: Path) -> None:
    played: list[str] = []

    async def handler(call: Call) -> None:
        await call.answer()
        await asyncio.sleep(0.3)
        await call.play(["welcome"], barge_in=False)
        played.append("welcome")
        await asyncio.sleep(0.3)
        await call.hangup()

    heard = tmp_path / "heard.wav"
    result, _ = call_with_softphone(tmp_path, handler, {"record": str(heard), "duration": 15})
    assert result["answered"] and result["hangup_by"] == "remote", result
    assert played == ["welcome"]
    assert result["stats"]["rx_lost"] == 0, result["stats"]
    reference = prompt_pcm("welcome")
    # Slip-tolerant (as in test_ivr_demo.py): every frame arrived (above), but on a
    # loaded machine pjsua2's adaptive jitter buffer may drop or insert one, and a loop
    # not scheduled for a while resumes the prompt where it was: the rest shifts, intact.
    ncc, offset, slip = slip_tolerant_correlation(read_wav(heard), reference, max_slip=0.5)
    print(
        f"engine -> pjsua2: correlation {ncc:.4f} at offset {offset / RATE:.3f} s, "
        f"worst slip {slip / RATE * 1000:.1f} ms"
    )
    assert ncc >= MIN_CORRELATION
    assert offset >= 0  # the whole prompt arrived, none of it before the recording began


def test_softphone_rfc4733_digits_come_out_of_gather(tmp_path: Path) -> None:
    gathered: list[str] = []
    seen: list[list[str]] = []

    async def handler(call: Call) -> None:
        await call.answer()
        gathered.append(await call.gather(max_digits=10, timeout=10.0, terminator="#"))
        seen.append(list(call.digits))
        await call.hangup()

    result, _ = call_with_softphone(
        tmp_path, handler, {"dtmf": "1234#", "dtmf_delay": 0.3, "duration": 15}
    )
    assert result["answered"] and result["dtmf_sent"] == "1234#", result
    assert result["hangup_by"] == "remote"
    assert gathered == ["1234"]
    assert seen == [["1", "2", "3", "4", "#"]]


def test_engine_records_what_the_softphone_plays(tmp_path: Path) -> None:
    recorded: list[tuple[str, float, str]] = []

    async def handler(call: Call) -> None:
        await call.answer()
        rec = await call.record(
            "recordings/pjsua2.wav", max_seconds=60, beep=False, stop_on_dtmf=False
        )
        recorded.append((rec.key, rec.seconds, rec.reason))

    source = BUNDLED_PROMPTS_DIR / "menu.wav"
    result, engine = call_with_softphone(
        tmp_path,
        handler,
        {"play": str(source), "play_delay": 0.2, "hangup_after_play": True, "duration": 20},
    )
    assert result["answered"] and result["hangup_by"] == "local", result
    assert len(recorded) == 1 and recorded[0][2] == "remote_bye", recorded
    path = engine.storage_path("default", recorded[0][0])
    recording = read_wav(path)
    reference = read_wav(source)
    ncc, offset = correlation(recording, reference)
    # Everything after the softphone started playing: the played file, and no more.
    content_seconds = (len(recording) - offset) / RATE
    source_seconds = len(reference) / RATE
    print(
        f"pjsua2 -> engine: correlation {ncc:.4f}, offset {offset / RATE:.3f} s, "
        f"recorded {recorded[0][1]:.3f} s, content {content_seconds:.3f} s "
        f"vs source {source_seconds:.3f} s"
    )
    assert ncc >= MIN_CORRELATION
    assert offset >= 0
    assert abs(content_seconds - source_seconds) <= 0.02 * source_seconds
    assert abs(recorded[0][1] - len(recording) / RATE) < 0.01
