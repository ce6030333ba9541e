"""Concurrent WebRTC legs per core, side by side with plain RTP legs (issue 13).

Run from the repository root::

    python -m benchmarks.webrtc_legs                       # steps 5,10,20,40,80; 15 s windows
    python -m benchmarks.webrtc_legs --quick               # steps 5,15; 6 s windows (~1 min)
    python -m benchmarks.webrtc_legs --mode ivr            # WebRTC -> IVR instead of bridged
    python -m benchmarks.webrtc_legs --codec opus --steps 5,10,20

What is measured, per step N (every step starts fresh processes):

WebRTC legs
    ``callengine serve`` (the node under test: a ``ws_port``, the demo tenant plus a
    benchmark tenant) and, in a SEPARATE process (``python -m benchmarks.webrtc_legs
    client``, so its CPU is not the node's), N WebRTC callers. Each caller has its own
    SIP-over-WebSocket connection (RFC 7118, no registration) and sends an INVITE whose
    offer aiortc makes (``media.webrtc.WebRtcSession.offer``: ICE, DTLS-SRTP, bundle,
    rtcp-mux), ACKs the 200, applies the node's answer and plays a prompt in a loop.
    ``--mode bridged`` (the default) calls number 7001, routed to ``user:agent``: the
    benchmark registers a SIPp UAS as ``agent`` (digest auth), so every WebRTC leg is
    bridged by the node's B2BUA to a plain SIP/RTP leg to SIPp, which answers in PCMA and
    streams a G.711 capture back. ``--mode ivr`` calls 7000, an IVR flow that plays a
    prompt until hang-up (one leg per call).
RTP legs
    The same node, started fresh, and SIPp as UAC with a G.711 (PCMA) capture played in
    a loop to the same number: N plain SIP/RTP calls (bridged to the same SIPp UAS in
    ``bridged`` mode).

Once all N calls are up (WebRTC: ICE and DTLS connected on every leg; RTP: the node's
``callengine_active_calls``), and ``--settle`` seconds later, a window of ``--window``
seconds measures:

* node CPU %: utime + stime of the node's whole process tree (/proc), 100 % = one core;
  the load generator's CPU (client process, SIPp) beside it;
* media delivered (WebRTC): 20 ms frames each caller received from the node during the
  window against window / 20 ms (aiortc's receiver decodes them); the step's delivery is
  the sum over callers against N x expected, with the worst caller beside it;
* where the node's time goes: py-spy samples the node during the window (``record
  --format raw --nonblocking``, 100 Hz, active samples only) and each sample is put in
  the category of its innermost frame that has one: SRTP (pylibsrtp), Opus, G.711 and
  resampling in aiortc's codecs, DTLS (aiortc's DTLS transport, pyOpenSSL,
  cryptography), ICE (aioice: connectivity/consent checks and the socket path every
  packet takes), aiortc RTP/RTCP (sender, receiver, jitter buffer, RTCP), the engine's
  WebRTC glue (``media/webrtc.py``, ``media/codecs``), the engine (SIP, calls, IVR, RTP
  sessions, B2BUA relay), the event loop (asyncio), other.

Saturation: the first N at which WebRTC delivery drops below 99 %. The ratio printed is
node CPU per WebRTC leg over node CPU per RTP leg at the same N.

The load generator runs aiortc too, as costly as the node's side: on a 2-core machine
the two compete, so its CPU is reported (a client above ~90 % of a core makes delivery
figures the client's, not the node's; ``--clients K`` spreads callers over K processes).
Results are printed as a markdown table and written to
``benchmarks/results/webrtc_legs-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from benchmarks._metrics import (  # noqa: E402
    Samples,
    highest_bucket,
    histogram_delta,
    histogram_quantile,
    scrape,
    value,
)
from benchmarks._sipp import (  # noqa: E402
    SIPP,
    SIPP_BUFFER,
    Peer,
    free_port,
    media_pid,
    start_engine,
    tree_cpu_by_process,
    tree_cpu_seconds,
)

RESULTS = ROOT / "benchmarks" / "results"
DEMO_TENANT = ROOT / "config_cache" / "demo" / "demo.json"
PCAP_DIR = Path("/usr/share/sip-tester")  # g711a.pcap: 7.05 s of PCMA
PCAP_SECONDS = 7.1
IVR_NUMBER, BRIDGED_NUMBER = "7000", "7001"
AGENT, AGENT_PASSWORD = "agent", "bench-agent-7001"
CATEGORIES = (
    "SRTP",
    "Opus",
    "G.711/resample (aiortc codecs)",
    "DTLS",
    "UDP syscalls",
    "GIL handoff (codec threads)",
    "ICE (aioice)",
    "aiortc RTP/RTCP",
    "engine WebRTC glue",
    "engine",
    "event loop",
    "other",
)
WAITING = "waiting"
"""Samples of a thread blocked (idle pool threads, the GIL): not CPU, left out of the
shares and counted apart."""
# (category, substring of a frame), tried on each frame of a stack from the innermost
# outwards; the first frame that matches a rule decides. py-spy's native frames name C
# functions and their library ("sendmsg (libc.so.6)", "srtp_protect_mki
# (pylibsrtp/_binding.abi3.so)"), its Python frames "function (path:line)".
RULES = (
    (WAITING, "pthread_cond_timedwait"),
    (WAITING, "pthread_cond_wait"),
    (WAITING, "epoll_pwait"),
    (WAITING, "epoll_wait"),
    (WAITING, "sem_clockwait"),
    (WAITING, "sem_timedwait"),
    (WAITING, "sem_wait"),
    (WAITING, "take_gil"),
    (WAITING, "PyThread_acquire_lock"),
    ("SRTP", "srtp"),
    ("Opus", "opus"),
    ("Opus", "Opus"),
    ("G.711/resample (aiortc codecs)", "aiortc/codecs/"),
    ("G.711/resample (aiortc codecs)", "/av/"),
    ("G.711/resample (aiortc codecs)", "libswresample"),
    ("G.711/resample (aiortc codecs)", "libavcodec"),
    ("G.711/resample (aiortc codecs)", "2av_"),  # Cython frames of PyAV (av.AudioFrame)
    ("DTLS", "rtcdtlstransport.py"),
    ("DTLS", "OpenSSL/"),
    ("DTLS", "libssl"),
    ("DTLS", "libcrypto"),
    ("DTLS", "cryptography/"),
    ("UDP syscalls", "sendmsg ("),
    ("UDP syscalls", "sendto ("),
    ("UDP syscalls", "recvmsg ("),
    ("UDP syscalls", "recvfrom ("),
    ("GIL handoff (codec threads)", "sem_post"),
    ("GIL handoff (codec threads)", "pthread_cond_signal"),
    ("GIL handoff (codec threads)", "PyThread_release_lock"),
    ("GIL handoff (codec threads)", "drop_gil"),
    ("ICE (aioice)", "aioice/"),
    ("ICE (aioice)", "rtcicetransport.py"),
    ("aiortc RTP/RTCP", "aiortc/"),
    ("engine WebRTC glue", "media/webrtc.py"),
    ("engine WebRTC glue", "media/codecs/"),
    ("engine", "callengine/"),
    ("engine", "media/"),
    ("engine", "ivr/"),
    ("engine", "config_cache/"),
    ("engine", "pri/"),
    ("event loop", "asyncio/"),
    ("event loop", "uvloop"),
    ("event loop", "loop.c"),
    ("event loop", "uv__"),
    ("event loop", "uv_"),
)
_NAMED = re.compile(r"^(?!0x[0-9a-f]+ \()")  # a frame with a symbol, not a bare address


# ------------------------------------------------------------------------ the set-up


def bench_tenant() -> dict[str, Any]:
    """Tenant ``wrtc``: 7000 -> a prompt played until hang-up; 7001 -> user ``agent``
    (the registered SIPp UAS)."""
    return {
        "id": "wrtc",
        "rev": 1,
        "name": "WebRTC legs benchmark",
        "realm": "wrtc",
        "numbers": {
            IVR_NUMBER: {"route": "ivr:hold", "name": "looping prompt"},
            BRIDGED_NUMBER: {"route": f"user:{AGENT}", "name": "bridged to the SIPp UAS"},
        },
        "users": {AGENT: {"name": "SIPp UAS", "password": AGENT_PASSWORD}},
        "flows": {
            "hold": {
                "start": "loop",
                "nodes": {
                    "loop": {
                        "type": "play",
                        "prompts": ["menu"] * 10,
                        "barge_in": False,
                        "next": "loop",
                    }
                },
            }
        },
    }


def prepare_template(workdir: Path, codecs: list[str]) -> tuple[Path, Path]:
    """A data directory with the demo and benchmark tenants imported (copied for every
    node), and the node's configuration file."""
    tenants = workdir / "tenants.json"
    demo = json.loads(DEMO_TENANT.read_text())
    tenants.write_text(json.dumps([demo, bench_tenant()], indent=1))
    data = workdir / "template-data"
    proc = subprocess.run(
        [sys.executable, "-m", "callengine.cli", "config", "import", str(tenants)]
        + ["--data-dir", str(data)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"callengine config import failed:\n{proc.stdout}{proc.stderr}")
    config = workdir / "node.yaml"
    config.write_text(
        "\n".join(
            [
                f"codecs: [{', '.join(codecs)}]",
                "rtp_timeout: 0",  # SIPp's capture has gaps between two plays
                "tcp_max_per_source: 10000",  # every caller's WebSocket comes from 127.0.0.1
                "max_calls: 20000",
                "workers: 1",
            ]
        )
        + "\n"
    )
    return data, config


def start_node(step_dir: Path, template: Path, config: Path) -> tuple[Peer, int, int]:
    """``callengine serve`` with a WebSocket port and /metrics; returns (peer, ws, metrics)."""
    shutil.copytree(template, step_dir / "data")
    ws_port = free_port()
    metrics_port = free_port()
    peer = start_engine(
        step_dir,
        metrics_port=metrics_port,
        # --drain-grace: SIPp's callers are stopped without BYE; do not wait 30 s for them
        extra=("--config", str(config), "--ws-port", str(ws_port), "--drain-grace", "1"),
    )
    return peer, ws_port, metrics_port


def _pcap_link(workdir: Path) -> None:
    """SIPp's ``play_pcap_audio`` paths are relative to its working directory."""
    link = workdir / "pcap"
    if not link.exists():
        link.symlink_to(PCAP_DIR)


def _plays(seconds: float, *, uas: bool) -> str:
    """SIPp scenario lines that stream g711a.pcap again and again.

    The UAS loops until the node's BYE (``recv`` with a timeout that jumps back); the
    UAC plays for ``seconds`` then hangs up."""
    play = '<nop><action><exec play_pcap_audio="pcap/g711a.pcap"/></action></nop>'
    wait = int(PCAP_SECONDS * 1000)
    if uas:
        return f'<label id="1"/>\n{play}\n<recv request="BYE" timeout="{wait}" ontimeout="1"/>'
    repeats = max(1, math.ceil(seconds / PCAP_SECONDS))
    return "\n".join(f'{play}\n<pause milliseconds="{wait}"/>' for _ in range(repeats))


_SDP = """
      v=0
      o=sipp 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
      a=sendrecv
"""


def uas_scenario(path: Path) -> None:
    """The registered agent: answers in PCMA, streams the capture until the node's BYE."""
    path.write_text(
        f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="webrtc_legs agent">
  <recv request="INVITE" crlf="true"/>
  <send retrans="500"><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:{AGENT}@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]
{_SDP}
  ]]></send>
  <recv request="ACK" crlf="true"/>
  {_plays(0, uas=True)}
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
  ]]></send>
