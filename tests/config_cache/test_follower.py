from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from config_cache import ConfigError, MasterFollower, MongoMaster, open_store

from .conftest import MongoServer


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _put(server: MongoServer, dbname: str, doc: dict[str, Any]) -> None:
    body = {k: v for k, v in doc.items() if k != "id"}
    with server.client() as client:
        client[dbname].tenants.replace_one({"_id": doc["id"]}, body, upsert=True)


def test_follows_changed_rev_and_rejects_invalid(
    tmp_path: Path, mongo: MongoServer, dbname: str, acme: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _put(mongo, dbname, acme())
    store = open_store(tmp_path / "db")
    master = MongoMaster(mongo.url, database=dbname, timeout=2.0)

    async def main() -> None:
        follower = MasterFollower(store.config, master, poll_interval=0.05, use_change_stream=False)
        changes: list[list[str]] = []
        follower.on_change = changes.append
        await follower.start()
        assert store.config.revisions() == {"acme": 1}
        assert not follower.offline
        assert changes == [["acme"]]

        _put(mongo, dbname, acme(rev=2, name="Acme Two"))
        for _ in range(100):
            if store.config.revisions() == {"acme": 2}:
                break
            await asyncio.sleep(0.02)
        tenant = store.config.tenant("acme")
        assert tenant is not None and tenant.name == "Acme Two"

        bad = acme(rev=3)
        bad["users"]["100"]["password"] = ""
        with caplog.at_level(logging.ERROR, logger="config_cache.follower"):
            _put(mongo, dbname, bad)
            assert await follower.poll_once() == []
            assert await follower.poll_once() == []  # logged once per rev
        assert store.config.revisions() == {"acme": 2}  # last good keeps serving
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors == [
            "rejected tenant 'acme' rev 3 from master (keeping rev 2): master: tenant 'acme': "
            "users.100.password: must not be empty"
        ]
        assert follower.rejected["acme"][0] == 3

        _put(mongo, dbname, acme(rev=4, deleted=True))
        assert await follower.poll_once() == ["acme"]
        assert store.config.is_empty()
        # each poll that changed something said so, once (rev 2, the deletion); the
        # rejected rev 3 changed nothing
        assert changes == [["acme"], ["acme"], ["acme"]]
        await follower.stop()

    try:
        asyncio.run(main())
    finally:
        master.close()
        store.close()


def test_change_stream_wakes_follower(
    tmp_path: Path, mongo: MongoServer, dbname: str, acme: Any
) -> None:
    store = open_store(tmp_path / "db")
    master = MongoMaster(mongo.url, database=dbname, timeout=2.0)

    async def main() -> float:
        follower = MasterFollower(store.config, master, poll_interval=30.0)
        await follower.start()
        await asyncio.sleep(0.3)  # let it open the stream
        t0 = time.monotonic()
        _put(mongo, dbname, acme())
        while not store.config.revisions() and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.02)
        await follower.stop()
        return time.monotonic() - t0

    try:
        elapsed = asyncio.run(main())
    finally:
        master.close()
        store.close()
    assert store is not None and elapsed < 5.0  # far less than poll_interval
    assert master.change_streams


def test_offline_at_start_then_catch_up(
    tmp_path: Path, mongo_down: MongoServer, acme: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path / "db")
    master = MongoMaster(mongo_down.url, database="cfg", timeout=0.3)
    clock = FakeClock()

    async def main() -> None:
        follower = MasterFollower(
            store.config, master, poll_interval=0.05, use_change_stream=False, clock=clock
        )
        with caplog.at_level(logging.WARNING, logger="config_cache.follower"):
            await follower.start()
        assert follower.offline and follower.offline_since == 1000.0
        with pytest.raises(ConfigError, match="the local cache is empty and the master"):
            store.config.ensure_not_empty("refuse")
        store.config.ensure_not_empty("demo")
        assert store.config.lookup("4242") is not None  # demo serves

        clock.now = 1060.0
        await asyncio.to_thread(mongo_down.start)
        _put(mongo_down, "cfg", acme(rev=7))
        for _ in range(300):
            if not follower.offline:
                break
            await asyncio.sleep(0.02)
        assert not follower.offline and follower.offline_since is None
        assert store.config.revisions() == {"acme": 7}
        assert not store.config.serving_demo
        await follower.stop()

    try:
        asyncio.run(main())
    finally:
        master.close()
        store.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "config_cache.follower"]
    offline = [m for m in lines if "OFFLINE" in m]
    online = [m for m in lines if "ONLINE" in m]
    assert len(offline) == 1 and offline[0].startswith(
        "master Configuration DB unreachable: OFFLINE, serving 0 cached tenant(s): master revisions:"
    )
    assert online == ["master Configuration DB reachable: ONLINE after 60.0 s offline, caught up"]


def test_goes_offline_later_and_keeps_serving(
    tmp_path: Path, mongo_down: MongoServer, acme: Any
) -> None:
    mongo_down.start()
    _put(mongo_down, "cfg", acme())
    store = open_store(tmp_path / "db")
    master = MongoMaster(mongo_down.url, database="cfg", timeout=0.3)

    async def main() -> None:
        follower = MasterFollower(store.config, master, poll_interval=0.05, use_change_stream=False)
        await follower.start()
        assert store.config.revisions() == {"acme": 1}
        await asyncio.to_thread(mongo_down.stop)
        await follower.poll_once()
        assert follower.offline
        assert store.config.lookup("+33100000001") is not None
        await asyncio.to_thread(mongo_down.start)
        _put(mongo_down, "cfg", acme(rev=5))
        await follower.poll_once()
        assert not follower.offline and store.config.revisions() == {"acme": 5}
        await follower.stop()

    try:
        asyncio.run(main())
    finally:
        master.close()
        store.close()


def test_push_increments_rev(mongo: MongoServer, dbname: str, acme: Any) -> None:
    master = MongoMaster(mongo.url, database=dbname, timeout=2.0)
    try:
        doc = acme()
        del doc["rev"]
        assert master.push(doc) == 1
        assert master.push(doc) == 2
        assert master.push(acme(rev=10)) == 10
        assert master.revisions() == {"acme": 10}
    finally:
        master.close()
