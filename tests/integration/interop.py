"""Independent SIP user agents from Debian, driven headless for the interop tests:
baresip 1.0.0 (package ``baresip``) and linphonec of liblinphone 5.1.65 (package
``linphone-cli``). Each runs as a real process on loopback with file-based audio: it
sends a WAV file and writes what it hears to a WAV file, and the test drives it over
the stack's own command interface. What each stack needs is written up in
``docs/interop.md``; the comments here say why each setting is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile
from integration.audio import CAPTURES, RATE, capture_audio, slip_tolerant_correlation
from integration.support import CALLENGINE, ROOT, Daemon, free_port

BARESIP = shutil.which("baresip") or "/usr/bin/baresip"
LINPHONEC = shutil.which("linphonec") or "/usr/bin/linphonec"
BARESIP_MODULES = Path("/usr/lib/baresip/modules")


def require(path: str, package: str) -> None:
    """A missing stack is a failure (the Makefile installs it), never a skip."""
    assert Path(path).exists(), f"{path} not found: install the Debian package {package}"


def wait_for(what: str, check: Callable[[], Any], timeout: float, detail: Callable[[], str]) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``detail()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{detail()}")


def speech() -> npt.NDArray[np.float64]:
    """7.08 s of speech from SIPp's G.711 capture (``g711a.pcap``), decoded: what the
    stacks say. Independent of the engine's prompts, so a correlation cannot confuse them."""
    return np.asarray(capture_audio(CAPTURES / "g711a.pcap"), dtype=np.float64)


def write_wav(path: Path, *parts: npt.NDArray[np.float64] | float) -> Path:
    """An 8 kHz mono 16-bit WAV of ``parts`` in order (a float is that many seconds of
    silence). Both stacks read this format without resampling."""
    chunks = [np.zeros(int(p * RATE)) if isinstance(p, float | int) else p for p in parts]
    soundfile.write(str(path), np.concatenate(chunks), RATE, subtype="PCM_16")
    return path


