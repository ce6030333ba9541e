"""The installer's pure parts: the generated configuration, the layout ``init`` writes,
and the provisioning plans (no servers; tests/integration/test_installer.py has them)."""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import yaml

from callengine.cli import main
from callengine.config import EngineConfig, StorageSettings, load_config, storage_settings
from callengine.installer import (
    CACHE_OWNED_BY_ENGINE,
    CONFIG_FILE,
    Change,
    Layout,
    PromptUpload,
    check,
    content_version,
    engine_options,
    init_layout,
    node_pid,
    option_docs,
    plan_prompts,
    plan_tenants,
    prompt_uploads,
    render_config,
    render_unit,
    stored_versions,
    with_prompt_versions,
)
from config_cache import CacheSettings, ConfigError, load_tenant_file, validate_tenant

ROOT = Path(__file__).resolve().parents[2]
ACME = ROOT / "tests" / "fixtures" / "tenants" / "installer_acme.yaml"
BUNDLED = ROOT / "media" / "prompts"


def test_every_option_is_documented_in_the_source() -> None:
    """The generated file takes its text from the code: an undocumented option fails."""
    for cls, skip in (
        (EngineConfig, {"source"}),
        (CacheSettings, CACHE_OWNED_BY_ENGINE),
        (StorageSettings, set()),
    ):
        docs = option_docs(cls)
        names = {f.name for f in fields(cls)} - skip
        assert names <= set(docs), cls
        assert [n for n in sorted(names) if not docs[n].strip()] == [], cls


def test_option_docs_reads_both_styles() -> None:
    assert option_docs(_Documented) == {
        "after": "Said after the field.",
        "above": "Said above the field, on two lines.",
        "bare": "",
    }


@dataclass
class _Documented:
    after: int = 1
    """Said after the field."""
    #: Said above the field,
    #: on two lines.
    above: str = "x"
    bare: bool = False


def test_generated_file_lists_every_option_and_loads_back_to_the_defaults(
    tmp_path: Path,
) -> None:
    text = render_config()
    path = tmp_path / CONFIG_FILE
    path.write_text(text)
    raw = yaml.safe_load(text)
    assert list(raw) == engine_options()  # every option EngineConfig accepts, in order
    assert set(raw["config_cache"]) == {f.name for f in fields(CacheSettings)} - set(
        CACHE_OWNED_BY_ENGINE
    )
    assert set(raw["media_storage"]) == {f.name for f in fields(StorageSettings)}

    cfg = load_config(path)
    default = EngineConfig()
    for name in engine_options():
        if name not in ("config_cache", "media_storage"):
            assert getattr(cfg, name) == getattr(default, name), name
    assert CacheSettings.from_mapping(cfg.config_cache) == CacheSettings()
    assert storage_settings(cfg) == StorageSettings()


def test_each_option_line_follows_its_documentation() -> None:
    lines = render_config().splitlines()
    for name in engine_options():
        row = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
        assert lines[row - 1].startswith("# "), name
    # RST markup becomes plain backquotes
    assert "``" not in "\n".join(lines)


def test_render_config_takes_values_and_refuses_unknown_names() -> None:
    text = render_config(listen=["10.0.0.5:5060"], media_storage={"kind": "azure"})
    raw = yaml.safe_load(text)
    assert raw["listen"] == ["10.0.0.5:5060"]
    assert raw["media_storage"]["kind"] == "azure"
    assert raw["media_storage"]["container"] == "callengine"
    with pytest.raises(ValueError, match="not options: lisen"):
        render_config(lisen=["x"])


