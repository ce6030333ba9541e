"""The offline spool: the sans-IO core with a fake clock, and the asyncio shell with an
in-memory blob target (the Azure target itself is tested against Azurite in
tests/integration/test_azure_storage.py)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest

from media.spool import (
    BlobConflict,
    BlobRejected,
    Spool,
    SpoolCore,
    SpoolFull,
    SpoolItem,
    adopt_spools,
    file_md5,
    spool_name,
)


def item(name: str, size: int = 100, added: float = 0.0) -> SpoolItem:
    return SpoolItem(name, Path("/nonexistent") / name, size, added)


# ------------------------------------------------------------------------------ core


def test_core_uploads_oldest_first_within_concurrency() -> None:
    core = SpoolCore(quota=10_000, concurrency=2)
    core.add(item("t/voicemail/c", added=3.0))
    core.add(item("t/voicemail/a", added=1.0))
    core.add(item("t/voicemail/b", added=2.0))
    started = core.start_ready(now=10.0)
    assert [i.name for i in started] == ["t/voicemail/a", "t/voicemail/b"]
    assert core.start_ready(now=10.0) == []  # two in flight: no room
    assert core.next_deadline(10.0) is None
    done = core.succeeded("t/voicemail/a")
    assert done.name == "t/voicemail/a" and core.files == 2 and core.bytes == 200
    assert [i.name for i in core.start_ready(now=10.0)] == ["t/voicemail/c"]
    assert core.uploads_ok == 1 and core.in_flight == 2
    assert core.uploaded_bytes == 100  # what the upload rate is measured with


def test_core_backs_off_exponentially_while_storage_fails_then_resets() -> None:
    core = SpoolCore(quota=10_000, concurrency=1, retry_initial=0.5, retry_max=4.0)
    core.add(item("t/recordings/x"))
    now = 100.0
    delays = []
    for _ in range(6):
        (started,) = core.start_ready(now)
        delays.append(core.failed(started.name, now))
        assert core.start_ready(now) == []  # blocked: nothing starts before the backoff
        assert core.next_deadline(now) == now + delays[-1]
        now += delays[-1]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert core.uploads_failed == 6 and core.items["t/recordings/x"].attempts == 6
    (started,) = core.start_ready(now)
    core.succeeded(started.name)
    core.add(item("t/recordings/y"))
    (started,) = core.start_ready(now)
    assert core.failed(started.name, now) == 0.5  # the first failure after a success


def test_core_failure_blocks_every_upload() -> None:
    core = SpoolCore(quota=10_000, concurrency=3, retry_initial=1.0)
    for name in ("a", "b", "c"):
        core.add(item(f"t/voicemail/{name}"))
    a, b, c = core.start_ready(0.0)
    core.failed(a.name, 0.0)
    core.add(item("t/voicemail/d"))
    assert core.start_ready(0.5) == []  # storage is down for everyone
    assert core.next_deadline(0.5) == 1.0
    assert [i.name for i in core.start_ready(1.0)] == ["t/voicemail/a"]


def test_core_quota_refuses_new_recordings_and_warns_once_near_it() -> None:
    core = SpoolCore(quota=1000, near=0.5)
    assert core.admit()
    assert core.add(item("t/voicemail/1", size=300)) is False
    assert core.add(item("t/voicemail/2", size=300)) is True  # 600 >= 500: near
    assert core.add(item("t/voicemail/3", size=300)) is False  # already said
    assert core.admit() and core.near_quota
    core.add(item("t/voicemail/4", size=200))
    assert core.refusals == 0 and not core.full
    assert core.bytes == 1100 and not core.admit()
    assert not core.admit() and core.refusals == 2 and core.full
    for started in core.start_ready(0.0):
        core.succeeded(started.name)
    assert core.bytes == 0 and core.admit() and not core.near_quota
    assert core.refusals == 2 and not core.full


def test_core_present_and_conflict_outcomes() -> None:
    core = SpoolCore(quota=10_000, concurrency=2)
    core.add(item("t/voicemail/same"))
    core.add(item("t/voicemail/other"))
    first, second = core.start_ready(0.0)
    core.succeeded(first.name, present=True)
    core.refused(second.name)
    assert core.uploads_present == 1 and core.uploads_ok == 0 and core.rejected == 1
    assert core.files == 1 and core.pending == 0  # the conflicting file is kept
    assert core.start_ready(100.0) == []  # and never retried
    assert core.next_deadline(100.0) is None


def test_core_oldest_age_uses_the_given_clock() -> None:
    core = SpoolCore(quota=10_000)
    assert core.oldest_age(50.0) == 0.0
    core.add(item("t/voicemail/a", added=10.0))
    core.add(item("t/voicemail/b", added=30.0))
    core.add(item("t/voicemail/c", added=35.0))
    assert core.oldest_age(50.0) == 40.0
    a, b, c, *_ = core.start_ready(50.0)
    assert core.oldest_age(50.0) == 40.0  # in flight: still waiting
    core.succeeded(a.name)
    assert core.oldest_age(50.0) == 20.0
    core.failed(b.name, 50.0)
    assert core.oldest_age(50.0) == 20.0  # back in the queue
    core.refused(c.name)
    core.add(item("t/voicemail/b", added=45.0))  # spooled again under the same name
    assert core.oldest_age(50.0) == 5.0  # refused files are not waiting


def test_core_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        SpoolCore(quota=0)
    with pytest.raises(ValueError):
        SpoolCore(quota=10, retry_initial=5.0, retry_max=1.0)


# ------------------------------------------------------------------------------ shell


class MemoryTarget:
    """Blobs in a dict, create-only like Azure's ``If-None-Match: *``; it can be made
    unreachable."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.down = False
        self.writes = 0
        self.closed = False

    def url(self, name: str) -> str:
        return f"memory://c/{name}"

    async def upload(self, item: SpoolItem, md5: bytes) -> bool:
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionRefusedError("storage unreachable")
        if "invalid" in item.name:
            raise BlobRejected("storage refused it (400): InvalidResourceName")
        data = item.path.read_bytes()
        assert hashlib.md5(data).digest() == md5
        if item.name in self.blobs:
            if self.blobs[item.name][0] == data:
                return False
            raise BlobConflict("a different blob exists")
        self.blobs[item.name] = (data, dict(item.metadata))
        self.writes += 1
        return True

    async def close(self) -> None:
        self.closed = True


