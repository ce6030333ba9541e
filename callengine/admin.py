"""The control API of a node: an admin HTTP server on the node's own event loop.

``callengine serve --admin HOST:PORT`` (default ``127.0.0.1:9091``) opens it; this is the
only module that imports aiohttp (it also holds :class:`WebPhoneServer`, the browser
phone page of ``webphone: HOST:PORT``, docs/webrtc.md). Endpoints (JSON; docs/admin.md):

=============================  ==========================================================
``GET /health``                liveness: the loop answers
``GET /ready``                 200 when taking calls, 503 while draining (balancers, k8s)
``GET /calls``                 live calls (``offset``/``limit``, at most 1,000 per page)
``GET /calls/{id}``            one call, with its RTP statistics
``POST /calls/{id}/hangup``    BYE (answered) or a final response / CANCEL (not yet)
``POST /drain`` ``/undrain``   new INVITEs and OPTIONS get 503 / normal service again
``POST /reload``               re-read ``tenant_files`` and poll the master now
``GET /logs``                  recent call logs (``limit``, at most 1,000)
``GET /logs/{call_id}``        one call's log
``GET /logs/follow``           newline-delimited JSON, one call log as each call ends
``GET /trunks``                breaker state and B-channels per trunk
=============================  ==========================================================

Real time (DESIGN.md principle 4): a handler never holds the loop for long. The call
list is built and encoded in slices of :data:`SLICE` calls with a yield to the loop
between slices; call-log reads (LevelDB) run in a thread and are bounded by ``limit``;
a slow ``/logs/follow`` reader loses lines (counted) instead of growing a queue.

Authentication: ``Authorization: Bearer <token>`` when a token is set; a token is
required when the address is not a loopback one (:func:`check_bind`). ``/health`` and
``/ready`` answer without it (they tell nothing but up/ready, and probes rarely carry
secrets).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .calllogs import call_log_of

if TYPE_CHECKING:
    from .call import Call
    from .node import Node

log = logging.getLogger("callengine.admin")

__all__ = [
    "DEFAULT_ADMIN",
    "AdminServer",
    "ClusterAdmin",
    "LogFeed",
    "WebPhoneServer",
    "call_summary",
    "check_bind",
    "is_loopback",
]

DEFAULT_ADMIN = "127.0.0.1:9091"
SLICE = 25
"""Calls summarised and encoded per turn of the event loop."""
MAX_PAGE = 1000
"""Most calls (or call logs) one request returns."""
LOG_SLICE = 25
"""Call logs (kilobytes each, with their IVR path) written per turn of the event loop."""
MAX_FOLLOWERS = 16
FOLLOW_QUEUE = 1000
"""Call logs a ``/logs/follow`` reader may lag behind before lines are dropped."""
FOLLOW_CHECK = 5.0
"""Seconds between checks that a quiet ``/logs/follow`` reader is still connected."""
OPEN_PATHS = frozenset({"/health", "/ready"})


class AdminConfigError(ValueError):
    """The admin address or token settings cannot be used (raised before binding)."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, ``localhost``).

    A wildcard (``0.0.0.0``, ``::``) and any other address are reachable from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None) -> None:
    """Refuse an admin address reachable from other machines without a token."""
    if not token and not is_loopback(host):
        raise AdminConfigError(
            f"admin API on {host} is reachable from other machines: set admin_token "
            "(or CALLENGINE_ADMIN_TOKEN), or bind it to 127.0.0.1"
        )


def authorized(header: str | None, token: str | None) -> bool:
    """``Authorization: Bearer <token>`` matches (constant-time); no token: anyone."""
    if not token:
        return True
    if header is None or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


