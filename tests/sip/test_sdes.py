"""SDES a=crypto (RFC 4568) grammar and offer/answer, on the SDP model (no sockets)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from callengine.config import load_config
from callengine.sip import sdes
from callengine.sip.sdp import SdpSession, SessionDescription, negotiate
from config_cache import ConfigError
from media.codecs import PCMA, PCMU
from media.rtp import RtpPacket

KEY = bytes(range(30))
INLINE = base64.b64encode(KEY).decode()  # 40 characters, no padding


def test_parse_and_serialize_round_trip() -> None:
    value = f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"
    crypto = sdes.parse_crypto(value)
    assert (crypto.tag, crypto.suite, crypto.key, crypto.usable) == (
        1,
        "AES_CM_128_HMAC_SHA1_80",
        KEY,
        True,
    )
    assert crypto.serialize() == value


@pytest.mark.parametrize(
    "value",
    [
        # Liberal in form: case, tabs and runs of spaces, a lifetime, harmless parameters.
        f"1 aes_cm_128_hmac_sha1_80 INLINE:{INLINE}",
        f"1\tAES_CM_128_HMAC_SHA1_80   inline:{INLINE}",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^31",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|1048576 WSH=64 KDR=0",
    ],
)
def test_liberal_in_form(value: str) -> None:
    crypto = sdes.parse_crypto(value)
    assert crypto.key == KEY and crypto.usable and crypto.suite == "AES_CM_128_HMAC_SHA1_80"


def test_base64_padding_is_optional() -> None:
    key = bytes(range(44))  # AES-256 GCM: 32 + 12, base64 ends in no padding
    key46 = bytes(range(28))  # a 28-octet key needs "=" padding
    assert sdes.parse_crypto(f"2 AEAD_AES_256_GCM inline:{base64.b64encode(key).decode()}").usable
    padded = base64.b64encode(key46).decode()
    assert padded.endswith("=")
    unpadded = sdes.parse_crypto(f"3 AEAD_AES_128_GCM inline:{padded.rstrip('=')}")
    assert unpadded.key == key46 and unpadded.usable


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1 AES_CM_128_HMAC_SHA1_80", "needs a tag, a suite and key parameters"),
        (f"x1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}", "tag must be 1 to 9 digits"),
        (f"1234567890 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}", "tag must be 1 to 9 digits"),
        (f"1 AES_CM_128_HMAC_SHA1_80 uri:{INLINE}", "key method must be inline"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:not*base64", "key is not base64"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:QUJD", "key must be 30 octets, got 3"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}AAAA", "key must be 30 octets, got 33"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^99", "lifetime out of range"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|1:0", "MKI length must be 1 to 128"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|x", "invalid key parameter 'x'"),
    ],
)
def test_strict_on_validity(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sdes.parse_crypto(value)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (f"1 F8_128_HMAC_SHA1_80 inline:{INLINE}", "unsupported crypto suite F8_128_HMAC_SHA1_80"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^20|1:4", "MKI"),
        (
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^20|1:4;inline:{INLINE}|2^20|2:4",
            "several master keys",
        ),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE} UNENCRYPTED_SRTP", "session parameter"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE} UNAUTHENTICATED_SRTP", "session parameter"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE} KDR=24", "session parameter KDR=24"),
    ],
)
def test_well_formed_but_not_usable(value: str, why: str) -> None:
    crypto = sdes.parse_crypto(value)
    assert not crypto.usable and crypto.why.startswith(why)


def _offer(proto: str, *cryptos: str) -> SessionDescription:
    lines = [
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        f"m=audio 4000 {proto} 0 8 101",
        "a=rtpmap:101 telephone-event/8000",
        *(f"a=crypto:{c}" for c in cryptos),
    ]
    return SessionDescription.parse("\r\n".join(lines) + "\r\n")


def test_answer_picks_first_usable_line_and_answers_savp() -> None:
    offer = _offer(
        "RTP/SAVP",
        "1 AES_CM_128_HMAC_SHA1_80 inline:broken!",  # malformed: skipped, not fatal
        f"2 F8_128_HMAC_SHA1_80 inline:{INLINE}",  # unsupported: skipped
        f"3 AES_CM_128_HMAC_SHA1_32 inline:{INLINE}",
        f"4 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}",
    )
    screened, chosen = sdes.screen_offer(offer, allow_srtp=True)
    assert chosen[0].tag == 3 and chosen[0].suite == "AES_CM_128_HMAC_SHA1_32"
    answer = negotiate(screened, [PCMU, PCMA])
    assert answer is not None and answer.media_index == 0
    ours = sdes.answer_crypto(chosen[0])
    assert (ours.tag, ours.suite) == (3, "AES_CM_128_HMAC_SHA1_32") and ours.key != KEY
    body = answer.to_sdp(SdpSession("192.0.2.9"), address="192.0.2.9", port=5000)
    sdes.secure_media(body, 0, [ours], proto="RTP/SAVP")
    text = body.serialize().decode()
    assert "m=audio 5000 RTP/SAVP 0 8 101" in text
    assert f"a=crypto:{ours.serialize()}\r\n" in text
    # The offerer's view of that answer: its line 3, keyed both ways.
    parsed = SessionDescription.parse(text)
    offered = [
        sdes.parse_crypto(v)
        for k, v in offer.media[0].attributes
        if k == "crypto" and v and "broken" not in v
    ]
    negotiation = sdes.match_answer(offered, parsed.media[0])
    assert negotiation is not None and negotiation.local.tag == 3
    assert negotiation.remote.key == ours.key
    # Keys work end to end: what the answerer protects, the offerer unprotects.
    answerer = sdes.context_for(sdes.SrtpNegotiation(ours, chosen[0]))
    offerer = sdes.context_for(negotiation)
    packet = RtpPacket(0, False, 1, 160, 7, payload=b"\x01" * 160).serialize()
    assert offerer.unprotect(answerer.protect(packet)) == packet
    assert answerer.unprotect(offerer.protect(packet)) == packet


def test_savp_refused_when_not_allowed_or_without_usable_key() -> None:
    # Over plain UDP/TCP (not allowed): the SAVP stream gets port 0, hence 488.
    screened, chosen = sdes.screen_offer(
        _offer("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"), allow_srtp=False
    )
    assert chosen == {} and screened.media[0].port == 0
    assert negotiate(screened, [PCMU]) is None
    # No usable key (DTLS-SRTP only, or only unsupported suites): refused as well.
    for offer in (
        _offer("UDP/TLS/RTP/SAVP"),
        _offer("RTP/SAVP", f"1 F8_128_HMAC_SHA1_80 inline:{INLINE}"),
    ):
        screened, chosen = sdes.screen_offer(offer, allow_srtp=True)
        assert chosen == {} and negotiate(screened, [PCMU]) is None
    # The original offer is not modified.
    offer = _offer("RTP/SAVP")
    sdes.screen_offer(offer, allow_srtp=False)
    assert offer.media[0].port == 4000


def test_best_effort_srtp_in_avp_and_plain_avp() -> None:
    best_effort = _offer("RTP/AVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}")
    _, chosen = sdes.screen_offer(best_effort, allow_srtp=True)
    assert chosen[0].tag == 1  # secured, answered in RTP/AVP with a=crypto
    screened, chosen = sdes.screen_offer(best_effort, allow_srtp=False)
    assert chosen == {} and negotiate(screened, [PCMU]) is not None  # plain RTP
    screened, chosen = sdes.screen_offer(_offer("RTP/AVP"), allow_srtp=True)
    assert chosen == {} and negotiate(screened, [PCMU]) is not None


def test_offer_lines_and_unmatched_answer() -> None:
    ours = sdes.offer_cryptos()
    assert [(c.tag, c.suite) for c in ours] == [
        (1, "AES_CM_128_HMAC_SHA1_80"),
        (2, "AES_CM_128_HMAC_SHA1_32"),
    ]
    assert ours[0].key != ours[1].key and all(len(c.key) == 30 for c in ours)
    # An answer with another tag, another suite for our tag, or no a=crypto: unusable.
    for answer in (
        _offer("RTP/SAVP", f"7 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"),
        _offer("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_32 inline:{INLINE}"),
        _offer("RTP/AVP"),
    ):
        assert sdes.match_answer(ours, answer.media[0]) is None
    answer = _offer("RTP/SAVP", f"2 AES_CM_128_HMAC_SHA1_32 inline:{INLINE}")
    negotiation = sdes.match_answer(ours, answer.media[0])
    assert negotiation is not None and negotiation.local is ours[1]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("srtp", "maybe", "srtp: must be tls, any or off"), ("rtp_relatch_after", -1, "must be 0")],
)
def test_srtp_and_relatch_settings_are_checked_at_load(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps({field: value}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert load_config(None).srtp == "tls" and load_config(None).rtp_relatch_after == 5.0
