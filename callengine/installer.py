"""The installer: ``callengine init``, ``callengine provision`` and ``callengine check``.

Theory of operation:

- ``init DIR`` writes a node layout: ``callengine.yaml`` (every option of
  :class:`~callengine.config.EngineConfig`, of its ``config_cache:`` section
  (:class:`~config_cache.CacheSettings`) and of its ``media_storage:`` section
  (:class:`~callengine.config.StorageSettings`), each with its default and the
  documentation written next to the field in the source), ``callengine.env``
  (the secrets systemd passes as environment), ``callengine.service`` (a systemd
  unit) and ``data/``. The option list and the text come from the dataclasses
  themselves (:func:`option_docs` reads their attribute docstrings), so a new
  option appears in the next generated file without anyone editing this module.
  Nothing is started.
- ``provision`` reads tenant files (validated by ``config_cache``'s schema, so
  mistakes name file, tenant and field), compares them with what the master
  Configuration DB and Media Storage hold (:func:`plan_tenants`,
  :func:`plan_prompts`: pure), prints one line per object and applies only the
  differences: running it twice changes nothing the second time. Prompts go up
  before the tenant documents that name them, so a node that follows the
  master never sees a tenant whose prompts are missing.
- ``check`` loads a node's configuration and reports one line per check (``ok``
  or ``FAIL``): ports free or held by this node, Python dependencies, TLS files,
  the data directory, and whether the master, the History DB and Media Storage
  answer within a short timeout (all three probed at once).

Only ``config_cache._mongo`` talks to MongoDB and only ``media.azure`` to Azure Blob;
this module uses their interfaces.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import getpass
import hashlib
import importlib
import importlib.metadata
import inspect
import json
import os
import re
import secrets
import shlex
import socket
import sys
import tempfile
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from config_cache import CacheSettings, ConfigError, TenantConfig, UpstreamError, validate_tenant

from .config import EngineConfig, StorageSettings, load_config, storage_settings

__all__ = [
    "CACHE_OWNED_BY_ENGINE",
    "CONFIG_FILE",
    "ENV_FILE",
    "UNIT_FILE",
    "Change",
    "Finding",
    "Layout",
    "PromptUpload",
    "add_subcommands",
    "check",
    "content_version",
    "engine_options",
    "init_layout",
    "node_pid",
    "option_docs",
    "plan_prompts",
    "plan_tenants",
    "prompt_uploads",
    "provision",
    "render_config",
    "render_env",
    "render_unit",
    "stored_versions",
    "with_prompt_versions",
]

CONFIG_FILE = "callengine.yaml"
ENV_FILE = "callengine.env"
UNIT_FILE = "callengine.service"
DATA_DIR = "data"

CACHE_OWNED_BY_ENGINE = frozenset({"data_dir", "on_empty", "master_url", "history_url"})
"""``config_cache`` keys the node sets from the top-level options (``callengine/node.py``):
not written into the section, where they would have no effect."""

_WIDTH = 88


# ---------------------------------------------------------------- option docs
def option_docs(cls: type) -> dict[str, str]:
    """Field name -> documentation, as written next to each field of dataclass ``cls``.

    Both house styles count: a string right after the field (attribute docstring) and
    ``#:`` comment lines right above it. A field with neither maps to ``""`` (the
    installer's test fails on it: every option must be documented).
    """
    module = sys.modules[cls.__module__]
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):  # installed without its .py files: names and values only
        return {f.name: "" for f in fields(cls)}
    lines = source.splitlines()
    tree = ast.parse(source)
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs: dict[str, str] = {}
    body = klass.body
    for i, stmt in enumerate(body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        text = ""
        after = body[i + 1] if i + 1 < len(body) else None
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            text = inspect.cleandoc(after.value.value)
        else:
            comments: list[str] = []
            row = stmt.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#:"):
                comments.insert(0, lines[row].strip()[2:].strip())
                row -= 1
            text = " ".join(comments)
        docs[stmt.target.id] = text
    return docs


def _comment(text: str, indent: str) -> list[str]:
    """Documentation as YAML comment lines (RST ``literals`` shown as `literals`)."""
    text = re.sub(r":(?:class|func|meth|attr):`~?([^`]+)`", r"\1", text).replace("``", "`")
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        flat = " ".join(para.split())
        out += textwrap.wrap(
            flat,
            _WIDTH - len(indent) - 2,
            initial_indent=f"{indent}# ",
            subsequent_indent=f"{indent}# ",
            break_on_hyphens=False,
        )
    return out


def _value(value: Any) -> str:
    # JSON is YAML's flow style: exact for every default (strings quoted, null, lists)
    return json.dumps(value)


def _defaults(cls: type) -> dict[str, Any]:
    obj = cls()
    return {f.name: getattr(obj, f.name) for f in fields(cls)}


def engine_options() -> list[str]:
    """Every option a node configuration file may set (``source`` is the loader's)."""
    return [f.name for f in fields(EngineConfig) if f.name != "source"]


def render_config(**values: Any) -> str:
    """The text of a node configuration file: every option, documented, with its default
    or the value given in ``values`` (top-level options, plus ``config_cache`` and
    ``media_storage`` mappings merged over their defaults)."""
    unknown = set(values) - set(engine_options())
    if unknown:
        raise ValueError(f"not options: {', '.join(sorted(unknown))}")
    docs = option_docs(EngineConfig)
    top = {**_defaults(EngineConfig), **values}
    sections: dict[str, tuple[type, dict[str, Any], frozenset[str]]] = {
        "config_cache": (
            CacheSettings,
            {**_defaults(CacheSettings), **values.get("config_cache", {})},
            CACHE_OWNED_BY_ENGINE,
        ),
        "media_storage": (
            StorageSettings,
            {**_defaults(StorageSettings), **values.get("media_storage", {})},
            frozenset(),
        ),
    }
    out = [
        "# callengine node configuration, written by `callengine init`.",
        "#",
        "# Every option is listed with its default (or the value given to `init`), each",
        "# documented as in the code (callengine/config.py, config_cache/settings.py).",
        "# Reference: docs/install.md, docs/config.md, docs/storage.md, docs/admin.md.",
        "# Check it with `callengine check --config THIS_FILE`.",
    ]
    for name in engine_options():
        out.append("")
        doc = docs.get(name, "")
        out += _comment(doc, "") if doc else []
        if name in sections:
            cls, section, skip = sections[name]
            sub_docs = option_docs(cls)
            out.append(f"{name}:")
            for key, value in section.items():
                if key in skip:
                    continue
                out += _comment(sub_docs.get(key, ""), "  ")
                out.append(f"  {key}: {_value(value)}")
        else:
            out.append(f"{name}: {_value(top[name])}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------ init
@dataclass(frozen=True, slots=True)
class Layout:
    """Where ``init`` puts a node's files."""

    root: Path
    notes: list[str] = field(default_factory=list)
    """What ``init`` could not do itself (printed for the operator)."""

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def env(self) -> Path:
        return self.root / ENV_FILE

    @property
    def unit(self) -> Path:
        return self.root / UNIT_FILE

    @property
    def data(self) -> Path:
        return self.root / DATA_DIR

    def files(self) -> list[Path]:
        return [self.config, self.env, self.unit]


def _serve_command(config: Path) -> str:
    """The ExecStart line: this installation's ``callengine`` (its console script next
    to the interpreter, else ``python -m callengine.cli``)."""
    script = Path(sys.executable).with_name("callengine")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "callengine.cli"]
    return shlex.join([*argv, "serve", "--config", str(config)])


def render_env(admin_token: str) -> str:
    """The environment file systemd gives the node (``EnvironmentFile=``)."""
    return (
        "# Environment of this callengine node: systemd reads it (EnvironmentFile=), and\n"
        "# `set -a; . ./callengine.env; set +a` gives it to `callengine ctl` in a shell.\n"
        "# Keep it private (mode 0600): it holds secrets the config file does not.\n"
        "\n"
        "# Bearer token of the control API (docs/admin.md); wins over admin_token.\n"
        f"CALLENGINE_ADMIN_TOKEN={admin_token}\n"
        "\n"
        "# Log lines reach journald as they are written.\n"
        "PYTHONUNBUFFERED=1\n"
    )


def render_unit(layout: Layout, *, user: str, drain_grace: float, media_priority: int = 0) -> str:
    """A systemd service for the node in ``layout`` (not installed, not started)."""
    root = str(layout.root)
    return (
        "# systemd unit of the callengine node in " + root + ", written by `callengine init`.\n"
        "# Install: systemctl link " + str(layout.unit) + " && systemctl enable --now callengine\n"
        "[Unit]\n"
        "Description=callengine call-server node (" + root + ")\n"
        "Documentation=file://" + root + "/" + CONFIG_FILE + "\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        f"User={user}\n"
        f"WorkingDirectory={root}\n"
        f"EnvironmentFile={layout.env}\n"
        f"ExecStart={_serve_command(layout.config)}\n"
        "# SIGTERM drains: new calls get 503 while active calls have drain_grace seconds\n"
        "KillSignal=SIGTERM\n"
        f"TimeoutStopSec={int(drain_grace) + 15}\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "# two sockets per call (RTP, RTCP) plus SIP connections\n"
        "LimitNOFILE=65536\n"
        "# SIP on a port below 1024 (5060 is not) needs this capability\n"
        "AmbientCapabilities=CAP_NET_BIND_SERVICE\n"
        + _rtprio(media_priority)
        + "NoNewPrivileges=yes\n"
        "PrivateTmp=yes\n"
        "ProtectSystem=full\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def _rtprio(media_priority: int) -> str:
    """The unit's lines that let the node's user run the media plane under SCHED_FIFO
    at its ``media_priority`` (RLIMIT_RTPRIO: no capability, no power over other
    processes); none when it is 0."""
    if not media_priority:
        return ""
    return (
        "# the media plane's loop under SCHED_FIFO at media_priority (docs/media-plane.md)\n"
        f"LimitRTPRIO={media_priority}\n"
    )


def _default_user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        return "callengine"
    return "callengine" if user == "root" else user


def init_layout(
    root: str | os.PathLike[str],
    *,
    force: bool = False,
    user: str | None = None,
    values: Mapping[str, Any] | None = None,
) -> Layout:
    """Write the node layout under ``root`` (created if missing).

    ``values``: options to set instead of their defaults (``data_dir`` is always the
    layout's ``data/``). Raises :class:`FileExistsError` naming the files of an existing
    layout unless ``force`` (the data directory is never touched beyond ``mkdir``), and
    :class:`ConfigError` when the written configuration does not load (a bad value).
    """
    layout = Layout(Path(root).absolute())
    existing = [p for p in layout.files() if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"{layout.root} already holds a node layout ({', '.join(p.name for p in existing)}); "
            "--force rewrites these files (data/ is kept)"
        )
    chosen = dict(values or {})
    chosen["data_dir"] = str(layout.data)
    text = render_config(**chosen)
    with tempfile.TemporaryDirectory() as scratch:  # load it before anything is written
        trial = Path(scratch) / CONFIG_FILE
        trial.write_text(text, encoding="utf-8")
        try:
            cfg = load_config(trial)
        except ConfigError as exc:
            raise ConfigError(
                exc.message, file=str(layout.config), tenant=exc.tenant, field=exc.field
            ) from None
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.data.mkdir(mode=0o750, exist_ok=True)
    _write(layout.config, text, 0o640)
    _write(layout.env, render_env(secrets.token_urlsafe(24)), 0o600)
    user = user or _default_user()
    _write(
        layout.unit,
        render_unit(
            layout, user=user, drain_grace=cfg.drain_grace, media_priority=cfg.media_priority
        ),
        0o644,
    )
    layout.notes.extend(_hand_over(layout, user))
    return layout


def _hand_over(layout: Layout, user: str) -> list[str]:
    """Run as root: give the service user its data directory and read access to the
    config (the environment file stays root's: systemd reads it before switching user).
    Returns what is left for the operator to do."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return [
            f"user {user} does not exist: useradd --system --no-create-home {user} && "
            f"chown {user}: {layout.data} && chgrp {user} {layout.config}"
        ]
    os.chown(layout.data, entry.pw_uid, entry.pw_gid)
    os.chown(layout.config, 0, entry.pw_gid)
    return []


def _write(path: Path, text: str, mode: int) -> None:
    """Write through a temporary file with ``mode`` from the start (a secret never sits in
    a world-readable file), then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# ------------------------------------------------------------------- provision
@dataclass(frozen=True, slots=True)
class Change:
    """One object ``provision`` looked at: what it is, and what it does (or would do)."""

    kind: str
    """``tenant`` or ``prompt``."""
    name: str
    """Tenant id, or blob name ``<tenant>/prompts/<key>``."""
    action: str
    """``create``, ``update``, ``delete`` or ``unchanged``."""
    detail: str = ""

    @property
    def changes(self) -> bool:
        return self.action != "unchanged"

    def line(self, *, dry_run: bool) -> str:
        verb = self.action if not dry_run or not self.changes else f"would {self.action}"
        tail = f" ({self.detail})" if self.detail else ""
        return f"{self.kind} {self.name}: {verb}{tail}"


def _without_rev(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "rev"}


def _short(version: Any) -> str:
    """A version as a plan line shows it: content hashes abbreviated, as git does."""
    text = str(version)
    return text[:8] if re.fullmatch(r"[0-9a-f]{32}", text) else text


def _version_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``prompt <name> version <a> -> <b>`` for each prompt both documents name with
    the same file but another version (the nodes fetch those again)."""
    out = []
    old_prompts, new_prompts = old.get("prompts") or {}, new.get("prompts") or {}
    for name, prompt in sorted(new_prompts.items()):
        before = old_prompts.get(name)
        if before is None or before.get("file") != prompt.get("file"):
            continue
        if before.get("version") != prompt.get("version"):
            was, now = before.get("version"), prompt.get("version")
            out.append(f"prompt {name} version {_short(was)} -> {_short(now)}")
    return out


def _without_versions(doc: Mapping[str, Any]) -> dict[str, Any]:
    prompts = {
        name: {k: v for k, v in prompt.items() if k != "version"}
        for name, prompt in (doc.get("prompts") or {}).items()
    }
    return {**_without_rev(doc), "prompts": prompts}


def plan_tenants(
    tenants: Sequence[TenantConfig],
    stored: Mapping[str, Mapping[str, Any]],
    *,
    source: str = "master",
) -> list[Change]:
    """Compare tenants from files with the master's documents (by id).

    A tenant whose document (all but ``rev``) matches is unchanged. A new prompt
    ``version`` (``provision`` sets it from the uploaded audio: :func:`content_version`)
    is a change, shown as ``prompt <name> version <old> -> <new>``: the nodes fetch a
    prompt again only when its file or version changes. The rev written is the one
    ``MongoMaster.push`` picks: stored + 1, or the file's own rev when higher.
    """
    plan: list[Change] = []
    for tenant in tenants:
        doc = stored.get(tenant.id)
        if doc is None:
            plan.append(Change("tenant", tenant.id, "create", f"rev {max(1, tenant.rev)}"))
            continue
        old_rev = doc.get("rev", 0)
        old_rev = old_rev if isinstance(old_rev, int) and not isinstance(old_rev, bool) else 0
        new_rev = max(old_rev + 1, tenant.rev)
        new = tenant.to_doc()
        try:
            old = validate_tenant(doc, file=source).to_doc()
        except ConfigError as exc:
            reasons = [f"stored document is invalid: {exc.message}"]
        else:
            reasons = [] if _without_versions(old) == _without_versions(new) else ["changed"]
            reasons += _version_changes(old, new)
            if not reasons and _without_rev(old) != _without_rev(new):
                reasons = ["changed"]  # a version set or cleared
        if not reasons:
            plan.append(Change("tenant", tenant.id, "unchanged", f"rev {old_rev}"))
        else:
            detail = f"rev {old_rev} -> {new_rev}, {', '.join(reasons)}"
            plan.append(Change("tenant", tenant.id, "update", detail))
    return plan


def content_version(data: bytes) -> str:
    """The ``version`` ``provision`` gives a prompt it uploads: the MD5 of the audio
    file's bytes (hex; the digest Azure keeps as the blob's Content-MD5). New audio is
    a new version, so the nodes fetch it; the same audio keeps its version, so running
    ``provision`` again changes nothing."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def with_prompt_versions(
    tenant: TenantConfig, versions: Mapping[str, str], *, source: str | None = None
) -> TenantConfig:
    """``tenant`` with ``prompts.<name>.version`` set from ``versions`` (by prompt name)."""
    doc = tenant.to_doc()
    prompts = doc.get("prompts") or {}
    changed = False
    for name, version in versions.items():
        if name in prompts and prompts[name].get("version") != version:
            prompts[name]["version"] = version
            changed = True
    return validate_tenant(doc, file=source) if changed else tenant


