"""Node-level settings of the configuration cache (the ``config_cache:``
section of the engine's config file). Every field has a default that works on
one machine with nothing else running."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

__all__ = ["CacheSettings"]


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """Settings of the local store, the master follower and the shipper."""

    #: LevelDB directory (config cache, registrar bindings, call-log outbox).
    data_dir: str = "./data"
    #: With an empty cache and no reachable master: ``demo`` serves the
    #: embedded demo tenant, ``refuse`` stops start-up with a ConfigError.
    on_empty: str = "demo"
    #: Tenant whose ``default_route`` takes numbers no tenant owns.
    default_tenant: str | None = None
    #: MongoDB URL of the master Configuration DB; None = local files only.
    master_url: str | None = None
    #: Database of the master holding the ``tenants`` collection.
    master_database: str = "callengine"
    #: Seconds between polls of the master (and retries while offline).
    poll_interval: float = 5.0
    #: Wake up early on change-stream events when the master offers them.
    use_change_stream: bool = True
    #: Remove cached tenants that disappeared from the master.
    prune_missing: bool = False
    #: MongoDB URL of the History DB (mongos for a sharded cluster); None = keep logs local.
    history_url: str | None = None
    #: Database of the History DB holding the ``calls`` collection.
    history_database: str = "callengine"
    #: Write concern of call-log writes: ``majority`` or a number of nodes.
    write_concern: str | int = "majority"
    #: Read preference for master reads: primary, primaryPreferred, secondary,
    #: secondaryPreferred or nearest.
    read_preference: str = "primaryPreferred"
    #: Seconds before a MongoDB operation counts as failed (server selection).
    timeout: float = 5.0
    #: Call logs per History DB bulk write.
    batch_size: int = 500
    #: Seconds between looks at the outbox.
    ship_interval: float = 1.0
    #: Longest wait between History DB retries (exponential backoff from 0.5 s).
    backoff_max: float = 30.0
    #: Tenant id -> region, stamped on call logs as ``region`` (zone sharding).
    tenant_regions: Mapping[str, str] = field(default_factory=dict)
    #: Region for tenants missing from ``tenant_regions`` (normally this node's).
    region: str | None = None
    #: How many shipped call logs ``callengine logs`` can still show.
    shipped_keep: int = 1000

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str | None = None) -> CacheSettings:
        """Build from a parsed config section; unknown keys and wrong types
        raise :class:`ConfigError` naming ``source`` and ``config_cache.<key>``."""
        kinds = {
            "data_dir": (str,),
            "on_empty": (str,),
            "default_tenant": (str, type(None)),
            "master_url": (str, type(None)),
            "master_database": (str,),
            "poll_interval": (int, float),
            "use_change_stream": (bool,),
            "prune_missing": (bool,),
            "history_url": (str, type(None)),
            "history_database": (str,),
            "write_concern": (str, int),
            "read_preference": (str,),
            "timeout": (int, float),
            "batch_size": (int,),
            "ship_interval": (int, float),
            "backoff_max": (int, float),
            "tenant_regions": (dict,),
            "region": (str, type(None)),
            "shipped_keep": (int,),
        }
        assert set(kinds) == {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            path = f"config_cache.{key}"
            if key not in kinds:
                raise ConfigError("unknown field", file=source, field=path)
            ok = kinds[key]
            if isinstance(value, bool) and bool not in ok:
                ok = ()
            if not isinstance(value, ok):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in kinds[key])
                raise ConfigError(
                    f"must be {names}, not {type(value).__name__}", file=source, field=path
                )
            values[key] = value
        if values.get("on_empty", "demo") not in ("demo", "refuse"):
            raise ConfigError(
                f"must be 'demo' or 'refuse', not {values['on_empty']!r}",
                file=source,
                field="config_cache.on_empty",
            )
        for key in ("poll_interval", "timeout", "batch_size", "ship_interval", "backoff_max"):
            if key in values and not values[key] > 0:
                raise ConfigError(
                    f"must be > 0, not {values[key]}", file=source, field=f"config_cache.{key}"
                )
        for tenant, region in values.get("tenant_regions", {}).items():
            if not isinstance(tenant, str) or not isinstance(region, str):
                raise ConfigError(
                    "must map tenant ids to region names (strings)",
                    file=source,
                    field=f"config_cache.tenant_regions.{tenant}",
                )
        return cls(**values)
