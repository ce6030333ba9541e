"""The HTTP client of webhook nodes (``http://`` only), on httpx.

This is the only module that imports httpx (and its transport stack). One request
per connection (``Connection: close``: no connection outlives its request, so
nothing is shared between event loops, flows or tenants), a JSON body, a deadline over the whole exchange, the response body
capped at 1 MiB (checked against ``Content-Length`` before reading, and while
reading when there is none). Anything going wrong is an :class:`HttpError`: a
webhook failure the flow routes to ``on_failure``, never a crash.

Real time (DESIGN.md principle 4): nothing here blocks the event loop. httpx's
default client builds a verified TLS context from the CA bundle when it is created
(100-150 ms on this machine); webhooks are ``http://`` only, so the client is
given one bare TLS context made once at import, which makes creating a client
cost ~0.2 ms. Name resolution goes through the loop's executor (anyio), and
``trust_env=False`` keeps proxies and ``.netrc`` from the environment out of it.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

try:
    # httpx imports its transport stack (httpcore, h11, anyio and anyio's asyncio
    # backend) on the first request: ~170 ms spent inside one step of the event loop.
    # Import it with this module instead, at load time.
    import anyio._backends._asyncio  # noqa: F401
    import httpcore  # noqa: F401
except ImportError:  # pragma: no cover - a layout change in anyio: only slower
    pass

__all__ = ["HttpError", "HttpResponse", "request"]

_MAX_BODY = 1 << 20
# Never used for a handshake (https is refused before any connection); it only spares
# each client httpx's default context, whose CA bundle loading would stall the loop.
_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_HEADERS = {
    "User-Agent": "callengine-ivr",
    "Accept": "application/json",
    # Identity: no decompression work on the event loop, and the cap is on the wire.
    "Accept-Encoding": "identity",
    "Connection": "close",
}
_LIMITS = httpx.Limits(max_connections=1, max_keepalive_connections=0)


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
        _ = parts.port  # urlsplit checks the port only when it is read
        target = httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise HttpError(f"bad URL {url!r}: {exc}") from None
    headers = dict(_HEADERS)
    if body is not None:
        headers["Content-Type"] = content_type
    try:
        async with asyncio.timeout(timeout):
            async with httpx.AsyncClient(
                verify=_TLS,
                trust_env=False,
                timeout=httpx.Timeout(timeout),
                limits=_LIMITS,
                follow_redirects=False,
            ) as client:
                async with client.stream(method, target, content=body, headers=headers) as resp:
                    return HttpResponse(
                        status=resp.status_code,
                        headers={k.lower(): v for k, v in resp.headers.items()},
                        body=await _read_body(resp),
                    )
    except (TimeoutError, httpx.TimeoutException):
        raise HttpError(f"timeout after {timeout:g}s") from None
    except httpx.ConnectError as exc:
        raise HttpError(f"connection failed: {exc}") from None
    except (httpx.RemoteProtocolError, httpx.LocalProtocolError, httpx.DecodingError) as exc:
        raise HttpError(f"malformed response: {exc}") from None
    except (httpx.TransportError, OSError) as exc:
        raise HttpError(f"connection failed: {exc}") from None


async def _read_body(resp: httpx.Response) -> bytes:
    length = resp.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise HttpError(f"malformed response: Content-Length {length!r}") from None
        if not 0 <= declared <= _MAX_BODY:
            raise HttpError(f"response body too large ({declared} bytes)")
    body = bytearray()
    async for chunk in resp.aiter_raw():
        body += chunk
        if len(body) > _MAX_BODY:
            raise HttpError("response body too large")
    return bytes(body)
