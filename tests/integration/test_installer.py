"""The installer against real programs: ``callengine init`` then ``serve`` from the
generated files; ``provision`` and ``check`` against SecantusDB (the master and History
DB) and Azurite (Media Storage), both started here, then stopped to see ``check`` fail.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest
from integration.support import CALLENGINE, ROOT, free_port, wait_udp_sip
from integration.test_azure_storage import CONTAINER, Azurite
from integration.test_reliability import Secantus

from callengine.cli import main
from callengine.installer import content_version
from config_cache import load_tenant_file

pytestmark = pytest.mark.integration

TENANTS = ROOT / "tests" / "fixtures" / "tenants"
ACME = TENANTS / "installer_acme.yaml"
BUNDLED = ROOT / "media" / "prompts"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CALLENGINE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def call(*args: str) -> subprocess.CompletedProcess[str]:
    """The same command line run in this process (saves the interpreter's start-up)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def init_args(port: int) -> list[str]:
    """Ports of their own: tests run side by side."""
    return [
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics",
        f"127.0.0.1:{free_port(socket.SOCK_STREAM, both=False)}",
        "--admin",
        f"127.0.0.1:{free_port(socket.SOCK_STREAM, both=False)}",
    ]


def with_rtp_range(config: Path, low: int) -> None:
    """A narrow RTP range nobody else on this shared machine uses (check looks at it all)."""
    text = config.read_text()
    text = text.replace("rtp_port_min: 10000", f"rtp_port_min: {low}")
    config.write_text(text.replace("rtp_port_max: 20000", f"rtp_port_max: {low + 19}"))


def free_range(size: int = 20) -> int:
    """Free UDP ports below the kernel's ephemeral range (check flags an overlap)."""
    first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        low = random.randrange(20000, first - size) & ~1
        held = []
        try:
            for port in range(low, low + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return low
    raise RuntimeError("no free RTP range")


class Serve:
    """``callengine serve --config FILE``, as the systemd unit runs it."""

    def __init__(self, config: Path, port: int, cwd: Path, *extra: str) -> None:
        self.log = cwd / f"serve-{port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [CALLENGINE, "serve", "--config", str(config), *extra],
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_udp_sip(port, timeout=30)
            # SIP answers before serve installs its SIGTERM handler: wait for "ready"
            deadline = time.monotonic() + 15
            while " ready" not in self.log.read_text():
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise TimeoutError
                time.sleep(0.05)
        except TimeoutError:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"serve did not start:\n{self.log.read_text()}") from None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Secantus, Azurite]]:
    """SecantusDB and Azurite, started side by side; stopped after the test."""
    mongo = Secantus(tmp_path, "mongo")
    blobs = Azurite(tmp_path)
    mongo.launch()
    try:
        blobs.start()
        mongo.wait_ready()
        yield mongo, blobs
    finally:
        blobs.stop()
        mongo.stop()


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


