"""Tenant prompt cache decisions (sans-IO), the cache directory's fallback report, and
one process fetching for the others (a multi-worker node's front)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from media.tenantprompts import (
    CachedPrompt,
    CachedPromptStorage,
    PromptSync,
    PromptSyncCore,
    cache_name,
)


def test_plan_fetches_new_and_changed_versions_and_evicts_unconfigured() -> None:
    core = PromptSyncCore(cap=10_000)
    core.index[("acme", "welcome")] = CachedPrompt("welcome.wav", "1", 100, 1.0)
    core.index[("acme", "menu")] = CachedPrompt("menu.wav", "1", 100, 1.0)
    core.index[("gone", "welcome")] = CachedPrompt("w.wav", None, 100, 1.0)
    plan = core.plan(
        {
            ("acme", "welcome"): ("welcome.wav", "2"),  # the configuration says: changed
            ("acme", "menu"): ("menu.wav", "1"),  # unchanged
            ("acme", "promo"): ("promo.flac", None),  # new
            ("acme", "notes"): ("notes.txt", None),  # not audio: never fetched
        },
        now=0.0,
    )
    assert plan.fetch == [("acme", "promo"), ("acme", "welcome")]
    assert plan.evict == [("gone", "welcome")]


def test_a_prompt_missing_from_storage_is_asked_again_later_or_when_it_changes() -> None:
    core = PromptSyncCore(cap=1000, missing_retry=300.0)
    core.missing(("acme", "promo"), ("promo.wav", "1"), 100.0)
    want = {("acme", "promo"): ("promo.wav", "1")}
    assert core.plan(want, now=399.0).fetch == []
    assert core.plan(want, now=400.0).fetch == [("acme", "promo")]
    changed = {("acme", "promo"): ("promo.wav", "2")}
    assert core.plan(changed, now=101.0).fetch == [("acme", "promo")]


def test_size_cap_evicts_the_oldest_fetched_first() -> None:
    core = PromptSyncCore(cap=250)
    assert core.fetched(("a", "x"), CachedPrompt("x.wav", "1", 100, 1.0)) == []
    assert core.fetched(("b", "y"), CachedPrompt("y.wav", "1", 100, 2.0)) == []
    assert core.fetched(("c", "z"), CachedPrompt("z.wav", "1", 100, 3.0)) == [("a", "x")]
    assert core.bytes == 200 and set(core.index) == {("b", "y"), ("c", "z")}
    # a prompt bigger than the cap evicts everything else, never itself
    assert core.fetched(("d", "big"), CachedPrompt("big.wav", "1", 900, 4.0)) == [
        ("b", "y"),
        ("c", "z"),
    ]
    with pytest.raises(ValueError, match="at least 1 byte"):
        PromptSyncCore(cap=0)


def test_index_round_trips_through_json() -> None:
    core = PromptSyncCore(cap=1000)
    core.index[("acme", "welcome")] = CachedPrompt("welcome.wav", "7", 123, 5.5)
    core.index[("acme", "menu")] = CachedPrompt("m.flac", None, 1, 6.0)
    again = PromptSyncCore(cap=1000)
    again.load_json(core.to_json())
    assert again.index == core.index
    assert cache_name("welcome", "sub/Welcome.WAV") == "welcome.wav"


def test_a_configured_prompt_not_cached_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = CachedPromptStorage(tmp_path)
    storage.configured = lambda tenant, name: (tenant, name) == ("acme", "welcome")
    with caplog.at_level(logging.WARNING, logger="media.prompts"):
        for ext in (".wav", ".flac", ".ogg", ".wav"):
            assert not storage.exists("acme", "prompts", "welcome" + ext)
        assert not storage.exists("acme", "prompts", "other.wav")  # not configured
    assert storage.fallbacks == 1
    assert [r.getMessage() for r in caplog.records] == [
        "tenant acme prompt 'welcome' is not in the prompt cache (Media Storage unreachable"
        " since it was configured?): playing the bundled prompt if there is one"
    ]
    storage.put("acme", "prompts", "welcome.wav", b"RIFF")
    assert storage.exists("acme", "prompts", "welcome.wav")
    storage.cached("acme", "welcome")
    storage.delete("acme", "prompts", "welcome.wav")
    assert not storage.exists("acme", "prompts", "welcome.wav")
    assert storage.fallbacks == 2  # a new episode


class _Invalidated:
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str | None]] = []

    def invalidate(self, *, tenant: str | None = None, name: str | None = None) -> None:
        self.calls.append((tenant, name))


class _Storage:
    """Media Storage that counts its reads."""

    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        self.files = files
        self.gets: list[tuple[str, str]] = []

    def get(self, tenant: str, kind: str, key: str) -> bytes:
        self.gets.append((tenant, key))
        return self.files[(tenant, key)]


def _tenants(version: str) -> dict[str, SimpleNamespace]:
    prompt = SimpleNamespace(file="welcome.wav", version=version)
    return {"acme": SimpleNamespace(prompts={"welcome": prompt})}


def test_the_owner_fetches_once_and_a_follower_only_reads_what_it_is_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A multi-worker node: the front's sync fetches each version once into the shared
    directory and tells the workers; a worker's sync never reads storage, knows which
    prompts are configured (a configured one not yet cached is a fallback), and on the
    front's notice forgets its decoded copy and reports a later miss again."""
    remote = _Storage({("acme", "welcome.wav"): b"RIFF-v1"})
    told = _Invalidated()
    owner = PromptSync(
        CachedPromptStorage(tmp_path), cast(Any, remote), told, cap=1_000, interval=0.01
    )
    played = _Invalidated()
    worker_cache = CachedPromptStorage(tmp_path)
    follower = PromptSync(worker_cache, None, played, cap=1_000, fetching=False)
    with pytest.raises(ValueError, match="needs Media Storage"):
        PromptSync(CachedPromptStorage(tmp_path), None, played, cap=1_000)

    async def run() -> None:
        tenants = _tenants("1")
        owner.tenants = follower.tenants = lambda: tenants
        await follower.sync()
        with caplog.at_level(logging.WARNING, logger="media.prompts"):
            assert not worker_cache.exists("acme", "prompts", "welcome.wav")  # not yet
        assert worker_cache.fallbacks == 1
        await owner.sync()
        assert remote.gets == [("acme", "welcome.wav")] and told.calls == [("acme", "welcome")]
        follower.changed("acme", "welcome")  # the front's notice
        assert played.calls == [("acme", "welcome")]
        assert (tmp_path / "acme" / "prompts" / "welcome.wav").read_bytes() == b"RIFF-v1"
        assert worker_cache.exists("acme", "prompts", "welcome.wav")
        # a new version: the owner fetches it once; the follower's sync reads nothing
        remote.files[("acme", "welcome.wav")] = b"RIFF-v2"
        tenants = _tenants("2")
        await follower.sync()
        await owner.sync()
        await owner.sync()
        assert remote.gets == [("acme", "welcome.wav")] * 2
        assert (tmp_path / "acme" / "prompts" / "welcome.wav").read_bytes() == b"RIFF-v2"
        assert follower.fetches_ok == 0 and owner.fetches_ok == 2

    asyncio.run(run())
