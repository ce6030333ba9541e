"""The immutable in-memory view of all tenants that the call path reads.

A :class:`Snapshot` is built once per change and never mutated; the cache swaps
in a new one. A call takes ``cache.snapshot`` (or the :class:`RouteMatch`) when
it starts and keeps using that object, so a revision applied mid-call never
changes the call's view. Lookups are one or two dict probes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .schema import Route, TenantConfig

__all__ = ["RouteMatch", "Snapshot"]


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The answer to "who owns this dialled number and where does it go"."""

    tenant: TenantConfig
    route: Route
    #: The number as configured (may differ from the dialled one by a leading ``+``).
    did: str
    #: True when the number is not configured and the default route was used.
    default: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All tenants at one moment. Build with :meth:`build`."""

    tenants: Mapping[str, TenantConfig]
    _numbers: Mapping[str, RouteMatch]
    #: Tenant whose ``default_route`` takes numbers no tenant owns (or None).
    default_tenant: str | None
    _default: RouteMatch | None
    #: Increases by one on every swap; useful in logs and tests.
    version: int = 0

    @classmethod
    def build(
        cls,
        tenants: Iterable[TenantConfig],
        *,
        default_tenant: str | None = None,
        version: int = 0,
    ) -> Snapshot:
        """Index ``tenants`` by id and by number.

        When two tenants claim the same number the one listed first keeps it;
        the cache refuses such a change before it gets here.
        """
        by_id: dict[str, TenantConfig] = {}
        numbers: dict[str, RouteMatch] = {}
        for tenant in tenants:
            by_id[tenant.id] = tenant
            for did, entry in tenant.numbers.items():
                numbers.setdefault(did, RouteMatch(tenant, entry.route, did))
        default: RouteMatch | None = None
        if default_tenant is not None:
            owner = by_id.get(default_tenant)
            if owner is not None and owner.default_route is not None:
                default = RouteMatch(owner, owner.default_route, "", default=True)
        return cls(
            MappingProxyType(by_id), MappingProxyType(numbers), default_tenant, default, version
        )

    def lookup(self, number: str) -> RouteMatch | None:
        """Route for a dialled number: exact match, then with/without a leading
        ``+``, then the default tenant's default route, else None."""
        match = self._numbers.get(number)
        if match is not None:
            return match
        if number.startswith("+"):
            match = self._numbers.get(number[1:])
        else:
            match = self._numbers.get("+" + number)
        if match is not None:
            return match
        if self._default is not None:
            return RouteMatch(self._default.tenant, self._default.route, number, default=True)
        return None

    def tenant(self, tenant_id: str) -> TenantConfig | None:
        """The tenant's configuration, or None."""
        return self.tenants.get(tenant_id)

    def number_owner(self, number: str) -> str | None:
        """Id of the tenant that owns ``number`` exactly as written, or None."""
        match = self._numbers.get(number)
        return None if match is None else match.tenant.id
