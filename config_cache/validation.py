"""One validation layer for configuration documents: YAML loading and JSON Schema.

Theory of operation: every configuration document (a node config, a trunk
section, a ``dial_policy``, a tenant document, an IVR flow) is first read by
:func:`load_yaml` (the only YAML loader: YAML 1.2 scalars, so ``17:00`` stays a
string) or ``json``, then checked against a JSON Schema (draft-07) shipped as
data in ``config_cache/schemas/*.json`` (:func:`schema` loads one; they can be
published as they are). :func:`first_issue` returns the first mistake as an
:class:`Issue`: the field path and a message in the caller's wording
(:class:`Wording`). What JSON Schema cannot say (cross-references, time zones,
DID ranges, addresses) stays as small Python checks in the loaders, which raise
their own error types naming file, tenant and field.

Why fastjsonschema: it compiles a schema once into a Python function, so a valid
document costs about what the hand-written checks it replaces cost (jsonschema
4.x interprets the schema for every value: 8x slower on a 1,000-user tenant,
which a node validates on its event loop when the master pushes it; see
``benchmarks/config_validation.py``). The schemas stay standard JSON Schema.

Cost model: each schema (or ``$defs`` part) is compiled once, on first use, and
cached; ``fastjsonschema`` and ``yaml`` are imported then, not when this module
is (``pri.trunk`` imports it while the node starts). A valid document runs only
the fast-fail function. A document with a mistake runs a second, cached,
collect-all function so the mistake reported is the shallowest (then schema
order): the same document always names the same field.

Regexes: JSON Schema ``pattern`` is a search, so every pattern is anchored
``^...\\Z``; ``$`` would let ``"12\\n"`` through as digits.

This is the one module that imports ``fastjsonschema`` and ``yaml``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DocumentError",
    "Issue",
    "Wording",
    "first_issue",
    "load_yaml",
    "parse_yaml",
    "read_text",
    "schema",
]

PathPart = str | int


class DocumentError(ValueError):
    """A file that cannot be read or parsed; ``str()`` is the message callers wrap."""


@cache
def _yaml12_loader() -> Any:
    """SafeLoader with YAML 1.2 scalars: ``17:00`` stays a string (YAML 1.1 reads it
    as the base-60 integer 1020) and dates stay strings. Built on first use."""
    import yaml

    class Yaml12Loader(yaml.SafeLoader):
        pass

    Yaml12Loader.yaml_implicit_resolvers = {
        first: [
            (tag, rx)
            for tag, rx in resolvers
            if tag
            not in (
                "tag:yaml.org,2002:int",
                "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:timestamp",
            )
        ]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Yaml12Loader.add_implicit_resolver(
        "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789")
    )
    Yaml12Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
        list("-+.0123456789"),
    )
    return Yaml12Loader


def parse_yaml(text: str) -> Any:
    """Parse YAML ``text`` (YAML 1.2 scalars); raises :class:`DocumentError`
    ``invalid YAML: ...`` on one line."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml12_loader())
    except yaml.YAMLError as exc:
        raise DocumentError(f"invalid YAML: {' '.join(str(exc).split())}") from None


