"""Structured header values: name-addr (From/To/Contact/Route), Via, CSeq (RFC 3261 §20, §25.1).

Each parser takes one header value (already unfolded) and either returns a value object
or raises :class:`RemoteProtocolError` with a reason that names the header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._abnf import DIGITS_RE, TOKEN_RE, quote, split_commas, unquote
from .errors import RemoteProtocolError
from .uri import URI, parse_host_port, parse_uri

BRANCH_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7


def _quote_end(text: str, start: int) -> int:
    """Index of the closing quote of the quoted-string that opens at ``start``, or -1."""
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i
        i += 1
    return -1


def parse_header_params(text: str, *, where: str) -> dict[str, str | None]:
    """Parse ``;a=b;c;d="x;y"`` (the text after the first ``;``) into lower-case names.

    Quoted values keep their quotes off (use :func:`quote` when writing). An empty
    parameter (``;;``) is a syntax error (RFC 4475 §3.1.2.1).
    """
    params: dict[str, str | None] = {}
    if '"' not in text:
        items = text.split(";")
    else:
        items = []
        start = 0
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == '"':
                end = _quote_end(text, i)
                if end < 0:
                    raise RemoteProtocolError(f"Bad Request - unterminated quote in {where}")
                i = end
            elif ch == ";":
                items.append(text[start:i])
                start = i + 1
            i += 1
        items.append(text[start:])
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name or not TOKEN_RE.match(name):
            raise RemoteProtocolError(f"Bad Request - empty or bad parameter in {where}")
        if eq:
            value = value.strip()
            params[name.lower()] = unquote(value) if value.startswith('"') else value
        else:
            params[name.lower()] = None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={quote(v)}" for k, v in params.items())


@dataclass(slots=True)
class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params`` (RFC 3261 §20.10, §25.1)."""

    uri: URI
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        head = f"{quote(self.display)} " if self.display else ""
        return f"{head}<{self.uri}>{format_params(self.params)}"


# ``"Display" <uri>;params`` and ``Display <uri>;params``, the shapes nearly every
# peer sends, in one linear match; the addr-spec form and oddities take the long path.
_FAST_NAME_ADDR = re.compile(r'[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^"<]*))<([^<>]*)>(.*)\Z', re.S)


def parse_name_addr(value: str, *, where: str) -> NameAddr:
    """Parse a From/To/Contact/Route element. Raises 400 naming ``where``."""
    m = _FAST_NAME_ADDR.match(value)
    if m is not None:
        quoted, bare, uri_text, after = m.groups()
        if quoted is not None:
            display: str | None = unquote(f'"{quoted}"') if "\\" in quoted else quoted
        else:
            display = bare.strip() or None
            if display is not None and not TOKEN_RE.match(display):
                # several words (RFC 3261 display-name = *(token LWS)), or a bad one
                words = bare.split()
                for word in words:
                    if not TOKEN_RE.match(word):
                        raise RemoteProtocolError(f"Bad Request - unquoted display name in {where}")
                display = " ".join(words)
        uri = parse_uri(uri_text, where=where)
        after = after.strip()
        params: dict[str, str | None] = {}
        if after:
            if after[0] != ";":
                raise RemoteProtocolError(f"Bad Request - junk after > in {where}")
            params = parse_header_params(after[1:], where=where)
        return NameAddr(uri=uri, display=display, params=params)
    return _parse_name_addr_slow(value, where=where)


