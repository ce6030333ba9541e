"""The worker dispatch of ``callengine serve --workers N``: sans-IO, no sockets.

A multi-worker node has one front process that owns the SIP addresses and N worker
processes that hold the transactions, dialogs, calls and media. The front reads each
message only far enough to choose its worker:

- every message of a dialog and of a transaction carries the same Call-ID (RFC 3261
  §8.1.1.4, §17.1.3, §17.2.3), so hashing the Call-ID sends a whole call to one worker,
  whatever the peer's address (one proxy or carrier gateway may carry every call);
- a REGISTER goes by its address-of-record (the To URI) instead: all the bindings of an
  AOR then change in one worker (no two workers racing over one AOR's contact list), and
  the digest challenge and its answer meet the same nonce registry even when a phone
  changes its Call-ID between them.

A message without a readable Call-ID (garbage, a keep-alive) goes to worker 0, which
answers or counts it like any worker would.

The hash is CRC-32, not Python's ``hash`` (randomised per process): the front and the
workers must agree (a worker uses :func:`aor_worker` to know which AORs it is the home
of). The wire format between front and workers is here too: a small text header, then
the message bytes, and length-prefixed pickles for the control channel (both ends are
this program, on a socketpair, never the network).
"""

from __future__ import annotations

import pickle
import re
import secrets
import struct
import zlib
from typing import Any

__all__ = [
    "CONTROL",
    "FrameReader",
    "aor_worker",
    "call_id_for",
    "call_id_of",
    "choose_worker",
    "frame",
    "initial_invite",
    "pack_inbound",
    "pack_control",
    "pack_outbound",
    "register_aor_of",
    "unpack_control",
    "unpack_inbound",
    "unpack_outbound",
]

# Header names are case-insensitive and may be compact (RFC 3261 §7.3.3); the exact
# spelling almost every stack sends is tried first with bytes.find (no regex on the
# fast path). The regexes are line-anchored and cannot backtrack beyond one line.
_CALL_ID_RE = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*([^\s]+)")
_TO_RE = re.compile(rb"(?im)^(?:to|t)[ \t]*:[^\r\n]*?sips?:([^>;?\s]+)")
_HEAD_END = b"\r\n\r\n"


def _headers(data: bytes) -> bytes:
    end = data.find(_HEAD_END)
    return data if end < 0 else data[: end + 2]


def call_id_of(data: bytes) -> bytes | None:
    """The Call-ID of a SIP message, or ``None`` when it has none that can be read."""
    head = _headers(data)
    at = head.find(b"\nCall-ID:")
    if at >= 0:
        start = at + 9
        end = head.find(b"\r", start)
        value = head[start:end] if end >= 0 else head[start:]
        value = value.strip()
        return value or None
    m = _CALL_ID_RE.search(head)
    return m.group(1) if m else None


def initial_invite(data: bytes) -> bool:
    """True when an INVITE's To header has no tag (a new call, not a re-INVITE); a few
    microseconds, without parsing the message. What an overloaded node drops unread."""
    end = data.find(b"\r\n\r\n")
    head = (data if end < 0 else data[:end]).lower()
    at = head.find(b"\nto:")
    if at < 0:
        at = head.find(b"\nt:")
        if at < 0:
            return True
    line_end = head.find(b"\n", at + 1)
    return b"tag=" not in head[at : line_end if line_end > 0 else len(head)]


def register_aor_of(data: bytes) -> bytes | None:
    """``user@host`` of a REGISTER's To URI (lower-cased host), or ``None``."""
    m = _TO_RE.search(_headers(data))
    if m is None:
        return None
    user, at, host = m.group(1).rpartition(b"@")
    return (user + at + host.lower()) if at else host.lower()


def aor_worker(aor: str, workers: int) -> int:
    """The worker whose registrar owns ``aor`` (``user@host``)."""
    user, at, host = aor.rpartition("@")
    key = (user + at + host.lower()).encode("utf-8", "surrogatepass")
    return zlib.crc32(key) % workers


def choose_worker(data: bytes, workers: int) -> int:
    """The worker (0..workers-1) a message from the network goes to."""
    if workers <= 1:
        return 0
    if data.startswith(b"REGISTER "):
        aor = register_aor_of(data)
        if aor is not None:
            return zlib.crc32(aor) % workers
    call_id = call_id_of(data)
    if call_id is None:
        return 0
    return zlib.crc32(call_id) % workers


def call_id_for(index: int, workers: int, host: str) -> str:
    """A new random Call-ID that :func:`choose_worker` sends to worker ``index``: the
    responses to a request a worker starts come back to it (``workers`` tries on
    average, each a CRC-32 of 30 bytes)."""
    while True:
        call_id = f"{secrets.token_hex(12)}@{host}"
        if zlib.crc32(call_id.encode()) % workers == index:
            return call_id


# ------------------------------------------------------------------ data channel
# front -> worker: b"TRANSPORT SRCHOST SRCPORT LOCALHOST LOCALPORT\n" + message
# worker -> front: b"TRANSPORT DESTHOST DESTPORT\n" + message (stream transports only:
# UDP leaves the worker directly through its copy of the listening socket)


def pack_inbound(
    data: bytes, source: tuple[str, int], transport: str, local: tuple[str, int]
) -> bytes:
    return (
        b"%s %s %d %s %d\n"
        % (
            transport.encode(),
            source[0].encode(),
            source[1],
            local[0].encode(),
            local[1],
        )
        + data
    )


def unpack_inbound(msg: bytes) -> tuple[bytes, tuple[str, int], str, tuple[str, int]]:
    nl = msg.index(b"\n")
    transport, host, port, lhost, lport = msg[:nl].split(b" ")
    return (
        msg[nl + 1 :],
        (host.decode(), int(port)),
        transport.decode(),
        (lhost.decode(), int(lport)),
    )


def pack_outbound(data: bytes, dest: tuple[str, int], transport: str) -> bytes:
    return b"%s %s %d\n" % (transport.encode(), dest[0].encode(), dest[1]) + data


def unpack_outbound(msg: bytes) -> tuple[bytes, tuple[str, int], str]:
    nl = msg.index(b"\n")
    transport, host, port = msg[:nl].split(b" ")
    return msg[nl + 1 :], (host.decode(), int(port)), transport.decode()


# A datagram of the data channel that starts with NUL (no SIP message does) carries a
# pickled control message instead: the registrations, which must stay in order with
# the SIP messages (a phone's REGISTER answered by one worker, then a call for it
# handed to another: the binding is ahead of the INVITE on that worker's channel).
CONTROL = b"\x00"


def pack_control(obj: Any) -> bytes:
    return CONTROL + pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_control(msg: bytes) -> Any:
    return pickle.loads(msg[1:])


# --------------------------------------------------------------- control channel
_LEN = struct.Struct("!I")


def frame(obj: Any) -> bytes:
    """One control message: 4-byte length, then a pickle."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Reassembles :func:`frame` messages from a byte stream."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out: list[Any] = []
        while len(buf) >= 4:
            (n,) = _LEN.unpack_from(buf)
            if len(buf) < 4 + n:
                break
            out.append(pickle.loads(bytes(buf[4 : 4 + n])))
            del buf[: 4 + n]
        return out
