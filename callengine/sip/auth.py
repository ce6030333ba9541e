"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760), sans-IO.

Theory of operation
-------------------
:func:`parse_auth_header` reads one ``WWW-Authenticate``, ``Proxy-Authenticate``,
``Authorization`` or ``Proxy-Authorization`` value. It never raises: garbage gives
``None``, and a scheme other than Digest comes back as the scheme alone, so that a
server can ignore credentials it does not understand (RFC 4475 §3.3.7).

:class:`DigestServer` issues challenges and checks credentials. Its nonces are
stateless: ``base64(timestamp || salt || HMAC-SHA256(secret, realm || timestamp || salt))``,
so any worker holding the secret verifies any other worker's nonce and nothing is stored
per challenge. A stateless nonce alone could be replayed until it expires (``nonce_ttl``):
a captured ``Authorization`` would register the attacker's Contact, or wipe a victim's
bindings with ``Contact: *`` (issue 11). So nonces are also *used up*, in a bounded
registry of the nonces seen used (:class:`UsedNonces`; ``track_nc=True``, the default;
one registry may serve several servers, e.g. a node's realms, under one bound):

* with qop, the RFC 7616 §3.4 nonce count must increase per nonce, so the same
  (nonce, nc, cnonce) is accepted once, and a phone may still reuse a nonce with nc+1;
* without qop (RFC 2069) there is no count: such a nonce is single-use;
* a wrong response burns the nonce: the next guess needs a fresh challenge (a round trip
  and a new nonce each, instead of thousands of guesses on one nonce).

A refused reuse is STALE with reason :data:`REPLAYED` (the digest itself may be right);
the peer gets a fresh challenge with ``stale=true``. The registry holds at most
``max_nonces`` entries (oldest first out, expired ones dropped as they age); a nonce
issued no later than an entry pushed out early is refused as stale too, so eviction never
re-opens a replay. It lives in this object's memory; the workers of a multi-worker node
keep one registry each and hand every use to the others (:attr:`UsedNonces.on_use`,
:meth:`UsedNonces.apply`, wired by ``callengine.cluster``), so a nonce used on one worker
is used up on all; a worker that starts in a running node refuses the nonces issued
before it (:meth:`UsedNonces.refuse_issued_before`). ``now`` is wall-clock time (seconds
since the epoch): workers must agree on it for their nonces to be mutually valid.

:class:`DigestClient` answers a challenge: qop=auth (or auth-int) with a fresh cnonce and
an nc that counts per nonce, or the RFC 2069 form when the challenge offers no qop.

Algorithms: MD5, SHA-256 and SHA-512-256, each also in its ``-sess`` form (RFC 7616
§3.4.2). Not implemented: ``userhash`` and ``username*`` (RFC 7616 §3.4.4), and
``Authentication-Info``/``rspauth``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ._abnf import TOKEN_CHARS
from .errors import RemoteProtocolError
from .uri import parse_uri

__all__ = [
    "REPLAYED",
    "WRONG_RESPONSE",
    "AuthHeader",
    "AuthResult",
    "AuthStatus",
    "ChallengeError",
    "DigestClient",
    "DigestServer",
    "UsedNonces",
    "digest_response",
    "parse_auth_header",
]

# RFC 7616 §6.1 (and RFC 8760 §2.1 for SIP): algorithm name -> hashlib name.
_HASHES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}
MAX_HEADER_LENGTH = 8192  # longer credential or challenge values are refused as garbage
_NONCE_SKEW = 30.0  # seconds a nonce's timestamp may lie in the future (workers' clocks)
_WS = " \t\r\n"
_BURNT = 1 << 40  # an nc no client reaches: the nonce is used up
REPLAYED = "nonce reused"
"""The reason of a STALE result for a nonce (or nonce count) already used."""
WRONG_RESPONSE = "wrong response"
"""The reason of a BAD result for a wrong digest (a wrong password)."""


@dataclass(frozen=True, slots=True)
class AuthHeader:
    """One parsed challenge or credentials value.

    ``scheme`` is ``"Digest"`` for Digest in any letter case, otherwise as received (with
    ``params`` empty: other schemes are not parsed). ``params`` keys are lower-case and
    values have their quotes and quoted-pairs removed.
    """

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def is_digest(self) -> bool:
        return self.scheme == "Digest"


def _skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WS:
        i += 1
    return i


