"""Following the master Configuration DB into the local cache, and offline mode.

Theory of operation: every ``poll_interval`` seconds (sooner when the master
offers a change stream and reports a change) the follower reads the ``rev`` of
every tenant document, fetches those newer than the cache, validates each one
and applies it (one LevelDB WriteBatch, then a snapshot swap). Polling by rev is
the source of truth; the change stream is only a wake-up. An invalid document
is logged (tenant and field) and skipped: the last good revision keeps serving.

Offline: any master error flips :attr:`MasterFollower.offline` on (one log line,
``offline_since`` set); calls keep being served from the cache. The first
successful poll flips it off (one log line) and has already caught up, since it
fetches everything newer than what is cached.

All pymongo calls and LevelDB writes run in a worker thread
(``asyncio.to_thread``): the event loop never blocks on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .errors import ConfigError, UpstreamError
from .metrics import CacheMetrics
from .schema import validate_tenant
from .store import ConfigCache

__all__ = ["MasterFollower", "MasterSource"]

log = logging.getLogger("config_cache.follower")

#: Longest single blocking wait on the change stream, so stop() is prompt.
_WAIT_CHUNK = 1.0


class MasterSource(Protocol):
    """What the follower needs from the master (``MongoMaster`` provides it)."""

    def revisions(self) -> dict[str, Any]: ...
    def fetch(self, tenant_ids: Sequence[str]) -> list[dict[str, Any]]: ...
    def wait_for_change(self, timeout: float) -> bool | None: ...


def _is_rev(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class MasterFollower:
    """An asyncio task keeping ``cache`` in step with ``master``.

    Args:
        poll_interval: seconds between polls (and between retries while offline).
        use_change_stream: wake up early on change-stream events when the
            master supports them.
        prune_missing: remove cached tenants that are absent from the master.
            Off by default: a wrong database name must not empty a node.
            Tenants are always removed by a ``deleted: true`` document.
        clock: Unix-time source (``offline_since``); tests pass a fake.
    """

    def __init__(
        self,
        cache: ConfigCache,
        master: MasterSource,
        *,
        poll_interval: float = 5.0,
        use_change_stream: bool = True,
        prune_missing: bool = False,
        clock: Callable[[], float] = time.time,
        metrics: CacheMetrics | None = None,
    ) -> None:
        self.cache = cache
        self.master = master
        self.poll_interval = poll_interval
        self.use_change_stream = use_change_stream
        self.prune_missing = prune_missing
        self._clock = clock
        self._metrics = metrics or CacheMetrics.private()
        #: True while the master is unreachable (the cache keeps serving).
        self.offline = False
        #: When the current offline period began (Unix time), else None.
        self.offline_since: float | None = None
        #: Time of the last successful poll, else None.
        self.last_sync: float | None = None
        #: Tenant id -> (rev, message) of the last rejected document.
        self.rejected: dict[str, tuple[int, str]] = {}
        #: Called on the event loop with the ids of the tenants a poll changed (the
        #: front of a multi-worker node hands the new configuration to its workers).
        self.on_change: Callable[[list[str]], object] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------

    async def start(self, *, initial_sync: bool = True) -> None:
        """Poll once (awaited, unless ``initial_sync`` is False), then keep
        following in a background task. Never raises for an unreachable master."""
        if self._task is not None:
            raise RuntimeError("follower already started")
        if initial_sync:
            await self.poll_once()
        self._task = asyncio.create_task(self._run(), name="config-master-follower")

    async def stop(self) -> None:
        """Cancel the task and wait for it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await self._wait()
            try:
                await self.poll_once()
            except Exception:
                # The follower must outlive a bug in one document's handling.
                log.exception("config follower poll failed")

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.poll_interval
        if self.use_change_stream and not self.offline:
            chunk = min(self.poll_interval, _WAIT_CHUNK)
            while loop.time() < deadline:
                try:
                    changed = await asyncio.to_thread(self.master.wait_for_change, chunk)
                except UpstreamError:
                    return  # the poll will notice and go offline
                if changed is None:
                    break
                if changed:
                    return
        remaining = deadline - loop.time()
        if remaining > 0:
            await asyncio.sleep(remaining)

    # -- one poll -------------------------------------------------------------

    async def poll_once(self) -> list[str]:
        """Catch up with the master now; return the ids of tenants changed.
        On a master error: go (or stay) offline and return []."""
        try:
            changed = await asyncio.to_thread(self._sync)
        except UpstreamError as exc:
            self._go_offline(str(exc))
            return []
        self._go_online()
        if changed and self.on_change is not None:
            self.on_change(changed)
        return changed

    def _sync(self) -> list[str]:
        remote = self.master.revisions()
        local = self.cache.revisions()
        # A rev that is not an integer is fetched once so validation names it
        # ("rev: must be an integer"); it is remembered as rejected rev -1.
        wanted = [
            tid
            for tid, rev in remote.items()
            if (not _is_rev(rev) or rev > local.get(tid, -1))
            and self.rejected.get(tid, (None,))[0] != (rev if _is_rev(rev) else -1)
        ]
        changed: list[str] = []
        if wanted:
            docs = {str(d["_id"]): d for d in self.master.fetch(wanted)}
            conflicts: list[str] = []
            for tid in wanted:
                doc = docs.get(tid)
                if doc is None:
                    continue
                result = self._apply(tid, doc)
                if result == "conflict":
                    conflicts.append(tid)
                elif result:
                    changed.append(tid)
            # A number moving between tenants may be refused until the tenant
            # giving it up was applied: retry those once in the same poll.
            for tid in conflicts:
                if self._apply(tid, docs[tid], quiet=True) is True:
                    changed.append(tid)
        if self.prune_missing:
            for tid in set(local) - set(remote):
                if self.cache.remove(tid):
                    changed.append(tid)
        self.last_sync = self._clock()
        return changed

    def _apply(self, tid: str, doc: dict[str, Any], *, quiet: bool = False) -> bool | str:
        rev = doc.get("rev", 0)
        source = "master"
        try:
            tenant = validate_tenant(doc, file=source, tenant=tid)
            if tenant.id != tid:
                # The follower keys everything by _id: an "id" naming another
                # tenant would overwrite that tenant from the wrong document.
                raise ConfigError(
                    f"{tenant.id!r} does not match the document _id {tid!r}",
                    file=source,
                    tenant=tid,
                    field="id",
                )
        except ConfigError as exc:
            self._reject(tid, rev if _is_rev(rev) else -1, exc, quiet=quiet)
            return False
        if doc.get("deleted") is True:
            self.rejected.pop(tid, None)
            return self.cache.remove(tid)
        try:
            applied = self.cache.apply(tenant, source=source)
        except ConfigError as exc:
            if not quiet:
                log.warning("tenant %r rev %d not applied yet: %s", tid, tenant.rev, exc)
            return "conflict"
        self.rejected.pop(tid, None)
        return applied

    def _reject(self, tid: str, rev: int, exc: ConfigError, *, quiet: bool) -> None:
        self.rejected[tid] = (rev, str(exc))
        self._metrics.rejected.labels(tenant=tid).inc()
        current = self.cache.tenant(tid)
        keeps = f"keeping rev {current.rev}" if current is not None else "tenant not served"
        if not quiet:
            log.error("rejected tenant %r rev %s from master (%s): %s", tid, rev, keeps, exc)

    # -- offline state ----------------------------------------------------------

    def _go_offline(self, reason: str) -> None:
        if self.offline:
            return
        self.offline = True
        self.offline_since = self._clock()
        self._metrics.offline.set(1)
        self._metrics.offline_since.set(self.offline_since)
        log.warning(
            "master Configuration DB unreachable: OFFLINE, serving %d cached tenant(s): %s",
            len(self.cache.snapshot.tenants),
            reason,
        )

    def _go_online(self) -> None:
        if not self.offline:
            return
        since = self.offline_since or self._clock()
        self.offline = False
        self.offline_since = None
        self._metrics.offline.set(0)
        self._metrics.offline_since.set(0)
        log.warning(
            "master Configuration DB reachable: ONLINE after %.1f s offline, caught up",
            self._clock() - since,
        )