def test_init_writes_a_layout_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    root = tmp_path / "node"
    layout = init_layout(root, user="callengine")
    assert layout.data.is_dir()
    assert stat.S_IMODE(layout.env.stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.config.stat().st_mode) == 0o640
    cfg = load_config(layout.config)
    assert cfg.data_dir == str(root.absolute() / "data")
    assert EngineConfig(data_dir=cfg.data_dir, source=cfg.source).listen == cfg.listen

    env = dict(
        line.split("=", 1)
        for line in layout.env.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert len(env["CALLENGINE_ADMIN_TOKEN"]) >= 32
    unit = layout.unit.read_text()
    assert "ExecStart=" in unit and f"serve --config {layout.config}" in unit
    assert f"EnvironmentFile={layout.env}" in unit
    assert "User=callengine" in unit
    assert "TimeoutStopSec=45" in unit  # drain_grace 30 + 15
    assert "LimitRTPRIO" not in unit  # media_priority 0: normal scheduling, nothing granted

    (layout.data / "keep").write_text("state")
    layout.config.write_text("max_calls: 5\n")
    with pytest.raises(
        FileExistsError, match="callengine.yaml, callengine.env, callengine.service"
    ):
        init_layout(root)
    assert layout.config.read_text() == "max_calls: 5\n"

    init_layout(root, force=True)
    assert load_config(layout.config).max_calls == 10000
    assert (layout.data / "keep").read_text() == "state"  # data is never touched


def test_init_refuses_a_value_the_config_would_reject(tmp_path: Path) -> None:
    root = tmp_path / "node"
    with pytest.raises(ConfigError) as err:
        init_layout(root, values={"listen": ["nonsense"]})
    assert str(err.value).startswith(f"{root / CONFIG_FILE}: listen[0]: bad listen address")
    assert not root.exists()  # nothing written
    init_layout(root)
    before = (root / CONFIG_FILE).read_text()
    with pytest.raises(ConfigError):
        init_layout(root, force=True, values={"listen": ["nonsense"]})
    assert (root / CONFIG_FILE).read_text() == before  # --force keeps a good file


def test_init_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "n1"
    assert main(["init", str(root), "--listen", "127.0.0.1:5070", "--node-id", "n1"]) == 0
    assert load_config(root / CONFIG_FILE).node_id == "n1"
    assert main(["init", str(root)]) == 2
    assert "--force" in capsys.readouterr().err
    media = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=aw==;BlobEndpoint=http://h/a;"
    assert main(["init", str(root), "--force", "--media", media, "--container", "pbx-1"]) == 0
    settings = storage_settings(load_config(root / CONFIG_FILE))
    assert (settings.kind, settings.connection_string, settings.container) == (
        "azure",
        media,
        "pbx-1",
    )


# ------------------------------------------------------------------ provisioning plans
def _acme(**changes: object) -> dict[str, object]:
    doc = load_tenant_file(ACME)[0].to_doc()
    doc.update(changes)
    return doc


def test_plan_tenants_create_unchanged_update() -> None:
    tenant = validate_tenant(_acme())
    assert plan_tenants([tenant], {}) == [Change("tenant", "acme", "create", "rev 1")]

    stored = {"acme": {**_acme(), "_id": "acme", "rev": 4}}
    stored["acme"].pop("id")
    assert plan_tenants([tenant], stored) == [Change("tenant", "acme", "unchanged", "rev 4")]
    renamed = validate_tenant(_acme(name="Acme Corp"))
    assert plan_tenants([renamed], stored) == [
        Change("tenant", "acme", "update", "rev 4 -> 5, changed")
    ]
    ahead = validate_tenant(_acme(name="Acme Corp", rev=9))  # a higher rev wins, as in push
    assert plan_tenants([ahead], stored)[0].detail == "rev 4 -> 9, changed"
    # a rev alone is no change: provisioning twice must not bump it
    assert plan_tenants([validate_tenant(_acme(rev=9))], stored)[0].action == "unchanged"


def test_prompt_versions_follow_the_audio_and_show_in_the_plan() -> None:
    tenant = load_tenant_file(ACME)[0]
    one, two = content_version(b"RIFF-one"), content_version(b"RIFF-two")
    assert one == "59cd0bfa45f8be3f6a948a2f5511bde2" and one != two  # the MD5 of the bytes, in hex
    v1 = with_prompt_versions(tenant, {"promo": one, "absent": two})
    assert v1.prompts["promo"].version == one and "absent" not in v1.prompts
    assert with_prompt_versions(v1, {"promo": one}) is v1

    stored = {"acme": {**v1.to_doc(), "_id": "acme", "rev": 1}}
    assert plan_tenants([v1], stored)[0].action == "unchanged"  # same audio: idempotent
    v2 = with_prompt_versions(tenant, {"promo": two})
    assert plan_tenants([v2], stored) == [
        Change(
            "tenant", "acme", "update", f"rev 1 -> 2, prompt promo version {one[:8]} -> {two[:8]}"
        )
    ]
    renamed = with_prompt_versions(validate_tenant(_acme(name="Acme Corp")), {"promo": two})
    assert plan_tenants([renamed], stored)[0].detail == (
        f"rev 1 -> 2, changed, prompt promo version {one[:8]} -> {two[:8]}"
    )
    # without --prompts the audio is not touched: the master's version is kept
    assert stored_versions(tenant, stored["acme"]) == {"promo": one}
    moved = validate_tenant(_acme(prompts={"promo": {"file": "acme/other.wav"}}))
    assert stored_versions(moved, stored["acme"]) == {}  # another file: the version is not its
    assert stored_versions(v2, stored["acme"]) == {}  # it has its own
    assert stored_versions(tenant, None) == {}


def test_plan_tenants_replaces_an_invalid_stored_document() -> None:
    tenant = validate_tenant(_acme())
    stored = {"acme": {"_id": "acme", "rev": 2, "users": {"100": {"password": 7}}}}
    (change,) = plan_tenants([tenant], stored)
    assert change.action == "update"
    assert "stored document is invalid" in change.detail and "users.100" not in change.name


def test_plan_prompts(tmp_path: Path) -> None:
    wav = tmp_path / "promo.wav"
    wav.write_bytes(b"RIFF-new")
    up = PromptUpload("acme", "promo.wav", wav, "prompts.promo.file")
    blobs: dict[tuple[str, str], bytes] = {}

    def stored(tenant: str, key: str) -> bytes | None:
        return blobs.get((tenant, key))

    def listed(tenant: str, prefix: str) -> list[str]:
        return sorted(k for t, k in blobs if t == tenant and k.startswith(prefix))

    (create,) = plan_prompts([up], stored, listed)
    assert (create.name, create.action) == ("acme/prompts/promo.wav", "create")
    blobs[("acme", "promo.wav")] = b"RIFF-old"
    blobs[("acme", "promo.flac")] = b"fLaC"  # found first by nobody, but stale
    blobs[("acme", "promo.txt")] = b"notes"  # not audio: left alone
    blobs[("acme", "promotion.wav")] = b"RIFF"  # another prompt
    assert [(c.name, c.action) for c in plan_prompts([up], stored, listed)] == [
        ("acme/prompts/promo.wav", "update"),
        ("acme/prompts/promo.flac", "delete"),
    ]
    blobs[("acme", "promo.wav")] = b"RIFF-new"
    del blobs[("acme", "promo.flac")]
    assert [c.action for c in plan_prompts([up], stored, listed)] == ["unchanged"]
    assert Change("prompt", "x", "create").line(dry_run=True) == "prompt x: would create"
    assert Change("prompt", "x", "unchanged").line(dry_run=True) == "prompt x: unchanged"


def test_prompt_uploads_name_file_tenant_and_field(tmp_path: Path) -> None:
    tenant = load_tenant_file(ACME)[0]
    with pytest.raises(ConfigError) as err:
        prompt_uploads(tenant, tmp_path, source=str(ACME))
    assert str(err.value).startswith(f"{ACME}: tenant 'acme': prompts.promo.file: no such file")

    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "promo.wav").write_bytes((BUNDLED / "welcome.wav").read_bytes())
    (up,) = prompt_uploads(tenant, tmp_path, source=str(ACME))
    assert (up.tenant, up.key, up.where) == ("acme", "promo.wav", "prompts.promo.file")

    for file, message in (("../etc/passwd.wav", "invalid segment"), ("acme/promo.mp3", "not one")):
        bad = validate_tenant(_acme(prompts={"promo": {"file": file}}))
        with pytest.raises(ConfigError, match=f"tenant 'acme': prompts.promo.file: .*{message}"):
            prompt_uploads(bad, tmp_path, source="t.yaml")


