"""Tenant prompts from Media Storage, kept in a local cache that works offline.

Theory of operation
-------------------
A tenant's custom prompts live in Media Storage as ``<tenant>/prompts/<name><ext>`` (the
prompt's name and the extension of its ``file``: where ``callengine provision`` puts
them) and are named in its configuration: ``prompts: {welcome: {file: welcome.wav,
version: 3}}``; a new ``version`` says the audio changed.
Calls never wait on storage: they play from a local cache directory,
``DATA_DIR/prompt-cache``, laid out as :class:`~media.storage.LocalMediaStorage`
(``<tenant>/prompts/<name><ext>``), so the :class:`~media.prompts.PromptCache` reads it
as the tenant's prompts (decoded, resampled and encoded once per codec as any prompt).
An ``index.json`` beside it records, per cached prompt, the file and version it holds.

* :class:`PromptSyncCore` (sans-IO) compares what the configuration wants
  (``(tenant, name) -> (file, version)``) with the index: what to fetch (absent, or
  another file or version: the configuration says the prompt changed) and what to
  evict (no longer configured; then the oldest fetched, while over the size cap).
* :class:`PromptSync` (asyncio) checks the configuration every ``interval`` seconds
  (a dictionary walk; nothing when the tenants did not change), fetches in a worker
  thread through the storage's blocking ``get``, writes the file atomically, updates
  the index and invalidates the prompt cache, so the next call plays the new audio.
* Storage down: the cached version keeps playing (offline mode, also across a restart:
  the cache directory is on disk), and the fetch is retried on the next check.
* A configured prompt never fetched (storage down since the tenant got it):
  :class:`CachedPromptStorage` reports it missing, the bundled prompt of the same name
  plays (the last fallback), and it is logged and counted once per prompt until it is
  cached.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .prompts import AUDIO_EXTENSIONS
from .storage import LocalMediaStorage, MediaStorage, validate_key

__all__ = [
    "CACHE_DIR",
    "CachedPrompt",
    "CachedPromptStorage",
    "Invalidates",
    "PromptPlan",
    "PromptSync",
    "PromptSyncCore",
    "wanted_prompts",
]

log = logging.getLogger("media.prompts")

CACHE_DIR = "prompt-cache"
"""The cache directory under the node's data directory (one per node: a multi-worker
node's front fills it, its workers play from it)."""

Wanted = Mapping[tuple[str, str], tuple[str, str | None]]
"""(tenant, prompt name) -> (file in the tenant's prompts, version)."""


@dataclass(frozen=True, slots=True)
class CachedPrompt:
    """One prompt in the local cache (an entry of ``index.json``)."""

    file: str
    version: str | None
    size: int
    fetched: float
    """Unix time it was fetched (eviction takes the oldest first)."""


@dataclass(frozen=True, slots=True)
class PromptPlan:
    fetch: list[tuple[str, str]]
    evict: list[tuple[str, str]]


def wanted_prompts(tenants: Mapping[str, Any]) -> dict[tuple[str, str], tuple[str, str | None]]:
    """What the tenant configurations want cached (their ``prompts`` sections)."""
    return {
        (tenant_id, name): (prompt.file, prompt.version)
        for tenant_id, tenant in tenants.items()
        for name, prompt in getattr(tenant, "prompts", {}).items()
    }


def cache_name(name: str, file: str) -> str:
    """The cached file's key: the prompt's name with the stored file's extension."""
    return name + os.path.splitext(file)[1].lower()


