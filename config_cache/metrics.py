"""Prometheus metrics of the configuration cache, the outbox and the shipper."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

__all__ = ["CacheMetrics"]


class CacheMetrics:
    """The metrics, registered in ``registry`` (the default Prometheus registry
    unless given). Create one per process and pass it to :func:`open_store`,
    :class:`MasterFollower` and :class:`HistoryShipper`."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        r = registry
        self.outbox_depth = Gauge(
            "callengine_outbox_depth", "Final call logs waiting to be shipped", registry=r
        )
        self.outbox_open = Gauge(
            "callengine_outbox_open_calls", "Answered calls with an open outbox record", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "callengine_outbox_oldest_age_seconds",
            "Age of the oldest final call log waiting to be shipped (0 when empty)",
            registry=r,
        )
        self.shipped = Counter(
            "callengine_history_shipped", "Call logs acknowledged by the History DB", registry=r
        )
        self.ship_failures = Counter(
            "callengine_history_ship_failures", "Failed History DB batch writes", registry=r
        )
        self.offline = Gauge(
            "callengine_config_offline",
            "1 while the master Configuration DB is unreachable",
            registry=r,
        )
        self.offline_since = Gauge(
            "callengine_config_offline_since_seconds",
            "Unix time the node went offline (0 when online)",
            registry=r,
        )
        self.tenant_rev = Gauge(
            "callengine_config_tenant_rev", "Cached revision per tenant", ["tenant"], registry=r
        )
        self.rejected = Counter(
            "callengine_config_rejected",
            "Tenant documents rejected by validation",
            ["tenant"],
            registry=r,
        )

    @classmethod
    def private(cls) -> CacheMetrics:
        """Metrics in a fresh registry nobody scrapes (the default for
        components created without metrics, e.g. in tests and the CLI)."""
        return cls(CollectorRegistry())