def stored_versions(tenant: TenantConfig, doc: Mapping[str, Any] | None) -> dict[str, str]:
    """The versions the master holds for the tenant's prompts that name the same file
    and no version of their own: kept when ``provision`` runs without ``--prompts``
    (it does not touch the audio, so the version it set last time still holds)."""
    if doc is None or not isinstance(doc.get("prompts"), Mapping):
        return {}
    out = {}
    for name, prompt in tenant.prompts.items():
        old = doc["prompts"].get(name)
        if prompt.version is None and isinstance(old, Mapping) and old.get("file") == prompt.file:
            if old.get("version") is not None:
                out[name] = str(old["version"])
    return out


@dataclass(frozen=True, slots=True)
class PromptUpload:
    """A tenant prompt to put in Media Storage: ``<tenant>/prompts/<key>`` from ``path``."""

    tenant: str
    key: str
    path: Path
    where: str
    """Where it is named in the tenant document: ``prompts.<name>.file``."""


def prompt_uploads(
    tenant: TenantConfig, prompts_dir: Path, *, source: str | None = None
) -> list[PromptUpload]:
    """The tenant's prompts as files under ``prompts_dir`` (``prompts.<name>.file``
    relative to it), stored under the key the prompt cache looks up: the prompt's name
    plus the file's audio extension. :class:`ConfigError` names file, tenant and field."""
    from media.prompts import AUDIO_EXTENSIONS
    from media.storage import validate_key

    out: list[PromptUpload] = []
    for name, prompt in sorted(tenant.prompts.items()):
        where = f"prompts.{name}.file"
        try:
            validate_key(prompt.file)
        except ValueError as exc:
            raise ConfigError(str(exc), file=source, tenant=tenant.id, field=where) from None
        suffix = Path(prompt.file).suffix.lower()
        if suffix not in AUDIO_EXTENSIONS:
            raise ConfigError(
                f"{prompt.file!r} is not one of {', '.join(AUDIO_EXTENSIONS)}",
                file=source,
                tenant=tenant.id,
                field=where,
            )
        path = prompts_dir / prompt.file
        if not path.is_file():
            raise ConfigError(f"no such file: {path}", file=source, tenant=tenant.id, field=where)
        out.append(PromptUpload(tenant.id, name + suffix, path, where))
    return out


