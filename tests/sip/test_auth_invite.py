"""INVITE Digest authentication and REGISTER routing by tenant (callengine.userauth),
with stand-in calls and no sockets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from callengine.sip.auth import DigestClient
from callengine.sip.authguard import GuardConfig
from callengine.sip.message import Request, parse_message
from callengine.sip.registrar import MemoryBindingStore
from callengine.userauth import UserAuth
from config_cache import ConfigError
from config_cache.schema import validate_tenant
from config_cache.snapshot import RouteMatch
from pri import load_trunks

PHONE = ("198.51.100.7", 5060)
CARRIER = ("203.0.113.1", 5060)  # a trunk gateway
PBX = ("192.0.2.10", 5060)  # a trusted source


def tenant(tid: str, mode: str | None, **numbers: str) -> Any:
    doc: dict[str, Any] = {
        "id": tid,
        "realm": f"{tid}.example",
        "users": {"100": {"name": "A", "password": f"{tid}-pw"}, "101": {"password": "x"}},
        "numbers": {n.lstrip("n"): {"route": "user:100"} for n in numbers},
    }
    if mode is not None:
        doc["invite_auth"] = mode
    return validate_tenant(doc)


TENANTS = {
    "acme": tenant("acme", None, n5000="acme"),
    "beta": tenant("beta", "all", n6000="beta"),
    "gamma": tenant("gamma", "off"),
}
PLAN = load_trunks(
    {
        "trunks": {
            "carrier": {
                "carrier": "C",
                "gateway": {"host": CARRIER[0], "port": CARRIER[1]},
                "spans": [{"name": "e1", "type": "E1"}],
            }
        },
        "trunk_groups": {"pstn": {"trunks": ["carrier"]}},
        "outbound_routes": [{"prefix": "9", "strip": 1, "group": "pstn"}],
        "trusted_sources": [f"{PBX[0]}/32"],
    },
    source="test",
)


def lookup(number: str) -> RouteMatch | None:
    for t in TENANTS.values():
        entry = t.numbers.get(number)
        if entry is not None:
            return RouteMatch(t, entry.route, number)
    return None


def make_auth(**kw: Any) -> UserAuth:
    return UserAuth(
        tenants=lambda: TENANTS,
        lookup=lookup,
        plan=lambda: PLAN,
        make_store=MemoryBindingStore,
        secret=b"userauth test",
        **kw,
    )


def invite(
    callee: str, *, caller: str = "100@acme.example", source: tuple[str, int] = PHONE
) -> Request:
    text = (
        f"INVITE sip:{callee}@node.example SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bK-1\r\n"
        f"From: <sip:{caller}>;tag=1\r\nTo: <sip:{callee}@node.example>\r\n"
        "Call-ID: c1@phone\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    msg.source = source
    msg.transport = "UDP"
    return msg


@dataclass
class FakeUA:
    sent: list[tuple[int, str | None, list[tuple[str, str]] | None]] = field(default_factory=list)

    def reject(
        self,
        session: Any,
        status: int,
        now: float,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.sent.append((status, reason, headers))


@dataclass
class FakeEngine:
    ua: FakeUA = field(default_factory=FakeUA)

    def now(self) -> float:
        return 0.0

    def flush(self) -> None:
        pass


@dataclass
class FakeSession:
    invite: Request


@dataclass
class FakeCall:
    session: FakeSession
    source: tuple[str, int] | None
    callee: str
    engine: FakeEngine = field(default_factory=FakeEngine)
    variables: dict[str, str] = field(default_factory=dict)
    active: bool = True
    answered: bool = False
    status: int | None = None

    def send_reject(self, status: int, reason: str | None = None, *, headers: Any = ()) -> None:
        """As :meth:`Call.send_reject`: the final response, once, while unanswered."""
        if self.active and not self.answered:
            self.engine.ua.reject(self.session, status, 0.0, reason, headers=list(headers) or None)
            self.status = status


def call_for(req: Request) -> FakeCall:
    return FakeCall(FakeSession(req), req.source, req.uri.user or "")


def outcome(auth: UserAuth, req: Request) -> tuple[FakeCall, tuple[int, Any, Any] | None]:
    """Run the check; (the call, what was sent or None when the call may go on)."""
    call = call_for(req)
    handler = auth.check_invite(call)  # type: ignore[arg-type]
    if handler is None:
        return call, None
    asyncio.run(handler(call))  # type: ignore[arg-type]
    [sent] = call.engine.ua.sent
    return call, sent


def with_credentials(challenge: tuple[int, Any, Any], req: Request, password: str) -> Request:
    status, _, headers = challenge
    assert status == 407
    values = [v for k, v in headers if k == "Proxy-Authenticate"]
    chosen = DigestClient.select_challenge(values)
    assert chosen is not None
    value = DigestClient(req.from_.uri.user or "", password).authorize(  # type: ignore[union-attr]
        "INVITE", req.uri_text, chosen
    )
    text = (
        req.to_bytes()
        .decode()
        .replace("Max-Forwards: 70\r\n", f"Proxy-Authorization: {value}\r\nMax-Forwards: 70\r\n")
    )
    out = parse_message(text.encode())
    assert isinstance(out, Request)
    out.source, out.transport = req.source, "UDP"
    return out


def test_trunk_route_is_challenged_then_passes_with_the_users_credentials() -> None:
    auth = make_auth()
    req = invite("9123")
    _, sent = outcome(auth, req)
    assert sent is not None
    status, reason, headers = sent
    assert (status, reason) == (407, None)
    assert [k for k, _ in headers] == ["Proxy-Authenticate", "Proxy-Authenticate"]
    assert headers[0][1].startswith('Digest realm="acme.example", nonce="')
    call, sent = outcome(auth, with_credentials(sent, req, "acme-pw"))
    assert sent is None
    assert call.variables["auth_user"] == "100@acme.example"


def test_wrong_password_gets_a_new_challenge_and_is_counted() -> None:
    auth = make_auth()
    req = invite("9123")
    _, first = outcome(auth, req)
    assert first is not None
    call, sent = outcome(auth, with_credentials(first, req, "nope"))
    assert sent is not None and sent[0] == 407
    assert "auth_user" not in call.variables
    assert auth.guard.counters == {"failure:wrong-password": 1}


def test_credentials_of_another_user_than_from_are_403() -> None:
    auth = make_auth()
    req = invite("9123", caller="100@acme.example")
    _, first = outcome(auth, req)
    assert first is not None
    # user 101 answers the challenge for a call that claims to come from 100
    status, _, headers = first
    chosen = DigestClient.select_challenge([v for k, v in headers if k == "Proxy-Authenticate"])
    assert chosen is not None
    value = DigestClient("101", "x").authorize("INVITE", req.uri_text, chosen)
    text = (
        req.to_bytes()
        .decode()
        .replace("Max-Forwards: 70\r\n", f"Proxy-Authorization: {value}\r\nMax-Forwards: 70\r\n")
    )
    forged = parse_message(text.encode())
    assert isinstance(forged, Request)
    forged.source, forged.transport = PHONE, "UDP"
    _, sent = outcome(auth, forged)
    assert sent == (403, "Forbidden - From is not the authenticated user", None)
    assert auth.guard.counters == {"failure:wrong-from": 1}


@pytest.mark.parametrize(
    ("callee", "caller", "source", "challenged"),
    [
        ("9123", "100@acme.example", PHONE, True),  # trunk route
        ("6000", "100@acme.example", PHONE, True),  # another tenant's number
        ("5000", "100@acme.example", PHONE, False),  # own tenant's number (external mode)
        ("100", "100@acme.example", PHONE, False),  # an extension, no trunk route
        ("5000", "100@beta.example", PHONE, True),  # beta: invite_auth all
        ("6000", "100@beta.example", PHONE, True),  # ... own numbers included
        ("9123", "100@gamma.example", PHONE, False),  # gamma: off (the B2BUA's 403 then)
        ("9123", "100@acme.example", CARRIER, False),  # a trunk gateway is never challenged
        ("9123", "100@acme.example", PBX, False),  # nor a trusted source
        ("9123", "someone@elsewhere.example", PHONE, False),  # not a tenant's user
    ],
)
def test_which_calls_are_challenged(
    callee: str, caller: str, source: tuple[str, int], challenged: bool
) -> None:
    _, sent = outcome(make_auth(), invite(callee, caller=caller, source=source))
    assert (sent is not None and sent[0] == 407) is challenged


def test_replayed_invite_credentials_are_refused() -> None:
    auth = make_auth()
    req = invite("9123")
    _, first = outcome(auth, req)
    assert first is not None
    signed = with_credentials(first, req, "acme-pw")
    assert outcome(auth, signed)[1] is None
    _, sent = outcome(auth, signed)
    assert sent is not None and sent[0] == 407
    assert all(v.endswith("stale=true") for _, v in sent[2])
    assert auth.guard.counters == {"failure:replay": 1}


def test_banned_address_is_challenged_without_a_check() -> None:
    auth = make_auth(guard=GuardConfig(source_limit=2, user_limit=0))
    req = invite("9123")
    for _ in range(2):
        _, challenge = outcome(auth, req)
        assert challenge is not None
        outcome(auth, with_credentials(challenge, req, "nope"))
    _, challenge = outcome(auth, req)
    assert challenge is not None
    call, sent = outcome(auth, with_credentials(challenge, req, "acme-pw"))
    assert sent is not None and sent[0] == 407
    assert "auth_user" not in call.variables
    assert auth.guard.counters["banned"] == 1


def test_register_for_a_domain_nobody_serves_is_404_and_makes_nothing() -> None:
    auth = make_auth()
    for i in range(100):
        text = (
            f"REGISTER sip:d{i}.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{i}\r\n"
            f"From: <sip:u@d{i}.example>;tag=1\r\nTo: <sip:u@d{i}.example>\r\n"
            f"Call-ID: r{i}\r\nCSeq: 1 REGISTER\r\nContact: <sip:u@10.0.0.1>\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        req = parse_message(text.encode())
        assert isinstance(req, Request)
        req.source = ("10.0.0.1", 5060)
        resp = auth.on_register(req, 0.0)
        assert (resp.status, resp.reason) == (404, "Not Found - domain not served here")
    assert auth.registrars == {}
    assert auth.refused == {"unknown-domain": 100}
    # a served domain gets its tenant's registrar (one per tenant)
    text = (
        "REGISTER sip:acme.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\n"
        "From: <sip:100@acme.example>;tag=1\r\nTo: <sip:100@acme.example>\r\n"
        "Call-ID: ra\r\nCSeq: 1 REGISTER\r\nContact: <sip:100@10.0.0.1>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    req = parse_message(text.encode())
    assert isinstance(req, Request)
    req.source = ("10.0.0.1", 5060)
    assert auth.on_register(req, 0.0).status == 401
    assert list(auth.registrars) == ["acme.example"]
    # every tenant's realm shares the node's one used-nonce registry
    outcome(auth, invite("9123", caller="100@beta.example"))
    assert {id(r.auth.used) for r in auth.registrars.values() if r.auth} == {id(auth.used_nonces)}


def test_invite_auth_is_validated() -> None:
    with pytest.raises(ConfigError, match="invite_auth: must be one of all, external, off"):
        tenant("x", "sometimes")
    assert tenant("x", None).invite_auth == "external"


def test_an_authenticated_caller_may_use_unrestricted_trunk_routes_from_anywhere() -> None:
    assert PLAN.route_outbound("9123", source_ip=PHONE[0]) is None  # untrusted
    match = PLAN.route_outbound("9123", source_ip=PHONE[0], authenticated=True)
    assert match is not None and match.number == "123"
    restricted = load_trunks(
        {
            "trunks": {
                "carrier": {
                    "carrier": "C",
                    "gateway": {"host": CARRIER[0], "port": CARRIER[1]},
                    "spans": [{"name": "e1", "type": "E1"}],
                }
            },
            "trunk_groups": {"pstn": {"trunks": ["carrier"]}},
            "outbound_routes": [{"prefix": "9", "group": "pstn", "sources": ["10.0.0.0/8"]}],
        },
        source="test",
    )
    assert restricted.route_outbound("9123", source_ip=PHONE[0], authenticated=True) is None
    assert restricted.route_outbound("9123", source_ip="10.1.2.3", authenticated=True)


def test_without_trunks_nothing_leaves_and_nothing_is_challenged() -> None:
    auth = UserAuth(
        tenants=lambda: TENANTS,
        lookup=lookup,
        plan=lambda: load_trunks({}, source="empty"),
        make_store=MemoryBindingStore,
    )
    assert outcome(auth, invite("9123"))[1] is None
    assert outcome(auth, invite("6000"))[1] is not None  # another tenant's number still is
