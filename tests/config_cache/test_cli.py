from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from config_cache import CacheSettings, CallLog, ConfigError, open_store
from config_cache.cli import add_subcommands, node_db_dir

from .conftest import MongoServer


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="callengine")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_import_show_logs(tmp_path: Path, acme: Any, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "acme.json"
    file.write_text(json.dumps([acme()]))
    data = str(tmp_path / "db")
    assert run(["config", "import", str(file), "--data-dir", data]) == 0
    assert run(["config", "import", str(file), "--data-dir", data]) == 0  # same rev -> next rev
    assert capsys.readouterr().out.splitlines() == [
        "imported tenant acme rev 1",
        "imported tenant acme rev 2",
    ]
    assert run(["config", "show", "acme", "--data-dir", data]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["rev"] == 2 and shown["users"]["100"]["password"] == "********"

    store = open_store(node_db_dir(data))
    rec = CallLog(
        "abc@host",
        tenant="acme",
        caller="100",
        callee="+331",
        start_time=1e9,
        answer_time=1e9 + 2,
        end_time=1e9 + 32,
        result="completed",
        sip_status=200,
        q850_cause=16,
    )
    store.outbox.close_call(rec)
    shipped = CallLog("old@host", tenant="acme", start_time=1e9 - 100, end_time=1e9 - 50)
    store.outbox.close_call(shipped)
    store.outbox.mark_shipped([shipped], shipped_at=1e9)
    store.outbox.open_call(CallLog("live@host", tenant="acme", start_time=1e9 + 10))
    store.close()

    assert run(["logs", "--data-dir", data, "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["state"], x["call_id"]) for x in lines] == [
        ("shipped", "old@host"),
        ("final", "abc@host"),
        ("open", "live@host"),
    ]
    assert run(["logs", "--data-dir", data]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "STATE",
        "START",
        "(UTC)",
        "DUR",
        "TENANT",
        "FROM",
        "TO",
        "RESULT",
        "SIP",
        "Q850",
        "CALL-ID",
    ]
    assert table[2].split() == [
        "final",
        "2001-09-09",
        "01:46:40",
        "30s",
        "acme",
        "100",
        "+331",
        "completed",
        "200",
        "16",
        "abc@host",
    ]


def test_bad_file_exit_code(tmp_path: Path, acme: Any, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "acme.yaml"
    file.write_text("id: acme\nusers: {'100': {password: 7}}\n")
    assert run(["config", "import", str(file), "--data-dir", str(tmp_path / "db")]) == 2
    assert capsys.readouterr().err == (
        f"error: {file}: tenant 'acme': users.100.password: must be a non-empty string, "
        "not an integer\n"
    )


def test_push(
    tmp_path: Path, mongo: MongoServer, dbname: str, acme: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "acme.json"
    doc = acme()
    del doc["rev"]
    file.write_text(json.dumps(doc))
    argv = ["config", "push", str(file), "--master", mongo.url, "--database", dbname]
    assert run(argv) == 0 and run(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        "pushed tenant acme rev 1",
        "pushed tenant acme rev 2",
    ]
    with mongo.client() as client:
        stored = client[dbname].tenants.find_one({"_id": "acme"})
    assert stored is not None and stored["rev"] == 2 and "id" not in stored


def test_settings() -> None:
    s = CacheSettings.from_mapping({"master_url": "mongodb://m", "tenant_regions": {"a": "eu"}})
    assert s.master_url == "mongodb://m" and s.on_empty == "demo" and s.poll_interval == 5.0
    with pytest.raises(ConfigError) as info:
        CacheSettings.from_mapping({"poll_interval": "5"}, source="node.yaml")
    assert str(info.value) == "node.yaml: config_cache.poll_interval: must be int or float, not str"
    with pytest.raises(ConfigError, match=r"config_cache.on_empty: must be 'demo' or 'refuse'"):
        CacheSettings.from_mapping({"on_empty": "maybe"})