def record(spool: Spool, key: str, data: bytes, call_id: str) -> Path:
    path = spool.begin("acme", "voicemail", key, {"tenant": "acme", "call_id": call_id})
    path.write_bytes(data)
    spool.finished("acme", "voicemail", key)
    return path


def spool_of(tmp_path: Path, target: MemoryTarget, **core: float) -> Spool:
    settings = {"quota": 10_000, "retry_initial": 0.01, "retry_max": 0.02, **core}
    return Spool(tmp_path / "spool", target, SpoolCore(**settings))  # type: ignore[arg-type]


def test_shell_uploads_with_metadata_and_deletes_after_confirmation(
    tmp_path: Path,
) -> None:
    asyncio.run(_shell_uploads_with_metadata_and_deletes_after_confirmation(tmp_path))


async def _shell_uploads_with_metadata_and_deletes_after_confirmation(
    tmp_path: Path,
) -> None:
    target = MemoryTarget()
    spool = spool_of(tmp_path, target)
    await spool.start()
    path = record(spool, "100/c1.wav", b"RIFF-one", "c1")
    assert path == tmp_path / "spool" / "files" / "acme" / "voicemail" / "100" / "c1.wav"
    await asyncio.wait_for(spool.drained(), 5)
    assert target.blobs["acme/voicemail/100/c1.wav"] == (
        b"RIFF-one",
        {"tenant": "acme", "call_id": "c1"},
    )
    assert not path.exists()
    assert not (tmp_path / "spool" / "meta" / "acme" / "voicemail" / "100" / "c1.wav.json").exists()
    assert spool.core.uploads_ok == 1 and spool.core.files == 0
    assert spool.url("acme", "voicemail", "100/c1.wav") == "memory://c/acme/voicemail/100/c1.wav"
    await spool.stop()
    assert target.closed


