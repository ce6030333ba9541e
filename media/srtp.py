"""SRTP and SRTCP (RFC 3711) for one RTP session: the only module that imports pylibsrtp.

An :class:`SrtpContext` holds two libsrtp sessions: one that protects what we send
(keyed with our master key, the one our SDP carries) and one that unprotects what
the peer sends (its master key, from its SDP). SDES (RFC 4568) key exchange, i.e.
the ``a=crypto`` lines, lives in :mod:`callengine.sip.sdes`; this module only knows
crypto suites and master keys.

The per-packet cost is one libsrtp call through cffi (measured in
``benchmarks/srtp_cost.py``). A packet that fails authentication or the replay
check raises :class:`SrtpError`; the session shell drops and counts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pylibsrtp

__all__ = ["SUITES", "SrtpContext", "SrtpError", "SrtpSuite", "generate_key"]


class SrtpError(ValueError):
    """A packet failed authentication, the replay check, or could not be processed."""


@dataclass(frozen=True, slots=True)
class SrtpSuite:
    """A crypto suite (RFC 4568 6.2): its SDP name, libsrtp profile and key sizes."""

    name: str
    profile: int
    key_length: int
    salt_length: int

    @property
    def master_length(self) -> int:
        """Octets of master key + master salt (the ``inline:`` key-salt decoded)."""
        return self.key_length + self.salt_length


# RFC 4568 6.2.1 and 6.2.2 (the 128-bit AES counter mode suites); RFC 7714 14.2 (GCM).
# F8_128_HMAC_SHA1_80 is not offered by libsrtp's profiles: an offer of it alone gets 488.
SUITES: dict[str, SrtpSuite] = {
    suite.name: suite
    for suite in (
        SrtpSuite(
            "AES_CM_128_HMAC_SHA1_80", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14
        ),
        SrtpSuite(
            "AES_CM_128_HMAC_SHA1_32", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 16, 14
        ),
        SrtpSuite("AEAD_AES_128_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
        SrtpSuite("AEAD_AES_256_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32, 12),
    )
}


def generate_key(suite: SrtpSuite) -> bytes:
    """A fresh master key + salt for ``suite`` from the OS's random source."""
    return os.urandom(suite.master_length)


def _session(suite: SrtpSuite, key: bytes, ssrc_type: int) -> pylibsrtp.Session:
    if len(key) != suite.master_length:
        raise ValueError(
            f"{suite.name} needs a {suite.master_length}-octet master key and salt, got {len(key)}"
        )
    policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=suite.profile)
    # RFC 3711 3.3.2: the replay list; 1024 tolerates reordering by up to 20 s of audio.
    policy.window_size = 1024
    return pylibsrtp.Session(policy=policy)


class SrtpContext:
    """Protect outgoing and unprotect incoming RTP and RTCP of one stream."""

    __slots__ = ("_rx", "_tx", "rx_key", "suite", "tx_key")

    def __init__(self, suite: SrtpSuite, *, tx_key: bytes, rx_key: bytes) -> None:
        self.suite = suite
        self.tx_key = tx_key
        self.rx_key = rx_key
        self._tx = _session(suite, tx_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self._rx = _session(suite, rx_key, pylibsrtp.Policy.SSRC_ANY_INBOUND)

    def protect(self, packet: bytes) -> bytes:
        """SRTP packet for an RTP packet we send; :class:`SrtpError` if libsrtp refuses
        it (an index protected before: that would reuse keystream)."""
        try:
            return self._tx.protect(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise SrtpError(f"SRTP: {exc}") from None

    def protect_rtcp(self, packet: bytes) -> bytes:
        """SRTCP packet for a compound RTCP packet we send."""
        try:
            return self._tx.protect_rtcp(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise SrtpError(f"SRTCP: {exc}") from None

    def unprotect(self, packet: bytes) -> bytes:
        """The RTP packet inside a received SRTP packet; :class:`SrtpError` if forged,
        replayed or malformed."""
        try:
            return self._rx.unprotect(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"SRTP: {exc}") from None

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """The RTCP inside a received SRTCP packet; :class:`SrtpError` otherwise."""
        try:
            return self._rx.unprotect_rtcp(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"SRTCP: {exc}") from None

    def rekey_rx(self, rx_key: bytes) -> None:
        """The peer sent a new master key (re-INVITE, RFC 4568 7.1.4)."""
        if rx_key != self.rx_key:
            self.rx_key = rx_key
            self._rx = _session(self.suite, rx_key, pylibsrtp.Policy.SSRC_ANY_INBOUND)
