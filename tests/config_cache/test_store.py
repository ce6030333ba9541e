from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any

import pytest

from config_cache import Binding, ConfigError, open_store, validate_tenant


def test_apply_persists_and_snapshot_is_immutable(tmp_path: Path, acme: Any) -> None:
    store = open_store(tmp_path / "db")
    assert store.config.is_empty()
    store.config.apply(validate_tenant(acme()))
    old = store.config.snapshot
    call_view = store.config.lookup("+33100000001")
    assert call_view is not None and call_view.tenant.rev == 1

    doc = acme(rev=2)
    doc["numbers"] = {"+33100000009": "user:100"}
    assert store.config.apply(validate_tenant(doc))
    assert not store.config.apply(validate_tenant(acme(rev=2)))  # same rev: ignored
    # the call that started on rev 1 keeps rev 1
    assert call_view.tenant.rev == 1 and old.lookup("+33100000001") is not None
    assert store.config.lookup("+33100000001") is None
    match = store.config.lookup("33100000009")  # without the +
    assert match is not None and str(match.route) == "user:100" and match.tenant.rev == 2
    assert store.config.snapshot.version == old.version + 1
    store.close()

    store = open_store(tmp_path / "db")
    assert store.config.revisions() == {"acme": 2}
    assert store.config.lookup("+33100000001") is None
    assert store.db.get(b"n/+33100000001") is None  # stale number key removed atomically
    assert store.db.get(b"n/+33100000009") == b"acme"
    store.close()


def test_number_owned_by_another_tenant(tmp_path: Path, acme: Any) -> None:
    store = open_store(tmp_path / "db")
    store.config.apply(validate_tenant(acme()))
    other = acme(id="other")
    with pytest.raises(ConfigError) as info:
        store.config.apply(validate_tenant(other), source="master")
    assert str(info.value) == (
        "master: tenant 'other': numbers.+33100000001: number already assigned to tenant 'acme'"
    )
    assert store.config.tenant("other") is None
    assert store.config.remove("acme")
    assert store.config.apply(validate_tenant(other))
    store.close()


def test_default_tenant_takes_unknown_numbers(tmp_path: Path, acme: Any) -> None:
    store = open_store(tmp_path / "db", default_tenant="acme")
    store.config.apply(validate_tenant(acme(default_route="group:sales")))
    match = store.config.lookup("5550000")
    assert match is not None and match.default and str(match.route) == "group:sales"
    assert match.did == "5550000"
    store.close()


def test_on_empty_demo_and_refuse(tmp_path: Path, acme: Any) -> None:
    store = open_store(tmp_path / "db")
    with pytest.raises(ConfigError) as info:
        store.config.ensure_not_empty("refuse")
    assert str(info.value).startswith(
        f"{tmp_path / 'db'}: no tenant configuration: the local cache"
    )
    store.config.ensure_not_empty("demo")
    assert store.config.serving_demo
    match = store.config.lookup("12345")
    assert match is not None and match.tenant.id == "demo" and str(match.route) == "ivr:main"
    assert store.config.revisions() == {}  # the follower fetches everything
    # the first real tenant replaces the demo; the demo was never persisted
    store.config.apply(validate_tenant(acme()))
    assert set(store.config.snapshot.tenants) == {"acme"}
    store.close()
    store = open_store(tmp_path / "db")
    assert set(store.config.snapshot.tenants) == {"acme"}
    store.close()


def test_bindings_survive_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db")
    b = store.bindings
    b.put_binding(Binding("sip:100@acme", "sip:100@10.0.0.5:5060", 1000.0, call_id="c1", cseq=2))
    b.put_binding(Binding("sip:100@acme", "sip:100@10.0.0.6:5060", 500.0))
    b.put_binding(Binding("sip:1000@acme", "sip:1000@10.0.0.7:5060", 1000.0))
    b.put_binding(Binding("sip:100@acme", "sip:100@10.0.0.5:5060", 2000.0, call_id="c1", cseq=3))
    store.close()

    store = open_store(tmp_path / "db")
    b = store.bindings
    got = b.get_bindings("sip:100@acme", now=600.0)
    assert [(x.contact, x.expires_at, x.cseq) for x in got] == [
        ("sip:100@10.0.0.5:5060", 2000.0, 3)
    ]
    assert len(b.get_bindings("sip:100@acme", now=100.0)) == 2
    assert len(b.all_bindings(now=600.0)) == 2
    assert b.purge_expired(now=600.0) == 1
    assert b.delete_binding("sip:100@acme", "sip:100@10.0.0.5:5060")
    assert not b.delete_binding("sip:100@acme", "sip:100@10.0.0.5:5060")
    assert b.get_bindings("sip:100@acme", now=0.0) == []
    store.close()


def _fill(path: Path, acme: Any) -> None:
    store = open_store(path)
    store.config.apply(validate_tenant(acme()))
    store.close()


def test_truncated_manifest_is_repaired(
    tmp_path: Path, acme: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "db"
    _fill(path, acme)
    manifest = glob.glob(str(path / "MANIFEST-*"))[0]
    with open(manifest, "r+b") as f:
        f.truncate(10)
    with caplog.at_level(logging.WARNING, logger="config_cache.leveldb"):
        store = open_store(path)
    assert "running plyvel.repair_db once" in caplog.text
    assert store.config.revisions() == {"acme": 1}
    store.close()


def test_lost_current_file_is_repaired_not_recreated(tmp_path: Path, acme: Any) -> None:
    path = tmp_path / "db"
    _fill(path, acme)
    (path / "CURRENT").unlink()
    store = open_store(path)
    assert store.config.revisions() == {"acme": 1}
    store.close()


def test_unrepairable_directory_names_path(tmp_path: Path, acme: Any) -> None:
    path = tmp_path / "db"
    _fill(path, acme)
    (path / "CURRENT").unlink()
    (path / "CURRENT").mkdir()  # unreadable, and blocks repair too
    with pytest.raises(ConfigError) as info:
        open_store(path)
    assert str(info.value).startswith(f"{path}: LevelDB is corrupt and repair failed: IO error")


def test_locked_directory_is_a_clear_error(tmp_path: Path) -> None:
    first = open_store(tmp_path / "db")
    with pytest.raises(ConfigError) as info:
        open_store(tmp_path / "db")
    assert str(info.value).startswith(f"{tmp_path / 'db'}: cannot open LevelDB: IO error")
    first.close()
