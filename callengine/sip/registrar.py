"""A sans-IO registrar (RFC 3261 §10.3): REGISTER in, response out, bindings in a store.

Theory of operation
-------------------
``Registrar.handle(request, now)`` runs the steps of RFC 3261 §10.3 and returns the
response; it never raises on network input. ``now`` is wall-clock time (seconds since
the epoch): binding expiry times are stored, possibly in a shared database, and the
Digest nonces are checked against it.

1. Syntax first, so a malformed request is answered 400 without a challenge: the To
   URI must be sip/sips (RFC 4475 §3.3.4), Contact must parse (RFC 4475 §3.1.2.13),
   ``*`` must stand alone with ``Expires: 0`` (§10.3 step 6), q must be a qvalue.
2. Authentication (§10.3 step 3) when a :class:`DigestServer` is given. Credentials are
   the first ``Authorization`` value with the Digest scheme and our realm; any other
   (an unknown scheme, RFC 4475 §3.3.7) is ignored and the request is challenged with
   401. A stale nonce gets ``stale=true``. Wrong credentials get a fresh 401 (not 403),
   so a phone whose password was just changed can recover.
3. Authorization (§10.3 step 4): the authenticated user must be the AOR's user, else 403.
4. The AOR (§10.3 step 5) is the To URI's unescaped user ``@`` lower-cased host; an AOR
   that ``lookup_user`` does not know is 404. With authentication on, step 2 comes
   first, as the RFC orders it: an unauthenticated REGISTER for an unknown user gets 401
   like any other, so REGISTER cannot be used to enumerate users.
5. Expiry per contact (§10.2.1.1, §10.3 step 7): the ``expires`` contact parameter,
   else the Expires header, else ``default_expires``; a malformed value counts as
   ``default_expires`` (RFC 3261 §20.19 says to treat it as 3600); an overlarge one
   (RFC 4475 §3.1.2.4) and anything above ``max_expires`` is cut to ``max_expires``; a
   nonzero value below ``min_expires`` fails the whole request with 423 and Min-Expires.
6. Call-ID/CSeq ordering (§10.3 step 7): a binding last written with the same Call-ID
   and a CSeq not lower than the request's is out of order: the whole request is
   rejected with 500 and no binding changes. (Retransmissions never get here; the
   transaction layer absorbs them.)
7. The bindings are written back in one ``store.put`` and the 200 OK lists every current
   binding with its remaining ``expires`` (§10.3 step 8) and a Date header.

Limits (issue 11). An AOR holds at most ``max_contacts`` bindings: one INVITE to a user
forks to every binding, so an unbounded list is an amplifier. A REGISTER that would leave
more is refused whole with **403** "Forbidden - too many registered contacts" (no binding
changes). Kamailio's ``max_contacts`` answers 503 instead; we do not, because RFC 3261
§21.5.4 tells a client to retry a 503 elsewhere or later, which turns a policy limit into
a retry loop across a cluster, while §21.4.4's 403 says the request must not be repeated
as it is. A phone that re-registers its own contact, or removes one, is never refused.

With an :class:`~callengine.sip.authguard.AuthGuard` every failed check (wrong password,
unknown user, replayed nonce, another user's AOR) is recorded and logged; the credentials
of a banned source, or for a user in back-off, are not verified: the request is
challenged again as if they were wrong (see :mod:`callengine.sip.authguard`).

Bindings are matched by RFC 5626 instance (``+sip.instance`` plus ``reg-id``) when the
contact has one, so a phone that moved keeps one binding; otherwise by contact URI
following RFC 3261 §19.1.4, simplified: every URI parameter must match (the RFC ignores
parameters that only one side has). Expired bindings are dropped whenever an AOR is read.
Contact parameters and URI parameters stay apart (RFC 4475 §3.3.12, §3.3.13): a binding
keeps its URI exactly as received, escaped headers included (RFC 4475 §3.3.14), and its
contact parameters separately. Only sip/sips contacts are accepted: the engine cannot
ring anything else.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Protocol

from .auth import REPLAYED, WRONG_RESPONSE, AuthResult, AuthStatus, DigestServer, parse_auth_header
from .authguard import AuthGuard, Verdict
from .errors import RemoteProtocolError
from .headers import NameAddr, format_params
from .message import Request, Response, make_response
from .uri import URI, parse_uri, unescape

__all__ = [
    "Binding",
    "BindingStore",
    "MemoryBindingStore",
    "Registrar",
    "UserRecord",
    "failure_reason",
]

# RFC 3261 §25.1: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE_RE = re.compile(r"(0(\.[0-9]{0,3})?|1(\.0{0,3})?)\Z")
_MAX_DIGITS = 12  # a delta-seconds longer than this is "overlarge": clamp, never int() it


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user the registrar accepts: the Digest password and the owning tenant."""

    password: str
    tenant: str


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered contact of an AOR (RFC 3261 §10.3).

    ``contact`` is the Contact URI exactly as received (without ``<>``, URI parameters and
    escaped headers kept); ``params`` are the other contact parameters (not ``expires``
    nor ``q``). ``source``/``transport`` say where the REGISTER came from: behind NAT,
    requests for this binding are sent there rather than to the contact's host.
    """

    contact: str
    expires_at: float
    call_id: str
    cseq: int
    q: str | None = None
    source: tuple[str, int] | None = None
    transport: str = "UDP"
    instance_id: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def q_value(self) -> float:
        """q as a number; 1.0 when absent."""
        return float(self.q) if self.q is not None else 1.0

    @property
    def reg_id(self) -> str | None:
        return self.params.get("reg-id")

    def remaining(self, now: float) -> int:
        """Whole seconds left, rounded up (the ``expires`` value for a 200 OK)."""
        return max(0, math.ceil(self.expires_at - now - 1e-6))

    def contact_header(self, now: float) -> str:
        """This binding as a Contact header value with its remaining ``expires``."""
        q = f";q={self.q}" if self.q is not None else ""
        return f"<{self.contact}>{format_params(self.params)}{q};expires={self.remaining(now)}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for persistent stores)."""
        return {
            "contact": self.contact,
            "expires_at": self.expires_at,
            "call_id": self.call_id,
            "cseq": self.cseq,
            "q": self.q,
            "source": list(self.source) if self.source is not None else None,
            "transport": self.transport,
            "instance_id": self.instance_id,
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Binding:
        """The inverse of :meth:`to_dict`."""
        source = data.get("source")
        return cls(
            contact=data["contact"],
            expires_at=float(data["expires_at"]),
            call_id=data["call_id"],
            cseq=int(data["cseq"]),
            q=data.get("q"),
            source=(str(source[0]), int(source[1])) if source else None,
            transport=data.get("transport", "UDP"),
            instance_id=data.get("instance_id"),
            params=dict(data.get("params") or {}),
        )


class BindingStore(Protocol):
    """Where bindings live, keyed by AOR (``user@host``). ``put`` with an empty list
    deletes the AOR. Implementations: :class:`MemoryBindingStore`, and the config
    cache's LevelDB store (bindings as JSON through :meth:`Binding.to_dict`)."""

    def get(self, aor: str) -> list[Binding]: ...

    def put(self, aor: str, bindings: list[Binding]) -> None: ...


class MemoryBindingStore:
    """A :class:`BindingStore` in a dict, for tests and single-process use."""

    def __init__(self) -> None:
        self._data: dict[str, list[Binding]] = {}

    def get(self, aor: str) -> list[Binding]:
        return list(self._data.get(aor, ()))

    def put(self, aor: str, bindings: list[Binding]) -> None:
        if bindings:
            self._data[aor] = list(bindings)
        else:
            self._data.pop(aor, None)

    def aors(self) -> list[str]:
        """Every AOR with stored bindings (expired ones included until next access)."""
        return list(self._data)


def _uri_key(uri: URI) -> tuple[object, ...]:
    """RFC 3261 §19.1.4 comparison, simplified (all parameters must match)."""
    params = frozenset(
        (unescape(k), None if v is None else unescape(v).lower()) for k, v in uri.params.items()
    )
    headers = frozenset(unescape(h) for h in uri.headers.split("&")) if uri.headers else frozenset()
    return (
        "uri",
        uri.scheme,
        uri.user_unescaped,
        uri.password,
        uri.host,
        uri.port,
        params,
        headers,
    )


def _binding_key(contact: str, instance_id: str | None, reg_id: str | None) -> tuple[object, ...]:
    if instance_id is not None:
        return ("instance", instance_id, reg_id)
    try:
        return _uri_key(parse_uri(contact, where="Contact"))
    except RemoteProtocolError:
        return ("raw", contact)  # a stored value we can no longer parse: match it as text


def _delta_seconds(text: str | None) -> int | None:
    """RFC 3261 §25.1 delta-seconds; ``None`` when malformed; huge values -> a big int."""
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        return None
    if len(text) > _MAX_DIGITS:
        return 10**_MAX_DIGITS
    return int(text)


@dataclass(slots=True)
class _Update:
    key: tuple[object, ...]
    expires: int
    name_addr: NameAddr


class Registrar:
    """Handles REGISTER requests (RFC 3261 §10.3). See the module docstring.

    ``lookup_user(domain, user)`` returns the :class:`UserRecord` or ``None``;
    ``auth=None`` turns authentication off. ``make_tag`` (for tests) makes To tags.
    """

    def __init__(
        self,
        *,
        lookup_user: Callable[[str, str], UserRecord | None],
        store: BindingStore,
        default_expires: int = 3600,
        min_expires: int = 60,
        max_expires: int = 7200,
        auth: DigestServer | None,
        make_tag: Callable[[], str] | None = None,
        max_contacts: int = 10,
        guard: AuthGuard | None = None,
    ) -> None:
        if not 0 < min_expires <= default_expires <= max_expires:
            raise ValueError("need 0 < min_expires <= default_expires <= max_expires")
        if max_contacts < 0:
            raise ValueError("max_contacts must not be negative (0: no limit)")
        self.max_contacts = max_contacts
        self.guard = guard
        self.counters: dict[str, int] = {}
        """Refusals by reason (``too-many-contacts``), for metrics."""
        self.lookup_user = lookup_user
        self.store = store
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.auth = auth
        self._make_tag = make_tag or (lambda: secrets.token_hex(6))

    # -- reading ----------------------------------------------------------------

    def bindings_for(self, aor: str, now: float) -> list[Binding]:
        """The live bindings of ``aor`` (``user@host``), highest q first."""
        return sorted(self._live(aor, now), key=lambda b: -b.q_value)

    def _live(self, aor: str, now: float) -> list[Binding]:
        stored = self.store.get(aor)
        live = [b for b in stored if b.expires_at > now]
        if len(live) != len(stored):
            self.store.put(aor, live)  # lazy purge
        return live

    # -- REGISTER -----------------------------------------------------------------

    def _reply(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        return make_response(request, status, reason, to_tag=self._make_tag(), headers=headers)

    def handle(self, request: Request, now: float) -> Response:
        """Process one REGISTER and return the final response. Never raises on bad input."""
        try:
            return self._handle(request, now)
        except RemoteProtocolError as exc:
            # a lazy accessor (Contact ...) found a syntax error
            return self._reply(request, exc.status, exc.reason)

    def _handle(self, request: Request, now: float) -> Response:
        if request.method != "REGISTER":
            return self._reply(request, 405, headers=[("Allow", "REGISTER")])
        to = request.to
        if to is None or not to.uri.is_sip:
            # RFC 4475 §3.3.4: the AOR must be a SIP or SIPS URI.
            return self._reply(request, 400, "Bad Request - To is not a SIP URI")
        user = to.uri.user_unescaped or ""
        domain = to.uri.host
        aor = f"{user}@{domain}"

        # §10.3 step 6: "*" only alone and with Expires: 0.
        star = request.contact_is_star
        header_expires = request.headers.get("expires")
        if star:
            if _delta_seconds(header_expires) != 0:
                return self._reply(request, 400, "Bad Request - Contact * needs Expires: 0")
            updates: list[_Update] = []
        else:
            if "*" in request.headers.get_list("contact"):
                return self._reply(request, 400, "Bad Request - Contact * with other contacts")
            contacts = request.contacts  # may raise RemoteProtocolError -> 400
            default = _delta_seconds(header_expires)
            if default is None:
                default = self.default_expires
            updates = []
            for c in contacts:
                if not c.uri.is_sip:
                    return self._reply(request, 400, "Bad Request - Contact is not a SIP URI")
                q = c.params.get("q")
                if "q" in c.params and (q is None or not _QVALUE_RE.match(q)):
                    return self._reply(request, 400, "Bad Request - bad q in Contact")
                if "expires" in c.params:
                    expires = _delta_seconds(c.params["expires"])
                    if expires is None:
                        expires = self.default_expires
                else:
                    expires = default
                instance = c.params.get("+sip.instance")
                key = _binding_key(str(c.uri), instance, c.params.get("reg-id"))
                updates.append(_Update(key, expires, c))

        if self.auth is not None:
            denied = self._authenticate(request, user, domain, now)
            if denied is not None:
                return denied
        elif self.lookup_user(domain, user) is None:
            return self._reply(request, 404)

        nonzero = [u.expires for u in updates if u.expires]
        if nonzero and min(nonzero) < self.min_expires:
            return self._reply(request, 423, headers=[("Min-Expires", str(self.min_expires))])

        live = self._live(aor, now)
        if star or updates:
            current = {_binding_key(b.contact, b.instance_id, b.reg_id): b for b in live}
            before = dict(current)
            targets = list(before) if star else [u.key for u in updates]
            for key in targets:
                old = before.get(key)
                if old is not None and old.call_id == request.call_id and old.cseq >= request.cseq:
                    return self._reply(request, 500, "Server Internal Error - CSeq out of order")
            if star:
                current.clear()
            adding = 0
            for u in updates:
                if u.expires == 0:
                    current.pop(u.key, None)
                    continue
                adding += u.key not in current
                na = u.name_addr
                params = {k: v for k, v in na.params.items() if k not in ("expires", "q")}
                current[u.key] = Binding(
                    contact=str(na.uri),
                    expires_at=now + min(u.expires, self.max_expires),
                    call_id=request.call_id,
                    cseq=request.cseq,
                    q=na.params.get("q"),
                    source=request.source,
                    transport=request.transport,
                    instance_id=na.params.get("+sip.instance"),
                    params=params,
                )
            if self.max_contacts and adding and len(current) > self.max_contacts:
                self.counters["too-many-contacts"] = self.counters.get("too-many-contacts", 0) + 1
                return self._reply(
                    request,
                    403,
                    f"Forbidden - too many registered contacts (max {self.max_contacts})",
                )
            live = list(current.values())
            self.store.put(aor, live)

        headers = [("Contact", b.contact_header(now)) for b in live]
        headers.append(("Date", formatdate(now, usegmt=True)))
        return self._reply(request, 200, headers=headers)

    def _authenticate(
        self, request: Request, user: str, domain: str, now: float
    ) -> Response | None:
        """§10.3 steps 3-4: ``None`` when the request may go on, else the 401/403."""
        auth = self.auth
        assert auth is not None
        credentials = None
        for value in request.headers.get_all("authorization"):
            parsed = parse_auth_header(value)
            if parsed is not None and parsed.is_digest and parsed.params.get("realm") == auth.realm:
                credentials = value
                break
        stale = False
        guard = self.guard
        address = request.source[0] if request.source is not None else ""
        if credentials is not None:

            def password(username: str) -> str | None:
                record = self.lookup_user(domain, username)
                return record.password if record is not None else None

            claimed = parse_auth_header(credentials)
            username = claimed.params.get("username", "") if claimed is not None else ""
            known = f"{username}@{auth.realm}" if password(username) is not None else None
            verdict = guard.check(address, known, now) if guard is not None else Verdict.ALLOW
            if verdict is not Verdict.ALLOW:
                if verdict is Verdict.CHALLENGE:
                    # the user is in back-off: not verified, but counted against the address
                    self._failed(request, username, "user-backoff", None, now)
                return self._challenge(request, now, stale=False)
            result = auth.verify(
                request.method,
                credentials,
                password,
                now,
                request_uri=request.uri_text,
                body=request.body,
            )
            if result.status is AuthStatus.OK:
                if result.username != user:
                    self._failed(request, username, "wrong-aor", known, now)
                    return self._reply(request, 403, "Forbidden - not your address-of-record")
                if guard is not None and known is not None:
                    guard.success(address, known, now)
                return None
            stale = result.status is AuthStatus.STALE
            reason = failure_reason(result)
            if reason is not None:
                self._failed(request, username, reason, known, now)
        return self._challenge(request, now, stale=stale)

    def _challenge(self, request: Request, now: float, *, stale: bool) -> Response:
        assert self.auth is not None
        challenges = self.auth.challenge(now, stale=stale)
        return self._reply(request, 401, headers=[("WWW-Authenticate", c) for c in challenges])

    def _failed(
        self, request: Request, username: str, reason: str, known: str | None, now: float
    ) -> None:
        if self.guard is None:
            return
        address, port = request.source if request.source is not None else ("", 0)
        self.guard.failure(
            address,
            known,
            now,
            reason=reason,
            port=port,
            transport=request.transport,
            method=request.method,
            claimed_user=username,
            realm=self.auth.realm if self.auth is not None else "",
        )


def failure_reason(result: AuthResult) -> str | None:
    """The :class:`AuthGuard` reason for a failed check; ``None`` when it is no failure
    (OK, or a right digest over an expired nonce: the phone retries with a new one)."""
    if result.status is AuthStatus.OK:
        return None
    if result.status is AuthStatus.UNKNOWN_USER:
        return "unknown-user"
    if result.status is AuthStatus.STALE:
        return "replay" if result.reason == REPLAYED else None
    return "wrong-password" if result.reason == WRONG_RESPONSE else "bad-credentials"
