"""The benchmark report generator on canned results (tests/fixtures/bench): no load."""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from benchmarks import report

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature and CRC."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert crc == zlib.crc32(data[12 : 16 + length])
    assert data.endswith(b"IEND\xaeB`\x82")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def copy_fixtures(folder: Path) -> Path:
    for src in FIXTURES.glob("*.json"):
        shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The fixture folder rendered once (plotting is the slow part)."""
    folder = copy_fixtures(tmp_path_factory.mktemp("bench"))
    return folder, report.render(folder)


def test_render_writes_valid_pngs_at_100_dpi(rendered: tuple[Path, list[Path]]) -> None:
    folder, written = rendered
    assert sorted(p.name for p in written) == ["cps.png", "media.png", "soak.png", "summary.md"]
    # figsize in inches x 100 dpi
    assert png_size(folder / "cps.png") == (900, 900)
    assert png_size(folder / "media.png") == (900, 500)
    assert png_size(folder / "soak.png") == (900, 600)
    for name in ("cps.png", "media.png", "soak.png"):
        assert (folder / name).stat().st_size < 200_000


def test_summary_holds_the_ratios_of_the_fixture(rendered: tuple[Path, list[Path]]) -> None:
    folder, _ = rendered
    text = (folder / "summary.md").read_text()
    # calls/s: engine 600 and --no-media 1,000 against the UAS's 10,000; sustained
    # 550 and 900 against 9,000; CPU per call (100 % / 600) / (80 % / 10,000) = 20.8
    assert (
        "**engine: 0.060 x SIPp's UAS** in calls/s (600 vs 10,000); sustained 550 vs 9,000 "
        "(0.061)" in text
    )
    assert "one call costs 20.8 x the reference's CPU" in text
    assert "| engine --no-media | 1,000 | 1,100 | 900 | 96 % | 0.100 | 0.100 | 12.0 |" in text
    assert "| sipp -sn uas | 10,000 | 12,000 | 9,000 | 80 % | 1.000 | 1.000 | 1.0 |" in text
    # media: worst max delta / 20 ms; CPU per 1,000 streams
    assert "| 500 | 500 | 24.0 ms | 1.20 | 0.80 ms | 0 | 27 % | 54 % | yes |" in text
    assert "| 2,000 | 2,000 | 45.0 ms | 2.25 | 0.80 ms | 12 | 99 % | 50 % | no |" in text
    assert "**1,000** per engine process" in text
    # soak: 26 ms / 20 ms, lag 25 ms / 20 ms target, RSS 1.12
    assert "**1.30 x the 20 ms packet time**" in text
    assert "**1.25 x the 20 ms target**" in text
    assert "**1.120** (100.0 -> 112.0 MB" in text
    assert "| loop lag max <= 20 ms (load phase) | FAIL |" in text
    for image in ("cps.png", "media.png", "soak.png"):
        assert f"]({image})" in text
    assert "loaded machine" not in text


def test_loaded_machine_and_capped_reference_are_said() -> None:
    doc = json.loads((FIXTURES / "sip_cps.json").read_text())
    doc["environment"]["loadavg_at_start"] = [3.5, 2.0, 1.0]
    uas = doc["results"][2]
    uas["first_bad_cps"] = None
    uas["sustained_cps"] = 0  # none of its sustained steps (10,000 then 9,000) held
    media = json.loads((FIXTURES / "media_streams.json").read_text())
    text = report.summary_markdown(cps=doc, media=media, soak=None, manifest=None)
    assert (
        "**Measured on a loaded machine** (1-minute load average at the start: sip_cps 3.50" in text
    )
    assert "**engine: <= 0.060 x SIPp's UAS**" in text
    assert "ratios are upper bounds" in text
    assert "sustained 550 vs < 9,000 (-)" in text
    assert "| sipp -sn uas | 10,000 | - | < 9,000 | 80 % | <= 1.000 | - | 1.0 |" in text
    assert "## Soak (`benchmarks.soak`)\n\nNot run." in text


def test_render_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(FIXTURES / "media_streams.json", tmp_path)
    assert report.main(["render", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "media.png"),
        str(tmp_path / "summary.md"),
    ]
    assert png_size(tmp_path / "media.png") == (900, 500)
    text = (tmp_path / "summary.md").read_text()
    assert "## SIP calls per second (`benchmarks.sip_cps`)\n\nNot run." in text
    assert not (tmp_path / "cps.png").exists()


def test_readme_plots_point_at_the_committed_latest_report() -> None:
    root = Path(__file__).resolve().parents[1]
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (root / "README.md").read_text())
    plots = [link for link in links if link.startswith("benchmarks/results/latest/")]
    assert sorted(Path(p).name for p in plots) == ["cps.png", "media.png", "soak.png"]
    for link in plots:
        png_size(root / link)
    assert (root / "benchmarks/results/latest/summary.md").is_file()


FAKE_BENCHMARK = """
import json, os, subprocess, sys, time
from pathlib import Path

