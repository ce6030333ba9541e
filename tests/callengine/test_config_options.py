"""Every documented node setting either takes effect or is refused at load time.

Three tables, one row per setting of ``callengine/config.py`` ``EngineConfig``:

- ``REFUSED``: a wrong value of the setting, written in a YAML file, is refused by
  ``load_config`` with a ``ConfigError`` naming that file and the field;
- ``EFFECTS`` (here) and ``NODE_EFFECTS`` (``tests/integration/test_config_effects.py``,
  for what shows only on a running node): a value other than the default changes
  what a peer sees (a response, a header, a bound port, a log record);
- ``ELSEWHERE``: settings whose effect an existing test already asserts through the
  node's configuration (the test is named; this module checks that it exists and
  sets the setting).

``test_every_setting_has_a_case`` keeps the tables complete: a new setting without
a case fails it. Settings that did nothing were removed (``probe``) or made to be
refused (``source``, unknown ``codecs``, ``TLS`` in ``transports``...).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from integration.support import ROOT, free_port
from integration.test_config_effects import NODE_EFFECTS

from callengine.call import Call
from callengine.config import EngineConfig, cpu_cores, load_config, serve_media_process
from callengine.engine import Engine
from config_cache import CacheSettings, ConfigError

SETTINGS = frozenset(f.name for f in fields(EngineConfig)) - {"source"}

# -- refused at load time -------------------------------------------------------------

# (settings, field named by the ConfigError, a fragment of its message)
REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"listen": ["127.0.0.1:notaport"]}, "listen[0]", ""),
    ({"transports": ["TLS"]}, "transports[0]", "TLS listens on tls_port"),
    ({"transports": ["SCTP"]}, "transports[0]", "unknown transport 'SCTP'"),
    ({"transports": []}, "transports", "no transport"),
    ({"tls_cert": "c.pem"}, "tls_key", "go together"),
    ({"tls_key": "k.pem"}, "tls_key", "go together"),
    ({"tls_port": 0}, "tls_port", "must be a port"),
    ({"ws_port": 70000}, "ws_port", "must be a port"),
    ({"media_process": "yes"}, "media_process", "expected bool"),
    ({"media_process": True, "media_priority": 100}, "media_priority", "must be 0 to 99"),
    ({"media_process": False, "media_priority": 10}, "media_priority", "media_process is off"),
    ({"wss_port": 5443}, "wss_port", "needs tls_cert"),
    ({"data_dir": 5}, "data_dir", "expected str"),
    ({"metrics": 9090}, "metrics", "expected str or NoneType"),
    ({"admin": "nowhere"}, "admin", ""),
    ({"webphone": "nowhere"}, "webphone", "bad listen address"),
    ({"rtp_port_pool": -1}, "rtp_port_pool", "must be 0 to 10000"),
    ({"rtp_port_quarantine": 61}, "rtp_port_quarantine", "must be 0 to 60 seconds"),
    ({"media_clock_slots": 0}, "media_clock_slots", "must be 1 to 20"),
    ({"admin_token": 1234}, "admin_token", "expected str or NoneType"),
    ({"tenant_files": [5]}, "tenant_files[0]", "must be a file name"),
    ({"max_calls": 0}, "max_calls", "must be at least 1"),
    ({"max_cps": -1}, "max_cps", "must not be negative"),
    ({"retry_after": -5}, "retry_after", "must not be negative"),
    ({"retry_after": 2.5}, "retry_after", "expected int"),
    ({"max_message_size": 100}, "max_message_size", "between 1024 and 65535"),
    ({"source_rate": -1}, "source_rate", "must not be negative"),
    ({"source_burst": -1}, "source_burst", "must not be negative"),
    ({"source_ban": -1}, "source_ban", "must not be negative"),
    ({"tcp_max_connections": 0}, "tcp_max_connections", "greater than 0"),
    ({"tcp_max_per_source": 0}, "tcp_max_per_source", "greater than 0"),
    ({"tcp_idle_timeout": 0}, "tcp_idle_timeout", "greater than 0"),
    ({"tcp_first_message_timeout": 0}, "tcp_first_message_timeout", "greater than 0"),
    ({"max_fork": 0}, "max_fork", "at least 1"),
    ({"source_max_calls": -1}, "source_max_calls", "must not be negative"),
    ({"source_max_cps": -1}, "source_max_cps", "must not be negative"),
    ({"tenant_max_calls": -1}, "tenant_max_calls", "must not be negative"),
    ({"tenant_max_cps": -1}, "tenant_max_cps", "must not be negative"),
    ({"source_exempt": ["10.0.0.0/33"]}, "source_exempt[0]", "not an address or network"),
    ({"overload_lag": -0.1}, "overload_lag", "must not be negative"),
    ({"gc": "sometimes"}, "gc", "must be realtime or python"),
    ({"stall_report_ms": -1}, "stall_report_ms", "must not be negative"),
    ({"drain_grace": -1}, "drain_grace", "must not be negative"),
    ({"workers": 255}, "workers", "must be 0 (one per core) to 254"),
    ({"workers": -1}, "workers", "must be 0 (one per core) to 254"),
    ({"rtp_port_min": 80}, "rtp_port_min", "1024 <= rtp_port_min"),
    ({"rtp_port_max": 70000}, "rtp_port_min", "rtp_port_max <= 65535"),
    ({"rtp_timeout": -1}, "rtp_timeout", "must not be negative"),
    ({"rtp_relatch_after": -1}, "rtp_relatch_after", "must be 0 or more"),
    ({"srtp": "maybe"}, "srtp", "must be tls, any or off"),
    ({"codecs": ["PCMU", "G729"]}, "codecs[1]", "unknown codec 'G729'"),
    ({"codecs": ["telephone-event"]}, "codecs", "at least one audio codec"),
    ({"media": "yes"}, "media", "expected bool"),
    ({"user_agent": 5}, "user_agent", "expected str"),
    ({"user_agent_to_trunks": "yes"}, "user_agent_to_trunks", "expected bool"),
    ({"log_format": "xml"}, "log_format", "must be plain or json"),
    ({"log_level": "LOUD"}, "log_level", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ({"history_url": 27017}, "history_url", "expected str or NoneType"),
    ({"master_url": 27017}, "master_url", "expected str or NoneType"),
    ({"on_empty": "maybe"}, "on_empty", "must be demo or refuse"),
    ({"node_id": 7}, "node_id", "expected str"),
    ({"trunks": {"a": {"carrier": "c"}}}, "trunks.a", "missing field 'gateway'"),
    ({"trunk_groups": {"g": {"trunks": ["nosuch"]}}}, "trunk_groups.g.trunks[0]", "nosuch"),
    ({"outbound_routes": [{"prefix": "9"}]}, "outbound_routes[0]", "missing field 'group'"),
    ({"trusted_sources": ["10.0.0.0/33"]}, "trusted_sources[0]", "not an address or network"),
    ({"dial_policy": {"home_country": "0044"}}, "dial_policy.home_country", "country code"),
    ({"dial_policy": {"home_country": "32\n"}}, "dial_policy.home_country", "country code"),
    ({"max_contacts": -1}, "max_contacts", "must not be negative"),
    ({"digest_algorithms": ["SHA-1"]}, "digest_algorithms", "SHA-1"),
    ({"auth_guard": {"nonsense": 1}}, "auth_guard", "nonsense"),
    ({"config_cache": {"poll_interval": "often"}}, "config_cache.poll_interval", ""),
    ({"config_cache": {"master_url": "mongodb://x"}}, "config_cache.master_url", "top level"),
    ({"config_cache": {"data_dir": "/x"}}, "config_cache.data_dir", "top level"),
    ({"media_storage": {"kind": "s3"}}, "media_storage.kind", "must be local or azure"),
    # not settings: refused by name
    ({"source": "elsewhere.yaml"}, "source", "unknown setting"),
    ({"probe": {"interval": 5}}, "probe", "unknown setting"),
]


@pytest.mark.parametrize(
    ("settings", "field", "fragment"), REFUSED, ids=[f"{r[1]}:{list(r[0])[0]}" for r in REFUSED]
)
def test_a_wrong_value_is_refused_naming_file_and_field(
    tmp_path: Path, settings: dict[str, Any], field: str, fragment: str
) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.field) == (str(path), field), str(info.value)
    assert fragment in info.value.message, str(info.value)


def test_the_defaults_and_the_node_configs_shipped_load() -> None:
    load_config()
    shipped = sorted((ROOT / "deploy").rglob("*.yaml")) + sorted(
        (ROOT / "examples").rglob("*.yaml")
    )
    for path in shipped:
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "listen" in data:
            load_config(path)


# -- effects visible without a node process ---------------------------------------------

OFFER = (
    "v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)


async def _invite(port: int, *, hang_up: bool = True) -> tuple[int, str]:
    """One INVITE from a fresh UDP socket: (final status, body); a 2xx is ACKed and BYE'd."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        _Client, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", port)
    )
    lport = transport.get_extra_info("sockname")[1]
    call_id = secrets.token_hex(8)

    def request(method: str, cseq: int, to_tag: str = "", body: str = "") -> bytes:
        to = f"<sip:100@127.0.0.1:{port}>" + (f";tag={to_tag}" if to_tag else "")
        extra = "Content-Type: application/sdp\r\n" if body else ""
        return (
            f"{method} sip:100@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            f"From: <sip:c@127.0.0.1:{lport}>;tag=c\r\nTo: {to}\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContact: <sip:c@127.0.0.1:{lport}>\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()

    try:
        transport.sendto(request("INVITE", 1, body=OFFER))
        while True:
            data = await asyncio.wait_for(client.replies.get(), 5)
            head, _, body = data.decode().partition("\r\n\r\n")
            status = int(head.split()[1])
            if status >= 200:
                break
        tag = re.search(r"\r\nTo:[^\r]*;tag=([^;\r]+)", head, re.I)
        to_tag = tag.group(1) if tag else ""
        transport.sendto(request("ACK", 1, to_tag))
        if status < 300 and hang_up:
            transport.sendto(request("BYE", 2, to_tag))
        return status, body
    finally:
        transport.close()


async def _answer(call: Call) -> None:
    await call.answer()
    await call.wait_hangup()


def _run(
    settings: dict[str, Any], tmp: Path, body: Callable[[Engine, int], Awaitable[None]]
) -> None:
    """Start an Engine loaded from a YAML file with ``settings``; run ``body``."""
    port = free_port()
    path = tmp / "node.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": [f"127.0.0.1:{port}"],
                "transports": ["UDP"],
                "metrics": None,
                "data_dir": str(tmp / "data"),
                **settings,
            }
        )
    )

    async def main() -> None:
        engine = Engine(load_config(path))
        engine.on_call()(_answer)
        await engine.start()
        try:
            await body(engine, port)
        finally:
            await engine.stop(grace=0)

    asyncio.run(main())


