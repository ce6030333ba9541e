"""SIP messages: parse from bytes, build, serialize (RFC 3261 §7, §18.3, §20).

Theory of operation
-------------------
``parse_message(data)`` turns one datagram (or one framed stream message) into a
:class:`Request` or :class:`Response`. It parses eagerly only what every message needs
for routing and transaction matching: the start line, Via, From, To, Call-ID, CSeq,
Max-Forwards and Content-Length. Everything else is kept as text in :class:`Headers`
and parsed on first use (``msg.contacts``, ``msg.routes``...). A lazy accessor may raise
:class:`RemoteProtocolError`; the server core turns that into a response.

Malformed input raises :class:`RemoteProtocolError` with ``status`` (400, 505...) and a
reason naming the fault; when enough of a request was read to answer it, the error's
``request`` attribute holds the partial request so a response can be built.

Serialization joins strings once; Content-Length is always written from the body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ._abnf import (
    CALLID_RE,
    CANONICAL,
    COMPACT,
    METHODS,
    SINGLE_HEADERS,
    TOKEN_RE,
    split_commas,
)
from .errors import RemoteProtocolError
from .headers import NameAddr, Via, parse_cseq, parse_name_addr, parse_name_addr_list, parse_via
from .uri import URI, parse_uri

MAX_MESSAGE = 65535  # largest datagram; also the stream framer's limit for one message

_UNREAD = "\x00unread"  # a tag not yet looked up (no tag on the wire can be this object)

# "Name: " for every canonical header key: serializing is one concatenation per line.
_PREFIXES = {key: display + ": " for key, display in CANONICAL.items()}
# Canonical spelling -> key, so that building headers skips lower() for the usual names.
_CANONICAL_KEYS = {display: key for key, display in CANONICAL.items()}


def _digits(text: str) -> bool:
    """1*DIGIT in ASCII (``str.isdigit`` is also true for "²" and other digits that
    ``int`` refuses or the grammar does not allow)."""
    return text.isascii() and text.isdigit()


class Headers:
    """Header fields keyed case-insensitively, values kept as received, in order per name."""

    __slots__ = ("_d", "_names")

    def __init__(self) -> None:
        self._d: dict[str, list[str]] = {}
        self._names: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        """The first value of a header, or ``None``."""
        values = self._d.get(name.lower())
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """Every header line's value for ``name`` (not split at commas)."""
        return self._d.get(name.lower(), [])

    def get_list(self, name: str) -> list[str]:
        """The comma-separated elements of every ``name`` header (RFC 3261 §7.3.1)."""
        out: list[str] = []
        for v in self._d.get(name.lower(), ()):
            out.extend(split_commas(v))
        return out

    def add(self, name: str, value: str) -> None:
        key = _CANONICAL_KEYS.get(name)
        if key is None:
            key = name.lower()
            if key not in CANONICAL:
                self._names.setdefault(key, name)
        values = self._d.get(key)
        if values is None:
            self._d[key] = [value]
        else:
            values.append(value)

    def set(self, name: str, value: str) -> None:
        key = _CANONICAL_KEYS.get(name)
        if key is None:
            key = name.lower()
            if key not in CANONICAL:
                self._names.setdefault(key, name)
        self._d[key] = [value]

    def set_all(self, name: str, values: list[str]) -> None:
        key = name.lower()
        if values:
            self._d[key] = list(values)
            if key not in CANONICAL:
                self._names.setdefault(key, name)
        else:
            self._d.pop(key, None)

    def remove(self, name: str) -> None:
        self._d.pop(name.lower(), None)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._d

    def items(self) -> Iterator[tuple[str, str]]:
        """(display name, value) pairs in order."""
        names = self._names
        for key, values in self._d.items():
            display = CANONICAL.get(key) or names.get(key, key)
            for v in values:
                yield display, v

    def first_values(self) -> dict[str, str]:
        """Canonical name -> first value, for application code."""
        return {CANONICAL.get(k) or self._names.get(k, k): v[0] for k, v in self._d.items() if v}

    def copy(self) -> Headers:
        h = Headers()
        h._d = {k: list(v) for k, v in self._d.items()}
        h._names = dict(self._names)
        return h