def test_shell_keeps_files_while_storage_is_down_then_drains(tmp_path: Path) -> None:
    asyncio.run(_shell_keeps_files_while_storage_is_down_then_drains(tmp_path))


async def _shell_keeps_files_while_storage_is_down_then_drains(tmp_path: Path) -> None:
    target = MemoryTarget()
    target.down = True
    spool = spool_of(tmp_path, target)
    await spool.start()
    paths = [record(spool, f"{n}.wav", b"x" * n, f"c{n}") for n in range(1, 11)]
    while spool.core.uploads_failed < 3:
        await asyncio.sleep(0.005)
    assert all(p.exists() for p in paths) and spool.core.files == 10
    target.down = False
    await asyncio.wait_for(spool.drained(), 5)
    assert target.writes == 10 and sorted(target.blobs) == sorted(
        f"acme/voicemail/{n}.wav" for n in range(1, 11)
    )
    assert not any(p.exists() for p in paths) and spool.core.bytes == 0
    await spool.stop()


def test_shell_restart_ships_what_a_crash_left_once(tmp_path: Path) -> None:
    asyncio.run(_shell_restart_ships_what_a_crash_left_once(tmp_path))


async def _shell_restart_ships_what_a_crash_left_once(tmp_path: Path) -> None:
    """A node killed before (or after) an upload: the next one finds the files; a blob
    already complete in storage counts as present and is not written again."""
    target = MemoryTarget()
    target.down = True
    first = spool_of(tmp_path, target)
    record(first, "a.wav", b"AAAA", "ca")
    record(first, "b.wav", b"BBBB", "cb")
    # the crash came after storage got "a" but before its spool file was deleted
    target.down = False
    target.blobs["acme/voicemail/a.wav"] = (b"AAAA", {"tenant": "acme", "call_id": "ca"})

    second = spool_of(tmp_path, target)
    await second.start()
    assert second.core.files == 2
    await asyncio.wait_for(second.drained(), 5)
    assert target.writes == 1  # only "b"
    assert second.core.uploads_present == 1 and second.core.uploads_ok == 1
    assert target.blobs["acme/voicemail/b.wav"][1] == {"tenant": "acme", "call_id": "cb"}
    await second.stop()


def test_shell_conflict_keeps_the_file_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(_shell_conflict_keeps_the_file_and_logs(tmp_path, caplog))


async def _shell_conflict_keeps_the_file_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = MemoryTarget()
    target.blobs["acme/voicemail/x.wav"] = (b"someone else's", {})
    spool = spool_of(tmp_path, target)
    await spool.start()
    with caplog.at_level(logging.ERROR, logger="media.spool"):
        path = record(spool, "x.wav", b"ours", "cx")
        await asyncio.wait_for(spool.drained(), 5)
    assert path.exists() and spool.core.rejected == 1
    assert target.blobs["acme/voicemail/x.wav"][0] == b"someone else's"
    assert "acme/voicemail/x.wav not uploaded: a different blob exists" in caplog.text
    await spool.stop()


def test_shell_quota_refuses_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(_shell_quota_refuses_and_warns(tmp_path, caplog))


async def _shell_quota_refuses_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = MemoryTarget()
    target.down = True
    spool = spool_of(tmp_path, target, quota=100, near=0.5)
    with caplog.at_level(logging.WARNING, logger="media.spool"):
        record(spool, "1.wav", b"x" * 60, "c1")
    assert "media spool near its quota: 60 of 100 bytes in 1 files" in caplog.text
    record(spool, "2.wav", b"x" * 60, "c2")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="media.spool"):
        for key in ("3.wav", "4.wav"):
            with pytest.raises(SpoolFull, match="media spool full"):
                spool.begin("acme", "voicemail", key, {})
    # one line for the episode, every refusal counted
    full = [r.getMessage() for r in caplog.records if "media spool full" in r.getMessage()]
    assert full == [
        "media spool full: 120 of 100 bytes in 2 files; new recordings are refused until "
        "uploads free space (storage unreachable?)"
    ]
    assert spool.core.refusals == 2 and spool.core.near_quota


