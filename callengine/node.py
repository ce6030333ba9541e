"""A call-server node: the Engine plus the configuration cache, call logs, registrar,
IVR routing and metrics. ``callengine serve`` runs one of these in the foreground.

Start-up order (so that nothing is lost): open the LevelDB store -> close the call logs
a previous process left open as interrupted -> first poll of the master (offline is not
an error) -> demo tenant or refusal on an empty cache -> History DB shipper -> SIP
listeners. Shutdown runs it backwards after draining calls.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from config_cache import (
    CacheMetrics,
    CacheSettings,
    ConfigError,
    HistoryShipper,
    LocalStore,
    MasterFollower,
    MongoHistory,
    MongoMaster,
    open_store,
)
from config_cache.shipper import Backoff
from media.spool import adopt_spools, spool_name
from pri import TrunkPlan, load_trunks

from .b2bua import B2BUA, LegTarget, leg_targets
from .call import Call, CallEnded
from .calllogs import CallLogHook, CallLogWriter
from .config import EngineConfig
from .engine import Engine, Handler
from .limits import networks_matcher
from .recording import RecordingHook
from .sip.authguard import GuardConfig
from .sip.message import Request, Response
from .sip.registrar import Binding as RegBinding
from .transport import WEBSOCKET
from .userauth import AuthCollector, UserAuth

log = logging.getLogger("callengine.node")

__all__ = ["Node", "PersistentBindings"]


class PersistentBindings:
    """The registrar's binding store on the node's LevelDB (survives restarts)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._cache: dict[str, list[RegBinding]] = {}

    def get(self, aor: str) -> list[RegBinding]:
        cached = self._cache.get(aor)
        if cached is None:
            cached = []
            for record in self._store.get_aor(aor):
                try:
                    cached.append(RegBinding.from_dict(record))
                except (KeyError, TypeError, ValueError):
                    log.error("bad stored binding for %s ignored", aor)
            self._cache[aor] = cached
        return list(cached)

    def put(self, aor: str, bindings: list[RegBinding]) -> None:
        self._cache[aor] = list(bindings)
        self._store.put_aor(aor, [b.to_dict() for b in bindings])