class Message:
    """Common part of requests and responses."""

    __slots__ = (
        "headers",
        "body",
        "vias",
        "_from",
        "_to",
        "call_id",
        "cseq",
        "cseq_method",
        "max_forwards",
        "source",
        "transport",
        "received_at",
        "_contacts",
        "_from_tag",
        "_to_tag",
    )

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.vias: list[Via] = []
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self.call_id = ""
        self.cseq = 0
        self.cseq_method = ""
        self.max_forwards: int | None = None
        # Where it came from: set by the transport; ``received_at`` is the loop time.
        self.source: tuple[str, int] | None = None
        self.transport = "UDP"
        self.received_at = 0.0
        self._contacts: list[NameAddr] | None = None
        # tags read from the raw From/To (hot: every request looks them up several times)
        self._from_tag: str | None = _UNREAD
        self._to_tag: str | None = _UNREAD

    @property
    def via(self) -> Via:
        """The top Via."""
        return self.vias[0]

    @property
    def branch(self) -> str:
        return (self.vias[0].branch or "") if self.vias else ""

    @property
    def from_(self) -> NameAddr | None:
        """The parsed From (on first use; may raise :class:`RemoteProtocolError`)."""
        if self._from is None:
            values = self.headers._d.get("from")
            if values:
                self._from = parse_name_addr(values[0], where="From")
        return self._from

    @from_.setter
    def from_(self, value: NameAddr | None) -> None:
        self._from = value
        self._from_tag = _UNREAD

    @property
    def to(self) -> NameAddr | None:
        """The parsed To (on first use; may raise :class:`RemoteProtocolError`)."""
        if self._to is None:
            values = self.headers._d.get("to")
            if values:
                self._to = parse_name_addr(values[0], where="To")
        return self._to

    @to.setter
    def to(self, value: NameAddr | None) -> None:
        self._to = value
        self._to_tag = _UNREAD

    @property
    def from_tag(self) -> str | None:
        if self._from is not None:
            return self._from.tag
        tag = self._from_tag
        if tag is _UNREAD:
            values = self.headers._d.get("from")
            tag = self._from_tag = _tag_of(values[0], self, "from_") if values else None
        return tag

    @property
    def to_tag(self) -> str | None:
        if self._to is not None:
            return self._to.tag
        tag = self._to_tag
        if tag is _UNREAD:
            values = self.headers._d.get("to")
            tag = self._to_tag = _tag_of(values[0], self, "to") if values else None
        return tag

    @property
    def contacts(self) -> list[NameAddr]:
        """Parsed Contact values ("*" is not a name-addr: see :attr:`contact_is_star`)."""
        if self._contacts is None:
            values = self.headers.get_all("contact")
            if self.contact_is_star:
                self._contacts = []
            else:
                self._contacts = parse_name_addr_list(values, where="Contact")
        return self._contacts

    @property
    def contact_is_star(self) -> bool:
        values = self.headers.get_all("contact")
        return len(values) == 1 and values[0].strip() == "*"

    def routes(self, name: str = "route") -> list[NameAddr]:
        return parse_name_addr_list(self.headers.get_all(name), where=CANONICAL[name])

    @property
    def content_type(self) -> str:
        ct = self.headers.get("content-type")
        return ct.partition(";")[0].strip().lower() if ct else ""

    def _start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialize; Content-Length always states the body's length (RFC 3261 §18.3)."""
        parts = [self._start_line()]
        append = parts.append
        names = self.headers._names
        for key, values in self.headers._d.items():
            prefix = _PREFIXES.get(key)
            if prefix is None:
                prefix = names.get(key, key) + ": "
            elif key == "content-length":
                continue
            for value in values:
                append(prefix + value)
        body = self.body
        append(f"Content-Length: {len(body)}\r\n\r\n")
        head = "\r\n".join(parts).encode("utf-8", "surrogateescape")
        return head + body if body else head

    __bytes__ = to_bytes

    def _fill_routing_fields(self) -> None:
        """Parse the headers every message needs (eager part of the parse)."""
        h = self.headers._d
        get = h.get
        vias = get("via")
        if not vias:
            raise RemoteProtocolError("Bad Request - missing Via")
        if len(vias) == 1 and "," not in vias[0]:
            self.vias = [parse_via(vias[0])]
        else:
            out = []
            for line in vias:
                for element in split_commas(line):
                    if not element:
                        raise RemoteProtocolError("Bad Request - empty Via element")
                    out.append(parse_via(element))
            self.vias = out
        call_id = get("call-id")
        cseq = get("cseq")
        from_ = get("from")
        to = get("to")
        if call_id is None or cseq is None or from_ is None or to is None:
            missing = [CANONICAL[n] for n in ("call-id", "from", "to", "cseq") if n not in h]
            raise RemoteProtocolError("Bad Request - missing " + ", ".join(missing))
        mf = get("max-forwards")
        if (
            len(call_id) > 1
            or len(cseq) > 1
            or len(from_) > 1
            or len(to) > 1
            or (mf and len(mf) > 1)
        ):
            for key in SINGLE_HEADERS:
                values = get(key)
                if values is not None and len(values) > 1 and key != "content-length":
                    raise RemoteProtocolError(f"Bad Request - more than one {CANONICAL[key]}")
        cid = call_id[0]
        if not CALLID_RE.match(cid):
            raise RemoteProtocolError("Bad Request - malformed Call-ID")
        self.call_id = cid
        number, sp, method = cseq[0].partition(" ")
        if sp and method in METHODS and len(number) < 10 and _digits(number):
            self.cseq = int(number)  # < 10 digits: below 2**31 (RFC 3261 §8.1.1.5)
            self.cseq_method = method
        else:
            self.cseq, self.cseq_method = parse_cseq(cseq[0])
        if mf is not None:
            text = mf[0].lstrip("0") or "0"
            if len(text) > 3 or not _digits(text) or int(text) > 255:
                raise RemoteProtocolError("Bad Request - Max-Forwards out of range")
            self.max_forwards = int(text)
        date = get("date")
        if date is not None and not date[0].endswith(" GMT"):
            # RFC 3261 §20.17: SIP-date is always GMT (RFC 4475 §3.1.2.12).
            raise RemoteProtocolError("Bad Request - Date not in GMT")


