"""Media storage on Azure Blob: the only module that imports the Azure SDK.

Layout: one container per platform (``container``, configurable), blobs named
``<tenant>/<kind>/<key>`` (kind: prompts, recordings, voicemail), with metadata
``call_id`` and ``tenant``. :class:`AzureBlobStorage` is both a :class:`MediaStorage`
(synchronous calls, for tools and provisioning: ``azure.storage.blob``) and the spool's
:class:`~media.spool.BlobTarget` (asyncio: ``azure.storage.blob.aio``, on the node's
event loop, the file read in worker threads).

Uploads are "create only" (``overwrite=False``, i.e. ``If-None-Match: *``): a blob is
written once under its final name. Large files go up as staged blocks that only become
a blob when the block list is committed, so an upload cut by a crash leaves no blob and
the restarted node uploads the whole file again. The SDK's own retries are off: the
spool retries with its backoff and knows when storage is down.
"""

from __future__ import annotations

import asyncio
import builtins
import io
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings
from azure.storage.blob.aio import BlobServiceClient as AsyncBlobServiceClient
from azure.storage.blob.aio import ContainerClient as AsyncContainerClient

from .spool import BlobConflict, BlobRejected, SpoolItem
from .storage import MediaStorage, _validate_kind, validate_key, validate_tenant

__all__ = ["AzureBlobStorage", "StorageError"]

CONTENT_TYPES = {".wav": "audio/wav", ".flac": "audio/flac"}
READ_CHUNK = 256 * 1024
PERMANENT = frozenset({400, 411, 413, 414})
"""Statuses that refuse a blob for good (invalid name, too large, bad metadata)."""
METADATA_SAFE = "@:/.-_~!$&'()*+,;=[]"


class StorageError(Exception):
    """Media storage failed (unreachable, refused, ...)."""


