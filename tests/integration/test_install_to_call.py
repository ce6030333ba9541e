"""Issue #12 end to end: ``callengine init`` + ``provision`` on an empty directory against
SecantusDB (the master and History DB) and Azurite (Media Storage), then ``serve``: a
call hears the tenant's own prompt.

Nothing is set up by hand: the node's layout is what ``init`` writes, the tenant reaches
the node through the master (``provision`` -> SecantusDB -> the node's follower), and
its welcome prompt (a tone no bundled prompt resembles) through Media Storage
(``provision --prompts`` -> Azurite -> the node's prompt cache). A SIPp caller then
calls the tenant's IVR; the tenant records its calls, so the call recording's right
channel is what the caller heard: it must be the tenant's prompt, not the bundled one.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from integration.audio import MIN_CORRELATION, RATE, correlation, prompt_pcm
from integration.support import SIPP, free_port, run_sipp, wait_metric
from integration.test_azure_storage import CONTAINER, Azurite
from integration.test_installer import Serve, call, free_range, with_rtp_range
from integration.test_reliability import Secantus
from integration.test_tenant_prompts import tone, wav

pytestmark = pytest.mark.integration

SIPP_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "sipp"
NUMBER = "5550300"

TENANT = f"""\
# the tenant provisioned by this test: an IVR that plays its own welcome, then hangs up
id: own
name: Own Prompts Ltd
timezone: Europe/Paris
numbers:
  "{NUMBER}": {{route: "ivr:main", name: Main line}}
flows:
  main:
    start: hello
    nodes:
      hello: {{type: play, prompts: [welcome], next: bye}}
      bye: {{type: hangup}}
prompts:
  welcome: {{file: own/welcome.wav, text: "Welcome to Own Prompts"}}
