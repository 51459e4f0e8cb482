"""Catalog documents: the catalog as its TOML file says it, edited and written back as TOML.

A document is `{"deployments": [{field: value}, ...]}`, what `tomllib` makes of a catalog file,
kept as written (defaults left out), so a change to `model` still gets the new model's default
features. The live catalog (`storage.fleet.catalog`) stores documents; every edit here returns a
new document and checks the whole catalog it makes with the TOML loader's own validation
(`parse_catalog`), so a bad value is the same `ConfigError` naming the deployment and field:

    add(document, entry)            a new deployment (its id must be new)
    change(document, id, fields)    set fields of one deployment (a None value unsets the field)
    remove(document, id)            drop one (a fallback naming it makes the catalog invalid)
    to_toml(document)               the TOML text `load_catalog` reads back into the same catalog
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from router_core.catalog import Catalog, parse_catalog
from router_core.errors import ConfigError

__all__ = [
    "Document",
    "UnknownDeploymentError",
    "add",
    "change",
    "document_hash",
    "remove",
    "to_toml",
    "validate",
]

Document = dict[str, Any]


class UnknownDeploymentError(ConfigError):
    """A change names a deployment id the catalog does not have."""

    def __init__(self, deployment: str, known: list[str]) -> None:
        self.deployment_id = deployment
        super().__init__(f"unknown deployment; known: {', '.join(known)}", deployment=deployment, field="id")


def validate(document: Mapping[str, Any], *, source: str = "<live catalog>") -> Catalog:
    """The catalog `document` describes, validated as a catalog file is.

    Raises:
        ConfigError: the first problem, naming the deployment and the field.
    """
    return parse_catalog(document, source=source)


def document_hash(document: Mapping[str, Any]) -> str:
    """SHA-256 of the document's content: the same for the same tables, whatever their key order."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def _entries(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = document.get("deployments")
    return [dict(e) for e in entries] if isinstance(entries, list) else []


def _index(entries: list[dict[str, Any]], deployment: str) -> int:
    for i, entry in enumerate(entries):
        if entry.get("id") == deployment:
            return i
    raise UnknownDeploymentError(deployment, [str(e.get("id")) for e in entries])


def add(document: Mapping[str, Any], entry: Mapping[str, Any]) -> tuple[Document, Catalog]:
    """`document` with the deployment `entry` appended, and the catalog it makes.

    Raises:
        ConfigError: the id is taken, or the new catalog is invalid (the field is named).
    """
    entries = _entries(document)
    new_id = entry.get("id")
    if any(e.get("id") == new_id for e in entries):
        raise ConfigError(
            "a deployment with this id exists; change it instead", deployment=str(new_id), field="id"
        )
    new = {**copy.deepcopy(dict(document)), "deployments": [*entries, copy.deepcopy(dict(entry))]}
    return new, validate(new)


def change(
    document: Mapping[str, Any], deployment: str, fields: Mapping[str, Any]
) -> tuple[Document, Catalog]:
    """`document` with `fields` set on `deployment` (a None value removes the field: its default).

    Raises:
        UnknownDeploymentError: no deployment has that id.
        ConfigError: the changed catalog is invalid (the field is named); `id` cannot change.
    """
    entries = _entries(document)
    i = _index(entries, deployment)
    if "id" in fields and fields["id"] != deployment:
        raise ConfigError(
            "a deployment's id cannot change: add a new one and remove this",
            deployment=deployment,
            field="id",
        )
    entry = copy.deepcopy(entries[i])
    for name, value in fields.items():
        if value is None:
            entry.pop(name, None)
        else:
            entry[name] = copy.deepcopy(value)
    entries[i] = entry
    new = {**copy.deepcopy(dict(document)), "deployments": entries}
    return new, validate(new)


def remove(document: Mapping[str, Any], deployment: str) -> tuple[Document, Catalog]:
    """`document` without `deployment`, and the catalog it makes.

    Raises:
        UnknownDeploymentError: no deployment has that id.
        ConfigError: the catalog would be invalid (another deployment's fallbacks name it, or it was
            the last one).
    """
    entries = _entries(document)
    del entries[_index(entries, deployment)]
    new = {**copy.deepcopy(dict(document)), "deployments": entries}
    return new, validate(new)


def to_toml(document: Mapping[str, Any], *, header: str = "") -> str:
    """The document as a catalog file: one `[[deployments]]` table each, nested tables inline.

    `header` lines are written first as comments.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for key, value in document.items():
        if key != "deployments":
            lines.append(f"{_key(key)} = {_value(value)}")
    for entry in _entries(document):
        lines += ["", "[[deployments]]"]
        lines += [f"{_key(k)} = {_value(v)}" for k, v in entry.items() if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _value(value: Any) -> str:
    """One TOML value: strings as basic strings (JSON's escapes are TOML's), tables inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        # TOML has no null: a None field is left out, which is its default.
        pairs = [f"{_key(str(k))} = {_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(pairs) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)
