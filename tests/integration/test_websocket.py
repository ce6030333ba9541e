"""SIP over WebSocket (RFC 7118) against a real ``callengine serve``.

The WebSocket SIP client is written here, on wsproto over an asyncio socket (the way a
browser's JsSIP talks: ``Sec-WebSocket-Protocol: sip``, one SIP message per WebSocket
message, a ``*.invalid`` Via sent-by and Contact host, RFC 7118 §5.2). It registers user
100 of the demo tenant with digest auth, calls the demo IVR and hears its RTP on a UDP
socket of the test, is rung over its own connection by a call from a UDP caller to the
sales ring group, and finds its binding gone when its connection closes.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from integration.support import Daemon, free_port, scrape_fresh, sip_call, wait_metric
from integration.test_tls_ipv6 import _self_signed
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

from callengine.sip.auth import DigestClient

pytestmark = pytest.mark.integration
DaemonFactory = Callable[..., Daemon]
TIMEOUT = 10.0


def _sdp(rtp_port: int) -> str:
    return (
        "v=0\r\no=ws 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    )


def _head(message: str) -> list[str]:
    return message.split("\r\n\r\n", 1)[0].split("\r\n")


def _header(message: str, name: str) -> str:
    for line in _head(message)[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name} in {message!r}")


def _status(message: str) -> int:
    first = _head(message)[0]
    return int(first.split()[1]) if first.startswith("SIP/2.0 ") else 0


class WsPhone:
    """A SIP user agent over one WebSocket connection (RFC 7118 client side)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.host = f"{secrets.token_hex(5)}.invalid"  # RFC 7118 §5.2
        self.inbox: list[str] = []
        self.control: list[object] = []
        self.transport = "WS"

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        subprotocols: tuple[str, ...] = ("sip",),
        local_port: int = 0,
    ) -> tuple[WsPhone, object]:
        """Open the connection and do the upgrade; returns the phone and the handshake's
        answer (AcceptConnection or RejectConnection)."""
        deadline = time.monotonic() + TIMEOUT
        while True:  # the WS listener opens just after the UDP one the daemon waits on
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=tls, local_addr=("127.0.0.1", local_port)
                )
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        phone = cls(reader, writer)
        phone.transport = "WSS" if tls is not None else "WS"
        writer.write(
            phone.ws.send(Request(host="127.0.0.1", target="/", subprotocols=list(subprotocols)))
        )
        while True:
            for event in await phone._read():
                if isinstance(event, AcceptConnection | RejectConnection):
                    return phone, event

    async def _read(self) -> list[object]:
        data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    async def send(self, message: str) -> None:
        self.writer.write(self.ws.send(TextMessage(message)))
        await self.writer.drain()

    async def recv(self) -> str:
        """The next SIP message (each WebSocket message is one)."""
        parts: list[str] = []
        while not self.inbox:
            for event in await self._read():
                if isinstance(event, TextMessage | BytesMessage):
                    data = event.data if isinstance(event.data, str) else event.data.decode()
                    parts.append(data)
                    if event.message_finished:
                        self.inbox.append("".join(parts))
                        parts = []
                else:
                    self.control.append(event)
                    if isinstance(event, CloseConnection):
                        raise ConnectionError(f"closed by the node: {event.code}")
        return self.inbox.pop(0)

    async def final(self) -> str:
        """The next final response (provisionals skipped)."""
        while True:
            message = await self.recv()
            if _status(message) >= 200:
                return message

    def request(
        self, method: str, ruri: str, *, cseq: int, call_id: str, from_tag: str, extra: str = ""
    ) -> str:
        return (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{self.transport} {self.host};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:100@demo>;tag={from_tag}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}"
        )

    async def register(self, password: str = "demo100") -> str:
        call_id, tag = secrets.token_hex(8), secrets.token_hex(4)

        def build(cseq: int, auth: str = "") -> str:
            return self.request(
                "REGISTER",
                "sip:demo",
                cseq=cseq,
                call_id=call_id,
                from_tag=tag,
                extra=(
                    f"To: <sip:100@demo>\r\n"
                    f"Contact: <sip:ws100@{self.host};transport={self.transport.lower()}>"
                    f";expires=300\r\n{auth}\r\n"
                ),
            )

        await self.send(build(1))
        challenge = await self.final()
        assert _status(challenge) == 401, challenge
        value = DigestClient("100", password).authorize(
            "REGISTER", "sip:demo", _header(challenge, "www-authenticate")
        )
        await self.send(build(2, f"Authorization: {value}\r\n"))
        return await self.final()

    async def close(self) -> None:
        try:
            self.writer.write(self.ws.send(CloseConnection(code=1000)))
            await self.writer.drain()
        except Exception:  # already closed by the node
            pass
        self.writer.close()


