"""The control API's decisions without a socket: which addresses need a token, the
bearer check, the admin settings of a node config, and the ``/logs/follow`` feed's
bound (a reader that does not keep up loses lines, counted, and holds no more)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from callengine.admin import AdminConfigError, LogFeed, authorized, check_bind, is_loopback
from callengine.config import load_config
from config_cache import ConfigError


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.11", False),
        ("admin.example.net", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_off_loopback_without_token_is_refused_with_the_fix() -> None:
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "s3cret")
    with pytest.raises(AdminConfigError, match=r"admin API on 0\.0\.0\.0 .*admin_token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(AdminConfigError):
        check_bind("10.0.0.11", "")


def test_bearer_token() -> None:
    assert authorized(None, None)
    assert authorized("Bearer anything", "")
    assert authorized("Bearer s3cret", "s3cret")
    assert not authorized(None, "s3cret")
    assert not authorized("Bearer s3cre", "s3cret")
    assert not authorized("Basic czNjcmV0", "s3cret")
    assert not authorized("s3cret", "s3cret")


def test_admin_settings(tmp_path: Path) -> None:
    assert load_config().admin == "127.0.0.1:9091"
    path = tmp_path / "node.yaml"
    path.write_text("admin: null\ntenant_files: [t.yaml]\n")
    cfg = load_config(path)
    assert (cfg.admin, cfg.tenant_files) == (None, ["t.yaml"])
    path.write_text("admin: nowhere\n")
    with pytest.raises(ConfigError, match="admin"):
        load_config(path)
    path.write_text("tenant_files: [7]\n")
    with pytest.raises(ConfigError, match=r"tenant_files\[0\]"):
        load_config(path)


def _ended_call(call_id: str) -> Any:
    return SimpleNamespace(
        call_id=call_id,
        tenant="t1",
        caller="100",
        callee="5550300",
        did="5550300",
        direction="inbound",
        started_at=1000.0,
        answered_at=1001.0,
        ended_at=1005.0,
        answered=True,
        status=200,
        cause=16,
        end_reason="hangup",
        ivr_path=[],
        digits=[],
        trunk_attempts=[],
        quality={},
        recordings=[],
    )


def test_follow_feed_hands_each_ended_call_to_readers_and_bounds_them() -> None:
    async def main() -> tuple[list[dict[str, Any]], int, int]:
        feed = LogFeed("n1")
        feed.on_call_ended(_ended_call("nobody-follows"))  # no reader: nothing kept
        fast: asyncio.Queue[bytes] = asyncio.Queue(10)
        slow: asyncio.Queue[bytes] = asyncio.Queue(2)
        feed.readers += [fast, slow]
        for n in range(5):
            feed.on_call_ended(_ended_call(f"c{n}"))
        lines = [json.loads(fast.get_nowait()) for _ in range(fast.qsize())]
        return lines, slow.qsize(), feed.dropped

    lines, slow_kept, dropped = asyncio.run(main())
    assert [d["log"]["call_id"] for d in lines] == ["c0", "c1", "c2", "c3", "c4"]
    first = lines[0]["log"]
    assert lines[0]["state"] == "final" and first["node_id"] == "n1"
    assert first["result"] == "completed" and first["end_time"] == 1005.0
    assert (slow_kept, dropped) == (2, 3)
