"""Registrar (RFC 3261 §10.3): REGISTER bytes in, responses out, with a fake clock."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callengine.sip.auth import DigestClient, DigestServer, parse_auth_header
from callengine.sip.errors import RemoteProtocolError
from callengine.sip.message import Request, Response, parse_message
from callengine.sip.registrar import Binding, MemoryBindingStore, Registrar, UserRecord

# ../shared beside the checkout (as CI lays it out), else the workplace's copy.
RFC4475 = next(
    p
    for p in (
        Path(__file__).resolve().parents[3] / "shared/conformance/rfc4475",
        Path("/work/shared/conformance/rfc4475"),
    )
    if p.is_dir()
)
T0 = 1_700_000_000.0  # wall-clock seconds: 2023-11-14 22:13:20 GMT
SECRET = b"registrar test secret"
USERS = {
    ("example.com", "alice"): UserRecord(password="alice-pw", tenant="t1"),
    ("example.com", "bob"): UserRecord(password="bob-pw", tenant="t1"),
    ("example.com", "watson"): UserRecord(password="w", tenant="t1"),
    ("example.com", "user"): UserRecord(password="u", tenant="t1"),
    ("example.com", "j.user"): UserRecord(password="j", tenant="t1"),
    ("example.com", "null-\x00-null"): UserRecord(password="n", tenant="t1"),
}


def lookup_user(domain: str, user: str) -> UserRecord | None:
    return USERS.get((domain, user))


def make_registrar(*, auth: bool = False, **kw: object) -> Registrar:
    tags = (f"tag{i}" for i in itertools.count(1))
    return Registrar(
        lookup_user=lookup_user,
        store=MemoryBindingStore(),
        auth=DigestServer("example.com", SECRET) if auth else None,
        make_tag=lambda: next(tags),
        **kw,  # type: ignore[arg-type]
    )


def register(
    *extra: str,
    user: str = "alice",
    to: str | None = None,
    call_id: str = "reg-1@client.example.net",
    cseq: int = 1,
    source: tuple[str, int] = ("198.51.100.7", 40000),
    transport: str = "UDP",
) -> Request:
    """A REGISTER from the wire; ``extra`` are additional header lines."""
    lines = [
        "REGISTER sip:example.com SIP/2.0",
        "Via: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK-" + str(cseq) + ";rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@example.com>;tag=ft{cseq}",
        f"To: {to or f'<sip:{user}@example.com>'}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    msg.source = source
    msg.transport = transport
    return msg


def load(name: str) -> Request:
    msg = parse_message((RFC4475 / name).read_bytes())
    assert isinstance(msg, Request)
    msg.source = ("192.0.2.1", 5060)
    return msg


def contacts(resp: Response) -> list[str]:
    return resp.headers.get_all("contact")


def wire(resp: Response) -> Response:
    """Serialise and parse again, to assert on what a peer would see."""
    parsed = parse_message(resp.to_bytes())
    assert isinstance(parsed, Response)
    return parsed


# -- basic registration -----------------------------------------------------------


def test_register_one_contact() -> None:
    reg = make_registrar()
    resp = wire(reg.handle(register("Contact: <sip:alice@10.0.0.7:5060>"), T0))
    assert (resp.status, resp.reason) == (200, "OK")
    assert contacts(resp) == ["<sip:alice@10.0.0.7:5060>;expires=3600"]
    assert resp.to_tag == "tag1"
    assert resp.headers.get("date") == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert resp.call_id == "reg-1@client.example.net"
    assert resp.headers.get("cseq") == "1 REGISTER"
    [b] = reg.bindings_for("alice@example.com", T0)
    assert b == Binding(
        contact="sip:alice@10.0.0.7:5060",
        expires_at=T0 + 3600,
        call_id="reg-1@client.example.net",
        cseq=1,
        q=None,
        source=("198.51.100.7", 40000),
        transport="UDP",
        instance_id=None,
        params={},
    )


def test_query_without_contact_lists_bindings() -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@10.0.0.7>"), T0)
    resp = reg.handle(register(cseq=2), T0 + 100)
    assert resp.status == 200
    assert contacts(resp) == ["<sip:alice@10.0.0.7>;expires=3500"]


def test_query_with_no_bindings_has_no_contact() -> None:
    resp = make_registrar().handle(register(), T0)
    assert resp.status == 200
    assert "contact" not in resp.headers


def test_several_contacts_and_q_values_kept() -> None:
    reg = make_registrar()
    resp = reg.handle(
        register(
            "Contact: <sip:alice@desk.example.net>;q=0.5, <sip:alice@mobile.example.net>;q=1.0",
            "Contact: <sips:alice@soft.example.net>;q=0",
        ),
        T0,
    )
    assert contacts(resp) == [
        "<sip:alice@desk.example.net>;q=0.5;expires=3600",
        "<sip:alice@mobile.example.net>;q=1.0;expires=3600",
        "<sips:alice@soft.example.net>;q=0;expires=3600",
    ]
    ordered = [b.contact for b in reg.bindings_for("alice@example.com", T0)]
    assert ordered == [
        "sip:alice@mobile.example.net",
        "sip:alice@desk.example.net",
        "sips:alice@soft.example.net",
    ]


def test_second_register_adds_binding_from_another_phone() -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@desk>", call_id="desk"), T0)
    resp = reg.handle(register("Contact: <sip:alice@mobile>", call_id="mobile"), T0 + 10)
    assert contacts(resp) == [
        "<sip:alice@desk>;expires=3590",
        "<sip:alice@mobile>;expires=3600",
    ]


def test_refresh_updates_expiry_in_place() -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@desk>", "Expires: 600"), T0)
    resp = reg.handle(register("Contact: <sip:alice@DESK>", "Expires: 900", cseq=2), T0 + 300)
    assert contacts(resp) == ["<sip:alice@DESK>;expires=900"]
    [b] = reg.bindings_for("alice@example.com", T0 + 300)
    assert (b.cseq, b.expires_at) == (2, T0 + 1200)


def test_users_are_kept_apart_and_aor_host_lower_cased() -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@desk>", to="<sip:alice@EXAMPLE.COM>"), T0)
    reg.handle(register("Contact: <sip:bob@desk>", user="bob"), T0)
    assert [b.contact for b in reg.bindings_for("alice@example.com", T0)] == ["sip:alice@desk"]
    assert [b.contact for b in reg.bindings_for("bob@example.com", T0)] == ["sip:bob@desk"]


def test_compact_contact_and_escaped_to_user() -> None:
    reg = make_registrar()
    resp = reg.handle(register("m: <sip:alice@desk>", to="sip:%61lice@example.com"), T0)
    assert resp.status == 200
    assert reg.bindings_for("alice@example.com", T0)[0].contact == "sip:alice@desk"


def test_source_and_transport_recorded() -> None:
    reg = make_registrar()
    reg.handle(
        register(
            "Contact: <sip:alice@10.0.0.7;transport=tcp>",
            source=("203.0.113.9", 61000),
            transport="TCP",
        ),
        T0,
    )
    [b] = reg.bindings_for("alice@example.com", T0)
    assert (b.source, b.transport) == (("203.0.113.9", 61000), "TCP")


def test_instance_id_matches_a_phone_that_moved() -> None:
    # RFC 5626: the same +sip.instance replaces the binding even from a new address.
    reg = make_registrar()
    inst = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    reg.handle(register(f"Contact: <sip:alice@10.0.0.7>;{inst}"), T0)
    resp = reg.handle(register(f"Contact: <sip:alice@10.0.0.99>;{inst}", cseq=2), T0 + 5)
    assert contacts(resp) == [
        '<sip:alice@10.0.0.99>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
        ";expires=3600"
    ]
    [b] = reg.bindings_for("alice@example.com", T0 + 5)
    assert b.instance_id == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"


def test_non_register_method_is_405() -> None:
    raw = (
        b"OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: x\r\n"
        b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    req = parse_message(raw)
    assert isinstance(req, Request)
    resp = make_registrar().handle(req, T0)
    assert resp.status == 405
    assert resp.headers.get("allow") == "REGISTER"


# -- expiry ------------------------------------------------------------------------


def test_expires_header_applies_to_contacts_without_param() -> None:
    reg = make_registrar()
    resp = reg.handle(
        register("Contact: <sip:alice@a>, <sip:alice@b>;expires=120", "Expires: 300"), T0
    )
    assert contacts(resp) == ["<sip:alice@a>;expires=300", "<sip:alice@b>;expires=120"]


def test_default_expires_without_header_or_param() -> None:
    reg = make_registrar(default_expires=1800)
    resp = reg.handle(register("Contact: <sip:alice@a>"), T0)
    assert contacts(resp) == ["<sip:alice@a>;expires=1800"]


def test_expires_above_max_is_clamped() -> None:
    reg = make_registrar()
    resp = reg.handle(register("Contact: <sip:alice@a>;expires=86400"), T0)
    assert contacts(resp) == ["<sip:alice@a>;expires=7200"]


def test_overlarge_numbers_clamp() -> None:
    # the scalar02 values (RFC 4475 §3.1.2.4), with a CSeq the parser accepts
    huge = "1" + "0" * 100
    reg = make_registrar()
    resp = reg.handle(
        register(
            "Contact: <sip:alice@a>\r\n  ;expires=280297596632815",
            "Contact: <sip:alice@b>",
            f"Expires: {huge}",
        ),
        T0,
    )
    assert resp.status == 200
    assert contacts(resp) == ["<sip:alice@a>;expires=7200", "<sip:alice@b>;expires=7200"]
    # longer than Python's int-from-str limit (4300 digits) must not raise either
    resp = reg.handle(register("Contact: <sip:alice@c>;expires=" + "9" * 5000, cseq=2), T0)
    assert resp.status == 200
    assert "<sip:alice@c>;expires=7200" in contacts(resp)


def test_scalar02_is_rejected_by_the_parser() -> None:
    # RFC 4475 §3.1.2.4: the CSeq is out of range, so it never reaches the registrar.
    with pytest.raises(RemoteProtocolError) as info:
        parse_message((RFC4475 / "scalar02.dat").read_bytes())
    assert (info.value.status, info.value.reason) == (400, "Bad Request - CSeq number out of range")


def test_malformed_expires_counts_as_default() -> None:
    # RFC 3261 §20.19: malformed values SHOULD be treated as 3600
    reg = make_registrar()
    resp = reg.handle(
        register("Contact: <sip:alice@a>;expires=soon, <sip:alice@b>", "Expires: -5"), T0
    )
    assert contacts(resp) == ["<sip:alice@a>;expires=3600", "<sip:alice@b>;expires=3600"]


def test_below_min_expires_is_423() -> None:
    reg = make_registrar()
    resp = wire(reg.handle(register("Contact: <sip:alice@a>;expires=59, <sip:alice@b>"), T0))
    assert (resp.status, resp.reason) == (423, "Interval Too Brief")
    assert resp.headers.get("min-expires") == "60"
    assert resp.to_tag == "tag1"
    assert reg.bindings_for("alice@example.com", T0) == []  # nothing applied


def test_exactly_min_expires_is_accepted() -> None:
    resp = make_registrar().handle(register("Contact: <sip:alice@a>", "Expires: 60"), T0)
    assert contacts(resp) == ["<sip:alice@a>;expires=60"]


def test_expires_zero_removes_one_binding() -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@a>, <sip:alice@b>"), T0)
    resp = reg.handle(register("Contact: <sip:alice@a>;expires=0", cseq=2), T0 + 1)
    assert contacts(resp) == ["<sip:alice@b>;expires=3599"]


def test_expires_header_zero_removes_listed_contacts() -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@a>, <sip:alice@b>"), T0)
    resp = reg.handle(register("Contact: <sip:alice@b>", "Expires: 0", cseq=2), T0)
    assert contacts(resp) == ["<sip:alice@a>;expires=3600"]


def test_removing_unknown_binding_is_fine() -> None:
    resp = make_registrar().handle(register("Contact: <sip:alice@zz>;expires=0"), T0)
    assert resp.status == 200
    assert "contact" not in resp.headers


def test_expired_bindings_are_purged_lazily() -> None:
    store = MemoryBindingStore()
    reg = Registrar(lookup_user=lookup_user, store=store, auth=None)
    reg.handle(register("Contact: <sip:alice@a>;expires=60, <sip:alice@b>;expires=120"), T0)
    assert len(store.get("alice@example.com")) == 2
    assert [b.contact for b in reg.bindings_for("alice@example.com", T0 + 60)] == ["sip:alice@b"]
    assert len(store.get("alice@example.com")) == 1
    assert reg.bindings_for("alice@example.com", T0 + 120) == []
    assert store.aors() == []


def test_remaining_expires_counts_down() -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@a>;expires=100"), T0)
    resp = reg.handle(register(cseq=2), T0 + 99.5)
    assert contacts(resp) == ["<sip:alice@a>;expires=1"]


# -- Contact "*" -------------------------------------------------------------------


def test_star_with_expires_zero_removes_all() -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@a>, <sip:alice@b>"), T0)
    reg.handle(register("Contact: <sip:alice@c>", call_id="other"), T0)
    resp = reg.handle(register("Contact: *", "Expires: 0", cseq=2), T0 + 1)
    assert resp.status == 200
    assert "contact" not in resp.headers
    assert reg.bindings_for("alice@example.com", T0 + 1) == []


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (("Contact: *",), "Bad Request - Contact * needs Expires: 0"),
        (("Contact: *", "Expires: 60"), "Bad Request - Contact * needs Expires: 0"),
        (("Contact: *", "Expires: zero"), "Bad Request - Contact * needs Expires: 0"),
        (
            ("Contact: *, <sip:alice@a>", "Expires: 0"),
            "Bad Request - Contact * with other contacts",
        ),
        (
            ("Contact: *", "Contact: <sip:alice@a>", "Expires: 0"),
            "Bad Request - Contact * with other contacts",
        ),
    ],
)
def test_star_misuse_is_400(lines: tuple[str, ...], reason: str) -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@a>"), T0)
    resp = reg.handle(register(*lines, cseq=2), T0)
    assert (resp.status, resp.reason) == (400, reason)
    assert len(reg.bindings_for("alice@example.com", T0)) == 1


def test_star_out_of_order_is_500() -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@a>", cseq=5), T0)
    resp = reg.handle(register("Contact: *", "Expires: 0", cseq=4), T0)
    assert resp.status == 500
    assert len(reg.bindings_for("alice@example.com", T0)) == 1


# -- Call-ID / CSeq ordering (§10.3 step 7) ------------------------------------------


@pytest.mark.parametrize("cseq", [4, 5])
def test_same_call_id_with_cseq_not_higher_is_500(cseq: int) -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@a>", cseq=5), T0)
    resp = wire(reg.handle(register("Contact: <sip:alice@a>;expires=0", cseq=cseq), T0))
    assert (resp.status, resp.reason) == (500, "Server Internal Error - CSeq out of order")
    assert resp.to_tag == "tag2"
    [b] = reg.bindings_for("alice@example.com", T0)
    assert b.cseq == 5


def test_out_of_order_aborts_the_whole_request() -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@a>", cseq=5), T0)
    resp = reg.handle(register("Contact: <sip:alice@new>, <sip:alice@a>", cseq=3), T0)
    assert resp.status == 500
    assert [b.contact for b in reg.bindings_for("alice@example.com", T0)] == ["sip:alice@a"]


def test_other_call_id_may_use_any_cseq() -> None:
    reg = make_registrar()
    reg.handle(register("Contact: <sip:alice@a>", cseq=5, call_id="first"), T0)
    resp = reg.handle(register("Contact: <sip:alice@a>;expires=0", cseq=1, call_id="second"), T0)
    assert resp.status == 200
    assert reg.bindings_for("alice@example.com", T0) == []


# -- syntax: 400s ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (("Contact: <sip:alice@a",), "Bad Request - missing > in Contact"),
        (("Contact: <sip:alice@a>;;x",), "Bad Request - empty or bad parameter in Contact"),
        (("Contact: <mailto:alice@example.com>",), "Bad Request - Contact is not a SIP URI"),
        (("Contact: <sip:alice@a>;q=2",), "Bad Request - bad q in Contact"),
        (("Contact: <sip:alice@a>;q",), "Bad Request - bad q in Contact"),
        (("Contact: <sip:alice@a>;q=0.1234",), "Bad Request - bad q in Contact"),
        (("Contact: <sip:alice@a>, ",), "Bad Request - empty Contact"),
    ],
)
def test_malformed_contact_is_400(lines: tuple[str, ...], reason: str) -> None:
    resp = wire(make_registrar().handle(register(*lines), T0))
    assert (resp.status, resp.reason) == (400, reason)
    assert resp.to_tag == "tag1"


def test_non_sip_to_is_400() -> None:
    resp = make_registrar().handle(register("Contact: <sip:a@b>", to="<tel:+15551234567>"), T0)
    assert (resp.status, resp.reason) == (400, "Bad Request - To is not a SIP URI")


def test_unknown_user_is_404() -> None:
    resp = make_registrar().handle(register("Contact: <sip:mallory@a>", user="mallory"), T0)
    assert (resp.status, resp.reason) == (404, "Not Found")


def test_unknown_domain_is_404() -> None:
    resp = make_registrar().handle(
        register("Contact: <sip:alice@a>", to="<sip:alice@example.org>"), T0
    )
    assert resp.status == 404


# -- RFC 4475 torture tests ----------------------------------------------------------


def test_rfc4475_cparam01_contact_param_not_uri_param() -> None:
    # §3.3.12: without <>, ";unknownparam" is a contact-param
    reg = make_registrar()
    resp = wire(reg.handle(load("cparam01.dat"), T0))
    assert resp.status == 200
    assert contacts(resp) == ["<sip:+19725552222@gw1.example.net>;unknownparam;expires=3600"]
    [b] = reg.bindings_for("watson@example.com", T0)
    assert b.contact == "sip:+19725552222@gw1.example.net"
    assert b.params == {"unknownparam": None}


def test_rfc4475_cparam02_uri_param_stays_in_uri() -> None:
    # §3.3.13: inside <>, ";unknownparam" is a url-parameter and comes back in the URI
    reg = make_registrar()
    resp = wire(reg.handle(load("cparam02.dat"), T0))
    assert resp.status == 200
    assert contacts(resp) == ["<sip:+19725552222@gw1.example.net;unknownparam>;expires=3600"]
    [b] = reg.bindings_for("watson@example.com", T0)
    assert b.contact == "sip:+19725552222@gw1.example.net;unknownparam"
    assert b.params == {}


def test_rfc4475_cparam01_and_02_are_different_bindings() -> None:
    reg = make_registrar()
    reg.handle(load("cparam01.dat"), T0)
    reg.handle(load("cparam02.dat"), T0)
    assert len(reg.bindings_for("watson@example.com", T0)) == 2


def test_rfc4475_regescrt_escaped_header_kept() -> None:
    # §3.3.14
    reg = make_registrar()
    resp = wire(reg.handle(load("regescrt.dat"), T0))
    assert resp.status == 200
    assert contacts(resp) == ["<sip:user@example.com?Route=%3Csip:sip.example.com%3E>;expires=3600"]
    [b] = reg.bindings_for("user@example.com", T0)
    assert b.contact == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_rfc4475_regbadct_unbracketed_header_is_400() -> None:
    # §3.1.2.13: the Contact URI with a header must be in <>; the lazy parse fails -> 400
    resp = make_registrar().handle(load("regbadct.dat"), T0)
    assert (resp.status, resp.reason) == (
        400,
        "Bad Request - URI with headers must be in <> in Contact",
    )


@pytest.mark.parametrize("auth", [False, True])
def test_rfc4475_unksm2_non_sip_to_is_400(auth: bool) -> None:
    # §3.3.4: a registrar rejects a non-SIP AOR with 400, before any challenge
    resp = make_registrar(auth=auth).handle(load("unksm2.dat"), T0)
    assert (resp.status, resp.reason) == (400, "Bad Request - To is not a SIP URI")


def test_rfc4475_regaut01_unknown_scheme_is_challenged() -> None:
    # §3.3.7: the unknown Authorization scheme is ignored and the request challenged
    resp = wire(make_registrar(auth=True).handle(load("regaut01.dat"), T0))
    assert (resp.status, resp.reason) == (401, "Unauthorized")
    challenges = resp.headers.get_all("www-authenticate")
    assert [parse_auth_header(c).params["algorithm"] for c in challenges] == ["SHA-256", "MD5"]  # type: ignore[union-attr]
    assert resp.to_tag == "tag1"


def test_rfc4475_regaut01_without_auth_registers_nothing() -> None:
    resp = make_registrar().handle(load("regaut01.dat"), T0)
    assert resp.status == 200  # no Contact: a query
    assert "contact" not in resp.headers


def test_rfc4475_escnull_two_distinct_contacts() -> None:
    # §3.1.1.4: %00 does not truncate, and the two Contacts are distinct bindings
    reg = make_registrar()
    resp = reg.handle(load("escnull.dat"), T0)
    assert resp.status == 200
    assert contacts(resp) == [
        "<sip:%00@host5.example.com>;expires=3600",
        "<sip:%00%00@host5.example.com>;expires=3600",
    ]
    assert len(reg.bindings_for("null-\x00-null@example.com", T0)) == 2


# -- authentication ---------------------------------------------------------------------


def answer(
    resp: Response, user: str, password: str, *extra: str, cseq: int, uri: str = "sip:example.com"
) -> Request:
    challenge = DigestClient.select_challenge(resp.headers.get_all("www-authenticate"))
    assert challenge is not None
    value = DigestClient(user, password).authorize("REGISTER", uri, challenge)
    return register(*extra, f"Authorization: {value}", cseq=cseq)


def test_challenge_then_register() -> None:
    reg = make_registrar(auth=True)
    first = wire(reg.handle(register("Contact: <sip:alice@a>"), T0))
    assert (first.status, first.reason) == (401, "Unauthorized")
    values = first.headers.get_all("www-authenticate")
    assert len(values) == 2
    assert values[0].startswith('Digest realm="example.com", nonce="')
    assert values[0].endswith('", algorithm=SHA-256, qop="auth"')
    assert values[1].endswith('", algorithm=MD5, qop="auth"')
    assert reg.bindings_for("alice@example.com", T0) == []
    second = reg.handle(
        answer(first, "alice", "alice-pw", "Contact: <sip:alice@a>", cseq=2), T0 + 1
    )
    assert second.status == 200
    assert contacts(second) == ["<sip:alice@a>;expires=3600"]


def test_md5_only_phone_registers() -> None:
    reg = make_registrar(auth=True)
    first = reg.handle(register("Contact: <sip:alice@a>"), T0)
    md5 = first.headers.get_all("www-authenticate")[1]
    value = DigestClient("alice", "alice-pw").authorize("REGISTER", "sip:example.com", md5)
    resp = reg.handle(register("Contact: <sip:alice@a>", f"Authorization: {value}", cseq=2), T0)
    assert resp.status == 200


def test_wrong_password_is_rechallenged() -> None:
    reg = make_registrar(auth=True)
    first = reg.handle(register("Contact: <sip:alice@a>"), T0)
    resp = reg.handle(answer(first, "alice", "nope", "Contact: <sip:alice@a>", cseq=2), T0)
    assert resp.status == 401
    assert all("stale" not in v for v in resp.headers.get_all("www-authenticate"))
    assert reg.bindings_for("alice@example.com", T0) == []


def test_stale_nonce_gets_stale_true() -> None:
    reg = make_registrar(auth=True)
    first = reg.handle(register("Contact: <sip:alice@a>"), T0)
    resp = reg.handle(
        answer(first, "alice", "alice-pw", "Contact: <sip:alice@a>", cseq=2), T0 + 301
    )
    assert resp.status == 401
    values = resp.headers.get_all("www-authenticate")
    assert len(values) == 2
    assert all(v.endswith(", stale=true") for v in values)


def test_authenticated_user_must_own_the_aor() -> None:
    reg = make_registrar(auth=True)
    first = reg.handle(register("Contact: <sip:alice@a>"), T0)
    # bob authenticates correctly but registers alice's AOR
    resp = reg.handle(answer(first, "bob", "bob-pw", "Contact: <sip:bob@a>", cseq=2), T0)
    assert (resp.status, resp.reason) == (403, "Forbidden - not your address-of-record")
    assert reg.bindings_for("alice@example.com", T0) == []


def test_unknown_auth_user_is_challenged() -> None:
    reg = make_registrar(auth=True)
    first = reg.handle(register("Contact: <sip:alice@a>"), T0)
    resp = reg.handle(answer(first, "mallory", "x", "Contact: <sip:alice@a>", cseq=2), T0)
    assert resp.status == 401


def test_unknown_aor_with_auth_is_401_not_404() -> None:
    # RFC 3261 §10.3: authentication (step 3) precedes the AOR check (step 5), so REGISTER
    # does not reveal which users exist.
    resp = make_registrar(auth=True).handle(register("Contact: <sip:x@a>", user="mallory"), T0)
    assert resp.status == 401


def test_credentials_for_another_realm_are_ignored() -> None:
    reg = make_registrar(auth=True)
    other = DigestServer("other.example", SECRET)
    value = DigestClient("alice", "alice-pw").authorize(
        "REGISTER", "sip:example.com", other.challenge(T0)[0]
    )
    resp = reg.handle(register("Contact: <sip:alice@a>", f"Authorization: {value}"), T0)
    assert resp.status == 401


def test_right_credentials_among_several_authorization_headers() -> None:
    reg = make_registrar(auth=True)
    first = reg.handle(register("Contact: <sip:alice@a>"), T0)
    challenge = first.headers.get_all("www-authenticate")[0]
    value = DigestClient("alice", "alice-pw").authorize("REGISTER", "sip:example.com", challenge)
    req = register(
        "Contact: <sip:alice@a>",
        "Authorization: NoOneKnowsThisScheme opaque-data=here",
        'Authorization: Digest realm="elsewhere", username="x"',
        f"Authorization: {value}",
        cseq=2,
    )
    assert reg.handle(req, T0).status == 200


def test_digest_uri_must_match_request_uri() -> None:
    reg = make_registrar(auth=True)
    first = reg.handle(register("Contact: <sip:alice@a>"), T0)
    resp = reg.handle(
        answer(
            first, "alice", "alice-pw", "Contact: <sip:alice@a>", cseq=2, uri="sip:evil.example"
        ),
        T0,
    )
    assert resp.status == 401


def test_syntax_errors_come_before_the_challenge() -> None:
    resp = make_registrar(auth=True).handle(register("Contact: <sip:alice@a"), T0)
    assert resp.status == 400


def test_423_only_after_authentication() -> None:
    reg = make_registrar(auth=True)
    first = reg.handle(register("Contact: <sip:alice@a>;expires=10"), T0)
    assert first.status == 401
    resp = reg.handle(
        answer(first, "alice", "alice-pw", "Contact: <sip:alice@a>;expires=10", cseq=2), T0
    )
    assert resp.status == 423


# -- store -------------------------------------------------------------------------------


def test_binding_json_round_trip() -> None:
    b = Binding(
        contact="sip:alice@10.0.0.7;transport=tcp?X=%20",
        expires_at=T0 + 3600.5,
        call_id="c@h",
        cseq=7,
        q="0.5",
        source=("2001:db8::1", 5060),
        transport="TLS",
        instance_id="<urn:uuid:1>",
        params={"+sip.instance": "<urn:uuid:1>", "reg-id": "1", "flag": None},
    )
    assert Binding.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    minimal = Binding(contact="sip:a@b", expires_at=T0, call_id="c", cseq=1)
    assert Binding.from_dict(json.loads(json.dumps(minimal.to_dict()))) == minimal


def test_memory_store_put_empty_deletes() -> None:
    store = MemoryBindingStore()
    b = Binding(contact="sip:a@b", expires_at=T0, call_id="c", cseq=1)
    store.put("a@b", [b])
    assert store.get("a@b") == [b]
    store.get("a@b").clear()  # a copy: the store is not changed behind its back
    assert store.aors() == ["a@b"]
    store.put("a@b", [])
    assert store.aors() == []
    assert store.get("a@b") == []


def test_registrar_config_checked() -> None:
    with pytest.raises(ValueError):
        Registrar(lookup_user=lookup_user, store=MemoryBindingStore(), auth=None, min_expires=0)
    with pytest.raises(ValueError):
        Registrar(lookup_user=lookup_user, store=MemoryBindingStore(), auth=None, max_expires=100)


# -- robustness ----------------------------------------------------------------------

_NASTY = st.text(alphabet='<>;,="*\\ :@?&%0123456789abcsipq.expires\xe9\x00', max_size=60)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(contact=_NASTY, expires=_NASTY, authz=_NASTY, auth=st.booleans())
def test_handle_never_raises(contact: str, expires: str, authz: str, auth: bool) -> None:
    raw = (
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n"
        f"Call-ID: x\r\nCSeq: 1 REGISTER\r\nContact: {contact}\r\nExpires: {expires}\r\n"
        f"Authorization: Digest {authz}\r\nContent-Length: 0\r\n\r\n"
    )
    try:
        req = parse_message(raw.encode("utf-8"))
    except RemoteProtocolError:
        return
    assert isinstance(req, Request)
    resp = make_registrar(auth=auth).handle(req, T0)
    assert resp.status in (200, 400, 401, 423)


def test_undecodable_octets_in_credentials_do_not_raise() -> None:
    reg = make_registrar(auth=True)
    first = reg.handle(register("Contact: <sip:alice@a>"), T0)
    nonce = parse_auth_header(first.headers.get_all("www-authenticate")[0]).params["nonce"]  # type: ignore[union-attr]
    raw = (
        register("Contact: <sip:alice@a>")
        .to_bytes()
        .replace(
            b"Content-Length",
            b'Authorization: Digest username="alice", realm="example.com", nonce="'
            + nonce.encode()
            + b'", uri="sip:example.com", response="\xff", algorithm=SHA-256, qop=auth, '
            b'nc=00000001, cnonce="\xff\xfe"\r\nContent-Length',
        )
    )
    req = parse_message(raw)
    assert isinstance(req, Request)
    assert reg.handle(req, T0).status == 401


# -- limits (issue 11): contacts per AOR, replayed credentials, the brute-force guard ----


def test_contacts_per_aor_are_capped_with_403() -> None:
    reg = make_registrar(max_contacts=3)
    three = [f"Contact: <sip:alice@10.0.0.{i}>" for i in range(3)]
    assert reg.handle(register(*three), T0).status == 200
    resp = reg.handle(register("Contact: <sip:alice@10.0.0.9>", cseq=2), T0)
    assert (resp.status, resp.reason) == (
        403,
        "Forbidden - too many registered contacts (max 3)",
    )
    assert len(reg.bindings_for("alice@example.com", T0)) == 3
    # refreshing, or replacing one contact by another in one request, is fine
    assert reg.handle(register(three[0], cseq=3), T0).status == 200
    swap = register("Contact: <sip:alice@10.0.0.0>;expires=0", "Contact: <sip:alice@x>", cseq=4)
    assert reg.handle(swap, T0).status == 200
    # one REGISTER with many contacts is refused whole
    many = [f"Contact: <sip:bob@10.0.1.{i}>" for i in range(400)]
    resp = reg.handle(register(*many, user="bob"), T0)
    assert resp.status == 403
    assert reg.bindings_for("bob@example.com", T0) == []


def test_default_contact_cap_is_ten_and_zero_disables_it() -> None:
    many = [f"Contact: <sip:alice@10.0.1.{i}>" for i in range(11)]
    assert make_registrar().handle(register(*many), T0).status == 403
    assert make_registrar(max_contacts=0).handle(register(*many), T0).status == 200


def captured_register(reg: Registrar) -> str:
    """The victim registers; returns the Authorization header an eavesdropper saw."""
    first = reg.handle(register("Contact: <sip:alice@victim>"), T0)
    req = answer(first, "alice", "alice-pw", "Contact: <sip:alice@victim>", cseq=2)
    assert reg.handle(req, T0).status == 200
    value = req.headers.get("authorization")
    assert value is not None
    return value


def test_replayed_authorization_with_new_call_id_and_contact_is_refused() -> None:
    reg = make_registrar(auth=True)
    stolen = captured_register(reg)
    replay = register(
        "Contact: <sip:alice@attacker>", f"Authorization: {stolen}", call_id="evil@x", cseq=9
    )
    resp = reg.handle(replay, T0 + 5)
    assert resp.status == 401
    assert all(v.endswith("stale=true") for v in resp.headers.get_all("www-authenticate"))
    assert [b.contact for b in reg.bindings_for("alice@example.com", T0 + 5)] == [
        "sip:alice@victim"
    ]


def test_replayed_authorization_cannot_wipe_bindings_with_star() -> None:
    reg = make_registrar(auth=True)
    stolen = captured_register(reg)
    wipe = register("Contact: *", "Expires: 0", f"Authorization: {stolen}", call_id="e@x", cseq=9)
    assert reg.handle(wipe, T0 + 5).status == 401
    assert len(reg.bindings_for("alice@example.com", T0 + 5)) == 1


def guess(reg: Registrar, password: str, source: tuple[str, int], cseq: int) -> Response:
    first = reg.handle(register("Contact: <sip:alice@a>", source=source, cseq=cseq), T0)
    if first.status != 401:
        return first
    challenge = DigestClient.select_challenge(first.headers.get_all("www-authenticate"))
    assert challenge is not None
    value = DigestClient("alice", password).authorize("REGISTER", "sip:example.com", challenge)
    req = register("Contact: <sip:alice@a>", f"Authorization: {value}", source=source, cseq=cseq)
    return reg.handle(req, T0)


def test_banned_source_is_challenged_unchecked_even_with_the_right_password() -> None:
    from callengine.sip.authguard import AuthGuard, GuardConfig

    guard = AuthGuard(GuardConfig(source_limit=3, user_limit=0))
    reg = make_registrar(auth=True, guard=guard)
    attacker = ("203.0.113.9", 5999)
    statuses = [guess(reg, f"guess{i}", attacker, i + 1).status for i in range(3)]
    assert statuses == [401, 401, 401]
    resp = guess(reg, "alice-pw", attacker, 10)
    # the same answer as to a wrong password: the attacker cannot tell he is banned
    assert (resp.status, resp.reason) == (401, "Unauthorized")
    assert all("stale" not in v for v in resp.headers.get_all("www-authenticate"))
    assert reg.bindings_for("alice@example.com", T0) == []
    assert guard.counters["banned"] == 1
    # the real phone elsewhere registers
    assert guess(reg, "alice-pw", ("198.51.100.7", 5060), 11).status == 200
    assert guard.counters["failure:wrong-password"] == 3
    assert guard.counters["ban"] == 1


def test_each_failure_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from callengine.sip.authguard import AuthGuard

    reg = make_registrar(auth=True, guard=AuthGuard())
    with caplog.at_level("WARNING", logger="callengine.security"):
        for i in range(3):
            guess(reg, f"guess{i}", ("203.0.113.9", 5999), i + 1)
    assert [r.getMessage() for r in caplog.records] == [
        "SIP auth failure from 203.0.113.9 port 5999 UDP: reason=wrong-password "
        'method="REGISTER" user="alice" realm="example.com" action=none'
    ] * 3


def test_user_backoff_challenges_without_verifying() -> None:
    from callengine.sip.authguard import AuthGuard, GuardConfig

    guard = AuthGuard(GuardConfig(source_limit=0, user_limit=3, backoff=30))
    reg = make_registrar(auth=True, guard=guard)
    for i in range(3):
        assert guess(reg, f"guess{i}", (f"203.0.113.{i}", 5999), i + 1).status == 401
    # a fourth address with the right password: not verified while alice is in back-off
    assert guess(reg, "alice-pw", ("203.0.113.77", 5999), 10).status == 401
    assert guard.counters["challenge"] == 1
    assert reg.bindings_for("alice@example.com", T0) == []


def test_replay_and_unknown_user_are_counted_failures() -> None:
    from callengine.sip.authguard import AuthGuard

    guard = AuthGuard()
    reg = make_registrar(auth=True, guard=guard)
    stolen = captured_register(reg)
    reg.handle(register("Contact: <sip:alice@x>", f"Authorization: {stolen}", cseq=5), T0)
    first = reg.handle(register("Contact: <sip:x@a>", user="mallory"), T0)
    reg.handle(answer(first, "mallory", "x", "Contact: <sip:x@a>", cseq=6), T0)
    assert guard.counters == {"failure:replay": 1, "failure:unknown-user": 1}


def test_user_backoff_attempts_count_against_the_address() -> None:
    from callengine.sip.authguard import AuthGuard, GuardConfig

    guard = AuthGuard(GuardConfig(source_limit=4, user_limit=2, backoff=30))
    reg = make_registrar(auth=True, guard=guard)
    attacker = ("203.0.113.9", 5999)
    for i in range(4):
        assert guess(reg, f"guess{i}", attacker, i + 1).status == 401
    assert guard.counters["failure:wrong-password"] == 2
    assert guard.counters["failure:user-backoff"] == 2
    assert guard.banned("203.0.113.9", T0)