def test_shell_a_refused_or_vanished_file_does_not_hold_back_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(_shell_a_refused_or_vanished_file_does_not_hold_back_the_others(tmp_path, caplog))


async def _shell_a_refused_or_vanished_file_does_not_hold_back_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = MemoryTarget()
    target.down = True
    spool = spool_of(tmp_path, target, retry_initial=10.0, retry_max=10.0)
    bad = record(spool, "invalid.wav", b"bad", "c0")
    gone = record(spool, "gone.wav", b"gone", "c1")
    good = record(spool, "good.wav", b"good", "c2")
    gone.unlink()
    target.down = False
    with caplog.at_level(logging.ERROR, logger="media.spool"):
        await spool.start()
        await asyncio.wait_for(spool.drained(), 5)  # no 10 s backoff: neither is a failure
    assert sorted(target.blobs) == ["acme/voicemail/good.wav"] and not good.exists()
    assert bad.exists() and spool.core.rejected == 1 and spool.core.vanished == 1
    assert spool.core.uploads_failed == 0 and spool.core.files == 1
    assert "acme/voicemail/invalid.wav not uploaded: storage refused it (400)" in caplog.text
    assert "acme/voicemail/gone.wav was deleted before its upload" in caplog.text
    await spool.stop()


def test_spool_names_are_validated(tmp_path: Path) -> None:
    spool = spool_of(tmp_path, MemoryTarget())
    with pytest.raises(ValueError, match="invalid segment"):
        spool.begin("acme", "voicemail", "../../etc/passwd", {})
    with pytest.raises(ValueError, match="unknown media kind"):
        spool.begin("acme", "secrets", "x.wav", {})
    with pytest.raises(ValueError, match="contains '/'"):
        spool.begin("a/b", "voicemail", "x.wav", {})