def _call_until_bye(port: int, number: str) -> str:
    """A UDP caller: INVITE ``number``, ACK the 200, then wait for the node's BYE,
    answer it, and return it."""
    call_id = secrets.token_hex(8)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(TIMEOUT)
        lp = s.getsockname()[1]
        ruri = f"sip:{number}@127.0.0.1:{port}"
        common = f"From: <sip:caller@127.0.0.1:{lp}>;tag=c{call_id}\r\nCall-ID: {call_id}\r\n"
        sdp = _sdp(40000)
        s.sendto(
            (
                f"INVITE {ruri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK{call_id};rport\r\n"
                f"{common}To: <{ruri}>\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
                f"Contact: <sip:caller@127.0.0.1:{lp}>\r\nContent-Type: application/sdp\r\n"
                f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
            ).encode(),
            ("127.0.0.1", port),
        )
        while True:
            answer = s.recv(65535).decode()
            if _status(answer) >= 200:
                break
        assert _status(answer) == 200, answer
        s.sendto(
            (
                f"ACK {ruri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bKa{call_id};rport\r\n"
                f"{common}To: {_header(answer, 'to')}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        while True:
            bye, source = s.recvfrom(65535)
            text = bye.decode()
            if text.startswith("BYE "):
                break
        keep = ("via", "from", "to", "call-id", "cseq")
        lines = [ln for ln in _head(text)[1:] if ln.partition(":")[0].strip().lower() in keep]
        ok = "SIP/2.0 200 OK\r\n" + "\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n"
        s.sendto(ok.encode(), source)
        return text


async def _closed_by_node(reader: asyncio.StreamReader) -> None:
    """Returns when the node has closed (or reset) the connection; fails after TIMEOUT."""
    try:
        await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionResetError:
        pass


async def _wait_log(daemon: Daemon, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in daemon.log():
        assert time.monotonic() < deadline, f"{text!r} not in the log:\n{daemon.log()}"
        await asyncio.sleep(0.05)


def _start(
    tmp_path: Path, daemon_factory: DaemonFactory, *, metrics: bool = False, **settings: object
) -> tuple[Daemon, int, int, Path]:
    cert, key = _self_signed(tmp_path)
    ws_port = free_port(socket.SOCK_STREAM, both=False)
    wss_port = free_port(socket.SOCK_STREAM, both=False)
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ws_port": ws_port,
                "wss_port": wss_port,
                "tls_cert": str(cert),
                "tls_key": str(key),
                "tls_port": free_port(socket.SOCK_STREAM, both=False),
                **settings,
            }
        )
    )
    return daemon_factory("--config", str(config), metrics=metrics), ws_port, wss_port, cert


