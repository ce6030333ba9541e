"""SDES: SRTP keys in SDP, ``a=crypto`` (RFC 4568), and their offer/answer.

Theory of operation. Each side puts the master key it will *send* with in its SDP
(RFC 4568 6.1); the answerer picks one of the offered ``a=crypto`` lines (the
first it supports: the offerer's order is its preference), answers with the same
tag and suite and a key of its own (7.1.2); the offerer matches the answer's tag
to its own line (7.1.3). So each direction has its own key: what we protect with
is in our SDP, what we unprotect with is in the peer's.

The keys travel in the SDP in the clear, so SDES is only as secret as the
signalling: the engine accepts and offers it on TLS legs only unless configured
otherwise (``EngineConfig.srtp``). A ``RTP/SAVP`` stream we cannot or may not
secure is refused (port 0 in the answer, 488 when nothing usable is left); we
never answer an SRTP offer with plain RTP.

Parsing is liberal in form (any case for ``inline:``, tabs or several spaces,
base64 with or without padding, lines we do not support are skipped rather than
failing the whole offer) and strict in substance (the key must decode to exactly
the suite's key + salt length, tags and lifetimes are numbers in range). Lines
asking for something we do not do (an MKI, several keys, unencrypted or
unauthenticated SRTP, a key derivation rate) are not usable. This module is pure:
the SRTP transform itself is :mod:`media.srtp`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from media.srtp import SUITES, SrtpContext, SrtpSuite, generate_key

from .sdp import MediaDescription, SessionDescription

__all__ = [
    "DEFAULT_OFFER_SUITES",
    "CryptoAttribute",
    "SrtpNegotiation",
    "answer_crypto",
    "context_for",
    "cryptos_of",
    "is_secure_profile",
    "match_answer",
    "offer_cryptos",
    "parse_crypto",
    "screen_offer",
    "secure_media",
]

#: What an outbound offer proposes, in order of preference (RFC 4568 6.2.1/6.2.2).
DEFAULT_OFFER_SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")

_TAG = re.compile(r"[0-9]{1,9}\Z")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}\Z")
_LIFETIME = re.compile(r"(2\^)?([0-9]{1,20})\Z")
_MKI = re.compile(r"([0-9]{1,20}):([0-9]{1,3})\Z")
# RFC 4568 6.1: at most 2^48 SRTP packets under one master key.
_MAX_LIFETIME = 2**48
# Session parameters (RFC 4568 6.3) that change nothing we must honour.
_HARMLESS_PARAMS = ("WSH=", "FEC_ORDER=FEC_SRTP", "KDR=0")


@dataclass(frozen=True, slots=True)
class CryptoAttribute:
    """One ``a=crypto`` line (RFC 4568 9.1), SRTP key method ``inline``.

    ``key`` is the decoded master key followed by the master salt. ``usable`` is
    ``False`` for a well-formed line asking for something we do not support; its
    ``why`` says what.
    """

    tag: int
    suite: str
    key: bytes
    lifetime: int | None = None
    mki: tuple[int, int] | None = None
    session_params: tuple[str, ...] = ()
    usable: bool = True
    why: str = ""

    @property
    def srtp_suite(self) -> SrtpSuite:
        return SUITES[self.suite]

    def serialize(self) -> str:
        """The attribute value (what follows ``a=crypto:``)."""
        key = base64.b64encode(self.key).decode("ascii")
        extra = "".join(f" {p}" for p in self.session_params)
        return f"{self.tag} {self.suite} inline:{key}{extra}"


def _decode_key(text: str, suite: SrtpSuite | None, value: str) -> bytes:
    if not _BASE64.match(text):
        raise ValueError(f"a=crypto key is not base64: {value!r}")
    padded = text + "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a=crypto key is not base64: {value!r}") from None
    if suite is not None and len(key) != suite.master_length:
        raise ValueError(
            f"a=crypto {suite.name} key must be {suite.master_length} octets, "
            f"got {len(key)}: {value!r}"
        )
    return key


def parse_crypto(value: str) -> CryptoAttribute:
    """Parse the value of an ``a=crypto`` attribute; ``ValueError`` if malformed."""
    fields = value.split()
    if len(fields) < 3:
        raise ValueError(f"a=crypto needs a tag, a suite and key parameters: {value!r}")
    tag_text, suite_name, key_params, *params = fields
    if not _TAG.match(tag_text):
        raise ValueError(f"a=crypto tag must be 1 to 9 digits: {value!r}")
    suite_name = suite_name.upper()
    suite = SUITES.get(suite_name)
    keys = key_params.split(";")
    first = keys[0]
    method, sep, key_info = first.partition(":")
    if not sep or method.lower() != "inline":
        raise ValueError(f"a=crypto key method must be inline: {value!r}")
    key_salt, *extras = key_info.split("|")
    key = _decode_key(key_salt, suite, value)
    lifetime: int | None = None
    mki: tuple[int, int] | None = None
    for extra in extras:
        lifetime_match = _LIFETIME.match(extra)
        mki_match = _MKI.match(extra)
        if mki_match and mki is None:
            length = int(mki_match.group(2))
            if not 1 <= length <= 128:
                raise ValueError(f"a=crypto MKI length must be 1 to 128: {value!r}")
            mki = (int(mki_match.group(1)), length)
        elif lifetime_match and lifetime is None and mki is None:
            number = int(lifetime_match.group(2))
            power = bool(lifetime_match.group(1))
            if (power and number > 64) or (not power and number == 0):
                raise ValueError(f"a=crypto lifetime out of range: {value!r}")
            lifetime = 2**number if power else number
        else:
            raise ValueError(f"a=crypto invalid key parameter {extra!r}: {value!r}")
    for other in keys[1:]:
        # Further keys (RFC 4568 6.1: several keys with MKIs): validated, not used.
        other_method, other_sep, other_info = other.partition(":")
        if not other_sep or other_method.lower() != "inline":
            raise ValueError(f"a=crypto key method must be inline: {value!r}")
        _decode_key(other_info.split("|")[0], suite, value)
    why = ""
    if suite is None:
        why = f"unsupported crypto suite {suite_name}"
    elif len(keys) > 1:
        why = "several master keys"
    elif mki is not None:
        why = "MKI"
    elif lifetime is not None and lifetime > _MAX_LIFETIME:
        why = "lifetime beyond 2^48"
    else:
        for param in params:
            if not param.upper().startswith(_HARMLESS_PARAMS):
                why = f"session parameter {param}"
                break
    return CryptoAttribute(
        int(tag_text),
        suite_name,
        key,
        lifetime,
        mki,
        tuple(params),
        usable=not why,
        why=why,
    )


def cryptos_of(m: MediaDescription) -> list[CryptoAttribute]:
    """The well-formed ``a=crypto`` lines of a media section (malformed ones are
    skipped: one broken line does not make the others unusable)."""
    out: list[CryptoAttribute] = []
    for name, value in m.attributes:
        if name.lower() == "crypto" and value is not None:
            try:
                out.append(parse_crypto(value))
            except ValueError:
                continue
    return out


def is_secure_profile(proto: str) -> bool:
    """``RTP/SAVP``, ``RTP/SAVPF`` and the DTLS profiles: media must be SRTP."""
    return "SAVP" in proto.upper()


@dataclass(frozen=True, slots=True)
class SrtpNegotiation:
    """The SRTP of one negotiated stream: the suite, our key and the peer's."""

    local: CryptoAttribute
    remote: CryptoAttribute


