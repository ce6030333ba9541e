"""``callengine``: the command line (serve, dial, ctl, config, logs, init, provision, check)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("callengine.cli")

__all__ = ["main"]

ADMIN_URL_FILE = "admin-url"
"""In the data directory while the node runs: the URL of its admin API."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callengine", description="SIP/RTP call engine")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run a call-server node in the foreground")
    serve.add_argument("--config", help="node configuration file (YAML, JSON or TOML)")
    serve.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="SIP address (UDP and TCP); repeat for more (default 127.0.0.1:5060)",
    )
    serve.add_argument("--data-dir", help="node state directory (default ./data)")
    serve.add_argument(
        "--metrics", metavar="HOST:PORT", help="Prometheus endpoint (default 127.0.0.1:9090)"
    )
    serve.add_argument("--no-metrics", action="store_true", help="do not open the metrics endpoint")
    serve.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="control API (default 127.0.0.1:9091; a non-loopback address needs a token: "
        "admin_token or $CALLENGINE_ADMIN_TOKEN)",
    )
    serve.add_argument("--no-admin", action="store_true", help="do not open the control API")
    serve.add_argument("--ws-port", type=int, help="SIP over WebSocket port (RFC 7118)")
    serve.add_argument("--webphone", metavar="HOST:PORT", help="serve the browser phone page")
    serve.add_argument("--history", metavar="MONGODB_URL", help="History DB for call logs")
    serve.add_argument("--master", metavar="MONGODB_URL", help="master Configuration DB")
    serve.add_argument("--log-format", choices=("plain", "json"))
    serve.add_argument("--log-level")
    serve.add_argument("--no-media", action="store_true", help="signalling only (benchmarks)")
    serve.add_argument(
        "--media-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="RTP in a process of its own, the media plane (config media_process; the "
        "default unless the node listens on WebSocket)",
    )
    serve.add_argument("--max-calls", type=int)
    serve.add_argument("--max-cps", type=float)
    serve.add_argument("--drain-grace", type=float)
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes behind the node's SIP address (0: one per CPU core, the "
        "default; 1: one process)",
    )
    serve.set_defaults(func=_serve)

    dial = sub.add_parser(
        "dial", help="softphone (pjsua2, extra callengine[softphone]): call a SIP URI"
    )
    dial.add_argument("uri", help="e.g. sip:demo@127.0.0.1:5060")
    dial.add_argument("--dtmf", default="", help="RFC 4733 digits to send after answer")
    dial.add_argument("--play", help="WAV file to play into the call")
    dial.add_argument(
        "--play-delay", type=float, default=0.0, help="seconds after answer before --play starts"
    )
    dial.add_argument("--record", help="WAV file to record what the far end sends")
    dial.add_argument("--duration", type=float, default=10.0, help="seconds to stay connected")
    dial.add_argument(
        "--dtmf-delay", type=float, default=1.0, help="seconds after answer before DTMF"
    )
    dial.add_argument("--port", type=int, default=0, help="local SIP port (default: any)")
    dial.set_defaults(func=_dial)

    from config_cache.cli import add_subcommands

    from .ctl import add_ctl, remote_logs

    add_ctl(sub)
    add_subcommands(sub, remote_logs=remote_logs)
    from .installer import add_subcommands as add_installer

    add_installer(sub)  # init, provision, check (docs/install.md)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except BrokenPipeError:  # `callengine logs | head`
        sys.stderr.close()
        return 0
    return rc


def _serve(args: argparse.Namespace) -> int:
    from . import _planespawn

    if args.media_process is not False and not args.no_media and args.ws_port is None:
        # the media plane's interpreter starts first, while the node imports and reads
        # its configuration; dropped below if the node turns out to have no plane
        _planespawn.prespawn()
    from config_cache import ConfigError

    from .config import cpu_cores, load_config, serve_media_process
    from .logs import setup_logging

    overrides = {
        "listen": args.listen,
        "data_dir": args.data_dir,
        "metrics": args.metrics,
        "admin": args.admin,
        "history_url": args.history,
        "master_url": args.master,
        "log_format": args.log_format,
        "log_level": args.log_level,
        "max_calls": args.max_calls,
        "max_cps": args.max_cps,
        "drain_grace": args.drain_grace,
        "workers": args.workers,
        "ws_port": args.ws_port,
        "webphone": args.webphone,
    }
    if args.no_media:
        overrides["media"] = False
    if args.media_process is not None:
        overrides["media_process"] = args.media_process
    try:
        cfg = load_config(args.config, **overrides)
    except ConfigError as exc:
        sys.stderr.write(f"callengine: configuration error: {exc}\n")
        return 2
    if args.no_metrics:
        cfg.metrics = None
    if args.no_admin:
        cfg.admin = None
    cfg.admin_token = os.environ.get("CALLENGINE_ADMIN_TOKEN") or cfg.admin_token
    if cfg.admin:
        from .admin import AdminConfigError, check_bind
        from .transport import parse_listen

        try:
            check_bind(parse_listen(cfg.admin)[0], cfg.admin_token)
        except AdminConfigError as exc:
            sys.stderr.write(f"callengine: configuration error: {exc}\n")
            return 2
    cfg.media_process = serve_media_process(cfg)
    workers = cfg.workers or cpu_cores()
    if not (cfg.media_process and workers == 1):
        _planespawn.discard()  # (a worker starts its own plane)
    writer = setup_logging(cfg.log_format, cfg.log_level)
    try:
        if workers > 1:
            from .cluster import run_front

            return int(_event_loop_run(run_front(cfg, workers)))
        return int(_event_loop_run(_run_node(cfg)))
    except KeyboardInterrupt:
        return 0
    finally:
        writer.stop()


