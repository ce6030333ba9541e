"""Reading tenant files (JSON or YAML; one tenant or a list of tenants)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import validation
from .errors import ConfigError
from .schema import TenantConfig, validate_tenant

__all__ = ["load_tenant_file", "read_tenant_documents"]


def read_tenant_documents(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parse ``path`` (``.json``, or YAML for anything else) into a list of
    tenant documents, unvalidated. Raises :class:`ConfigError` naming the file."""
    p = Path(path)
    name = str(p)
    try:
        if p.suffix == ".json":
            data: Any = json.loads(validation.read_text(p))
        else:
            data = validation.load_yaml(p)
    except validation.DocumentError as exc:
        raise ConfigError(str(exc), file=name) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", file=name
        ) from exc
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