def call_summary(call: Call, now: float, *, rtp: bool = True) -> dict[str, Any]:
    """What the API says about one live call (``now``: wall-clock seconds)."""
    answer = call.sdp_answer
    codecs = [c.name for c in answer.codecs] if answer is not None else []
    trunk = call.trunk_attempts[-1] if call.trunk_attempts else None
    media = call.media
    since = call.answered_at or call.started_at
    return {
        "id": call.call_id,
        "caller": call.caller,
        "callee": call.callee,
        "tenant": call.tenant,
        "did": call.did,
        "direction": call.direction,
        "state": call.state,
        "answered": call.answered,
        "started_at": call.started_at,
        "answered_at": call.answered_at,
        "duration": round(max(0.0, now - since), 3),
        "source": f"{call.source[0]}:{call.source[1]}" if call.source else None,
        "trunk": dict(trunk) if trunk is not None else None,
        "codecs": codecs,
        "rtp": media.quality() if (rtp and media is not None) else None,
    }


class LogFeed:
    """Engine hook: hands each ended call's log to the ``/logs/follow`` readers.

    Costs nothing while nobody follows; each reader has a bounded queue and loses lines
    (counted in ``dropped``) when it does not keep up."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.readers: list[asyncio.Queue[bytes]] = []
        self.dropped = 0

    def on_call_started(self, call: Call) -> None:
        return None

    def on_call_answered(self, call: Call) -> None:
        return None

    def on_call_ended(self, call: Call) -> None:
        if not self.readers:
            return
        rec = call_log_of(call, node_id=self.node_id, final=True)
        if rec.end_time is None:
            rec.end_time = rec.answer_time or rec.start_time
        line = (json.dumps({"state": "final", "log": rec.to_dict()}) + "\n").encode()
        for queue in self.readers:
            try:
                queue.put_nowait(line)
            except asyncio.QueueFull:
                self.dropped += 1


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Site:
    """An aiohttp application on a TCP address (or a Unix socket): start, the port it
    got, stop. The control API and the web phone are two of these."""

    name = "HTTP"
    host: str
    port: int
    unix: str | None = None
    app: web.Application
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve. Raises OSError when the address cannot be bound."""
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        site: web.BaseSite
        if self.unix is not None:
            site = web.UnixSite(runner, self.unix)
        else:
            site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.unix is None:
            log.info("%s on http://%s:%d", self.name, self.host, self.bound_port)

    @property
    def bound_port(self) -> int:
        """The port actually bound (``port`` 0 picks a free one)."""
        assert self._runner is not None
        for address in self._runner.addresses:
            return int(address[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class AdminServer(_Site):
    """The control API of one :class:`~callengine.node.Node` (see the module doc)."""

    name = "admin API"

    def __init__(
        self,
        node: Node,
        host: str,
        port: int,
        *,
        token: str | None = None,
        unix: str | None = None,
    ) -> None:
        check_bind(host, token)
        self.unix = unix
        """Serve on this Unix socket instead (a worker's, for the front's fan-out)."""
        self.node = node
        self.host = host
        self.port = port
        self.token = token or None
        self.feed = LogFeed(node.config.node_id)
        self.slice_max_ms = 0.0
        """Longest stretch one ``/calls`` slice held the loop (wall clock, milliseconds)."""
        self.slice_cpu_max_ms = 0.0
        """The same in CPU time of the loop's thread (what preemption does not inflate)."""
        self.stopping = False
        self._runner: web.AppRunner | None = None
        app = web.Application(middlewares=[self._auth])
        app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/ready", self.ready),
                web.get("/calls", self.calls),
                web.get("/calls/{id}", self.call),
                web.post("/calls/{id}/hangup", self.hangup),
                web.post("/drain", self.drain),
                web.post("/undrain", self.undrain),
                web.post("/reload", self.reload),
                web.get("/logs", self.logs),
                web.get("/logs/follow", self.follow),
                web.get("/logs/{call_id}", self.call_log),
                web.get("/trunks", self.trunks),
            ]
        )
        self.app = app

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Bind and serve. Raises OSError when the address cannot be bound."""
        self.node.engine.hooks.append(self.feed)
        await super().start()

    async def stop(self) -> None:
        self.stopping = True
        for queue in self.feed.readers:
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(b"")  # each follower ends its response
        await super().stop()
        if self.feed in self.node.engine.hooks:
            self.node.engine.hooks.remove(self.feed)

    # ---------------------------------------------------------------- helpers
    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and not authorized(
            request.headers.get("Authorization"), self.token
        ):
            return web.json_response(
                {"error": "unauthorized"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="callengine"'},
            )
        return await handler(request)

    @property
    def draining(self) -> bool:
        engine = self.node.engine
        return engine.started and engine.ua.draining

    def _find(self, call_id: str) -> list[Call]:
        return [c for c in self.node.engine.calls.values() if c.call_id == call_id]

    def followers(self) -> int:
        """Connected ``/logs/follow`` readers."""
        return len(self.feed.readers)

    # ------------------------------------------------------------- endpoints
    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "status": "ok",
                "node": self.node.config.node_id,
                "followers": self.followers(),
                "calls_slice_max_ms": round(self.slice_max_ms, 3),
                "calls_slice_cpu_max_ms": round(self.slice_cpu_max_ms, 3),
            }
        )

    async def ready(self, request: web.Request) -> web.StreamResponse:
        node = self.node
        engine = node.engine
        follower = node.follower
        body = {
            "ready": False,
            "draining": self.draining,
            "listening": engine.started and bool(engine.transports and engine.transports.bound),
            "offline": bool(follower is not None and follower.offline),
            "calls": len(engine.calls),
        }
        body["ready"] = bool(body["listening"]) and not body["draining"] and not self.stopping
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def calls(self, request: web.Request) -> web.StreamResponse:
        try:
            offset = max(0, int(request.query.get("offset", "0")))
            limit = min(MAX_PAGE, max(0, int(request.query.get("limit", str(MAX_PAGE)))))
        except ValueError:
            return web.json_response({"error": "offset and limit are integers"}, status=400)
        rtp = request.query.get("rtp", "1") not in ("0", "false", "no")
        started = time.perf_counter()
        live = list(self.node.engine.calls.values())
        total = len(live)
        page = live[offset : offset + limit]
        del live
        media = self.node.engine.media_manager
        if rtp and getattr(media, "remote", False):
            # RTP is in the media plane: one request for the page's live figures
            await media.refresh_quality([c.media for c in page if c.media is not None])
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        head = f'{{"total": {total}, "offset": {offset}, "limit": {limit}, "calls": ['
        await response.write(head.encode())
        longest = longest_cpu = 0.0
        first = True
        for i in range(0, len(page), SLICE):
            t0 = time.perf_counter()
            c0 = time.thread_time()
            now = time.time()
            parts = [
                json.dumps(call_summary(c, now, rtp=rtp), default=str) for c in page[i : i + SLICE]
            ]
            chunk = ",".join(parts)
            if not first and chunk:
                chunk = "," + chunk
            first = first and not chunk
            longest = max(longest, time.perf_counter() - t0)
            longest_cpu = max(longest_cpu, time.thread_time() - c0)
            await response.write(chunk.encode())
            await asyncio.sleep(0)  # write() yields only when the socket buffer is full
        await response.write(b"]}")
        self.slice_max_ms = max(self.slice_max_ms, longest * 1000)
        self.slice_cpu_max_ms = max(self.slice_cpu_max_ms, longest_cpu * 1000)
        log.debug(
            "GET /calls: %d calls, longest slice %.2f ms, %.1f ms in all",
            len(page),
            longest * 1000,
            (time.perf_counter() - started) * 1000,
        )
        await response.write_eof()
        return response

    async def call(self, request: web.Request) -> web.StreamResponse:
        found = self._find(request.match_info["id"])
        if not found:
            return web.json_response({"error": "no such call"}, status=404)
        media = self.node.engine.media_manager
        if getattr(media, "remote", False):
            await media.refresh_quality([c.media for c in found if c.media is not None])
        now = time.time()
        legs = [call_summary(c, now) for c in found]
        body = dict(legs[0])
        body["variables"] = dict(found[0].variables)
        body["ivr_path"] = list(found[0].ivr_path[-50:])
        if len(legs) > 1:
            body["legs"] = legs
        return web.json_response(body, dumps=_dumps)

    async def hangup(self, request: web.Request) -> web.StreamResponse:
        found = self._find(request.match_info["id"])
        if not found:
            return web.json_response({"error": "no such call"}, status=404)
        for call in found:
            log.info("hangup requested through the admin API", extra={"call_id": call.call_id})
            await call.hangup(cause=16)
        return web.json_response({"hungup": request.match_info["id"], "legs": len(found)})

    async def drain(self, request: web.Request) -> web.StreamResponse:
        self.node.engine.ua.draining = True
        log.warning(
            "draining (admin API): new INVITEs and OPTIONS get 503; %d calls in progress",
            len(self.node.engine.calls),
        )
        return web.json_response({"draining": True, "calls": len(self.node.engine.calls)})

    async def undrain(self, request: web.Request) -> web.StreamResponse:
        if self.stopping:
            return web.json_response({"error": "the node is shutting down"}, status=409)
        self.node.engine.ua.draining = False
        log.warning("undrained (admin API): taking new calls")
        return web.json_response({"draining": False})

    async def reload(self, request: web.Request) -> web.StreamResponse:
        from config_cache import ConfigError

        try:
            result = await self.node.reload()
        except ConfigError as exc:
            return web.json_response({"error": str(exc)}, status=422)
        return web.json_response(result)

    async def logs(self, request: web.Request) -> web.StreamResponse:
        try:
            limit = min(MAX_PAGE, max(0, int(request.query.get("limit", "100"))))
        except ValueError:
            return web.json_response({"error": "limit is an integer"}, status=400)
        store = self.node.store
        if store is None:
            return web.json_response({"error": "store not open"}, status=503)
        # read in a thread; the stored JSON goes out as it is, a few records per turn
        items = await asyncio.to_thread(store.outbox.recent_json, limit)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"logs":[')
        for i in range(0, len(items), LOG_SLICE):
            await response.write((b"," if i else b"") + b",".join(items[i : i + LOG_SLICE]))
            await asyncio.sleep(0)
        await response.write(b"]}")
        await response.write_eof()
        return response

    async def call_log(self, request: web.Request) -> web.StreamResponse:
        store = self.node.store
        if store is None:
            return web.json_response({"error": "store not open"}, status=503)
        row = await asyncio.to_thread(store.outbox.find, request.match_info["call_id"])
        if row is None:
            return web.json_response({"error": "no log for this call"}, status=404)
        return web.json_response(_log_doc(row), dumps=_dumps)

    async def follow(self, request: web.Request) -> web.StreamResponse:
        feed = self.feed
        if len(feed.readers) >= MAX_FOLLOWERS:
            return web.json_response({"error": "too many followers"}, status=503)
        queue: asyncio.Queue[bytes] = asyncio.Queue(FOLLOW_QUEUE)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        feed.readers.append(queue)
        try:
            while not self.stopping:
                try:
                    line = await asyncio.wait_for(queue.get(), FOLLOW_CHECK)
                except TimeoutError:
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        break  # the reader left while no call ended: free its place
                    continue
                if not line:
                    break
                await response.write(line)
        except ConnectionResetError:
            pass  # the reader went away
        finally:
            feed.readers.remove(queue)
        return response

    async def trunks(self, request: web.Request) -> web.StreamResponse:
        b2bua = getattr(self.node, "b2bua", None)
        out = []
        if b2bua is not None:
            from pri.health import HealthState

            for name, trunk in b2bua.plan.trunks.items():
                state = b2bua.board.state(name) if b2bua.board is not None else HealthState.UP
                gw = trunk.gateway
                out.append(
                    {
                        "name": name,
                        "carrier": trunk.carrier,
                        "gateway": f"{gw.host}:{gw.port};transport={gw.transport}",
                        "state": state.value,
                        "enabled": trunk.enabled,
                        "channels_in_use": trunk.in_use,
                        "channels": trunk.capacity,
                    }
                )
        return web.json_response({"trunks": out})


WEBPHONE_DIR = Path(__file__).parent / "webphone"
"""index.html and phone.js (in the package), jssip.min.js (built by ``make install``
from the npm package: ``npm run build``)."""


class WebPhoneServer(_Site):
    """The browser phone page (docs/webrtc.md): static files and ``config.json``, which
    names the node's SIP-over-WebSocket address as the browser reaches it (WSS when the
    node has it). Nothing here is secret: the user logs in to the SIP registrar."""

    name = "web phone"
    FILES = {
        "/": ("index.html", "text/html"),
        "/index.html": ("index.html", "text/html"),
        "/phone.js": ("phone.js", "application/javascript"),
        "/jssip.min.js": ("jssip.min.js", "application/javascript"),
    }

    def __init__(
        self,
        node: Node,
        host: str,
        port: int,
        *,
        root: Path = WEBPHONE_DIR,
        bound: Callable[[], list[tuple[str, str, int]]] | None = None,
    ) -> None:
        self.bound = bound or (lambda: node.engine.bound)
        """(transport, host, port) the node listens on (a multi-worker node's front says)."""
        self.node = node
        self.host = host
        self.port = port
        missing = [name for name, _ in self.FILES.values() if not (root / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"web phone files missing in {root}: {', '.join(sorted(set(missing)))} "
                "(jssip.min.js is built by `make install`: npm ci && npm run build)"
            )
        self._bodies = {
            path: ((root / name).read_bytes(), kind) for path, (name, kind) in self.FILES.items()
        }
        app = web.Application()
        app.add_routes([web.get(path, self.static) for path in self.FILES])
        app.add_routes([web.get("/config.json", self.config)])
        self.app = app
        self._runner: web.AppRunner | None = None

    async def static(self, request: web.Request) -> web.Response:
        body, kind = self._bodies[request.path]
        return web.Response(body=body, content_type=kind, headers={"Cache-Control": "no-cache"})

    async def config(self, request: web.Request) -> web.Response:
        host = request.url.host or "127.0.0.1"
        found = {transport: port for transport, _, port in self.bound()}
        server = None
        if "WSS" in found:
            server = f"wss://{host}:{found['WSS']}"
        elif "WS" in found:
            server = f"ws://{host}:{found['WS']}"
        return web.json_response({"server": server})


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


def _log_doc(row: tuple[str, float | None, Any]) -> dict[str, Any]:
    state, shipped_at, rec = row
    doc: dict[str, Any] = {"state": state, "log": rec.to_dict()}
    if shipped_at is not None:
        doc["shipped_at"] = shipped_at
    return doc


class ClusterAdmin(AdminServer):
    """The control API of a multi-worker node, served by its front.

    The front holds the call logs and the configuration (``/logs``, ``/reload`` are
    its own); the calls live in the workers, each of which serves the same API on a
    Unix socket (``worker_sockets``). Call endpoints ask every worker and
    merge; ``/drain`` and ``/undrain`` go to all; ``/trunks`` comes from one worker
    (B-channel counts are node-wide, the table is shared)."""

    def __init__(
        self,
        node: Node,
        host: str,
        port: int,
        *,
        token: str | None = None,
        worker_sockets: Callable[[], list[str]],
        on_reload: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(node, host, port, token=token)
        self.worker_sockets = worker_sockets
        self.on_reload = on_reload
        self._draining = False
        self._followers = 0

    def followers(self) -> int:
        """Connected ``/logs/follow`` readers (the front merges the workers' feeds for
        each: the workers' own feeds count the front's pumps, not the readers)."""
        return self._followers

    async def _ask(
        self, path: str, method: str = "GET", timeout: float = 5.0
    ) -> list[tuple[int, Any]]:
        """(status, JSON body) from every live worker (unreachable ones are left out)."""
        import aiohttp

        async def one(sock: str) -> tuple[int, Any] | None:
            try:
                connector = aiohttp.UnixConnector(path=sock)
                async with aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as session:
                    async with session.request(method, "http://worker" + path) as resp:
                        return resp.status, await resp.json(content_type=None)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                return None

        got = await asyncio.gather(*(one(s) for s in self.worker_sockets()))
        return [g for g in got if g is not None]

    @property
    def draining(self) -> bool:
        return self._draining

    async def reload(self, request: web.Request) -> web.StreamResponse:
        """The front's reload, then its configuration pushed to the workers at once."""
        response = await super().reload(request)
        if self.on_reload is not None:
            self.on_reload()
        return response

    async def ready(self, request: web.Request) -> web.StreamResponse:
        answers = await self._ask("/ready")
        follower = self.node.follower
        body = {
            "ready": False,
            "draining": self._draining,
            "listening": any(body.get("listening") for _, body in answers),
            "offline": bool(follower is not None and follower.offline),
            "calls": sum(int(body.get("calls", 0)) for _, body in answers),
            "workers": len(answers),
        }
        body["ready"] = bool(body["listening"]) and not self._draining and not self.stopping
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def calls(self, request: web.Request) -> web.StreamResponse:
        try:
            offset = max(0, int(request.query.get("offset", "0")))
            limit = min(MAX_PAGE, max(0, int(request.query.get("limit", str(MAX_PAGE)))))
        except ValueError:
            return web.json_response({"error": "offset and limit are integers"}, status=400)
        rtp = request.query.get("rtp", "1")
        merged: list[Any] = []
        total = 0
        for status, body in await self._ask(f"/calls?offset=0&limit={offset + limit}&rtp={rtp}"):
            if status == 200:
                total += int(body.get("total", 0))
                merged.extend(body.get("calls", []))
        page = merged[offset : offset + limit]
        return web.json_response(
            {"total": total, "offset": offset, "limit": limit, "calls": page}, dumps=_dumps
        )

    async def _first(self, path: str, method: str = "GET") -> web.StreamResponse:
        for status, body in await self._ask(path, method):
            if status == 200:
                return web.json_response(body, dumps=_dumps)
        return web.json_response({"error": "no such call"}, status=404)

    async def call(self, request: web.Request) -> web.StreamResponse:
        return await self._first(f"/calls/{request.match_info['id']}")

    async def hangup(self, request: web.Request) -> web.StreamResponse:
        return await self._first(f"/calls/{request.match_info['id']}/hangup", "POST")

    async def drain(self, request: web.Request) -> web.StreamResponse:
        self._draining = True
        answers = await self._ask("/drain", "POST")
        calls = sum(int(body.get("calls", 0)) for _, body in answers)
        log.warning("draining (admin API): %d workers, %d calls in progress", len(answers), calls)
        return web.json_response({"draining": True, "calls": calls})

    async def undrain(self, request: web.Request) -> web.StreamResponse:
        if self.stopping:
            return web.json_response({"error": "the node is shutting down"}, status=409)
        self._draining = False
        await self._ask("/undrain", "POST")
        log.warning("undrained (admin API): taking new calls")
        return web.json_response({"draining": False})

    async def trunks(self, request: web.Request) -> web.StreamResponse:
        for status, body in await self._ask("/trunks"):
            if status == 200:
                return web.json_response(body)
        return web.json_response({"trunks": []})

    async def follow(self, request: web.Request) -> web.StreamResponse:
        """Every worker's ``/logs/follow``, merged line by line."""
        import aiohttp

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        lines: asyncio.Queue[bytes] = asyncio.Queue(FOLLOW_QUEUE)

        async def pump(sock: str) -> None:
            try:
                async with aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=sock),
                    timeout=aiohttp.ClientTimeout(total=None),
                ) as session:
                    async with session.get("http://worker/logs/follow") as resp:
                        async for line in resp.content:
                            if not lines.full():
                                lines.put_nowait(line)
            except (aiohttp.ClientError, OSError):
                return

        pumps = [asyncio.ensure_future(pump(s)) for s in self.worker_sockets()]
        self._followers += 1
        try:
            while not self.stopping:
                try:
                    line = await asyncio.wait_for(lines.get(), FOLLOW_CHECK)
                except TimeoutError:
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        break
                    continue
                await response.write(line)
        except ConnectionResetError:
            pass
        finally:
            self._followers -= 1
            for task in pumps:
                task.cancel()
        return response