def test_file_md5(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # more than one 1 MiB read
    (tmp_path / "f").write_bytes(data)
    assert file_md5(tmp_path / "f") == hashlib.md5(data).digest()


# ----------------------------------------------------------------- configuration


def test_media_storage_config_is_validated_naming_file_and_field(tmp_path: Path) -> None:
    from callengine.config import load_config, storage_settings
    from config_cache import ConfigError

    conf = tmp_path / "node.yaml"

    def error(text: str) -> str:
        conf.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(conf)
        return str(info.value)

    assert error("media_storage: {kind: s3}") == (
        f"{conf}: media_storage.kind: must be local or azure"
    )
    assert "media_storage.connection_string: give either" in error("media_storage: {kind: azure}")
    assert "media_storage.spool_quota: expected int, got str" in error(
        "media_storage: {kind: azure, connection_string: x, spool_quota: 10GB}"
    )
    assert "media_storage.connection_string: names no AccountName nor BlobEndpoint" in error(
        "media_storage: {kind: azure, connection_string: 'Key=1;Other=2'}"
    )
    assert "media_storage.container: 3-63 lower-case" in error(
        "media_storage: {kind: azure, connection_string: 'AccountName=a', container: Bad_Name}"
    )
    assert "media_storage.colour: unknown setting" in error("media_storage: {colour: red}")
    assert "media_storage.retry_max: must not be less than retry_initial" in error(
        "media_storage: {retry_initial: 5, retry_max: 1}"
    )
    assert "media_storage.prompt_cache_bytes: must be at least 1" in error(
        "media_storage: {prompt_cache_bytes: 0}"
    )
    assert "media_storage.prompt_refresh: must be greater than 0" in error(
        "media_storage: {prompt_refresh: 0}"
    )
    conf.write_text(
        "media_storage: {kind: azure, account_url: 'https://acct.blob.core.windows.net',"
        " credential: sas, container: pbx-media, spool_quota: 1000000}"
    )
    settings = storage_settings(load_config(conf))
    assert (settings.kind, settings.container, settings.spool_quota) == (
        "azure",
        "pbx-media",
        1_000_000,
    )
    assert storage_settings(load_config(None)).kind == "local"


# ---------------------------------------------------------------------- adoption


def _spool_file(root: Path, name: str, data: bytes, meta: str | None = None) -> None:
    path = root / "files" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if meta is not None:
        m = root / "meta" / f"{name}.json"
        m.parent.mkdir(parents=True, exist_ok=True)
        m.write_text(meta)


def test_adopt_spools_moves_what_other_layouts_left_into_the_first_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node now one process finds the spools of its earlier workers (and the reverse):
    their files and metadata move under the same names; its own spool and other
    directories are left alone; a name waiting in both is kept in both, logged."""
    _spool_file(tmp_path / "spool-w1", "t/voicemail/a.wav", b"A", '{"call_id": "a"}')
    _spool_file(tmp_path / "spool-w1", "t/recording/2026/b.wav", b"B", '{"call_id": "b"}')
    _spool_file(tmp_path / "spool-w0", "t/voicemail/c.wav", b"C")  # no metadata
    _spool_file(tmp_path / "spool-w0", "t/voicemail/same.wav", b"old")
    _spool_file(tmp_path / "spool", "t/voicemail/mine.wav", b"M")
    _spool_file(tmp_path / "spool", "t/voicemail/same.wav", b"new")
    _spool_file(tmp_path / "spool-wx", "t/voicemail/other.wav", b"X")  # not a spool name
    _spool_file(tmp_path / "spooled", "t/voicemail/other.wav", b"X")
    with caplog.at_level(logging.INFO, logger="media.spool"):
        moved = adopt_spools(tmp_path, [spool_name(None)])
    assert moved == 3
    files = tmp_path / "spool" / "files"
    assert {p.relative_to(files).as_posix(): p.read_bytes() for p in files.rglob("*.wav")} == {
        "t/voicemail/a.wav": b"A",
        "t/recording/2026/b.wav": b"B",
        "t/voicemail/c.wav": b"C",
        "t/voicemail/mine.wav": b"M",
        "t/voicemail/same.wav": b"new",
    }
    meta = tmp_path / "spool" / "meta" / "t"
    assert (meta / "voicemail" / "a.wav.json").read_text() == '{"call_id": "a"}'
    assert (meta / "recording" / "2026" / "b.wav.json").read_text() == '{"call_id": "b"}'
    assert (tmp_path / "spool-w0" / "files" / "t" / "voicemail" / "same.wav").read_bytes() == b"old"
    assert [p.name for p in (tmp_path / "spool-w1").rglob("*") if p.is_file()] == []
    assert (tmp_path / "spool-wx" / "files" / "t" / "voicemail" / "other.wav").exists()
    assert (tmp_path / "spooled" / "files" / "t" / "voicemail" / "other.wav").exists()
    text = caplog.text
    assert "1 files of spool-w0 adopted by spool" in text
    assert "2 files of spool-w1 adopted by spool" in text
    assert "t/voicemail/same.wav waits in" in text and "kept both" in text
    # the other way: workers find what a one-process run left; nothing left: no-op
    assert adopt_spools(tmp_path, [spool_name(0), spool_name(1)]) == 4
    assert adopt_spools(tmp_path, [spool_name(0), spool_name(1)]) == 0


def test_adopted_files_are_uploaded_with_their_metadata(tmp_path: Path) -> None:
    """What was adopted is what the spool ships at start (its scan), metadata included."""
    _spool_file(tmp_path / "spool-w3", "t/voicemail/a.wav", b"AAAA", '{"call_id": "a"}')
    assert adopt_spools(tmp_path, ["spool-w0", "spool-w1"]) == 1
    target = MemoryTarget()

    async def ship() -> None:
        spool = Spool(tmp_path / "spool-w0", target, SpoolCore(quota=1_000))
        await spool.start()
        await asyncio.wait_for(spool.drained(), 5)
        await spool.stop()

    asyncio.run(ship())
    assert target.blobs == {"t/voicemail/a.wav": (b"AAAA", {"call_id": "a"})}
    assert list((tmp_path / "spool-w0" / "files").rglob("*.wav")) == []