def _tag_of(value: str, msg: Message, attr: str) -> str | None:
    """The tag parameter of a From/To value without a full parse when it has the
    usual ``...>;tag=x`` shape; anything unusual goes through the full parser."""
    gt = value.rfind(">")
    i = value.find(";tag=", gt + 1)
    if i < 0:
        if "tag" in value.lower():
            parsed = getattr(msg, attr)
            return parsed.tag if parsed is not None else None
        return None
    end = value.find(";", i + 5)
    tag = value[i + 5 : end] if end >= 0 else value[i + 5 :]
    return tag.strip() or None


class Request(Message):
    """A SIP request. ``uri`` is parsed; ``uri_text`` is what was on the request line."""

    __slots__ = ("method", "uri", "uri_text")

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        if isinstance(uri, str):
            self.uri_text = uri
            self.uri = parse_uri(uri, where="Request-URI")
        else:
            self.uri = uri
            self.uri_text = str(uri)

    def _start_line(self) -> str:
        return f"{self.method} {self.uri_text} SIP/2.0"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text} call_id={self.call_id!r} cseq={self.cseq}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("status", "reason")

    def __init__(
        self, status: int, reason: str, headers: Headers | None = None, body: bytes = b""
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def _start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} call_id={self.call_id!r} cseq={self.cseq} {self.cseq_method}>"


