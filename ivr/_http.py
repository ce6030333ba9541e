"""A tiny HTTP/1.1 client on asyncio streams, for webhook nodes (``http://`` only).

One request per connection (``Connection: close``), a JSON body, a deadline
over the whole exchange. Responses may use ``Content-Length``, chunked
transfer coding (RFC 9112 §7.1) or end at connection close. Anything else
going wrong is an :class:`HttpError`: a webhook failure, never a crash.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["HttpError", "HttpResponse", "request"]

_MAX_BODY = 1 << 20
_MAX_HEAD = 64 * 1024


class HttpError(Exception):
    """No usable response: bad URL, connection failure, timeout, malformed reply."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete response; header names are lower-cased."""

    status: int
    headers: dict[str, str]
    body: bytes


async def request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    timeout: float,
    content_type: str = "application/json",
) -> HttpResponse:
    """Send one request and read the whole response within ``timeout`` seconds."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise HttpError(f"unsupported URL {url!r}")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise HttpError(f"bad URL {url!r}: {exc}") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    head = [
        f"{method} {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        "User-Agent: callengine-ivr",
        "Accept: application/json",
        "Connection: close",
    ]
    if body is not None:
        head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, port, limit=_MAX_HEAD)
            writer.write(data)
            await writer.drain()
            return await _read_response(reader)
    except TimeoutError:
        raise HttpError(f"timeout after {timeout:g}s") from None
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise HttpError(f"malformed response: {exc}") from None
    except OSError as exc:
        raise HttpError(f"connection failed: {exc}") from None
    finally:
        if writer is not None:
            writer.close()


async def _read_response(reader: asyncio.StreamReader) -> HttpResponse:
    while True:
        status, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        if not 100 <= status < 200:  # skip interim responses such as 100 Continue
            break
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if not 0 <= length <= _MAX_BODY:
            raise HttpError(f"response body too large ({length} bytes)")
        body = await reader.readexactly(length)
    else:
        body = await reader.read(_MAX_BODY + 1)
        if len(body) > _MAX_BODY:
            raise HttpError("response body too large")
    return HttpResponse(status=status, headers=headers, body=body)


def _parse_head(block: bytes) -> tuple[int, dict[str, str]]:
    lines = block.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HttpError(f"malformed status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(f"malformed header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return int(code), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields
                pass
            return bytes(body)
        if len(body) + size > _MAX_BODY:
            raise HttpError("response body too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
