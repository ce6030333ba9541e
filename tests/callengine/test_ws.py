"""The sans-IO SIP-over-WebSocket server (RFC 7118) against wsproto's own client, bytes
in and bytes out, no sockets (the pairing h11/wsproto tests use); the WS settings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from callengine.config import load_config
from callengine.transport import TransportSet
from callengine.transport.ws import WsSipServer
from config_cache import ConfigError

OPTIONS = (
    b"OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK-1;rport\r\n"
    b"From: <sip:ws@example.invalid>;tag=a\r\nTo: <sip:ping@127.0.0.1>\r\n"
    b"Call-ID: ws-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\r\n"
)


def _client(subprotocols: list[str]) -> tuple[WSConnection, bytes]:
    client = WSConnection(ConnectionType.CLIENT)
    data = client.send(Request(host="127.0.0.1", target="/", subprotocols=subprotocols))
    return client, data


def _events(client: WSConnection, data: bytes) -> list[Event]:
    client.receive_data(data)
    return list(client.events())


def _open(max_message_size: int = 65535) -> tuple[WSConnection, WsSipServer]:
    client, hello = _client(["sip"])
    server = WsSipServer(max_message_size=max_message_size)
    assert server.receive_data(hello) == []
    response = server.data_to_send()
    assert response.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-protocol: sip\r\n" in response.lower()
    events = _events(client, response)
    assert events == [AcceptConnection(subprotocol="sip", extensions=[], extra_headers=[])]
    assert server.open and not server.closed
    return client, server


def test_one_sip_message_per_websocket_message_both_ways() -> None:
    client, server = _open()
    assert server.receive_data(client.send(TextMessage(OPTIONS.decode()))) == [OPTIONS]
    binary = OPTIONS.replace(b"ws-1", b"ws-2")
    assert server.receive_data(client.send(BytesMessage(binary))) == [binary]
    # two messages in one read are two SIP messages
    two = client.send(TextMessage("A")) + client.send(TextMessage("B"))
    assert server.receive_data(two) == [b"A", b"B"]

    server.send_message(b"SIP/2.0 200 OK\r\n\r\n")
    got = _events(client, server.data_to_send())
    assert [(type(e), e.data) for e in got] == [(TextMessage, "SIP/2.0 200 OK\r\n\r\n")]  # type: ignore[attr-defined]
    # not UTF-8: a binary frame (RFC 7118 §5.1 allows both)
    server.send_message(b"SIP/2.0 200 OK\r\nSubject: \xff\r\n\r\n")
    got = _events(client, server.data_to_send())
    assert isinstance(got[0], BytesMessage)
    assert got[0].data == b"SIP/2.0 200 OK\r\nSubject: \xff\r\n\r\n"


def test_fragments_are_joined_and_split_reads_are_buffered() -> None:
    client, server = _open()
    wire = client.send(TextMessage(OPTIONS[:40].decode(), message_finished=False))
    wire += client.send(TextMessage(OPTIONS[40:].decode(), message_finished=True))
    out: list[bytes] = []
    for i in range(len(wire)):  # one byte at a time
        out += server.receive_data(wire[i : i + 1])
    assert out == [OPTIONS]


def test_upgrade_without_the_sip_subprotocol_is_refused() -> None:
    # RFC 7118 §4: no "sip" in Sec-WebSocket-Protocol -> no WebSocket, an HTTP 400
    for offered in ([], ["chat"]):
        client, hello = _client(offered)
        server = WsSipServer()
        assert server.receive_data(hello) == []
        response = server.data_to_send()
        assert response.startswith(b"HTTP/1.1 400 ")
        events = _events(client, response)
        assert isinstance(events[0], RejectConnection) and events[0].status_code == 400
        assert b"".join(e.data for e in events if isinstance(e, RejectData)).startswith(
            b"WebSocket upgrade needs Sec-WebSocket-Protocol: sip"
        )
        assert server.closed and not server.open
        assert server.refused == "no sip subprotocol offered"
        # what follows is not read
        assert server.receive_data(b"GET / HTTP/1.1\r\n\r\n") == []


def test_not_an_upgrade_is_refused_with_400() -> None:
    server = WsSipServer()
    assert server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == []
    assert server.data_to_send().startswith(b"HTTP/1.1 400 ")
    assert server.closed and server.refused is not None
    garbage = WsSipServer()
    assert garbage.receive_data(b"\x16\x03\x01\x02\x00garbage\r\n\r\n") == []
    assert garbage.closed


def test_oversized_message_closes_with_1009_before_keeping_it() -> None:
    client, server = _open(max_message_size=1024)
    big = "X" * 1025
    assert server.receive_data(client.send(TextMessage(big))) == []
    assert server.closed and server.close_code == 1009
    events = _events(client, server.data_to_send())
    assert events == [CloseConnection(code=1009, reason="SIP message too large")]
    # fragments count together: 3 x 400 bytes is over 1024 too
    client, server = _open(max_message_size=1024)
    for i in range(3):
        server.receive_data(client.send(TextMessage("Y" * 400, message_finished=i == 2)))
    assert server.close_code == 1009
    # exactly at the cap is fine
    client, server = _open(max_message_size=1024)
    assert server.receive_data(client.send(TextMessage("Z" * 1024))) == [b"Z" * 1024]


def test_ping_is_answered_and_close_is_returned() -> None:
    client, server = _open()
    assert server.receive_data(client.send(Ping(b"hi"))) == []
    assert _events(client, server.data_to_send()) == [Pong(payload=b"hi")]
    assert server.receive_data(client.send(CloseConnection(code=1000, reason="bye"))) == []
    assert server.closed and not server.open
    assert _events(client, server.data_to_send()) == [CloseConnection(code=1000, reason="")]
    server.send_message(OPTIONS)  # nothing can be sent any more
    assert server.data_to_send() == b""


def test_broken_frame_closes_with_protocol_error() -> None:
    _, server = _open()
    # an unmasked client frame (RFC 6455 §5.1: a server must close the connection)
    assert server.receive_data(b"\x81\x02hi") == []
    assert server.closed and server.close_code == 1002


def test_socket_closing_mid_handshake_or_after_is_quiet() -> None:
    server = WsSipServer()
    server.receive_data(b"GET / HT")
    assert server.receive_data(None) == []
    assert server.closed
    _, server = _open()
    assert server.receive_data(None) == []


def test_send_to_a_ws_peer_without_its_connection_is_a_transport_error() -> None:
    # the node never dials a WebSocket client (RFC 7118 §5.2): no connection, no send;
    # the transaction hears of it once it exists (after the send that creates it)
    async def main() -> list[tuple[tuple[str, int], str]]:
        errors: list[tuple[tuple[str, int], str]] = []
        transports = TransportSet(lambda *a: None)
        transports.on_send_error = lambda dest, transport: errors.append((dest, transport))
        transports.send(OPTIONS, ("127.0.0.1", 40000), "WSS")
        assert errors == [] and transports.send_errors == 1
        assert not transports.is_open("WSS", ("127.0.0.1", 40000))
        await asyncio.sleep(0)
        assert transports._pending == {}  # nothing queued for a connection that never comes
        return errors

    assert asyncio.run(main()) == [(("127.0.0.1", 40000), "WSS")]


def test_huge_declared_frame_is_cut_off_at_the_cap() -> None:
    # a text frame announcing 2**40 bytes, streamed: closed with 1009 once the cap is
    # passed, having kept at most the cap
    _, server = _open(max_message_size=1024)
    header = b"\x81\xff" + (2**40).to_bytes(8, "big") + b"\x00\x00\x00\x00"  # zero mask
    assert server.receive_data(header + b"a" * 1000) == []
    assert not server.closed
    assert server.receive_data(b"a" * 1000) == []
    assert server.closed and server.close_code == 1009


def test_oversized_upgrade_request_is_refused() -> None:
    server = WsSipServer()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 70000)
    assert server.closed and server.refused is not None
    assert server.data_to_send().startswith(b"HTTP/1.1 400 ")


def test_invalid_utf8_in_a_text_frame_closes_with_1007() -> None:
    _, server = _open()
    assert server.receive_data(b"\x81\x82\x00\x00\x00\x00\xff\xfe") == []  # masked, zero key
    assert server.closed and server.close_code == 1007


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wss_port: 8443\n", "node.yaml: wss_port: wss_port needs tls_cert and tls_key"),
        ("ws_port: 70000\n", "node.yaml: ws_port: must be a port (0-65535) or null"),
        ("ws_port: '8080'\n", "node.yaml: ws_port: expected int or NoneType, got str"),
    ],
)
def test_ws_settings_are_checked_at_load_time(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).endswith(message)
    assert str(caught.value).startswith(str(tmp_path))


def test_ws_settings_default_off_and_load(tmp_path: Path) -> None:
    assert (load_config(None).ws_port, load_config(None).wss_port) == (None, None)
    path = tmp_path / "node.yaml"
    path.write_text("ws_port: 0\nwss_port: 8443\ntls_cert: c.pem\ntls_key: k.pem\n")
    cfg = load_config(path)
    assert (cfg.ws_port, cfg.wss_port) == (0, 8443)


def test_close_frame_without_a_code_is_answered() -> None:
    client, server = _open()
    assert server.receive_data(b"\x88\x80\x00\x00\x00\x00") == []  # masked, empty payload
    assert server.closed
    assert _events(client, server.data_to_send()) == [CloseConnection(code=1005, reason="")]