</scenario>
"""
    )


def uac_scenario(path: Path, hold: float) -> None:
    """The RTP callers: INVITE with a PCMA offer, stream the capture for ``hold`` s, BYE."""
    via = "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]"
    common = """From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70"""
    path.write_text(
        f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="webrtc_legs rtp caller">
  <send retrans="500"><![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      {via}
      {common}
      CSeq: 1 INVITE
      Content-Type: application/sdp
      Content-Length: [len]
{_SDP}
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true"/>
  <send><![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      {via}
      {common}
      CSeq: 1 ACK
      Content-Length: 0
  ]]></send>
  {_plays(hold, uas=False)}
  <send retrans="500"><![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      {via}
      {common}
      CSeq: 2 BYE
      Content-Length: 0
  ]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""
    )


def start_agent(workdir: Path, node_port: int) -> Peer:
    """Register ``agent`` from a port, then start the SIPp UAS on that port (the node
    sends its INVITEs to where the REGISTER came from)."""
    import socket

    from callengine.sip.auth import DigestClient

    workdir.mkdir(parents=True, exist_ok=True)
    _pcap_link(workdir)
    port = free_port()
    call_id = secrets.token_hex(8)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        s.settimeout(5)

        def register(cseq: int, extra: str = "") -> str:
            s.sendto(
                (
                    f"REGISTER sip:wrtc SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)}"
                    f";rport\r\nFrom: <sip:{AGENT}@wrtc>;tag=r{call_id}\r\n"
                    f"To: <sip:{AGENT}@wrtc>\r\nCall-ID: {call_id}\r\n"
                    f"CSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n"
                    f"Contact: <sip:{AGENT}@127.0.0.1:{port}>\r\nExpires: 3600\r\n"
                    f"{extra}Content-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", node_port),
            )
            while True:
                reply = s.recv(65535).decode(errors="replace")
                if int(reply.split()[1]) >= 200:
                    return reply

        challenge = register(1)
        header = _header(challenge, "www-authenticate")
        value_ = DigestClient(AGENT, AGENT_PASSWORD).authorize("REGISTER", "sip:wrtc", header)
        ok = register(2, f"Authorization: {value_}\r\n")
        if not ok.startswith("SIP/2.0 200"):
            raise RuntimeError(f"agent registration refused:\n{ok}")
    scenario = workdir / "agent.xml"
    uas_scenario(scenario)
    log_path = workdir / "agent.log"
    args = [SIPP, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port)]
    args += ["-mp", str(free_port()), "-nostdin", "-max_socket", "10000", *SIPP_BUFFER]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, cwd=workdir)
    time.sleep(0.3)
    if proc.poll() is not None:
        raise RuntimeError(f"SIPp agent did not start:\n{log_path.read_text(errors='replace')}")
    return Peer("agent", proc, port, workdir, log_path)


def _header(message: str, name: str) -> str:
    for line in message.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        key, _, val = line.partition(":")
        if key.strip().lower() == name:
            return val.strip()
    return ""


# ------------------------------------------------------------------ the load generator


class WsSip:
    """One caller's SIP-over-WebSocket connection (RFC 7118 client side, wsproto)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from wsproto import ConnectionType, WSConnection

        self.reader, self.writer = reader, writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.host = f"{secrets.token_hex(5)}.invalid"  # RFC 7118 §5.2
        self.responses: asyncio.Queue[str] = asyncio.Queue()
        self.bye = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int) -> WsSip:
        from wsproto.events import AcceptConnection, Request

        deadline = time.monotonic() + 20
        while True:  # the WS listener opens just after the UDP one start_engine waits on
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        self = cls(reader, writer)
        writer.write(self.ws.send(Request(host="127.0.0.1", target="/", subprotocols=["sip"])))
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("closed during the WebSocket handshake")
            self.ws.receive_data(data)
            if any(isinstance(e, AcceptConnection) for e in self.ws.events()):
                break
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

        parts: list[str] = []
        while True:
            data = await self.reader.read(65536)
            if not data:
                self.bye.set()
                return
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Ping):
                    self.writer.write(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.bye.set()
                    return
                elif isinstance(event, TextMessage | BytesMessage):
                    chunk = event.data if isinstance(event.data, str) else event.data.decode()
                    parts.append(chunk)
                    if event.message_finished:
                        self._message("".join(parts))
                        parts = []

    def _message(self, message: str) -> None:
        if message.startswith("SIP/2.0 "):
            self.responses.put_nowait(message)
            return
        # a request from the node (BYE, OPTIONS, INFO): 200 OK
        head = message.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = [ln for ln in head[1:] if ln.split(":", 1)[0].strip().lower() in _ECHOED]
        self.send("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n")
        if head[0].startswith("BYE "):
            self.bye.set()

    def send(self, message: str) -> None:
        from wsproto.events import TextMessage

        self.writer.write(self.ws.send(TextMessage(message)))

    async def final(self, timeout: float) -> str:
        while True:
            message = await asyncio.wait_for(self.responses.get(), timeout)
            if int(message.split()[1]) >= 200:
                return message

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.writer.close()


_ECHOED = {"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"}


@dataclasses.dataclass
class Caller:
    index: int
    sip: WsSip | None = None
    session: Any = None
    call_id: str = ""
    ruri: str = ""
    dialog: str = ""
    """From/To/Call-ID/Route lines of the confirmed dialog."""
    error: str = ""
    play: asyncio.Task[Any] | None = None


async def _place(caller: Caller, port: int, number: str, codecs: list[Any], prompt: Any) -> None:
    from media.webrtc import WebRtcSession

    sip = caller.sip = await WsSip.connect(port)
    session, offer = await WebRtcSession.offer(codecs, label=f"caller-{caller.index}")
    caller.session = session
    caller.call_id = secrets.token_hex(10)
    tag = secrets.token_hex(4)
    ruri = f"sip:{number}@127.0.0.1"
    via = f"Via: SIP/2.0/WS {sip.host};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
    common = (
        f"From: <sip:bench{caller.index}@wrtc>;tag={tag}\r\nCall-ID: {caller.call_id}\r\n"
        f"Max-Forwards: 70\r\n"
    )
    body = offer.decode()
    sip.send(
        f"INVITE {ruri} SIP/2.0\r\n{via}{common}To: <{ruri}>\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:bench{caller.index}@{sip.host};transport=ws>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )
    answer = await sip.final(30)
    if not answer.startswith("SIP/2.0 200"):
        raise RuntimeError(answer.split("\r\n", 1)[0])
    contact = re.search(r"<([^>]+)>", _header(answer, "contact"))
    caller.ruri = contact.group(1) if contact else ruri
    routes: list[str] = []
    for line in answer.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        key, _, val = line.partition(":")
        if key.strip().lower() == "record-route":
            routes.insert(0, val.strip())
    route = "".join(f"Route: {r}\r\n" for r in routes)
    caller.dialog = f"{common}To: {_header(answer, 'to')}\r\n{route}"
    sip.send(
        f"ACK {caller.ruri} SIP/2.0\r\nVia: SIP/2.0/WS {sip.host};branch=z9hG4bK"
        f"{secrets.token_hex(6)}\r\n{caller.dialog}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    if not session.accept_answer(answer.split("\r\n\r\n", 1)[1].encode()):
        raise RuntimeError("the node's answer is not a WebRTC answer")
    payloads = prompt(session.codec)
    caller.play = asyncio.get_running_loop().create_task(
        session.play([itertools.cycle(payloads)], barge_in=False)
    )
    deadline = time.monotonic() + 30
    while session.connected_at is None:
        if session.failed or time.monotonic() > deadline:
            raise RuntimeError(f"media not connected: {session.failed or 'timeout'}")
        await asyncio.sleep(0.05)


async def _inbound(caller: Caller) -> tuple[int, int]:
    """(packets received, packets lost) of the caller's inbound RTP, as aiortc counts
    them from sequence numbers: a packet the node never sent is not "lost"."""
    session = caller.session
    if session is None:
        return 0, 0
    report = await session._pc.getStats()  # the benchmark's peek at aiortc's stats
    for stats in report.values():
        if getattr(stats, "type", "") == "inbound-rtp":
            return int(stats.packetsReceived), int(stats.packetsLost)
    return 0, 0


async def _hangup(caller: Caller) -> None:
    sip = caller.sip
    try:
        if sip is not None and caller.dialog and not sip.bye.is_set():
            sip.send(
                f"BYE {caller.ruri} SIP/2.0\r\nVia: SIP/2.0/WS {sip.host};branch=z9hG4bK"
                f"{secrets.token_hex(6)}\r\n{caller.dialog}CSeq: 2 BYE\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            await sip.final(5)
    except Exception:  # the node may be gone: the benchmark ends anyway
        pass
    if caller.play is not None:
        caller.play.cancel()
    if caller.session is not None:
        await caller.session.stop()
    if sip is not None:
        sip.close()


def client_main(args: argparse.Namespace) -> int:
    """The load generator: ``args.n`` WebRTC callers; driven by lines on stdin
    (``mark`` twice around the window, then ``stop``), answers in JSON lines on stdout."""
    import uvloop

    from media.codecs import get_codec_info
    from media.prompts import PromptCache

    cache = PromptCache(None)

    def out(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        codecs = [get_codec_info(c) for c in args.codecs.split(",")]
        callers = [Caller(i) for i in range(args.first, args.first + args.calls)]

        async def one(caller: Caller, delay: float) -> None:
            await asyncio.sleep(delay)
            try:
                await _place(caller, args.ws_port, args.number, codecs, prompt)
            except Exception as exc:
                caller.error = f"{type(exc).__name__}: {exc}"

        def prompt(codec: Any) -> list[bytes]:
            return list(cache.payloads("menu", codec))

        await asyncio.gather(*(one(c, i / args.rate) for i, c in enumerate(callers)))
        up = [c for c in callers if not c.error]
        out(
            {
                "event": "up",
                "connected": len(up),
                "errors": Counter(c.error for c in callers if c.error).most_common(5),
                "codec": up[0].session.wire.name if up else None,
            }
        )
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        marks: list[tuple[float, list[int]]] = []
        rtp: list[list[tuple[int, int]]] = []
        while True:
            line = (await reader.readline()).decode().strip()
            if line == "mark":
                counts = [c.session.frames_received if c.session else 0 for c in callers]
                marks.append((time.monotonic(), counts))
                rtp.append(await asyncio.gather(*(_inbound(c) for c in callers)))
                if len(marks) == 2:
                    (t0, c0), (t1, c1) = marks
                    ended = sum(1 for c in callers if c.sip is not None and c.sip.bye.is_set())
                    out(
                        {
                            "event": "window",
                            "seconds": t1 - t0,
                            "frames": [b - a for a, b in zip(c0, c1, strict=True)],
                            "packets": sum(b[0] - a[0] for a, b in zip(*rtp, strict=True)),
                            "lost": sum(b[1] - a[1] for a, b in zip(*rtp, strict=True)),
                            "ended_by_node": ended,
                        }
                    )
                else:
                    out({"event": "mark"})
            elif line in ("stop", ""):
                break
        await asyncio.gather(*(_hangup(c) for c in callers))
        out({"event": "done"})

    uvloop.run(main())
    return 0


# --------------------------------------------------------------------------- profiling


def sample_node(pid: int, seconds: float, path: Path, rate: int) -> dict[str, Any]:
    """Sample the node with py-spy (``--native --threads``, C frames included) for
    ``seconds``; returns {samples, waiting, shares}. Blocking: py-spy pauses the node
    at each sample, which is why this runs after the measured window, at a low rate."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"error": "py-spy not installed (pip install -r requirements-dev.txt)"}
    args = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--native", "--threads"]
    args += ["--rate", str(rate), "--duration", str(max(1, int(seconds))), "--output", str(path)]
    try:
        proc = subprocess.run(args, capture_output=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "py-spy did not finish"}
    if not path.exists():
        return {"error": proc.stderr.decode(errors="replace").strip()[-300:]}
    return categorise(path.read_text())


def categorise(raw: str) -> dict[str, Any]:
    """{samples, waiting, shares: {category: share of the non-waiting samples}} from
    py-spy's raw (collapsed) output."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        counts[classify(stack.split(";"))] += int(n)
    waiting = counts.pop(WAITING, 0)
    busy = sum(counts.values())
    shares = {c: round(counts[c] / busy, 4) for c in CATEGORIES if counts[c]} if busy else {}
    return {"samples": busy, "waiting": waiting, "shares": shares}


def classify(frames: list[str]) -> str:
    """The category of the innermost frame of one stack that has one (py-spy's frames
    are outermost first; with ``--threads`` the first names the thread). A stack of
    bare libc addresses is a parked thread (a futex wait without symbols)."""
    frames = [f.strip() for f in frames if f.strip() and not f.startswith("thread (")]
    if not any(_NAMED.match(f) and "(libc" not in f for f in frames):
        return WAITING
    for frame in reversed(frames):
        for category, needle in RULES:
            if needle in frame:
                return category
    return "other"


# ------------------------------------------------------------------------ the driver


@dataclasses.dataclass
class LegStep:
    """One kind of leg at one N."""

    kind: str
    n: int
    up: int = 0
    node_cpu_pct: float = 0.0
    loadgen_cpu_pct: float = 0.0
    window_s: float = 0.0
    delivery: float | None = None
    """WebRTC: frames received by all callers / (N x window / 20 ms)."""
    worst_caller: float | None = None
    ended_by_node: int = 0
    rtp_packets: int | None = None
    """WebRTC: RTP packets the callers received in the window (aiortc's inbound stats)."""
    rtp_lost: int | None = None
    """WebRTC: of them, gaps in sequence numbers (lost on the way, not unsent)."""
    loop_lag_p99_ms: float | None = None
    """The node's event-loop lag over the window: upper bound of the p99 bucket."""
    loop_lag_max_ms: float | None = None
    """Upper bound of the highest non-empty lag bucket over the window."""
    cpu_by_process: dict[str, float] = dataclasses.field(default_factory=dict)
    """Node CPU over the window by process (``engine``, ``plane``), % of one core."""
    profile: dict[str, Any] = dataclasses.field(default_factory=dict)
    """py-spy's samples of the process holding the media (the plane, if any)."""
    errors: list[Any] = dataclasses.field(default_factory=list)
    note: str = ""

    @property
    def cpu_per_leg(self) -> float | None:
        return self.node_cpu_pct / self.up if self.up else None


def _stop(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _readline(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """One JSON line from a client process, within ``timeout`` seconds."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError("load generator did not answer")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"load generator exited ({proc.poll()})")
    result: dict[str, Any] = json.loads(line)
    return result


def webrtc_step(n: int, args: argparse.Namespace, root: Path, setup: tuple[Path, Path]) -> LegStep:
    step = LegStep("webrtc", n)
    workdir = root / f"webrtc-{n}"
    node, ws_port, metrics_port = start_node(workdir, *setup)
    agent = start_agent(workdir / "agent", node.port) if args.mode == "bridged" else None
    number = BRIDGED_NUMBER if args.mode == "bridged" else IVR_NUMBER
    clients: list[subprocess.Popen[str]] = []
    try:
        share = [
            n // args.clients + (1 if i < n % args.clients else 0) for i in range(args.clients)
        ]
        first = 0
        for k in (k for k in share if k):
            cmd = [sys.executable, "-m", "benchmarks.webrtc_legs", "client"]
            cmd += ["--ws-port", str(ws_port), "--number", number, "--calls", str(k)]
            cmd += ["--first", str(first), "--rate", str(args.rate / args.clients)]
            cmd += ["--codecs", args.client_codecs]
            first += k
            clients.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )
        ramp = n / args.rate + 40
        ups = [_readline(c, ramp) for c in clients]
        step.up = sum(u["connected"] for u in ups)
        step.errors = [e for u in ups for e in u["errors"]]
        step.note = f"wire codec {ups[0].get('codec')}"
        time.sleep(args.settle)
        before = scrape(metrics_port)
        by0 = tree_cpu_by_process(node.proc.pid)
        cpu0, load0, t0 = node.cpu(), _clients_cpu(clients), time.monotonic()
        for c in clients:
            _send(c, "mark")
        for c in clients:
            _readline(c, 10)
        time.sleep(args.window)
        for c in clients:
            _send(c, "mark")
        cpu1, load1, t1 = node.cpu(), _clients_cpu(clients), time.monotonic()
        _by_process(step, by0, tree_cpu_by_process(node.proc.pid), t1 - t0)
        windows = [_readline(c, 10) for c in clients]
        step.window_s = round(t1 - t0, 2)
        step.node_cpu_pct = round(100 * (cpu1 - cpu0) / (t1 - t0), 1)
        step.loadgen_cpu_pct = round(100 * (load1 - load0) / (t1 - t0), 1)
        frames = [f for w in windows for f in w["frames"]]
        expected = sum(w["seconds"] for w in windows) / len(windows) / 0.02
        if frames and expected:
            step.delivery = round(sum(frames) / (n * expected), 4)
            step.worst_caller = round(min(frames) / expected, 4)
        step.ended_by_node = sum(w["ended_by_node"] for w in windows)
        step.rtp_packets = sum(w["packets"] for w in windows)
        step.rtp_lost = sum(w["lost"] for w in windows)
        _lag(step, before, scrape(metrics_port))
        if args.profile:
            step.profile = sample_node(
                media_pid(node.proc.pid),
                args.profile_seconds,
                workdir / "profile.txt",
                args.profile_rate,
            )
    finally:
        for c in clients:
            _send(c, "stop")
        for c in clients:
            try:
                c.wait(30)
            except subprocess.TimeoutExpired:
                c.kill()
        node.stop()
        _stop(agent.proc if agent else None)
    return step


def _lag(step: LegStep, before: Samples, after: Samples) -> None:
    delta = histogram_delta(before, after, "callengine_event_loop_lag_ms")
    step.loop_lag_p99_ms = histogram_quantile(delta, 0.99)
    step.loop_lag_max_ms = highest_bucket(delta)


def _send(proc: subprocess.Popen[str], line: str) -> None:
    try:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    except (BrokenPipeError, OSError):
        pass


def _by_process(
    step: LegStep, before: dict[str, float], after: dict[str, float], seconds: float
) -> None:
    step.cpu_by_process = {
        role: round(100 * (after[role] - before.get(role, 0.0)) / seconds, 1) for role in after
    }


def _clients_cpu(clients: list[subprocess.Popen[str]]) -> float:
    total = 0.0
    for c in clients:
        try:
            total += tree_cpu_seconds(c.pid)
        except OSError:
            pass
    return total


def rtp_step(n: int, args: argparse.Namespace, root: Path, setup: tuple[Path, Path]) -> LegStep:
    step = LegStep("rtp", n)
    workdir = root / f"rtp-{n}"
    node, _, metrics_port = start_node(workdir, *setup)
    agent = start_agent(workdir / "agent", node.port) if args.mode == "bridged" else None
    number = BRIDGED_NUMBER if args.mode == "bridged" else IVR_NUMBER
    _pcap_link(workdir)
    ramp = n / args.rate
    hold = ramp + args.settle + args.window + 10
    scenario = workdir / "caller.xml"
    uac_scenario(scenario, hold)
    cmd = [SIPP, f"127.0.0.1:{node.port}", "-sf", str(scenario), "-s", number]
    cmd += ["-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port())]
    cmd += ["-r", str(args.rate), "-l", str(n), "-m", str(n), "-nostdin", *SIPP_BUFFER]
    cmd += ["-timeout", f"{int(hold + ramp + 30)}s", "-max_socket", "1000"]
    sipp = subprocess.Popen(
        cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=open(workdir / "uac.log", "wb")
    )
    try:
        deadline = time.monotonic() + ramp + 30
        calls = 0.0
        while time.monotonic() < deadline and sipp.poll() is None:
            try:
                calls = value(scrape(metrics_port), "callengine_active_calls") or 0.0
            except OSError:  # /metrics opens a moment after the SIP port
                calls = 0.0
            if calls >= n:
                break
            time.sleep(0.25)
        step.up = int(calls)
        if calls < n:
            step.note = f"only {int(calls)} calls up"
            return step
        time.sleep(args.settle)
        before = scrape(metrics_port)
        by0 = tree_cpu_by_process(node.proc.pid)
        cpu0, load0, t0 = node.cpu(), tree_cpu_seconds(sipp.pid), time.monotonic()
        time.sleep(args.window)
        cpu1, load1, t1 = node.cpu(), tree_cpu_seconds(sipp.pid), time.monotonic()
        _by_process(step, by0, tree_cpu_by_process(node.proc.pid), t1 - t0)
        step.window_s = round(t1 - t0, 2)
        step.node_cpu_pct = round(100 * (cpu1 - cpu0) / (t1 - t0), 1)
        step.loadgen_cpu_pct = round(100 * (load1 - load0) / (t1 - t0), 1)
        _lag(step, before, scrape(metrics_port))
        if args.profile:
            step.profile = sample_node(
                media_pid(node.proc.pid),
                args.profile_seconds,
                workdir / "profile.txt",
                args.profile_rate,
            )
    finally:
        _stop(sipp)
        node.stop()
        _stop(agent.proc if agent else None)
    return step


def table(steps: list[dict[str, Any]], mode: str) -> str:
    """The markdown tables of a run: one line per N (WebRTC beside RTP), then where the
    node's time went (share of its busy samples per category)."""
    by_n: dict[int, dict[str, dict[str, Any]]] = {}
    for s in steps:
        by_n.setdefault(s["n"], {})[s["kind"]] = s
    lines = [
        f"{mode}: node CPU in % of one core (whole process tree) over the window",
        "",
        "| N | WebRTC up | delivered (worst caller) | RTP lost | node CPU (engine + plane) "
        "| per leg | loop lag p99/max | client CPU | RTP legs up | node CPU | per leg | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sorted(by_n):
        w, r = by_n[n].get("webrtc", {}), by_n[n].get("rtp", {})
        wl = w.get("node_cpu_pct", 0) / w["up"] if w.get("up") else None
        rl = r.get("node_cpu_pct", 0) / r["up"] if r.get("up") else None
        delivered = (
            f"{100 * w['delivery']:.1f} % ({100 * w['worst_caller']:.0f} %)"
            if w.get("delivery") is not None
            else "-"
        )
        lag = f"{_f(w.get('loop_lag_p99_ms'), 0)}/{_f(w.get('loop_lag_max_ms'), 0)} ms"
        split = w.get("cpu_by_process") or {}
        parts = f" ({split.get('engine', 0)} + {split['plane']})" if "plane" in split else ""
        lines.append(
            f"| {n} | {w.get('up', '-')} | {delivered} | {w.get('rtp_lost', '-')} "
            f"| {w.get('node_cpu_pct', '-')} %{parts} | {_f(wl)} | {lag} "
            f"| {w.get('loadgen_cpu_pct', '-')} % | {r.get('up', '-')} "
            f"| {r.get('node_cpu_pct', '-')} % | {_f(rl)} "
            f"| {_f(wl / rl if wl and rl else None, 1)} |"
        )
    used = [
        c
        for c in CATEGORIES
        if any(((s.get("profile") or {}).get("shares") or {}).get(c) for s in steps)
    ]
    if used:
        lines += [
            "",
            "Where the node's media process (its plane, if any) spends its time (py-spy"
            " --native, share of busy samples):",
            "",
            "| N | legs | samples | " + " | ".join(used) + " |",
            "|---:|---|---:|" + "---:|" * len(used),
        ]
        for n in sorted(by_n):
            for kind in ("webrtc", "rtp"):
                prof = by_n[n].get(kind, {}).get("profile") or {}
                shares = prof.get("shares") or {}
                if not shares:
                    continue
                cells = " | ".join(f"{100 * shares.get(c, 0):.0f} %" for c in used)
                lines.append(f"| {n} | {kind} | {prof.get('samples', 0)} | {cells} |")
    return "\n".join(lines)


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def driver_main(args: argparse.Namespace) -> int:
    if shutil.which(SIPP) is None:
        sys.stderr.write("webrtc_legs: sipp not found (make install)\n")
        return 2
    if args.quick:
        args.steps, args.window, args.settle = args.steps or "5,15", 6.0, 1.0
        args.profile_seconds = min(args.profile_seconds, 4.0)
    steps = [int(s) for s in (args.steps or "5,10,20,40,80").split(",")]
    codecs = ["opus", "PCMA", "PCMU", "telephone-event"] if args.codec == "opus" else None
    codecs = codecs or ["PCMA", "PCMU", "telephone-event"]
    args.client_codecs = ",".join(c for c in codecs if c != "telephone-event")
    started = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    load = os.getloadavg()
    results: list[LegStep] = []
    saturated: int | None = None
    with tempfile.TemporaryDirectory(prefix="webrtc-legs-") as tmp:
        root = Path(tmp)
        setup = prepare_template(root, codecs)
        for n in steps:
            w = webrtc_step(n, args, root, setup)
            results.append(w)
            sys.stderr.write(json.dumps(dataclasses.asdict(w)) + "\n")
            if not args.no_rtp:
                r = rtp_step(n, args, root, setup)
                results.append(r)
                sys.stderr.write(json.dumps(dataclasses.asdict(r)) + "\n")
            if saturated is None and (w.up < n or (w.delivery or 0) < 0.99):
                saturated = n
            # past 99 % the next steps only confirm it: stop once clearly saturated
            if w.up < n or (w.delivery or 0) < args.stop_below:
                break
        if args.keep:
            kept = (Path(args.out) if args.out else RESULTS) / f"webrtc_legs-{started}-work"
            shutil.copytree(root, kept, ignore=shutil.ignore_patterns("data", "template-data"))
    rows = [dataclasses.asdict(s) for s in results]
    report = {
        "benchmark": "webrtc_legs",
        "started_utc": started,
        "mode": args.mode,
        "codec": args.codec,
        "window_s": args.window,
        "load_average_at_start": load,
        "cpus": os.cpu_count(),
        "git_head": _git_head(),
        "saturated_at": saturated,
        "largest_n_delivering_99pct": max(
            (
                s.n
                for s in results
                if s.kind == "webrtc" and (s.delivery or 0) >= 0.99 and s.up == s.n
            ),
            default=0,
        ),
        "steps": rows,
    }
    results_dir = Path(args.out) if args.out else RESULTS
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"webrtc_legs-{started}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(rows, f"{args.mode}, {args.codec}"))
    print()
    print(
        f"saturation (delivery < 99 %): "
        f"{'N = ' + str(saturated) if saturated else 'not reached'}; "
        f"load average at start {load[0]:.2f}; JSON: {out}"
    )
    return 0


def _git_head() -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="cmd")
    cli = sub.add_parser("client", help="(internal) the WebRTC load generator")
    cli.add_argument("--ws-port", type=int, required=True)
    cli.add_argument("--number", required=True)
    cli.add_argument("--calls", type=int, required=True)
    cli.add_argument("--first", type=int, default=0)
    cli.add_argument("--rate", type=float, default=10.0)
    cli.add_argument("--codecs", default="PCMA,PCMU")
    parser.add_argument("--steps", help="N per step (default 5,10,20,40,80)")
    parser.add_argument("--mode", choices=("bridged", "ivr"), default="bridged")
    parser.add_argument("--codec", choices=("g711", "opus"), default="g711")
    parser.add_argument("--window", type=float, default=15.0, help="measured seconds per step")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=10.0, help="calls/s while ramping up")
    parser.add_argument("--clients", type=int, default=1, help="load generator processes")
    parser.add_argument("--quick", action="store_true", help="steps 5,15, 6 s windows")
    parser.add_argument("--no-rtp", action="store_true", help="WebRTC legs only")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--profile-seconds", type=float, default=8.0)
    parser.add_argument("--profile-rate", type=int, default=50, help="py-spy samples/s")
    parser.add_argument(
        "--stop-below", type=float, default=0.9, help="no further step below this delivery"
    )
    parser.add_argument("--keep", action="store_true", help="keep logs and profiles")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.cmd == "client":
        return client_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
