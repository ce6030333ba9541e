"""The node's media settings (port pool, clock slots): defaults, and bad values refused
at load with the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callengine.config import load_config
from config_cache import ConfigError


def test_defaults() -> None:
    cfg = load_config(None)
    assert (cfg.rtp_port_pool, cfg.rtp_port_quarantine, cfg.media_clock_slots) == (0, 1.0, 1)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rtp_port_pool", -1, "rtp_port_pool: must be 0 to 10000"),
        ("rtp_port_pool", 2.5, "rtp_port_pool"),
        ("rtp_port_pool", True, "rtp_port_pool"),
        ("rtp_port_quarantine", -0.5, "rtp_port_quarantine: must be 0 to 60 seconds"),
        ("rtp_port_quarantine", "2s", "rtp_port_quarantine"),
        ("media_clock_slots", 0, "media_clock_slots: must be 1 to 20"),
        ("media_clock_slots", 21, "media_clock_slots: must be 1 to 20"),
    ],
)
def test_bad_values_name_the_file_and_the_key(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps({field: value}))
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_good_values_load(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text(
        json.dumps({"rtp_port_pool": 16, "rtp_port_quarantine": 0, "media_clock_slots": 4})
    )
    cfg = load_config(path)
    assert (cfg.rtp_port_pool, cfg.rtp_port_quarantine, cfg.media_clock_slots) == (16, 0, 4)