def plan_prompts(
    uploads: Sequence[PromptUpload],
    stored: Callable[[str, str], bytes | None],
    listed: Callable[[str, str], Sequence[str]],
) -> list[Change]:
    """Compare prompt files with Media Storage: ``stored(tenant, key)`` is the blob's bytes
    or None; ``listed(tenant, prefix)`` the prompt keys starting with ``prefix``.

    A stored prompt of the same name under another audio extension is deleted: the prompt
    cache would otherwise keep finding the old one first.
    """
    from media.prompts import AUDIO_EXTENSIONS

    plan: list[Change] = []
    for up in uploads:
        name = f"{up.tenant}/prompts/{up.key}"
        data = up.path.read_bytes()
        old = stored(up.tenant, up.key)
        if old is None:
            plan.append(Change("prompt", name, "create", f"{len(data)} bytes from {up.path}"))
        elif old != data:
            plan.append(Change("prompt", name, "update", f"{len(data)} bytes from {up.path}"))
        else:
            plan.append(Change("prompt", name, "unchanged"))
        stem = up.key.rsplit(".", 1)[0]
        for key in listed(up.tenant, stem + "."):
            if key != up.key and key[len(stem) :].lower() in AUDIO_EXTENSIONS:
                plan.append(
                    Change(
                        "prompt", f"{up.tenant}/prompts/{key}", "delete", f"replaced by {up.key}"
                    )
                )
    return plan


