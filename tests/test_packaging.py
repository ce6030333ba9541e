"""callengine as a library: the wheel installs and runs in a clean venv (issue 14).

``python -m build --wheel`` builds the wheel from a copy of the checkout's files (what
git tracks, plus new files it does not ignore), so the build writes nothing into the
checkout. A new venv (no system site packages) installs the wheel with
``pip install -c constraints.txt``, without the ``softphone`` extra. Every command then
runs from the venv with the temporary folder as working directory and no PYTHONPATH,
so nothing can be imported from the checkout:

- every module of the five packages imports from the venv's site-packages without
  pjsua2, except callengine.softphone (the only one that imports it);
- ``callengine dial`` says which extra it needs (exit 2) instead of a traceback;
- ``callengine serve`` with the embedded demo configuration answers a SIP OPTIONS sent
  by the test with 200, serves /metrics (on a free port instead of the default's
  9090), and exits 0 on SIGTERM;
- mypy, pointed at the venv's interpreter, checks user code against the installed
  packages' types (py.typed).

The wheel itself must carry the bundled prompts, the demo tenant and py.typed, and
declare ranges (no ``==``) with pjsua2 only behind the extra.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import zipfile
from pathlib import Path

import pytest
from integration.support import free_port, scrape_node, wait_udp_sip

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("callengine", "ivr", "media", "pri", "config_cache")
INSTALL_BUDGET_S = 90.0


def _env() -> dict[str, str]:
    """The environment without what would point Python at the checkout or another venv."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(args: list[str], cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _source_copy(dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the work tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    out = tmp / "dist"
    built = _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)], tmp)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (whl,) = out.glob("callengine-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], tmp)
    assert made.returncode == 0, made.stderr
    started = time.monotonic()
    pip = [str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt")]
    installed = _run([*pip, str(wheel)], tmp, timeout=600)
    seconds = time.monotonic() - started
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    print(f"wheel install into a clean venv: {seconds:.1f} s")
    assert seconds < INSTALL_BUDGET_S, f"installing the wheel took {seconds:.0f} s"
    return venv


def _scrape_when_up(port: int, name: str, timeout: float = 10.0) -> dict[str, float]:
    """/metrics once it accepts connections and shows ``name``: serve opens it just
    after the SIP listeners, so the OPTIONS answer can come first, and the workers of a
    multi-worker node (the default on more than one core) push theirs every second."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            values = scrape_node(port)
            if name in values or time.monotonic() > deadline:
                return values
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def test_wheel_carries_prompts_demo_tenant_py_typed_and_ranges(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta_name,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
    prompts = {p.name for p in (ROOT / "media" / "prompts").glob("*.wav")}
    assert prompts and {f"media/prompts/{p}" for p in prompts} <= names
    assert "config_cache/demo/demo.json" in names
    schemas = {
        f"config_cache/schemas/{s.name}" for s in (ROOT / "config_cache/schemas").glob("*.json")
    }
    assert schemas and schemas <= names  # the published JSON Schemas the validators compile
    sources = {f.relative_to(ROOT).as_posix() for p in PACKAGES for f in (ROOT / p).rglob("*.py")}
    assert sources - names == set()  # every module, in every subpackage
    assert {f"{p}/py.typed" for p in PACKAGES} <= names
    # the packages and nothing else of the checkout (tests, benchmarks, deploy...)
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == set(PACKAGES)
    tag = "Requires-Dist: "
    requires = [ln.removeprefix(tag) for ln in meta.splitlines() if ln.startswith(tag)]
    pinned = [r for r in requires if "==" in r.split(";")[0]]
    assert len(requires) >= 10 and not pinned, requires
    assert [r for r in requires if r.startswith("pjsua2")] == [
        'pjsua2-python<2.16,>=2.15.1; extra == "softphone"'
    ], requires
    assert "Provides-Extra: softphone" in meta


IMPORT_ALL = """
import importlib, importlib.util, json, pkgutil
import callengine, config_cache, ivr, media, pri
imported, failed = [], {}
for pkg in (callengine, config_cache, ivr, media, pri):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        try:
            imported.append(importlib.import_module(info.name).__file__)
        except ImportError as exc:
            failed[info.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"pjsua2": importlib.util.find_spec("pjsua2") is not None,
                  "imported": imported, "failed": failed,
                  "metrics": callengine.EngineConfig().metrics}))
"""


def test_every_module_but_the_softphone_imports_without_pjsua2(venv: Path, tmp_path: Path) -> None:
    """Every module of the five packages imports from the venv (none from the checkout),
    pjsua2 is not there, and callengine.softphone is the one module that needs it."""
    done = _run([str(venv / "bin" / "python"), "-c", IMPORT_ALL], tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["pjsua2"] is False
    assert report["failed"] == {
        "callengine.softphone": "ModuleNotFoundError: No module named 'pjsua2'"
    }
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert len(report["imported"]) > 50, report["imported"]
    for file in report["imported"]:
        assert Path(file).is_relative_to(site), (file, site)
    # the default configuration opens /metrics (the serve test checks it, on a free port)
    assert report["metrics"] == "127.0.0.1:9090"


def test_dial_without_the_softphone_extra_names_it(venv: Path, tmp_path: Path) -> None:
    done = _run([str(venv / "bin" / "callengine"), "dial", "sip:demo@127.0.0.1:9"], tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr == (
        "callengine: dial needs pjsua2, which is not installed: "
        "pip install 'callengine[softphone]'\n"
    )


def test_installed_serve_answers_options_and_serves_metrics(venv: Path, tmp_path: Path) -> None:
    port = free_port()
    metrics = free_port(socket.SOCK_STREAM, both=False)
    log = tmp_path / "serve.log"
    args = [str(venv / "bin" / "callengine"), "serve", "--listen", f"127.0.0.1:{port}"]
    args += ["--data-dir", str(tmp_path / "data"), "--metrics", f"127.0.0.1:{metrics}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=out, stderr=out)
    try:
        try:
            wait_udp_sip(port)  # an OPTIONS datagram until the node answers 200
        except TimeoutError:
            raise AssertionError(f"the installed node did not start:\n{log.read_text()}") from None
        values = _scrape_when_up(metrics, "callengine_active_calls")
        assert values["callengine_active_calls"] == 0, values  # the node's, every worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "serving the embedded demo tenant 'demo'" in text, text
    assert text.rstrip().endswith("stopped"), text


def test_mypy_reads_the_installed_packages_types(venv: Path, tmp_path: Path) -> None:
    """py.typed (PEP 561): mypy, pointed at the venv, type-checks a user's code against
    the installed packages (without it: "missing library stubs or py.typed marker")."""
    names = {
        "callengine": "Engine",
        "config_cache": "ConfigError",
        "ivr": "Flow",
        "media": "CodecInfo",
        "pri": "Channel",
    }
    lines = [f"from {pkg} import {name}" for pkg, name in names.items()]
    lines += [f"x_{name}: int = {name}" for name in names.values()]  # five wrong types
    (tmp_path / "user.py").write_text("\n".join(lines) + "\n")
    (tmp_path / "mypy.ini").write_text("[mypy]\n")
    args = [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", "cache"]
    args += ["--python-executable", str(venv / "bin" / "python"), "user.py"]
    done = _run(args, tmp_path)
    errors = [ln for ln in done.stdout.splitlines() if ": error: " in ln]
    assert done.returncode == 1 and len(errors) == len(names), done.stdout + done.stderr
    for error, name in zip(errors, names.values(), strict=True):
        assert f'expression has type "type[{name}]", variable has type "int"' in error, error
