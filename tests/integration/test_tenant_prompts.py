"""Tenant prompts from Media Storage (issue #12), against Azurite.

The node's media manager follows the tenants' ``prompts`` (file + version), fetches them
from Azurite into its prompt cache directory and plays from there. Checked on what a
call would play (the prompt cache's PCM for the tenant), then on a real call:

* Azurite up: the tenant's prompt is fetched; a new version in storage + configuration
  is fetched and played instead.
* Azurite stopped: a changed version cannot be fetched, the cached one plays; a node
  restarted while storage is down plays it from its cache directory.
* A tenant whose prompt was never cached: the bundled prompt plays, with one log line
  and the fallback counter; once storage is back the tenant's prompt is fetched.
* A SIPp call through the demo IVR with the tenant's own welcome prompt: the call
  recording's IVR channel is that prompt.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from integration.audio import CAPTURES, MIN_CORRELATION, RATE, correlation
from integration.support import SIPP, Daemon, free_port, run_sipp, start_daemon, wait_metric
from integration.test_azure_storage import CONTAINER, Azurite

from callengine._media import MediaManager
from callengine.config import StorageSettings
from config_cache import load_demo_tenant, validate_tenant
from media.azure import AzureBlobStorage
from media.codecs import PCMA
from media.prompts import PromptCache

pytestmark = pytest.mark.integration

SIPP_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "sipp"


def tone(freq: float, seconds: float = 1.0) -> npt.NDArray[np.int16]:
    t = np.arange(int(seconds * RATE)) / RATE
    return (9000 * np.sin(2 * np.pi * freq * t) * np.sin(np.pi * 3 * t) ** 2).astype(np.int16)


def wav(pcm: npt.NDArray[np.int16]) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, pcm, RATE, format="WAV", subtype="PCM_16")
    return out.getvalue()


def tenant(tid: str, version: int | None) -> Any:
    prompts = {"welcome": {"file": "welcome.wav", "version": version}} if version else {}
    return validate_tenant({"id": tid, "prompts": prompts})


def sounds_like(pcm: npt.NDArray[np.int16], reference: npt.NDArray[np.int16]) -> bool:
    ncc, _ = correlation(pcm.astype(np.float64), reference.astype(np.float64))
    return ncc >= MIN_CORRELATION


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    server = Azurite(tmp_path)
    server.start()
    yield server
    server.stop()


def test_prompts_fetched_refreshed_and_served_offline(
    tmp_path: Path, azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    remote = AzureBlobStorage(connection_string=azurite.connection_string, container=CONTAINER)
    bundled = PromptCache(None).pcm("welcome", RATE)
    v1, v2, v3 = tone(500), tone(900), tone(1400)
    settings = StorageSettings(
        kind="azure",
        connection_string=azurite.connection_string,
        container=CONTAINER,
        retry_initial=0.1,
        retry_max=0.5,
        timeout=2.0,
        prompt_refresh=0.1,
    )
    # the node's tenants are immutable snapshots, replaced when the configuration changes
    snapshot: list[dict[str, Any]] = [{"acme": tenant("acme", 1)}]

    def configure(tid: str, version: int) -> None:
        snapshot[0] = {**snapshot[0], tid: tenant(tid, version)}

    def manager() -> MediaManager:
        mm = MediaManager(
            data_dir=str(tmp_path / "data"),
            port_range=(40000, 40100),
            rtp_timeout=0,
            codecs=[PCMA],
            sockets=False,
            storage=settings,
        )
        mm.follow_tenants(lambda: snapshot[0])
        return mm

    async def plays(mm: MediaManager, tid: str, want: npt.NDArray[np.int16], what: str) -> None:
        deadline = time.monotonic() + 15
        while not sounds_like(mm.prompts.pcm("welcome", RATE, tenant=tid), want):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    async def main() -> None:
        remote.put("acme", "prompts", "welcome.wav", wav(v1))
        mm = manager()
        await plays(mm, "acme", v1, "version 1 from storage")
        assert mm.prompt_sync is not None and mm.prompt_sync.fetches_ok == 1

        # a new recording in storage, and the configuration says so: the next call has it
        remote.put("acme", "prompts", "welcome.wav", wav(v2))
        await asyncio.sleep(0.3)
        assert sounds_like(mm.prompts.pcm("welcome", RATE, tenant="acme"), v2) is False
        configure("acme", 2)
        await plays(mm, "acme", v2, "version 2 after the configuration changed")

        # storage down: version 3 is configured but cannot be fetched, version 2 plays
        remote.put("acme", "prompts", "welcome.wav", wav(v3))
        azurite.stop()
        configure("acme", 3)
        deadline = time.monotonic() + 15
        while mm.prompt_sync.fetches_failed == 0:
            assert time.monotonic() < deadline, "no failed fetch while storage is down"
            await asyncio.sleep(0.05)
        assert sounds_like(mm.prompts.pcm("welcome", RATE, tenant="acme"), v2)
        await mm.close()

        # a node (re)started while storage is down plays from its cache directory; a
        # tenant whose prompt was never cached gets the bundled one, logged and counted
        configure("beta", 1)
        mm = manager()
        await asyncio.sleep(0.3)
        assert sounds_like(mm.prompts.pcm("welcome", RATE, tenant="acme"), v2)
        with caplog.at_level(logging.WARNING, logger="media.prompts"):
            assert sounds_like(mm.prompts.pcm("welcome", RATE, tenant="beta"), bundled)
            mm.prompts.pcm("welcome", RATE, tenant="beta")
        assert mm.prompt_sync is not None and mm.prompt_sync.cache.fallbacks == 1
        assert any("tenant beta prompt 'welcome' is not in the prompt cache" in r.getMessage()
                   for r in caplog.records)  # fmt: skip

        # storage back: the retries fetch what the configuration asked for meanwhile
        azurite.start()
        # (Azurite killed right after a write may not have kept it: write v3 again)
        again = AzureBlobStorage(connection_string=azurite.connection_string, container=CONTAINER)
        again.put("acme", "prompts", "welcome.wav", wav(v3))
        again.put("beta", "prompts", "welcome.wav", wav(v1))
        await plays(mm, "acme", v3, "version 3 once storage is back")
        await plays(mm, "beta", v1, "beta's own prompt once storage is back")
        await mm.close()

    asyncio.run(main())


@pytest.fixture
def node(tmp_path: Path, azurite: Azurite) -> Iterator[Callable[[], Daemon]]:
    started: list[Daemon] = []

    def factory() -> Daemon:
        doc = load_demo_tenant().to_doc()
        doc["prompts"] = {"welcome": {"file": "welcome-v1.wav", "version": "1"}}
        doc["recording"] = {"enabled": True}
        (tmp_path / "demo.json").write_text(json.dumps(doc))
        storage = {
            "kind": "azure",
            "connection_string": azurite.connection_string,
            "container": CONTAINER,
            "prompt_refresh": 0.2,
        }
        config = tmp_path / "node.yaml"
        config.write_text(json.dumps({"media_storage": storage, "tenant_files": ["demo.json"]}))
        daemon = start_daemon(tmp_path, "--config", str(config), metrics=True)
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        daemon.stop(signal.SIGKILL if daemon.proc.poll() is None else signal.SIGTERM, timeout=5)


def test_a_call_hears_the_tenants_own_prompt(
    tmp_path: Path, azurite: Azurite, node: Callable[[], Daemon]
) -> None:
    assert Path(SIPP).exists(), f"SIPp not found at {SIPP}"
    own = tone(700, 1.5)
    remote = AzureBlobStorage(connection_string=azurite.connection_string, container=CONTAINER)
    remote.put("demo", "prompts", "welcome.wav", wav(own))  # as `callengine provision` does
    daemon = node()
    assert daemon.metrics_port is not None
    wait_metric(daemon.metrics_port, 'callengine_prompt_fetches_total{result="ok"}', 1.0)
    workdir = tmp_path / "sipp"
    workdir.mkdir()
    (workdir / "pcap").symlink_to(CAPTURES)
    args = [daemon.address, "-sf", str(SIPP_DIR / "ivr_voicemail_short.xml"), "-s", "1000"]
    args += ["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port())]
    args += ["-mp", str(free_port(both=False)), "-m", "1", "-timeout", "60s"]
    result = run_sipp(args, cwd=workdir, timeout=70)
    assert result.stats.get("SuccessfulCall(C)") == "1", (result.stats, result.stderr[-2000:])
    wait_metric(daemon.metrics_port, 'callengine_media_uploads_total{result="ok"}', 2.0)
    (name,) = [n for n in azurite.blobs() if "/recordings/" in n]
    data = azurite.container().get_blob_client(name).download_blob().readall()
    stereo, rate = soundfile.read(io.BytesIO(data), dtype="float64")
    ncc, offset = correlation(stereo[:, 1], own.astype(np.float64) / 32768.0)
    print(f"the IVR channel of {name}: correlation {ncc:.4f} with the tenant's welcome at {offset}")
    assert ncc >= MIN_CORRELATION and offset < RATE // 2, (ncc, offset)
