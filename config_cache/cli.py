"""``callengine config ...`` and ``callengine logs`` subcommands.

The daemon's CLI calls :func:`add_subcommands` on its argparse subparsers; each
subcommand stores its handler as ``func`` (``args.func(args) -> int`` exit code).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .calllog import CallLog
from .errors import ConfigError, UpstreamError
from .files import load_tenant_file
from .store import open_store

__all__ = ["add_subcommands"]


def add_subcommands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    remote_logs: Callable[[argparse.Namespace], int] | None = None,
) -> None:
    """Register ``config push|import|show`` and ``logs``.

    ``remote_logs`` serves ``logs`` from a running node (its admin API) when the
    LevelDB directory is held by that node, when no ``--data-dir`` is given, and for
    ``--follow``."""
    config = subparsers.add_parser("config", help="tenant configuration")
    sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")

    push = sub.add_parser("push", help="validate a tenant file and store it in the master DB")
    push.add_argument("file", help="tenant file (JSON or YAML; one tenant or a list)")
    push.add_argument("--master", required=True, help="MongoDB URL of the master Configuration DB")
    push.add_argument("--database", default="callengine", help="database name (default callengine)")
    push.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    push.set_defaults(func=_push)

    imp = sub.add_parser("import", help="validate a tenant file and store it in the local cache")
    imp.add_argument("file", help="tenant file (JSON or YAML; one tenant or a list)")
    imp.add_argument(
        "--data-dir", required=True, help="the node data directory (its LevelDB is DIR/leveldb)"
    )
    imp.set_defaults(func=_import)

    show = sub.add_parser("show", help="print a cached tenant as JSON")
    show.add_argument("tenant", help="tenant id")
    show.add_argument(
        "--data-dir", required=True, help="the node data directory (its LevelDB is DIR/leveldb)"
    )
    show.add_argument("--show-secrets", action="store_true", help="print SIP passwords")
    show.set_defaults(func=_show)

    logs = subparsers.add_parser("logs", help="call logs in the outbox and recently shipped")
    logs.add_argument(
        "--data-dir",
        required=remote_logs is None,
        help="the node data directory (its LevelDB is DIR/leveldb); while the node runs "
        "(it holds the LevelDB) the logs come from its admin API",
    )
    logs.add_argument("--json", action="store_true", help="one JSON object per line")
    logs.add_argument("--limit", type=int, default=None, help="at most N shipped logs")
    if remote_logs is not None:
        logs.add_argument("--admin", metavar="URL", help="the running node's admin API")
        logs.add_argument("--token", help="its bearer token (default $CALLENGINE_ADMIN_TOKEN)")
        logs.add_argument(
            "--follow", "-f", action="store_true", help="then print calls as they end (API)"
        )
    logs.set_defaults(func=_logs, remote_logs=remote_logs)


def node_db_dir(data_dir: str) -> str:
    """The LevelDB directory inside a node's data directory (``DIR/leveldb``)."""
    return str(Path(data_dir) / "leveldb")


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2 if isinstance(exc, ConfigError) else 1


def _push(args: argparse.Namespace) -> int:
    from ._mongo import MongoMaster

    try:
        tenants = load_tenant_file(args.file)
        master = MongoMaster(args.master, database=args.database, timeout=args.timeout)
        try:
            for tenant in tenants:
                doc = tenant.to_doc()
                if tenant.rev == 0:
                    doc.pop("rev", None)
                rev = master.push(doc)
                print(f"pushed tenant {tenant.id} rev {rev}")
        finally:
            master.close()
    except (ConfigError, UpstreamError) as exc:
        return _fail(exc)
    return 0


def _import(args: argparse.Namespace) -> int:
    try:
        tenants = load_tenant_file(args.file)
        store = open_store(node_db_dir(args.data_dir))
        try:
            for tenant in tenants:
                current = store.config.tenant(tenant.id)
                if current is not None and tenant.rev <= current.rev:
                    # A file edited by hand often keeps its rev: import anyway
                    # as the next rev, so the follower still sees newer master revs.
                    doc = tenant.to_doc()
                    doc["rev"] = current.rev + 1
                    from .schema import validate_tenant

                    tenant = validate_tenant(doc, file=str(args.file))
                store.config.apply(tenant, source=str(args.file), force=True)
                print(f"imported tenant {tenant.id} rev {tenant.rev}")
        finally:
            store.close()
    except ConfigError as exc:
        if "lock" in str(exc).lower():
            print(
                "hint: the node is running and holds its LevelDB: list the file in the node's "
                "tenant_files and run `callengine ctl reload` (docs/admin.md)",
                file=sys.stderr,
            )
        return _fail(exc)
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        store = open_store(node_db_dir(args.data_dir))
    except ConfigError as exc:
        return _fail(exc)
    try:
        tenant = store.config.tenant(args.tenant)
        if tenant is None:
            print(f"error: tenant {args.tenant!r} is not in {args.data_dir}", file=sys.stderr)
            return 1
        doc = tenant.to_doc()
        if not args.show_secrets:
            for user in doc.get("users", {}).values():
                if "password" in user:
                    user["password"] = "********"
        print(json.dumps(doc, indent=2, sort_keys=True))
    finally:
        store.close()
    return 0


def _logs(args: argparse.Namespace) -> int:
    remote = getattr(args, "remote_logs", None)
    if remote is not None and (args.data_dir is None or getattr(args, "follow", False)):
        return int(remote(args))
    try:
        store = open_store(node_db_dir(args.data_dir))
    except ConfigError as exc:
        if remote is not None and "lock" in str(exc).lower():
            return int(remote(args))  # the node is running and holds the LevelDB
        return _fail(exc)
    try:
        rows: list[tuple[str, float | None, CallLog]] = [
            ("shipped", at, rec) for at, rec in store.outbox.recently_shipped(args.limit)
        ]
        pending = sorted(store.outbox.entries(), key=lambda e: e[1].start_time)
        rows += [(state, None, rec) for state, rec in pending]
    finally:
        store.close()
    if args.json:
        for state, at, rec in rows:
            doc: dict[str, Any] = {"state": state, **rec.to_dict()}
            if at is not None:
                doc["shipped_at"] = at
            print(json.dumps(doc, sort_keys=True))
        return 0
    print(_table(rows))
    return 0


def _when(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[tuple[str, float | None, CallLog]]) -> str:
    header = (
        "STATE",
        "START (UTC)",
        "DUR",
        "TENANT",
        "FROM",
        "TO",
        "RESULT",
        "SIP",
        "Q850",
        "CALL-ID",
    )
    lines = [header]
    for state, _at, rec in rows:
        end = rec.end_time if rec.end_time is not None else time.time()
        dur = f"{end - rec.answer_time:.0f}s" if rec.answer_time else "-"
        lines.append(
            (
                state,
                _when(rec.start_time),
                dur,
                rec.tenant or "-",
                rec.caller or "-",
                rec.callee or "-",
                rec.result or "-",
                str(rec.sip_status or "-"),
                str(rec.q850_cause or "-"),
                rec.call_id,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )
