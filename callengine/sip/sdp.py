"""SDP (RFC 4566) parse/serialize and the offer/answer model (RFC 3264) for audio.

Theory of operation: :meth:`SessionDescription.parse` turns a body into a
:class:`SessionDescription` of :class:`MediaDescription` entries (unknown
lines are kept and written back in their place class); :meth:`serialize`
writes RFC 4566 5 order. :func:`negotiate` is the answerer (RFC 3264 6): it
picks the first offered audio codec we support, keeps the offerer's payload
type numbers, adds telephone-event when offered, and mirrors the direction
(hold). :class:`SdpSession` owns our o= line: one session id per call and a
version that increases with each offer or answer we send (RFC 3264 8).
:func:`build_offer` and :func:`accept_answer` are the offerer's side.
Malformed SDP raises ``ValueError`` naming the line; a caller answering an
INVITE turns it into 400, and a ``None`` from :func:`negotiate` into 488.

Be liberal in what you accept (RFC 4566 5.13 and 6): only a description that cannot
be read at all (v=, o=, s=, c=) is an error. An attribute we cannot read (an
``a=rtpmap`` without clock rate, a bad ``a=ptime``, ``a=fmtp`` or ``a=rtcp``) is kept
as an unknown attribute and ignored; payload types that are not RTP numbers are never
chosen; an ``m=`` line with a port we cannot read is a stream we decline (port 0).
Whether anything usable is left is :func:`negotiate`'s answer (``None``: 488).
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from media.codecs import CODECS
from media.codecs.base import CodecInfo

# One generator per process: seeding a new Random from os.urandom costs ~70 us a call.
_RNG = random.Random()

__all__ = [
    "DIRECTIONS",
    "STATIC_PAYLOAD_TYPES",
    "Answer",
    "Connection",
    "MediaDescription",
    "Origin",
    "RtpMap",
    "SdpSession",
    "SessionDescription",
    "accept_answer",
    "build_offer",
    "negotiate",
]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

# RFC 3551 table 4: static audio payload types (encoding, clock rate, channels).
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    15: ("G728", 8000, 1),
    18: ("G729", 8000, 1),
}

_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


@dataclass(frozen=True, slots=True)
class Origin:
    """o= (RFC 4566 5.2)."""

    username: str
    session_id: int
    version: int
    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"

    def serialize(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """c= (RFC 4566 5.7). ``address`` excludes any TTL/count suffix (kept in ``suffix``)."""

    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"
    suffix: str = ""

    @property
    def is_hold(self) -> bool:
        """RFC 2543 hold: c=0.0.0.0 (RFC 3264 8.4 says treat as sendonly/inactive)."""
        return self.address in ("0.0.0.0", "::")

    def serialize(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}{self.suffix}"


@dataclass(frozen=True, slots=True)
class RtpMap:
    """a=rtpmap (RFC 4566 6): encoding name, clock rate, channels."""

    encoding: str
    clock_rate: int
    channels: int = 1

    def serialize(self) -> str:
        if self.channels != 1:
            return f"{self.encoding}/{self.clock_rate}/{self.channels}"
        return f"{self.encoding}/{self.clock_rate}"


@dataclass(slots=True)
class MediaDescription:
    """One m= section (RFC 4566 5.14) with its parsed audio attributes.

    ``attributes`` holds the a= lines other than rtpmap, fmtp, ptime and the
    direction, which have their own fields; ``other`` holds i=, b=, k= lines.
    """

    media: str
    port: int
    proto: str
    formats: list[str]
    connection: Connection | None = None
    rtpmap: dict[int, RtpMap] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    ptime: int | None = None
    direction: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)
    port_count: int | None = None

    @property
    def payload_types(self) -> list[int]:
        """The formats as payload type numbers (RTP profiles only)."""
        return [pt for pt in map(_payload_type, self.formats) if pt is not None]

    def codec_of(self, pt: int) -> RtpMap | None:
        """rtpmap for ``pt``, or the RFC 3551 static assignment."""
        if pt in self.rtpmap:
            return self.rtpmap[pt]
        static = STATIC_PAYLOAD_TYPES.get(pt)
        return RtpMap(*static) if static else None

    def attribute(self, name: str) -> str | None:
        """The value of the first a=name (``""`` for a flag); ``None`` if absent."""
        for key, value in self.attributes:
            if key == name:
                return value if value is not None else ""
        return None


@dataclass(slots=True)
class SessionDescription:
    """A whole SDP body (RFC 4566 5)."""

    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    timing: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    direction: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)
    version: int = 0

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse an SDP body; raise ``ValueError`` naming the offending line."""
        # RFC 4566 5: text fields may be in another charset (a=charset): keep the octets
        text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
        lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
        if not lines:
            raise ValueError("SDP is empty")
        origin: Origin | None = None
        session_name: str | None = None
        version: int | None = None
        connection: Connection | None = None
        timing: list[tuple[int, int]] = []
        direction: str | None = None
        attributes: list[tuple[str, str | None]] = []
        other: list[tuple[str, str]] = []
        media: list[MediaDescription] = []
        current: MediaDescription | None = None
        for number, line in enumerate(lines, 1):
            if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
                raise ValueError(f"SDP line {number}: expected '<type>=<value>', got {line!r}")
            kind, value = line[0], line[2:].strip()
            if number == 1 and kind != "v":
                raise ValueError("SDP line 1: must be v=0")
            if kind == "v":
                if number != 1 or value != "0":
                    raise ValueError(f"SDP line {number}: unsupported version v={value}")
                version = 0
            elif kind == "o":
                origin = _parse_origin(value, number)
            elif kind == "s":
                session_name = value
            elif kind == "c":
                conn = _parse_connection(value, number)
                if current is None:
                    connection = conn
                else:
                    current.connection = conn
            elif kind == "t":
                parts = value.split()
                times = [_number(p, 20) for p in parts]
                if len(times) == 2 and times[0] is not None and times[1] is not None:
                    timing.append((times[0], times[1]))
                # else: ignored, the answer says t=0 0 (RFC 3264 5)
            elif kind == "m":
                current = _parse_media(value, number)
                media.append(current)
            elif kind == "a":
                name, sep, attr_value = value.partition(":")
                parsed_value = attr_value if sep else None
                if current is None:
                    if name in DIRECTIONS and not sep:
                        direction = name
                    else:
                        attributes.append((name, parsed_value))
                else:
                    _media_attribute(current, name, parsed_value, number)
            elif current is None:
                other.append((kind, value))
            else:
                current.other.append((kind, value))
        if version is None:
            raise ValueError("SDP has no v= line")
        if origin is None:
            raise ValueError("SDP has no o= line")
        if session_name is None:
            raise ValueError("SDP has no s= line")
        for index, m in enumerate(media):
            if m.connection is None and connection is None and m.port != 0:
                raise ValueError(f"SDP media {index} ({m.media}) has no c= line and no session c=")
        return cls(
            origin=origin,
            session_name=session_name,
            connection=connection,
            timing=timing or [(0, 0)],
            direction=direction,
            attributes=attributes,
            media=media,
            other=other,
            version=0,
        )

    def serialize(self) -> bytes:
        """RFC 4566 5 order, CRLF line ends."""
        out = ["v=0", f"o={self.origin.serialize()}", f"s={self.session_name or '-'}"]
        out += [f"{k}={v}" for k, v in self.other if k in "iuep"]
        if self.connection is not None:
            out.append(f"c={self.connection.serialize()}")
        out += [f"{k}={v}" for k, v in self.other if k == "b"]
        out += [f"t={start} {stop}" for start, stop in self.timing]
        out += [f"{k}={v}" for k, v in self.other if k not in "iuepb"]
        if self.direction is not None:
            out.append(f"a={self.direction}")
        out += [_attr(name, value) for name, value in self.attributes]
        for m in self.media:
            port = f"{m.port}/{m.port_count}" if m.port_count else str(m.port)
            out.append(f"m={m.media} {port} {m.proto} {' '.join(m.formats)}".rstrip())
            out += [f"{k}={v}" for k, v in m.other if k == "i"]
            if m.connection is not None:
                out.append(f"c={m.connection.serialize()}")
            out += [f"{k}={v}" for k, v in m.other if k != "i"]
            for fmt in m.formats:
                pt = _payload_type(fmt)
                if pt is not None:
                    if pt in m.rtpmap:
                        out.append(f"a=rtpmap:{pt} {m.rtpmap[pt].serialize()}")
                    if pt in m.fmtp:
                        out.append(f"a=fmtp:{pt} {m.fmtp[pt]}")
            if m.ptime is not None:
                out.append(f"a=ptime:{m.ptime}")
            out += [_attr(name, value) for name, value in m.attributes]
            if m.direction is not None:
                out.append(f"a={m.direction}")
        return ("\r\n".join(out) + "\r\n").encode("utf-8", "surrogateescape")

    def __bytes__(self) -> bytes:
        return self.serialize()

    def media_connection(self, index: int) -> Connection | None:
        """The c= that applies to media ``index`` (media level over session level)."""
        m = self.media[index]
        return m.connection or self.connection

    def media_direction(self, index: int) -> str:
        """Effective direction of media ``index`` (media a=, session a=, sendrecv;
        c=0.0.0.0 counts as sendonly - RFC 3264 8.4 legacy hold)."""
        m = self.media[index]
        direction = m.direction or self.direction or "sendrecv"
        conn = self.media_connection(index)
        if conn is not None and conn.is_hold and direction == "sendrecv":
            return "sendonly"
        return direction