def _read_tenants(files: Sequence[str]) -> tuple[list[TenantConfig], dict[str, str]]:
    from config_cache import load_tenant_file

    tenants: list[TenantConfig] = []
    origin: dict[str, str] = {}
    for name in files:
        for tenant in load_tenant_file(name):
            if tenant.id in origin:
                raise ConfigError(
                    f"tenant also defined in {origin[tenant.id]}",
                    file=name,
                    tenant=tenant.id,
                    field="id",
                )
            origin[tenant.id] = name
            tenants.append(tenant)
    return tenants, origin


def provision(
    *,
    master_url: str,
    media: str,
    tenant_files: Sequence[str] = (),
    prompts_dir: str | None = None,
    dry_run: bool = False,
    database: str = "callengine",
    container: str = "callengine",
    timeout: float = 10.0,
    out: Callable[[str], None] = print,
) -> list[Change]:
    """Bring the master and Media Storage in line with the tenant files (see the module
    docstring). Raises :class:`ConfigError` (bad files) or :class:`UpstreamError`."""
    from config_cache import MongoMaster
    from media.azure import AzureBlobStorage, StorageError

    tenants, origin = _read_tenants(tenant_files)
    uploads: list[PromptUpload] = []
    if prompts_dir is not None:
        for tenant in tenants:
            uploads += prompt_uploads(tenant, Path(prompts_dir), source=origin[tenant.id])
    else:
        for tenant in tenants:
            if tenant.prompts:
                out(
                    f"tenant {tenant.id}: {len(tenant.prompts)} prompt(s) not uploaded "
                    "(no --prompts DIR)"
                )
    try:
        storage = AzureBlobStorage(connection_string=media, container=container, timeout=timeout)
    except ValueError as exc:
        raise ConfigError(f"not an Azure connection string: {exc}", field="--media") from None

    def stored(tenant: str, key: str) -> bytes | None:
        try:
            return storage.get(tenant, "prompts", key)
        except FileNotFoundError:
            return None

    master = MongoMaster(master_url, database=database, timeout=timeout)
    try:
        try:
            prompt_plan = plan_prompts(
                uploads, stored, lambda t, prefix: storage.list(t, "prompts", prefix)
            )
            docs = (
                {str(d["_id"]): d for d in master.fetch([t.id for t in tenants])} if tenants else {}
            )
            # each prompt's version follows its audio: new audio reaches the nodes
            versions: dict[str, dict[str, str]] = {}
            for up in uploads:
                name = os.path.splitext(up.key)[0]
                versions.setdefault(up.tenant, {})[name] = content_version(up.path.read_bytes())
            if prompts_dir is None:  # the audio is not touched: keep the master's versions
                versions = {t.id: stored_versions(t, docs.get(t.id)) for t in tenants}
            tenants = [
                with_prompt_versions(t, versions.get(t.id, {}), source=origin[t.id])
                for t in tenants
            ]
            tenant_plan = plan_tenants(tenants, docs, source=f"master {database}")
            by_key = {f"{u.tenant}/prompts/{u.key}": u for u in uploads}
            for change in prompt_plan:
                if change.changes and not dry_run:
                    owner, _, key = change.name.split("/", 2)
                    if change.action == "delete":
                        storage.delete(owner, "prompts", key)
                    else:
                        storage.put(owner, "prompts", key, by_key[change.name].path.read_bytes())
                out(change.line(dry_run=dry_run))
            by_id = {t.id: t for t in tenants}
            for change in tenant_plan:
                if change.changes and not dry_run:
                    doc = by_id[change.name].to_doc()
                    if by_id[change.name].rev == 0:
                        doc.pop("rev", None)
                    master.push(doc)
                out(change.line(dry_run=dry_run))
        except StorageError as exc:
            raise UpstreamError(f"media storage: {exc}") from None
    finally:
        master.close()
        with contextlib.suppress(Exception):
            import asyncio

            asyncio.run(storage.close())
    plan = prompt_plan + tenant_plan
    count = sum(c.changes for c in plan)
    if not count:
        out("provision: nothing to change")
    elif dry_run:
        out(f"provision: dry run, {count} change(s) not made")
    else:
        out(f"provision: {count} change(s) made")
    return plan