def test_init_then_serve_answers_options_and_check_sees_the_node(tmp_path: Path) -> None:
    port = free_port()
    root = tmp_path / "node"
    result = run("init", str(root), *init_args(port), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = root / "callengine.yaml"
    with_rtp_range(config, free_range())

    # the unit as systemd reads it: no warnings
    verify = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(root / "callengine.service")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")

    elsewhere = tmp_path / "elsewhere"  # the config's data_dir does not depend on the cwd
    elsewhere.mkdir()
    node = Serve(config, port, elsewhere)  # wait_udp_sip: OPTIONS got 200
    try:
        assert (root / "data" / "leveldb").is_dir()
        running = run("check", "--config", str(config), cwd=tmp_path)
        assert running.returncode == 0, running.stdout
        out = lines(running)
        assert f"ok    node: running (pid {node.proc.pid})" in out
        assert (
            f"ok    port {port}/udp on 127.0.0.1 (SIP): held by this node (pid {node.proc.pid})"
            in out
        )
        assert out[-1] == "check: all fine"
    finally:
        assert node.stop() == 0, node.log.read_text()

    # a port taken by another program: one line naming it, exit 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        taken = call("check", "--config", str(config))
    assert taken.returncode == 1
    problems = [line for line in lines(taken) if line.startswith("FAIL")]
    assert len(problems) == 1, taken.stdout
    # named by pid and command line (how this test was started: pytest, python -m ...)
    assert problems[0].startswith(
        f"FAIL  port {port}/udp on 127.0.0.1 (SIP): in use by pid {os.getpid()} ("
    )
    assert lines(taken)[-1] == "check: 1 problem(s)"

    again = call("init", str(root))
    assert again.returncode == 2 and "--force" in again.stderr


def test_provision_is_idempotent_and_check_follows_the_servers(
    tmp_path: Path, servers: tuple[Secantus, Azurite]
) -> None:
    mongo, blobs = servers
    prompts = tmp_path / "prompts"
    (prompts / "acme").mkdir(parents=True)
    promo = prompts / "acme" / "promo.wav"
    promo.write_bytes((BUNDLED / "welcome.wav").read_bytes())
    provision = [
        "provision",
        "--master",
        mongo.url,
        "--media",
        blobs.connection_string,
        "--container",
        CONTAINER,
        "--tenants",
        str(ACME),
        "--prompts",
        str(prompts),
    ]

    dry = call(*provision, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert lines(dry) == [
        f"prompt acme/prompts/promo.wav: would create ({promo.stat().st_size} bytes from {promo})",
        "tenant acme: would create (rev 1)",
        "provision: dry run, 2 change(s) not made",
    ]
    with mongo.client() as c:
        assert c["callengine"]["tenants"].count_documents({}) == 0
    assert blobs.blobs() == {}  # not even the container

    first = call(*provision)
    assert first.returncode == 0, first.stderr
    assert lines(first)[-1] == "provision: 2 change(s) made"
    second = call(*provision)
    assert lines(second) == [
        "prompt acme/prompts/promo.wav: unchanged",
        "tenant acme: unchanged (rev 1)",
        "provision: nothing to change",
    ]
    with mongo.client() as c:
        (doc,) = list(c["callengine"]["tenants"].find())
    want = load_tenant_file(ACME)[0].to_doc()
    assert doc["rev"] == 1 and doc["_id"] == "acme"
    assert doc["prompts"]["promo"] == {**want["prompts"]["promo"], "version": ANY}
    stored = blobs.container().download_blob("acme/prompts/promo.wav").readall()
    assert stored == promo.read_bytes()

    # the prompt's version is the audio's MD5, the blob's Content-MD5 as Azure keeps it
    old_version = content_version(promo.read_bytes())
    assert doc["prompts"]["promo"]["version"] == old_version
    blob = blobs.container().get_blob_client("acme/prompts/promo.wav").get_blob_properties()
    assert bytes(blob.content_settings.content_md5).hex() == old_version

    # a new recording of the prompt: uploaded, and its new version tells the nodes
    promo.write_bytes((BUNDLED / "goodbye.wav").read_bytes())
    new_version = content_version(promo.read_bytes())
    bump = f"prompt promo version {old_version[:8]} -> {new_version[:8]}"
    dry = call(*provision, "--dry-run")
    assert lines(dry) == [
        f"prompt acme/prompts/promo.wav: would update ({promo.stat().st_size} bytes from {promo})",
        f"tenant acme: would update (rev 1 -> 2, {bump})",
        "provision: dry run, 2 change(s) not made",
    ]
    third = call(*provision)
    assert lines(third) == [
        f"prompt acme/prompts/promo.wav: update ({promo.stat().st_size} bytes from {promo})",
        f"tenant acme: update (rev 1 -> 2, {bump})",
        "provision: 2 change(s) made",
    ]
    assert blobs.container().download_blob("acme/prompts/promo.wav").readall() == promo.read_bytes()
    with mongo.client() as c:
        assert c["callengine"]["tenants"].find_one({"_id": "acme"})["prompts"]["promo"] == {
            **want["prompts"]["promo"],
            "version": new_version,
        }
    # without --prompts the audio is not touched, and the version stays
    assert lines(call(*provision[:-2])) == [
        "tenant acme: 1 prompt(s) not uploaded (no --prompts DIR)",
        "tenant acme: unchanged (rev 2)",
        "provision: nothing to change",
    ]

    # a bad tenant file: nothing written, the error names file, tenant and field
    bad = TENANTS / "reliability_bad_types.yaml"
    refused = call(*provision[:-4], "--tenants", str(ACME), str(bad))
    assert refused.returncode == 2
    assert f"{bad}: tenant 'rel': users.100.password:" in refused.stderr
    with mongo.client() as c:
        assert c["callengine"]["tenants"].count_documents({}) == 1

    # a node of this platform: init, check (all up), serve follows the master
    port = free_port()
    root = tmp_path / "node"
    created = call(
        "init",
        str(root),
        *init_args(port),
        "--master",
        mongo.url,
        "--history",
        mongo.url,
        "--media",
        blobs.connection_string,
        "--container",
        CONTAINER,
    )
    assert created.returncode == 0, created.stderr
    config = root / "callengine.yaml"
    with_rtp_range(config, free_range())
    up = call("check", "--config", str(config))
    assert up.returncode == 0, up.stdout
    assert "ok    master: 1 tenant(s) in callengine.tenants" in lines(up)
    assert "ok    History DB: answers" in lines(up)
    assert f"ok    Media Storage: container {CONTAINER} answers" in lines(up)

    node = Serve(config, port, tmp_path)
    assert node.stop() == 0, node.log.read_text()
    shown = call("config", "show", "acme", "--data-dir", str(root / "data"))
    assert shown.returncode == 0, shown.stderr
    assert '"rev": 2' in shown.stdout and '"Spring sale"' in shown.stdout

    # the servers go away: one line each, quickly
    blobs.stop()
    mongo.stop()
    t0 = time.monotonic()
    down = call("check", "--config", str(config), "--timeout", "1")
    elapsed = time.monotonic() - t0
    assert down.returncode == 1
    problems = [line.split(":", 1)[0] for line in lines(down) if line.startswith("FAIL")]
    assert problems == ["FAIL  master", "FAIL  History DB", "FAIL  Media Storage"], down.stdout
    assert lines(down)[-1] == "check: 3 problem(s)"
    assert elapsed < 15, elapsed  # probes run at once, each bounded by --timeout

    # with the storage down, provision fails cleanly (exit 1) and changes nothing
    failed = call(*provision, "--timeout", "1")
    assert failed.returncode == 1 and "media storage" in failed.stderr.lower(), failed.stderr
