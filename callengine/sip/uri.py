"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), parsed without backtracking.

``parse_uri`` keeps the text it was given (``str(uri)`` returns it unchanged) and splits
out the parts a call server routes on: scheme, user, host, port, parameters and headers.
%-escapes are resolved once (never recursively) by :func:`unescape`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._abnf import DIGITS_RE, HOST_RE, SCHEME_RE
from .errors import RemoteProtocolError

SIP_SCHEMES = frozenset({"sip", "sips"})
_HEX = "0123456789abcdefABCDEF"


def unescape(text: str) -> str:
    """Resolve %HH escapes once (RFC 3261 §19.1.2); a % not followed by two hex digits stays."""
    if "%" not in text:
        return text
    out = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            out.append(chr(int(text[i + 1 : i + 3], 16)))
            i += 3
            continue
        out.append(ch)
        i += 1
    return "".join(out)


@dataclass(slots=True)
class URI:
    """A parsed URI. ``params`` keys are lower-case; a flag parameter maps to ``None``."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None
    raw: str = ""
    opaque: str | None = None  # the text after "scheme:" for non-SIP schemes

    @property
    def is_sip(self) -> bool:
        return self.scheme in SIP_SCHEMES

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unescape(self.user)

    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        if self.raw:
            return self.raw
        if not self.is_sip:
            return f"{self.scheme}:{self.opaque or ''}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":" + self.password)
            parts.append("@")
        parts.append(self.host_port())
        for k, v in self.params.items():
            parts.append(f";{k}" if v is None else f";{k}={v}")
        if self.headers:
            parts.append("?" + self.headers)
        return "".join(parts)

    def with_params(self, **params: str | None) -> URI:
        """A copy (without the original text) with parameters set or replaced."""
        merged = dict(self.params)
        merged.update(params)
        return URI(
            scheme=self.scheme,
            user=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            params=merged,
            headers=self.headers,
            opaque=self.opaque,
        )


def parse_params(text: str, *, where: str) -> dict[str, str | None]:
    """Parse ``;name=value;flag`` (leading ``;`` already removed). Empty names are errors."""
    params: dict[str, str | None] = {}
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name:
            raise RemoteProtocolError(f"Bad Request - empty parameter in {where}")
        params[name.lower()] = value.strip() if eq else None
    return params


def parse_host_port(text: str, *, where: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` where host may be an IPv6 reference."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RemoteProtocolError(f"Bad Request - unterminated IPv6 reference in {where}")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise RemoteProtocolError(f"Bad Request - bad host in {where}")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.partition(":")
    if not HOST_RE.match(host):
        raise RemoteProtocolError(f"Bad Request - bad host in {where}")
    port: int | None = None
    if port_text:
        if len(port_text) > 5 or not DIGITS_RE.match(port_text) or not 0 < int(port_text) < 65536:
            raise RemoteProtocolError(f"Bad Request - bad port in {where}")
        port = int(port_text)
    return host, port


# The common shape of a SIP URI, matched in one pass (each group is a run of one
# character class ending at a delimiter it excludes: no backtracking). Anything else
# (user parts holding ";" or "?", passwords, odd hosts) takes the general path below.
_FAST_SIP = re.compile(
    r"(sips?):(?:([^@;?:\s<>\"]+)@)?([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
    r"(?:;([^?@\s<>\"]*))?\Z"
)


def parse_uri(text: str, *, where: str = "URI") -> URI:
    """Parse a URI. Raises :class:`RemoteProtocolError` (400) naming ``where``.

    Non-SIP schemes are accepted as opaque URIs (RFC 4475 §3.3.4): whether the scheme is
    acceptable is the caller's decision (416 for a Request-URI).
    """
    m = _FAST_SIP.match(text)
    if m is not None:
        scheme, user, host, port_text, ptext = m.groups()
        port = None
        if port_text is not None:
            port = int(port_text)
            if not 0 < port < 65536:
                raise RemoteProtocolError(f"Bad Request - bad port in {where}")
        params = parse_params(ptext, where=where) if ptext is not None else {}
        # positional: scheme, user, password, host, port, params, headers, raw
        return URI(scheme, user, None, host.lower(), port, params, None, text)
    colon = text.find(":")
    if colon <= 0 or not SCHEME_RE.match(text[:colon]):
        raise RemoteProtocolError(f"Bad Request - no scheme in {where}")
    for ch in ' \t\r\n<>"':
        if ch in text:
            raise RemoteProtocolError(f"Bad Request - illegal character in {where}")
    scheme = text[:colon].lower()
    rest = text[colon + 1 :]
    if scheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise RemoteProtocolError(f"Bad Request - empty tel number in {where}")
        params = parse_params(ptext, where=where) if ptext else {}
        return URI(scheme=scheme, user=number, params=params, raw=text, opaque=rest)
    if scheme not in SIP_SCHEMES:
        if not rest:
            raise RemoteProtocolError(f"Bad Request - empty URI in {where}")
        return URI(scheme=scheme, raw=text, opaque=rest)
    # userinfo ends at the last "@": a user part may hold ";", "?" and "," (RFC 4475
    # §3.1.1.2, §3.1.1.9); hostport, params and headers hold "@" only escaped.
    at = rest.rfind("@")
    user = password = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, sep, pw = userinfo.partition(":")
        if sep:
            password = pw
    headers = None
    q = rest.find("?")
    if q >= 0:
        headers = rest[q + 1 :]
        rest = rest[:q]
    hostport, semi, ptext = rest.partition(";")
    host, port = parse_host_port(hostport, where=where)
    params = parse_params(ptext, where=where) if semi else {}
    return URI(
        scheme=scheme,
        user=user,
        password=password,
        host=host.lower(),
        port=port,
        params=params,
        headers=headers,
        raw=text,
    )
