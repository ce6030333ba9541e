from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from config_cache import CallLog, open_store


def _log(call_id: str, start: float = 100.0) -> CallLog:
    return CallLog(
        call_id, tenant="acme", caller="100", callee="+331", start_time=start, answer_time=start + 1
    )


def test_one_record_per_call(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db")
    box = store.outbox
    rec = _log("a")
    box.open_call(rec)
    assert [s for s, _ in box.entries()] == ["open"] and box.depth() == 0
    rec.end_time, rec.result, rec.sip_status, rec.q850_cause = 130.0, "completed", 200, 16
    rec.ivr_path.append({"kind": "menu", "digit": "1"})
    box.close_call(rec)
    entries = box.entries()
    assert len(entries) == 1 and entries[0][0] == "final"
    assert entries[0][1].ivr_path == [{"kind": "menu", "digit": "1"}]
    assert box.depth() == 1 and box.oldest_end_time() == 130.0
    store.close()


def test_pending_oldest_first_and_shipped_ring_bounded(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db", shipped_keep=3)
    box = store.outbox
    for i, end in enumerate([50.0, 10.0, 30.0, 20.0, 40.0]):
        rec = _log(f"c{i}")
        rec.end_time = end
        box.close_call(rec)
    batch = box.pending(2)
    assert [r.call_id for r in batch] == ["c1", "c3"]
    box.mark_shipped(batch, shipped_at=1000.0)
    box.mark_shipped(box.pending(10), shipped_at=1001.0)
    assert box.depth() == 0 and box.entries() == []
    shipped = box.recently_shipped()
    assert [r.call_id for _, r in shipped] == ["c2", "c4", "c0"]  # the last 3 kept
    store.close()
    store = open_store(tmp_path / "db", shipped_keep=3)
    assert [r.call_id for _, r in store.outbox.recently_shipped(2)] == ["c4", "c0"]
    store.close()


def test_unreadable_record_is_kept(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db")
    store.outbox.close_call(_log("good"))
    store.db.put(b"o/bad", b"{not json", sync=True)
    store.close()
    store = open_store(tmp_path / "db")
    assert store.outbox.unreadable == [b"o/bad"]
    assert [r.call_id for r in store.outbox.pending(10)] == ["good"]
    store.outbox.mark_shipped(store.outbox.pending(10), shipped_at=1.0)
    assert store.db.get(b"o/bad") == b"{not json"
    store.close()


CHILD = textwrap.dedent(
    """
    import sys, time
    from config_cache import CallLog, open_store
    store = open_store(sys.argv[1])
    for i in range(20):
        rec = CallLog(f"call-{i}", tenant="acme", start_time=100.0 + i, answer_time=101.0 + i)
        store.outbox.open_call(rec)
        if i % 4 == 0:
            rec.end_time, rec.result = 150.0 + i, "completed"
            store.outbox.close_call(rec)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_kill_9_loses_nothing_and_recovery_marks_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    store = open_store(db)
    box = store.outbox
    assert len(box.entries()) == 20
    assert len(box.open_calls()) == 15
    recovered = box.recover_interrupted(now=500.0)
    assert len(recovered) == 15 and "call-1" in recovered and "call-0" not in recovered
    states = {rec.call_id: (state, rec) for state, rec in box.entries()}
    assert all(state == "final" for state, _ in states.values())
    one = states["call-1"][1]
    assert (one.result, one.interrupted, one.end_time) == ("interrupted", True, 500.0)
    closed = states["call-4"][1]
    assert (closed.result, closed.interrupted) == ("completed", False)
    assert box.depth() == 20
    assert box.recover_interrupted(now=600.0) == []
    store.close()


def test_recent_json_newest_page_without_decoding(tmp_path: Path) -> None:
    """What a running node's ``GET /logs`` serves: shipped, then waiting, then open
    records, newest ``limit`` of them, each a JSON object spliced from the stored bytes."""
    store = open_store(tmp_path / "db", shipped_keep=10)
    box = store.outbox
    for i, end in enumerate([10.0, 20.0, 30.0, 40.0, 50.0]):
        rec = _log(f"c{i}")
        rec.end_time = end
        box.close_call(rec)
    box.mark_shipped(box.pending(2), shipped_at=1000.0)  # c0, c1
    box.open_call(_log("live"))
    page = [json.loads(item) for item in box.recent_json(10)]
    assert [(d["state"], d["log"]["call_id"]) for d in page] == [
        ("shipped", "c0"),
        ("shipped", "c1"),
        ("final", "c2"),
        ("final", "c3"),
        ("final", "c4"),
        ("open", "live"),
    ]
    assert page[0]["shipped_at"] == 1000.0 and page[2]["log"]["end_time"] == 30.0
    assert [json.loads(i)["log"]["call_id"] for i in box.recent_json(3)] == ["c3", "c4", "live"]
    assert box.recent_json(0) == []
    found = box.find("c1")
    assert found is not None and found[:2] == ("shipped", 1000.0)
    assert box.find("c3") is not None and box.find("nope") is None
    store.close()
