"""config_cache: the node's local, offline-capable view of the cloud.

- tenant configuration cached in LevelDB and served from an immutable
  in-memory :class:`Snapshot` (:func:`open_store`, :class:`ConfigCache`);
- following the master Configuration DB, and offline mode (:class:`MasterFollower`);
- registrar bindings that survive a restart (:class:`BindingStore`);
- the durable call-log outbox and its shipping to the History DB
  (:class:`Outbox`, :class:`HistoryShipper`).

See ``docs/config.md`` for the tenant schema, the key layout and the settings.
"""

from __future__ import annotations

from ._mongo import MongoHistory, MongoMaster
from .calllog import CallLog
from .demo import demo_document, load_demo_tenant
from .errors import ConfigError, UpstreamError
from .files import load_tenant_file, read_tenant_documents
from .follower import MasterFollower, MasterSource
from .metrics import CacheMetrics
from .outbox import Outbox
from .schema import (
    BUNDLED_PROMPTS,
    NumberEntry,
    OutboundRoute,
    Prompt,
    RingGroup,
    Route,
    TenantConfig,
    User,
    validate_tenant,
)
from .settings import CacheSettings
from .shipper import Backoff, HistoryShipper, HistorySink
from .snapshot import RouteMatch, Snapshot
from .store import Binding, BindingStore, ConfigCache, LocalStore, OnEmpty, open_store

__all__ = [
    "BUNDLED_PROMPTS",
    "Backoff",
    "Binding",
    "BindingStore",
    "CacheMetrics",
    "CacheSettings",
    "CallLog",
    "ConfigCache",
    "ConfigError",
    "HistoryShipper",
    "HistorySink",
    "LocalStore",
    "MasterFollower",
    "MasterSource",
    "MongoHistory",
    "MongoMaster",
    "NumberEntry",
    "OnEmpty",
    "OutboundRoute",
    "Outbox",
    "Prompt",
    "RingGroup",
    "Route",
    "RouteMatch",
    "Snapshot",
    "TenantConfig",
    "UpstreamError",
    "User",
    "demo_document",
    "load_demo_tenant",
    "load_tenant_file",
    "read_tenant_documents",
    "open_store",
    "validate_tenant",
]