def _event_loop_run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (8x the datagram rate); plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _run_node(cfg: object) -> int:
    from .config import EngineConfig
    from .metrics import serve_metrics
    from .node import Node

    assert isinstance(cfg, EngineConfig)
    from config_cache import ConfigError
    from pri import TrunkConfigError

    # the handlers first: a SIGTERM while the node starts (it may already answer SIP)
    # drains it once started instead of killing it
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = None
    try:
        node = Node(cfg)
        await node.start()
    except (ConfigError, TrunkConfigError) as exc:
        sys.stderr.write(f"callengine: configuration error: {exc}\n")
        if node is not None:
            await _quiet_stop(node)
        return 2
    except OSError as exc:
        what = (
            "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        )
        sys.stderr.write(f"callengine: cannot listen on {', '.join(cfg.listen)}: {what}\n")
        await _quiet_stop(node)
        return 1
    from .admin import AdminServer, WebPhoneServer

    endpoints = await open_endpoints(
        cfg,
        metrics=lambda host, port: serve_metrics(node.engine, host, port, registry=node.registry),
        admin=lambda host, port: AdminServer(node, host, port, token=cfg.admin_token),
        webphone=lambda host, port: WebPhoneServer(node, host, port),
    )
    if endpoints is None:
        await _quiet_stop(node)
        return 1
    admin, webphone = endpoints
    log.info("node %s ready", cfg.node_id)
    await stop.wait()
    log.info(
        "draining: new calls get 503; %d active calls have %.0f s",
        len(node.engine.calls),
        cfg.drain_grace,
    )
    if admin is not None:
        admin.stopping = True  # /ready says 503 while calls drain
    await node.stop()
    await close_endpoints(cfg, endpoints)
    log.info("stopped")
    return 0


async def open_endpoints(
    cfg: Any,
    *,
    metrics: Callable[[str, int], object],
    admin: Callable[[str, int], Any],
    webphone: Callable[[str, int], Any],
) -> tuple[Any, Any] | None:
    """Open the node's HTTP endpoints that ``cfg`` asks for: /metrics (``metrics(host,
    port)`` starts it), the control API and the web phone (``admin``/``webphone`` make
    the servers). ``(admin, webphone)``, either None when off; ``None`` after printing
    the one line that says which could not be opened."""
    from .transport import parse_listen

    what = "metrics"
    opened: tuple[Any, Any] = (None, None)
    try:
        if cfg.metrics:
            metrics(*parse_listen(cfg.metrics))
        if cfg.admin:
            what = "the admin API"
            host, port = parse_listen(cfg.admin)
            server = admin(host, port)
            await server.start()
            opened = (server, None)
            # `callengine logs --data-dir DIR` finds the API of the node that holds DIR
            local = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            url = f"http://[{local}]:{port}" if ":" in local else f"http://{local}:{port}"
            (Path(cfg.data_dir) / ADMIN_URL_FILE).write_text(url + "\n")
        if cfg.webphone:
            what = "the web phone"
            phone = webphone(*parse_listen(cfg.webphone))
            await phone.start()
            opened = (opened[0], phone)
    except OSError as exc:
        where = {"metrics": cfg.metrics, "the admin API": cfg.admin}.get(what, cfg.webphone)
        sys.stderr.write(f"callengine: cannot open {what} on {where}: {exc.strerror}\n")
        await close_endpoints(cfg, opened)
        return None
    return opened


async def close_endpoints(cfg: Any, endpoints: tuple[Any, Any]) -> None:
    admin, webphone = endpoints
    if webphone is not None:
        await webphone.stop()
    if admin is not None:
        await admin.stop()
        (Path(cfg.data_dir) / ADMIN_URL_FILE).unlink(missing_ok=True)


async def _quiet_stop(node: object) -> None:
    from .node import Node

    if isinstance(node, Node):
        try:
            await node.stop(0)
        except Exception:  # best effort on a failed start; the first error was reported
            log.debug("cleanup after failed start", exc_info=True)


def _dial(args: argparse.Namespace) -> int:
    # pjsua2 is the `softphone` extra: the engine installs and runs without it.
    try:
        from .softphone import dial
    except ModuleNotFoundError as exc:
        if exc.name != "pjsua2":
            raise
        print(
            "callengine: dial needs pjsua2, which is not installed: "
            "pip install 'callengine[softphone]'",
            file=sys.stderr,
        )
        return 2
    return dial(
        args.uri,
        dtmf=args.dtmf,
        play=args.play,
        record=args.record,
        duration=args.duration,
        dtmf_delay=args.dtmf_delay,
        port=args.port,
        play_delay=args.play_delay,
    )


if __name__ == "__main__":
    sys.exit(main())
