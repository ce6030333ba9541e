"""Ringing a registered user: bindings -> INVITE targets (``leg_targets``), and what
``Engine.originate("user:NAME")`` refuses before it sends anything."""

from __future__ import annotations

import asyncio

import pytest

from callengine.b2bua import LegTarget, leg_targets
from callengine.call import SipError
from callengine.engine import Engine
from callengine.sip.registrar import Binding


def test_leg_targets_follow_the_flow_and_mark_browsers() -> None:
    bindings = [
        # a browser over WebSocket: its connection, a WebRTC offer (RFC 5768 +sip.ice)
        Binding(
            "sip:x7k2@df7jal23ls0d.invalid;transport=ws",
            expires_at=1e12,
            call_id="a",
            cseq=1,
            source=("127.0.0.1", 41234),
            transport="wss",
            params={"+sip.ice": None},
        ),
        # a phone that registered from its own address: its Contact
        Binding("sip:101@192.0.2.7:5062", expires_at=1e12, call_id="b", cseq=1),
        Binding("sip:102@[2001:db8::1]", expires_at=1e12, call_id="c", cseq=1),
        Binding("not a uri", expires_at=1e12, call_id="d", cseq=1),  # skipped
    ]
    assert leg_targets(bindings, label="user:100") == [
        LegTarget(
            "sip:x7k2@df7jal23ls0d.invalid;transport=ws",
            ("127.0.0.1", 41234),
            "WSS",
            label="user:100",
            webrtc=True,
        ),
        LegTarget("sip:101@192.0.2.7:5062", ("192.0.2.7", 5062), "UDP", label="user:100"),
        LegTarget("sip:102@[2001:db8::1]", ("2001:db8::1", 5060), "UDP", label="user:100"),
    ]


def test_originate_to_a_user_needs_a_tenant_and_a_registered_phone() -> None:
    async def main() -> None:
        engine = Engine(listen=["127.0.0.1:0"])
        with pytest.raises(ValueError, match="needs tenant="):
            await engine.originate("user:100")
        # a bare Engine has no registrar
        with pytest.raises(SipError) as refused:
            await engine.originate("user:100", tenant="demo")
        assert (refused.value.status, refused.value.cause) == (480, 18)
        asked: list[tuple[str, str]] = []
        engine.locate_user = lambda tenant, user: asked.append((tenant, user)) or []
        with pytest.raises(SipError) as refused:
            await engine.originate("ext:101", tenant="demo")
        assert refused.value.status == 480 and asked == [("demo", "101")]

    asyncio.run(main())
