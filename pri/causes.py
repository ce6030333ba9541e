"""Q.850 cause <-> SIP status mapping (RFC 3398) and the Reason header (RFC 3326).

One table, ``CAUSE_TABLE``, holds both directions of RFC 3398:

- ``Direction.Q850_TO_SIP``: RFC 3398 §7.2.4.1 "ISDN Cause Code to Status Code
  Mapping" -- the status a gateway sends upstream when the PSTN releases the call.
- ``Direction.SIP_TO_Q850``: RFC 3398 §8.2.6.1 "SIP Status Code to ISDN Cause Code
  Mapping" -- the cause a gateway puts in its REL when a SIP response rejects it.

Where the RFC gives no fixed value (cause 16; statuses 487, 488, 606) the row says
so (``rfc_value is None``) and carries the value this project uses instead, with
the reason in ``note``. Rows not in RFC 3398 are never added: lookups of codes
outside the table use the RFC's own default rules (see ``cause_for_status`` and
``status_for_cause``).

The Reason header parser never raises: it is fed network input (DESIGN.md
principle 4) and returns ``None`` (or an empty tuple) for anything malformed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "CAUSE_TABLE",
    "CAUSE_TEXT",
    "CauseMapping",
    "Direction",
    "Reason",
    "cause_for_status",
    "format_reason",
    "parse_reason",
    "parse_reasons",
    "q850_cause",
    "status_for_cause",
]


class Direction(enum.Enum):
    """Which way a row of ``CAUSE_TABLE`` maps."""

    Q850_TO_SIP = "q850->sip"  # RFC 3398 §7.2.4.1
    SIP_TO_Q850 = "sip->q850"  # RFC 3398 §8.2.6.1


@dataclass(frozen=True, slots=True)
class CauseMapping:
    """One row of the RFC 3398 mapping.

    ``source`` is the code mapped from (a Q.850 cause or a SIP status, per
    ``direction``); ``rfc_value`` is what RFC 3398 recommends (``None`` where the
    RFC gives no fixed value); ``value`` is what this module returns, equal to
    ``rfc_value`` unless ``note`` explains the project's choice.
    """

    direction: Direction
    source: int
    rfc_value: int | None
    value: int | None
    note: str = ""


_Q2S: Final = Direction.Q850_TO_SIP
_S2Q: Final = Direction.SIP_TO_Q850


def _row(direction: Direction, source: int, value: int | None, note: str = "") -> CauseMapping:
    return CauseMapping(direction, source, value, value, note)


CAUSE_TABLE: Final[tuple[CauseMapping, ...]] = (
    # RFC 3398 §7.2.4.1, ISUP cause value -> SIP response.
    # Normal event
    _row(_Q2S, 1, 404),
    _row(_Q2S, 2, 404),
    _row(_Q2S, 3, 404),
    _row(_Q2S, 16, None, "§7.2.4.1 (*): normal clearing results in BYE or CANCEL, not a response"),
    _row(_Q2S, 17, 486),
    _row(_Q2S, 18, 408),
    _row(_Q2S, 19, 480),
    _row(_Q2S, 20, 480),
    _row(_Q2S, 21, 403, "§7.2.4.1 (+): 603 when the cause location is 'user'"),
    _row(_Q2S, 22, 410, "§7.2.4.1: 301 when a diagnostic carries the new number"),
    _row(_Q2S, 23, 410),
    _row(_Q2S, 26, 404, "§7.2.4.1 (=): ANSI procedure"),
    _row(_Q2S, 27, 502),
    _row(_Q2S, 28, 484),
    _row(_Q2S, 29, 501),
    _row(_Q2S, 31, 480),
    # Resource unavailable
    _row(_Q2S, 34, 503),
    _row(_Q2S, 38, 503),
    _row(_Q2S, 41, 503),
    _row(_Q2S, 42, 503),
    _row(_Q2S, 47, 503),
    # Service or option not available
    _row(_Q2S, 55, 403),
    _row(_Q2S, 57, 403),
    _row(_Q2S, 58, 503),
    # Service or option not implemented
    _row(_Q2S, 65, 488),
    _row(_Q2S, 70, 488),
    _row(_Q2S, 79, 501),
    # Invalid message
    _row(_Q2S, 87, 403),
    _row(_Q2S, 88, 503),
    # Protocol error
    _row(_Q2S, 102, 504),
    _row(_Q2S, 111, 500),
    # Interworking
    _row(_Q2S, 127, 500),
    # RFC 3398 §8.2.6.1, SIP response received -> cause value in the REL.
    _row(_S2Q, 400, 41),
    _row(_S2Q, 401, 21, "§8.2.6.1 (*): only after the gateway failed to authenticate"),
    _row(_S2Q, 402, 21),
    _row(_S2Q, 403, 21),
    _row(_S2Q, 404, 1),
    _row(_S2Q, 405, 63),
    _row(_S2Q, 406, 79),
    _row(_S2Q, 407, 21, "§8.2.6.1 (*): only after the gateway failed to authenticate"),
    _row(_S2Q, 408, 102),
    _row(_S2Q, 410, 22),
    _row(_S2Q, 413, 127),
    _row(_S2Q, 414, 127),
    _row(_S2Q, 415, 79),
    _row(_S2Q, 416, 127),
    _row(_S2Q, 420, 127),
    _row(_S2Q, 421, 127),
    _row(_S2Q, 423, 127),
    _row(_S2Q, 480, 18),
    _row(_S2Q, 481, 41),
    _row(_S2Q, 482, 25),
    _row(_S2Q, 483, 25),
    _row(_S2Q, 484, 28),
    _row(_S2Q, 485, 1),
    _row(_S2Q, 486, 17),
    CauseMapping(
        _S2Q,
        487,
        None,
        16,
        "§8.2.6.1 gives no mapping; a 487 answers our own CANCEL, "
        "which §8.2.6.1 maps to 16 normal clearing",
    ),
    CauseMapping(
        _S2Q,
        488,
        None,
        127,
        "§8.2.6.1 maps by Warning header; without Warning parsing: 127 interworking",
    ),
    _row(_S2Q, 500, 41),
    _row(_S2Q, 501, 79),
    _row(_S2Q, 502, 38),
    _row(_S2Q, 503, 41),
    _row(_S2Q, 504, 102),
    _row(_S2Q, 505, 127, "RFC 3398 text misprints this row as '504 Version not supported'"),
    _row(_S2Q, 513, 127),
    _row(_S2Q, 600, 17),
    _row(_S2Q, 603, 21),
    _row(_S2Q, 604, 1),
    CauseMapping(
        _S2Q,
        606,
        None,
        127,
        "§8.2.6.1 maps by Warning header; without Warning parsing: 127 interworking",
    ),
)

_Q850_TO_SIP: Final[Mapping[int, int | None]] = MappingProxyType(
    {row.source: row.value for row in CAUSE_TABLE if row.direction is _Q2S}
)
_SIP_TO_Q850: Final[Mapping[int, int]] = MappingProxyType(
    {row.source: row.value for row in CAUSE_TABLE if row.direction is _S2Q and row.value}
)

# ITU-T Q.850 Table 1 cause names, used for the Reason header's text.
CAUSE_TEXT: Final[Mapping[int, str]] = MappingProxyType(
    {
        1: "Unallocated (unassigned) number",
        2: "No route to specified transit network",
        3: "No route to destination",
        16: "Normal call clearing",
        17: "User busy",
        18: "No user responding",
        19: "No answer from user (user alerted)",
        20: "Subscriber absent",
        21: "Call rejected",
        22: "Number changed",
        23: "Redirection to new destination",
        25: "Exchange routing error",
        26: "Non-selected user clearing",
        27: "Destination out of order",
        28: "Invalid number format (address incomplete)",
        29: "Facility rejected",
        31: "Normal, unspecified",
        34: "No circuit/channel available",
        38: "Network out of order",
        41: "Temporary failure",
        42: "Switching equipment congestion",
        47: "Resource unavailable, unspecified",
        55: "Incoming calls barred within CUG",
        57: "Bearer capability not authorized",
        58: "Bearer capability not presently available",
        63: "Service or option not available, unspecified",
        65: "Bearer capability not implemented",
        69: "Requested facility not implemented",
        70: "Only restricted digital information bearer capability is available",
        79: "Service or option not implemented, unspecified",
        87: "User not member of CUG",
        88: "Incompatible destination",
        95: "Invalid message, unspecified",
        102: "Recovery on timer expiry",
        111: "Protocol error, unspecified",
        127: "Interworking, unspecified",
    }
)

# §8.2.6.1: "Any SIP status codes not listed below ... should be mapping to cause
# code 31 'Normal, unspecified'".
_DEFAULT_CAUSE: Final = 31
# No row and no class default (classes 3 and 5 have none in §7.2.4.1): treat as
# interworking, 127 -> 500.
_DEFAULT_STATUS: Final = 500


def cause_for_status(status: int) -> int:
    """Return the Q.850 cause for a final SIP status (RFC 3398 §8.2.6.1).

    Statuses not in the table map to 31 "Normal, unspecified", as §8.2.6.1
    says. 2xx and 1xx are not failures; they map to 16 "Normal call clearing"
    (§8.2.6.1: the BYE that later ends an answered call maps to 16).
    """
    if status < 300:
        return 16
    return _SIP_TO_Q850.get(status, _DEFAULT_CAUSE)


def status_for_cause(cause: int, *, location_user: bool = False) -> int | None:
    """Return the SIP status for a Q.850 cause (RFC 3398 §7.2.4.1).

    ``None`` means "no response: send BYE or CANCEL" (cause 16). With
    ``location_user`` set (the cause location is 'user'), cause 21 gives 603
    instead of 403 (§7.2.4.1 note (+)). A cause not in the table is treated as
    the "unspecified" cause of its Q.850 class (Q.850 §2.2.7: an unrecognised
    cause is handled as the unspecified cause of the same class), and if that
    one has no row either, as 127 interworking -> 500.
    """
    if cause == 21 and location_user:
        return 603
    if cause in _Q850_TO_SIP:
        return _Q850_TO_SIP[cause]
    if not 0 <= cause <= 127:
        return _DEFAULT_STATUS
    # Q.850 classes are the top three bits of the 7-bit value; the unspecified
    # cause of a class is its last value (31, 47, 63, 79, 95, 111, 127).
    unspecified = cause | 0x0F if cause >= 32 else 31
    status = _Q850_TO_SIP.get(unspecified, _DEFAULT_STATUS)
    return _DEFAULT_STATUS if status is None else status


# --- Reason header (RFC 3326 §2) ---------------------------------------------
#
#   Reason            =  "Reason" HCOLON reason-value *(COMMA reason-value)
#   reason-value      =  protocol *(SEMI reason-params)
#   protocol          =  "SIP" / "Q.850" / token
#   reason-params     =  protocol-cause / reason-text / reason-extension
#   protocol-cause    =  "cause" EQUAL cause
#   cause             =  1*DIGIT
#   reason-text       =  "text" EQUAL quoted-string
#
# RFC 6432 §2 allows the header in responses carrying the Q.850 cause of a
# PSTN-side failure; that is what the failover planner reads.

_MAX_HEADER: Final = 4096  # longer values are not parsed (garbage or an attack)
_MAX_CAUSE_DIGITS: Final = 5
_TOKEN_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason-value of a Reason header (RFC 3326 §2).

    ``protocol`` keeps its case as received ("Q.850", "SIP", ...); compare with
    ``is_q850``. ``cause`` is a Q.850 cause (0-127) or a SIP status (100-699).
    """

    protocol: str
    cause: int
    text: str | None = None

    @property
    def is_q850(self) -> bool:
        """True when the protocol is Q.850 (case-insensitive, RFC 3326 §2)."""
        return self.protocol.upper() == "Q.850"

    def __str__(self) -> str:
        return format_reason(self.cause, protocol=self.protocol, text=self.text or "")