def test_register_options_and_ivr_call_over_ws(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    daemon, ws_port, _, _ = _start(tmp_path, daemon_factory, metrics=True)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.setblocking(False)

    async def main() -> None:
        phone, accepted = await WsPhone.connect(ws_port)
        assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "sip"
        # OPTIONS without Content-Length (RFC 7118 §5.1: the WebSocket message frames it)
        await phone.send(
            phone.request(
                "OPTIONS",
                "sip:ping@127.0.0.1",
                cseq=1,
                call_id="opt-1",
                from_tag="o",
                extra="To: <sip:ping@127.0.0.1>\r\n\r\n",
            )
        )
        options = await phone.final()
        assert options.startswith("SIP/2.0 200 OK\r\n"), options
        # the Via sent-by stays the client's .invalid name; received names the real source
        assert f"Via: SIP/2.0/WS {phone.host};branch=" in options
        assert ";received=127.0.0.1" in options

        # a Content-Length larger than the message is a 400, not a wait for more bytes
        await phone.send(
            phone.request(
                "OPTIONS",
                "sip:ping@127.0.0.1",
                cseq=2,
                call_id="opt-2",
                from_tag="o",
                extra="To: <sip:ping@127.0.0.1>\r\nContent-Length: 10\r\n\r\nabc",
            )
        )
        bad = await phone.final()
        assert bad.startswith("SIP/2.0 400 "), bad

        ok = await phone.register()
        assert ok.startswith("SIP/2.0 200 OK"), ok
        assert f"sip:ws100@{phone.host};transport=ws" in _header(ok, "contact")

        # a call to the demo IVR (1000) over the WebSocket: 200 with SDP, RTP to us
        call_id, tag = secrets.token_hex(8), secrets.token_hex(4)
        sdp = _sdp(rtp.getsockname()[1])
        ruri = "sip:1000@127.0.0.1"
        common = dict(call_id=call_id, from_tag=tag)
        contact = f"Contact: <sip:ws100@{phone.host};transport=ws>\r\n"
        await phone.send(
            phone.request(
                "INVITE",
                ruri,
                cseq=1,
                **common,
                extra=(
                    f"To: <{ruri}>\r\n{contact}Content-Type: application/sdp\r\n"
                    f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
                ),
            )
        )
        answer = await phone.final()
        assert answer.startswith("SIP/2.0 200 OK"), answer
        assert "m=audio " in answer and "RTP/AVP 0" in answer
        # RFC 7118: the node's Contact toward a WS client names the ws transport
        assert _header(answer, "contact").endswith(f":{ws_port};transport=ws>")
        to = f"To: {_header(answer, 'to')}\r\n"
        await phone.send(phone.request("ACK", ruri, cseq=1, **common, extra=f"{to}\r\n"))

        loop = asyncio.get_running_loop()
        packets = 0
        deadline = loop.time() + TIMEOUT
        while packets < 25 and loop.time() < deadline:  # 0.5 s of the welcome prompt
            data = await asyncio.wait_for(loop.sock_recv(rtp, 2048), TIMEOUT)
            if len(data) == 12 + 160 and data[1] & 0x7F == 0:  # PCMU, 20 ms
                packets += 1
        assert packets == 25

        await phone.send(phone.request("BYE", ruri, cseq=2, **common, extra=f"{to}\r\n"))
        bye = await phone.final()
        assert bye.startswith("SIP/2.0 200 OK") and "CSeq: 2 BYE" in bye, bye

        # a ping is answered (RFC 6455 §5.5.2)
        phone.writer.write(phone.ws.send(Ping(b"keepalive")))
        while not any(isinstance(e, Pong) for e in phone.control):
            phone.control += await phone._read()

        # a second call, then the connection drops without a BYE nor a close frame (a
        # tab that crashed): the node ends the call at once, not at the RTP timeout
        common = dict(call_id=secrets.token_hex(8), from_tag=tag)
        await phone.send(
            phone.request(
                "INVITE",
                ruri,
                cseq=1,
                **common,
                extra=(
                    f"To: <{ruri}>\r\n{contact}Content-Type: application/sdp\r\n"
                    f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
                ),
            )
        )
        answer = await phone.final()
        assert answer.startswith("SIP/2.0 200 OK"), answer
        to = f"To: {_header(answer, 'to')}\r\n"
        await phone.send(phone.request("ACK", ruri, cseq=1, **common, extra=f"{to}\r\n"))
        assert daemon.metrics_port is not None
        await asyncio.to_thread(wait_metric, daemon.metrics_port, "callengine_active_calls", 1)
        phone.writer.transport.abort()
        t0 = time.monotonic()
        await asyncio.to_thread(wait_metric, daemon.metrics_port, "callengine_active_calls", 0)
        assert time.monotonic() - t0 < 5.0

    try:
        asyncio.run(main())
    finally:
        rtp.close()


def test_ring_group_rings_the_ws_phone_over_its_connection_then_480_when_closed(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    daemon, ws_port, _, _ = _start(tmp_path, daemon_factory)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))

    async def main() -> None:
        phone, _ = await WsPhone.connect(ws_port)
        ok = await phone.register()
        assert ok.startswith("SIP/2.0 200 OK"), ok

        # 1001 is the demo tenant's sales group (100, 101): a UDP caller dials it
        caller = asyncio.ensure_future(asyncio.to_thread(sip_call, daemon.port, "1001", hold=0.3))
        invite = await phone.recv()
        assert invite.startswith(f"INVITE sip:ws100@{phone.host};transport=ws SIP/2.0\r\n"), invite
        assert _header(invite, "via").startswith(f"SIP/2.0/WS 127.0.0.1:{ws_port};")
        assert _header(invite, "contact").endswith(f":{ws_port};transport=ws>")
        vias = [line for line in _head(invite) if line.lower().startswith("via:")]
        assert len(vias) == 1  # a B2BUA leg: the node's own Via only, no proxying

        def reply(status: str, sdp: str = "", *, request: str = invite) -> str:
            lines = [f"SIP/2.0 {status}"]
            for line in _head(request)[1:]:
                name = line.partition(":")[0].strip().lower()
                if name in ("via", "from", "call-id", "cseq"):
                    lines.append(line)
                elif name == "to":
                    lines.append(line + ";tag=wsphone")
            lines.append(f"Contact: <sip:ws100@{phone.host};transport=ws>")
            if sdp:
                lines.append("Content-Type: application/sdp")
            return "\r\n".join(lines) + f"\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"

        await phone.send(reply("180 Ringing"))
        await phone.send(reply("200 OK", _sdp(rtp.getsockname()[1])))
        # the ACK and the caller's BYE reach us over the same connection, although our
        # Contact's host is a .invalid name nobody can resolve
        ack = await phone.recv()
        assert ack.startswith(f"ACK sip:ws100@{phone.host};transport=ws SIP/2.0"), ack
        bye = await phone.recv()
        assert bye.startswith("BYE "), bye
        bye_ok = [
            line
            for line in _head(bye)[1:]
            if line.partition(":")[0].strip().lower() in ("via", "from", "to", "call-id", "cseq")
        ]
        await phone.send("SIP/2.0 200 OK\r\n" + "\r\n".join(bye_ok) + "\r\n\r\n")
        result = await caller
        assert result.status == 200

        # a second call is answered, then the connection drops (no BYE, no close frame:
        # a crashed tab): the caller gets the BYE at once (Q.850 41), not at Timer B
        # or the RTP timeout
        caller = asyncio.ensure_future(asyncio.to_thread(_call_until_bye, daemon.port, "1001"))
        invite2 = await phone.recv()
        assert invite2.startswith("INVITE "), invite2
        await phone.send(reply("200 OK", _sdp(rtp.getsockname()[1]), request=invite2))
        assert (await phone.recv()).startswith("ACK "), "no ACK"
        phone.writer.transport.abort()
        t0 = time.monotonic()
        bye = await caller
        assert time.monotonic() - t0 < 2.0
        assert "Reason: Q.850;cause=41" in bye, bye

        # the connection closed: the binding went with it, and the next call to the
        # group gets 480 at once (no dead connection tried, nothing waits for Timer B)
        await _wait_log(daemon, "bindings of 100@demo removed")
        result = await asyncio.to_thread(sip_call, daemon.port, "1001")
        assert result.status == 480, result
        assert result.elapsed < 2.0, result

    try:
        asyncio.run(main())
    finally:
        rtp.close()