class PromptSyncCore:
    """Sans-IO: which prompts to fetch and evict (``cap``: bytes the cache may hold)."""

    def __init__(self, *, cap: int, missing_retry: float = 300.0) -> None:
        if cap < 1:
            raise ValueError("the prompt cache size must be at least 1 byte")
        self.cap = cap
        self.missing_retry = missing_retry
        self.index: dict[tuple[str, str], CachedPrompt] = {}
        self.failed: dict[tuple[str, str], tuple[tuple[str, str | None], float]] = {}
        """Prompts storage says do not exist: the (file, version) asked and when. Asked
        again after ``missing_retry`` seconds (the configuration may name a prompt
        before it is uploaded), or at once when the configuration names another."""

    @property
    def bytes(self) -> int:
        return sum(entry.size for entry in self.index.values())

    def missing(self, key: tuple[str, str], want: tuple[str, str | None], now: float) -> None:
        """Storage has no such prompt (as of ``now``)."""
        self.failed[key] = (want, now)

    def plan(self, wanted: Wanted, now: float) -> PromptPlan:
        evict = [key for key in self.index if key not in wanted]
        fetch = []
        for key, (file, version) in wanted.items():
            if not file.lower().endswith(AUDIO_EXTENSIONS):
                continue
            failed = self.failed.get(key)
            if failed is not None and failed[0] == (file, version):
                if now - failed[1] < self.missing_retry:
                    continue
            have = self.index.get(key)
            if have is None or (have.file, have.version) != (file, version):
                fetch.append(key)
        return PromptPlan(fetch=sorted(fetch), evict=sorted(evict))

    def fetched(self, key: tuple[str, str], entry: CachedPrompt) -> builtins.list[tuple[str, str]]:
        """Record a fetched prompt; returns what to evict to stay under the cap (the
        oldest fetched first, never the prompt just fetched)."""
        self.failed.pop(key, None)
        self.index[key] = entry
        total = self.bytes
        evict: list[tuple[str, str]] = []
        for other, cached in sorted(self.index.items(), key=lambda kv: kv[1].fetched):
            if total <= self.cap:
                break
            if other == key:
                continue
            evict.append(other)
            total -= cached.size
        for other in evict:
            del self.index[other]
        return evict

    def evicted(self, key: tuple[str, str]) -> None:
        self.index.pop(key, None)

    def to_json(self) -> dict[str, Any]:
        return {
            f"{tenant}/{name}": {
                "file": e.file,
                "version": e.version,
                "size": e.size,
                "fetched": e.fetched,
            }
            for (tenant, name), e in sorted(self.index.items())
        }

    def load_json(self, data: Mapping[str, Any]) -> None:
        for ident, raw in data.items():
            tenant, _, name = ident.partition("/")
            self.index[(tenant, name)] = CachedPrompt(
                str(raw["file"]),
                None if raw.get("version") is None else str(raw["version"]),
                int(raw["size"]),
                float(raw["fetched"]),
            )


class CachedPromptStorage(LocalMediaStorage):
    """The prompt cache directory as the :class:`PromptCache`'s tenant storage.

    A prompt the configuration names but the cache does not hold is reported once
    (log line, :attr:`fallbacks`): the bundled prompt of that name plays instead."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        self.configured: Callable[[str, str], bool] = lambda tenant, name: False
        self.fallbacks = 0
        self._reported: set[tuple[str, str]] = set()

    def exists(self, tenant: str, kind: str, key: str) -> bool:
        found = super().exists(tenant, kind, key)
        if found or kind != "prompts":
            return found
        name = os.path.splitext(key)[0]
        if self.configured(tenant, name) and (tenant, name) not in self._reported:
            self._reported.add((tenant, name))
            self.fallbacks += 1
            log.warning(
                "tenant %s prompt %r is not in the prompt cache (Media Storage unreachable "
                "since it was configured?): playing the bundled prompt if there is one",
                tenant,
                name,
            )
        return False

    def cached(self, tenant: str, name: str) -> None:
        """The prompt is cached now: a later miss is reported again."""
        self._reported.discard((tenant, name))


class Invalidates(Protocol):
    """What :class:`PromptSync` tells when a cached prompt changed: a
    :class:`~media.prompts.PromptCache` (it forgets its decoded copy), or a multi-worker
    node's front (it tells every worker)."""

    def invalidate(self, *, tenant: str | None = None, name: str | None = None) -> None: ...