def _split_top(value: str, sep: str) -> list[str] | None:
    """Split on ``sep`` outside quoted strings; ``None`` when a quote is unclosed."""
    parts: list[str] = []
    start = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == '"':
            i += 1
            while i < n and value[i] != '"':
                i += 2 if value[i] == "\\" else 1
            if i >= n:
                return None
        elif ch == sep:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return parts


def _unquote(raw: str) -> str | None:
    """Return the content of a quoted-string (RFC 3261 §25.1), ``None`` if malformed."""
    if len(raw) < 2 or raw[0] != '"' or raw[-1] != '"':
        return None
    out: list[str] = []
    i = 1
    end = len(raw) - 1
    while i < end:
        ch = raw[i]
        if ch == "\\":
            if i + 1 >= end:
                return None
            out.append(raw[i + 1])
            i += 2
            continue
        if ch == '"':
            return None
        out.append(ch)
        i += 1
    return "".join(out)


def _parse_value(raw: str) -> Reason | None:
    pieces = _split_top(raw, ";")
    if pieces is None:
        return None
    protocol = pieces[0].strip()
    if not protocol or not set(protocol) <= _TOKEN_CHARS:
        return None
    cause: int | None = None
    text: str | None = None
    for piece in pieces[1:]:
        name, eq, val = piece.partition("=")
        name = name.strip().lower()
        val = val.strip()
        if name == "cause":
            if not eq or not val.isascii() or not val.isdigit() or len(val) > _MAX_CAUSE_DIGITS:
                return None
            cause = int(val)
        elif name == "text":
            if not eq:
                return None
            # Some gateways send the text unquoted; accept a token, as lenient
            # peers do, but reject a broken quoted-string.
            text = _unquote(val) if val.startswith('"') else val
            if text is None:
                return None
        elif not name:
            return None
    if cause is None:
        return None
    upper = protocol.upper()
    if upper == "Q.850" and not 0 <= cause <= 127:
        return None
    if upper == "SIP" and not 100 <= cause <= 699:
        return None
    return Reason(protocol, cause, text)


