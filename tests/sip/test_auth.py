"""Digest authentication: parser, RFC test vectors, client/server round trips."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callengine.sip.auth import (
    REPLAYED,
    AuthHeader,
    AuthStatus,
    ChallengeError,
    DigestClient,
    DigestServer,
    digest_response,
    parse_auth_header,
)
from callengine.sip.errors import RemoteProtocolError

NOW = 1_700_000_000.0
SECRET = b"0123456789abcdef0123456789abcdef"

RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC7616_SHA256_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


# -- parser -------------------------------------------------------------------------


def test_parse_challenge_with_quoted_commas_and_escapes() -> None:
    h = parse_auth_header(
        'Digest realm="a, \\"b\\"", nonce=abc/+=, qop="auth,auth-int" , algorithm=MD5'
    )
    assert h == AuthHeader(
        "Digest",
        {"realm": 'a, "b"', "nonce": "abc/+=", "qop": "auth,auth-int", "algorithm": "MD5"},
    )
    assert h.is_digest


def test_parse_scheme_is_case_insensitive_and_names_lower_cased() -> None:
    h = parse_auth_header('dIgEsT Realm="x",NONCE="y"')
    assert h == AuthHeader("Digest", {"realm": "x", "nonce": "y"})


def test_parse_tolerates_empty_list_elements_and_folded_whitespace() -> None:
    h = parse_auth_header('Digest ,realm="x",\r\n\t, nonce="y",')
    assert h == AuthHeader("Digest", {"realm": "x", "nonce": "y"})


def test_parse_unknown_scheme_returns_scheme_only() -> None:
    assert parse_auth_header("NoOneKnowsThisScheme opaque-data=here") == AuthHeader(
        "NoOneKnowsThisScheme"
    )
    assert parse_auth_header("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==") == AuthHeader("Basic")
    assert not AuthHeader("Basic").is_digest


def test_parse_digest_without_params() -> None:
    assert parse_auth_header("Digest") == AuthHeader("Digest", {})


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        '"Digest"',
        'Digest realm="unterminated',
        'Digest realm="x" nonce="y"',  # missing comma
        "Digest realm",
        "Digest =x",
        "Digest realm=",
        'Digest realm="x", realm="y"',  # duplicate
        'Digest realm="x\\',
        "Digest, realm=x",
        'Digest realm="x"junk',
        "Digest " + "a=b, " * 2000,  # over the length limit
    ],
)
def test_parse_garbage_returns_none(value: str) -> None:
    assert parse_auth_header(value) is None


@given(st.text(max_size=200))
def test_parse_never_raises(value: str) -> None:
    parse_auth_header(value)


@given(st.text(alphabet='Digest realm=",\\ \tnoce', max_size=80))
def test_parse_never_raises_on_near_misses(value: str) -> None:
    parse_auth_header(value)


# -- test vectors -----------------------------------------------------------------------


def test_rfc2617_md5_vector() -> None:
    # RFC 2617 §3.5
    assert (
        digest_response(
            algorithm="MD5",
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_vectors(algorithm: str, expected: str) -> None:
    # RFC 7616 §3.9.1
    assert (
        digest_response(
            algorithm=algorithm,
            username="Mufasa",
            realm="http-auth@example.org",
            password="Circle of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            qop="auth",
            nc="00000001",
            cnonce=RFC7616_CNONCE,
        )
        == expected
    )


def test_digest_response_rejects_unknown_algorithm_and_qop() -> None:
    kw = dict(username="u", realm="r", password="p", method="REGISTER", uri="sip:x", nonce="n")
    with pytest.raises(ValueError, match="unsupported digest algorithm 'SHA-1'"):
        digest_response(algorithm="SHA-1", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported qop 'auth-conf'"):
        digest_response(algorithm="MD5", qop="auth-conf", **kw)  # type: ignore[arg-type]


# -- client ------------------------------------------------------------------------------


def test_client_rfc2617_example() -> None:
    client = DigestClient("Mufasa", "Circle Of Life", cnonce_factory=lambda: "0a4f113b")
    value = client.authorize("GET", "/dir/index.html", RFC2617_CHALLENGE)
    assert value == (
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", '
        'response="6629fae49393a05397450978507c4ef1", cnonce="0a4f113b", qop=auth, '
        'nc=00000001, opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )


def test_client_rfc7616_sha256_example() -> None:
    client = DigestClient("Mufasa", "Circle of Life", cnonce_factory=lambda: RFC7616_CNONCE)
    value = client.authorize("GET", "/dir/index.html", RFC7616_SHA256_CHALLENGE)
    p = parse_auth_header(value)
    assert p is not None
    assert p.params == {
        "username": "Mufasa",
        "realm": "http-auth@example.org",
        "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "uri": "/dir/index.html",
        "response": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        "algorithm": "SHA-256",
        "cnonce": RFC7616_CNONCE,
        "qop": "auth",
        "nc": "00000001",
        "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    }


def test_client_nc_counts_per_nonce() -> None:
    client = DigestClient("u", "p")
    ch1 = 'Digest realm="r", nonce="n1", qop="auth"'
    ch2 = 'Digest realm="r", nonce="n2", qop="auth"'

    def nc(value: str) -> str:
        parsed = parse_auth_header(value)
        assert parsed is not None
        return parsed.params["nc"]

    assert nc(client.authorize("REGISTER", "sip:x", ch1)) == "00000001"
    assert nc(client.authorize("REGISTER", "sip:x", ch1)) == "00000002"
    assert nc(client.authorize("REGISTER", "sip:x", ch2)) == "00000001"
    assert nc(client.authorize("REGISTER", "sip:x", ch1)) == "00000003"


def test_client_fresh_cnonce_each_time() -> None:
    client = DigestClient("u", "p")
    ch = 'Digest realm="r", nonce="n1", qop="auth"'
    a = parse_auth_header(client.authorize("REGISTER", "sip:x", ch))
    b = parse_auth_header(client.authorize("REGISTER", "sip:x", ch))
    assert a is not None and b is not None
    assert a.params["cnonce"] != b.params["cnonce"]


def test_client_rfc2069_form_without_qop() -> None:
    client = DigestClient("u", "p")
    value = client.authorize("REGISTER", "sip:example.com", 'Digest realm="r", nonce="n"')
    expected = digest_response(
        algorithm="MD5",
        username="u",
        realm="r",
        password="p",
        method="REGISTER",
        uri="sip:example.com",
        nonce="n",
    )
    assert value == (
        f'Digest username="u", realm="r", nonce="n", uri="sip:example.com", response="{expected}"'
    )


def test_client_quotes_awkward_username() -> None:
    client = DigestClient('a"b\\c', "p")
    value = client.authorize("REGISTER", "sip:x", 'Digest realm="r", nonce="n"')
    assert value.startswith('Digest username="a\\"b\\\\c", ')
    parsed = parse_auth_header(value)
    assert parsed is not None and parsed.params["username"] == 'a"b\\c'


@pytest.mark.parametrize(
    ("challenge", "reason"),
    [
        ('Basic realm="r"', "not a Digest challenge"),
        ("garbage ,,", "not a Digest challenge"),
        ('Digest realm="r"', "no realm or nonce"),
        ('Digest realm="r", nonce="n", algorithm=SHA-1', "unsupported algorithm SHA-1"),
        ('Digest realm="r", nonce="n", qop="auth-conf"', "no supported qop"),
    ],
)
def test_client_refuses_unanswerable_challenges(challenge: str, reason: str) -> None:
    with pytest.raises(ChallengeError) as info:
        DigestClient("u", "p").authorize("REGISTER", "sip:x", challenge)
    assert info.value.reason == "Bad Challenge - " + reason
    assert isinstance(info.value, RemoteProtocolError)
    assert isinstance(info.value, ValueError)


def test_select_challenge_takes_first_supported() -> None:
    values = [
        'Basic realm="r"',
        'Digest realm="r", nonce="n", algorithm=SHA-1',
        'Digest realm="r", nonce="n", algorithm=SHA-256',
        'Digest realm="r", nonce="n", algorithm=MD5',
    ]
    assert DigestClient.select_challenge(values) == values[2]
    assert DigestClient.select_challenge(values[:2]) is None


# -- server -------------------------------------------------------------------------


def test_challenge_one_value_per_algorithm_sha256_first() -> None:
    server = DigestServer("example.com", SECRET)
    values = server.challenge(NOW)
    assert len(values) == 2
    first, second = (parse_auth_header(v) for v in values)
    assert first is not None and second is not None
    assert first.params["algorithm"] == "SHA-256"
    assert second.params["algorithm"] == "MD5"
    for p in (first, second):
        assert p.params["realm"] == "example.com"
        assert p.params["qop"] == "auth"
        assert "stale" not in p.params
        assert server.nonce_issued_at(p.params["nonce"]) == NOW
    assert values[0].startswith('Digest realm="example.com", nonce="')
    assert values[0].endswith('", algorithm=SHA-256, qop="auth"')


def test_challenge_stale_flag() -> None:
    values = DigestServer("example.com", SECRET).challenge(NOW, stale=True)
    assert all(v.endswith(", stale=true") for v in values)


def test_nonces_are_unique() -> None:
    server = DigestServer("example.com", SECRET)
    assert server.make_nonce(NOW) != server.make_nonce(NOW)


def _answer(
    server: DigestServer,
    algorithm: str,
    *,
    user: str = "alice",
    password: str = "pw",
    now: float = NOW,
    uri: str = "sip:example.com",
    method: str = "REGISTER",
) -> str:
    challenge = next(v for v in server.challenge(now) if f"algorithm={algorithm}," in v)
    return DigestClient(user, password).authorize(method, uri, challenge)


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_round_trip(algorithm: str) -> None:
    server = DigestServer("example.com", SECRET)
    value = _answer(server, algorithm)
    result = server.verify(
        "REGISTER", value, {"alice": "pw"}.get, NOW + 1, request_uri="sip:example.com"
    )
    assert result.status is AuthStatus.OK
    assert result.ok
    assert result.username == "alice"
    assert result.algorithm == algorithm


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_wrong_password_is_bad(algorithm: str) -> None:
    server = DigestServer("example.com", SECRET)
    value = _answer(server, algorithm, password="guess")
    result = server.verify("REGISTER", value, {"alice": "pw"}.get, NOW)
    assert result.status is AuthStatus.BAD
    assert result.reason == "wrong response"


def test_unknown_user() -> None:
    server = DigestServer("example.com", SECRET)
    result = server.verify("REGISTER", _answer(server, "MD5", user="bob"), {"alice": "pw"}.get, NOW)
    assert result.status is AuthStatus.UNKNOWN_USER
    assert result.username == "bob"


def test_any_worker_with_the_secret_verifies() -> None:
    a = DigestServer("example.com", SECRET)
    b = DigestServer("example.com", SECRET)
    assert b.verify("REGISTER", _answer(a, "SHA-256"), {"alice": "pw"}.get, NOW).ok


def test_expired_nonce_with_right_digest_is_stale() -> None:
    server = DigestServer("example.com", SECRET, nonce_ttl=300)
    value = _answer(server, "SHA-256")
    assert server.verify("REGISTER", value, {"alice": "pw"}.get, NOW + 299.9).ok
    result = server.verify("REGISTER", value, {"alice": "pw"}.get, NOW + 300)
    assert result.status is AuthStatus.STALE


def test_expired_nonce_with_wrong_digest_is_bad() -> None:
    server = DigestServer("example.com", SECRET)
    value = _answer(server, "SHA-256", password="guess")
    assert (
        server.verify("REGISTER", value, {"alice": "pw"}.get, NOW + 1000).status is AuthStatus.BAD
    )


def test_nonce_from_the_future_is_stale() -> None:
    server = DigestServer("example.com", SECRET)
    value = _answer(server, "MD5", now=NOW + 60)
    assert server.verify("REGISTER", value, {"alice": "pw"}.get, NOW).status is AuthStatus.STALE
    value = _answer(server, "MD5", now=NOW + 10)  # within the clock-skew allowance
    assert server.verify("REGISTER", value, {"alice": "pw"}.get, NOW).ok


def test_foreign_or_forged_nonce_is_stale() -> None:
    ours = DigestServer("example.com", SECRET)
    theirs = DigestServer("example.com", b"another secret")
    value = _answer(theirs, "MD5")
    assert ours.verify("REGISTER", value, {"alice": "pw"}.get, NOW).status is AuthStatus.STALE
    forged = base64.b64encode(b"\x00" * 48).decode()
    client = DigestClient("alice", "pw")
    value = client.authorize(
        "REGISTER", "sip:example.com", f'Digest realm="example.com", nonce="{forged}", qop="auth"'
    )
    assert ours.verify("REGISTER", value, {"alice": "pw"}.get, NOW).status is AuthStatus.STALE
    assert ours.nonce_issued_at(forged) is None
    assert ours.nonce_issued_at("not base64 !") is None
    assert ours.nonce_issued_at("naïve") is None


def test_nonce_is_bound_to_the_realm() -> None:
    a = DigestServer("a.example.com", SECRET)
    b = DigestServer("b.example.com", SECRET)
    assert b.nonce_issued_at(a.make_nonce(NOW)) is None


def test_wrong_realm_is_bad() -> None:
    a = DigestServer("a.example.com", SECRET)
    b = DigestServer("b.example.com", SECRET)
    result = b.verify("REGISTER", _answer(a, "MD5"), {"alice": "pw"}.get, NOW)
    assert (result.status, result.reason) == (AuthStatus.BAD, "wrong realm")


def test_algorithm_not_offered_is_bad() -> None:
    md5_only = DigestServer("example.com", SECRET, algorithms=("MD5",))
    both = DigestServer("example.com", SECRET)
    result = md5_only.verify("REGISTER", _answer(both, "SHA-256"), {"alice": "pw"}.get, NOW)
    assert (result.status, result.reason) == (AuthStatus.BAD, "algorithm SHA-256 not offered")


def test_method_is_part_of_the_digest() -> None:
    server = DigestServer("example.com", SECRET)
    value = _answer(server, "MD5", method="REGISTER")
    assert server.verify("INVITE", value, {"alice": "pw"}.get, NOW).status is AuthStatus.BAD


def test_uri_must_name_the_request_uri() -> None:
    server = DigestServer("example.com", SECRET)
    value = _answer(server, "MD5", uri="sip:EXAMPLE.com")
    lookup = {"alice": "pw"}.get
    assert server.verify("REGISTER", value, lookup, NOW, request_uri="sip:example.com").ok
    result = server.verify("REGISTER", value, lookup, NOW, request_uri="sip:other.com")
    assert (result.status, result.reason) == (AuthStatus.BAD, "uri does not match the Request-URI")


def test_rfc2069_md5_without_qop_accepted_but_not_for_sha256() -> None:
    server = DigestServer("example.com", SECRET)
    nonce = server.make_nonce(NOW)
    client = DigestClient("alice", "pw")
    md5 = client.authorize("REGISTER", "sip:x", f'Digest realm="example.com", nonce="{nonce}"')
    assert "qop" not in md5
    assert server.verify("REGISTER", md5, {"alice": "pw"}.get, NOW).ok
    sha = client.authorize(
        "REGISTER", "sip:x", f'Digest realm="example.com", nonce="{nonce}", algorithm=SHA-256'
    )
    result = server.verify("REGISTER", sha, {"alice": "pw"}.get, NOW)
    assert (result.status, result.reason) == (AuthStatus.BAD, "qop missing")
    strict = DigestServer("example.com", SECRET, allow_rfc2069=False)
    assert strict.verify("REGISTER", md5, {"alice": "pw"}.get, NOW).status is AuthStatus.BAD


def test_auth_int_round_trip() -> None:
    server = DigestServer("example.com", SECRET, track_nc=False)  # verifies one value twice
    nonce = server.make_nonce(NOW)
    value = DigestClient("alice", "pw").authorize(
        "REGISTER",
        "sip:x",
        f'Digest realm="example.com", nonce="{nonce}", qop="auth-int"',
        body=b"hello",
    )
    assert "qop=auth-int" in value
    lookup = {"alice": "pw"}.get
    assert server.verify("REGISTER", value, lookup, NOW, body=b"hello").ok
    assert server.verify("REGISTER", value, lookup, NOW, body=b"hellO").status is AuthStatus.BAD


def test_sess_algorithm_round_trip() -> None:
    server = DigestServer("example.com", SECRET, algorithms=("SHA-256-sess",))
    value = DigestClient("alice", "pw").authorize("REGISTER", "sip:x", server.challenge(NOW)[0])
    assert server.verify("REGISTER", value, {"alice": "pw"}.get, NOW).ok


def test_track_nc_rejects_replay_as_stale() -> None:
    server = DigestServer("example.com", SECRET)  # track_nc is the default
    challenge = server.challenge(NOW)[0]
    client = DigestClient("alice", "pw")
    first = client.authorize("REGISTER", "sip:x", challenge)
    second = client.authorize("REGISTER", "sip:x", challenge)
    lookup = {"alice": "pw"}.get
    assert server.verify("REGISTER", first, lookup, NOW).ok
    replay = server.verify("REGISTER", first, lookup, NOW)
    assert (replay.status, replay.reason) == (AuthStatus.STALE, REPLAYED)
    assert server.verify("REGISTER", second, lookup, NOW).ok
    # without tracking the same replay passes (the limit of stateless nonces alone)
    untracked = DigestServer("example.com", SECRET, track_nc=False)
    assert untracked.verify("REGISTER", first, lookup, NOW).ok
    assert untracked.verify("REGISTER", first, lookup, NOW).ok


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("NoOneKnowsThisScheme opaque-data=here", "not Digest credentials"),
        ("Digest garbage", "not Digest credentials"),
        ('Digest username="alice", realm="example.com"', "missing nonce, uri, response"),
        (
            'Digest username="alice", realm="example.com", nonce="n", uri="sip:x", '
            'response="r", qop=auth, nc=00000001',
            "bad qop or no cnonce",
        ),
        (
            'Digest username="alice", realm="example.com", nonce="n", uri="sip:x", '
            'response="r", qop=auth, nc=1, cnonce="c"',
            "bad nc",
        ),
        (
            'Digest username="alice", realm="example.com", nonce="n", uri="sip:x", '
            'response="r", qop=auth-conf, nc=00000001, cnonce="c"',
            "bad qop or no cnonce",
        ),
    ],
)
def test_malformed_credentials_are_bad(value: str, reason: str) -> None:
    result = DigestServer("example.com", SECRET).verify("REGISTER", value, {"alice": "pw"}.get, NOW)
    assert (result.status, result.reason) == (AuthStatus.BAD, reason)


@given(st.text(max_size=300))
def test_verify_never_raises(value: str) -> None:
    DigestServer("example.com", SECRET).verify("REGISTER", value, {"alice": "pw"}.get, NOW)


def test_server_config_errors() -> None:
    with pytest.raises(ValueError, match="unsupported digest algorithm 'SHA-1'"):
        DigestServer("r", SECRET, algorithms=("SHA-1",))
    with pytest.raises(ValueError, match="empty secret"):
        DigestServer("r", b"")
