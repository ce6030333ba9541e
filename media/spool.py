"""The offline spool: recordings are written locally first, then shipped to storage.

Theory of operation
-------------------
A recording (voicemail, call recording) is written under the spool directory at
``files/<tenant>/<kind>/<key>``; its metadata (call id, tenant) goes beside it in
``meta/<tenant>/<kind>/<key>.json`` when the recording starts. When the recorder
closes, the file is handed to the spool. The file system is the journal: a node that
restarts (even after ``kill -9``) scans ``files/`` and ships everything it finds.

:class:`SpoolCore` is the sans-IO state: which files wait, which are being uploaded,
when storage may be tried again (one backoff for the whole spool: when storage is
unreachable it is unreachable for every file), the quota, and the counters. It is fed
``now`` and never reads a clock. :class:`Spool` is the asyncio shell: it runs at most
``concurrency`` uploads at once through a :class:`BlobTarget`, does file-system work
(stat, hashing, deletion) in worker threads so the media clock never waits on a disk,
and deletes a spool file only once the target confirmed the blob.

Idempotence is the target's: a blob is written once under its final name
(``<tenant>/<kind>/<key>``) with "create only" semantics; an upload that finds the blob
already there with the same size and MD5 counts as done (a retry after a crash), one
that finds a different blob is a conflict: logged, counted, and the file is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .storage import KINDS, validate_key, validate_tenant

__all__ = [
    "BlobConflict",
    "BlobRejected",
    "BlobTarget",
    "Spool",
    "SpoolCore",
    "SpoolFull",
    "SpoolItem",
    "adopt_spools",
    "file_md5",
    "spool_name",
]

log = logging.getLogger("media.spool")


class SpoolFull(OSError):
    """The spool holds its quota of bytes: no new recording is accepted."""


class BlobRejected(Exception):
    """Storage refuses this blob for good (retrying cannot help): the file is kept."""


class BlobConflict(BlobRejected):
    """A different blob already exists under the name (never overwritten)."""


@dataclass(slots=True)
class SpoolItem:
    """One spooled file, to be uploaded as blob ``name``."""

    name: str
    """``<tenant>/<kind>/<key>``: the blob name, fixed before the upload."""
    path: Path
    size: int
    added: float
    """Unix time the file was spooled (its mtime after a restart)."""
    metadata: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    uploading: bool = False
    conflict: bool = False


def spool_name(worker: int | None) -> str:
    """The spool directory (under the data directory) of a one-process node (``None``)
    or of worker ``worker`` of a multi-worker node: each process recovers only its own
    files after a ``kill -9``."""
    return "spool" if worker is None else f"spool-w{worker}"


def adopt_spools(data_dir: str | os.PathLike[str], keep: list[str]) -> int:
    """Move the files of spool directories no process of this node will open into the
    first of ``keep``, before any spool starts; returns how many files moved.

    A node's spool directories follow its processes (``spool`` for one process,
    ``spool-w0``, ``spool-w1``... for the workers of a multi-worker node), so a node
    started with fewer processes than before (another ``workers`` setting, fewer cores)
    would never upload what the missing ones left after a stop or a crash. Their
    files and metadata move under the same names (a rename: the same file system);
    a name already waiting in the target keeps both files where they are, logged.
    """
    base = Path(data_dir)
    target = base / keep[0]
    moved = 0
    for old in sorted(base.glob("spool*")):
        if old.name in keep or not old.is_dir() or not _is_spool_name(old.name):
            continue
        before = moved
        for path in sorted((old / "files").rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(old / "files")
            dest = target / "files" / rel
            if dest.exists():
                log.error("media spool: %s waits in %s and in %s; kept both", rel, old, target)
                continue
            meta = old / "meta" / f"{rel}.json"
            if meta.is_file():
                (target / "meta" / rel).parent.mkdir(parents=True, exist_ok=True)
                meta.rename(target / "meta" / f"{rel}.json")
            dest.parent.mkdir(parents=True, exist_ok=True)
            path.rename(dest)
            moved += 1
        if moved > before:
            log.info(
                "media spool: %d files of %s adopted by %s", moved - before, old.name, target.name
            )
    return moved


def _is_spool_name(name: str) -> bool:
    return name == spool_name(None) or (name.startswith("spool-w") and name[7:].isdigit())


def file_md5(path: Path) -> bytes:
    """MD5 digest of a file, read in 1 MiB pieces (run it in a worker thread)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


