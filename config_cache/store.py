"""The node's durable local store: tenant configuration, registrar bindings and
the call-log outbox, all in one LevelDB directory.

Key layout (format 1; keys are UTF-8, ``\\x00`` separates variable parts):

=====================  ===========================================================
``m/format``           ``b"1"``: layout version
``t/<tenant>``         canonical JSON of the validated tenant document (has ``rev``)
``r/<tenant>``         the tenant's ``rev`` as ASCII decimal
``n/<did>``            id of the tenant that owns the number
``b/<aor>\\x00<contact>`` registrar binding (JSON, with ``expires_at``)
``o/<call id>``        call-log outbox record (JSON ``{"state": "open"|"final", ...}``)
``s/<seq, 16 hex>``    recently shipped call logs (bounded ring)
=====================  ===========================================================

A tenant change rewrites ``t/``, ``r/`` and its ``n/`` keys in one WriteBatch,
then swaps the in-memory :class:`Snapshot` (see ``docs/config.md``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ._leveldb import LocalDB
from .demo import load_demo_tenant
from .errors import ConfigError
from .metrics import CacheMetrics
from .outbox import Outbox
from .schema import TenantConfig, validate_tenant
from .snapshot import RouteMatch, Snapshot

__all__ = [
    "Binding",
    "BindingStore",
    "ConfigCache",
    "LocalStore",
    "OnEmpty",
    "open_store",
]

log = logging.getLogger("config_cache.store")

FORMAT = b"1"
K_FORMAT = b"m/format"
P_TENANT = b"t/"
P_REV = b"r/"
P_NUMBER = b"n/"
P_BINDING = b"b/"
#: registrar records per AOR (the registrar's own JSON format): a/<aor>
P_AOR = b"a/"

OnEmpty = Literal["demo", "refuse"]


def _key(prefix: bytes, *parts: str) -> bytes:
    return prefix + "\x00".join(parts).encode()


class ConfigCache:
    """Tenant configuration: LevelDB is the durable copy, :attr:`snapshot` the
    in-memory immutable view that calls read.

    Writers (the master follower, ``config import``) are serialised by a lock;
    readers never lock: they read the current :attr:`snapshot` reference.
    """

    def __init__(
        self,
        db: LocalDB,
        *,
        default_tenant: str | None = None,
        metrics: CacheMetrics | None = None,
    ) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._default_tenant = default_tenant
        self._metrics = metrics or CacheMetrics.private()
        #: True while the embedded demo tenant is served (nothing else known).
        self.serving_demo = False
        self._snapshot = Snapshot.build(self._load(), default_tenant=default_tenant)
        for tenant in self._snapshot.tenants.values():
            self._metrics.tenant_rev.labels(tenant=tenant.id).set(tenant.rev)

    def _load(self) -> list[TenantConfig]:
        tenants: list[TenantConfig] = []
        for key, value in self._db.items(P_TENANT):
            tid = key[len(P_TENANT) :].decode("utf-8", "replace")
            try:
                tenants.append(
                    validate_tenant(json.loads(value), file=str(self._db.path), tenant=tid)
                )
            except (ConfigError, ValueError) as exc:
                # Stored by an older version or damaged: skip it, the follower
                # refetches it because its rev is now unknown.
                log.error("skipping cached tenant %r: %s", tid, exc)
        return tenants

    # -- call path ----------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The current immutable view. Keep the object for the life of a call."""
        return self._snapshot

    def lookup(self, number: str) -> RouteMatch | None:
        """Route for a dialled number in the current snapshot (see :meth:`Snapshot.lookup`)."""
        return self._snapshot.lookup(number)

    def tenant(self, tenant_id: str) -> TenantConfig | None:
        """The tenant in the current snapshot, or None."""
        return self._snapshot.tenants.get(tenant_id)

    # -- state --------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The LevelDB directory."""
        return self._db.path

    def revisions(self) -> dict[str, int]:
        """Tenant id -> rev of what is cached (excluding the demo tenant)."""
        if self.serving_demo:
            return {}
        return {tid: t.rev for tid, t in self._snapshot.tenants.items()}

    def is_empty(self) -> bool:
        """True when no tenant is cached."""
        return not self._snapshot.tenants

    # -- writers ------------------------------------------------------------

    def apply(
        self, tenant: TenantConfig, *, source: str | None = None, force: bool = False
    ) -> bool:
        """Store ``tenant`` atomically and swap the snapshot.

        Returns False (and changes nothing) when the cache already holds this
        rev or a newer one, unless ``force``. Raises :class:`ConfigError` when
        one of its numbers belongs to another tenant.
        """
        with self._lock:
            snap = self._snapshot
            current = None if self.serving_demo else snap.tenants.get(tenant.id)
            if current is not None and tenant.rev <= current.rev and not force:
                return False
            for did in tenant.numbers:
                owner = snap.number_owner(did)
                if owner is not None and owner != tenant.id and not self.serving_demo:
                    raise ConfigError(
                        f"number already assigned to tenant {owner!r}",
                        file=source,
                        tenant=tenant.id,
                        field=f"numbers.{did}",
                    )
            stale = (
                [] if current is None else [d for d in current.numbers if d not in tenant.numbers]
            )
            puts = [
                (_key(P_TENANT, tenant.id), tenant.doc_json.encode()),
                (_key(P_REV, tenant.id), str(tenant.rev).encode()),
                (K_FORMAT, FORMAT),
            ]
            puts += [(_key(P_NUMBER, did), tenant.id.encode()) for did in tenant.numbers]
            self._db.write(puts, [_key(P_NUMBER, d) for d in stale], sync=True)
            others: Iterable[TenantConfig] = (
                [] if self.serving_demo else (t for t in snap.tenants.values() if t.id != tenant.id)
            )
            self.serving_demo = False
            self._swap([*others, tenant])
            self._metrics.tenant_rev.labels(tenant=tenant.id).set(tenant.rev)
            log.info("tenant %r rev %d applied (from %s)", tenant.id, tenant.rev, source or "api")
            return True

    def remove(self, tenant_id: str) -> bool:
        """Delete a tenant (and its numbers) atomically. False if unknown."""
        with self._lock:
            snap = self._snapshot
            current = snap.tenants.get(tenant_id)
            if current is None or self.serving_demo:
                return False
            deletes = [_key(P_TENANT, tenant_id), _key(P_REV, tenant_id)]
            deletes += [_key(P_NUMBER, did) for did in current.numbers]
            self._db.write((), deletes, sync=True)
            self._swap([t for t in snap.tenants.values() if t.id != tenant_id])
            self._metrics.tenant_rev.remove(tenant_id)
            log.info("tenant %r removed", tenant_id)
            return True

    def _swap(self, tenants: list[TenantConfig]) -> None:
        self._snapshot = Snapshot.build(
            tenants, default_tenant=self._default_tenant, version=self._snapshot.version + 1
        )

    def ensure_not_empty(self, on_empty: OnEmpty) -> None:
        """Call once at start-up, after the first attempt to reach the master.

        With no cached tenant, ``"demo"`` serves the embedded demo tenant
        (in memory only; the first real tenant replaces it) and ``"refuse"``
        raises :class:`ConfigError`.
        """
        if not self.is_empty():
            return
        if on_empty == "refuse":
            raise ConfigError(
                "no tenant configuration: the local cache is empty and the master "
                "Configuration DB could not be reached (set on_empty: demo to serve "
                "the embedded demo tenant)",
                file=str(self._db.path),
            )
        if on_empty != "demo":
            raise ConfigError(f"must be 'demo' or 'refuse', not {on_empty!r}", field="on_empty")
        demo = load_demo_tenant()
        with self._lock:
            if self._default_tenant is None:
                self._default_tenant = demo.id
            self._swap([demo])
            self.serving_demo = True
        log.warning("configuration cache is empty: serving the embedded demo tenant %r", demo.id)


