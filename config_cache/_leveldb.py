"""The only module that imports plyvel: a small LevelDB interface.

Opening: an absent or empty directory is created; an existing one is opened
without ``create_if_missing`` so a directory whose ``CURRENT`` file was lost is
treated as damage, not silently replaced by an empty database. LevelDB opens
table files lazily and, by default, silently drops damaged write-ahead-log
records, so opening alone proves little: an existing directory is opened with
``paranoid_checks`` and read once end to end with checksums verified (a node's
store is small: tenants, bindings, the outbox and the shipped ring). On any
damage we log (naming the file LevelDB names), run ``plyvel.repair_db`` once
(it salvages every readable table and log record, and moves what it cannot
read to ``lost/``), log what was moved, reopen and verify again; if that fails,
:class:`ConfigError` names the path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import plyvel

from .errors import ConfigError

__all__ = ["LocalDB"]

log = logging.getLogger("config_cache.leveldb")


class LocalDB:
    """A LevelDB database in one directory (one process may hold it open)."""

    def __init__(self, db: plyvel.DB, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LocalDB:
        """Open (or create) the database at ``path``; repair once if corrupt."""
        p = Path(path)
        fresh = not p.exists() or (p.is_dir() and not any(p.iterdir()))
        if fresh:
            try:
                p.mkdir(parents=True, exist_ok=True)
                return cls(plyvel.DB(str(p), create_if_missing=True), p)
            except (OSError, plyvel.Error) as exc:
                raise ConfigError(f"cannot create LevelDB: {_text(exc)}", file=str(p)) from exc
        if not p.is_dir():
            raise ConfigError("LevelDB path is not a directory", file=str(p))
        try:
            return cls(_open_verified(p), p)
        except plyvel.Error as exc:
            first = _text(exc)
            if isinstance(exc, plyvel.IOError) and "lock" in first.lower():
                # Held by another process: repairing would not help (and must not run).
                raise ConfigError(f"cannot open LevelDB: {first}", file=str(p)) from exc
        log.error("LevelDB at %s is damaged (%s); running plyvel.repair_db once", p, first)
        lost_before = _lost_tables(p)
        checked = True
        try:
            plyvel.repair_db(str(p))
            try:
                db = _open_verified(p)
            except plyvel.CorruptionError as exc:
                checked = False
                # Repair keeps a table whose blocks fail their checksum: serve
                # what reads (bad records surface as unreadable, and stay).
                log.error(
                    "LevelDB at %s still fails its checksums after repair (%s); "
                    "serving the readable records",
                    p,
                    _text(exc),
                )
                db = _open_scanned(p)
        except plyvel.Error as exc:
            raise ConfigError(
                f"LevelDB is corrupt and repair failed: {_text(exc)} (first error: {first})",
                file=str(p),
            ) from exc
        moved = sorted(_lost_tables(p) - lost_before)
        if moved:
            log.error(
                "LevelDB at %s repaired; unreadable table file(s) moved to %s, "
                "their records are lost: %s",
                p,
                p / "lost",
                ", ".join(moved),
            )
        elif checked:
            log.warning("LevelDB at %s repaired; readable records were kept", p)
        return cls(db, p)

    def close(self) -> None:
        """Close the database (idempotent)."""
        if not self._db.closed:
            self._db.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return bool(self._db.closed)

    def get(self, key: bytes) -> bytes | None:
        """The value at ``key`` or None."""
        value: bytes | None = self._db.get(key)
        return value

    def put(self, key: bytes, value: bytes, *, sync: bool = False) -> None:
        """Store one value; ``sync=True`` waits for the disk (fsync)."""
        self._db.put(key, value, sync=sync)

    def delete(self, key: bytes, *, sync: bool = False) -> None:
        """Delete one key."""
        self._db.delete(key, sync=sync)

    def write(
        self,
        puts: Iterable[tuple[bytes, bytes]] = (),
        deletes: Iterable[bytes] = (),
        *,
        sync: bool = False,
    ) -> None:
        """Apply ``deletes`` then ``puts`` atomically (one LevelDB WriteBatch)."""
        with self._db.write_batch(sync=sync) as batch:
            for key in deletes:
                batch.delete(key)
            for key, value in puts:
                batch.put(key, value)

    def items(self, prefix: bytes, *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` pairs under ``prefix`` in key order, from one
        consistent read snapshot."""
        with self._db.iterator(prefix=prefix, reverse=reverse) as it:
            yield from it

    def values(self, prefix: bytes) -> Iterator[bytes]:
        """Values under ``prefix`` in key order."""
        with self._db.iterator(prefix=prefix, include_key=False) as it:
            yield from it

    def keys(self, prefix: bytes, *, reverse: bool = False) -> Iterator[bytes]:
        """Keys under ``prefix`` in key order."""
        with self._db.iterator(prefix=prefix, include_value=False, reverse=reverse) as it:
            yield from it


def _open_verified(p: Path) -> plyvel.DB:
    """Open an existing database and read every record with checksums on.

    ``paranoid_checks`` makes a damaged write-ahead log an error instead of
    silently dropped records; the scan touches every table file, which LevelDB
    otherwise opens only when a read first needs it (a truncated table would
    then fail in the middle of serving). The handle returned is reopened
    without ``paranoid_checks``, so a later background error cannot stop the
    node's writes."""
    db = plyvel.DB(str(p), create_if_missing=False, paranoid_checks=True)
    try:
        with db.iterator(verify_checksums=True, fill_cache=False) as it:
            for _ in it:
                pass
    finally:
        db.close()
    return plyvel.DB(str(p), create_if_missing=False)


def _open_scanned(p: Path) -> plyvel.DB:
    """Open without checksum verification and read every record once, so
    that a read failing outright fails here, not while serving."""
    db = plyvel.DB(str(p), create_if_missing=False)
    try:
        with db.iterator(fill_cache=False) as it:
            for _ in it:
                pass
    except plyvel.Error:
        db.close()
        raise
    return db


def _lost_tables(p: Path) -> set[str]:
    """Table files ``repair_db`` set aside in ``lost/`` (it also archives the
    logs and manifests it rebuilt from: those lost nothing)."""
    lost = p / "lost"
    if not lost.is_dir():
        return set()
    return {f.name for f in lost.iterdir() if f.suffix in (".ldb", ".sst")}


def _text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    if isinstance(arg, bytes):
        return arg.decode("utf-8", "replace")
    return str(arg)