# ----------------------------------------------------------------------- check
@dataclass(frozen=True, slots=True)
class Finding:
    """One line of ``callengine check``."""

    ok: bool
    what: str
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.what}: {self.detail}"


_PROC_NET = {"udp": ("udp", "udp6"), "tcp": ("tcp", "tcp6")}


def _bound(proto: str) -> dict[int, set[int]]:
    """Port -> inodes of the sockets bound to it (``/proc/net``; TCP: listening only)."""
    found: dict[int, set[int]] = {}
    for table in _PROC_NET[proto]:
        try:
            rows = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or (proto == "tcp" and cols[3] != "0A"):  # 0A: LISTEN
                continue
            found.setdefault(int(cols[1].rsplit(":", 1)[1], 16), set()).add(int(cols[9]))
    return found


def _socket_inodes(proto: str, port: int) -> set[int]:
    """Inodes of the sockets bound to ``port``."""
    return _bound(proto).get(port, set())


def _socket_owners(inodes: set[int]) -> dict[int, str]:
    """pid -> command of the processes (readable by us) holding any of ``inodes``."""
    wanted = {f"socket:[{i}]" for i in inodes}
    owners: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue  # closed while we looked: a busy process must not hide
            if link in wanted:
                with contextlib.suppress(OSError):
                    cmd = (proc / "cmdline").read_bytes().split(b"\0")
                    owners[int(proc.name)] = " ".join(
                        c.decode(errors="replace") for c in cmd[:3] if c
                    )
                break
    return owners


