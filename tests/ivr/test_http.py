"""The webhook HTTP client against scripted loopback servers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from ivr._http import HttpError, HttpResponse, request


def serve_raw(reply: bytes) -> Callable[[], Coroutine[Any, Any, HttpResponse]]:
    """A server that reads the request head and writes ``reply`` verbatim."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    async def go() -> HttpResponse:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await request("GET", f"http://127.0.0.1:{port}/", timeout=2)
        finally:
            server.close()
            await server.wait_closed()

    return go


def test_content_length() -> None:
    resp = asyncio.run(
        serve_raw(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}")()
    )
    assert (resp.status, resp.body, resp.headers["x-a"]) == (201, b"{}", "b")


def test_chunked_with_interim_response() -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\n5\r\n: 1}\n\r\n0\r\nTrailer: x\r\n\r\n'
    )
    resp = asyncio.run(serve_raw(reply)())
    assert (resp.status, resp.body) == (200, b'{"a": 1}\n')


def test_body_until_close() -> None:
    resp = asyncio.run(serve_raw(b"HTTP/1.0 200 OK\r\n\r\nhello")())
    assert resp.body == b"hello"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"SIP/2.0 200 OK\r\n\r\n", "malformed response: illegal status line"),
        (b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n", "malformed response: illegal header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "malformed response: "),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
            "response body too large (99999999 bytes)",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "malformed response: "),
        (b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * (1024 * 1024 + 1), "response body too large"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"80000\r\n"
            + b"x" * 0x80000
            + b"\r\n"
            + b"80001\r\n"
            + b"x" * 0x80001
            + b"\r\n0\r\n\r\n",
            "response body too large",
        ),
    ],
)
def test_malformed_responses(reply: bytes, message: str) -> None:
    with pytest.raises(HttpError) as info:
        asyncio.run(serve_raw(reply)())
    assert str(info.value).startswith(message)


def test_only_http_urls() -> None:
    with pytest.raises(HttpError, match="unsupported URL 'https://x/'"):
        asyncio.run(request("GET", "https://x/", timeout=1))


def test_request_on_the_wire_and_proxy_settings_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy in the environment must not divert webhooks (trust_env=False).
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head + await reader.readexactly(7))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def go() -> HttpResponse:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await request(
                "POST", f"http://127.0.0.1:{port}/a/b?c=d", body=b'{"x":1}', timeout=2
            )
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(go()).status == 200
    start, *lines = seen[0].split(b"\r\n")
    assert start == b"POST /a/b?c=d HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines if ln)}
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == b"7"
    assert headers[b"connection"] == b"close"
    assert headers[b"user-agent"] == b"callengine-ivr"
    assert seen[0].endswith(b'\r\n\r\n{"x":1}')


def test_stalled_server_times_out_without_blocking_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A webhook that never answers ends at its deadline, and no step of the client
    holds the event loop (asyncio's debug mode logs every callback over 80 ms: creating
    httpx's default client alone takes 100-150 ms here)."""
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    async def go() -> float:
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.08
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        start = loop.time()
        try:
            with pytest.raises(HttpError, match=r"^timeout after 0\.3s$"):
                await request("GET", f"http://127.0.0.1:{port}/", timeout=0.3)
            return loop.time() - start
        finally:
            release.set()
            server.close()
            await server.wait_closed()

    with caplog.at_level("WARNING", logger="asyncio"):
        elapsed = asyncio.run(go(), debug=True)
    assert 0.3 <= elapsed < 1.0
    assert [r.getMessage() for r in caplog.records if "Executing" in r.getMessage()] == []