def _max_cps(tmp: Path) -> None:
    """max_cps: 1 new call per second node-wide: the second INVITE at once gets 503."""

    async def body(engine: Engine, port: int) -> None:
        assert (await _invite(port))[0] == 200
        assert (await _invite(port))[0] == 503

    _run({"max_cps": 1}, tmp, body)


def _overload_lag(tmp: Path) -> None:
    """overload_lag: a loop waking later than it sheds new calls with 503; 0 never."""

    async def body(engine: Engine, port: int) -> None:
        engine._on_lag(0.2)  # what the lag monitor reports after a 200 ms stall
        assert (await _invite(port))[0] == (503 if engine.config.overload_lag else 200)
        engine._on_lag(0.0)
        assert (await _invite(port))[0] == 200

    _run({"overload_lag": 0.1}, tmp, body)
    _run({"overload_lag": 0}, tmp, body)


def _gc(tmp: Path) -> None:
    """gc: ``python`` keeps automatic collection on; ``realtime`` switches it off."""
    seen: dict[str, bool] = {}

    def probe(mode: str) -> Callable[[Engine, int], Awaitable[None]]:
        async def body(engine: Engine, port: int) -> None:
            seen[mode] = gc.isenabled()

        return body

    try:
        _run({"gc": "python"}, tmp, probe("python"))
        _run({"gc": "realtime"}, tmp, probe("realtime"))
    finally:
        gc.enable()
    assert seen == {"python": True, "realtime": False}


