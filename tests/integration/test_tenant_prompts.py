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
* The same on real calls (``serve`` + SIPp; what the caller heard is the IVR channel of
  the call's recording): the tenant's prompt; a new version in storage + configuration
  heard by the next call; Azurite stopped and a newer version configured: the next call
  still hears the cached one.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from integration.audio import MIN_CORRELATION, RATE, correlation
from integration.support import SIPP, free_port, run_sipp, scrape_fresh, start_daemon, wait_metric
from integration.test_azure_storage import CONTAINER, Azurite, wait_for

from callengine._media import MediaManager
from callengine.config import StorageSettings
from callengine.ctl import AdminClient
from config_cache import validate_tenant
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


NUMBER = "5550400"


def own_tenant(version: str) -> dict[str, Any]:
    """A tenant whose IVR plays its own welcome then hangs up, recording every call (the
    right channel of the recording is what the caller heard)."""
    return {
        "id": "own",
        "numbers": {NUMBER: {"route": "ivr:main"}},
        "flows": {
            "main": {
                "start": "hello",
                "nodes": {
                    "hello": {"type": "play", "prompts": ["welcome"], "next": "bye"},
                    "bye": {"type": "hangup"},
                },
            }
        },
        "prompts": {"welcome": {"file": "welcome.wav", "version": version}},
        "recording": {"enabled": True, "channels": "stereo"},
    }


def test_calls_hear_a_new_prompt_version_then_the_cached_one_with_storage_down(
    tmp_path: Path, azurite: Azurite
) -> None:
    """`serve` + SIPp: the tenant's prompt, a new version of it (new audio in storage +
    configuration) heard by the next call, then storage stopped and a newer version
    configured: calls keep hearing the cached one."""
    assert Path(SIPP).exists(), f"SIPp not found at {SIPP}"
    v1, v2, v3 = tone(500, 1.5), tone(900, 1.5), tone(1400, 1.5)
    remote = AzureBlobStorage(connection_string=azurite.connection_string, container=CONTAINER)
    remote.put("own", "prompts", "welcome.wav", wav(v1))  # as `callengine provision` does
    tenant_file = tmp_path / "own.json"
    tenant_file.write_text(json.dumps(own_tenant("1")))
    storage = {
        "kind": "azure",
        "connection_string": azurite.connection_string,
        "container": CONTAINER,
        "prompt_refresh": 0.2,
        "retry_initial": 0.2,
        "timeout": 2.0,
    }
    config = tmp_path / "node.yaml"
    config.write_text(json.dumps({"media_storage": storage, "tenant_files": [str(tenant_file)]}))
    admin = f"127.0.0.1:{free_port(socket.SOCK_STREAM, both=False)}"
    daemon = start_daemon(tmp_path, "--config", str(config), "--admin", admin, metrics=True)
    metrics = daemon.metrics_port
    assert metrics is not None
    api = AdminClient(f"http://{admin}")
    workdir = tmp_path / "sipp"
    workdir.mkdir()

    def one_call() -> None:
        args = [daemon.address, "-sf", str(SIPP_DIR / "uac_wait_bye.xml"), "-s", NUMBER]
        args += ["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port())]
        args += ["-mp", str(free_port(both=False)), "-m", "1", "-timeout", "30s"]
        result = run_sipp(args, cwd=workdir, timeout=40)
        assert result.stats.get("SuccessfulCall(C)") == "1", (result.stats, result.stderr[-2000:])

    def heard(data: bytes) -> npt.NDArray[np.int16]:
        stereo, rate = soundfile.read(io.BytesIO(data), dtype="int16")
        assert rate == RATE and stereo.ndim == 2, stereo.shape
        return np.asarray(stereo[:, 1])

    def uploaded(seen: set[str]) -> npt.NDArray[np.int16]:
        (name,) = [n for n in azurite.blobs() if "/recordings/" in n and n not in seen]
        seen.add(name)
        return heard(azurite.container().get_blob_client(name).download_blob().readall())

    def reconfigure(version: str) -> None:
        tenant_file.write_text(json.dumps(own_tenant(version)))
        assert api.request("POST", "/reload")["changed"] == ["own"]

    def fetches() -> dict[str, float]:
        """Prompt fetches done by the node (a multi-worker node's front fetches for its
        workers, and tells them)."""
        ok = 'callengine_prompt_fetches_total{result="ok"'
        return {k: v for k, v in scrape_fresh(metrics).items() if k.startswith(ok)}

    def fetched(before: dict[str, float]) -> None:
        """Every process fetched since ``before``."""
        wait_for(
            lambda: all(v > before.get(k, 0.0) for k, v in fetches().items()), "prompt fetches"
        )

    seen: set[str] = set()
    try:
        wait_for(lambda: sum(fetches().values()) >= 1, "the first prompt fetch")
        one_call()
        wait_metric(metrics, 'callengine_media_uploads_total{result="ok"}', 1.0)
        first = uploaded(seen)
        assert sounds_like(first, v1), "the first call did not hear version 1"

        # new audio in storage, then the configuration says so: the next call hears it
        remote.put("own", "prompts", "welcome.wav", wav(v2))
        before = fetches()
        reconfigure("2")
        fetched(before)  # until then, a call hears version 1 (calls never wait on storage)
        assert sum(fetches().values()) == 2, fetches()  # once per version for the node
        one_call()
        wait_metric(metrics, 'callengine_media_uploads_total{result="ok"}', 2.0)
        second = uploaded(seen)
        assert sounds_like(second, v2) and not sounds_like(second, v1)

        # storage down, and a version 3 configured that cannot be fetched: the cached
        # version 2 plays (the recording waits in the spool, read from there)
        azurite.stop()
        reconfigure("3")
        wait_for(
            lambda: (
                scrape_fresh(metrics).get('callengine_prompt_fetches_total{result="failed"}', 0)
                >= 1
            ),
            "a failed prompt fetch",
        )
        one_call()
        wait_metric(metrics, "callengine_media_spool_files", 1.0)
        (spooled,) = daemon.data_dir.glob("spool*/files/own/recordings/*")
        third = heard(spooled.read_bytes())
        assert sounds_like(third, v2) and not sounds_like(third, v3)
        ncc = [
            f"{correlation(x.astype(np.float64), v.astype(np.float64))[0]:.4f}"
            for x, v in ((first, v1), (second, v2), (third, v2))
        ]
        print("prompt heard: v1 {}, v2 {}, v2 with storage down {}".format(*ncc))
    finally:
        assert daemon.stop() == 0, daemon.log()