def _number(text: str, max_digits: int) -> int | None:
    """ASCII digits of at most ``max_digits`` as an int (``str.isdigit`` also accepts
    "²", which ``int`` refuses; a huge digit string would exceed ``int``'s limit)."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def _payload_type(fmt: str) -> int | None:
    """An RTP payload type number (0-127), or ``None``."""
    pt = _number(fmt, 3)
    return pt if pt is not None and pt <= 127 else None


def _attr(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


_DOTTED_QUAD = re.compile(
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}\Z"
)


def _check_address(addrtype: str, address: str, number: int) -> None:
    if addrtype == "IP4" and _DOTTED_QUAD.match(address):
        return  # the common case, without ipaddress's cost
    try:
        if addrtype == "IP4":
            ipaddress.IPv4Address(address)
        elif addrtype == "IP6":
            ipaddress.IPv6Address(address)
    except ValueError:
        # RFC 4566 allows FQDNs in c=/o=; reject only what cannot be a name.
        if not address or any(ch in address for ch in " /\\\x00") or address.count(":") > 0:
            raise ValueError(f"SDP line {number}: invalid {addrtype} address {address!r}") from None


def _parse_origin(value: str, number: int) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise ValueError(f"SDP line {number}: o= needs 6 fields, got {len(parts)}")
    username, sess_id, sess_version, nettype, addrtype, address = parts
    session_id = _number(sess_id, 64)
    version = _number(sess_version, 64)
    if session_id is None or version is None:
        raise ValueError(f"SDP line {number}: o= session id and version must be numeric")
    return Origin(username, session_id, version, address, nettype, addrtype)


def _parse_connection(value: str, number: int) -> Connection:
    parts = value.split()
    if len(parts) != 3:
        raise ValueError(f"SDP line {number}: c= needs 3 fields, got {len(parts)}")
    nettype, addrtype, address = parts
    if nettype != "IN":
        raise ValueError(f"SDP line {number}: unsupported network type {nettype!r}")
    if addrtype not in ("IP4", "IP6"):
        raise ValueError(f"SDP line {number}: unsupported address type {addrtype!r}")
    suffix = ""
    if addrtype == "IP4" and "/" in address:
        address, _, rest = address.partition("/")
        suffix = "/" + rest
    _check_address(addrtype, address, number)
    return Connection(address, nettype, addrtype, suffix)


def _parse_media(value: str, number: int) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise ValueError(f"SDP line {number}: m= needs media, port and proto")
    media, port_text, proto = parts[0], parts[1], parts[2]
    port_count = None
    if "/" in port_text:
        port_text, _, count_text = port_text.partition("/")
        port_count = _number(count_text, 5)  # unreadable: ignored (one port)
    port = _number(port_text, 5)
    if port is None or port > 65535:
        port = 0  # a stream we cannot address: declined in the answer (RFC 3264 6)
    # RTP formats that are not payload type numbers are never chosen (payload_types)
    return MediaDescription(media, port, proto, parts[3:], port_count=port_count)


def _media_attribute(m: MediaDescription, name: str, value: str | None, number: int) -> None:
    # An attribute we cannot read is kept as an unknown one and ignored (RFC 4566 5.13).
    if name == "rtpmap" and value is not None:
        pt_text, _, spec = value.partition(" ")
        pieces = spec.strip().split("/")
        pt = _payload_type(pt_text)
        rate = _number(pieces[1], 9) if len(pieces) >= 2 else None
        channels = _number(pieces[2], 3) if len(pieces) > 2 else 1
        if pt is not None and rate and channels and pieces[0] and len(pieces) <= 3:
            m.rtpmap[pt] = RtpMap(pieces[0], rate, channels)
        else:
            m.attributes.append((name, value))  # e.g. "31 LPC": no clock rate
    elif name == "fmtp" and value is not None:
        pt_text, _, params = value.partition(" ")
        pt = _payload_type(pt_text)
        if pt is not None:
            m.fmtp[pt] = params.strip()
        else:
            m.attributes.append((name, value))
    elif name == "ptime" and value is not None:
        whole, _, fraction = value.strip().partition(".")
        ptime = _number(whole, 4)
        if ptime is not None and 0 < ptime <= 1000 and (not fraction or fraction.isdigit()):
            m.ptime = ptime
        else:
            m.attributes.append((name, value))
    elif name in DIRECTIONS and value is None:
        m.direction = name
    else:
        m.attributes.append((name, value))


class SdpSession:
    """Our side of one SDP session: a fixed session id and a version that goes
    up by one with every offer or answer we generate (RFC 3264 8)."""

    def __init__(
        self,
        address: str,
        *,
        username: str = "callengine",
        session_id: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or _RNG
        self.address = address
        self.username = username
        self.session_id = session_id if session_id is not None else rng.getrandbits(62)
        self.version = self.session_id
        self._first = True

    def next_origin(self) -> Origin:
        """The o= for the next description we send."""
        if self._first:
            self._first = False
        else:
            self.version += 1
        addrtype = "IP6" if ":" in self.address else "IP4"
        return Origin(self.username, self.session_id, self.version, self.address, "IN", addrtype)


@dataclass(frozen=True, slots=True)
class Answer:
    """The negotiated audio stream (from :func:`negotiate` or :func:`accept_answer`).

    ``codecs`` are the accepted codecs with the payload types to use on the wire
    (``codec`` is the first: the one we send); ``direction`` is our direction;
    ``remote_address``/``remote_port`` is where to send RTP (``remote_port`` 0
    or ``hold`` means do not send).
    """

    codec: CodecInfo
    codecs: tuple[CodecInfo, ...]
    telephone_event: CodecInfo | None
    remote_address: str
    remote_port: int
    remote_rtcp_port: int
    direction: str
    remote_direction: str
    media_index: int
    ptime: int | None = None
    offer: SessionDescription | None = field(default=None, compare=False, repr=False)

    @property
    def telephone_event_pt(self) -> int | None:
        return self.telephone_event.payload_type if self.telephone_event else None

    @property
    def on_hold(self) -> bool:
        """True when we must not send media (peer put us on hold, or inactive)."""
        return self.direction in ("recvonly", "inactive")

    @property
    def peer_sends(self) -> bool:
        """True when the peer will send media (arms the RTP inactivity timer)."""
        return self.remote_direction in ("sendrecv", "sendonly")

    def to_sdp(self, session: SdpSession, *, address: str, port: int) -> SessionDescription:
        """Our answer body. Rejected streams of the offer are answered with port 0."""
        if self.offer is None:
            raise ValueError("answer has no offer to mirror")
        addrtype = "IP6" if ":" in address else "IP4"
        media: list[MediaDescription] = []
        for index, offered in enumerate(self.offer.media):
            if index != self.media_index:
                # RFC 3264 6: a rejected stream keeps its m= line with port 0.
                media.append(
                    MediaDescription(offered.media, 0, offered.proto, offered.formats[:1] or ["0"])
                )
                continue
            media.append(
                _media_for(self.codecs, self.telephone_event, port, self.direction, self.ptime)
            )
        return SessionDescription(
            origin=session.next_origin(),
            connection=Connection(address, "IN", addrtype),
            media=media,
        )


def _media_for(
    codecs: Sequence[CodecInfo],
    telephone_event: CodecInfo | None,
    port: int,
    direction: str,
    ptime: int | None,
) -> MediaDescription:
    m = MediaDescription("audio", port, "RTP/AVP", [])
    for codec in [*codecs, *([telephone_event] if telephone_event else [])]:
        m.formats.append(str(codec.payload_type))
        m.rtpmap[codec.payload_type] = RtpMap(codec.name, codec.clock_rate, codec.channels)
        if codec.fmtp:
            m.fmtp[codec.payload_type] = codec.fmtp
    m.ptime = ptime
    m.direction = direction
    return m


def _match(rtpmap: RtpMap, codec: CodecInfo) -> bool:
    return (
        rtpmap.encoding.lower() == codec.name.lower()
        and rtpmap.clock_rate == codec.clock_rate
        and rtpmap.channels == codec.channels
    )


def _select(
    m: MediaDescription, local_codecs: Sequence[CodecInfo]
) -> tuple[list[CodecInfo], CodecInfo | None]:
    audio = [c for c in local_codecs if not c.is_dtmf]
    accepted: list[CodecInfo] = []
    for pt in m.payload_types:
        rtpmap = m.codec_of(pt)
        if rtpmap is None:
            continue
        for codec in audio:
            if _match(rtpmap, codec) and all(a.name != codec.name for a in accepted):
                fmtp = m.fmtp.get(pt, codec.fmtp)
                accepted.append(replace(codec.with_payload_type(pt), fmtp=fmtp))
                break
    events: dict[int, int] = {}  # clock rate -> telephone-event PT (first offered)
    for pt in m.payload_types:
        rtpmap = m.codec_of(pt)
        if rtpmap and rtpmap.encoding.lower() == "telephone-event":
            events.setdefault(rtpmap.clock_rate, pt)
    telephone_event: CodecInfo | None = None
    with_events = [c for c in accepted if c.clock_rate in events]
    if with_events:
        # An IVR needs DTMF: RFC 4733 events must share the audio clock rate,
        # so prefer the first codec for which the offer has telephone-event.
        first = with_events[0]
        accepted.remove(first)
        accepted.insert(0, first)
        pt = events[first.clock_rate]
        rate = first.clock_rate
        telephone_event = CodecInfo("telephone-event", pt, rate, rate, fmtp=m.fmtp.get(pt, "0-16"))
    return accepted, telephone_event


def negotiate(
    offer: SessionDescription,
    local_codecs: Sequence[CodecInfo],
    *,
    local_direction: str = "sendrecv",
) -> Answer | None:
    """Answer an offer (RFC 3264 6). ``None`` means no acceptable audio: reply 488.

    The first audio stream with a port and a codec in common is accepted; the
    offerer's preference order and payload type numbers are kept, except that
    a codec with a telephone-event at its clock rate is moved first when the
    offer has one (DTMF over RTP needs it). The answer's
    direction mirrors the offer (sendonly -> recvonly, recvonly -> sendonly,
    inactive -> inactive; c=0.0.0.0 is treated as sendonly), restricted by
    ``local_direction`` (our own hold).
    """
    for index, m in enumerate(offer.media):
        if m.media != "audio" or m.port == 0 or "RTP/" not in m.proto:
            continue
        codecs, telephone_event = _select(m, local_codecs)
        if not codecs:
            continue
        conn = offer.media_connection(index)
        assert conn is not None  # parse() guarantees a c= for ports != 0
        remote_direction = offer.media_direction(index)
        direction = _combine(_ANSWER_DIRECTION[remote_direction], local_direction)
        port = m.port
        rtcp_port = port + 1 if port < 65535 else port
        rtcp = m.attribute("rtcp")
        if rtcp and rtcp.split():
            first = _number(rtcp.split()[0], 5)
            if first is not None and 0 < first <= 65535:
                rtcp_port = first
        return Answer(
            codec=codecs[0],
            codecs=tuple(codecs),
            telephone_event=telephone_event,
            remote_address=conn.address,
            remote_port=port,
            remote_rtcp_port=rtcp_port,
            direction=direction,
            remote_direction=remote_direction,
            media_index=index,
            ptime=m.ptime,
            offer=offer,
        )
    return None


def _combine(answer_direction: str, local_direction: str) -> str:
    # Intersect what the offer allows with what we want (RFC 3264 6.1).
    send = answer_direction in ("sendrecv", "sendonly") and local_direction in (
        "sendrecv",
        "sendonly",
    )
    recv = answer_direction in ("sendrecv", "recvonly") and local_direction in (
        "sendrecv",
        "recvonly",
    )
    return {
        (True, True): "sendrecv",
        (True, False): "sendonly",
        (False, True): "recvonly",
        (False, False): "inactive",
    }[(send, recv)]


def build_offer(
    session: SdpSession,
    codecs: Sequence[CodecInfo],
    *,
    address: str,
    port: int,
    direction: str = "sendrecv",
    telephone_event: CodecInfo | None = None,
    ptime: int | None = 20,
) -> SessionDescription:
    """An offer for a UAC (or a re-INVITE: hold with ``direction="sendonly"``)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"invalid SDP direction {direction!r}")
    audio = [c for c in codecs if not c.is_dtmf]
    if not audio:
        raise ValueError("an offer needs at least one audio codec")
    addrtype = "IP6" if ":" in address else "IP4"
    return SessionDescription(
        origin=session.next_origin(),
        connection=Connection(address, "IN", addrtype),
        media=[_media_for(audio, telephone_event, port, direction, ptime)],
    )


