"""The control API and `callengine ctl` against a running `callengine serve` under SIPp
load: live calls listed, one hung up (SIPp receives the BYE), drain / undrain seen on the
wire (503 to INVITE and OPTIONS), reload of a changed IVR seen in the next call's log,
call logs read while the node holds its LevelDB (`callengine logs`, `ctl logs --follow`),
and the token an address other machines can reach requires.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integration.support import (
    CALLENGINE,
    ROOT,
    SIPP,
    Daemon,
    free_port,
    sip_call,
    sipp_to,
)

from callengine.ctl import AdminClient, AdminError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(SIPP).exists(), reason="SIPp (sip-tester) is not installed"),
]

FIXTURES = ROOT / "tests" / "fixtures"
TENANT_V1 = FIXTURES / "tenants" / "admin_v1.yaml"
WAIT_BYE = FIXTURES / "sipp" / "uac_wait_bye.xml"
HOLD = "5550300"
MAIN = "5550301"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll ``check`` until it returns something true; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Node:
    daemon: Daemon
    api: AdminClient
    admin: str
    tenant_file: Path
    tmp: Path


@pytest.fixture
def node(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> Node:
    tenant_file = tmp_path / "tenant.yaml"
    shutil.copy(TENANT_V1, tenant_file)
    config = tmp_path / "node.yaml"
    config.write_text("tenant_files: [tenant.yaml]\n")
    admin = f"127.0.0.1:{free_port(socket.SOCK_STREAM, both=False)}"
    daemon = daemon_factory("--config", str(config), "--admin", admin)
    api = AdminClient(admin)
    wait_for("the admin API", lambda: _ready(api))
    return Node(daemon, api, admin, tenant_file, tmp_path)


def _ready(api: AdminClient) -> bool:
    try:
        return bool(api.request("GET", "/ready")["ready"])
    except AdminError:
        return False


class Sipp:
    """A SIPp UAC in the background, its statistics dumped every second."""

    def __init__(self, tmp: Path, daemon: Daemon, number: str, calls: int) -> None:
        self.stat_file = tmp / f"sipp-{secrets.token_hex(4)}.csv"
        args = sipp_to(daemon, "-sf", str(WAIT_BYE), "-s", number)
        args += ["-m", str(calls), "-l", str(calls), "-r", "50", "-rp", "1000"]
        args += ["-nostdin", "-trace_stat", "-stf", str(self.stat_file), "-fd", "1"]
        self.proc = subprocess.Popen(
            [SIPP, *args], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def stats(self) -> dict[str, str]:
        if not self.stat_file.exists():
            return {}
        lines = [ln for ln in self.stat_file.read_text().splitlines() if ln.strip()]
        if len(lines) < 2:
            return {}
        header = lines[0].rstrip(";").split(";")
        return dict(zip(header, lines[-1].rstrip(";").split(";"), strict=False))

    def successful(self) -> int:
        return int(self.stats().get("SuccessfulCall(C)", 0))

    def wait(self, timeout: float = 30.0) -> tuple[int, int]:
        self.proc.wait(timeout)
        stats = self.stats()
        return int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sipp_runs() -> Iterator[list[Sipp]]:
    runs: list[Sipp] = []
    yield runs
    for run in runs:
        run.kill()


def options(port: int) -> int:
    """Status of an out-of-dialog OPTIONS (what a balancer's probe sees)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
        lp = s.getsockname()[1]
        tag = secrets.token_hex(4)
        s.sendto(
            (
                f"OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK-{tag};rport\r\n"
                f"From: <sip:lb@127.0.0.1>;tag={tag}\r\nTo: <sip:probe@127.0.0.1>\r\n"
                f"Call-ID: {tag}@lb\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        return int(s.recv(65535).split(b" ", 2)[1])


def ctl(node: Node, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--token", token] if token else []
    return subprocess.run(
        [CALLENGINE, "ctl", "--admin", node.admin, *extra, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def steps(doc: dict[str, Any]) -> list[str]:
    return [str(e["node"]) for e in doc.get("ivr_path", []) if e.get("event") == "step"]


def test_calls_hangup_drain_undrain_under_sipp_load(
    node: Node, sipp_runs: list[Sipp], tmp_path: Path
) -> None:
    held = 10
    sipp = Sipp(tmp_path, node.daemon, HOLD, held)
    sipp_runs.append(sipp)
    api = node.api

    def all_up() -> list[dict[str, Any]] | None:
        data = api.request("GET", "/calls")
        live = [c for c in data["calls"] if c["state"] == "confirmed"]
        return data["calls"] if data["total"] == held and len(live) == held else None

    live = wait_for(f"{held} confirmed calls", all_up)
    assert {c["callee"] for c in live} == {HOLD}
    assert {c["tenant"] for c in live} == {"adm"}
    assert {c["direction"] for c in live} == {"inbound"}
    assert all(c["codecs"][0] == "PCMU" for c in live)
    assert all(c["rtp"] is not None and "packets_expected" in c["rtp"] for c in live)
    assert all(c["answered"] and c["duration"] >= 0 for c in live)
    page = api.request("GET", "/calls?offset=2&limit=3")
    assert (page["total"], len(page["calls"])) == (held, 3)

    victim = live[0]["id"]
    detail = api.request("GET", f"/calls/{victim}")
    assert (detail["id"], detail["callee"]) == (victim, HOLD)
    assert detail["rtp"]["packets_expected"] >= 0 and isinstance(detail["ivr_path"], list)
    table = ctl(node, "calls")
    assert table.returncode == 0, table.stderr
    assert all(c["id"] in table.stdout for c in live)

    # hang up one call: SIPp receives the node's BYE (its call completes)
    assert api.request("POST", f"/calls/{victim}/hangup")["legs"] == 1
    wait_for("SIPp to receive the BYE", lambda: sipp.successful() == 1)
    wait_for("the call to leave the list", lambda: api.request("GET", "/calls")["total"] == 9)
    with pytest.raises(AdminError) as gone:
        api.request("POST", f"/calls/{victim}/hangup")
    assert gone.value.status == 404

    # drain: new INVITEs and a balancer's OPTIONS get 503; calls in progress stay up
    drained = ctl(node, "drain")
    assert drained.returncode == 0 and json.loads(drained.stdout)["draining"] is True
    port = node.daemon.port
    refused = sip_call(port, MAIN)
    assert refused.status == 503 and refused.headers.get("retry-after")
    assert options(port) == 503
    with pytest.raises(AdminError) as not_ready:
        api.request("GET", "/ready")
    assert not_ready.value.status == 503
    assert api.request("GET", "/calls")["total"] == 9
    # undrain: both answered again
    assert api.request("POST", "/undrain") == {"draining": False}
    assert options(port) == 200
    assert sip_call(port, MAIN).status == 200
    assert api.request("GET", "/ready")["ready"] is True

    # the CLI hangs up one, the API the rest; SIPp saw a BYE for every call
    rest = [c["id"] for c in api.request("GET", "/calls")["calls"] if c["callee"] == HOLD]
    assert len(rest) == 9
    out = ctl(node, "hangup", rest[0])
    assert out.returncode == 0, out.stderr
    for call_id in rest[1:]:
        api.request("POST", f"/calls/{call_id}/hangup")
    assert sipp.wait() == (held, 0)


def test_reload_changed_ivr_and_logs_while_running(
    node: Node, sipp_runs: list[Sipp], tmp_path: Path
) -> None:
    # `ctl logs --follow` before the calls: each call's log arrives as the call ends
    follower = subprocess.Popen(
        [CALLENGINE, "ctl", "--admin", node.admin, "--json", "logs", "--follow", "--limit", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(ln) for ln in follower.stdout or ()], daemon=True
    )
    reader.start()
    try:
        wait_for("the follower to connect", lambda: _followers(node) == 1)

        def one_call() -> dict[str, Any]:
            sipp = Sipp(tmp_path, node.daemon, MAIN, 1)
            sipp_runs.append(sipp)
            assert sipp.wait() == (1, 0)  # the flow ends with the node's BYE
            doc: dict[str, Any] = json.loads(lines.get(timeout=10))
            assert doc["callee"] == MAIN and doc["result"] == "completed"
            return doc

        first = one_call()
        assert steps(first) == ["greet_v1", "bye_v1"]

        # the changed flow is picked up by a reload, without a restart
        node.tenant_file.write_text(TENANT_V1.read_text().replace("_v1", "_v2"))
        locked = subprocess.run(
            [CALLENGINE, "config", "import", str(node.tenant_file)]
            + ["--data-dir", str(node.daemon.data_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert locked.returncode == 2 and "callengine ctl reload" in locked.stderr
        assert node.api.request("POST", "/reload")["changed"] == ["adm"]
        second = one_call()
        assert steps(second) == ["greet_v2", "bye_v2"]

        # an unchanged file changes nothing; a broken one is refused and v2 still runs
        assert node.api.request("POST", "/reload")["changed"] == []
        node.tenant_file.write_text("id: adm\nnumbers: 7\n")
        with pytest.raises(AdminError) as bad:
            node.api.request("POST", "/reload")
        assert bad.value.status == 422 and "tenant.yaml" in str(bad.value)
        assert steps(one_call()) == ["greet_v2", "bye_v2"]
    finally:
        follower.terminate()
        follower.wait(10)
    # a reader that went away while no call ended gives its place back
    wait_for("the follower's place to be freed", lambda: _followers(node) == 0)

    # `callengine logs` while the node runs (and holds the LevelDB): through the API,
    # whose address the node left in its data directory
    out = subprocess.run(
        [CALLENGINE, "logs", "--data-dir", str(node.daemon.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert first["call_id"] in out.stdout and second["call_id"] in out.stdout
    one = node.api.request("GET", f"/logs/{second['call_id']}")
    assert steps(one["log"]) == ["greet_v2", "bye_v2"] and one["state"] == "final"
    page = node.api.request("GET", "/logs?limit=2")["logs"]
    assert [(d["state"], d["log"]["callee"]) for d in page] == [("final", MAIN)] * 2


def _followers(node: Node) -> int:
    # /health counts the connected `/logs/follow` readers
    try:
        return int(node.api.request("GET", "/health").get("followers", 0))
    except AdminError:
        return 0


def _status(port: int, path: str, token: str | None = None, method: str = "GET") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def _health(port: int) -> bool:
    try:
        return _status(port, "/health") == 200
    except OSError:
        return False  # not listening yet


def test_admin_off_loopback_needs_a_token(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    # 0.0.0.0 is reachable from other machines: without a token the node refuses to start
    port = free_port(socket.SOCK_STREAM, both=False)
    refused = subprocess.run(
        [CALLENGINE, "serve", "--data-dir", str(tmp_path / "d0"), "--no-metrics"]
        + ["--listen", f"127.0.0.1:{free_port()}", "--admin", f"0.0.0.0:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "CALLENGINE_ADMIN_TOKEN"},
        check=False,
    )
    assert refused.returncode == 2
    assert "admin_token" in refused.stderr and "0.0.0.0" in refused.stderr

    # two trunks whose gateways do not exist: one not probed (stays up), one probed
    # every second that the breaker takes down after one failed probe
    config = tmp_path / "trunks.yaml"
    config.write_text(
        f"""
trunks:
  quiet:
    carrier: Q
    gateway: {{host: 127.0.0.1, port: {free_port()}}}
    spans: [{{name: q1, type: E1}}]
    health: {{probe: false}}
  dead:
    carrier: D
    gateway: {{host: 127.0.0.1, port: {free_port()}}}
    spans: [{{name: d1, type: T1}}, {{name: d2, type: T1}}]
    health: {{probe_interval: 1, probe_timeout: 0.3, down_after: 1, cool_down: 60}}
"""
    )
    token = secrets.token_hex(16)
    daemon_factory(
        "--config",
        str(config),
        "--admin",
        f"0.0.0.0:{port}",
        env={"CALLENGINE_ADMIN_TOKEN": token},
    )
    wait_for("the admin API", lambda: _health(port))
    for method, path in [("GET", "/calls"), ("POST", "/drain"), ("GET", "/logs")]:
        assert _status(port, path, method=method) == 401
        assert _status(port, path, "wrong", method=method) == 401
    assert _status(port, "/calls", token) == 200
    assert _status(port, "/ready") == 200  # probes need no token, and drain was refused
    client = AdminClient(f"127.0.0.1:{port}", token="")
    with pytest.raises(AdminError) as denied:
        client.request("GET", "/trunks")
    assert denied.value.status == 401
    api = AdminClient(f"127.0.0.1:{port}", token=token)

    def trunks() -> dict[str, tuple[str, int, int]]:
        return {
            t["name"]: (t["state"], t["channels_in_use"], t["channels"])
            for t in api.request("GET", "/trunks")["trunks"]
        }

    wait_for("the probed trunk to go down", lambda: trunks()["dead"][0] == "down")
    assert trunks() == {"quiet": ("up", 0, 30), "dead": ("down", 0, 46)}
