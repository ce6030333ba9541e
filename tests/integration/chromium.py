"""Debian's Chromium, headless with fake media devices, driven over the DevTools protocol.

A small CDP client on wsproto over an asyncio socket: :meth:`Browser.evaluate` runs a
JavaScript expression in the page (awaiting promises) and returns its JSON value. The
browser runs in a fresh profile, offline from Google (no background networking, no
component updates), as root (``--no-sandbox``), with a WAV as its microphone.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--ignore-certificate-errors",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-port=0",
)


class Browser:
    """One Chromium process and a DevTools connection to its first page."""

    def __init__(self, proc: subprocess.Popen[bytes], profile: Path) -> None:
        self.proc = proc
        self.profile = profile
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._ids = itertools.count(1)
        self._parts: list[str] = []

    @classmethod
    async def start(cls, url: str, *, audio: Path, profile: Path, timeout: float = 20.0) -> Browser:
        """Start Chromium on ``url`` with ``audio`` (a WAV) as the microphone."""
        if shutil.which(CHROMIUM) is None:
            raise AssertionError(f"{CHROMIUM} is missing: make install (APT_PKGS) installs it")
        profile.mkdir(parents=True, exist_ok=True)
        args = [
            CHROMIUM,
            *FLAGS,
            f"--use-file-for-fake-audio-capture={audio}",
            f"--user-data-dir={profile}",
            url,
        ]
        with open(profile / "chromium.log", "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        browser = cls(proc, profile)
        try:
            await browser._connect(timeout)
        except BaseException:
            browser.close()
            raise
        return browser

    def log(self) -> str:
        return (self.profile / "chromium.log").read_text(errors="replace")

    async def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        port = None
        while port is None:
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", self.log())
            if found:
                port = int(found.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Chromium did not start:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.05)
        target = None
        while target is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                target = pages[0]["webSocketDebuggerUrl"]
            elif time.monotonic() > deadline:
                raise AssertionError("Chromium has no page")
            else:
                await asyncio.sleep(0.05)
        path = target.split(f":{port}", 1)[1]
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
        self._writer.write(self._ws.send(Request(host=f"127.0.0.1:{port}", target=path)))
        while not any(isinstance(e, AcceptConnection) for e in await self._events()):
            pass

    async def _events(self) -> list[object]:
        assert self._reader is not None
        data = await self._reader.read(1 << 20)
        if not data:
            raise ConnectionError("DevTools connection closed")
        self._ws.receive_data(data)
        return list(self._ws.events())

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are dropped)."""
        assert self._writer is not None
        ident = next(self._ids)
        message = json.dumps({"id": ident, "method": method, "params": params})
        self._writer.write(self._ws.send(TextMessage(message)))
        while True:
            for event in await self._events():
                if isinstance(event, CloseConnection):
                    raise ConnectionError("DevTools connection closed")
                if not isinstance(event, TextMessage):
                    continue
                self._parts.append(event.data)
                if not event.message_finished:
                    continue
                reply = json.loads("".join(self._parts))
                self._parts = []
                if reply.get("id") == ident:
                    if "error" in reply:
                        raise AssertionError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply["result"]
                    return result

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                state = await self.evaluate("JSON.stringify(window.phone && phone.state)")
                raise AssertionError(f"timed out waiting for {expression}; page state {state}")
            await asyncio.sleep(0.05)

    async def close_page(self) -> None:
        """Close the tab (``Page.close``: no BYE, no close frame from the page script)."""
        await self.send("Page.close")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