def parse_reasons(value: str) -> tuple[Reason, ...]:
    """Parse every well-formed reason-value of a Reason header value.

    Malformed reason-values are skipped; an unparseable header gives ``()``.
    Never raises.
    """
    if not isinstance(value, str) or len(value) > _MAX_HEADER:
        return ()
    values = _split_top(value, ",")
    if values is None:
        return ()
    return tuple(r for r in map(_parse_value, values) if r is not None)


def parse_reason(value: str) -> Reason | None:
    """Parse a Reason header value; return its first well-formed reason-value or ``None``.

    Tolerates spacing and case (``q.850 ; CAUSE = 34``), quoted or bare text.
    Never raises: a malformed value from the network gives ``None``.
    """
    reasons = parse_reasons(value)
    return reasons[0] if reasons else None


def q850_cause(value: str | None) -> int | None:
    """Return the Q.850 cause carried by a Reason header value, or ``None``."""
    if value is None:
        return None
    for reason in parse_reasons(value):
        if reason.is_q850:
            return reason.cause
    return None


def _clean(text: str) -> str:
    # Control characters (CR, LF...) cannot appear in a quoted-string and would
    # split the header: drop them rather than emit a broken message.
    return "".join(ch for ch in text if ch == "\t" or ch >= " " and ch != "\x7f")


def _quote(clean: str) -> str:
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_reason(cause: int, *, protocol: str = "Q.850", text: str | None = None) -> str:
    """Format a Reason header value, e.g. ``Q.850;cause=34;text="No circuit/channel available"``.

    For Q.850 the text defaults to the Q.850 cause name; pass ``text=""`` to omit it.
    """
    if text is None and protocol.upper() == "Q.850":
        text = CAUSE_TEXT.get(cause)
    head = f"{protocol};cause={cause}"
    clean = _clean(text) if text else ""
    # nothing printable left (e.g. only DEL): no text parameter rather than text=""
    return f"{head};text={_quote(clean)}" if clean else head