class PromptSync:
    """Keeps :class:`CachedPromptStorage` in step with the tenants' ``prompts``.

    ``remote`` is Media Storage (its blocking ``get`` runs in a worker thread);
    ``prompts`` is told of each prompt that changed in the cache.

    One process owns a cache directory and fetches (``fetching``, the default). The
    workers of a multi-worker node play from the directory their front keeps
    (``fetching=False``): they follow the tenants only to know which prompts are
    configured (a configured prompt not cached is reported as a fallback), and the
    front's notice of each change comes to :meth:`changed`."""

    def __init__(
        self,
        cache: CachedPromptStorage,
        remote: MediaStorage | None,
        prompts: Invalidates,
        *,
        cap: int,
        interval: float = 5.0,
        fetching: bool = True,
    ) -> None:
        if fetching and remote is None:
            raise ValueError("a prompt cache that fetches needs Media Storage")
        self.cache = cache
        self.remote = remote
        self.prompts = prompts
        self.fetching = fetching
        # a prompt missing from storage is asked for again every 60 checks (5 minutes)
        self.core = PromptSyncCore(cap=cap, missing_retry=60 * interval)
        self.interval = interval
        self._missing_check = 0.0
        self.tenants: Callable[[], Mapping[str, Any]] = dict
        self._wanted: Wanted = {}
        self._seen: object = None
        self._retry = False
        self._task: asyncio.Task[None] | None = None
        self._offline = False
        self.fetches_ok = 0
        self.fetches_failed = 0
        self.fetches_missing = 0
        self._index_path = Path(cache.root) / "index.json"
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            self.core.load_json(json.loads(self._index_path.read_text()))
        cache.configured = self._configured

    def _configured(self, tenant: str, name: str) -> bool:
        return (tenant, name) in self._wanted

    def start(self, tenants: Callable[[], Mapping[str, Any]]) -> None:
        """Follow ``tenants()`` (tenant id -> configuration) from now on."""
        self.tenants = tenants
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:  # never let the loop die: prompts would stop updating
                log.exception("prompt cache sync failed")
            await asyncio.sleep(self.interval)

    async def sync(self, *, force: bool = False) -> None:
        """Fetch what changed, evict what is no longer wanted (one pass)."""
        tenants = self.tenants()
        now = time.monotonic()
        due = self._retry or (self.core.failed and now >= self._missing_check)
        if tenants is self._seen and not due and not force:
            return
        self._seen = tenants
        self._missing_check = now + self.core.missing_retry
        self._wanted = wanted = wanted_prompts(tenants)
        if not self.fetching:
            return  # the owner of the directory fetches, and says so (changed)
        plan = self.core.plan(wanted, now)
        changed = bool(plan.evict)
        for key in plan.evict:
            await self._evict(key)
        retry = False
        for key in plan.fetch:
            result = await self._fetch(key, wanted[key])
            retry = retry or result == "failed"
            changed = changed or result == "ok"
            if result == "failed":
                break  # storage is down: the rest would fail the same way
        self._retry = retry
        if changed:
            await asyncio.to_thread(self._write_index, self.core.to_json())

    def changed(self, tenant: str, name: str) -> None:
        """The directory's owner fetched (or evicted) this prompt: the next call reads
        the file as it is now."""
        self.prompts.invalidate(tenant=tenant, name=name)
        self.cache.cached(tenant, name)

    async def _fetch(self, key: tuple[str, str], want: tuple[str, str | None]) -> str:
        tenant, name = key
        file, version = want
        remote = self.remote
        assert remote is not None
        try:
            validate_key(file)
            data = await asyncio.to_thread(remote.get, tenant, "prompts", cache_name(name, file))
        except (FileNotFoundError, ValueError) as exc:
            self.fetches_missing += 1
            self.core.missing(key, want, time.monotonic())
            log.error("tenant %s prompt %r: %s not in Media Storage (%s)", tenant, name, file, exc)
            return "missing"
        except Exception as exc:  # the SDK's errors, timeouts, refused connections
            self.fetches_failed += 1
            if not self._offline:
                self._offline = True
                log.warning(
                    "prompt fetch from Media Storage failed (%s): cached prompts keep "
                    "playing; retrying every %.0f s",
                    exc,
                    self.interval,
                )
            return "failed"
        if self._offline:
            self._offline = False
            log.info("Media Storage reachable again: fetching changed prompts")
        target = cache_name(name, file)
        old = self.core.index.get(key)
        await asyncio.to_thread(self._store, tenant, target, old, data)
        evict = self.core.fetched(key, CachedPrompt(file, version, len(data), time.time()))
        self.fetches_ok += 1
        self.prompts.invalidate(tenant=tenant, name=name)
        self.cache.cached(tenant, name)
        log.info(
            "tenant %s prompt %r: version %s cached (%d bytes)", tenant, name, version, len(data)
        )
        for other in evict:
            await self._evict(other)
        return "ok"

    def _store(self, tenant: str, target: str, old: CachedPrompt | None, data: bytes) -> None:
        self.cache.put(tenant, "prompts", target, data)
        if old is not None:
            previous = cache_name(target.rsplit(".", 1)[0], old.file)
            if previous != target:  # the extension changed
                self.cache.delete(tenant, "prompts", previous)

    async def _evict(self, key: tuple[str, str]) -> None:
        tenant, name = key
        for ext in AUDIO_EXTENSIONS:
            await asyncio.to_thread(self.cache.delete, tenant, "prompts", name + ext)
        self.core.evicted(key)
        self.prompts.invalidate(tenant=tenant, name=name)

    def _write_index(self, data: dict[str, Any]) -> None:
        self._index_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._index_path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True)
        os.replace(tmp, self._index_path)
