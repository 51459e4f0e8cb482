"""How `producer.inputs` words a problem: pydantic's errors as field paths, values shown short,
values no database stores by their field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from router_core.chat import NOT_FINITE

__all__ = [
    "MAX_REASONS",
    "field_problems",
    "given",
    "join",
    "json_type",
    "show",
    "unstorable_values",
    "validation_problems",
]

MAX_REASONS = 3
"""How many problems one `LineError` spells out before summarising the rest as "(and N more)"."""

_SHOW_LIMIT = 40


def validation_problems(
    exc: ValidationError, payload: dict[str, Any], prefix: str, alias_used: bool
) -> list[str]:
    """Pydantic's errors of validating `payload` as "<field.path>: <message>" (`field_problems`)."""
    errors = [
        error
        for error in exc.errors(include_url=False, include_input=False)
        # A missing `messages` is already reported in the line's own words.
        if not (error["type"] == "missing" and tuple(error["loc"]) == ("messages",))
    ]
    return field_problems(errors, payload, prefix, alias_used=alias_used)


def field_problems(
    errors: Iterable[Mapping[str, Any]], data: Any, prefix: str = "", *, alias_used: bool = False
) -> list[str]:
    """Pydantic's errors (`loc`, `msg`, `type`) of validating `data`, as "<field.path>: <message>",
    one per field path, in order.

    Paths are the input's own (`tools.0.function.name`), without pydantic's union and validator
    tags. Where a union's branches disagree (`stop` as a string or a list, `tool_choice` as a word
    or an object), only the branch the input took is reported: a "wrong type" error is dropped
    when another branch accepted the type and found something else wrong with the value or inside
    it. An error about the whole request that starts with a field's name (`top_logprobs needs
    logprobs: true`) is that field's.
    """
    found: list[tuple[str, str, str]] = []  # (path, message, pydantic's error type)
    for error in errors:
        loc = tuple(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if len(loc) >= 2 and loc[-1] == "[key]":  # a dict key: `metadata: key 'x…': too long`
            message = f"key {show(loc[-2])}: {message}"
            loc = loc[:-2]
        path = _data_path(loc, data, missing=error["type"] == "missing")
        if not path:
            path, message = _named_in_message(message, data)
        if alias_used and path.split(".", maxsplit=1)[0] == "max_tokens":
            path = "max_completion_tokens" + path[len("max_tokens") :]
        found.append((path, message, error["type"]))
    by_path: dict[str, list[str]] = {}
    for path, message, kind in found:
        if kind in _WRONG_TYPE and any(_taken(path, other, k) for other, _, k in found):
            continue  # a union branch the input did not take
        messages = by_path.setdefault(f"{prefix}{path}" if path else prefix.rstrip("."), [])
        if message not in messages:
            messages.append(message)
    return [
        f"{path}: {' or '.join(messages)}" if path else " or ".join(messages)
        for path, messages in by_path.items()
    ]


# Errors that say "this value is not of that type": in a union, the mark of a branch not taken.
_WRONG_TYPE = frozenset(
    {
        "string_type",
        "list_type",
        "dict_type",
        "model_type",
        "model_attributes_type",
        "literal_error",
        "int_type",
        "float_type",
        "bool_type",
        "none_required",
    }
)
_LEADING_FIELD = re.compile(r"^(?P<field>[A-Za-z_]\w*(?:\.\w+)*):?\s+(?P<rest>.+)$", re.DOTALL)


def _taken(path: str, other: str, kind: str) -> bool:
    """Whether an error at `other` shows that a union branch took the value at `path`."""
    return other.startswith(f"{path}.") or (other == path and kind not in _WRONG_TYPE)


def _named_in_message(message: str, data: Any) -> tuple[str, str]:
    """A whole-request error's field, when its message starts with one the input has."""
    match = _LEADING_FIELD.match(message)
    if match is None or not isinstance(data, dict) or match["field"].split(".", maxsplit=1)[0] not in data:
        return "", message
    return match["field"], match["rest"]


def _data_path(loc: tuple[int | str, ...], data: Any, *, missing: bool) -> str:
    """The dotted path of an error location, leaving out pydantic's union and validator tags."""
    parts: list[str] = []
    current = data
    for index, part in enumerate(loc):
        found, child = _child(current, part)
        if found:
            current = child
        elif not (missing and index == len(loc) - 1):
            continue  # a tag such as 'str' or 'list[dict[str,any]]', not a key of the input
        parts.append(str(part))
    return ".".join(parts)


def _child(value: Any, part: int | str) -> tuple[bool, Any]:
    """Whether ``value[part]`` exists in the input, and what it is."""
    if isinstance(value, dict) and part in value:
        return True, value[part]
    if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
        return True, value[part]
    return False, None


def join(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_REASONS])
    hidden = len(problems) - MAX_REASONS
    return f"{shown} (and {hidden} more)" if hidden > 0 else shown


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def show(value: Any) -> str:
    """A short quoted rendering of a value for a reason: 'text' or its JSON."""
    if isinstance(value, str):
        text = value if len(value) <= _SHOW_LIMIT else value[: _SHOW_LIMIT - 1] + "…"
        return repr(text)
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 1] + "…"


def given(data: dict[str, Any], key: str) -> str:
    return show(data[key]) if key in data else "nothing"


# A regex scans in C: a per-character loop in Python took ~0.1 s on a megabyte prompt.
_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable_values(value: Any, path: str) -> Iterator[str]:
    """Values JSON can carry but no database stores: NaN and infinities (PostgreSQL's JSON has
    neither), strings with NUL or a lone UTF-16 surrogate (`\\ud800`)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            yield f"{path or 'value'}: {NOT_FINITE}"
    elif isinstance(value, str):
        if "\x00" in value:
            yield f"{path or 'value'}: contains a NUL character (\\u0000), which cannot be stored"
        elif _SURROGATE.search(value):
            yield f"{path or 'value'}: contains a lone surrogate (\\ud800-\\udfff), which is not text"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from unstorable_values(key, path)
            yield from unstorable_values(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unstorable_values(item, f"{path}.{index}" if path else str(index))
