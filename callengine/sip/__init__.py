"""Sans-IO SIP: messages, URIs, SDP, digest auth, transactions, dialogs, the UA core."""

from __future__ import annotations

from .dialog import Dialog, DialogState
from .errors import LocalProtocolError, RemoteProtocolError, SipError
from .headers import NameAddr, Via
from .message import (
    Headers,
    PartialRequestError,
    Request,
    Response,
    StreamFramer,
    make_response,
    parse_message,
)
from .transaction import ClientTransaction, ServerTransaction, TransactionLayer
from .uri import URI, parse_uri
from .useragent import InviteSession, SessionState, UserAgent

__all__ = [
    "URI",
    "ClientTransaction",
    "Dialog",
    "DialogState",
    "Headers",
    "InviteSession",
    "LocalProtocolError",
    "NameAddr",
    "PartialRequestError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "ServerTransaction",
    "SessionState",
    "SipError",
    "StreamFramer",
    "TransactionLayer",
    "UserAgent",
    "Via",
    "make_response",
    "parse_message",
    "parse_uri",
]
