"""Reading tenant files (JSON or YAML; one tenant or a list of tenants)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .schema import TenantConfig, validate_tenant

__all__ = ["load_tenant_file", "read_tenant_documents"]


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: ``17:00`` stays a string (YAML 1.1
    reads it as the base-60 integer 1020) and dates stay strings."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag
        not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)


def read_tenant_documents(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parse ``path`` (``.json``, or YAML for anything else) into a list of
    tenant documents, unvalidated. Raises :class:`ConfigError` naming the file."""
    p = Path(path)
    name = str(p)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=name) from exc
    try:
        data: Any = (
            json.loads(text) if p.suffix == ".json" else yaml.load(text, Loader=_Yaml12Loader)
        )
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", file=name
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=name) from exc
    docs = data if isinstance(data, list) else [data]
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            where = f"[{i}]" if isinstance(data, list) else None
            raise ConfigError(
                f"a tenant must be a mapping, not {type(doc).__name__}", file=name, field=where
            )
    return docs


def load_tenant_file(path: str | os.PathLike[str]) -> list[TenantConfig]:
    """Read and validate every tenant in ``path``; duplicate ids are an error."""
    seen: set[str] = set()
    out: list[TenantConfig] = []
    for doc in read_tenant_documents(path):
        tenant = validate_tenant(doc, file=str(path))
        if tenant.id in seen:
            raise ConfigError("tenant defined twice", file=str(path), tenant=tenant.id, field="id")
        seen.add(tenant.id)
        out.append(tenant)
    return out
