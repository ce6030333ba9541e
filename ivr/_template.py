"""``${name}`` substitution for ``set`` values and webhook bodies."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Replace each ``${name}`` with ``variables[name]``; unknown names become ``""``."""
    if "${" not in text:
        return text
    return _VAR.sub(lambda m: variables.get(m.group(1), ""), text)


def substitute_json(value: Any, variables: Mapping[str, str]) -> Any:
    """Substitute inside every string of a JSON value (keys are left alone)."""
    if isinstance(value, str):
        return substitute(value, variables)
    if isinstance(value, list):
        return [substitute_json(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: substitute_json(v, variables) for k, v in value.items()}
    return value