def _stall_report_ms(tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    """stall_report_ms: a loop stalled longer is reported with the stack it was in."""

    async def body(engine: Engine, port: int) -> None:
        await asyncio.sleep(0.3)  # the lag monitor has beaten
        time.sleep(0.5)  # the stall: the loop's thread is in time.sleep
        await asyncio.sleep(0.1)

    with caplog.at_level(logging.WARNING, logger="callengine.realtime"):
        _run({"stall_report_ms": 100}, tmp, body)
    stalls = [r.getMessage() for r in caplog.records if "event loop stalled" in r.getMessage()]
    # (start-up may stall too: freezing what it loaded for the GC)
    assert any("more than 100 ms" in s and "time.sleep(0.5)" in s for s in stalls), stalls


def _media(tmp: Path) -> None:
    """media: false answers without opening an RTP socket (the answer's port is free;
    with the default, the node holds it for the call)."""
    seen: dict[bool, bool] = {}

    def probe(media: bool) -> Callable[[Engine, int], Awaitable[None]]:
        async def body(engine: Engine, port: int) -> None:
            status, sdp = await _invite(port, hang_up=False)
            assert status == 200
            found = re.search(r"m=audio (\d+)", sdp)
            assert found is not None
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", int(found.group(1))))
                    seen[media] = True
                except OSError:
                    seen[media] = False

        return body

    _run({"media": True}, tmp, probe(True))
    _run({"media": False}, tmp, probe(False))
    assert seen == {True: False, False: True}  # port free only without media


def _media_process(tmp: Path) -> None:
    """media_process: the answered call's RTP port is held by the media plane's
    process, a child of the engine's; by default by the engine's own process."""
    holders: dict[bool, set[int]] = {}

    def probe(on: bool) -> Callable[[Engine, int], Awaitable[None]]:
        async def body(engine: Engine, port: int) -> None:
            status, sdp = await _invite(port, hang_up=False)
            assert status == 200
            found = re.search(r"m=audio (\d+)", sdp)
            assert found is not None
            holders[on] = _udp_port_owners(int(found.group(1)))

        return body

    _run({"media_process": True}, tmp, probe(True))
    _run({"media_process": False}, tmp, probe(False))
    assert holders[False] == {os.getpid()}
    (plane,) = holders[True]
    assert plane != os.getpid()
    assert Path(f"/proc/{plane}/stat").exists() is False  # gone with its engine


def test_serve_runs_the_media_plane_unless_told_or_signalling_only() -> None:
    """Unset ``media_process``: ``callengine serve`` takes the plane, also for a node
    with WebSocket listeners (WebRTC legs are the plane's too), not for one without
    media; set, it is as set. An Engine embedded in a program keeps its media (unset is
    falsy)."""
    cases = [
        ({}, True),
        ({"ws_port": 5066}, True),
        ({"wss_port": 5067, "tls_cert": "c", "tls_key": "k"}, True),
        ({"ws_port": 5066, "media_process": False}, False),
        ({"media": False}, False),
        ({"media_process": False}, False),
        ({"media_process": True}, True),
        ({"media_process": True, "media": False}, False),
    ]
    for settings, expected in cases:
        cfg = EngineConfig(**settings)
        assert serve_media_process(cfg) is expected, settings
    assert not EngineConfig().media_process


def _media_priority(tmp: Path) -> None:
    """media_priority: the media plane's loop runs under SCHED_FIFO at that priority
    (this test runs as root, as CI does); 0 (the default) leaves it under normal
    scheduling."""
    seen: dict[int, tuple[int, int]] = {}

    def probe(priority: int) -> Callable[[Engine, int], Awaitable[None]]:
        async def body(engine: Engine, port: int) -> None:
            pid = engine.media_manager.pid
            policy = os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK
            seen[priority] = (policy, os.sched_getparam(pid).sched_priority)

        return body

    _run({"media_process": True, "media_priority": 7}, tmp, probe(7))
    _run({"media_process": True}, tmp, probe(0))
    assert seen == {7: (os.SCHED_FIFO, 7), 0: (os.SCHED_OTHER, 0)}


def test_the_plane_alone_is_real_time_and_a_refusal_is_one_warning() -> None:
    """``media_priority``'s scheduling, in a process of its own: the loop's thread
    takes SCHED_FIFO at the priority (one INFO line), and a thread started afterwards
    (an upload, the executor's) does not inherit it; a process without the right
    (nobody: no capability, RLIMIT_RTPRIO 0) gets one warning and keeps normal
    scheduling. (This test starts as root, as CI does.)"""
    script = """
import logging, os, sys, threading
from callengine.mediaplane import _realtime_priority
lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.levelname)
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
if sys.argv[1] == "nobody":
    os.setgid(65534)
    os.setuid(65534)
print(_realtime_priority(10))
policy = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
print(policy == os.SCHED_FIFO, os.sched_getparam(0).sched_priority)
later = []
thread = threading.Thread(target=lambda: later.append(os.sched_getscheduler(0)))
thread.start()
thread.join()
print(later == [os.SCHED_OTHER], lines)
"""

    def run(user: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", script, user],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert run("root") == ["True", "True 10", "True ['INFO']"]
    assert run("nobody") == ["False", "False 0", "True ['WARNING']"]


def _udp_port_owners(port: int) -> set[int]:
    """The processes holding a UDP socket bound to ``port`` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields_ = line.split()
            if int(fields_[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields_[9]}]")
    owners = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    owners.add(int(pid))
        except OSError:
            continue
    return owners


def _media_clock_slots(tmp: Path) -> None:
    """media_clock_slots: three held calls on a 3-slot clock take one phase each (the
    per-slot loads /metrics exports); on a 1-slot clock all three share the one."""
    seen: dict[int, list[int]] = {}

    def probe(slots: int) -> Callable[[Engine, int], Awaitable[None]]:
        async def body(engine: Engine, port: int) -> None:
            held = [asyncio.ensure_future(_invite(port, hang_up=False)) for _ in range(3)]
            for status, _ in await asyncio.gather(*held):
                assert status == 200
            seen[slots] = engine.media_manager.clock.slot_loads()

        return body

    _run({"media_clock_slots": 3}, tmp, probe(3))
    _run({"media_clock_slots": 1}, tmp, probe(1))
    assert seen == {3: [1, 1, 1], 1: [3]}


def _rtp_port_pool(tmp: Path) -> None:
    """rtp_port_pool: N pairs are bound before any call (the answer path binds none);
    0 binds nothing until a call comes."""
    seen: dict[int, int] = {}

    def probe(size: int) -> Callable[[Engine, int], Awaitable[None]]:
        async def body(engine: Engine, port: int) -> None:
            for _ in range(100):
                stats = engine.media_manager.pool_stats()
                if stats["ready"] >= size:
                    break
                await asyncio.sleep(0.02)
            seen[size] = int(engine.media_manager.pool_stats()["ready"])

        return body

    _run({"rtp_port_pool": 4}, tmp, probe(4))
    _run({"rtp_port_pool": 0}, tmp, probe(0))
    assert seen == {4: 4, 0: 0}


EFFECTS: dict[str, Callable[..., None]] = {
    "media_clock_slots": _media_clock_slots,
    "media_process": _media_process,
    "media_priority": _media_priority,
    "rtp_port_pool": _rtp_port_pool,
    "max_cps": _max_cps,
    "overload_lag": _overload_lag,
    "gc": _gc,
    "stall_report_ms": _stall_report_ms,
    "media": _media,
}


@pytest.mark.parametrize("setting", sorted(set(EFFECTS)))
def test_setting_takes_effect(
    setting: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    case = EFFECTS[setting]
    if case is _stall_report_ms:
        case(tmp_path, caplog)
    else:
        case(tmp_path)


# -- effects asserted by existing tests --------------------------------------------------

ELSEWHERE: dict[str, str] = {
    "source_max_calls": "tests/security/test_caps.py::test_concurrent_calls_per_source",
    "tenant_max_calls": "tests/security/test_caps.py::test_concurrent_calls_per_tenant",
    "max_fork": "tests/security/test_fork_cap.py::test_fork_fan_out_is_capped",
    "rtp_relatch_after": (
        "tests/security/test_rtp_hijack.py::test_rtp_hijack_attempts_are_refused_and_counted"
    ),
    "media_storage": (
        "tests/integration/test_azure_storage.py::test_sipp_voicemail_lands_in_azurite"
    ),
    "history_url": (
        "tests/integration/test_reliability.py::test_history_down_for_a_whole_1000_call_run"
    ),
    "master_url": (
        "tests/integration/test_reliability.py::test_master_down_calls_use_the_cache_and_catch_up"
    ),
    "trunks": "tests/security/test_toll_fraud.py::test_malformed_numbers_never_hold_a_channel",
    "trunk_groups": (
        "tests/security/test_toll_fraud.py::test_malformed_numbers_never_hold_a_channel"
    ),
    "outbound_routes": (
        "tests/security/test_toll_fraud.py::test_malformed_numbers_never_hold_a_channel"
    ),
    "trusted_sources": (
        "tests/security/test_toll_fraud.py::test_malformed_numbers_never_hold_a_channel"
    ),
    "dial_policy": (
        "tests/security/test_toll_fraud.py::test_toll_fraud_destinations_refused_unless_allowed"
    ),
    "rtp_port_quarantine": (
        "tests/integration/test_media_portpool.py::"
        "test_calls_take_pooled_pairs_and_reuse_them_after_their_rest"
    ),
    "webphone": (
        "tests/integration/test_webrtc.py::"
        "test_browser_answers_ivr_transfer_audio_both_ways_and_hangups"
    ),
    "workers": (
        "tests/integration/test_workers.py::"
        "test_one_source_address_udp_and_tcp_spread_over_both_workers"
    ),
}

#: How each ELSEWHERE test sets the setting (a CLI flag for two of them).
_SPELLING = {"history_url": "--history", "master_url": "--master"}


@pytest.mark.parametrize("setting", sorted(ELSEWHERE))
def test_the_test_named_for_a_setting_exists_and_sets_it(setting: str) -> None:
    path, _, name = ELSEWHERE[setting].partition("::")
    text = (ROOT / path).read_text()
    assert f"def {name}(" in text
    assert _SPELLING.get(setting, setting) in text


def test_every_setting_has_a_case() -> None:
    refused = {key for settings, _, _ in REFUSED for key in settings}
    assert SETTINGS <= refused, sorted(SETTINGS - refused)
    covered = set(EFFECTS) | set(NODE_EFFECTS) | set(ELSEWHERE)
    assert SETTINGS - covered == set(), sorted(SETTINGS - covered)
    assert covered - SETTINGS == set(), sorted(covered - SETTINGS)


def test_every_documented_config_cache_key_is_a_setting() -> None:
    """docs/config.md's table of the ``config_cache:`` section lists exactly the keys
    CacheSettings reads (each refused with a wrong type by CacheSettings.from_mapping)."""
    doc = (ROOT / "docs" / "config.md").read_text()
    section = doc.split("## Node settings (`config_cache:` section", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    assert documented == {f.name for f in fields(CacheSettings)}
    for key in documented:
        with pytest.raises(ConfigError) as info:
            CacheSettings.from_mapping({key: object()}, source="n.yaml")
        assert info.value.field == f"config_cache.{key}"


def test_the_default_worker_count_follows_the_cores_the_node_may_use(tmp_path: Path) -> None:
    """``workers: 0`` (the default): one worker per core of the process's CPU affinity,
    capped by a cgroup v2 quota (a container's ``--cpus``), at least one."""
    assert EngineConfig().workers == 0
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    assert cpu_cores(str(tmp_path / "absent")) == affinity
    quota.write_text("max 100000\n")
    assert cpu_cores(str(quota)) == affinity
    quota.write_text("100000 100000\n")  # one CPU
    assert cpu_cores(str(quota)) == 1
    quota.write_text("150000 100000\n")  # 1.5 CPUs: two workers share them
    assert cpu_cores(str(quota)) == min(2, affinity)
    quota.write_text("5000 100000\n")  # a twentieth: still one
    assert cpu_cores(str(quota)) == 1
    quota.write_text("garbage\n")
    assert cpu_cores(str(quota)) == affinity
