"""The only module that imports pymongo: the master Configuration DB and the
History DB, both MongoDB.

Every method blocks (pymongo is synchronous); the asyncio tasks call them
through ``asyncio.to_thread``. Every pymongo error becomes
:class:`UpstreamError`, so callers handle one exception type.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pymongo
from pymongo import MongoClient, ReplaceOne
from pymongo.change_stream import CollectionChangeStream
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.write_concern import WriteConcern

from .errors import ConfigError, UpstreamError

__all__ = ["MongoHistory", "MongoMaster"]

log = logging.getLogger("config_cache.mongo")

_READ_PREFERENCES = {
    "primary": pymongo.ReadPreference.PRIMARY,
    "primaryPreferred": pymongo.ReadPreference.PRIMARY_PREFERRED,
    "secondary": pymongo.ReadPreference.SECONDARY,
    "secondaryPreferred": pymongo.ReadPreference.SECONDARY_PREFERRED,
    "nearest": pymongo.ReadPreference.NEAREST,
}


def _read_preference(name: str) -> Any:
    if name not in _READ_PREFERENCES:
        raise ConfigError(
            f"must be one of {', '.join(_READ_PREFERENCES)}, not {name!r}", field="read_preference"
        )
    return _READ_PREFERENCES[name]


def _client(url: str, timeout: float) -> MongoClient[dict[str, Any]]:
    ms = max(1, int(timeout * 1000))
    # socketTimeoutMS bounds a call on a half-open connection (cable pulled):
    # without it an offline node could wait for TCP keepalive.
    return MongoClient(
        url,
        serverSelectionTimeoutMS=ms,
        connectTimeoutMS=ms,
        socketTimeoutMS=ms * 3,
        appname="callengine",
    )


@contextmanager
def _upstream(what: str) -> Iterator[None]:
    try:
        yield
    except PyMongoError as exc:
        raise UpstreamError(f"{what}: {type(exc).__name__}: {exc}") from exc


class MongoMaster:
    """The ``tenants`` collection: one document per tenant, ``_id`` = tenant id,
    with an integer ``rev`` that grows on every change."""

    def __init__(
        self,
        url: str,
        *,
        database: str = "callengine",
        collection: str = "tenants",
        timeout: float = 5.0,
        read_preference: str = "primaryPreferred",
    ) -> None:
        self.url = url
        self._client = _client(url, timeout)
        self._coll = self._client[database].get_collection(
            collection, read_preference=_read_preference(read_preference)
        )
        self._stream: CollectionChangeStream[dict[str, Any]] | None = None
        #: False once the server said it has no change streams.
        self.change_streams: bool = True
        self._bad_ids: set[str] = set()

    def revisions(self) -> dict[str, Any]:
        """Tenant id -> rev for every tenant document (projection, cheap).

        Revs are returned as stored (the follower rejects one that is not an
        integer); documents whose ``_id`` is not a string are skipped and
        logged once, since no tenant can be fetched by them."""
        out: dict[str, Any] = {}
        with _upstream("master revisions"):
            for doc in self._coll.find({}, {"_id": 1, "rev": 1}):
                oid = doc.get("_id")
                if not isinstance(oid, str):
                    if repr(oid) not in self._bad_ids:
                        self._bad_ids.add(repr(oid))
                        log.error(
                            "ignoring master document with _id %r: a tenant _id is its "
                            "id, a string",
                            oid,
                        )
                    continue
                out[oid] = doc.get("rev", 0)
        return out

    def fetch(self, tenant_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The full documents of ``tenant_ids``."""
        with _upstream("master fetch"):
            return list(self._coll.find({"_id": {"$in": list(tenant_ids)}}))

    def push(self, doc: Mapping[str, Any]) -> int:
        """Store a tenant document with ``rev`` = stored rev + 1 (or the
        document's own rev when higher); return the rev written. Uses a
        compare-and-set on the old rev so concurrent pushes cannot both win."""
        tid = doc["id"] if "id" in doc else doc["_id"]
        body = {k: v for k, v in doc.items() if k not in ("id", "_id")}
        with _upstream("master push"):
            for _attempt in range(10):
                current = self._coll.find_one({"_id": tid}, {"rev": 1})
                old = None if current is None else int(current.get("rev", 0))
                rev = max((old or 0) + 1, int(body.get("rev", 0)))
                new = {**body, "_id": tid, "rev": rev}
                if old is None:
                    try:
                        self._coll.insert_one(new)
                    except DuplicateKeyError:
                        continue
                    return rev
                if self._coll.replace_one({"_id": tid, "rev": old}, new).matched_count:
                    return rev
        raise UpstreamError(f"master push: tenant {tid!r} kept changing under us")

    def wait_for_change(self, timeout: float) -> bool | None:
        """Block up to ``timeout`` s for a change event on the collection.

        True: something changed (poll now). False: nothing within ``timeout``.
        None: the server has no change streams (standalone mongod); poll on a
        timer instead.
        """
        if not self.change_streams:
            return None
        try:
            if self._stream is None:
                self._stream = self._coll.watch(max_await_time_ms=max(1, int(timeout * 1000)))
            return self._stream.try_next() is not None
        except OperationFailure as exc:
            self._close_stream()
            self.change_streams = False
            log.info("master has no change streams (%s); polling by rev only", exc)
            return None
        except ConnectionFailure as exc:
            self._close_stream()
            raise UpstreamError(f"master change stream: {exc}") from exc
        except PyMongoError as exc:
            self._close_stream()
            raise UpstreamError(f"master change stream: {exc}") from exc

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except PyMongoError:
                log.debug("closing change stream failed", exc_info=True)

    def close(self) -> None:
        """Close the change stream and the client."""
        self._close_stream()
        self._client.close()