@dataclass(frozen=True, slots=True)
class Binding:
    """A registrar binding (RFC 3261 §10): ``contact`` reaches ``aor`` until
    ``expires_at`` (Unix time, seconds)."""

    aor: str
    contact: str
    expires_at: float
    call_id: str = ""
    cseq: int = 0
    #: Source address the REGISTER came from (``host:port``), for NAT.
    received: str | None = None
    user_agent: str | None = None
    #: ``+sip.instance`` (RFC 5626), when the UA sent one.
    instance: str | None = None


class BindingStore:
    """Registrar bindings that survive a restart. Writes are not fsynced: a
    binding lost in a crash comes back with the UA's next REGISTER."""

    def __init__(self, db: LocalDB) -> None:
        self._db = db

    def put_binding(self, binding: Binding) -> None:
        """Add or refresh a binding (same ``aor`` and ``contact`` replace)."""
        self._db.put(
            _key(P_BINDING, binding.aor, binding.contact),
            json.dumps(asdict(binding), separators=(",", ":")).encode(),
        )

    def get_bindings(self, aor: str, *, now: float) -> list[Binding]:
        """Unexpired bindings of ``aor``, ordered by contact."""
        out = []
        for value in self._db.values(_key(P_BINDING, aor) + b"\x00"):
            binding = Binding(**json.loads(value))
            if binding.expires_at > now:
                out.append(binding)
        return out

    def delete_binding(self, aor: str, contact: str) -> bool:
        """Remove one binding; False when there was none."""
        key = _key(P_BINDING, aor, contact)
        if self._db.get(key) is None:
            return False
        self._db.delete(key)
        return True

    def all_bindings(self, *, now: float) -> list[Binding]:
        """Every unexpired binding (to rebuild a registrar's table at start)."""
        out = []
        for value in self._db.values(P_BINDING):
            binding = Binding(**json.loads(value))
            if binding.expires_at > now:
                out.append(binding)
        return out

    def purge_expired(self, *, now: float) -> int:
        """Delete expired bindings; return how many."""
        dead = [k for k, v in self._db.items(P_BINDING) if json.loads(v)["expires_at"] <= now]
        self._db.write((), dead)
        return len(dead)

    def put_aor(self, aor: str, records: list[dict[str, Any]]) -> None:
        """Replace every binding record of ``aor`` in one write (the registrar's
        own record format, JSON-able dicts); an empty list removes the AOR."""
        key = P_AOR + aor.encode("utf-8", "surrogatepass")
        if records:
            self._db.put(key, json.dumps(records, separators=(",", ":")).encode())
        else:
            self._db.delete(key)

    def all_aors(self) -> dict[str, list[dict[str, Any]]]:
        """Every AOR's records (what a multi-worker node's front hands a new worker)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for key, raw in self._db.items(P_AOR):
            aor = key[len(P_AOR) :].decode("utf-8", "surrogatepass")
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(data, list):
                out[aor] = [d for d in data if isinstance(d, dict)]
        return out

    def get_aor(self, aor: str) -> list[dict[str, Any]]:
        """The records :meth:`put_aor` stored for ``aor`` (empty when none or unreadable)."""
        raw = self._db.get(P_AOR + aor.encode("utf-8", "surrogatepass"))
        if raw is None:
            return []
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            log.error("unreadable binding record for %r ignored", aor)
            return []
        return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


@dataclass(slots=True)
class LocalStore:
    """Everything a node keeps in its data directory. Open with :func:`open_store`."""

    db: LocalDB
    config: ConfigCache
    bindings: BindingStore
    outbox: Outbox

    def close(self) -> None:
        """Close the LevelDB directory."""
        self.db.close()


def open_store(
    data_dir: str | os.PathLike[str],
    *,
    default_tenant: str | None = None,
    metrics: CacheMetrics | None = None,
    shipped_keep: int = 1000,
) -> LocalStore:
    """Open (creating or repairing) the LevelDB directory ``data_dir``.

    ``default_tenant`` takes numbers no tenant owns (through its
    ``default_route``). ``shipped_keep`` bounds the recently shipped ring.
    Raises :class:`ConfigError` when the directory is locked or unrepairable.
    """
    db = LocalDB.open(data_dir)
    try:
        fmt = db.get(K_FORMAT)
        if fmt is not None and fmt != FORMAT:
            raise ConfigError(
                f"unsupported store format {fmt.decode(errors='replace')!r}", file=str(db.path)
            )
        m = metrics or CacheMetrics.private()
        return LocalStore(
            db=db,
            config=ConfigCache(db, default_tenant=default_tenant, metrics=m),
            bindings=BindingStore(db),
            outbox=Outbox(db, metrics=m, shipped_keep=shipped_keep),
        )
    except BaseException:
        db.close()
        raise
