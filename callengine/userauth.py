"""Users' authentication on a node: REGISTER per tenant, INVITE challenges, the guard.

Theory of operation
-------------------
The node serves several tenants; each has a Digest realm and users with passwords.
:class:`UserAuth` is the node's single place for them (issue 11):

* **REGISTER** (:meth:`UserAuth.on_register`): the To host names the tenant (its realm
  or id). A domain no tenant serves gets 404 "Not Found - domain not served here" (RFC
  3261 §21.4.4: 404 also when the domain is not one the server handles) and nothing is
  created for it: objects are made per *tenant*, never per network value. Otherwise the
  tenant's :class:`~callengine.sip.registrar.Registrar` answers (made on first use).
* **INVITE** (:meth:`UserAuth.check_invite`): a call from a tenant's user (From host =
  the tenant's realm) that needs it is challenged with 407 Proxy-Authenticate (RFC 3261
  §22.3) and goes on only with valid credentials of the From user. The tenant's
  ``invite_auth`` says which calls need it: ``external`` (default) the calls that leave
  the tenant (a number that goes out through a trunk route, a number another tenant
  owns), ``all`` every call, ``off`` none. Calls from trunk gateways and trusted sources
  are never challenged. An authenticated call carries ``variables["auth_user"]``, which
  lets the B2BUA route it out through a trunk although its source is not trusted.
* **One guard** (:class:`~callengine.sip.authguard.AuthGuard`) for both: failures of
  either method count against the same address and user, and the credentials of a
  banned address are not checked for either (it is challenged again).

Registrars are kept per tenant realm and share the node's nonce secret, so a nonce
from a REGISTER challenge is one of ours for INVITE too (same realm, same registry).
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .sip.auth import AuthStatus, DigestServer, UsedNonces, parse_auth_header
from .sip.authguard import AuthGuard, GuardConfig, Verdict
from .sip.message import Request, Response, make_response
from .sip.registrar import BindingStore, Registrar, UserRecord, failure_reason

if TYPE_CHECKING:
    from .call import Call
    from .engine import Handler

__all__ = ["AuthCollector", "UserAuth"]


class UserAuth:
    """Registrars per tenant, INVITE authentication and the brute-force guard.

    ``tenants()`` returns the current tenants (id -> config), ``lookup(number)`` the
    node's number routing (``RouteMatch`` or ``None``), ``plan()`` the trunk plan (or
    ``None`` before it is loaded), ``make_store()`` a binding store for a registrar.
    """

    def __init__(
        self,
        *,
        tenants: Any,
        lookup: Any,
        plan: Any,
        make_store: Any,
        max_contacts: int = 10,
        guard: GuardConfig | None = None,
        secret: bytes | None = None,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
    ) -> None:
        self.algorithms = algorithms
        self._tenants = tenants
        self._lookup = lookup
        self._plan = plan
        self._make_store = make_store
        self.max_contacts = max_contacts
        self.guard = AuthGuard(guard)
        self.registrars: dict[str, Registrar] = {}
        """One per tenant realm (bounded by the configuration, not by the network)."""
        self.refused: dict[str, int] = {}
        """REGISTERs refused before authentication, by reason."""
        self._secret = secret or secrets.token_bytes(32)
        self.used_nonces = UsedNonces()
        """One used-nonce registry (and one bound) for every tenant's realm."""
        self._indexed: Any = None  # the tenants mapping that _index was built from
        self._index: dict[str, Any] = {}

    # -- tenants and registrars ------------------------------------------------------

    def tenant_for_domain(self, domain: str) -> Any:
        """The tenant whose realm or id is ``domain`` (the first in order), or ``None``."""
        tenants = self._tenants()
        if tenants is not self._indexed:  # a new snapshot: index it once
            index: dict[str, Any] = {}
            for t in tenants.values():
                index.setdefault(t.realm, t)
                index.setdefault(t.id, t)
            self._index, self._indexed = index, tenants
        return self._index.get(domain)

    def registrar(self, tenant: Any) -> Registrar:
        """The tenant's registrar (and Digest realm), made on first use."""
        registrar = self.registrars.get(tenant.realm)
        if registrar is None:

            def lookup_user(domain: str, user: str) -> UserRecord | None:
                t = self.tenant_for_domain(domain)
                u = t.users.get(user) if t is not None else None
                return UserRecord(password=u.password, tenant=t.id) if u else None

            store: BindingStore = self._make_store()
            registrar = Registrar(
                lookup_user=lookup_user,
                store=store,
                auth=DigestServer(
                    tenant.realm or "callengine",
                    self._secret,
                    algorithms=self.algorithms,
                    used=self.used_nonces,
                ),
                max_contacts=self.max_contacts,
                guard=self.guard,
            )
            self.registrars[tenant.realm] = registrar
        return registrar

    def on_register(self, request: Request, now: float) -> Response:
        """Answer one REGISTER (``now`` is unused: bindings need wall-clock time)."""
        to = request.to
        tenant = self.tenant_for_domain(to.uri.host) if to is not None else None
        if tenant is None:
            # nothing is made for a domain no tenant serves (see the module docstring)
            if to is None or not to.uri.is_sip:
                status, reason = 400, "Bad Request - To is not a SIP URI"
            else:
                status, reason = 404, "Not Found - domain not served here"
            key = "unknown-domain" if status == 404 else "bad-to"
            self.refused[key] = self.refused.get(key, 0) + 1
            return make_response(request, status, reason, to_tag=secrets.token_hex(6))
        return self.registrar(tenant).handle(request, time.time())

    # -- INVITE ----------------------------------------------------------------------

    def _trusted_peer(self, source_ip: str) -> bool:
        """A call from a trunk gateway or a trusted source is never challenged."""
        plan = self._plan()
        if plan is None:
            return False
        if plan.is_trusted(source_ip):
            return True
        try:
            address = ipaddress.ip_address(source_ip)
        except ValueError:
            return False
        return any(trunk.is_source(address) for trunk in plan.trunks.values())

    def _leaves_tenant(self, number: str, tenant_id: str) -> bool:
        """``number`` goes out through a trunk route or belongs to another tenant."""
        match = self._lookup(number)
        if match is not None and not match.default:
            return bool(match.tenant.id != tenant_id)
        plan = self._plan()
        if plan is None or not plan.trunks:
            return False  # no trunk: nothing leaves (the B2BUA routes nothing out)
        return any(number.startswith(r.prefix) for r in plan.routes)

    def check_invite(self, call: Call) -> Handler | None:
        """``None`` when the call may go on; else the handler that answers it (407 with
        a challenge, or 403 for another user's From). See the module docstring for which calls are checked."""
        invite = call.session.invite
        from_ = invite.from_
        tenant = self.tenant_for_domain(from_.uri.host) if from_ is not None else None
        if from_ is None or tenant is None or tenant.invite_auth == "off":
            return None
        source_ip, port = call.source if call.source else ("", 0)
        if self._trusted_peer(source_ip):
            return None
        if tenant.invite_auth == "external" and not self._leaves_tenant(call.callee, tenant.id):
            return None
        auth = self.registrar(tenant).auth
        assert auth is not None
        guard = self.guard
        now = time.time()
        stale = False
        for value in invite.headers.get_all("proxy-authorization"):
            parsed = parse_auth_header(value)
            if parsed is None or not parsed.is_digest or parsed.params.get("realm") != auth.realm:
                continue  # credentials for someone else (RFC 3261 §22.3)
            username = parsed.params.get("username", "")
            known = f"{username}@{auth.realm}" if username in tenant.users else None
            verdict = guard.check(source_ip, known, now)
            if verdict is Verdict.BANNED:
                break
            if verdict is Verdict.CHALLENGE:
                # the user is in back-off: not verified, but counted against the address
                guard.failure(
                    source_ip,
                    None,
                    now,
                    reason="user-backoff",
                    port=port,
                    transport=invite.transport,
                    method="INVITE",
                    claimed_user=username,
                    realm=auth.realm,
                )
                break

            def password(name: str) -> str | None:
                user = tenant.users.get(name)
                return user.password if user is not None else None

            result = auth.verify(
                "INVITE", value, password, now, request_uri=invite.uri_text, body=invite.body
            )
            reason = failure_reason(result)
            if result.status is AuthStatus.OK:
                if result.username == (from_.uri.user_unescaped or "") and known is not None:
                    guard.success(source_ip, known, now)
                    call.variables["auth_user"] = known
                    call.tenant = tenant.id  # its dial policy applies to trunk calls
                    return None
                reason = "wrong-from"
            stale = result.status is AuthStatus.STALE
            if reason is not None:
                guard.failure(
                    source_ip,
                    known,
                    now,
                    reason=reason,
                    port=port,
                    transport=invite.transport,
                    method="INVITE",
                    claimed_user=result.username or "",
                    realm=auth.realm,
                )
            if reason == "wrong-from":
                return _refuse(403, "Forbidden - From is not the authenticated user")
            break
        challenges = [("Proxy-Authenticate", c) for c in auth.challenge(now, stale=stale)]
        return _refuse(407, None, challenges)


