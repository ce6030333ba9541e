from __future__ import annotations

import asyncio
from pathlib import Path

from config_cache import Backoff, CacheMetrics, CallLog, HistoryShipper, MongoHistory, open_store

from .conftest import MongoServer


def _close(store_outbox: object, n: int, prefix: str = "call") -> None:
    from config_cache import Outbox

    assert isinstance(store_outbox, Outbox)
    for i in range(n):
        rec = CallLog(f"{prefix}-{i}", tenant="acme" if i % 2 else "beta", start_time=100.0 + i)
        rec.answer_time, rec.end_time, rec.result = 101.0 + i, 110.0 + i, "completed"
        store_outbox.close_call(rec)


def test_backoff_is_exponential_and_capped() -> None:
    b = Backoff(initial=0.5, maximum=4.0)
    assert [b.failure() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.success()
    assert b.failure() == 0.5


def test_history_down_then_up_exactly_once(tmp_path: Path, mongo_down: MongoServer) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = CacheMetrics(registry)
    store = open_store(tmp_path / "db", metrics=metrics)
    _close(store.outbox, 120)
    sink = MongoHistory(mongo_down.url, database="hist", timeout=0.3, write_concern="majority")
    clock_now = [1000.0]

    async def main() -> None:
        shipper = HistoryShipper(
            store.outbox,
            sink,
            batch_size=50,
            interval=0.05,
            backoff=Backoff(initial=0.05, maximum=0.2),
            clock=lambda: clock_now[0],
            metrics=metrics,
        )
        await shipper.start()
        await asyncio.sleep(1.2)  # History DB down: failed attempts, backing off
        assert shipper.last_error is not None and shipper.backoff.failures >= 1
        assert store.outbox.depth() == 120
        assert registry.get_sample_value("callengine_outbox_oldest_age_seconds") == 1000.0 - 110.0

        # the loop is not blocked while pymongo waits in a thread
        t0 = asyncio.get_running_loop().time()
        await asyncio.sleep(0.01)
        assert asyncio.get_running_loop().time() - t0 < 0.2

        await asyncio.to_thread(mongo_down.start)
        _close(store.outbox, 5, prefix="late")
        shipper.notify()
        for _ in range(500):
            if store.outbox.depth() == 0:
                break
            await asyncio.sleep(0.02)
        await shipper.stop()

    try:
        asyncio.run(main())
        assert store.outbox.depth() == 0 and store.outbox.entries() == []
        with mongo_down.client() as client:
            calls = client.hist.calls
            assert calls.count_documents({}) == 125
            doc = calls.find_one({"_id": "call-7"})
            assert doc is not None and doc["result"] == "completed" and doc["tenant"] == "acme"
        assert registry.get_sample_value("callengine_history_shipped_total") == 125
        assert (registry.get_sample_value("callengine_history_ship_failures_total") or 0) >= 1
        assert registry.get_sample_value("callengine_outbox_depth") == 0
        assert len(store.outbox.recently_shipped()) == 125

        # resending the same logs (crash between ack and delete) never duplicates
        again = [
            {**rec.to_dict(), "_id": rec.call_id} for _, rec in store.outbox.recently_shipped()
        ]
        assert sink.upsert(again) == 125
        with mongo_down.client() as client:
            assert client.hist.calls.count_documents({}) == 125
    finally:
        sink.close()
        store.close()


def test_region_stamped_for_zone_sharding(tmp_path: Path, mongo: MongoServer, dbname: str) -> None:
    store = open_store(tmp_path / "db")
    _close(store.outbox, 4)
    sink = MongoHistory(
        mongo.url, database=dbname, timeout=2.0, tenant_regions={"acme": "eu"}, default_region="us"
    )

    async def main() -> int:
        shipper = HistoryShipper(store.outbox, sink)
        return await shipper.flush()

    try:
        assert asyncio.run(main()) == 4
        with mongo.client() as client:
            regions = {d["_id"]: d["region"] for d in client[dbname].calls.find()}
        assert regions == {"call-0": "us", "call-1": "eu", "call-2": "us", "call-3": "eu"}
    finally:
        sink.close()
        store.close()