class PartialRequestError(RemoteProtocolError):
    """A request too broken to process, but with enough to answer (``request`` is set)."""

    def __init__(self, reason: str, status: int, request: Request) -> None:
        super().__init__(reason, status)
        self.request = request


def _split_head(data: bytes) -> tuple[bytes, bytes | None]:
    """Split header section and the rest at the empty line (CRLF CRLF, or LF LF).

    Without an empty line the rest is ``None``: the whole datagram is headers."""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4 :]
    end = data.find(b"\n\n")
    if end >= 0:
        return data[:end], data[end + 2 :]
    return data.rstrip(b"\r\n"), None


# Exact spellings seen on the wire -> canonical key (canonical, lower-case, compact).
_KNOWN_NAMES: dict[str, str] = {}
for _key, _display in CANONICAL.items():
    _KNOWN_NAMES[_display] = _key
    _KNOWN_NAMES[_key] = _key
for _short, _key in COMPACT.items():
    _KNOWN_NAMES[_short] = _key
    _KNOWN_NAMES[_short.upper()] = _key
_KNOWN_NAMES.update(
    {"Call-Id": "call-id", "Cseq": "cseq", "CSEQ": "cseq", "Www-Authenticate": "www-authenticate"}
)


def _parse_headers(lines: list[str]) -> tuple[Headers, str | None]:
    """The header fields, and the first fault found: a line that is not a header is
    skipped, so that a request broken there can still be answered (with the fault)."""
    headers = Headers()
    problem: str | None = None
    d = headers._d
    names = headers._names
    known = _KNOWN_NAMES
    current: list[str] | None = None
    for line in lines:
        name, sep, value = line.partition(":")
        # The usual spellings skip validation and lower(); a line starting with
        # whitespace, an empty line or an unknown name is never a known spelling.
        key = known.get(name)
        if key is None or not sep:
            if not line:
                continue
            if line[0] in " \t":
                # RFC 3261 §7.3.1 line folding: continuation replaced by one SP.
                if current is None:
                    problem = problem or "Bad Request - continuation line before any header"
                    continue
                current[-1] = current[-1] + " " + line.strip()
                continue
            if not sep:
                problem = problem or "Bad Request - header line without colon"
                current = None
                continue
            name = name.rstrip(" \t")
            if not TOKEN_RE.match(name):
                problem = problem or "Bad Request - bad header name"
                current = None
                continue
            key = name.lower()
            if len(key) == 1:
                key = COMPACT.get(key, key)
            elif key not in CANONICAL:
                names.setdefault(key, name)
        value = value.strip(" \t")
        current = d.get(key)
        if current is None:
            current = d[key] = [value]
        else:
            current.append(value)
    return headers, problem


def _content_length(headers: Headers) -> int | None:
    values = headers._d.get("content-length")
    if not values:
        return None
    if len(values) == 1 and len(values[0]) < 10 and _digits(values[0]):
        return int(values[0])
    texts = {v.strip() for v in values}
    if len(texts) > 1:
        raise RemoteProtocolError("Bad Request - conflicting Content-Length values")
    text = texts.pop()
    if not _digits(text):
        raise RemoteProtocolError("Bad Request - malformed Content-Length")
    text = text.lstrip("0") or "0"
    # no message is larger than a datagram: more digits than that only means "too large"
    return int(text) if len(text) < 10 else MAX_MESSAGE + 1


_PLACEHOLDER_URI = "sip:invalid.invalid"