def answer_crypto(offered: CryptoAttribute) -> CryptoAttribute:
    """Our answer to an offered line: same tag and suite, our own fresh key."""
    return CryptoAttribute(offered.tag, offered.suite, generate_key(offered.srtp_suite))


def screen_offer(
    offer: SessionDescription, *, allow_srtp: bool
) -> tuple[SessionDescription, dict[int, CryptoAttribute]]:
    """Prepare an offer for :func:`~callengine.sip.sdp.negotiate`.

    Returns a copy of ``offer`` in which the streams we must refuse have port 0 (an
    ``RTP/SAVP`` stream when SRTP is not allowed on this leg or when it has no usable
    ``a=crypto``), and for each stream index to secure the offered line we accept.
    An ``RTP/AVP`` stream that carries ``a=crypto`` ("best effort" SRTP) is secured
    when SRTP is allowed and left plain otherwise.
    """
    media: list[MediaDescription] = []
    chosen: dict[int, CryptoAttribute] = {}
    for index, m in enumerate(offer.media):
        if m.port == 0 or "RTP/" not in m.proto.upper():
            media.append(m)
            continue
        secure = is_secure_profile(m.proto)
        usable = [c for c in cryptos_of(m) if c.usable] if allow_srtp else []
        if usable:
            chosen[index] = usable[0]
            media.append(m)
        elif secure:
            media.append(replace(m, port=0))
        else:
            media.append(m)
    return replace(offer, media=media), chosen


def offer_cryptos(suites: Sequence[str] = DEFAULT_OFFER_SUITES) -> list[CryptoAttribute]:
    """Our ``a=crypto`` lines for an offer: tags 1, 2..., each with its own key."""
    return [
        CryptoAttribute(tag, name, generate_key(SUITES[name])) for tag, name in enumerate(suites, 1)
    ]


def secure_media(
    description: SessionDescription,
    index: int,
    cryptos: Sequence[CryptoAttribute],
    *,
    proto: str = "RTP/SAVP",
) -> SessionDescription:
    """Put ``cryptos`` on media ``index`` of a description we send, with ``proto``."""
    m = description.media[index]
    m.proto = proto
    m.attributes.extend(("crypto", c.serialize()) for c in cryptos)
    return description


def match_answer(
    offered: Sequence[CryptoAttribute], answer: MediaDescription
) -> SrtpNegotiation | None:
    """The offerer's side (RFC 4568 7.1.3): the answer's line whose tag and suite are
    one of ours; ``None`` when the answer accepted none (an unusable answer)."""
    by_tag = {c.tag: c for c in offered}
    for remote in cryptos_of(answer):
        local = by_tag.get(remote.tag)
        if local is not None and local.suite == remote.suite and remote.usable:
            return SrtpNegotiation(local, remote)
    return None


def context_for(negotiation: SrtpNegotiation) -> SrtpContext:
    """The SRTP transform of a negotiated stream: protect with ours, unprotect with theirs."""
    return SrtpContext(
        negotiation.local.srtp_suite, tx_key=negotiation.local.key, rx_key=negotiation.remote.key
    )