def _parse_name_addr_slow(value: str, *, where: str) -> NameAddr:
    v = value.strip()
    if not v:
        raise RemoteProtocolError(f"Bad Request - empty {where}")
    display = None
    if v[0] == '"':
        end = _quote_end(v, 0)
        if end < 0:
            raise RemoteProtocolError(f"Bad Request - unterminated quoted display name in {where}")
        display = unquote(v[: end + 1])
        rest = v[end + 1 :].lstrip()
        if not rest.startswith("<"):
            raise RemoteProtocolError(f"Bad Request - display name without <URI> in {where}")
    else:
        lt = v.find("<")
        if lt >= 0:
            words = v[:lt].split()
            # RFC 3261 display-name = *(token LWS); RFC 4475 §3.1.1.6 allows no LWS before "<".
            for word in words:
                if not TOKEN_RE.match(word):
                    raise RemoteProtocolError(f"Bad Request - unquoted display name in {where}")
            display = " ".join(words) or None
            rest = v[lt:]
        else:
            # addr-spec form: every ";" after the URI starts a header parameter, and the
            # URI cannot carry "?" headers or "," (RFC 3261 §20.10).
            uri_text, semi, ptext = v.partition(";")
            uri_text = uri_text.strip()
            if "?" in uri_text or "," in uri_text:
                raise RemoteProtocolError(
                    f"Bad Request - URI with headers must be in <> in {where}"
                )
            uri = parse_uri(uri_text, where=where)
            params = parse_header_params(ptext, where=where) if semi else {}
            return NameAddr(uri=uri, params=params)
    gt = rest.find(">")
    if gt < 0:
        raise RemoteProtocolError(f"Bad Request - missing > in {where}")
    uri = parse_uri(rest[1:gt], where=where)
    after = rest[gt + 1 :].strip()
    params = {}
    if after:
        if after[0] != ";":
            raise RemoteProtocolError(f"Bad Request - junk after > in {where}")
        params = parse_header_params(after[1:], where=where)
    return NameAddr(uri=uri, display=display, params=params)


def parse_name_addr_list(values: list[str], *, where: str) -> list[NameAddr]:
    """Parse every comma-separated element of the given header lines."""
    out = []
    for line in values:
        for element in split_commas(line):
            out.append(parse_name_addr(element, where=where))
    return out


@dataclass(slots=True)
class Via:
    """One Via value (RFC 3261 §20.42, RFC 3581 rport)."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{format_params(self.params)}"


_FAST_VIA = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?(?:;([^\s\"]*))?\Z"
)


def parse_via(value: str) -> Via:
    """Parse one Via element. LWS around "/" is allowed (RFC 4475 §3.1.1.1)."""
    m = _FAST_VIA.match(value)
    if m is not None:
        transport, host, port_text, ptext = m.groups()
        port = None
        if port_text is not None:
            port = int(port_text)
            if not 0 < port < 65536:
                raise RemoteProtocolError("Bad Request - bad port in Via")
        params: dict[str, str | None] = {}
        if ptext is not None:
            # no quotes and no whitespace here (see _FAST_VIA): names only need checking
            for item in ptext.split(";"):
                name, eq, pvalue = item.partition("=")
                if not TOKEN_RE.match(name):
                    raise RemoteProtocolError("Bad Request - empty or bad parameter in Via")
                params[name.lower()] = pvalue if eq else None
            if params.get("branch") == BRANCH_COOKIE:
                raise RemoteProtocolError("Bad Request - Via branch is only the magic cookie")
        return Via(transport.upper(), host.lower(), port, params)
    head, semi, ptext = value.partition(";")
    parts = head.split("/")
    if len(parts) != 3:
        raise RemoteProtocolError("Bad Request - malformed Via")
    if parts[0].strip().upper() != "SIP" or parts[1].strip() != "2.0":
        raise RemoteProtocolError("Bad Request - malformed Via protocol")
    tail = parts[2].split()
    if len(tail) != 2:
        raise RemoteProtocolError("Bad Request - malformed Via sent-by")
    host, port = parse_host_port(tail[1], where="Via")
    params = parse_header_params(ptext, where="Via") if semi else {}
    branch = params.get("branch", "")
    if branch is not None and branch == BRANCH_COOKIE:
        # RFC 4475 §3.2.1: the magic cookie alone identifies nothing.
        raise RemoteProtocolError("Bad Request - Via branch is only the magic cookie")
    return Via(transport=tail[0].upper(), host=host.lower(), port=port, params=params)


def parse_cseq(value: str) -> tuple[int, str]:
    """CSeq = 1*DIGIT LWS Method, number < 2**31 (RFC 3261 §8.1.1.5)."""
    parts = value.split()
    if len(parts) != 2 or not DIGITS_RE.match(parts[0]) or not TOKEN_RE.match(parts[1]):
        raise RemoteProtocolError("Bad Request - malformed CSeq")
    digits = parts[0].lstrip("0") or "0"
    number = int(digits) if len(digits) <= 10 else 2**31
    if number >= 2**31:
        raise RemoteProtocolError("Bad Request - CSeq number out of range")
    return number, parts[1]