def _request_from_line(start: str, headers: Headers) -> Request:
    """The Request of a Request-Line; a malformed line still yields a request that can be
    answered (RFC 4475 §3.1.2.7-11 expect 400), raised as :class:`PartialRequestError`."""
    parts = start.split(" ")
    uri: URI | None = None
    if len(parts) == 3 and parts[0] in METHODS and parts[2] == "SIP/2.0":
        # the usual line: a known method and a URI that parses without headers
        text = parts[1]
        if text and text[0] != "<":
            try:
                fast_uri = parse_uri(text, where="Request-URI")
            except RemoteProtocolError:
                pass  # the general path below names the fault
            else:
                if fast_uri.headers is None:
                    return Request(parts[0], fast_uri, headers)
    method = parts[0] if parts and TOKEN_RE.match(parts[0]) else "UNKNOWN"
    problem = None
    if len(parts) != 3 or not all(parts):
        problem = "Bad Request - malformed Request-Line"
    elif method == "UNKNOWN":
        problem = "Bad Request - bad method"
    elif parts[1].startswith("<"):
        problem = "Bad Request - Request-URI in <>"
    else:
        try:
            uri = parse_uri(parts[1], where="Request-URI")
        except RemoteProtocolError as exc:
            problem = exc.reason
        else:
            if uri.headers is not None:
                problem = "Bad Request - Request-URI carries headers"
    if problem is None and uri is not None:
        msg = Request(method, uri, headers)
        msg.uri_text = parts[1]
        return msg
    msg = Request(method, _PLACEHOLDER_URI, headers)
    with contextlib.suppress(RemoteProtocolError):
        msg._fill_routing_fields()
    raise PartialRequestError(problem or "Bad Request", 400, msg)


def parse_message(data: bytes, *, stream: bool = False) -> Request | Response:
    """Parse one message. Over a datagram transport (``stream=False``) a missing
    Content-Length means "the rest of the datagram" and octets beyond it are ignored
    (RFC 3261 §18.3; RFC 4475 §3.1.1.8, §3.4.1). Raises :class:`RemoteProtocolError`.
    """
    if data[:1] in (b"\r", b"\n"):
        # RFC 3261 §7.5: implementations SHOULD ignore CRLFs preceding the start line.
        data = data.lstrip(b"\r\n")
    head_bytes, rest_or_none = _split_head(data)
    rest = rest_or_none if rest_or_none is not None else b""
    head = head_bytes.decode("utf-8", "surrogateescape")
    crlfs = head.count("\r\n")
    if crlfs and crlfs == head.count("\n"):
        lines = head.split("\r\n")
    else:
        # bare LF line ends (or a mix): every LF ends a line, a CR before it goes
        lines = [line[:-1] if line[-1:] == "\r" else line for line in head.split("\n")]
    start = lines[0]
    headers, problem = _parse_headers(lines[1:])
    msg: Request | Response
    if start.startswith("SIP/"):
        if rest_or_none is None:
            raise RemoteProtocolError("Bad Response - no end of headers")
        parts = start.split(" ", 2)
        if len(parts) < 2 or parts[0] != "SIP/2.0":
            raise RemoteProtocolError("Bad Response - version", 505)
        code = parts[1]
        if len(code) != 3 or not _digits(code) or not 100 <= int(code) <= 699:
            raise RemoteProtocolError("Bad Response - status code out of range")
        msg = Response(int(code), parts[2] if len(parts) > 2 else "", headers)
        if problem is not None:
            raise RemoteProtocolError(problem.replace("Request", "Response"))
        msg._fill_routing_fields()
    else:
        msg = _request_from_line(start, headers)
        version = start.rsplit(" ", 1)[-1]
        if rest_or_none is None:
            # No empty line ends the headers (RFC 3261 §7): answerable, not processable.
            with contextlib.suppress(RemoteProtocolError):
                msg._fill_routing_fields()
            raise PartialRequestError("Bad Request - no end of headers", 400, msg)
        if version != "SIP/2.0":
            # Answer what we can: the response copies Via/From/To/Call-ID/CSeq as text.
            with contextlib.suppress(RemoteProtocolError):
                msg._fill_routing_fields()
            if version.startswith("SIP/"):
                raise PartialRequestError("Version Not Supported", 505, msg)
            raise PartialRequestError("Bad Request - malformed Request-Line", 400, msg)
        if problem is not None:
            with contextlib.suppress(RemoteProtocolError):
                msg._fill_routing_fields()
            raise PartialRequestError(problem, 400, msg)
        try:
            msg._fill_routing_fields()
        except RemoteProtocolError as exc:
            raise PartialRequestError(exc.reason, exc.status, msg) from None
    try:
        length = _content_length(headers)
    except RemoteProtocolError as exc:
        if isinstance(msg, Request):
            raise PartialRequestError(exc.reason, exc.status, msg) from None
        raise
    if length is None:
        if stream:
            raise RemoteProtocolError("Bad Request - Content-Length required on a stream")
        msg.body = rest
    elif length > len(rest):
        reason = "Bad Request - Content-Length larger than the body"
        if isinstance(msg, Request):
            raise PartialRequestError(reason, 400, msg)
        raise RemoteProtocolError(reason)
    else:
        msg.body = rest[:length]
    return msg


