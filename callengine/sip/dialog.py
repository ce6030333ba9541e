"""Dialogs (RFC 3261 §12), sans-IO: identity, route set, CSeq rules, request building."""

from __future__ import annotations

import enum
import secrets

from .errors import RemoteProtocolError
from .headers import NameAddr, Via
from .message import Request, Response
from .transaction import new_branch
from .uri import URI, parse_uri

Address = tuple[str, int]


def new_tag() -> str:
    return secrets.token_hex(6)


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Dialog:
    """One dialog. ``key`` is (Call-ID, local tag, remote tag) as incoming requests see it."""

    __slots__ = (
        "call_id",
        "local_tag",
        "remote_tag",
        "local_uri",
        "remote_uri",
        "remote_target",
        "route_set",
        "local_cseq",
        "remote_cseq",
        "state",
        "is_uas",
        "transport",
        "local_addr",
        "peer_addr",
        "secure",
    )

    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_uri: str,
        remote_uri: str,
        remote_target: URI,
        route_set: list[str],
        local_cseq: int,
        remote_cseq: int,
        is_uas: bool,
        transport: str,
        local_addr: Address,
        peer_addr: Address,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri  # our From/To value without tag
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_cseq = local_cseq
        self.remote_cseq = remote_cseq
        self.state = DialogState.EARLY
        self.is_uas = is_uas
        self.transport = transport
        self.local_addr = local_addr
        self.peer_addr = peer_addr
        self.secure = remote_target.scheme == "sips"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def from_uas(cls, invite: Request, local_tag: str, local_addr: Address) -> Dialog:
        """UAS side (§12.1.1): route set from Record-Route in order, target from Contact."""
        contacts = invite.contacts
        target = contacts[0].uri if contacts else invite.from_.uri  # type: ignore[union-attr]
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_tag or "",
            local_uri=_strip_tag(invite.headers.get("to") or ""),
            remote_uri=invite.headers.get("from") or "",
            remote_target=target,
            route_set=[str(r) for r in invite.routes("record-route")],
            local_cseq=0,
            remote_cseq=invite.cseq,
            is_uas=True,
            transport=invite.transport,
            local_addr=local_addr,
            peer_addr=invite.source or ("0.0.0.0", 0),
        )

    @classmethod
    def from_uac(
        cls, invite: Request, response: Response, peer_addr: Address, local_addr: Address
    ) -> Dialog:
        """UAC side (§12.1.2): route set from Record-Route in reverse order."""
        contacts = response.contacts
        target = contacts[0].uri if contacts else invite.uri
        return cls(
            call_id=invite.call_id,
            local_tag=invite.from_tag or "",
            remote_tag=response.to_tag or "",
            local_uri=_strip_tag(invite.headers.get("from") or ""),
            remote_uri=_strip_tag(response.headers.get("to") or ""),
            remote_target=target,
            route_set=[str(r) for r in reversed(response.routes("record-route"))],
            local_cseq=invite.cseq,
            remote_cseq=0,
            is_uas=False,
            transport=invite.transport,
            local_addr=local_addr,
            peer_addr=peer_addr,
        )

    def check_remote_cseq(self, request: Request) -> bool:
        """§12.2.2: a CSeq lower than the last one is out of order (500); ACK/CANCEL reuse."""
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_cseq and request.cseq <= self.remote_cseq:
            return False
        self.remote_cseq = request.cseq
        return True

    def refresh_target(self, request_or_response: Request | Response) -> None:
        """Target refresh (§12.2): a re-INVITE/UPDATE or its 2xx replaces the remote target."""
        try:
            contacts = request_or_response.contacts
        except RemoteProtocolError:
            return
        if contacts:
            self.remote_target = contacts[0].uri

    def next_hop(self) -> Address:
        """Where in-dialog requests go: the first loose route, else the remote target.

        For a UAS the peer's source address is used when the target is not an IP literal
        we can reach directly (NAT, RFC 3581 symmetric response routing). A WebSocket
        peer is reached only over its connection (RFC 7118 §5.2: its Contact host is a
        ``.invalid`` name), so WS/WSS dialogs always use the peer's address."""
        if self.transport in ("WS", "WSS"):
            return self.peer_addr
        if self.route_set:
            first = _uri_of(self.route_set[0])
            if first is not None and first.host:
                return (first.host.strip("[]"), first.port or 5060)
        target = self.remote_target
        if self.is_uas or not target.host:
            return self.peer_addr
        return (target.host.strip("[]"), target.port or 5060)

    def create_request(
        self,
        method: str,
        *,
        via_host: str,
        body: bytes = b"",
        content_type: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        cseq: int | None = None,
    ) -> Request:
        """Build a request within the dialog (§12.2.1.1)."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        route_set = self.route_set
        uri = self.remote_target
        routes = route_set
        if route_set:
            first = _uri_of(route_set[0])
            if first is not None and "lr" not in first.params:
                # strict router: it becomes the Request-URI (§12.2.1.1)
                routes = route_set[1:] + [f"<{self.remote_target}>"]
                uri = first
        req = Request(method, uri)
        h = req.headers
        host, _, port = via_host.rpartition(":")
        via = Via(self.transport, host, int(port), {"branch": new_branch(), "rport": None})
        req.vias = [via]
        h.set("Via", str(via))
        h.set("Max-Forwards", "70")
        h.set("From", f"{self.local_uri};tag={self.local_tag}")
        h.set("To", f"{self.remote_uri};tag={self.remote_tag}")
        h.set("Call-ID", self.call_id)
        h.set("CSeq", f"{cseq} {method}")
        if routes:
            h.set_all("Route", list(routes))
        if extra:
            for name, value in extra:
                h.add(name, value)
        if content_type:
            h.set("Content-Type", content_type)
        req.body = body
        req.call_id = self.call_id
        req.cseq = cseq
        req.cseq_method = method
        req.transport = self.transport
        return req


def _strip_tag(value: str) -> str:
    """A From/To value without its tag parameter (for reuse in our requests)."""
    if ";tag=" not in value.lower():
        return value
    idx = value.lower().find(";tag=")
    end = value.find(";", idx + 1)
    return value[:idx] + (value[end:] if end >= 0 else "")


def _uri_of(name_addr: str) -> URI | None:
    text = name_addr.strip()
    if text.startswith("<"):
        text = text[1 : text.find(">")]
    try:
        return parse_uri(text, where="Route")
    except RemoteProtocolError:
        return None


__all__ = ["Dialog", "DialogState", "NameAddr", "new_tag"]