def recorded_so_far(path: Path) -> npt.NDArray[np.float64]:
    """The samples of a 16-bit mono WAV a stack is still writing: libsndfile (baresip)
    writes the header first with a data size of 0; mediastreamer (linphone) leaves the
    44 header bytes blank and writes them when it closes the file."""
    if not path.exists():
        return np.zeros(0)
    raw = path.read_bytes()
    if raw[:4] == b"RIFF":
        at = raw.find(b"data", 12)
        if at < 0:
            return np.zeros(0)
        body = raw[at + 8 :]
    else:
        body = raw[44:]
    body = body[: len(body) // 2 * 2]
    return np.frombuffer(body, dtype="<i2").astype(np.float64) / 32768.0


def wait_heard(
    recording: Callable[[], Path | None],
    reference: npt.NDArray[np.float64],
    *,
    after: int = 0,
    timeout: float = 15.0,
) -> int:
    """Wait until the stack's recording (still being written) holds ``reference`` in
    full at or after sample ``after``; the sample where it ends. The IVR is driven by
    what the stack heard, not by a guess of how long the prompts take."""
    needed = len(reference)

    def heard_it() -> int | None:
        path = recording()
        signal = recorded_so_far(path) if path is not None else np.zeros(0)
        if len(signal) < after + needed:
            return None
        ncc, offset, _ = slip_tolerant_correlation(signal[after:], reference)
        end = after + offset + needed
        if ncc >= 0.9 and len(signal) >= end:
            return end
        return None

    return wait_for(  # type: ignore[no-any-return]
        f"the stack hearing {needed / RATE:.2f} s of known audio",
        heard_it,
        timeout,
        lambda: f"recording: {recording()}",
    )


def call_logs(daemon: Daemon) -> list[dict[str, Any]]:
    """Stop the node (SIGTERM, must exit 0), then ``callengine logs --json``."""
    rc = daemon.stop(signal.SIGTERM, timeout=40)
    assert rc == 0, f"node exited with {rc}:\n{daemon.log()[-3000:]}"
    proc = subprocess.run(
        [CALLENGINE, "logs", "--data-dir", str(daemon.data_dir), "--json"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)


@dataclass(frozen=True)
class Account:
    """A demo tenant user (config_cache/demo): AOR ``sip:USER@demo``, Digest realm demo."""

    user: str
    password: str
    domain: str = "demo"

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"


# --------------------------------------------------------------------------- baresip


class Baresip:
    """baresip 1.0.0, headless, driven over its ``ctrl_tcp`` interface (JSON commands
    in netstrings; it pushes events such as ``REGISTER_OK`` and ``CALL_CLOSED`` on the
    same connection).

    Audio: the ``aufile`` module is the source (the WAV ``source``); no player module is
    loaded, so baresip skips the player, and the ``sndfile`` filter writes what it
    decodes (what it hears) and what it encodes (what it sends) to
    ``dump-<time>-dec.wav`` / ``-enc.wav`` in ``workdir``. baresip ends the call when
    the source file ends (aufile reports end of file as an audio error): ``source`` must
    outlast the call.
    """

    def __init__(
        self, workdir: Path, node: Daemon, account: Account, *, source: Path, auto_answer: bool
    ) -> None:
        require(BARESIP, "baresip")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.ctrl_port = free_port(socket.SOCK_STREAM, both=False)
        self.sip_port = free_port()
        (workdir / "config").write_text(
            "\n".join(
                [
                    f"sip_listen 127.0.0.1:{self.sip_port}",
                    "sip_trans_def udp",
                    f"audio_source aufile,{source}",
                    f"module_path {BARESIP_MODULES}",
                    "module g711.so",
                    "module aufile.so",
                    "module sndfile.so",
                    "module_app account.so",
                    "module_app menu.so",  # the commands: dial, sndcode, hangup, quit
                    "module_app ctrl_tcp.so",
                    f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
                    f"snd_path {workdir}",
                    "",
                ]
            )
        )
        # The AOR's domain is the tenant (demo); the node is the outbound proxy.
        answer = ";answermode=auto" if auto_answer else ""
        (workdir / "accounts").write_text(
            f'<{account.aor}>;outbound="sip:{node.address}";auth_pass={account.password};'
            f"regint=300{answer}\n"
        )
        self.log_path = workdir / "baresip.log"
        with open(self.log_path, "wb") as log:
            # -s: the SIP trace in the log, for failure messages
            self.proc = subprocess.Popen(
                [BARESIP, "-f", str(workdir), "-s"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        self.events: list[dict[str, Any]] = []
        self._responses: dict[str, dict[str, Any]] = {}
        self._lock = threading.Condition()
        self._tokens = 0
        self.sock = wait_for(
            "baresip's ctrl_tcp port", self._connect, 10.0, lambda: self.log()[-2000:]
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _connect(self) -> socket.socket | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"baresip exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1)
        except OSError:
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _read(self) -> None:
        buf = b""
        self.sock.settimeout(None)
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b":" in buf:
                size, _, rest = buf.partition(b":")
                if len(rest) < int(size) + 1:
                    break
                message = json.loads(rest[: int(size)])
                buf = rest[int(size) + 1 :]  # the netstring's trailing comma
                with self._lock:
                    if message.get("event"):
                        self.events.append(message)
                    elif message.get("response"):
                        self._responses[str(message.get("token"))] = message
                    self._lock.notify_all()

    def command(self, name: str, params: str = "", *, timeout: float = 5.0) -> str:
        """Run a menu command; its output. Fails if baresip answers not ok."""
        with self._lock:
            self._tokens += 1
            token = str(self._tokens)
        body = json.dumps({"command": name, "params": params, "token": token}).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body + b",")
        with self._lock:
            ok = self._lock.wait_for(lambda: token in self._responses, timeout)
            assert ok, f"baresip did not answer {name!r}:\n{self.log()[-2000:]}"
            response = self._responses.pop(token)
        assert response.get("ok"), (name, params, response)
        return str(response.get("data", ""))

    def wait_registered(self, timeout: float = 10.0) -> None:
        """Until ``reginfo`` shows the account OK (its REGISTER_OK event may come before
        the test connects to ctrl_tcp)."""
        wait_for(
            "baresip's registration",
            lambda: "OK" in re.sub(r"\x1b\[[0-9;]*m", " ", self.command("reginfo")).split(),
            timeout,
            lambda: self.log()[-3000:],
        )

    def wait_event(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first event of type ``kind`` (``REGISTER_OK``, ``CALL_ESTABLISHED``...)."""

        def found() -> dict[str, Any] | None:
            with self._lock:
                return next((e for e in self.events if e.get("type") == kind), None)

        return wait_for(  # type: ignore[no-any-return]
            f"baresip event {kind}",
            found,
            timeout,
            lambda: f"events: {[e.get('type') for e in self.events]}\n{self.log()[-3000:]}",
        )

    def dump(self, kind: str) -> Path | None:
        """Its ``dec`` (heard) or ``enc`` (sent) dump of the current call, once open."""
        found = sorted(self.workdir.glob(f"dump-*-{kind}.wav"))
        return found[-1] if found else None

    def recordings(self) -> tuple[Path, Path]:
        """(what it heard, what it sent): the sndfile dumps of its one call."""
        heard = sorted(self.workdir.glob("dump-*-dec.wav"))
        sent = sorted(self.workdir.glob("dump-*-enc.wav"))
        assert len(heard) == 1 and len(sent) == 1, (heard, sent)
        return heard[0], sent[0]

    def close(self) -> None:
        """``quit`` (baresip unregisters and exits; the WAV dumps are complete then)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, AssertionError):
                self.command("quit", timeout=2)
        _stop(self.proc, 10)
        self.sock.close()


# --------------------------------------------------------------------------- linphone


class Linphone:
    """linphonec (liblinphone 5.1.65), headless, commands on its standard input.

    * ``--pipe``: without it linphonec reads commands with readline, and with a pipe as
      stdin only runs the core between two lines (no REGISTER, no call progress). With
      it, a thread reads stdin and the main loop iterates every 20 ms. (It also listens
      on the fixed Unix socket ``/tmp/linphonec-<uid>``: one linphonec at a time.)
    * ``HOME`` is the work dir and ``~/.local/share/linphone`` must exist: when the core
      cannot open its database there it never starts its SIP transports (no listening
      point, REGISTER and INVITE fail with "no channel available").
    * ``soundcard use files``: no sound card; ``record FILE`` writes what it hears.
      ``play FILE`` given before the call is ignored by liblinphone 5.1; during the
      call it starts sending the file at once (:meth:`play`).
    * Digits typed during a call are sent as RFC 4733 telephone-events.
    """

    def __init__(
        self, workdir: Path, node: Daemon, account: Account, *, record: Path, auto_answer: bool
    ) -> None:
        require(LINPHONEC, "linphone-cli")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.sip_port = free_port()
        rtp = free_port(both=False)
        (workdir / "linphonerc").write_text(
            f"""[sip]
sip_port={self.sip_port}
sip_tcp_port=0
sip_tls_port=0
default_proxy=0
[rtp]
audio_rtp_port={rtp}
[sound]
echocancellation=0
[proxy_0]
reg_proxy=<sip:{node.address}>
reg_route=<sip:{node.address};lr>
reg_identity={account.aor}
reg_expires=300
reg_sendregister=1
publish=0
[auth_info_0]
username={account.user}
passwd={account.password}
realm={account.domain}
domain={account.domain}
"""
        )
        self.log_path = workdir / "linphonec.log"
        self.out_path = workdir / "linphonec.out"
        args = [LINPHONEC, "--pipe", "-c", str(workdir / "linphonerc"), "-d", "6"]
        args += ["-l", str(self.log_path)] + (["-a"] if auto_answer else [])
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env={**os.environ, "HOME": str(workdir)},
            )
        self.send("soundcard use files")
        self.send(f"record {record}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        assert self.proc.poll() is None, f"linphonec exited:\n{self.output()[-2000:]}"
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_output(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until linphonec's console output matches ``pattern``."""
        return wait_for(  # type: ignore[no-any-return]
            f"linphonec printing {pattern!r}",
            lambda: re.search(pattern, self.output()),
            timeout,
            lambda: self.output()[-2000:] + "\n--- log ---\n" + self.log()[-3000:],
        )

    def wait_registered(self, timeout: float = 10.0) -> None:
        wait_for(
            "linphone's registration",
            lambda: "to [LinphoneRegistrationOk]" in self.log(),
            timeout,
            lambda: self.log()[-3000:],
        )

    def play(self, path: Path) -> None:
        """Start sending ``path`` into the current call."""
        self.send(f"play {path}")
        wait_for(
            f"linphone playing {path.name}",
            lambda: f"{path} opened" in self.log(),
            5.0,
            lambda: self.log()[-2000:],
        )

    def close(self) -> None:
        """``quit``; linphonec's pipe thread can keep it alive afterwards, then SIGKILL
        (its calls are over by then; the recording is closed at the end of the call)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, AssertionError):
                self.send("quit")
        _stop(self.proc, 1)


def sip_messages(log: str) -> Iterator[str]:
    """Start lines of the SIP messages in a stack's log (for failure messages)."""
    for line in log.splitlines():
        if re.match(r"^(SIP/2\.0 \d{3}|[A-Z]+ sips?:\S+ SIP/2\.0)", line):
            yield line


# --------------------------------------------------------------------------- the caller


class Softphone:
    """The pjsua2 softphone (``python -m callengine.softphone SPEC``, one endpoint per
    process) placing one scripted call in the background while the test drives a stack."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callengine.softphone", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )

    def result(self, timeout: float = 30.0) -> dict[str, Any]:
        """Its JSON result once the call is over (exit 0 means it was answered)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        lines = out.decode().strip().splitlines()
        assert self.proc.returncode == 0 and lines, (
            f"softphone exit {self.proc.returncode}: {out.decode()}\n"
            f"{err.decode(errors='replace')[-3000:]}"
        )
        result: dict[str, Any] = json.loads(lines[-1])
        return result