class SpoolCore:
    """Sans-IO spool state: queue, global backoff, quota, counters.

    Args:
        quota: bytes the spooled files may hold; at or above it :meth:`admit` says no.
        concurrency: uploads in flight at most.
        retry_initial / retry_max: backoff after a failed upload, doubled per
            consecutive failure, capped.
        near: fraction of the quota at which :attr:`near_quota` turns on (a log line).
    """

    def __init__(
        self,
        *,
        quota: int,
        concurrency: int = 4,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        near: float = 0.9,
    ) -> None:
        if quota <= 0 or concurrency < 1 or retry_initial <= 0 or retry_max < retry_initial:
            raise ValueError("quota, concurrency and retry times must be positive")
        self.quota = quota
        self.concurrency = concurrency
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.near = near
        self.items: dict[str, SpoolItem] = {}
        # files waiting for an upload, oldest first: (added, name); entries of items
        # since started, replaced or forgotten are skipped when popped. A heap, not a
        # sort per wake-up: after hours offline the spool holds 100k files.
        self._queue: list[tuple[float, str]] = []
        self._flying: dict[str, float] = {}
        """Uploads in flight: name -> added (for the oldest age)."""
        self._kept = 0
        self.bytes = 0
        self.in_flight = 0
        self.failures = 0
        """Consecutive failed uploads (the backoff exponent)."""
        self.blocked_until = 0.0
        self.near_quota = False
        """The spool holds ``near`` of its quota or more (off again below 80 % of that)."""
        self.full = False
        """The last recording that asked was refused (the spool holds its quota)."""
        self.refusals = 0
        """Recordings refused because the spool held its quota."""
        self.uploads_ok = 0
        self.uploaded_bytes = 0
        """Bytes of the files uploaded (``uploads_ok``): the upload rate, in bytes."""
        self.uploads_present = 0
        """Uploads that found the same blob already stored (a retry after a crash)."""
        self.uploads_failed = 0
        self.rejected = 0
        """Files storage refused for good (a different blob under the name, an invalid
        name): kept in the spool for an operator, never retried."""
        self.vanished = 0
        """Spooled files deleted by someone else before their upload."""

    # ---------------------------------------------------------------- queue
    def admit(self) -> bool:
        """May a new recording start? False once the spool holds its quota: the
        refusal is counted (:attr:`refusals`) and :attr:`full` is set until one is
        admitted again."""
        if self.bytes < self.quota:
            self.full = False
            return True
        self.refusals += 1
        self.full = True
        return False

    def add(self, item: SpoolItem) -> bool:
        """Queue a finished file; returns True when this crossed into "near quota"."""
        old = self.items.get(item.name)
        if old is not None:
            if old.uploading:
                raise ValueError(f"{item.name} is being uploaded")
            self.bytes -= old.size
            self._kept -= old.conflict
            # rare (the same name spooled again): drop its old entry so that the queue's
            # head is always a waiting file (the oldest age reads it)
            self._queue = [e for e in self._queue if e[1] != item.name]
            heapq.heapify(self._queue)
        self.items[item.name] = item
        self.bytes += item.size
        heapq.heappush(self._queue, (item.added, item.name))
        return self._check_near()

    def _check_near(self) -> bool:
        was = self.near_quota
        if self.bytes >= self.near * self.quota:
            self.near_quota = True
        elif self.bytes < 0.8 * self.near * self.quota:
            self.near_quota = False  # hysteresis: one log line per episode
        return self.near_quota and not was

    def start_ready(self, now: float) -> list[SpoolItem]:
        """Items to upload now (oldest first), marked as uploading."""
        if now < self.blocked_until:
            return []
        ready: list[SpoolItem] = []
        queue, items = self._queue, self.items
        while queue and self.in_flight + len(ready) < self.concurrency:
            added, name = heapq.heappop(queue)
            item = items.get(name)
            if item is None or item.uploading or item.conflict or item.added != added:
                continue  # stale entry
            item.uploading = True
            item.attempts += 1
            self._flying[name] = added
            ready.append(item)
        self.in_flight += len(ready)
        return ready

    def succeeded(self, name: str, *, present: bool = False) -> SpoolItem:
        """The blob is stored: forget the item (the shell deletes the file)."""
        item = self.items.pop(name)
        self._flying.pop(name, None)
        self.in_flight -= 1
        self.bytes -= item.size
        self.failures = 0
        self.blocked_until = 0.0
        if present:
            self.uploads_present += 1
        else:
            self.uploads_ok += 1
            self.uploaded_bytes += item.size
        self._check_near()
        return item

    def failed(self, name: str, now: float) -> float:
        """The upload failed (storage unreachable, timeout...): back off every upload.

        Returns the delay before the next try."""
        item = self.items[name]
        item.uploading = False
        self._flying.pop(name, None)
        heapq.heappush(self._queue, (item.added, name))
        self.in_flight -= 1
        self.uploads_failed += 1
        self.failures += 1
        delay = min(self.retry_max, self.retry_initial * 2 ** (self.failures - 1))
        self.blocked_until = max(self.blocked_until, now + delay)
        return delay

    def refused(self, name: str) -> None:
        """Storage refused the blob for good: keep the file, never retry it (a failure
        of one file must not hold back the others)."""
        item = self.items[name]
        item.uploading = False
        item.conflict = True
        self._flying.pop(name, None)
        self._kept += 1
        self.in_flight -= 1
        self.rejected += 1

    def lost(self, name: str) -> None:
        """The spooled file is gone (deleted by hand): forget it."""
        item = self.items.pop(name)
        self._flying.pop(name, None)
        self.in_flight -= 1
        self.bytes -= item.size
        self.vanished += 1
        self._check_near()

    # ---------------------------------------------------------------- state
    def next_deadline(self, now: float) -> float | None:
        """When to look again: the end of the backoff, if anything waits for it."""
        waiting = len(self.items) - self.in_flight - self._kept
        if waiting <= 0 or self.in_flight >= self.concurrency:
            return None
        return max(now, self.blocked_until)

    @property
    def files(self) -> int:
        return len(self.items)

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest file still to upload has waited (0 when none). Read by the
        metrics thread: the queue's head and the few uploads in flight, no scan."""
        added = list(self._flying.values())
        try:
            added.append(self._queue[0][0])
        except IndexError:
            pass
        return max(0.0, now - min(added)) if added else 0.0

    @property
    def pending(self) -> int:
        """Files still to upload (refused ones excluded)."""
        return len(self.items) - self._kept


