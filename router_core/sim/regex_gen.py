"""Strings that match a regular expression: the `pattern` keyword of the sim's JSON Schema values.

Best effort: candidate strings are tried first, then a string is built from the pattern's parse tree
(literals, classes, repeats at their minimum plus a few, the first branch of an alternation;
anchors and lookarounds emit nothing), checked with `re.search` before it is returned.
"""

from __future__ import annotations

import re
from re import _parser as sre_parse  # type: ignore[attr-defined,unused-ignore]  # private regex AST
from typing import Any

__all__ = ["matching_string"]

# How many repeats beyond each minimum to try, so that a minLength can be met.
_PATTERN_EXTRAS = (0, 1, 2, 4, 8, 16, 32, 64)


def matching_string(pattern: str, candidates: list[str], lo: int = 0, hi: int | None = None) -> str | None:
    """A string that `re.search(pattern, ...)` accepts, `lo` to `hi` characters long, best effort.

    Args:
        pattern: The regular expression (JSON Schema patterns are ECMA-262; the common subset is
            read by Python's parser).
        candidates: Strings to try first (the generator's natural value, a word, formats).
        lo: Minimum length.
        hi: Maximum length, if any.

    Returns:
        The first candidate that matches, else a string built from the pattern, else the first
        candidate (no string found: the value will not validate); None if the pattern is invalid.
    """

    def fits(text: str) -> bool:
        return len(text) >= lo and (hi is None or len(text) <= hi)

    try:
        compiled = re.compile(pattern)
        tree = sre_parse.parse(pattern)
    except re.error:
        return None
    for text in candidates:
        if fits(text) and compiled.search(text):
            return text
    for extra in _PATTERN_EXTRAS:
        text = _from_tree(tree, extra)
        if fits(text) and compiled.search(text):
            return text
    return candidates[0] if candidates else ""


def _char_in(code: int, items: list[tuple[Any, Any]]) -> bool:
    text = chr(code)
    for op, arg in items:
        name = str(op)
        if (name == "LITERAL" and arg == code) or (name == "RANGE" and arg[0] <= code <= arg[1]):
            return True
        if name == "CATEGORY" and re.fullmatch(_CATEGORY_RE.get(str(arg), "(?!)"), text):
            return True
    return False


_CATEGORY_RE = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
}
_CATEGORY_CHAR = {
    "CATEGORY_DIGIT": "0",
    "CATEGORY_NOT_DIGIT": "a",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": "a",
    "CATEGORY_WORD": "a",
    "CATEGORY_NOT_WORD": "-",
}


def _set_char(items: list[tuple[Any, Any]]) -> str:
    if items and str(items[0][0]) == "NEGATE":
        for candidate in "aZ0_- x.":
            if not _char_in(ord(candidate), items[1:]):
                return candidate
        return "~"
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            return chr(arg)
        if name == "RANGE":
            return chr(arg[0])
        if name == "CATEGORY":
            return _CATEGORY_CHAR.get(str(arg), "a")
    return "a"


def _from_tree(tree: Any, extra: int) -> str:
    """A string matching the parsed regex `tree`: each repeat taken `extra` more times than its minimum."""
    out: list[str] = []
    for op, arg in tree:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "NOT_LITERAL":
            out.append("a" if arg != ord("a") else "b")
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            out.append(_set_char(arg))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = arg
            count = low + extra if high == sre_parse.MAXREPEAT else min(high, low + extra)
            out.append(_from_tree(sub, extra) * count)
        elif name == "SUBPATTERN":
            out.append(_from_tree(arg[-1], extra))
        elif name == "ATOMIC_GROUP":
            out.append(_from_tree(arg, extra))
        elif name == "BRANCH":
            out.append(_from_tree(arg[1][0], extra))
        # AT (anchors), ASSERT / ASSERT_NOT (lookarounds), GROUPREF: nothing to emit.
    return "".join(out)
