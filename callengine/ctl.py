"""``callengine ctl``: a thin client of a node's control API (docs/admin.md).

Standard library only (``http.client``): the command line imports no HTTP library.
Tables for people, ``--json`` for scripts; exit 0 on success, 1 when the node answered
with an error or cannot be reached, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["AdminClient", "AdminError", "add_ctl", "remote_logs"]

DEFAULT_URL = "http://127.0.0.1:9091"
TOKEN_ENV = "CALLENGINE_ADMIN_TOKEN"
URL_ENV = "CALLENGINE_ADMIN"


class AdminError(Exception):
    """The node answered with an error status, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AdminClient:
    """Requests to one node's admin API (``url`` like ``http://127.0.0.1:9091``)."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 10.0):
        url = url or os.environ.get(URL_ENV) or DEFAULT_URL
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise AdminError(f"bad admin URL {url!r}: expected http://HOST:PORT")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.timeout = timeout

    def _open(self, method: str, path: str, timeout: float | None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise AdminError(f"cannot reach the node's admin API at {self.url}: {exc}") from None
        if resp.status >= 400:
            body = resp.read()
            conn.close()
            try:
                message = json.loads(body).get("error", "")
            except (ValueError, AttributeError):
                message = body.decode(errors="replace")[:200]
            raise AdminError(f"{method} {path}: {resp.status} {message}".strip(), resp.status)
        return resp

    def request(self, method: str, path: str) -> Any:
        """One request; the decoded JSON body."""
        resp = self._open(method, path, self.timeout)
        try:
            return json.loads(resp.read())
        except ValueError as exc:
            raise AdminError(f"{method} {path}: not JSON: {exc}") from None
        finally:
            resp.close()

    def follow(self) -> Iterator[dict[str, Any]]:
        """Call logs as calls end (``GET /logs/follow``), until the node closes it."""
        resp = self._open("GET", "/logs/follow", None)
        try:
            for line in resp:
                if line.strip():
                    yield json.loads(line)
        finally:
            resp.close()


def add_ctl(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``callengine ctl ...``."""
    ctl = subparsers.add_parser("ctl", help="control a running node through its admin API")
    ctl.add_argument(
        "--admin",
        metavar="URL",
        help=f"admin API (default ${URL_ENV} or {DEFAULT_URL})",
    )
    ctl.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV})")
    ctl.add_argument("--json", action="store_true", help="print the API's JSON")
    sub = ctl.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    sub.add_parser("calls", help="live calls")
    call = sub.add_parser("call", help="one live call in detail")
    call.add_argument("id", help="Call-ID")
    hangup = sub.add_parser("hangup", help="hang up a live call")
    hangup.add_argument("id", help="Call-ID")
    sub.add_parser("drain", help="new INVITEs and OPTIONS get 503; calls in progress go on")
    sub.add_parser("undrain", help="take new calls again")
    sub.add_parser("reload", help="re-read tenant_files and poll the master now")
    sub.add_parser("ready", help="exit 0 when the node takes calls, 1 when not")
    logs = sub.add_parser("logs", help="recent call logs")
    logs.add_argument("--limit", type=int, default=100, help="at most N (default 100)")
    logs.add_argument("--follow", "-f", action="store_true", help="then print calls as they end")
    log = sub.add_parser("log", help="one call's log")
    log.add_argument("id", help="Call-ID")
    sub.add_parser("trunks", help="trunk states and channels")
    ctl.set_defaults(func=_ctl)