class BlobTarget(Protocol):
    """Where spooled files go (``media.azure.AzureBlobStorage`` provides it)."""

    def url(self, name: str) -> str:
        """The blob's URL (deterministic: known before the upload)."""
        ...

    async def upload(self, item: SpoolItem, md5: bytes) -> bool:
        """Store the file as blob ``item.name`` unless it exists. True when written,
        False when the same blob (size, MD5) was already there; raises
        :class:`BlobConflict` for a different blob, :class:`BlobRejected` when storage
        refuses this blob for good, anything else for a failure (retried)."""
        ...

    async def close(self) -> None: ...


class Spool:
    """The asyncio shell: spool files under ``root``, ship them through ``target``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        target: BlobTarget,
        core: SpoolCore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.meta_dir = self.root / "meta"
        self.target = target
        self.core = core
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._uploads: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------- naming
    @staticmethod
    def blob_name(tenant: str, kind: str, key: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown media kind {kind!r}")
        return f"{validate_tenant(tenant)}/{kind}/{validate_key(key)}"

    def path(self, tenant: str, kind: str, key: str) -> Path:
        """Where a recording is written while it waits for upload."""
        return self.files_dir / self.blob_name(tenant, kind, key)

    def url(self, tenant: str, kind: str, key: str) -> str:
        return self.target.url(self.blob_name(tenant, kind, key))

    # ------------------------------------------------------------ feeding
    def begin(self, tenant: str, kind: str, key: str, metadata: dict[str, str]) -> Path:
        """A recording starts: check the quota, write its metadata, return its path.

        Raises :class:`SpoolFull` when the spool holds its quota (logged once per
        episode: until a recording is admitted again)."""
        core = self.core
        was_full = core.full
        if not core.admit():
            if not was_full:
                log.warning(
                    "media spool full: %d of %d bytes in %d files; new recordings are "
                    "refused until uploads free space (storage unreachable?)",
                    core.bytes,
                    core.quota,
                    core.files,
                )
            raise SpoolFull(f"media spool full ({core.bytes} of {core.quota} bytes)")
        name = self.blob_name(tenant, kind, key)
        path = self.files_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = self.meta_dir / f"{name}.json"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(metadata))
        return path

    def finished(self, tenant: str, kind: str, key: str) -> None:
        """A recording's file is complete: queue it for upload."""
        name = self.blob_name(tenant, kind, key)
        path = self.files_dir / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            log.error("spooled recording %s vanished before upload", name)
            return
        meta = self._read_meta(name)
        self._add(SpoolItem(name, path, size, self.clock(), meta))

    def _add(self, item: SpoolItem) -> None:
        if self.core.add(item):
            log.warning(
                "media spool near its quota: %d of %d bytes in %d files (storage unreachable?)",
                self.core.bytes,
                self.core.quota,
                self.core.files,
            )
        self._wake.set()

    def _read_meta(self, name: str) -> dict[str, str]:
        try:
            data = json.loads((self.meta_dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            data = {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _left(self) -> list[SpoolItem]:
        """The files a previous run left (read in a worker thread: after a long outage
        they are many)."""
        found: list[SpoolItem] = []
        if not self.files_dir.is_dir():
            return found
        for path in sorted(self.files_dir.rglob("*")):
            if not path.is_file():
                continue
            name = path.relative_to(self.files_dir).as_posix()
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            found.append(SpoolItem(name, path, st.st_size, st.st_mtime, self._read_meta(name)))
        return found

    async def scan(self) -> int:
        """Queue every file left in the spool (a restart after a stop or a crash)."""
        found = await asyncio.to_thread(self._left)
        for item in found:
            self._add(item)
        if found:
            log.info("media spool: %d files (%d bytes) left to upload", len(found), self.core.bytes)
        return len(found)

    # ------------------------------------------------------------ running
    async def start(self) -> None:
        """Queue what a previous run left, then start shipping."""
        await self.scan()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop shipping (files left are shipped at the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._uploads):
            task.cancel()
        if self._uploads:
            await asyncio.gather(*self._uploads, return_exceptions=True)
        await self.target.close()

    async def drained(self) -> None:
        """Wait until nothing is left to upload (conflicts aside)."""
        while self.core.pending:
            self._idle.clear()
            await self._idle.wait()

    async def _run(self) -> None:
        while True:
            now = self.clock()
            for item in self.core.start_ready(now):
                task = asyncio.get_running_loop().create_task(self._upload(item))
                self._uploads.add(task)
                task.add_done_callback(self._uploads.discard)
            deadline = self.core.next_deadline(now)
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - now) + 0.01
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _upload(self, item: SpoolItem) -> None:
        try:
            md5 = await asyncio.to_thread(file_md5, item.path)
            written = await self.target.upload(item, md5)
        except asyncio.CancelledError:
            raise
        except BlobRejected as exc:
            self.core.refused(item.name)
            log.error("media spool: %s not uploaded: %s (file kept)", item.name, exc)
        except FileNotFoundError:
            self.core.lost(item.name)
            log.error("media spool: %s was deleted before its upload", item.name)
        except Exception as exc:  # unreachable storage, timeouts: retried with backoff
            delay = self.core.failed(item.name, self.clock())
            log.warning(
                "media upload of %s failed (%s: %s); retrying in %.1f s",
                item.name,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                delay,
            )
        else:
            # confirmed by storage: now (and only now) the local copy may go
            await asyncio.to_thread(self._delete, item)
            self.core.succeeded(item.name, present=not written)
        finally:
            self._wake.set()
            if not self.core.pending:
                self._idle.set()

    def _delete(self, item: SpoolItem) -> None:
        item.path.unlink(missing_ok=True)
        (self.meta_dir / f"{item.name}.json").unlink(missing_ok=True)
        # directories stay: a recording may be starting in the same one right now