def test_check_looks_at_the_web_phone_port(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    with socket.socket() as squatter:  # another program's web server on that port
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config.write_text(
            "listen: ['127.0.0.1:0']\nmetrics: null\nadmin: null\n"
            f"webphone: '127.0.0.1:{port}'\ndata_dir: {tmp_path / 'data'}\n"
        )
        (taken,) = [f.line() for f in check(str(config)) if "(webphone)" in f.what]
    assert taken.startswith(
        f"FAIL  port {port}/tcp on 127.0.0.1 (webphone): in use by pid {os.getpid()} ("
    ), taken
    (free,) = [f.line() for f in check(str(config)) if "(webphone)" in f.what]
    assert free == f"ok    port {port}/tcp on 127.0.0.1 (webphone): free"


def test_check_stops_at_a_configuration_error_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "node.yaml"
    bad.write_text("max_calls: many\n")
    assert [f.line() for f in check(str(bad))] == [
        f"FAIL  configuration: {bad}: max_calls: expected int, got str"
    ]
    assert main(["check", "--config", str(tmp_path / "absent.yaml")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"FAIL  configuration: {tmp_path / 'absent.yaml'}: no such file",
        "check: 1 problem(s)",
    ]
    assert node_pid(str(tmp_path)) is None  # no LevelDB: no running node


def test_the_unit_lets_the_media_plane_take_its_priority_and_no_more(tmp_path: Path) -> None:
    layout = Layout(tmp_path)

    def unit(priority: int) -> list[str]:
        text = render_unit(layout, user="callengine", drain_grace=30, media_priority=priority)
        return [line for line in text.splitlines() if line.startswith("LimitRTPRIO")]

    assert unit(10) == ["LimitRTPRIO=10"]
    assert unit(30) == ["LimitRTPRIO=30"]
    assert unit(0) == []  # normal scheduling (the default): nothing granted