def _content_type(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


async def _read_chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    """The file, read in a worker thread piece by piece (never on the event loop)."""
    f = await asyncio.to_thread(open, path, "rb")
    try:
        left = size
        while left > 0:
            chunk = await asyncio.to_thread(f.read, min(READ_CHUNK, left))
            if not chunk:
                raise OSError(f"{path} shrank during upload")
            left -= len(chunk)
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


class AzureBlobStorage(MediaStorage):
    """Blobs in one container, by connection string or account URL + credential.

    Args:
        connection_string: ``DefaultEndpointsProtocol=...;AccountName=...;...``.
        account_url: ``https://ACCOUNT.blob.core.windows.net`` (with ``credential``:
            the account key or a SAS token).
        container: created on first use when missing.
        block_size: bytes per staged block (files up to it go in one request).
        timeout: seconds to connect, and to wait for a response.
    """

    def __init__(
        self,
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: str | None = None,
        container: str = "callengine",
        block_size: int = 4 * 1024 * 1024,
        timeout: float = 20.0,
    ) -> None:
        if bool(connection_string) == bool(account_url):
            raise ValueError("give either connection_string or account_url")
        self.container = container
        self._options: dict[str, Any] = {
            "max_single_put_size": block_size,
            "max_block_size": block_size,
            "retry_total": 0,
            "connection_timeout": timeout,
            "read_timeout": timeout,
        }
        self._connection_string = connection_string
        self._account_url = account_url
        self._credential = credential
        self._sync: ContainerClient | None = None
        self._aio_service: AsyncBlobServiceClient | None = None
        self._aio: AsyncContainerClient | None = None
        self._container_ready = False
        # without the query: a SAS in the connection string must not reach call logs
        self._base_url = self._sync_container().url.split("?", 1)[0].rstrip("/")

    # ---------------------------------------------------------------- clients
    def _sync_container(self) -> ContainerClient:
        if self._sync is None:
            if self._connection_string:
                service = BlobServiceClient.from_connection_string(
                    self._connection_string, **self._options
                )
            else:
                service = BlobServiceClient(
                    cast(str, self._account_url), credential=self._credential, **self._options
                )
            self._sync = service.get_container_client(self.container)
        return self._sync

    def _aio_container(self) -> AsyncContainerClient:
        if self._aio is None:
            if self._connection_string:
                service = AsyncBlobServiceClient.from_connection_string(
                    self._connection_string, **self._options
                )
            else:
                service = AsyncBlobServiceClient(
                    cast(str, self._account_url), credential=self._credential, **self._options
                )
            self._aio_service = service
            self._aio = service.get_container_client(self.container)
        return self._aio

    @staticmethod
    def blob_name(tenant: str, kind: str, key: str) -> str:
        return f"{validate_tenant(tenant)}/{_validate_kind(kind)}/{validate_key(key)}"

    def url(self, name: str) -> str:
        """The blob's URL (without credentials), quoted as the SDK quotes it."""
        return f"{self._base_url}/{urllib.parse.quote(name, safe='~/')}"

    # ------------------------------------------------------- the spool target
    async def upload(self, item: SpoolItem, md5: bytes) -> bool:
        container = self._aio_container()
        if not self._container_ready:
            try:
                await container.create_container()
            except ResourceExistsError:
                pass
            self._container_ready = True
        blob = container.get_blob_client(item.name)
        settings = ContentSettings(
            content_type=_content_type(item.name), content_md5=bytearray(md5)
        )
        # metadata travel as HTTP headers: values from the network (a Call-ID) are
        # percent-encoded beyond printable ASCII
        metadata = {k: urllib.parse.quote(v, safe=METADATA_SAFE) for k, v in item.metadata.items()}
        try:
            await blob.upload_blob(
                _read_chunks(item.path, item.size),
                length=item.size,
                overwrite=False,
                metadata=metadata,
                content_settings=settings,
                max_concurrency=1,
            )
        except ResourceExistsError:
            props = await blob.get_blob_properties()
            stored = props.content_settings.content_md5
            if props.size == item.size and stored is not None and bytes(stored) == md5:
                return False  # the same blob: an earlier try got through
            raise BlobConflict(
                f"a different blob exists ({props.size} bytes, this file {item.size})"
            ) from None
        except ResourceNotFoundError:
            self._container_ready = False  # the container was deleted: create it again
            raise
        except HttpResponseError as exc:
            if exc.status_code in PERMANENT:
                message = str(exc.message or exc).splitlines()[0]
                raise BlobRejected(f"storage refused it ({exc.status_code}): {message}") from None
            raise
        return True

    async def close(self) -> None:
        if self._aio_service is not None:
            await self._aio_service.close()
            self._aio_service = None
            self._aio = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    # ------------------------------------------------ MediaStorage (synchronous)
    def _blob(self, tenant: str, kind: str, key: str) -> Any:
        return self._sync_container().get_blob_client(self.blob_name(tenant, kind, key))

    def _ensure_container(self) -> None:
        try:
            self._sync_container().create_container()
        except ResourceExistsError:
            pass

    def put(self, tenant: str, kind: str, key: str, data: bytes) -> None:
        try:
            self._ensure_container()
            self._blob(tenant, kind, key).upload_blob(
                data,
                overwrite=True,
                metadata={"tenant": tenant},
                content_settings=ContentSettings(content_type=_content_type(key)),
            )
        except AzureError as exc:
            raise StorageError(str(exc).splitlines()[0]) from None

    def get(self, tenant: str, kind: str, key: str) -> bytes:
        try:
            return bytes(self._blob(tenant, kind, key).download_blob().readall())
        except ResourceNotFoundError:
            raise FileNotFoundError(self.blob_name(tenant, kind, key)) from None
        except AzureError as exc:
            raise StorageError(str(exc).splitlines()[0]) from None

    def open(self, tenant: str, kind: str, key: str, mode: str = "rb") -> BinaryIO:
        if mode == "rb":
            return io.BytesIO(self.get(tenant, kind, key))
        if mode in ("wb", "w+b"):
            return _UploadOnClose(self, tenant, kind, key)
        raise ValueError(f"unsupported open mode {mode!r}")

    def list(self, tenant: str, kind: str, prefix: str = "") -> builtins.list[str]:
        base = f"{validate_tenant(tenant)}/{_validate_kind(kind)}/"
        try:
            names = [b.name for b in self._sync_container().list_blobs(base + prefix)]
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise StorageError(str(exc).splitlines()[0]) from None
        return sorted(n[len(base) :] for n in names)

    def delete(self, tenant: str, kind: str, key: str) -> bool:
        try:
            self._blob(tenant, kind, key).delete_blob()
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise StorageError(str(exc).splitlines()[0]) from None
        return True

    def exists(self, tenant: str, kind: str, key: str) -> bool:
        try:
            return bool(self._blob(tenant, kind, key).exists())
        except AzureError as exc:
            raise StorageError(str(exc).splitlines()[0]) from None


class _UploadOnClose(io.BytesIO):
    """A writable file whose bytes become the blob when it is closed."""

    def __init__(self, storage: AzureBlobStorage, tenant: str, kind: str, key: str) -> None:
        super().__init__()
        self._target = (storage, tenant, kind, key)

    def close(self) -> None:
        if not self.closed:
            storage, tenant, kind, key = self._target
            storage.put(tenant, kind, key, self.getvalue())
        super().close()
