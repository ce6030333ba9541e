from __future__ import annotations

from pathlib import Path

import pytest

from media.storage import LocalMediaStorage, validate_key


def test_put_get_list_delete(tmp_path: Path) -> None:
    s = LocalMediaStorage(tmp_path)
    s.put("acme", "recordings", "2024/call-1.wav", b"RIFF")
    s.put("acme", "recordings", "2024/call-2.wav", b"RIFF2")
    s.put("acme", "voicemail", "100/msg.wav", b"x")
    assert s.get("acme", "recordings", "2024/call-1.wav") == b"RIFF"
    assert s.list("acme", "recordings") == ["2024/call-1.wav", "2024/call-2.wav"]
    assert s.list("acme", "recordings", "2024/call-2") == ["2024/call-2.wav"]
    assert s.list("other", "prompts") == []
    assert (tmp_path / "acme" / "voicemail" / "100" / "msg.wav").read_bytes() == b"x"
    with s.open("acme", "prompts", "hello.wav", "wb") as f:
        f.write(b"abc")
    with s.open("acme", "prompts", "hello.wav") as f:
        assert f.read() == b"abc"
    assert s.exists("acme", "prompts", "hello.wav")
    assert s.delete("acme", "prompts", "hello.wav") is True
    assert s.delete("acme", "prompts", "hello.wav") is False
    with pytest.raises(FileNotFoundError):
        s.get("acme", "prompts", "hello.wav")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "media key is empty"),
        ("../etc/passwd", "media key has an invalid segment '..': '../etc/passwd'"),
        ("a/../../b", "media key has an invalid segment '..': 'a/../../b'"),
        ("/etc/passwd", "media key is an absolute path: '/etc/passwd'"),
        ("a\x00b", "media key contains NUL: 'a\\x00b'"),
        ("a\\b", "media key contains a backslash: 'a\\\\b'"),
        ("a//b", "media key has an invalid segment '': 'a//b'"),
        ("./a", "media key has an invalid segment '.': './a'"),
    ],
)
def test_key_validation(key: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_key(key)
    assert str(info.value) == message


def test_traversal_rejected_everywhere(tmp_path: Path) -> None:
    s = LocalMediaStorage(tmp_path / "data")
    with pytest.raises(ValueError):
        s.put("acme", "prompts", "../../escape", b"x")
    with pytest.raises(ValueError):
        s.put("..", "prompts", "x", b"x")
    with pytest.raises(ValueError, match="tenant id contains '/'"):
        s.get("a/b", "prompts", "x")
    with pytest.raises(ValueError, match="unknown media kind"):
        s.put("acme", "secrets", "x", b"x")
    assert not (tmp_path / "escape").exists()
