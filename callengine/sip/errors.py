"""Errors of the SIP layer, split as h11 splits them: the peer's fault or ours."""

from __future__ import annotations


class SipError(Exception):
    """Base class for errors raised by the SIP layer."""


class RemoteProtocolError(SipError):
    """The peer sent something malformed or unacceptable.

    ``status`` is the response a server should send for a request (RFC 3261 §21) and
    ``reason`` a reason phrase that names the fault. For responses it is only counted.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class LocalProtocolError(SipError):
    """The application asked the stack to do something SIP does not allow."""