def _refuse(
    status: int, reason: str | None, headers: list[tuple[str, str]] | None = None
) -> Handler:
    async def refuse(call: Call) -> None:
        call.send_reject(status, reason, headers=headers or ())

    return refuse


class AuthCollector(Collector):
    """Prometheus export of authentication failures and the guard's actions."""

    def __init__(self, auth: UserAuth) -> None:
        self.auth = auth

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        guard = self.auth.guard
        failures = CounterMetricFamily(
            "callengine_auth_failures", "Failed Digest checks by reason", labels=["reason"]
        )
        actions = CounterMetricFamily(
            "callengine_auth_guard_actions",
            "Brute-force guard: bans, requests of banned sources challenged unchecked "
            "(banned), back-offs, requests for a user in back-off challenged unchecked "
            "(challenge)",
            labels=["action"],
        )
        for key, value in sorted(guard.counters.items()):
            if key.startswith("failure:"):
                failures.add_metric([key[8:]], value)
            else:
                actions.add_metric([key], value)
        refused = CounterMetricFamily(
            "callengine_register_refused",
            "REGISTERs refused: domain not served (before authentication), too many contacts",
            labels=["reason"],
        )
        counts = dict(self.auth.refused)
        for registrar in self.auth.registrars.values():
            for key, value in registrar.counters.items():
                counts[key] = counts.get(key, 0) + value
        for key, value in sorted(counts.items()):
            refused.add_metric([key], value)
        tracked = GaugeMetricFamily(
            "callengine_auth_tracked",
            "Addresses and users the guard tracks, used nonces remembered",
            labels=["kind"],
        )
        sources, users = guard.tracked
        tracked.add_metric(["source"], sources)
        tracked.add_metric(["user"], users)
        tracked.add_metric(["nonce"], len(self.auth.used_nonces))
        yield failures
        yield actions
        yield refused
        yield tracked
