"""Engine (node) configuration: one dataclass, loaded from YAML, JSON or TOML.

Every field has a default that works on one machine with nothing else running
(DESIGN.md principle 6). A mistake raises :class:`~config_cache.ConfigError` at load
time naming the file and the field.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from config_cache import ConfigError, validation

__all__ = [
    "EngineConfig",
    "StorageSettings",
    "load_config",
    "cpu_cores",
    "serve_media_process",
    "storage_settings",
]


@dataclass(slots=True)
class EngineConfig:
    """Settings of one call-server node."""

    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:5060"])
    """``HOST:PORT`` addresses; each opens UDP and TCP (and TLS on ``tls_port`` when a
    certificate is set)."""
    transports: list[str] = field(default_factory=lambda: ["UDP", "TCP"])
    """Plain transports each ``listen`` address opens: ``UDP`` and/or ``TCP``. TLS is
    not listed here: it listens on ``tls_port`` when ``tls_cert``/``tls_key`` are set."""
    tls_cert: str | None = None
    """PEM certificate chain; with ``tls_key`` enables TLS listeners."""
    tls_key: str | None = None
    """PEM private key of ``tls_cert``."""
    tls_port: int = 5061
    """Port of the TLS listener on every ``listen`` host."""
    ws_port: int | None = None
    """SIP over WebSocket (RFC 7118): a plain ``ws://`` listener on this port of every
    ``listen`` host (0: any free port); null: none. See docs/websocket.md."""
    wss_port: int | None = None
    """SIP over secure WebSocket (``wss://``) on this port, with ``tls_cert``/``tls_key``."""
    data_dir: str = "./data"
    """Node state: LevelDB configuration cache, call-log outbox, media storage."""
    metrics: str | None = "127.0.0.1:9090"
    """Prometheus endpoint ``HOST:PORT`` (path /metrics); null disables it."""
    admin: str | None = "127.0.0.1:9091"
    """Control API ``HOST:PORT`` (docs/admin.md); null disables it. An address other
    machines can reach (not loopback) requires ``admin_token``."""
    webphone: str | None = None
    """The browser phone page (JsSIP over ``ws_port``/``wss_port``, WebRTC media) on this
    ``HOST:PORT``; null (the default): none. See docs/webrtc.md."""
    admin_token: str | None = None
    """Bearer token of the control API (the environment variable
    ``CALLENGINE_ADMIN_TOKEN`` sets it too and keeps it out of the file)."""
    tenant_files: list[str] = field(default_factory=list)
    """Tenant files (JSON or YAML) imported into the cache at start and again on each
    reload (``callengine ctl reload``): a changed file becomes the tenant's next rev."""
    max_calls: int = 10000
    """Concurrent calls; excess INVITEs get 503 with Retry-After."""
    max_cps: float = 0.0
    """New calls per second (token bucket); 0 means unlimited."""
    retry_after: int = 5
    """Seconds in the ``Retry-After`` header of a 503 refusing a call (overload, drain)."""
    max_message_size: int = 16384
    """Bytes; a larger SIP request gets 513 Message Too Large and keeps nothing."""
    source_rate: float = 200.0
    """SIP messages per second one source address may send (a token bucket of
    ``source_burst``); beyond it messages are dropped unread, and a source that keeps
    flooding is banned for ``source_ban`` seconds (0: no bans). 0 disables the limit.
    ``source_exempt``, ``trusted_sources`` and trunk gateways are never limited."""
    source_burst: float = 400.0
    """Burst of the per-source token bucket (messages a source may send at once)."""
    source_ban: float = 60.0
    """Seconds a source that keeps flooding is banned (0: no bans)."""
    tcp_max_connections: int = 4096
    """TCP/TLS connections peers may hold open at once (beyond: refused)."""
    tcp_max_per_source: int = 256
    """TCP/TLS connections one address may hold open (``source_exempt``: no cap)."""
    tcp_idle_timeout: float = 600.0
    """Seconds a TCP/TLS connection may stay silent (CR LF keep-alives count) before it
    is closed."""
    tcp_first_message_timeout: float = 30.0
    """Seconds a new TCP/TLS connection has to send its first complete SIP message."""
    max_fork: int = 16
    """Most call legs one transfer / ring group / user rings at once (the first ones in
    order; the rest are not rung)."""
    source_max_calls: int = 100
    """Concurrent calls from one source address (503 beyond; exempt sources: no cap;
    0: no cap)."""
    source_max_cps: float = 10.0
    """New calls per second from one source address (0: no cap)."""
    tenant_max_calls: int = 0
    """Default concurrent-call cap per tenant (a tenant's ``limits.max_calls`` wins; 0:
    no cap)."""
    tenant_max_cps: float = 0.0
    """Default new-calls-per-second cap per tenant (``limits.max_cps`` wins; 0: none)."""
    source_exempt: list[str] = field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    """Networks never rate-limited: the node's SIP balancers (a Kamailio in front sends
    everything from one address)."""
    overload_lag: float = 0.25
    """Seconds of event-loop lag above which new INVITEs get 503 (0 disables)."""
    gc: str = "realtime"
    """Garbage collection: ``realtime`` freezes start-up objects, switches automatic
    collection off and collects only the young generation (bounded pauses) and the
    whole heap when idle; ``python`` keeps the interpreter's defaults (see
    ``callengine/realtime.py``)."""
    stall_report_ms: float = 0.0
    """Log the stack the event loop is running when it stalls this long (a
    diagnostic thread; 0 disables)."""
    drain_grace: float = 30.0
    """Seconds active calls may continue after SIGTERM before the node exits."""
    workers: int = 0
    """Worker processes of ``callengine serve`` (docs/workers.md): 0 (the default) is
    one per CPU core the node may use (:func:`cpu_cores`: its CPU affinity and cgroup
    quota); N >= 2 runs a front that owns the SIP addresses and the LevelDB state and N
    workers that hold the calls; 1 (or 0 on a single core) runs everything in one
    process. An :class:`~callengine.Engine` embedded in a program is one process
    whatever this says."""
    rtp_port_min: int = 10000
    """Lowest UDP port for RTP (RTP takes even ports, RTCP the next one)."""
    rtp_port_max: int = 20000
    """Highest UDP port for RTP/RTCP."""
    rtp_timeout: float = 60.0
    """Seconds without RTP before an answered call is hung up (0 disables)."""
    rtp_relatch_after: float = 5.0
    """Seconds the latched RTP source must be silent before another address may take
    the call's media over (after 5 in-sequence packets); see ``media/stream.py``."""
    rtp_port_pool: int = 0
    """RTP port pairs kept bound and ready per media address, so that answering a call
    creates no socket (``media/portpool.py``); 0 (the default, see docs/config.md for
    why): bind each call's pair when it is answered."""
    rtp_port_quarantine: float = 1.0
    """Seconds a pair released by a call rests in the pool before another call may take
    it (the previous peer's packets in flight must not reach the new call)."""
    media_process: bool | None = None
    """Media in a process of its own (the media plane, ``callengine/mediaplane.py``):
    RTP sessions and browsers' WebRTC legs; the media clock and signalling each get a
    loop and a core. Unset (the default): ``callengine serve`` runs the plane when the
    node has media; an Engine embedded in a program keeps its media in its process
    (:func:`serve_media_process`)."""
    media_priority: int = 0
    """With ``media_process``: 1 to 99 runs the media plane's event loop under the
    kernel's real-time scheduler (``SCHED_FIFO`` at that priority, as Asterisk's ``-p``
    and FreeSWITCH's ``-rp`` do), so that no other process on its core delays a media
    tick; needs CAP_SYS_NICE (root), otherwise one warning and normal scheduling. 0 (the
    default): normal scheduling."""
    media_clock_slots: int = 1
    """Phases the 20 ms media clock period is split into: each clock callback sends the
    packets of one slot's streams only (``media/clock.py``). 1 (the default, see
    docs/config.md for why): one callback sends every stream's packet."""
    srtp: str = "tls"
    """SRTP with SDES keys (RFC 4568): ``tls`` offers it on outgoing TLS legs and accepts
    it on incoming TLS legs only (the keys travel in the SDP: in the clear over UDP or
    TCP); ``any`` also accepts it over UDP and TCP; ``off`` never. An ``RTP/SAVP``
    stream that may not be secured is refused (488 when nothing else is usable)."""
    codecs: list[str] = field(default_factory=lambda: ["PCMU", "PCMA", "telephone-event"])
    """Codecs offered and accepted, in order of preference (names of ``media.codecs``:
    PCMU, PCMA, G722, OPUS, telephone-event); at least one audio codec."""
    media: bool = True
    """Open an RTP session for each answered call (false: signalling only)."""
    user_agent: str = "callengine"
    """``Server`` / ``User-Agent`` header value (no version by default: it tells a
    scanner which exploits to try); empty: no such header."""
    user_agent_to_trunks: bool = False
    """Send that header to trunk gateways too (carriers rarely need it)."""
    log_format: str = "plain"
    """``plain`` or ``json`` lines."""
    log_level: str = "INFO"
    """``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL``."""
    history_url: str | None = None
    """MongoDB URL of the History DB call logs are shipped to; null: they stay in the
    local outbox (``callengine logs``)."""
    master_url: str | None = None
    """MongoDB URL of the master Configuration DB the node follows; null: tenants come
    from ``tenant_files`` and ``callengine config import`` only."""
    on_empty: str = "demo"
    """With an empty cache and no master: ``demo`` serves the embedded demo tenant,
    ``refuse`` exits with an error."""
    node_id: str = field(default_factory=lambda: os.uname().nodename)
    """This node's name in call logs and metrics (default: the host name)."""
    trunks: dict[str, Any] = field(default_factory=dict)
    """PRI trunks behind SIP media gateways, by name (``pri.load_trunks``;
    examples/two-carriers.yaml)."""
    trunk_groups: dict[str, Any] = field(default_factory=dict)
    """Trunk groups (hunting strategy and failover across ``trunks``), by name."""
    outbound_routes: list[Any] = field(default_factory=list)
    """Node-wide outbound routes: number prefix -> trunk group (longest prefix wins)."""
    trusted_sources: list[Any] = field(default_factory=list)
    """Networks that may place calls out through ``outbound_routes`` without being a
    tenant's user (toll-fraud guard, docs/security.md)."""
    dial_policy: dict[str, Any] = field(default_factory=dict)
    """What may be dialled out through trunks: international and premium numbers are
    refused unless allowed (``pri/dialplan.py``, docs/security.md)."""
    max_contacts: int = 10
    """Registered contacts per address-of-record (0: no limit). A REGISTER that would
    leave more gets 403 "Forbidden - too many registered contacts" and changes nothing:
    every binding is one more INVITE leg when the user is called."""
    digest_algorithms: list[str] = field(default_factory=lambda: ["SHA-256", "MD5"])
    """Digest challenges offered to users, in order of preference (RFC 8760 §2.4: SHA-256
    first); some old tools and phones read only the first one."""
    auth_guard: dict[str, Any] = field(default_factory=dict)
    """Brute-force limits of Digest authentication (REGISTER and challenged INVITEs),
    the fields of :class:`callengine.sip.authguard.GuardConfig`: ``window`` (60 s),
    ``source_limit`` (10 failures from one address ban it), ``ban_time`` (60 s, doubled
    per repeated ban), ``max_ban`` (3600 s), ``user_limit`` (5 failures for one user
    start its back-off), ``backoff`` (2 s, doubled per failure), ``max_backoff`` (60 s),
    ``good_sources`` (4), ``max_tracked`` (10,000). Every failure is logged on
    ``callengine.security`` for fail2ban (``deploy/fail2ban/``)."""
    config_cache: dict[str, Any] = field(default_factory=dict)
    """Settings of the configuration cache and History DB shipper (docs/config.md). Its
    ``data_dir``, ``on_empty``, ``master_url`` and ``history_url`` are the node's
    top-level settings of those names, not keys of this section."""
    media_storage: dict[str, Any] = field(default_factory=dict)
    """Where recordings and voicemail go: ``kind: local`` (the default: files under
    ``data_dir/media``) or ``kind: azure`` (Azure Blob through the offline spool);
    see docs/storage.md and :class:`StorageSettings`."""
    source: str = "<defaults>"
    """The file this configuration came from (for error messages)."""


_TYPES: dict[str, tuple[type, ...]] = {
    "listen": (list,),
    "transports": (list,),
    "tls_cert": (str, type(None)),
    "tls_key": (str, type(None)),
    "tls_port": (int,),
    "data_dir": (str,),
    "metrics": (str, type(None)),
    "admin": (str, type(None)),
    "admin_token": (str, type(None)),
    "webphone": (str, type(None)),
    "tenant_files": (list,),
    "max_calls": (int,),
    "max_cps": (int, float),
    "retry_after": (int,),
    "max_message_size": (int,),
    "ws_port": (int, type(None)),
    "wss_port": (int, type(None)),
    "source_rate": (int, float),
    "source_burst": (int, float),
    "source_ban": (int, float),
    "source_exempt": (list,),
    "tcp_max_connections": (int,),
    "tcp_max_per_source": (int,),
    "tcp_idle_timeout": (int, float),
    "tcp_first_message_timeout": (int, float),
    "max_fork": (int,),
    "source_max_calls": (int,),
    "source_max_cps": (int, float),
    "tenant_max_calls": (int,),
    "tenant_max_cps": (int, float),
    "overload_lag": (int, float),
    "gc": (str,),
    "stall_report_ms": (int, float),
    "drain_grace": (int, float),
    "rtp_port_min": (int,),
    "rtp_port_max": (int,),
    "rtp_timeout": (int, float),
    "rtp_relatch_after": (int, float),
    "rtp_port_pool": (int,),
    "rtp_port_quarantine": (int, float),
    "media_clock_slots": (int,),
    "media_process": (bool, type(None)),
    "media_priority": (int,),
    "srtp": (str,),
    "codecs": (list,),
    "media": (bool,),
    "user_agent": (str,),
    "user_agent_to_trunks": (bool,),
    "log_format": (str,),
    "log_level": (str,),
    "history_url": (str, type(None)),
    "master_url": (str, type(None)),
    "on_empty": (str,),
    "node_id": (str,),
    "trunks": (dict,),
    "trunk_groups": (dict,),
    "outbound_routes": (list,),
    "trusted_sources": (list,),
    "dial_policy": (dict,),
    "max_contacts": (int,),
    "auth_guard": (dict,),
    "digest_algorithms": (list,),
    "config_cache": (dict,),
    "media_storage": (dict,),
}


def _read(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return json.loads(validation.read_text(path))
    if suffix == ".toml":
        return tomllib.loads(validation.read_text(path))
    return validation.load_yaml(path)


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> EngineConfig:
    """Load a node configuration file (YAML, JSON or TOML); unknown keys are errors.

    Keys the engine does not own (``tenants``) are ignored here and read by the
    configuration cache.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(path)
        try:
            raw = _read(p)
        except validation.DocumentError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise ConfigError("no such file", file=source) from None
            raise ConfigError(str(exc), file=source) from None
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot parse: {exc}".splitlines()[0], file=source) from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError("top level must be a mapping", file=source)
        data = dict(raw)
    data.pop("tenants", None)
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(EngineConfig)} - {"source"}
    for key, value in data.items():
        if key not in known:
            raise ConfigError("unknown setting", file=source, field=key)
        types = _TYPES.get(key)
        if (
            types
            and not isinstance(value, types)
            or (isinstance(value, bool) and bool not in (types or ()))
        ):
            want = " or ".join(t.__name__ for t in types or ())
            raise ConfigError(
                f"expected {want}, got {type(value).__name__}", file=source, field=key
            )
    cfg = EngineConfig(**data, source=source)
    _check(cfg)
    return cfg


def _check(cfg: EngineConfig) -> None:
    from .transport import parse_listen

    for i, item in enumerate(cfg.listen):
        try:
            parse_listen(str(item))
        except ValueError as exc:
            raise ConfigError(str(exc), file=cfg.source, field=f"listen[{i}]") from None
    for i, t in enumerate(cfg.transports):
        if t == "TLS":
            raise ConfigError(
                "TLS listens on tls_port when tls_cert and tls_key are set; list UDP and TCP here",
                file=cfg.source,
                field=f"transports[{i}]",
            )
        if t not in ("UDP", "TCP"):
            raise ConfigError(f"unknown transport {t!r}", file=cfg.source, field=f"transports[{i}]")
    if not cfg.transports and not cfg.tls_cert:
        raise ConfigError("no transport to listen on", file=cfg.source, field="transports")
    if not 0 < cfg.tls_port <= 65535:
        raise ConfigError("must be a port (1-65535)", file=cfg.source, field="tls_port")
    if not 0 <= cfg.workers <= 254:
        raise ConfigError("must be 0 (one per core) to 254", file=cfg.source, field="workers")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("tls_cert and tls_key go together", file=cfg.source, field="tls_key")
    for name in ("ws_port", "wss_port"):
        port = getattr(cfg, name)
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError("must be a port (0-65535) or null", file=cfg.source, field=name)
    if cfg.wss_port is not None and not cfg.tls_cert:
        raise ConfigError("wss_port needs tls_cert and tls_key", file=cfg.source, field="wss_port")
    if not 1024 <= cfg.rtp_port_min < cfg.rtp_port_max <= 65535:
        raise ConfigError(
            "need 1024 <= rtp_port_min < rtp_port_max <= 65535",
            file=cfg.source,
            field="rtp_port_min",
        )
    if cfg.srtp not in ("tls", "any", "off"):
        raise ConfigError("must be tls, any or off", file=cfg.source, field="srtp")
    if cfg.rtp_relatch_after < 0:
        raise ConfigError("must be 0 or more", file=cfg.source, field="rtp_relatch_after")
    if str(cfg.log_level).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            "must be DEBUG, INFO, WARNING, ERROR or CRITICAL", file=cfg.source, field="log_level"
        )
    _check_codecs(cfg)
    if not 0 <= cfg.rtp_port_pool <= 10000:
        raise ConfigError("must be 0 to 10000", file=cfg.source, field="rtp_port_pool")
    if not 0 <= cfg.rtp_port_quarantine <= 60:
        raise ConfigError("must be 0 to 60 seconds", file=cfg.source, field="rtp_port_quarantine")
    if not 1 <= cfg.media_clock_slots <= 20:
        raise ConfigError("must be 1 to 20", file=cfg.source, field="media_clock_slots")
    if not 0 <= cfg.media_priority <= 99:
        raise ConfigError("must be 0 to 99", file=cfg.source, field="media_priority")
    if cfg.media_priority and cfg.media_process is False:
        raise ConfigError(
            "is the media plane's priority: media_process is off",
            file=cfg.source,
            field="media_priority",
        )
    if cfg.log_format not in ("plain", "json"):
        raise ConfigError("must be plain or json", file=cfg.source, field="log_format")
    if cfg.gc not in ("realtime", "python"):
        raise ConfigError("must be realtime or python", file=cfg.source, field="gc")
    if cfg.on_empty not in ("demo", "refuse"):
        raise ConfigError("must be demo or refuse", file=cfg.source, field="on_empty")
    if not 1024 <= cfg.max_message_size <= 65535:
        raise ConfigError(
            "must be between 1024 and 65535", file=cfg.source, field="max_message_size"
        )
    for name in ("source_exempt", "trusted_sources"):
        for i, net in enumerate(getattr(cfg, name)):
            try:
                ipaddress.ip_network(str(net), strict=False)
            except ValueError:
                raise ConfigError(
                    f"not an address or network: {net!r}", file=cfg.source, field=f"{name}[{i}]"
                ) from None
    for name in (
        "source_rate",
        "source_burst",
        "source_ban",
        "source_max_calls",
        "source_max_cps",
        "tenant_max_calls",
        "tenant_max_cps",
        "max_cps",
        "retry_after",
        "rtp_timeout",
        "overload_lag",
        "stall_report_ms",
        "drain_grace",
    ):
        if getattr(cfg, name) < 0:
            raise ConfigError("must not be negative", file=cfg.source, field=name)
    for name in (
        "tcp_max_connections",
        "tcp_max_per_source",
        "tcp_idle_timeout",
        "tcp_first_message_timeout",
    ):
        if not getattr(cfg, name) > 0:
            raise ConfigError("must be greater than 0", file=cfg.source, field=name)
    if cfg.max_fork < 1:
        raise ConfigError("must be at least 1", file=cfg.source, field="max_fork")
    if cfg.max_contacts < 0:
        raise ConfigError("must not be negative", file=cfg.source, field="max_contacts")
    from .sip.auth import DigestServer
    from .sip.authguard import GuardConfig

    try:
        DigestServer("check", b"check", algorithms=[str(a) for a in cfg.digest_algorithms])
    except ValueError as exc:
        raise ConfigError(str(exc), file=cfg.source, field="digest_algorithms") from None

    try:
        GuardConfig(**cfg.auth_guard)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), file=cfg.source, field="auth_guard") from None
    if cfg.admin:
        try:
            parse_listen(cfg.admin)
        except ValueError as exc:
            raise ConfigError(str(exc), file=cfg.source, field="admin") from None
    if cfg.webphone:
        try:
            parse_listen(cfg.webphone)
        except ValueError as exc:
            raise ConfigError(str(exc), file=cfg.source, field="webphone") from None
    for i, item in enumerate(cfg.tenant_files):
        if not isinstance(item, str):
            raise ConfigError("must be a file name", file=cfg.source, field=f"tenant_files[{i}]")
    if cfg.max_calls < 1:
        raise ConfigError("must be at least 1", file=cfg.source, field="max_calls")
    storage_settings(cfg)
    _check_config_cache(cfg)
    _check_trunks(cfg)


def _check_trunks(cfg: EngineConfig) -> None:
    """The trunk section, checked when the file is loaded (it used to be read only
    when the node started, after the file had been accepted)."""
    from pri.trunk import TrunkConfigError, load_trunks

    section = {
        "trunks": cfg.trunks,
        "trunk_groups": cfg.trunk_groups,
        "outbound_routes": cfg.outbound_routes,
        "trusted_sources": cfg.trusted_sources,
        "dial_policy": cfg.dial_policy,
    }
    try:
        load_trunks(section, source=cfg.source)
    except TrunkConfigError as exc:
        raise ConfigError(exc.message, file=cfg.source, field=exc.field or None) from None


#: Keys of the ``config_cache`` section that a node takes from its top-level settings.
_NODE_OWNED_CACHE_KEYS = ("data_dir", "on_empty", "master_url", "history_url")


def _check_config_cache(cfg: EngineConfig) -> None:
    """The ``config_cache`` section, checked when the file is loaded (not when the
    node starts); a key the node sets from its top level would be silently replaced,
    so it is refused."""
    from config_cache import CacheSettings

    for key in _NODE_OWNED_CACHE_KEYS:
        if key in cfg.config_cache:
            raise ConfigError(
                f"a node setting: write it at the top level ({key}: ...)",
                file=cfg.source,
                field=f"config_cache.{key}",
            )
    CacheSettings.from_mapping(cfg.config_cache, source=cfg.source)


def _check_codecs(cfg: EngineConfig) -> None:
    """Codec names the engine knows (an unknown one used to be dropped silently)."""
    from media.codecs import CODECS

    audio = 0
    for i, name in enumerate(cfg.codecs):
        if not isinstance(name, str) or name.upper() not in CODECS:
            known = ", ".join(sorted(CODECS))
            raise ConfigError(
                f"unknown codec {name!r} (known: {known})", file=cfg.source, field=f"codecs[{i}]"
            )
        if name.upper() != "TELEPHONE-EVENT":
            audio += 1
    if not audio:
        raise ConfigError("needs at least one audio codec", file=cfg.source, field="codecs")


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The ``media_storage`` section of a node configuration (docs/storage.md)."""

    kind: str = "local"
    """``local`` (files under ``data_dir/media``) or ``azure``."""
    connection_string: str | None = None
    """Azure: ``DefaultEndpointsProtocol=...;AccountName=...;AccountKey=...;...``."""
    account_url: str | None = None
    """Azure: ``https://ACCOUNT.blob.core.windows.net`` (instead of a connection string)."""
    credential: str | None = None
    """Azure, with ``account_url``: the account key or a SAS token."""
    container: str = "callengine"
    """One container per platform; blobs are ``<tenant>/<kind>/<key>``."""
    spool_quota: int = 10 * 1024**3
    """Bytes the spool (``data_dir/spool``) may hold; new recordings are refused beyond."""
    spool_near: float = 0.9
    """Fraction of the quota at which a warning is logged (once per episode)."""
    upload_concurrency: int = 4
    """Uploads in flight at once."""
    retry_initial: float = 0.5
    """Seconds before the first retry after a failed upload (doubled each time)."""
    retry_max: float = 30.0
    """Longest wait between retries while storage is unreachable."""
    block_size: int = 4 * 1024 * 1024
    """Bytes per uploaded block; a file up to this size goes in one request."""
    timeout: float = 20.0
    """Seconds to connect to storage and to wait for each response."""
    prompt_cache_bytes: int = 256 * 1024**2
    """Bytes of tenant prompts kept in ``data_dir/prompt-cache`` (oldest evicted)."""
    prompt_refresh: float = 5.0
    """Seconds between checks of the tenants' prompt versions (and retries while
    storage is unreachable)."""


_STORAGE_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "connection_string": (str, type(None)),
    "account_url": (str, type(None)),
    "credential": (str, type(None)),
    "container": (str,),
    "spool_quota": (int,),
    "spool_near": (int, float),
    "upload_concurrency": (int,),
    "retry_initial": (int, float),
    "retry_max": (int, float),
    "block_size": (int,),
    "timeout": (int, float),
    "prompt_cache_bytes": (int,),
    "prompt_refresh": (int, float),
}

_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


def cpu_cores(cgroup: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The CPU cores this process may use: its CPU affinity, capped by a cgroup v2
    CPU quota (a container given ``--cpus 2`` on a 64-core host gets 2 workers, not
    64); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(cgroup).read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def serve_media_process(cfg: EngineConfig) -> bool:
    """Whether ``callengine serve`` runs this node's media (RTP and WebRTC legs) in the
    media plane: as configured, else (unset) yes when the node has media."""
    if cfg.media_process is not None:
        return cfg.media_process and cfg.media
    return cfg.media


def storage_settings(cfg: EngineConfig) -> StorageSettings:
    """The validated ``media_storage`` section; :class:`ConfigError` names the field."""
    data = cfg.media_storage

    def fail(message: str, name: str) -> ConfigError:
        return ConfigError(message, file=cfg.source, field=f"media_storage.{name}")

    for key, value in data.items():
        types = _STORAGE_TYPES.get(key)
        if types is None:
            raise fail("unknown setting", key)
        if not isinstance(value, types) or isinstance(value, bool):
            want = " or ".join(t.__name__ for t in types)
            raise fail(f"expected {want}, got {type(value).__name__}", key)
    settings = StorageSettings(**data)
    if settings.kind not in ("local", "azure"):
        raise fail("must be local or azure", "kind")
    if settings.kind == "azure":
        if bool(settings.connection_string) == bool(settings.account_url):
            raise fail("give either connection_string or account_url", "connection_string")
        if settings.account_url and not settings.account_url.startswith(("https://", "http://")):
            raise fail("must be an http(s) URL", "account_url")
        if settings.connection_string:
            parts = dict(p.split("=", 1) for p in settings.connection_string.split(";") if "=" in p)
            if not ("AccountName" in parts or "BlobEndpoint" in parts):
                raise fail("names no AccountName nor BlobEndpoint", "connection_string")
    if not _CONTAINER.match(settings.container):
        raise fail("3-63 lower-case letters, digits and single hyphens", "container")
    for name in ("spool_quota", "upload_concurrency", "block_size", "prompt_cache_bytes"):
        if getattr(settings, name) < 1:
            raise fail("must be at least 1", name)
    for name in ("retry_initial", "retry_max", "timeout", "prompt_refresh"):
        if not getattr(settings, name) > 0:
            raise fail("must be greater than 0", name)
    if settings.retry_max < settings.retry_initial:
        raise fail("must not be less than retry_initial", "retry_max")
    if not 0 < settings.spool_near <= 1:
        raise fail("must be in (0, 1]", "spool_near")
    return settings