def read_text(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of ``path``; raises :class:`DocumentError` ``cannot read: <reason>``
    (its ``__cause__`` is the ``OSError`` or ``UnicodeDecodeError``)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"cannot read: {exc}") from exc


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Read and parse the YAML file ``path`` (the one YAML loader of the project).

    Raises :class:`DocumentError`: ``cannot read: <reason>`` (missing, unreadable,
    not UTF-8) or ``invalid YAML: <reason>`` (on one line). Callers wrap the
    message in their own error type, which names the file.
    """
    return parse_yaml(read_text(path))


@cache
def schema(name: str) -> Mapping[str, Any]:
    """The JSON Schema ``config_cache/schemas/<name>.json`` (cached; do not modify)."""
    text = resources.files(__package__).joinpath(f"schemas/{name}.json").read_text("utf-8")
    loaded: Mapping[str, Any] = json.loads(text)
    return loaded


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    """``node`` with each local ``{"$ref": "#/definitions/x"}`` replaced by a copy of
    ``x`` merged with the keywords beside the ``$ref`` (fastjsonschema, like draft-07,
    ignores a ``$ref``'s siblings; the schemas use them for messages). The schemas
    are not recursive."""
    if isinstance(node, Mapping):
        out = {key: _inline(value, defs) for key, value in node.items() if key != "definitions"}
        ref = out.pop("$ref", None)
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            return {**_inline(defs[ref.removeprefix("#/definitions/")], defs), **out}
        if ref is not None:
            out["$ref"] = ref
        return out
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def _compile(definition: Mapping[str, Any], *, fast_fail: bool) -> Callable[[Any], Any]:
    """Compile ``definition`` (draft-07) with strict integers: JSON Schema since
    draft-06 counts 2.0 as an integer; a port, a count or a retry limit written 2.0
    is a mistake the loaders have always refused. Defaults are never filled in
    (the documents are read, not changed)."""
    from fastjsonschema.draft04 import CodeGeneratorDraft04
    from fastjsonschema.draft07 import CodeGeneratorDraft07
    from fastjsonschema.ref_resolver import RefResolver

    class Generator(CodeGeneratorDraft07):
        def generate_type(self) -> None:
            # Draft-04's: "integer" is a Python int (never a float), bool excluded.
            CodeGeneratorDraft04.generate_type(self)

    resolver = RefResolver.from_schema(dict(definition), handlers={}, store={})
    generator = Generator(
        definition, resolver=resolver, use_default=False, use_formats=False, fast_fail=fast_fail
    )
    state = generator.global_state
    exec(generator.func_code, state)  # code generated from our own schemas
    function: Callable[[Any], Any] = state[resolver.get_scope_name()]
    return function


@cache
def _definition(name: str, part: str | None) -> Mapping[str, Any]:
    doc = schema(name)
    defs = doc.get("definitions", {})
    inlined: Mapping[str, Any] = _inline(doc if part is None else defs[part], defs)
    return inlined


@cache
def _validator(name: str, part: str | None, fast_fail: bool) -> Callable[[Any], Any]:
    return _compile(_definition(name, part), fast_fail=fast_fail)


@cache
def _sub_validator(definition_json: str) -> Callable[[Any], Any]:
    """A compiled validator for a subschema (``propertyNames``), by its JSON text."""
    return _compile(json.loads(definition_json), fast_fail=True)


@dataclass(frozen=True, slots=True)
class Issue:
    """The first mistake in a document: where (``path``) and what (``message``)."""

    path: tuple[PathPart, ...]
    message: str


@dataclass(frozen=True, slots=True)
class Wording:
    """How one family of error messages says things (each loader keeps its own words).

    ``kind`` names a value's type (``an integer``); ``want`` names a JSON Schema type
    (``integer`` -> ``an integer``); the templates are formatted with ``want``,
    ``got`` (``kind(value)``), ``value``, ``low``/``high``, ``key``, ``names``.
    A subschema's ``x-message`` overrides them: one template, or one per keyword
    (format fields: ``value``, ``got``, ``hint`` -- "quote numbers in YAML" for a number).
    """

    kind: Callable[[object], str]
    want: Mapping[str, str]
    type: str
    missing: str
    unknown: str
    empty: str
    range: str
    minimum: str
    exclusive_minimum: str
    enum: str
    pattern: str
    min_items: str
    key_type: str
    #: Name the mapping (not the key) for a missing field or a non-string key.
    at_parent: bool = False


def _non_string_key(
    value: object, path: tuple[PathPart, ...]
) -> tuple[tuple[PathPart, ...], object] | None:
    """The path and key of the first mapping key that is not a string, if any."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return (*path, str(key)), key
            found = _non_string_key(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _non_string_key(item, (*path, i))
            if found is not None:
                return found
    return None


def _resolve(document: object, name: str) -> tuple[PathPart, ...]:
    """The path of fastjsonschema's ``name`` (``data.users.100.password``,
    ``data.routes[0]``) in ``document``. Keys may hold dots (``users.1.5``), so
    the key is found in the document, longest first, rather than split."""

    def walk(value: object, rest: str) -> tuple[PathPart, ...] | None:
        if not rest:
            return ()
        if rest[0] == "[" and isinstance(value, list | tuple):
            end = rest.find("]")
            index = int(rest[1:end])
            below = walk(value[index], rest[end + 1 :])
            return None if below is None else (index, *below)
        if rest[0] == "." and isinstance(value, Mapping):
            keys = [k for k in value if isinstance(k, str) and rest[1:].startswith(k)]
            for key in sorted(keys, key=len, reverse=True):
                after = rest[1 + len(key) :]
                if after and after[0] not in ".[":
                    continue
                below = walk(value[key], after)
                if below is not None:
                    return (key, *below)
        return None

    rest = name[4:] if name.startswith("data") else name
    found = walk(document, rest)
    if found is not None:
        return found
    return tuple(p for p in re.split(r"[.\[\]]+", rest) if p)


_TYPE_ORDER: Final = ("object", "array", "string", "integer", "number", "boolean", "null")


def _message(
    keyword: str,
    value: object,
    sub: Mapping[str, Any],
    path: tuple[PathPart, ...],
    wording: Wording,
) -> tuple[tuple[PathPart, ...], str]:
    got = wording.kind(value)
    custom = sub.get("x-message")
    if isinstance(custom, Mapping):
        custom = custom.get(keyword)
    if custom is not None and keyword not in ("required", "additionalProperties"):
        # YAML reads an unquoted 32 as a number: say how to write a string.
        number = isinstance(value, int) and not isinstance(value, bool)
        hint = " (quote numbers in YAML)" if number else ""
        return path, custom.format(value=value, got=got, hint=hint)
    if keyword == "type":
        types = sub["type"]
        types = [types] if isinstance(types, str) else list(types)
        types.sort(key=_TYPE_ORDER.index)
        if types == ["string"] and sub.get("minLength") == 1:
            want = wording.want["non-empty string"]
        else:
            want = " or ".join(wording.want[t] for t in types)
        return path, wording.type.format(want=want, got=got, value=value)
    if keyword == "required":
        assert isinstance(value, Mapping)
        key = next(k for k in sub["required"] if k not in value)
        return path if wording.at_parent else (*path, key), wording.missing.format(key=key)
    if keyword == "additionalProperties":
        assert isinstance(value, Mapping)
        allowed = set(sub.get("properties", {}))
        patterns = [re.compile(p) for p in sub.get("patternProperties", {})]
        key = next(k for k in value if k not in allowed and not any(p.search(k) for p in patterns))
        names = ", ".join(sorted(allowed))
        return (*path, key), wording.unknown.format(key=key, names=names)
    if keyword in ("minLength", "minProperties"):
        return path, wording.empty.format(value=value, got=got)
    if keyword in ("minimum", "maximum"):
        low, high = sub.get("minimum"), sub.get("maximum")
        if low is not None and high is not None:
            return path, wording.range.format(low=low, high=high, value=value)
        return path, wording.minimum.format(low=low, value=value)
    if keyword == "exclusiveMinimum":
        return path, wording.exclusive_minimum.format(low=sub["exclusiveMinimum"], value=value)
    if keyword in ("enum", "const"):
        choices = sub["enum"] if keyword == "enum" else [sub["const"]]
        listed = ", ".join(sorted(str(n) for n in choices))
        return path, wording.enum.format(names=listed, value=value, got=got)
    if keyword == "pattern":
        return path, wording.pattern.format(value=value, pattern=sub["pattern"])
    if keyword == "minItems":
        return path, wording.min_items.format(value=value, got=got)
    return path, f"invalid value {value!r} ({keyword})"


def _explain(error: Any, document: object, wording: Wording) -> tuple[tuple[PathPart, ...], str]:
    """Path and message of one fastjsonschema error."""
    path = _resolve(document, error.name or "data")
    keyword = str(error.rule)
    sub: Mapping[str, Any] = error.definition if isinstance(error.definition, Mapping) else {}
    value = error.value
    if keyword == "propertyNames":
        from fastjsonschema import JsonSchemaValueException

        # The error names the mapping: find the key and say what is wrong with it.
        names = sub["propertyNames"]
        check = _sub_validator(json.dumps(names, sort_keys=True))
        for key in value:
            try:
                check(key)
            except JsonSchemaValueException as exc:
                inner = str(exc.rule)
                return _message(inner, key, names, (*path, key), wording)
    return _message(keyword, value, sub, path, wording)


def first_issue(
    name: str,
    document: object,
    wording: Wording,
    *,
    part: str | None = None,
    string_keys: bool = True,
) -> Issue | None:
    """Check ``document`` against schema ``name`` (or its ``definitions/<part>``);
    the first mistake, or ``None``.

    With ``string_keys``, non-string mapping keys (YAML's unquoted ``100:``) are
    reported first, with ``wording.key_type`` (IVR menus take ``1:`` as a digit, so
    flows pass False). Every mapping in the schemas constrains its keys (named
    properties, patterns or ``propertyNames``), so such a key always fails the
    schema and is looked for only then. Among several mistakes the shallowest is
    reported, then the first in schema order.
    """
    try:
        _validator(name, part, True)(document)
    except (ValueError, TypeError):
        # fastjsonschema's errors are ValueErrors; a TypeError is a regex run on a
        # non-string key. Importing its error types here would cost every call.
        pass
    else:
        return None
    from fastjsonschema import JsonSchemaValueException, JsonSchemaValuesException

    if string_keys:
        bad_key = _non_string_key(document, ())
        if bad_key is not None:
            path, key = bad_key
            if wording.at_parent:
                path = path[:-1]
            return Issue(path, wording.key_type.format(got=wording.kind(key), key=key))
    try:
        _validator(name, part, False)(document)
    except JsonSchemaValuesException as exc:
        errors: list[Any] = list(exc.errors)
    except JsonSchemaValueException as exc:
        errors = [exc]
    except TypeError:  # a non-string key where string_keys is False
        errors = []
    else:  # pragma: no cover - the fast-fail function failed on it
        errors = []
    explained = [_explain(error, document, wording) for error in errors]
    if not explained:  # pragma: no cover - a TypeError with string_keys=False
        return Issue((), f"invalid value {document!r}")
    # Shallowest first; at one depth, type before the rest, then schema order.
    order = sorted(
        range(len(errors)),
        key=lambda i: (len(explained[i][0]), 0 if errors[i].rule == "type" else 1, i),
    )
    path, message = explained[order[0]]
    return Issue(path, message)
