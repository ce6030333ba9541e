"""The README's runnable examples run, and do what the README says they do.

A ``python`` block preceded by ``<!-- test: run -->`` in README.md is a script meant to
be run as it stands. The only such block today is the library example (the same code
as ``examples/toll_free.py``): an Engine whose ``1800*`` handler answers, plays the
welcome and the menu (barge-in), takes a digit, records a message into
``voicemail/x.wav`` and hangs up. It is run as a subprocess on a loopback port with the
address as its argument; SIPp calls 1800 5551234, presses 3 during the menu (RFC 4733
capture) and speaks SIPp's G.711 capture, then hangs up; SIGTERM stops the script,
which must exit 0. The recording must be the caller's audio.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from integration.audio import (
    CAPTURES,
    MIN_CORRELATION,
    RATE,
    capture_audio,
    correlation,
    read_wav,
)
from integration.support import free_port, run_sipp, wait_udp_sip

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIXTURES = ROOT / "tests" / "fixtures" / "sipp"
RUN_MARK = "<!-- test: run -->"
_BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def runnable_blocks(markdown: str) -> list[str]:
    """The code of every fenced block directly preceded by the run marker (which must
    be a ``python`` block)."""
    blocks = []
    for part in markdown.split(RUN_MARK)[1:]:
        m = _BLOCK.match(part.lstrip("\n"))
        assert m is not None, f"{RUN_MARK} is not followed by a fenced block: {part[:80]!r}"
        assert m.group(1) == "python", f"{RUN_MARK} marks a {m.group(1)!r} block"
        blocks.append(m.group(2))
    return blocks


def test_readme_marks_the_library_example_and_it_is_examples_toll_free() -> None:
    """One marked block (a new one needs its own run below) and the example file is it."""
    blocks = runnable_blocks(README.read_text())
    assert len(blocks) == 1, f"{len(blocks)} blocks marked {RUN_MARK}; this test runs one"
    assert blocks[0] == (ROOT / "examples" / "toll_free.py").read_text()
    assert "asyncio.run(main())" in blocks[0]


def test_readme_library_example_answers_records_and_exits_0(tmp_path: Path) -> None:
    (script,) = runnable_blocks(README.read_text())
    path = tmp_path / "readme_example.py"
    path.write_text(script)
    port = free_port()
    # cwd is the temporary folder: the example's ./data (media storage) lands there.
    proc = subprocess.Popen(
        [sys.executable, str(path), f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            wait_udp_sip(port)
        except TimeoutError:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"the example did not start:\n{err.decode()}") from None
        workdir = tmp_path / "sipp"
        workdir.mkdir()
        (workdir / "pcap").symlink_to(CAPTURES)
        result = run_sipp(
            [
                f"127.0.0.1:{port}",
                "-sf",
                str(FIXTURES / "ivr_voicemail.xml"),  # press 3 at 2.5 s, talk from 6.5 s
                "-s",
                "18005551234",
                "-m",
                "1",
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-p",
                str(free_port()),
                "-mp",
                str(free_port(both=False)),
                "-timeout",
                "40s",
            ],
            cwd=workdir,
            timeout=60,
        )
        output = (result.stdout + result.stderr)[-2000:]
        assert result.stats.get("SuccessfulCall(C)") == "1", (result.stats, output)
        assert result.stats.get("FailedCall(C)") == "0", (result.stats, output)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    # The handler's own line: SIPp's user pressed 3 (barge-in) and hung up while recording.
    m = re.fullmatch(r"sipp pressed '3', left (\d+\.\d) s \(remote_bye\)\n", out.decode())
    assert m is not None, (out.decode(), err.decode()[-2000:])

    recording = read_wav(tmp_path / "data" / "media" / "default" / "voicemail" / "x.wav")
    seconds = len(recording) / RATE
    assert abs(seconds - float(m.group(1))) <= 0.05, (seconds, m.group(1))
    reference = capture_audio(CAPTURES / "g711a.pcap")
    # The whole 7 s capture and the scenario's slack around it (as test_ivr_demo's).
    streamed = len(reference) / RATE
    assert streamed - 0.5 <= seconds <= streamed + 1.5, (seconds, streamed)
    ncc, offset = correlation(recording, reference)
    assert ncc >= MIN_CORRELATION, (ncc, offset / RATE)