def _process_sockets(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds."""
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    out.add(int(link[8:-1]))
    return out


def node_pid(data_dir: str) -> int | None:
    """The pid of the process holding this node's LevelDB lock (the running node), from
    ``/proc/locks``; None when no process holds it."""
    lock = Path(data_dir) / "leveldb" / "LOCK"
    try:
        inode = lock.stat().st_ino
        rows = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for row in rows:
        cols = row.split()
        # "1: POSIX  ADVISORY  WRITE 4242 08:01:1234567 0 EOF"
        if len(cols) >= 6 and cols[1] == "POSIX" and cols[5].rsplit(":", 1)[-1] == str(inode):
            with contextlib.suppress(ValueError):
                return int(cols[4])
    return None


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind_error(host: str, port: int, proto: str) -> OSError | None:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    try:
        with socket.socket(_family(host), kind) as s:
            if proto == "tcp":  # as servers bind: TIME_WAIT leftovers do not count
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        return exc
    return None


def _port_finding(what: str, host: str, port: int, proto: str, pid: int | None) -> Finding:
    label = f"port {port}/{proto} on {host} ({what})"
    err = _bind_error(host, port, proto)
    if err is None:
        return Finding(True, label, "free")
    owners = _socket_owners(_socket_inodes(proto, port))
    if pid is not None and pid in owners:
        return Finding(True, label, f"held by this node (pid {pid})")
    if owners:
        who = ", ".join(f"pid {p} ({cmd})" for p, cmd in sorted(owners.items()))
        return Finding(False, label, f"in use by {who}")
    return Finding(False, label, f"cannot bind: {err.strerror or err}")


def _rtp_findings(cfg: EngineConfig, hosts: Sequence[str], pid: int | None) -> list[Finding]:
    lo, hi = cfg.rtp_port_min, cfg.rtp_port_max
    out: list[Finding] = []
    try:
        first, last = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        first = last = 0
    if first and lo <= last and first <= hi:
        out.append(
            Finding(
                False,
                f"RTP ports {lo}-{hi}",
                f"overlap the kernel's ephemeral ports {first}-{last} "
                "(net.ipv4.ip_local_port_range): outgoing connections take RTP ports",
            )
        )
    for host in hosts:
        busy = [p for p in range(lo, hi + 1) if _bind_error(host, p, "udp") is not None]
        if busy and pid is not None:
            mine, bound = _process_sockets(pid), _bound("udp")
            busy = [p for p in busy if not bound.get(p, set()) & mine]
        label = f"RTP ports {lo}-{hi}/udp on {host}"
        if busy:
            sample = ", ".join(map(str, busy[:5])) + (", ..." if len(busy) > 5 else "")
            out.append(
                Finding(False, label, f"{len(busy)} of {hi - lo + 1} in use by others: {sample}")
            )
        else:
            out.append(Finding(True, label, "free or held by this node"))
    return out


def _port_findings(cfg: EngineConfig, pid: int | None) -> list[Finding]:
    from .transport import parse_listen

    out: list[Finding] = []
    hosts: list[str] = []
    for item in cfg.listen:
        host, port = parse_listen(item)
        if host not in hosts:
            hosts.append(host)
        if port == 0:
            continue
        for transport in cfg.transports:
            if transport in ("UDP", "TCP"):
                out.append(_port_finding("SIP", host, port, transport.lower(), pid))
        if cfg.tls_cert:
            out.append(_port_finding("SIP TLS", host, cfg.tls_port, "tcp", pid))
        for name in ("ws_port", "wss_port"):
            ws = getattr(cfg, name)
            if ws:
                out.append(_port_finding(f"SIP {name}", host, ws, "tcp", pid))
    for name in ("metrics", "admin", "webphone"):
        address = getattr(cfg, name)
        if address:
            host, port = parse_listen(address)
            if port:
                out.append(_port_finding(name, host, port, "tcp", pid))
    if cfg.media:
        out += _rtp_findings(cfg, hosts, pid)
    return out


def _required_modules() -> dict[str, list[str]]:
    """Distribution -> its top-level modules, for every runtime requirement of callengine."""
    try:
        requires = importlib.metadata.requires("callengine") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    by_dist: dict[str, list[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(_canonical(dist), []).append(module)
    out: dict[str, list[str]] = {}
    for req in requires:
        if "extra ==" in req:
            continue
        name = re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]
        modules = sorted(m for m in by_dist.get(_canonical(name), []) if not m.startswith("_"))
        out[name] = modules
    return out


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dependency_findings(cfg: EngineConfig) -> list[Finding]:
    out: list[Finding] = []
    missing: list[str] = []
    for dist, modules in _required_modules().items():
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{dist} (not installed)")
            continue
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception as exc:  # a broken wheel raises anything (OSError, ...)
                missing.append(f"{dist}: import {module}: {type(exc).__name__}: {exc}")
    own = ["callengine.node", "callengine.metrics"]
    if cfg.admin:
        own.append("callengine.admin")
    if storage_settings(cfg).kind == "azure":
        own.append("media.azure")
    for module in own:
        try:
            importlib.import_module(module)
        except Exception as exc:  # same: report, do not crash the check
            missing.append(f"import {module}: {type(exc).__name__}: {exc}")
    if missing:
        out += [Finding(False, "python dependency", m) for m in missing]
    else:
        out.append(Finding(True, "python dependencies", f"importable ({sys.executable})"))
    # serve runs no external program: SIPp, sox, espeak-ng, tshark are test and demo tools
    out.append(Finding(True, "programs", "none needed by this configuration"))
    if cfg.tls_cert and cfg.tls_key:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                cfg.tls_cert, cfg.tls_key
            )
            out.append(Finding(True, "TLS certificate", cfg.tls_cert))
        except (OSError, ssl.SSLError) as exc:
            out.append(Finding(False, "TLS certificate", f"{cfg.tls_cert}: {exc}"))
    return out


def _data_dir_finding(cfg: EngineConfig) -> Finding:
    path = Path(cfg.data_dir)
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    if not probe.is_dir():
        return Finding(False, "data directory", f"{probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        return Finding(False, "data directory", f"{probe} is not writable by {_default_user()}")
    return Finding(True, "data directory", str(path.absolute()))


def _reach_master(cfg: EngineConfig, settings: CacheSettings, timeout: float) -> str:
    from config_cache import MongoMaster

    assert cfg.master_url
    master = MongoMaster(cfg.master_url, database=settings.master_database, timeout=timeout)
    try:
        return f"{len(master.revisions())} tenant(s) in {settings.master_database}.tenants"
    finally:
        master.close()


def _reach_history(cfg: EngineConfig, settings: CacheSettings, timeout: float) -> str:
    from config_cache import MongoHistory

    assert cfg.history_url
    history = MongoHistory(cfg.history_url, database=settings.history_database, timeout=timeout)
    try:
        history.ping()
        return "answers"
    finally:
        history.close()


def _reach_media(cfg: EngineConfig, storage: StorageSettings, timeout: float) -> str:
    from media.azure import AzureBlobStorage

    blobs = AzureBlobStorage(
        connection_string=storage.connection_string,
        account_url=storage.account_url,
        credential=storage.credential,
        container=storage.container,
        timeout=timeout,
    )
    try:
        blobs.exists("callengine-check", "prompts", "probe")  # a HEAD: answers, or raises
    finally:
        with contextlib.suppress(Exception):
            import asyncio

            asyncio.run(blobs.close())
    return f"container {storage.container} answers"


def _reachability(cfg: EngineConfig, timeout: float) -> list[Finding]:
    data = dict(cfg.config_cache)
    data.update(data_dir=cfg.data_dir, on_empty=cfg.on_empty)
    settings = CacheSettings.from_mapping(data, source=cfg.source)
    storage = storage_settings(cfg)
    probes: dict[str, Callable[[], str]] = {}
    out: list[Finding] = []
    if cfg.master_url:
        probes["master"] = lambda: _reach_master(cfg, settings, timeout)
    else:
        out.append(Finding(True, "master", "none configured (tenants from local files)"))
    if cfg.history_url:
        probes["History DB"] = lambda: _reach_history(cfg, settings, timeout)
    else:
        out.append(Finding(True, "History DB", "none configured (call logs stay local)"))
    if storage.kind == "azure":
        probes["Media Storage"] = lambda: _reach_media(cfg, storage, timeout)
    else:
        out.append(Finding(True, "Media Storage", f"local files under {cfg.data_dir}/media"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(fn) for name, fn in probes.items()}
        for name, future in futures.items():
            try:
                out.append(Finding(True, name, future.result()))
            except Exception as exc:  # UpstreamError, StorageError, a bad URL: one line each
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                out.append(Finding(False, name, f"unreachable: {message}"))
    return out


def check(config: str | None, *, timeout: float = 2.0) -> list[Finding]:
    """Every check of ``callengine check`` (a configuration error stops the rest)."""
    from .admin import AdminConfigError, check_bind
    from .transport import parse_listen

    try:
        cfg = load_config(config)
        data = dict(cfg.config_cache)
        data.update(data_dir=cfg.data_dir, on_empty=cfg.on_empty)
        CacheSettings.from_mapping(data, source=cfg.source)
        token = os.environ.get("CALLENGINE_ADMIN_TOKEN") or cfg.admin_token
        if cfg.admin:
            check_bind(parse_listen(cfg.admin)[0], token)
    except (ConfigError, AdminConfigError) as exc:
        return [Finding(False, "configuration", str(exc))]
    what = config if config is not None else "defaults (no --config)"
    findings = [Finding(True, "configuration", f"{what} loads (node {cfg.node_id})")]
    pid = node_pid(cfg.data_dir)
    findings.append(
        Finding(True, "node", f"running (pid {pid})" if pid is not None else "not running")
    )
    findings.append(_data_dir_finding(cfg))
    findings += _port_findings(cfg, pid)
    findings += _dependency_findings(cfg)
    findings += _reachability(cfg, timeout)
    return findings


# ------------------------------------------------------------------------- CLI
def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``init``, ``provision`` and ``check`` (``callengine/cli.py``)."""
    init = subparsers.add_parser(
        "init", help="write a node layout: config, environment file, systemd unit, data dir"
    )
    init.add_argument("dir", help="the node's directory (created if missing)")
    init.add_argument("--force", action="store_true", help="rewrite the files of a layout")
    init.add_argument(
        "--listen", action="append", metavar="HOST:PORT", help="SIP address; repeat for more"
    )
    init.add_argument("--metrics", metavar="HOST:PORT", help="Prometheus endpoint")
    init.add_argument("--admin", metavar="HOST:PORT", help="control API")
    init.add_argument("--master", metavar="MONGODB_URL", help="master Configuration DB")
    init.add_argument("--history", metavar="MONGODB_URL", help="History DB")
    init.add_argument(
        "--media", metavar="CONNSTR", help="Azure Blob connection string (Media Storage)"
    )
    init.add_argument("--container", help="Azure Blob container (default callengine)")
    init.add_argument("--node-id", help="this node's name (default: the host name)")
    init.add_argument("--user", help="system user of the service (default: you, or callengine)")
    init.set_defaults(func=_init_command)

    prov = subparsers.add_parser(
        "provision",
        help="import tenants into the master Configuration DB and their prompts into "
        "Media Storage (idempotent)",
    )
    prov.add_argument("--master", required=True, metavar="MONGODB_URL", help="master DB URL")
    prov.add_argument(
        "--media", required=True, metavar="CONNSTR", help="Azure Blob connection string"
    )
    prov.add_argument(
        "--tenants", nargs="+", default=[], metavar="FILE", help="tenant files (JSON or YAML)"
    )
    prov.add_argument(
        "--prompts", metavar="DIR", help="folder holding the files named by prompts.*.file"
    )
    prov.add_argument(
        "--dry-run", action="store_true", help="print what would change, change nothing"
    )
    prov.add_argument(
        "--database", default="callengine", help="master database (default callengine)"
    )
    prov.add_argument("--container", default="callengine", help="container (default callengine)")
    prov.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per request (default 10)"
    )
    prov.set_defaults(func=_provision_command)

    chk = subparsers.add_parser(
        "check", help="verify a node: config, ports, dependencies, master, History DB, storage"
    )
    chk.add_argument("--config", help="node configuration file (default: the defaults)")
    chk.add_argument(
        "--timeout", type=float, default=2.0, help="seconds for each remote probe (default 2)"
    )
    chk.set_defaults(func=_check_command)


