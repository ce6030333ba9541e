"""The embedded demo tenant (``demo.json``), served when a node has no
configuration and ``on_empty`` is ``"demo"``."""

from __future__ import annotations

import json
from importlib import resources

from ..schema import TenantConfig, validate_tenant

__all__ = ["demo_document", "load_demo_tenant"]


def demo_document() -> dict[str, object]:
    """The demo tenant document as shipped (a fresh copy)."""
    text = resources.files(__package__).joinpath("demo.json").read_text("utf-8")
    doc: dict[str, object] = json.loads(text)
    return doc


def load_demo_tenant() -> TenantConfig:
    """The validated demo tenant."""
    return validate_tenant(demo_document(), file="config_cache/demo/demo.json")