mode = sys.argv[1]
if mode == "writes":
    out = Path(sys.argv[2]) / "fake-20261130T000000.json"
    out.write_text(json.dumps({"benchmark": "fake", "args": sys.argv[3:]}))
    out.with_suffix(".png").write_bytes(b"not ours")
    print("step 1 ok")
    print(f"results written to {out}", flush=True)
    sys.exit(1)
# "hangs": a peer of its own, then silence until stopped
peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
Path(sys.argv[2], "peer.pid").write_text(str(peer.pid))
time.sleep(600)
"""


def test_run_one_collects_the_json_a_benchmark_writes(tmp_path: Path) -> None:
    (tmp_path / "fakebench.py").write_text(FAKE_BENCHMARK)
    folder = tmp_path / "run"
    folder.mkdir()
    run = report._run_one(
        "soak", ["writes", str(tmp_path), "--x"], folder, module="fakebench", cwd=tmp_path
    )
    assert run["returncode"] == 1 and run["json"] == "soak.json" and not run["timed_out"]
    assert run["command"] == f"python -m fakebench writes {tmp_path} --x"
    assert json.loads((folder / "soak.json").read_text())["args"] == ["--x"]
    # moved, and the benchmark's own plot dropped (the report draws its own)
    assert list(tmp_path.glob("fake-*")) == []


def test_run_one_stops_a_silent_benchmark_and_its_peers(tmp_path: Path) -> None:
    (tmp_path / "fakebench.py").write_text(FAKE_BENCHMARK)
    folder = tmp_path / "run"
    folder.mkdir()
    run = report._run_one(
        "sip_cps", ["hangs", str(tmp_path)], folder, module="fakebench", timeout=2.0, cwd=tmp_path
    )
    assert run["timed_out"] and run["returncode"] == -15 and run["json"] is None
    assert 2.0 <= run["seconds"] < 30.0
    peer = int((tmp_path / "peer.pid").read_text())
    stat = Path(f"/proc/{peer}/stat")
    # killed with its group: gone, or a zombie until init reaps it
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_node_wide_folds_the_worker_label() -> None:
    """The soak reads a multi-worker node's /metrics as one node's: streams and
    counters summed over workers, loop lag and the longest GC pause the worst worker's."""
    from benchmarks._metrics import node_wide, parse, value

    text = "\n".join(
        [
            "# TYPE callengine_media_streams gauge",
            'callengine_media_streams{worker="0"} 600',
            'callengine_media_streams{worker="1"} 400',
            "# TYPE callengine_event_loop_lag_seconds gauge",
            'callengine_event_loop_lag_seconds{stat="max",worker="0"} 0.012',
            'callengine_event_loop_lag_seconds{stat="max",worker="1"} 0.031',
            "# TYPE callengine_worker_up gauge",
            'callengine_worker_up{worker="0"} 1',
            'callengine_worker_up{worker="1"} 1',
            "# TYPE callengine_cache_offline gauge",
            "callengine_cache_offline 0",
            "",
        ]
    )
    folded = node_wide(parse(text))
    assert value(folded, "callengine_media_streams") == 1000
    assert value(folded, "callengine_event_loop_lag_seconds", stat="max") == 0.031
    assert value(folded, "callengine_worker_up") == 2
    assert value(folded, "callengine_cache_offline") == 0
    single = parse("# TYPE callengine_media_streams gauge\ncallengine_media_streams 7\n")
    assert node_wide(single) == single


def test_a_run_note_is_written_under_the_commands() -> None:
    run = {"name": "media_streams", "command": "python -m benchmarks.media_streams"}
    manifest = {
        "stamp": "s",
        "runs": [
            {**run, "returncode": 0, "seconds": 130.0, "loadavg_before": 0.01, "note": "ran again"}
        ],
    }
    text = report.summary_markdown(cps=None, media=None, soak=None, manifest=manifest)
    assert "| media_streams | `python -m benchmarks.media_streams` | 0 | 130 | 0.01 |" in text
    assert "\n- media_streams: ran again\n" in text