class MongoHistory:
    """The History DB ``calls`` collection: one document per call, ``_id`` =
    call id. Writes are bulk upserts, so sending a batch twice never duplicates.

    ``tenant_regions`` (tenant -> region) stamps ``region`` on each document and
    adds it to the upsert filter: with a sharded collection whose shard key is
    ``{region: 1, _id: 1}`` and zone ranges per region, each call log lands on
    its region's shard (see docs/config.md).
    """

    def __init__(
        self,
        url: str,
        *,
        database: str = "callengine",
        collection: str = "calls",
        write_concern: str | int = "majority",
        journal: bool | None = True,
        timeout: float = 5.0,
        read_preference: str = "primary",
        tenant_regions: Mapping[str, str] | None = None,
        default_region: str | None = None,
    ) -> None:
        self.url = url
        self._client = _client(url, timeout)
        self._coll = self._client[database].get_collection(
            collection,
            write_concern=WriteConcern(w=write_concern, j=journal, wtimeout=int(timeout * 1000)),
            read_preference=_read_preference(read_preference),
        )
        self._regions = dict(tenant_regions or {})
        self._default_region = default_region

    def upsert(self, docs: Sequence[Mapping[str, Any]]) -> int:
        """Replace-or-insert each document by ``_id``; return how many the
        server acknowledged (matched + upserted). Raises :class:`UpstreamError`."""
        if not docs:
            return 0
        ops = []
        for doc in docs:
            body = dict(doc)
            flt: dict[str, Any] = {"_id": body["_id"]}
            if self._regions or self._default_region is not None:
                region = self._regions.get(str(body.get("tenant")), self._default_region)
                body["region"] = region
                flt["region"] = region
            ops.append(ReplaceOne(flt, body, upsert=True))
        with _upstream("history upsert"):
            result = self._coll.bulk_write(ops, ordered=False)
        return int(result.matched_count + result.upserted_count)

    def ping(self) -> None:
        """Ask the server to answer (``callengine check``); :class:`UpstreamError` if it
        cannot within the timeout."""
        with _upstream("history ping"):
            self._client.admin.command("ping")

    def close(self) -> None:
        """Close the client."""
        self._client.close()