def parse_auth_header(value: str) -> AuthHeader | None:
    """Parse ``Digest k=v, k="v"`` (RFC 7616 §3.3/§3.4, RFC 3261 §25.1 challenge/credentials).

    Quoted strings may hold commas and quoted-pairs; empty list elements are skipped
    (RFC 7230 §7). Returns ``None`` for anything malformed, including a duplicated
    parameter, and never raises.
    """
    if not isinstance(value, str) or len(value) > MAX_HEADER_LENGTH:
        return None
    s = value.strip(_WS)
    n = len(s)
    j = 0
    while j < n and s[j] in TOKEN_CHARS:
        j += 1
    if j == 0:
        return None
    scheme = s[:j]
    if scheme.lower() != "digest":
        return AuthHeader(scheme)
    if j < n and s[j] not in _WS:
        return None
    params: dict[str, str] = {}
    i = j
    while True:
        i = _skip_ws(s, i)
        if i >= n:
            break
        if s[i] == ",":
            i += 1
            continue
        j = i
        while j < n and s[j] in TOKEN_CHARS:
            j += 1
        if j == i:
            return None
        name = s[i:j].lower()
        i = _skip_ws(s, j)
        if i >= n or s[i] != "=":
            return None
        i = _skip_ws(s, i + 1)
        if i < n and s[i] == '"':
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    return None
                ch = s[i]
                if ch == "\\":
                    if i + 1 >= n:
                        return None
                    chars.append(s[i + 1])
                    i += 2
                    continue
                i += 1
                if ch == '"':
                    break
                chars.append(ch)
            text = "".join(chars)
        else:
            # token, leniently: some servers send base64 nonces unquoted.
            j = i
            while j < n and s[j] not in ',"' and s[j] not in _WS:
                j += 1
            if j == i:
                return None
            text = s[i:j]
            i = j
        if name in params:
            return None
        params[name] = text
        i = _skip_ws(s, i)
        if i < n and s[i] != ",":
            return None
    return AuthHeader("Digest", params)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_algorithm(algorithm: str) -> tuple[str, bool] | None:
    """``"SHA-256-sess"`` -> ``("SHA-256", True)``; ``None`` when unsupported."""
    name = algorithm.upper()
    sess = name.endswith("-SESS")
    if sess:
        name = name[:-5]
    if name not in _HASHES or _HASHES[name] not in hashlib.algorithms_available:
        return None
    return name, sess


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
    body: bytes = b"",
) -> str:
    """The ``response`` value (RFC 7616 §3.4.1-§3.4.3; RFC 2069 form when ``qop`` is None).

    Raises :class:`ValueError` for an unsupported algorithm or qop.
    """
    parsed = _split_algorithm(algorithm)
    if parsed is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    hash_name, sess = parsed
    hname = _HASHES[hash_name]

    def h(data: str | bytes) -> str:
        # surrogateescape: header text was decoded that way from arbitrary octets
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        return hashlib.new(hname, raw, usedforsecurity=False).hexdigest()

    ha1 = h(f"{username}:{realm}:{password}")
    if sess:
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    if qop == "auth-int":
        ha2 = h(f"{method}:{uri}:{h(body)}")
    elif qop in (None, "auth"):
        ha2 = h(f"{method}:{uri}")
    else:
        raise ValueError(f"unsupported qop {qop!r}")
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


class AuthStatus(enum.Enum):
    """Outcome of :meth:`DigestServer.verify`."""

    OK = "ok"
    #: The digest is right for its nonce but the nonce expired, was not ours, or its nc
    #: did not increase: re-challenge with ``stale=true`` (RFC 7616 §3.3).
    STALE = "stale"
    #: Malformed, wrong realm or algorithm, or a wrong response (wrong password).
    BAD = "bad"
    #: ``lookup(username)`` returned ``None``.
    UNKNOWN_USER = "unknown-user"


@dataclass(frozen=True, slots=True)
class AuthResult:
    """What :meth:`DigestServer.verify` found. ``reason`` is for logs, not for the peer."""

    status: AuthStatus
    username: str | None = None
    reason: str = ""
    algorithm: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is AuthStatus.OK


def _same_uri(a: str, b: str) -> bool:
    """RFC 7616 §3.4.6: the digest-uri names the Request-URI. Text equality, else the
    parts that route (scheme, user, host, port), so harmless re-spellings pass."""
    if a == b:
        return True
    try:
        ua = parse_uri(a, where="digest-uri")
        ub = parse_uri(b, where="digest-uri")
    except RemoteProtocolError:
        return False
    return (ua.scheme, ua.user_unescaped, ua.host, ua.port, ua.opaque) == (
        ub.scheme,
        ub.user_unescaped,
        ub.host,
        ub.port,
        ub.opaque,
    )