def accept_answer(offer: SessionDescription, answer: SessionDescription) -> Answer | None:
    """The offerer's view of the peer's answer (RFC 3264 7). ``None``: no usable audio."""
    if len(answer.media) != len(offer.media):
        raise ValueError(
            f"SDP answer has {len(answer.media)} media lines, the offer had {len(offer.media)}"
        )
    for index, m in enumerate(answer.media):
        if m.media != "audio" or m.port == 0:
            continue
        offered = offer.media[index]
        local: list[CodecInfo] = []
        for pt in offered.payload_types:
            rtpmap = offered.codec_of(pt)
            if rtpmap is None or rtpmap.encoding.lower() == "telephone-event":
                continue
            known = CODECS.get(rtpmap.encoding.upper())
            if known is not None and _match(rtpmap, known):
                local.append(known.with_payload_type(pt))
            else:
                local.append(
                    CodecInfo(
                        rtpmap.encoding, pt, rtpmap.clock_rate, rtpmap.clock_rate, rtpmap.channels
                    )
                )
        result = negotiate(
            SessionDescription(
                origin=answer.origin,
                connection=answer.connection,
                media=[m],
                direction=answer.direction,
            ),
            local,
            local_direction=offered.direction or offer.direction or "sendrecv",
        )
        if result is None:
            continue
        return replace(result, media_index=index, offer=answer)
    return None
