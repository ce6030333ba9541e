"""The SIP grammar pieces the parser needs (RFC 3261 §25.1), in one place.

Everything here is a character class or a table: no regular expression in this
module can backtrack on hostile input (each is a single run of one class).
"""

from __future__ import annotations

import re

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
DIGITS_RE = re.compile(r"[0-9]+\Z")
# RFC 3261 §25.1: word (Call-ID) = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'"
#   / "~" / "(" / ")" / "<" / ">" / ":" / "\" / DQUOTE / "/" / "[" / "]" / "?" / "{" / "}" )
CALLID_RE = re.compile(
    r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?\Z"
)
# host = hostname / IPv4address / IPv6reference (no whitespace, no delimiters)
HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)\Z")
SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")

WSP = " \t"

# Methods of RFC 3261 and its extensions: each is a token, so a name in this set needs
# no TOKEN_RE check on the hot path (anything else is still checked).
METHODS = frozenset(
    {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK",
        "SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER", "MESSAGE",
    }
)  # fmt: skip

# RFC 3261 §7.3.3 compact forms, plus registered ones (RFC 3515, 3891, 4028 ...).
COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
}

# Display spelling for the headers this stack writes or reads; others keep the peer's spelling.
CANONICAL = {
    name.lower(): name
    for name in (
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Max-Forwards",
        "Content-Length",
        "Content-Type",
        "Content-Encoding",
        "Content-Disposition",
        "Route",
        "Record-Route",
        "Allow",
        "Allow-Events",
        "Supported",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Expires",
        "Min-Expires",
        "Authorization",
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Authentication-Info",
        "User-Agent",
        "Server",
        "Reason",
        "Retry-After",
        "Event",
        "Subject",
        "Refer-To",
        "Referred-By",
        "Date",
        "Timestamp",
        "Warning",
        "RSeq",
        "RAck",
        "Session-Expires",
        "Min-SE",
        "P-Asserted-Identity",
        "Organization",
        "Priority",
        "Subscription-State",
        "Replaces",
        "Error-Info",
        "Alert-Info",
        "Call-Info",
        "In-Reply-To",
        "Reply-To",
        "MIME-Version",
    )
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1); others may hold commas
# inside a value (Date, WWW-Authenticate ...), so they are never split.
LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "in-reply-to",
        "warning",
        "error-info",
        "alert-info",
        "call-info",
        "reason",
    }
)

# Headers that may appear at most once (RFC 3261 §7.3.1 / Table 2); more than one is a 400.
SINGLE_HEADERS = ("call-id", "cseq", "from", "to", "max-forwards", "content-length")


def split_commas(value: str) -> list[str]:
    """Split a header value at commas that are outside quotes and angle brackets.

    RFC 3261 §7.3.1. Elements are stripped; empty elements are kept (as "") so that a
    caller can reject them (RFC 4475 §3.1.2.1 "badinv01").
    """
    if "," not in value:
        return [value.strip()]
    out: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    out.append(value[start:].strip())
    return out


def unquote(value: str) -> str:
    """Remove the quotes of a quoted-string and resolve quoted-pairs (RFC 3261 §25.1)."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        if "\\" not in inner:
            return inner
        out = []
        i = 0
        while i < len(inner):
            ch = inner[i]
            if ch == "\\" and i + 1 < len(inner):
                i += 1
                ch = inner[i]
            out.append(ch)
            i += 1
        return "".join(out)
    return value


def quote(value: str) -> str:
    """Quote a display name or parameter value when it is not a plain token."""
    if value and all(c in TOKEN_CHARS for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