def _init_command(args: argparse.Namespace) -> int:
    values: dict[str, Any] = {}
    for option, value in (
        ("listen", args.listen),
        ("metrics", args.metrics),
        ("admin", args.admin),
        ("master_url", args.master),
        ("history_url", args.history),
        ("node_id", args.node_id),
    ):
        if value is not None:
            values[option] = value
    media: dict[str, Any] = {}
    if args.media:
        media.update(kind="azure", connection_string=args.media)
    if args.container:
        media["container"] = args.container
    if media:
        values["media_storage"] = media
    try:
        layout = init_layout(args.dir, force=args.force, user=args.user, values=values)
    except (FileExistsError, ConfigError) as exc:
        print(f"callengine init: {exc}", file=sys.stderr)
        return 2
    for path in (*layout.files(), layout.data):
        print(f"wrote {path}{'/' if path.is_dir() else ''}")
    for note in layout.notes:
        print(f"note: {note}")
    print(f"next: callengine check --config {layout.config}")
    return 0


def _provision_command(args: argparse.Namespace) -> int:
    try:
        provision(
            master_url=args.master,
            media=args.media,
            tenant_files=args.tenants,
            prompts_dir=args.prompts,
            dry_run=args.dry_run,
            database=args.database,
            container=args.container,
            timeout=args.timeout,
        )
    except ConfigError as exc:
        print(f"callengine provision: {exc}", file=sys.stderr)
        return 2
    except UpstreamError as exc:
        print(f"callengine provision: {exc}", file=sys.stderr)
        return 1
    return 0


def _check_command(args: argparse.Namespace) -> int:
    findings = check(args.config, timeout=args.timeout)
    for finding in findings:
        print(finding.line())
    problems = sum(not f.ok for f in findings)
    print(f"check: {problems} problem(s)" if problems else "check: all fine")
    return 1 if problems else 0