class DigestServer:
    """Digest challenges and verification for one realm (RFC 3261 §22.1-§22.4).

    ``secret`` keys the nonce HMAC; share it between the workers that may see the retry
    of a challenged request. ``algorithms`` is listed in preference order: one challenge
    per algorithm, SHA-256 first as RFC 8760 §2.4 recommends. Responses without qop
    (RFC 2069) are accepted for MD5 only, for old phones (``allow_rfc2069``).
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        algorithms: Iterable[str] = ("SHA-256", "MD5"),
        nonce_ttl: float = 300,
        allow_rfc2069: bool = True,
        track_nc: bool = True,
        max_nonces: int = 50_000,
        used: UsedNonces | None = None,
    ) -> None:
        algs = tuple(algorithms)
        for alg in algs:
            if _split_algorithm(alg) is None:
                raise ValueError(f"unsupported digest algorithm {alg!r}")
        if not algs:
            raise ValueError("at least one algorithm is needed")
        if not secret:
            raise ValueError("an empty secret makes nonces forgeable")
        self.realm = realm
        self.algorithms = algs
        self.nonce_ttl = nonce_ttl
        self.allow_rfc2069 = allow_rfc2069
        self.track_nc = track_nc
        self._secret = secret
        self._accepted = {a.upper() for a in algs}
        if used is not None and used.ttl < nonce_ttl:
            raise ValueError("the used-nonce registry must keep nonces for nonce_ttl")
        self.used = used if used is not None else UsedNonces(max_nonces, nonce_ttl)
        """The used-nonce registry (``track_nc``); ``used`` shares one between servers."""

    # -- nonces -------------------------------------------------------------------

    def _mac(self, stamp_salt: bytes) -> bytes:
        return hmac.new(self._secret, self.realm.encode() + b"\0" + stamp_salt, "sha256").digest()

    def make_nonce(self, now: float) -> str:
        """A fresh nonce carrying ``now`` (milliseconds) and 8 random octets, signed."""
        stamp_salt = struct.pack(">q", int(now * 1000)) + secrets.token_bytes(8)
        return base64.b64encode(stamp_salt + self._mac(stamp_salt)).decode("ascii")

    def nonce_issued_at(self, nonce: str) -> float | None:
        """When a nonce of ours was issued, or ``None`` if it is not one of ours."""
        try:
            raw = base64.b64decode(nonce.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return None
        if len(raw) != 48:
            return None
        if not hmac.compare_digest(raw[16:], self._mac(raw[:16])):
            return None
        return struct.unpack(">q", raw[:8])[0] / 1000.0

    def _nonce_fresh(self, nonce: str, now: float) -> bool:
        issued = self.nonce_issued_at(nonce)
        return issued is not None and issued - _NONCE_SKEW <= now < issued + self.nonce_ttl

    # -- challenge and verify -------------------------------------------------------

    def challenge(self, now: float, stale: bool = False) -> list[str]:
        """``WWW-Authenticate`` (or ``Proxy-Authenticate``) values, one per algorithm."""
        nonce = self.make_nonce(now)
        tail = ", stale=true" if stale else ""
        return [
            f"Digest realm={_quoted(self.realm)}, nonce={_quoted(nonce)}, "
            f'algorithm={alg}, qop="auth"{tail}'
            for alg in self.algorithms
        ]

    def verify(
        self,
        request_method: str,
        authorization_value: str,
        lookup: Callable[[str], str | None],
        now: float,
        *,
        request_uri: str | None = None,
        body: bytes = b"",
    ) -> AuthResult:
        """Check one ``Authorization``/``Proxy-Authorization`` value.

        ``lookup(username)`` gives the password or ``None``. When ``request_uri`` is given
        the credentials' ``uri`` must name it (RFC 7616 §3.4.6); ``body`` is only used by
        qop=auth-int. The response is compared with :func:`hmac.compare_digest`. A right
        digest over an expired or foreign nonce is STALE, a wrong one BAD (RFC 7616 §3.3).
        With ``track_nc`` a used-up nonce is STALE with reason :data:`REPLAYED` before the
        digest is even computed, and a wrong digest uses its nonce up.
        """
        parsed = parse_auth_header(authorization_value)
        if parsed is None or not parsed.is_digest:
            return AuthResult(AuthStatus.BAD, reason="not Digest credentials")
        p = parsed.params
        username = p.get("username")
        missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in p]
        if username is None or missing:
            return AuthResult(AuthStatus.BAD, username, "missing " + ", ".join(missing))
        if p["realm"] != self.realm:
            return AuthResult(AuthStatus.BAD, username, "wrong realm")
        algorithm = p.get("algorithm", "MD5")
        if algorithm.upper() not in self._accepted:
            return AuthResult(AuthStatus.BAD, username, f"algorithm {algorithm} not offered")
        if request_uri is not None and not _same_uri(p["uri"], request_uri):
            return AuthResult(AuthStatus.BAD, username, "uri does not match the Request-URI")
        qop = p.get("qop")
        nc_value = 0
        if qop is None:
            if not (self.allow_rfc2069 and algorithm.upper() == "MD5"):
                return AuthResult(AuthStatus.BAD, username, "qop missing", algorithm)
        else:
            qop = qop.lower()
            nc = p.get("nc", "")
            if qop not in ("auth", "auth-int") or "cnonce" not in p:
                return AuthResult(AuthStatus.BAD, username, "bad qop or no cnonce", algorithm)
            if len(nc) != 8 or any(c not in "0123456789abcdefABCDEF" for c in nc):
                return AuthResult(AuthStatus.BAD, username, "bad nc", algorithm)
            nc_value = int(nc, 16)
        nonce = p["nonce"]
        if self.track_nc and self._used_up(nonce, nc_value if qop is not None else 1):
            return AuthResult(AuthStatus.STALE, username, REPLAYED, algorithm)
        password = lookup(username)
        if password is None:
            return AuthResult(AuthStatus.UNKNOWN_USER, username, "unknown user", algorithm)
        expected = digest_response(
            algorithm=algorithm,
            username=username,
            realm=self.realm,
            password=password,
            method=request_method,
            uri=p["uri"],
            nonce=p["nonce"],
            qop=qop,
            nc=p.get("nc", ""),
            cnonce=p.get("cnonce", ""),
            body=body,
        )
        if not hmac.compare_digest(
            expected.encode(), p["response"].lower().encode("utf-8", "surrogateescape")
        ):
            if self.track_nc and self._nonce_fresh(nonce, now):
                self._use(nonce, _BURNT, now)
            return AuthResult(AuthStatus.BAD, username, WRONG_RESPONSE, algorithm)
        if not self._nonce_fresh(nonce, now):
            return AuthResult(AuthStatus.STALE, username, "stale nonce", algorithm)
        if self.track_nc:
            self._use(nonce, nc_value if qop is not None else _BURNT, now)
        return AuthResult(AuthStatus.OK, username, "", algorithm)

    # -- the used-nonce registry ------------------------------------------------------

    def _used_up(self, nonce: str, nc: int) -> bool:
        return self.used.used_up(nonce, nc, self.nonce_issued_at)

    def _use(self, nonce: str, nc: int, now: float) -> None:
        self.used.use(nonce, nc, self.nonce_issued_at(nonce), now)

    @property
    def nonces_tracked(self) -> int:
        """Used nonces remembered (bounded by the registry's ``max_nonces``)."""
        return len(self.used)


class UsedNonces:
    """The bounded registry of used nonces (see the module docstring).

    One may serve several :class:`DigestServer` (a node's tenants): nonces are unique
    across realms (random salt, realm in the MAC), and one bound then covers them all.
    ``ttl`` must be at least the servers' ``nonce_ttl``: entries older than that (plus the
    clock skew allowed) are dropped, their nonces being refused as stale anyway.
    """

    def __init__(self, max_nonces: int = 50_000, ttl: float = 300) -> None:
        if max_nonces < 1:
            raise ValueError("max_nonces must be at least 1")
        self.max_nonces = max_nonces
        self.ttl = ttl
        # nonce -> (last nc, issued at), in order of first use (~ order of issue)
        self._used: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._floor = float("-inf")  # nonces issued no later than this are used up
        self.on_use: Callable[[str, int, float | None, float], None] | None = None
        """Called with each use recorded here (not with those :meth:`apply` brings): a
        worker of a multi-worker node hands it to the others (``callengine.cluster``)."""

    def __len__(self) -> int:
        return len(self._used)

    def used_up(self, nonce: str, nc: int, issued_at: Callable[[str], float | None]) -> bool:
        """True when ``nonce`` with count ``nc`` was already used (or may have been)."""
        last = self._used.get(nonce)
        if last is not None:
            return nc <= last[0]
        if self._floor == float("-inf"):
            return False
        issued = issued_at(nonce)
        return issued is not None and issued <= self._floor

    def use(self, nonce: str, nc: int, issued: float | None, now: float) -> None:
        """Record ``nonce`` as used up to count ``nc``."""
        self._record(nonce, nc, issued, now)
        if self.on_use is not None:
            self.on_use(nonce, nc, issued, now)

    def apply(self, nonce: str, nc: int, issued: float | None, now: float) -> None:
        """A use another worker recorded (``on_use`` there): the same, but a count never
        goes back (uses may arrive out of order)."""
        last = self._used.get(nonce)
        if last is None or nc > last[0]:
            self._record(nonce, nc, issued, now)

    def refuse_issued_before(self, when: float) -> None:
        """Treat every nonce issued no later than ``when`` as used up: a worker started
        (or restarted) in a running node cannot know which nonces the node used before."""
        self._floor = max(self._floor, when)

    def _record(self, nonce: str, nc: int, issued: float | None, now: float) -> None:
        used = self._used
        used[nonce] = (nc, issued if issued is not None else now)
        horizon = now - self.ttl - _NONCE_SKEW
        while used:
            first, (_, at) = next(iter(used.items()))
            if at < horizon:
                del used[first]  # expired: it would be refused as stale anyway
            elif len(used) > self.max_nonces:
                del used[first]
                self._floor = max(self._floor, at)
            else:
                break


class ChallengeError(RemoteProtocolError, ValueError):
    """A challenge this client cannot answer. Also a :class:`ValueError`, so callers
    that only expect ``ValueError`` from :meth:`DigestClient.authorize` catch it."""


class DigestClient:
    """Answers Digest challenges for one identity (RFC 3261 §22.2, RFC 7616 §3.4).

    ``cnonce_factory`` exists for tests; the default draws 16 random hex digits.
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        cnonce_factory: Callable[[], str] | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self._cnonce = cnonce_factory or (lambda: secrets.token_hex(8))
        self._nc: dict[str, int] = {}

    @staticmethod
    def select_challenge(values: Iterable[str]) -> str | None:
        """The first Digest challenge whose algorithm this client supports, in the
        server's order of preference (RFC 7616 §3.7), or ``None``."""
        for value in values:
            parsed = parse_auth_header(value)
            if parsed is None or not parsed.is_digest:
                continue
            if _split_algorithm(parsed.params.get("algorithm", "MD5")) is not None:
                return value
        return None

    def authorize(self, method: str, uri: str, challenge_value: str, *, body: bytes = b"") -> str:
        """The ``Authorization`` (or ``Proxy-Authorization``) value answering a challenge.

        ``uri`` is the Request-URI as sent. qop=auth is preferred over auth-int; with no
        qop offered the RFC 2069 form is used. nc counts from 00000001 per nonce.
        Raises :class:`ChallengeError` (a :class:`RemoteProtocolError` and a
        :class:`ValueError`) when the challenge cannot be answered
        (not Digest, no realm or nonce, unsupported algorithm or qop).
        """
        parsed = parse_auth_header(challenge_value)
        if parsed is None or not parsed.is_digest:
            raise ChallengeError("Bad Challenge - not a Digest challenge")
        p = parsed.params
        realm = p.get("realm")
        nonce = p.get("nonce")
        if realm is None or nonce is None:
            raise ChallengeError("Bad Challenge - no realm or nonce")
        algorithm = p.get("algorithm", "MD5")
        if _split_algorithm(algorithm) is None:
            raise ChallengeError(f"Bad Challenge - unsupported algorithm {algorithm}")
        qop: str | None = None
        if "qop" in p:
            offered = {o.strip().lower() for o in p["qop"].split(",")}
            if "auth" in offered:
                qop = "auth"
            elif "auth-int" in offered:
                qop = "auth-int"
            else:
                raise ChallengeError("Bad Challenge - no supported qop")
        nc = cnonce = ""
        if qop is not None:
            if len(self._nc) > 32 and nonce not in self._nc:
                self._nc.clear()  # old nonces are dead: keep this bounded
            count = self._nc.get(nonce, 0) + 1
            self._nc[nonce] = count
            nc = f"{count:08x}"
            cnonce = self._cnonce()
        elif algorithm.upper().endswith("-SESS"):
            cnonce = self._cnonce()
        response = digest_response(
            algorithm=algorithm,
            username=self.username,
            realm=realm,
            password=self.password,
            method=method,
            uri=uri,
            nonce=nonce,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            body=body,
        )
        parts = [
            f"username={_quoted(self.username)}",
            f"realm={_quoted(realm)}",
            f"nonce={_quoted(nonce)}",
            f"uri={_quoted(uri)}",
            f"response={_quoted(response)}",
        ]
        if "algorithm" in p:
            parts.append(f"algorithm={algorithm}")
        if cnonce:
            parts.append(f"cnonce={_quoted(cnonce)}")
        if qop is not None:
            parts.append(f"qop={qop}")
            parts.append(f"nc={nc}")
        if "opaque" in p:
            parts.append(f"opaque={_quoted(p['opaque'])}")
        return "Digest " + ", ".join(parts)