class StreamFramer:
    """Frames messages on a byte stream by Content-Length (RFC 3261 §18.3).

    ``feed(data)`` returns the complete messages (as bytes) now available. Keep-alive
    CRLFs (RFC 5626 §3.5.1) between messages are skipped. A framing error (no or bad
    Content-Length, a header section over the limit) raises :class:`RemoteProtocolError`:
    the connection can no longer be framed and must be closed.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while True:
            # skip keep-alives and stray CRLFs between messages
            i = 0
            while i < len(buf) and buf[i] in (13, 10):
                i += 1
            if i:
                del buf[:i]
            if not buf:
                return out
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_MESSAGE:
                    raise RemoteProtocolError("Bad Request - header section too large")
                return out
            head = bytes(buf[:end])
            length = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                key = name.strip().lower()
                if key in (b"content-length", b"l"):
                    text = value.strip()
                    if not text.isdigit() or len(text) > 9:
                        raise RemoteProtocolError("Bad Request - malformed Content-Length")
                    if length is not None and length != int(text):
                        raise RemoteProtocolError("Bad Request - conflicting Content-Length values")
                    length = int(text)
            if length is None:
                raise RemoteProtocolError("Bad Request - Content-Length required on a stream")
            total = end + 4 + length
            if total > MAX_MESSAGE:
                raise RemoteProtocolError("Bad Request - message too large")
            if len(buf) < total:
                return out
            out.append(bytes(buf[:total]))
            del buf[:total]


_COPIED_TO_RESPONSE = ("via", "from", "to", "call-id", "cseq")  # RFC 3261 §8.2.6.2


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """Build a response to ``request`` (RFC 3261 §8.2.6.2): Via, From, Call-ID and CSeq
    copied; To copied with ``to_tag`` added when it has none."""
    h = Headers()
    src = request.headers._d
    d = h._d
    for key in _COPIED_TO_RESPONSE:
        values = src.get(key)
        if values:
            d[key] = values.copy()
    to = request._to
    if to_tag and "to" in d:
        try:
            has_tag = request.to_tag is not None
        except RemoteProtocolError:  # a broken To still gets its answer (copied as text)
            has_tag = ";tag=" in d["to"][0].lower()
        if not has_tag:
            d["to"] = [d["to"][0] + ";tag=" + to_tag]
            to = None  # parsed again on demand, with its tag
    if status == 100 and "timestamp" in src:
        d["timestamp"] = list(src["timestamp"])  # RFC 3261 §8.2.6.1
    if headers:
        for name, value in headers:
            h.add(name, value)
    if content_type:
        h.set("Content-Type", content_type)
    resp = Response(status, reason or REASONS.get(status, "Unknown"), h, body)
    resp.vias = request.vias
    resp._from = request._from
    resp._to = to
    resp.call_id = request.call_id
    resp.cseq = request.cseq
    resp.cseq_method = request.cseq_method
    return resp


REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}
