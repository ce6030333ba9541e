"""A user's registered phone rings: REGISTER with digest auth (RFC 7616) to the node,
the node restarts (bindings are kept in its LevelDB), then a call to a number routed to
the user's ring group reaches that phone (a SIPp UAS) and is bridged (the B2BUA's
user/group transfer path)."""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from integration.support import SIPP, Daemon, free_port

from callengine.sip.auth import DigestClient

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sipp"
SDP = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def _transact(sock: socket.socket, data: str, port: int) -> str:
    """Send a request, return its final response (provisionals skipped)."""
    sock.sendto(data.encode(), ("127.0.0.1", port))
    while True:
        reply = sock.recv(65535).decode(errors="replace")
        if int(reply.split()[1]) >= 200:
            return reply


def _header(message: str, name: str) -> str:
    for line in message.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name} in {message!r}")


def register(node_port: int, user: str, password: str, contact_port: int) -> str:
    """REGISTER user@demo with the phone's Contact, from the phone's own port (as a phone
    does: the node sends later INVITEs to where the REGISTER came from, for NAT);
    answers the digest challenge."""
    call_id = secrets.token_hex(8)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", contact_port))
        s.settimeout(5)
        lp = s.getsockname()[1]

        def request(cseq: int, extra: str = "") -> str:
            return (
                f"REGISTER sip:demo SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
                f"From: <sip:{user}@demo>;tag=r{call_id}\r\nTo: <sip:{user}@demo>\r\n"
                f"Call-ID: {call_id}@phone\r\nCSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n"
                f"Contact: <sip:{user}@127.0.0.1:{contact_port}>\r\nExpires: 300\r\n"
                f"{extra}Content-Length: 0\r\n\r\n"
            )

        challenge = _transact(s, request(1), node_port)
        assert challenge.startswith("SIP/2.0 401 "), challenge
        value = DigestClient(user, password).authorize(
            "REGISTER", "sip:demo", _header(challenge, "www-authenticate")
        )
        return _transact(s, request(2, f"Authorization: {value}\r\n"), node_port)


def test_call_to_a_ring_group_reaches_the_registered_phone(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    daemon = daemon_factory()
    phone_port = free_port(both=False)
    workdir = tmp_path / "phone"
    workdir.mkdir()
    ok = register(daemon.port, "100", "demo100", phone_port)
    assert ok.startswith("SIP/2.0 200 OK"), ok
    assert f"sip:100@127.0.0.1:{phone_port}" in _header(ok, "contact")
    # bindings survive a restart of the node (they live in its LevelDB)
    assert daemon.stop() == 0
    daemon = daemon_factory(port=daemon.port, data_dir=daemon.data_dir)
    phone = subprocess.Popen(
        [
            SIPP,
            "-sf",
            str(FIXTURES / "pri_uas_answer.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            str(phone_port),
            "-mp",
            str(free_port(both=False)),
            "-nostdin",
            "-trace_counts",
            "-fd",
            "1",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)

        # 1001 is the demo tenant's "Sales direct" number: ring group sales (100, 101)
        call_id = secrets.token_hex(8)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(15)
            lp = s.getsockname()[1]
            ruri = f"sip:1001@127.0.0.1:{daemon.port}"
            common = (
                f"From: <sip:caller@127.0.0.1:{lp}>;tag=c{call_id}\r\n"
                f"Call-ID: {call_id}@caller\r\nMax-Forwards: 70\r\n"
            )
            invite = (
                f"INVITE {ruri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK{call_id};rport\r\n"
                f"{common}To: <{ruri}>\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:caller@127.0.0.1:{lp}>\r\nContent-Type: application/sdp\r\n"
                f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
            )
            answer = _transact(s, invite, daemon.port)
            assert answer.startswith("SIP/2.0 200 OK"), answer
            to = f"To: {_header(answer, 'to')}\r\n"
            s.sendto(
                (
                    f"ACK {ruri} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bKa{call_id};rport\r\n"
                    f"{common}{to}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", daemon.port),
            )
            time.sleep(0.5)
            bye = _transact(
                s,
                f"BYE {ruri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bKb{call_id};rport\r\n"
                f"{common}{to}CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
                daemon.port,
            )
            assert bye.startswith("SIP/2.0 200 OK"), bye
        time.sleep(0.5)
    finally:
        if phone.poll() is None:
            phone.send_signal(2)  # SIGINT: SIPp writes its final counts
            try:
                phone.wait(5)
            except subprocess.TimeoutExpired:
                phone.kill()
    counts = next(workdir.glob("*_counts.csv")).read_text().splitlines()
    header, last = counts[0].split(";"), counts[-1].split(";")
    # the phone got the INVITE and the BYE carried over from the caller's hangup
    assert int(last[header.index("1_INVITE_Recv")]) == 1, counts
    assert int(last[header.index("5_BYE_Recv")]) == 1, counts