class Node:
    """Everything one ``callengine serve`` process runs."""

    def __init__(self, config: EngineConfig, *, auth_secret: bytes | None = None) -> None:
        """``auth_secret`` keys the Digest nonces (random if not given; the workers of a
        multi-worker node share the front's, so that each verifies the others' nonces)."""
        self.config = config
        data = dict(config.config_cache)
        data.update(
            data_dir=str(Path(config.data_dir) / "leveldb"),
            on_empty=config.on_empty,
            master_url=config.master_url,
            history_url=config.history_url,
        )
        self.settings = CacheSettings.from_mapping(data, source=config.source)
        self.engine = Engine(config)
        self.store: LocalStore | None = None
        self.follower: MasterFollower | None = None
        self.shipper: HistoryShipper | None = None
        self.writer: CallLogWriter | None = None
        self.registry = CollectorRegistry()
        self.cache_metrics = CacheMetrics(registry=self.registry)
        # issue 11: registrars per tenant, INVITE challenges, the brute-force guard
        self.auth = UserAuth(
            tenants=lambda: self._local().config.snapshot.tenants,
            lookup=lambda number: self._local().config.lookup(number),
            plan=lambda: getattr(getattr(self, "b2bua", None), "plan", None),
            make_store=self._binding_store,
            max_contacts=config.max_contacts,
            guard=GuardConfig(**config.auth_guard),
            secret=auth_secret or secrets.token_bytes(32),
            algorithms=tuple(config.digest_algorithms),
        )
        self.auth_collector = AuthCollector(self.auth)
        self.registry.register(self.auth_collector)
        self._flows: dict[tuple[str, tuple[str, int]], set[tuple[str, str]]] = {}
        """Live WebSocket flows -> the (realm, AOR)s registered over them."""
        self.python_actions: dict[str, Callable[..., Awaitable[str | None]]] = {}
        self.recovered: list[str] = []
        self.link: Any = None
        """Set by a worker of a multi-worker node (:class:`callengine.cluster.WorkerLink`)
        before :meth:`start`: the front's replicas replace the LevelDB store."""

    def _binding_store(self) -> Any:
        """The registrars' binding store: LevelDB, or a worker's replica of the front's."""
        if self.link is not None:
            return self.link.bindings
        return PersistentBindings(self._local().bindings)

    def _local(self) -> LocalStore:
        assert self.store is not None, "the node is not started"
        return self.store

    # ----------------------------------------------------------------- start
    async def open_state(self, *, spools: list[str] | None = None) -> None:
        """Open what the node keeps: the LevelDB store (closing call logs a previous
        process left open), the master follower, ``tenant_files``, the History DB
        shipper and the call-log writer. :meth:`start` runs it first; the front of a
        multi-worker node runs only this (its workers hold the calls).

        ``spools``: the media spool directories this node's processes will open (one
        process: ``spool``); recordings waiting in any other (left by a run with more
        workers) move into the first, once the store's lock says no other node runs on
        this data directory."""
        cfg = self.config
        settings = self.settings
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
        self.store = open_store(
            settings.data_dir,
            default_tenant=settings.default_tenant,
            metrics=self.cache_metrics,
            shipped_keep=settings.shipped_keep,
        )
        adopt_spools(cfg.data_dir, spools or [spool_name(None)])
        self.recovered = self.store.outbox.recover_interrupted(time.time())
        if self.recovered:
            log.warning(
                "closed %d call logs left open by the previous run as interrupted",
                len(self.recovered),
            )
        if settings.master_url:
            self.follower = MasterFollower(
                self.store.config,
                MongoMaster(
                    settings.master_url,
                    database=settings.master_database,
                    timeout=settings.timeout,
                    read_preference=settings.read_preference,
                ),
                poll_interval=settings.poll_interval,
                use_change_stream=settings.use_change_stream,
                prune_missing=settings.prune_missing,
                metrics=self.cache_metrics,
            )
            await self.follower.start()
        self.import_tenant_files()
        self.store.config.ensure_not_empty(settings.on_empty)  # type: ignore[arg-type]
        if settings.history_url:
            self.shipper = HistoryShipper(
                self.store.outbox,
                MongoHistory(
                    settings.history_url,
                    database=settings.history_database,
                    timeout=settings.timeout,
                    write_concern=settings.write_concern,
                    tenant_regions=dict(settings.tenant_regions),
                    default_region=settings.region,
                ),
                batch_size=settings.batch_size,
                interval=settings.ship_interval,
                backoff=Backoff(maximum=settings.backoff_max),
                metrics=self.cache_metrics,
            )
            await self.shipper.start()
        self.writer = CallLogWriter(self.store.outbox, on_written=self._on_logs_written)
        self.writer.start()

    async def start(self) -> None:
        cfg = self.config
        if self.link is None:
            await self.open_state()
        else:
            # a worker of a multi-worker node: the front owns LevelDB, the master
            # follower and the History DB shipper (callengine.cluster)
            self.store = self.link.store
            self.writer = self.link.writer
        assert self.store is not None and self.writer is not None
        engine = self.engine
        engine.hooks.append(CallLogHook(self.writer, node_id=cfg.node_id))
        # after the call-log hook: a recording that fails to start is in the call log
        engine.hooks.append(RecordingHook(self.tenant))
        engine.router = self.route
        if not engine.has_default:
            engine.on_call()(_not_here)
        engine.register_handler = self.on_register
        engine.flow_closed_hooks.append(self._flow_closed)
        # issue #6: trunks, failover, transfers (B2BUA); before the listeners open
        plan = self.trunk_plan()
        if self.link is not None:
            self.link.share_channels(plan)  # B-channels count on the whole node
        # the carriers' gateways are never rate-limited per source
        engine.exempt_networks += _trunk_networks(plan)
        # one trunk health board per node: a worker reads the front's
        board = self.link.health_board(plan) if self.link is not None else None
        self.b2bua = B2BUA(engine, plan, directory=self, registry=self.registry, board=board)
        self.b2bua.attach()
        engine.locate_user = self._locate_user
        await engine.start()
        local = self._local()
        engine.media_manager.follow_tenants(lambda: local.config.snapshot.tenants)
        if not cfg.user_agent_to_trunks and plan.trunks:
            engine.ua.hide_agent = networks_matcher(_trunk_networks(plan))

    def trunk_plan(self) -> TrunkPlan:
        """The node's trunks, groups, outbound routes and dial policy (from its config)."""
        cfg = self.config
        return load_trunks(
            {
                "trunks": cfg.trunks,
                "trunk_groups": cfg.trunk_groups,
                "outbound_routes": cfg.outbound_routes,
                "trusted_sources": cfg.trusted_sources,
                "dial_policy": cfg.dial_policy,
            },
            source=cfg.source,
        )

    # ----------------------------------------------------------------- reload
    def tenant_file_paths(self) -> list[Path]:
        """``tenant_files``, relative ones taken from the config file's folder."""
        cfg = self.config
        base = Path(cfg.source).parent if cfg.source != "<defaults>" else Path.cwd()
        return [p if p.is_absolute() else base / p for p in map(Path, cfg.tenant_files)]

    def import_tenant_files(self) -> list[str]:
        """Store the tenants of ``tenant_files`` that differ from the cached ones, each as
        the next rev (so a newer master rev still wins later). All files are read and
        validated first: one bad file raises :class:`ConfigError` and changes nothing.
        Blocking (file reads, fsynced LevelDB writes): run it off the event loop."""
        from config_cache import load_tenant_file
        from config_cache.schema import validate_tenant

        assert self.store is not None
        cache = self.store.config
        loaded = [
            (str(path), t) for path in self.tenant_file_paths() for t in load_tenant_file(path)
        ]
        changed = []
        for source, tenant in loaded:
            current = None if cache.serving_demo else cache.tenant(tenant.id)
            if current is not None:
                mine, theirs = tenant.to_doc(), current.to_doc()
                mine.pop("rev", None)
                theirs.pop("rev", None)
                if mine == theirs:
                    continue
                if tenant.rev <= current.rev:
                    doc = tenant.to_doc()
                    doc["rev"] = current.rev + 1
                    tenant = validate_tenant(doc, file=source)
            cache.apply(tenant, source=source, force=True)
            changed.append(tenant.id)
        return changed

    async def reload(self) -> dict[str, Any]:
        """``callengine ctl reload``: re-import ``tenant_files`` (in a thread) and poll the
        master now when there is one. New calls take the new configuration; calls in
        progress keep the snapshot they started with. Raises :class:`ConfigError` for a
        bad tenant file (nothing of the files is applied; the master poll still runs)."""
        error: ConfigError | None = None
        changed: list[str] = []
        try:
            changed = await asyncio.to_thread(self.import_tenant_files)
        except ConfigError as exc:
            error = exc
        master: list[str] | None = None
        if self.follower is not None:
            master = await self.follower.poll_once()
        if error is not None:
            raise error
        log.info("reload: tenants changed from files %s, from the master %s", changed, master)
        return {
            "tenant_files": [str(p) for p in self.tenant_file_paths()],
            "changed": changed,
            "master": master,
            "offline": bool(self.follower is not None and self.follower.offline),
        }

    def _on_logs_written(self) -> None:
        if self.shipper is not None:
            self.shipper.notify()

    async def stop(self, grace: float | None = None) -> None:
        await self.engine.stop(grace)
        hook_pending = [h for h in self.engine.hooks if isinstance(h, CallLogHook)]
        for hook in hook_pending:
            if hook.pending:
                await asyncio.wait(list(hook.pending), timeout=10)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.stop)
        if self.shipper is not None:
            await self.shipper.stop()
        if self.follower is not None:
            await self.follower.stop()
        if self.store is not None:
            self.store.close()

    # ----------------------------------------------------------------- routing
    def route(self, call: Call) -> Handler | None:
        """Number -> tenant -> route (IVR flow, user, group, voicemail).

        Trunks first (issue #6): calls from a trunk gateway for one of its DIDs seize
        a B-channel around the tenant route; numbers that leave through a trunk go to
        the B2BUA (403 from untrusted sources)."""
        assert self.store is not None
        b2bua = getattr(self, "b2bua", None)
        if not call.variables.get("_auth_checked"):
            call.variables["_auth_checked"] = "1"
            refused = self.auth.check_invite(call)  # 407 when the route needs Digest
            if refused is not None:
                return refused
        if b2bua is not None and not call.variables.get("_trunk_routed"):
            call.variables["_trunk_routed"] = "1"
            trunk_handler = b2bua.route(call, self.route)
            if trunk_handler is not None:
                return trunk_handler
        match = self.store.config.lookup(call.callee)
        if match is None:
            return None
        tenant = match.tenant
        call.tenant = tenant.id
        policy = getattr(tenant, "recording", None)
        if policy is not None:
            call.recording_defaults = (policy.channels, policy.max_seconds)
        call.did = match.did
        handler = self._tenant_route(tenant, match.route)
        return None if handler is None else self._capped(tenant, handler)

    def _capped(self, tenant: Any, handler: Handler) -> Handler:
        """``handler`` inside the tenant's caps on concurrent calls and calls per second
        (tenant ``limits``, else the node's ``tenant_max_calls``/``tenant_max_cps``)."""
        cfg = self.config
        limits = getattr(tenant, "limits", None) or {}
        max_calls = int(limits.get("max_calls", cfg.tenant_max_calls))
        max_cps = float(limits.get("max_cps", cfg.tenant_max_cps))
        if not max_calls and not max_cps:
            return handler
        engine = self.engine
        key = "tenant:" + tenant.id

        async def capped(call: Call) -> None:
            now = engine.now()
            refused = engine.caps.admit(key, now, max_calls=max_calls, cps=max_cps)
            if refused is not None:
                quiet = engine.log_throttle.ready("tenant_caps", now)
                if quiet is not None:
                    log.warning(
                        "503 for a call to tenant %s: %s cap reached (%d more not logged)",
                        tenant.id,
                        "concurrent-call" if refused == "calls" else "calls-per-second",
                        quiet,
                    )
                call.send_reject(503, "Tenant Call Limit Reached")
                return
            try:
                await handler(call)
            finally:
                engine.caps.release(key)

        return capped

    def _tenant_route(self, tenant: Any, route: Any) -> Handler | None:
        if route.kind == "ivr":
            flow = tenant.compiled_flows.get(route.target)
            if flow is None:
                return None
            return self._ivr_handler(flow)
        if route.kind in ("user", "group"):
            targets = [f"{route.kind}:{route.target}"]

            async def ring(call: Call) -> None:
                result = await call.transfer(targets, timeout=30.0)
                if not result.answered and call.active and not call.answered:
                    await call.reject(result.status or 480)

            return ring
        if route.kind == "voicemail":
            box = route.target

            async def voicemail(call: Call) -> None:
                await call.answer()
                await call.play(["voicemail_greeting"], barge_in=False)
                await call.record(
                    f"voicemail/{box}/{call.call_id}.wav", max_seconds=120, silence_timeout=5
                )

            return voicemail
        return None

    def _ivr_handler(self, flow: Any) -> Handler:
        from ivr import run_flow

        actions = self.python_actions

        async def run(call: Call) -> None:
            await call.answer()
            runner = asyncio.ensure_future(run_flow(call, flow, actions=actions))
            ended = call.ended
            done, _ = await asyncio.wait({runner, ended}, return_when=asyncio.FIRST_COMPLETED)
            if runner not in done:
                # The caller hung up. Media operations now end by themselves (a
                # recording closes with reason "hangup", prompts raise CallEnded), so
                # the flow gets a moment to log its last step before it is cancelled.
                done, _ = await asyncio.wait({runner}, timeout=2.0)
            if runner not in done:
                runner.cancel()
                try:
                    await runner
                except (asyncio.CancelledError, Exception):
                    pass
            else:
                exc = runner.exception()
                if exc is not None and not isinstance(exc, CallEnded):
                    log.error("IVR flow failed: %r", exc)

        return run

    # --------------------------------------------------------------- registrar
    def on_register(self, request: Request, now: float) -> Response | None:
        assert self.store is not None
        response = self.auth.on_register(request, now)
        to = request.to
        if (
            response.status == 200
            and request.transport in WEBSOCKET
            and request.source is not None
            and to is not None
        ):
            tenant = self.auth.tenant_for_domain(to.uri.host)
            if tenant is not None:
                # RFC 7118 §5.2: these bindings live and die with this connection
                aor = f"{to.uri.user_unescaped or ''}@{to.uri.host}"
                flow = (request.transport, request.source)
                self._flows.setdefault(flow, set()).add((tenant.realm, aor))
                if self.link is not None:  # the node's other workers may ring it too
                    self.link.flow_registered(flow, tenant.realm, aor)
        return response

    def add_flow(self, flow: tuple[str, tuple[str, int]], realm: str, aor: str) -> None:
        """A WebSocket flow another worker of the node registered ``aor`` over."""
        self._flows.setdefault(flow, set()).add((realm, aor))

    def _flow_closed(self, peer: tuple[str, int], transport: str) -> None:
        for realm, aor in self._flows.pop((transport, peer), ()):
            registrar = self.auth.registrars.get(realm)
            if registrar is not None and registrar.drop_flow(aor, peer, transport):
                log.info(
                    "%s connection from %s closed: bindings of %s removed", transport, peer, aor
                )

    def owns_number(self, number: str) -> bool:
        """A tenant owns ``number`` (the default route does not count)."""
        assert self.store is not None
        match = self.store.config.lookup(number)
        return match is not None and not match.default

    def tenant(self, tenant_id: str) -> Any:
        assert self.store is not None
        return self.store.config.tenant(tenant_id)

    def contacts_of(self, tenant: str, user: str) -> list[RegBinding]:
        """Registered phones of a user (for ringing)."""
        assert self.store is not None
        t = self.store.config.tenant(tenant)
        if t is None:
            return []
        registrar = self.auth.registrars.get(t.realm)
        if registrar is None:
            store = self._binding_store()
            found = [b for b in store.get(f"{user}@{t.realm}") if b.expires_at > time.time()]
        else:
            found = registrar.bindings_for(f"{user}@{t.realm}", time.time())
        key = (t.realm, f"{user}@{t.realm}")
        return [b for b in found if b.transport not in WEBSOCKET or self._flow_alive(b, key)]

    def _locate_user(self, tenant: str, user: str) -> list[LegTarget]:
        """``Engine.originate("user:NAME", tenant=)``: the user's phones, as ringing
        them from a transfer finds them."""
        return leg_targets(self.contacts_of(tenant, user), label=f"user:{user}")

    def _flow_alive(self, binding: RegBinding, key: tuple[str, str]) -> bool:
        """A WebSocket binding is reachable only over the connection it was registered
        on (RFC 7118 §5.2): that connection must be open, and this AOR (``key``: realm,
        AOR) must have been registered over it by this process. One from before a
        restart, or whose close was not seen yet, is skipped, even if a new connection
        now comes from its address."""
        transports = self.engine.transports
        source = binding.source
        if transports is None or source is None:
            return False
        flow = (binding.transport, source)
        return key in self._flows.get(flow, ()) and transports.is_open(*flow)


async def _not_here(call: Call) -> None:
    """A number no tenant owns (and no default route takes): 404 (RFC 3261 §21.4.5)."""
    await call.reject(404)


def _trunk_networks(plan: TrunkPlan) -> list[str]:
    """The trunks' source networks and gateway addresses (CIDR strings)."""
    nets = [str(n) for t in plan.trunks.values() for n in t.sources]
    for trunk in plan.trunks.values():
        try:
            nets.append(str(ipaddress.ip_network(trunk.gateway.host.strip("[]"))))
        except ValueError:
            pass  # a host name: its address is in ``sources`` when it matters
    return nets