recording: {{enabled: true, channels: stereo}}
"""


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Secantus, Azurite]]:
    mongo = Secantus(tmp_path, "mongo")
    blobs = Azurite(tmp_path)
    mongo.launch()
    try:
        blobs.start()
        mongo.wait_ready()
        yield mongo, blobs
    finally:
        blobs.stop()
        mongo.stop()


def heard(blobs: Azurite, seen: set[str]) -> tuple[str, npt.NDArray[np.float64]]:
    """The recording of the one call since ``seen``: its right channel, what the IVR
    played to the caller."""
    (name,) = [n for n in blobs.blobs() if n.startswith("own/recordings/") and n not in seen]
    seen.add(name)
    data = blobs.container().get_blob_client(name).download_blob().readall()
    stereo, rate = soundfile.read(io.BytesIO(data), dtype="float64")
    assert rate == RATE and stereo.ndim == 2, stereo.shape
    return name, stereo[:, 1]


def test_init_provision_serve_a_call_hears_the_tenants_prompt_then_its_new_recording(
    tmp_path: Path, servers: tuple[Secantus, Azurite]
) -> None:
    assert Path(SIPP).exists(), f"SIPp not found at {SIPP}"
    mongo, blobs = servers
    own, new = tone(700, 1.5), tone(1100, 1.5)
    bundled = prompt_pcm("welcome")
    # the tones are nothing like the bundled welcome nor each other (else the test would
    # prove nothing)
    assert correlation(bundled, own.astype(np.float64) / 32768.0)[0] < 0.5
    assert correlation(new.astype(np.float64), own.astype(np.float64))[0] < 0.5

    # the operator's files: a tenant and its prompt
    tenants = tmp_path / "own.yaml"
    tenants.write_text(TENANT)
    prompts = tmp_path / "prompts"
    (prompts / "own").mkdir(parents=True)
    (prompts / "own" / "welcome.wav").write_bytes(wav(own))

    # an empty directory becomes a node of this platform
    root = tmp_path / "node"
    assert not root.exists()
    port = free_port()
    metrics = free_port(socket.SOCK_STREAM, both=False)
    created = call(
        "init",
        str(root),
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics",
        f"127.0.0.1:{metrics}",
        "--admin",
        f"127.0.0.1:{free_port(socket.SOCK_STREAM, both=False)}",
        "--master",
        mongo.url,
        "--history",
        mongo.url,
        "--media",
        blobs.connection_string,
        "--container",
        CONTAINER,
    )
    assert created.returncode == 0, created.stderr
    config = root / "callengine.yaml"
    with_rtp_range(config, free_range())
    # the node notices a new tenant revision and prompt version within a second (5 s by
    # default)
    text = config.read_text().replace("poll_interval: 5.0", "poll_interval: 0.5")
    config.write_text(text.replace("prompt_refresh: 5.0", "prompt_refresh: 0.5"))

    provision = ["provision", "--master", mongo.url, "--media", blobs.connection_string]
    provision += ["--container", CONTAINER, "--tenants", str(tenants), "--prompts", str(prompts)]
    provisioned = call(*provision)
    assert provisioned.returncode == 0, provisioned.stderr
    assert provisioned.stdout.splitlines() == [
        f"prompt own/prompts/welcome.wav: create ({len(wav(own))} bytes from "
        f"{prompts / 'own' / 'welcome.wav'})",
        "tenant own: create (rev 1)",
        "provision: 2 change(s) made",
    ]

    workdir = tmp_path / "sipp"
    workdir.mkdir()

    def one_call(uploads: float) -> None:
        args = [f"127.0.0.1:{port}", "-sf", str(SIPP_DIR / "uac_wait_bye.xml"), "-s", NUMBER]
        args += ["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port())]
        args += ["-mp", str(free_port(both=False)), "-m", "1", "-timeout", "30s"]
        result = run_sipp(args, cwd=workdir, timeout=40)
        assert result.stats.get("SuccessfulCall(C)") == "1", (result.stats, result.stderr[-2000:])
        wait_metric(metrics, 'callengine_media_uploads_total{result="ok"}', uploads, timeout=20)

    seen: set[str] = set()
    # one worker: each worker's plane fetches the tenant's prompts (docs/workers.md),
    # and the fetch counts below are one process's
    node = Serve(config, port, tmp_path, "--workers", "1")
    try:
        # the tenant came from the master, its prompt from Media Storage
        wait_metric(metrics, 'callengine_prompt_fetches_total{result="ok"}', 1.0, timeout=30)
        one_call(1.0)
        name, first = heard(blobs, seen)

        # a new recording of the prompt, provisioned while the node runs: the tenant's
        # new revision carries the audio's new version, the node fetches it
        (prompts / "own" / "welcome.wav").write_bytes(wav(new))
        again = call(*provision)
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines()[1].startswith("tenant own: update (rev 1 -> 2, prompt ")
        wait_metric(metrics, 'callengine_prompt_fetches_total{result="ok"}', 2.0, timeout=15)
        one_call(2.0)
        second_name, second = heard(blobs, seen)
    finally:
        assert node.stop() == 0, node.log.read_text()

    as_float = {"own": own.astype(np.float64) / 32768.0, "new": new.astype(np.float64) / 32768.0}
    ncc, offset = correlation(first, as_float["own"])
    not_bundled, _ = correlation(first, bundled)
    print(
        f"{name}: the tenant's prompt {ncc:.4f} at {offset / RATE:.3f} s; "
        f"the bundled welcome {not_bundled:.4f}"
    )
    assert ncc >= MIN_CORRELATION and offset < RATE // 2, (ncc, offset)
    assert not_bundled < 0.5, not_bundled

    ncc, offset = correlation(second, as_float["new"])
    not_old, _ = correlation(second, as_float["own"])
    print(
        f"{second_name}: the new recording {ncc:.4f} at {offset / RATE:.3f} s; the old {not_old:.4f}"
    )
    assert ncc >= MIN_CORRELATION and offset < RATE // 2, (ncc, offset)
    assert not_old < 0.5, not_old
