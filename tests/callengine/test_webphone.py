"""The web phone's settings and server (the page itself runs in Chromium in
tests/integration/test_webrtc.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from callengine.admin import WEBPHONE_DIR, WebPhoneServer
from callengine.config import load_config
from config_cache import ConfigError


def test_webphone_is_off_by_default_and_a_bad_address_names_the_field(tmp_path: Path) -> None:
    assert load_config().webphone is None
    path = tmp_path / "node.yaml"
    path.write_text("webphone: 127.0.0.1:8088\n")
    assert load_config(path).webphone == "127.0.0.1:8088"
    path.write_text("webphone: nowhere\n")
    with pytest.raises(ConfigError, match="webphone") as info:
        load_config(path)
    assert str(path) in str(info.value)
    path.write_text("webphone: 8088\n")
    with pytest.raises(ConfigError, match="webphone"):
        load_config(path)


def _node(*bound: tuple[str, str, int]) -> Any:
    return SimpleNamespace(engine=SimpleNamespace(bound=list(bound)))


def test_missing_jssip_bundle_says_how_to_build_it(tmp_path: Path) -> None:
    for name in ("index.html", "phone.js"):
        (tmp_path / name).write_bytes((WEBPHONE_DIR / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"jssip\.min\.js .*make install"):
        WebPhoneServer(_node(), "127.0.0.1", 0, root=tmp_path)


def test_config_json_names_wss_before_ws(tmp_path: Path) -> None:
    for name in ("index.html", "phone.js", "jssip.min.js"):
        (tmp_path / name).write_text("//")

    async def main() -> None:
        ws_only = _node(("UDP", "127.0.0.1", 5060), ("WS", "127.0.0.1", 5066))
        both = _node(("WS", "127.0.0.1", 5066), ("WSS", "127.0.0.1", 5067))
        for node, want in ((ws_only, "ws://h.example:5066"), (both, "wss://h.example:5067")):
            server = WebPhoneServer(node, "127.0.0.1", 0, root=tmp_path)
            request = SimpleNamespace(url=SimpleNamespace(host="h.example"))
            response = await server.config(request)  # type: ignore[arg-type]
            assert response.text == f'{{"server": "{want}"}}'

    asyncio.run(main())