def _ctl(args: argparse.Namespace) -> int:
    try:
        client = AdminClient(args.admin, args.token)
        return _run(client, args)
    except AdminError as exc:
        print(f"callengine ctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _run(client: AdminClient, args: argparse.Namespace) -> int:
    cmd = args.ctl_command
    as_json = args.json
    if cmd == "calls":
        data = client.request("GET", "/calls")
        if as_json:
            _print(data)
        else:
            print(_calls_table(data["calls"]))
            print(f"{data['total']} calls")
    elif cmd == "call":
        _print(client.request("GET", f"/calls/{_quote(args.id)}"))
    elif cmd == "hangup":
        data = client.request("POST", f"/calls/{_quote(args.id)}/hangup")
        if as_json:
            _print(data)
        else:
            print(f"hung up {args.id}")
    elif cmd in ("drain", "undrain", "reload"):
        data = client.request("POST", f"/{cmd}")
        _print(data)
    elif cmd == "ready":
        try:
            client.request("GET", "/ready")
        except AdminError as exc:
            if exc.status == 503:
                print("not ready")
                return 1
            raise
        print("ready")
    elif cmd == "logs":
        return print_logs(client, limit=args.limit, follow=args.follow, as_json=as_json)
    elif cmd == "log":
        _print(client.request("GET", f"/logs/{_quote(args.id)}"))
    elif cmd == "trunks":
        data = client.request("GET", "/trunks")
        if as_json:
            _print(data)
        else:
            print(_trunks_table(data["trunks"]))
    return 0


def _quote(call_id: str) -> str:
    from urllib.parse import quote

    return quote(call_id, safe="")


def print_logs(client: AdminClient, *, limit: int | None, follow: bool, as_json: bool) -> int:
    """Recent call logs from a running node, then (``follow``) each call as it ends."""
    from config_cache.cli import _table

    data = client.request("GET", f"/logs?limit={limit if limit is not None else 1000}")
    docs: list[dict[str, Any]] = data["logs"]
    if as_json:
        for doc in docs:
            print(json.dumps(_flat(doc), sort_keys=True), flush=True)
    else:
        print(_table(_rows(docs)), flush=True)
    if not follow:
        return 0
    for doc in client.follow():
        if as_json:
            print(json.dumps(_flat(doc), sort_keys=True), flush=True)
        else:
            print(_table(_rows([doc])).splitlines()[-1], flush=True)
    return 0


def remote_logs(args: argparse.Namespace) -> int:
    """``callengine logs`` while the node runs (its LevelDB is locked): through the API."""
    url = getattr(args, "admin", None)
    if url is None and args.data_dir is not None:
        # the running node wrote where its API listens (callengine serve, cli.py)
        with contextlib.suppress(OSError):
            url = (Path(args.data_dir) / "admin-url").read_text().strip() or None
    try:
        client = AdminClient(url, getattr(args, "token", None))
        return print_logs(
            client, limit=args.limit, follow=getattr(args, "follow", False), as_json=args.json
        )
    except AdminError as exc:
        print(f"callengine logs: the node holds its LevelDB and {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _rows(docs: list[dict[str, Any]]) -> list[tuple[str, float | None, Any]]:
    from config_cache import CallLog

    return [(str(d["state"]), d.get("shipped_at"), CallLog.from_dict(d["log"])) for d in docs]


def _flat(doc: dict[str, Any]) -> dict[str, Any]:
    """An API item as ``callengine logs --json`` prints it offline (one flat object)."""
    flat: dict[str, Any] = {"state": doc["state"], **doc["log"]}
    if doc.get("shipped_at") is not None:
        flat["shipped_at"] = doc["shipped_at"]
    return flat


def _calls_table(calls: list[dict[str, Any]]) -> str:
    header = ("CALL-ID", "DIR", "STATE", "DUR", "TENANT", "FROM", "TO", "CODEC", "TRUNK", "LOSS%")
    lines = [header]
    for c in calls:
        rtp = c.get("rtp") or {}
        trunk = c.get("trunk") or {}
        lines.append(
            (
                str(c["id"]),
                str(c["direction"]),
                str(c["state"]),
                f"{c['duration']:.0f}s",
                str(c.get("tenant") or "-"),
                str(c.get("caller") or "-"),
                str(c.get("callee") or "-"),
                ",".join(c.get("codecs") or []) or "-",
                str(trunk.get("trunk") or "-"),
                str(rtp.get("loss_percent", "-")),
            )
        )
    return _format(lines)


def _trunks_table(trunks: list[dict[str, Any]]) -> str:
    lines = [("TRUNK", "CARRIER", "STATE", "IN USE", "GATEWAY")]
    for t in trunks:
        lines.append(
            (
                t["name"],
                str(t["carrier"]),
                t["state"],
                f"{t['channels_in_use']}/{t['channels']}",
                t["gateway"],
            )
        )
    return _format(lines)


def _format(lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )
