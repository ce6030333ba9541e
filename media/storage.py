"""Media storage: prompts, recordings and voicemail by tenant and key.

:class:`MediaStorage` is the interface the engine uses; :class:`LocalMediaStorage`
keeps files under ``<root>/<tenant>/<kind>/<key>``. Keys come from tenant
configuration and IVR code, so they are validated before touching the file
system: relative, ``/``-separated, no ``..`` or ``.`` segments, no empty
segments, no backslash, no NUL, no leading ``/``.
"""

from __future__ import annotations

import builtins
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO, cast

__all__ = ["KINDS", "LocalMediaStorage", "MediaStorage", "validate_key", "validate_tenant"]

KINDS = frozenset({"prompts", "recordings", "voicemail"})
"""The kinds of media object kept per tenant."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``ValueError``."""
    if not key:
        raise ValueError("media key is empty")
    if "\x00" in key:
        raise ValueError(f"media key contains NUL: {key!r}")
    if "\\" in key:
        raise ValueError(f"media key contains a backslash: {key!r}")
    if key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        raise ValueError(f"media key is an absolute path: {key!r}")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"media key has an invalid segment {part!r}: {key!r}")
    return key


def validate_tenant(tenant: str) -> str:
    """A tenant id is one safe key segment."""
    validate_key(tenant)
    if "/" in tenant:
        raise ValueError(f"tenant id contains '/': {tenant!r}")
    return tenant


def _validate_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown media kind {kind!r}; expected one of {sorted(KINDS)}")
    return kind


class MediaStorage(ABC):
    """Where prompts, recordings and voicemail live, by (tenant, kind, key)."""

    @abstractmethod
    def put(self, tenant: str, kind: str, key: str, data: bytes) -> None:
        """Store ``data`` (replacing any object with the same key, atomically)."""

    @abstractmethod
    def get(self, tenant: str, kind: str, key: str) -> bytes:
        """Return the object's bytes; ``FileNotFoundError`` if absent."""

    @abstractmethod
    def open(self, tenant: str, kind: str, key: str, mode: str = "rb") -> BinaryIO:
        """Open the object as a binary file (``"rb"`` or ``"wb"``/``"w+b"``)."""

    @abstractmethod
    def list(self, tenant: str, kind: str, prefix: str = "") -> builtins.list[str]:
        """Keys of ``kind`` for ``tenant`` starting with ``prefix``, sorted."""

    @abstractmethod
    def delete(self, tenant: str, kind: str, key: str) -> bool:
        """Delete the object; return whether it existed."""

    @abstractmethod
    def exists(self, tenant: str, kind: str, key: str) -> bool:
        """Whether the object exists."""


class LocalMediaStorage(MediaStorage):
    """Files under ``root`` (the node's data directory)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, tenant: str, kind: str, key: str) -> Path:
        """The file path for an object (validated; the file may not exist)."""
        return self.root / validate_tenant(tenant) / _validate_kind(kind) / validate_key(key)

    def put(self, tenant: str, kind: str, key: str, data: bytes) -> None:
        target = self.path(tenant, kind, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, tenant: str, kind: str, key: str) -> bytes:
        return self.path(tenant, kind, key).read_bytes()

    def open(self, tenant: str, kind: str, key: str, mode: str = "rb") -> BinaryIO:
        if mode not in ("rb", "wb", "w+b", "r+b"):
            raise ValueError(f"unsupported open mode {mode!r}")
        target = self.path(tenant, kind, key)
        if mode != "rb":
            target.parent.mkdir(parents=True, exist_ok=True)
        return cast(BinaryIO, open(target, mode))

    def list(self, tenant: str, kind: str, prefix: str = "") -> builtins.list[str]:
        base = self.root / validate_tenant(tenant) / _validate_kind(kind)
        if not base.is_dir():
            return []
        keys = [
            p.relative_to(base).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        ]
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, tenant: str, kind: str, key: str) -> bool:
        target = self.path(tenant, kind, key)
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        return True

    def exists(self, tenant: str, kind: str, key: str) -> bool:
        return self.path(tenant, kind, key).is_file()
