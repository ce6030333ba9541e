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
        (b"SIP/2.0 200 OK\r\n\r\n", "malformed status line 'SIP/2.0 200 OK'"),
        (b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n", "malformed header line 'broken'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "malformed response: "),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "response body too large"),
    ],
)
def test_malformed_responses(reply: bytes, message: str) -> None:
    with pytest.raises(HttpError) as info:
        asyncio.run(serve_raw(reply)())
    assert str(info.value).startswith(message)


def test_only_http_urls() -> None:
    with pytest.raises(HttpError, match="unsupported URL 'https://x/'"):
        asyncio.run(request("GET", "https://x/", timeout=1))