def test_ws_binding_from_before_a_restart_is_not_rung(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    # the node dies (kill -9) with a WS phone registered: its binding stays in LevelDB,
    # but the connection it belongs to is gone; after the restart the group's call must
    # not wait on it, nor ring a new connection that happens to come from its address
    daemon, ws_port, _, _ = _start(tmp_path, daemon_factory)
    local_port = free_port(socket.SOCK_STREAM, both=False)

    async def register_then_kill() -> None:
        phone, _ = await WsPhone.connect(ws_port, local_port=local_port)
        ok = await phone.register()
        assert ok.startswith("SIP/2.0 200 OK"), ok
        assert await asyncio.to_thread(daemon.stop, signal.SIGKILL) == -signal.SIGKILL
        await _closed_by_node(phone.reader)  # the node's side closed first: port free
        phone.writer.close()

    asyncio.run(register_then_kill())
    config = daemon.args[daemon.args.index("--config") + 1]
    daemon = daemon_factory("--config", config, port=daemon.port, data_dir=daemon.data_dir)

    async def call_with_an_unregistered_phone_on_that_address() -> None:
        other, _ = await WsPhone.connect(ws_port, local_port=local_port)
        result = await asyncio.to_thread(sip_call, daemon.port, "1001")
        assert result.status == 480, result
        assert result.elapsed < 2.0, result
        # an INVITE, had one been sent, would arrive before this OPTIONS's answer
        await other.send(
            other.request(
                "OPTIONS",
                "sip:ping@127.0.0.1",
                cseq=1,
                call_id="after",
                from_tag="a",
                extra="To: <sip:ping@127.0.0.1>\r\n\r\n",
            )
        )
        assert (await other.recv()).startswith("SIP/2.0 200 OK")
        await other.close()

    asyncio.run(call_with_an_unregistered_phone_on_that_address())


def test_wss_register_with_the_node_certificate(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    daemon, _, wss_port, cert = _start(tmp_path, daemon_factory)

    async def main() -> None:
        tls = ssl.create_default_context(cafile=str(cert))
        phone, accepted = await WsPhone.connect(wss_port, tls=tls)
        assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "sip"
        ok = await phone.register()
        assert ok.startswith("SIP/2.0 200 OK"), ok
        assert f"Via: SIP/2.0/WSS {phone.host};" in ok
        assert f"sip:ws100@{phone.host};transport=wss" in _header(ok, "contact")
        # the node stopping says so: close frame 1001 "going away" (RFC 6455 §7.4.1)
        assert await asyncio.to_thread(daemon.stop) == 0
        with pytest.raises(ConnectionError, match="closed by the node: 1001"):
            await phone.recv()
        phone.writer.close()

    asyncio.run(main())


def test_refusals_size_cap_and_per_source_connection_cap(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    daemon, ws_port, _, _ = _start(
        tmp_path,
        daemon_factory,
        source_exempt=[],
        tcp_max_per_source=2,
        max_message_size=2048,
        tcp_first_message_timeout=1.0,
        metrics=True,
    )

    async def main() -> None:
        # RFC 7118 §4: an upgrade that does not offer "sip" is refused
        phone, answer = await WsPhone.connect(ws_port, subprotocols=("chat",))
        assert isinstance(answer, RejectConnection) and answer.status_code == 400
        await _closed_by_node(phone.reader)
        phone.writer.close()

        # a message over max_message_size: close frame 1009 (RFC 6455 §7.4.1)
        phone, _ = await WsPhone.connect(ws_port)
        await phone.send("OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nX-Pad: " + "a" * 3000 + "\r\n\r\n")
        with pytest.raises(ConnectionError, match="closed by the node: 1009"):
            await phone.recv()
        phone.writer.close()

        # WebSocket connections count in the per-source cap like TCP ones
        first, _ = await WsPhone.connect(ws_port)
        second, _ = await WsPhone.connect(ws_port)
        reader, writer = await asyncio.open_connection("127.0.0.1", ws_port)
        await _closed_by_node(reader)  # aborted before the upgrade is read
        writer.close()
        # the first two still work
        for n, p in enumerate((first, second)):
            await p.send(
                p.request(
                    "OPTIONS",
                    "sip:ping@127.0.0.1",
                    cseq=1,
                    call_id=f"cap-{n}",
                    from_tag="c",
                    extra="To: <sip:ping@127.0.0.1>\r\n\r\n",
                )
            )
            assert (await p.final()).startswith("SIP/2.0 200 OK")
            await p.close()

        # an upgraded connection that sends no SIP message is closed after
        # tcp_first_message_timeout, like a silent TCP one
        silent, _ = await WsPhone.connect(ws_port)
        t0 = time.monotonic()
        await _closed_by_node(silent.reader)
        assert 0.5 < time.monotonic() - t0 < 3.0
        silent.writer.close()

    asyncio.run(main())
    assert "refused WebSocket upgrade from ('127.0.0.1'" in daemon.log()
    assert daemon.metrics_port is not None
    metrics = scrape_fresh(daemon.metrics_port)
    assert metrics['callengine_transport_errors_total{kind="ws_upgrade"}'] == 1
    assert metrics['callengine_transport_errors_total{kind="framing"}'] == 1  # the 1009
    assert metrics['callengine_stream_connections_closed_total{reason="refused"}'] == 1
    assert metrics['callengine_stream_connections_closed_total{reason="idle"}'] == 1


def test_a_ws_phone_is_rung_by_every_worker_of_a_multi_worker_node(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """``workers: 2``: the phone registers over WS through one worker (its AOR's home);
    a call held by either worker rings it over the front's connection, and the answer
    and the BYE find their way back (docs/workers.md)."""
    from callengine.dispatch import call_id_for

    daemon, ws_port, _, _ = _start(tmp_path, daemon_factory, workers=2)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))

    async def main() -> None:
        phone, _ = await WsPhone.connect(ws_port)
        ok = await phone.register()
        assert ok.startswith("SIP/2.0 200 OK"), ok
        for worker in (0, 1):
            call_id = call_id_for(worker, 2, "caller")
            caller = asyncio.ensure_future(
                asyncio.to_thread(sip_call, daemon.port, "1001", hold=0.3, call_id=call_id)
            )
            invite = await phone.recv()
            assert invite.startswith(f"INVITE sip:ws100@{phone.host};transport=ws "), invite
            head = _head(invite)[1:]
            keep = [
                ln for ln in head if ln.split(":")[0].lower() in ("via", "from", "call-id", "cseq")
            ]
            to = [ln + ";tag=wsphone" for ln in head if ln.split(":")[0].lower() == "to"]
            sdp = _sdp(rtp.getsockname()[1])
            await phone.send(
                "\r\n".join(["SIP/2.0 200 OK", *keep, *to])
                + f"\r\nContact: <sip:ws100@{phone.host};transport=ws>"
                + f"\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
            )
            assert (await phone.recv()).startswith("ACK "), worker
            bye = await phone.recv()
            assert bye.startswith("BYE "), bye
            lines = [
                ln
                for ln in _head(bye)[1:]
                if ln.split(":")[0].lower() in ("via", "from", "to", "call-id", "cseq")
            ]
            await phone.send("SIP/2.0 200 OK\r\n" + "\r\n".join(lines) + "\r\n\r\n")
            assert (await caller).status == 200, worker
        await phone.close()

    try:
        asyncio.run(main())
    finally:
        rtp.close()
