"""JSON instances built from a JSON Schema: the sim's tool-call arguments and structured answers.

`schema_instance` walks the schema and builds a value that validates against it, deterministically
(same schema, words and salt: same value). Supported: `type` (one or a list), `const`, `enum`,
`properties` / `required` / `additionalProperties` (false is respected) / `min|maxProperties` /
`dependentRequired`, `items` / `prefixItems` / `min|maxItems` / `uniqueItems` / `contains`,
`min|maxLength`, `format` (date, date-time, time, email, uri, uuid, ipv4, ipv6, hostname, ...),
`pattern` (best effort, `regex_gen`), `minimum` / `maximum` / exclusive bounds /
`multipleOf`, `anyOf` (first branch), `oneOf` (first branch that matches no other), `allOf`
(merged), and local `$ref`s (`#/$defs/...`, `#/definitions/...`, `#`). Ignored: `not`, `if`/`then`
/`else`, `dependentSchemas`, `patternProperties`, remote `$ref`s.

Like a model that reads descriptions, it also honours the constraints the anthropic SDK moves out
of a schema into its `description` (`"... {minimum: 0, maximum: 1}"`) because the Messages API
does not enforce them, so the SDK's own `messages.parse` validation passes.

Optional properties are filled in near the root and left out deeper down, and deep down an
`anyOf` / `oneOf` / type list prefers a branch without `$ref`, so recursive schemas end.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeGuard

from router_core.sim.regex_gen import matching_string

__all__ = ["SchemaError", "schema_instance", "stable_salt"]

# Optional properties and one array item are produced down to this depth; only what is required below.
_RICH_DEPTH = 3
# Past this depth anyOf / oneOf / type lists prefer a branch without $ref.
_SHALLOW_DEPTH = 6
_MAX_DEPTH = 48
_MAX_REF_HOPS = 32
_FALLBACK_WORDS = ("sim", "value", "alpha", "beta", "gamma", "delta")
_FORMATS: dict[str, str] = {
    "date": "2024-05-17",
    "date-time": "2024-05-17T09:30:00Z",
    "time": "09:30:00Z",
    "duration": "P1DT2H",
    "email": "sim@example.com",
    "idn-email": "sim@example.com",
    "hostname": "sim.example.com",
    "idn-hostname": "sim.example.com",
    "ipv4": "192.0.2.7",
    "ipv6": "2001:db8::7",
    "uri": "https://example.com/sim",
    "url": "https://example.com/sim",
    "iri": "https://example.com/sim",
    "uri-reference": "/sim",
    "iri-reference": "/sim",
    "uri-template": "https://example.com/{id}",
    "json-pointer": "/sim",
    "relative-json-pointer": "0",
    "regex": "^sim$",
}
_TYPE_HINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("object", ("properties", "required", "additionalProperties", "minProperties", "patternProperties")),
    ("array", ("items", "prefixItems", "minItems", "maxItems", "contains")),
    ("string", ("minLength", "maxLength", "pattern", "format")),
    ("number", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")),
)
# `{minimum: 0, maximum: 1}` at the end of a description: what anthropic's transform_schema writes.
_HINTS = re.compile(r"\{([^{}]*)\}\s*$")
_NUMERIC_HINTS = frozenset(
    (
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    )
)  # fmt: skip


class SchemaError(ValueError):
    """The schema admits no instance the generator can build (a `false` schema, endless recursion)."""


def stable_salt(*parts: object) -> int:
    """A salt from `parts` that is the same in every process (unlike `hash`)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


def schema_instance(schema: object, *, words: Sequence[str] = (), salt: int = 0) -> Any:
    """Build a JSON value valid for `schema`.

    Args:
        schema: A JSON Schema (a mapping or a boolean).
        words: Words to build strings from (a prompt's words, a tool result's); a canned list if empty.
        salt: Varies the choices (enum member, numbers, which words) deterministically.

    Returns:
        A JSON-ready value.

    Raises:
        SchemaError: If the schema admits nothing the generator can build.
    """
    return _Generator(schema, tuple(words) or _FALLBACK_WORDS).build(schema, salt, 0)


def _mix(salt: int, key: object) -> int:
    return zlib.crc32(f"{salt}:{key}".encode())


def _has_ref(schema: object) -> bool:
    if isinstance(schema, Mapping):
        return "$ref" in schema or any(_has_ref(value) for value in schema.values())
    if isinstance(schema, list):
        return any(_has_ref(item) for item in schema)
    return False


def _type_ok(value: object, kind: str) -> bool:
    checks: dict[str, Callable[[object], bool]] = {
        "null": lambda v: v is None,
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: (
            (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
        ),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    check = checks.get(kind)
    return check is None or check(value)


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Both schemas at once, as far as the generator cares (allOf, and siblings of anyOf/$ref)."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if old is None:
            merged[key] = value
        elif key == "properties" and isinstance(old, Mapping) and isinstance(value, Mapping):
            props = dict(old)
            for name, sub in value.items():
                props[name] = {"allOf": [props[name], sub]} if name in props else sub
            merged[key] = props
        elif key == "required" and isinstance(old, list) and isinstance(value, list):
            merged[key] = [*old, *(name for name in value if name not in old)]
        elif key == "type":
            merged[key] = _intersect_types(old, value)
        elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
            merged[key] = max(old, value) if _is_number(old) and _is_number(value) else value
        elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
            merged[key] = min(old, value) if _is_number(old) and _is_number(value) else value
        elif key == "enum" and isinstance(old, list) and isinstance(value, list):
            merged[key] = [item for item in old if item in value] or value
        elif key == "allOf" and isinstance(old, list) and isinstance(value, list):
            merged[key] = [*old, *value]
        else:
            merged[key] = value
    return merged


def _intersect_types(old: object, new: object) -> list[Any]:
    """Types allowed by both; `integer` is what `integer` and `number` share."""
    olds = old if isinstance(old, list) else [old]
    news = new if isinstance(new, list) else [new]
    both = [t for t in olds if t in news]
    if "integer" not in both and "integer" in olds + news and "number" in olds + news:
        both.append("integer")
    return both or news


def _description_hints(description: str) -> dict[str, Any]:
    """Numeric constraints and a format written into a description as `{key: value, ...}`."""
    found = _HINTS.search(description)
    if found is None:
        return {}
    hints: dict[str, Any] = {}
    for item in found.group(1).split(", "):
        key, _, raw = item.partition(": ")
        if key in _NUMERIC_HINTS:
            try:
                number = float(raw)
            except ValueError:
                continue
            hints[key] = int(number) if number.is_integer() and "." not in raw else number
        elif key == "format" and raw.replace("-", "").isalpha():
            hints[key] = raw
    return hints


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Generator:
    """One walk over a schema; `root` resolves `$ref`s, `words` feed the strings."""

    def __init__(self, root: object, words: tuple[str, ...]) -> None:
        self.root = root
        self.words = words
        self._validator: Any = None

    # --- schema plumbing ---------------------------------------------------------------------

    def _pointer(self, ref: str) -> object:
        if not ref.startswith("#"):
            return {}  # remote references are not followed: an unconstrained value
        node: object = self.root
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaError(f"unresolvable $ref {ref!r}")
        return node

    def _flatten(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        """`schema` with its `$ref` followed and its `allOf` merged in."""
        flat = dict(schema)
        for _ in range(_MAX_REF_HOPS):
            ref = flat.pop("$ref", None)
            all_of = flat.pop("allOf", None)
            if not isinstance(ref, str) and not isinstance(all_of, list):
                return flat
            if isinstance(ref, str):
                target = self._pointer(ref)
                if target is False:
                    raise SchemaError(f"$ref {ref!r} is the false schema")
                flat = _merge(target if isinstance(target, Mapping) else {}, flat)
            for part in all_of if isinstance(all_of, list) else []:
                if part is False:
                    raise SchemaError("allOf contains the false schema")
                if isinstance(part, Mapping):
                    flat = _merge(flat, part)
        raise SchemaError("too many nested $ref / allOf")

    def _matches(self, value: object, schema: object) -> bool:
        if self._validator is None:
            import jsonschema  # noqa: PLC0415  # only for oneOf

            root: Any = self.root
            self._validator = jsonschema.validators.validator_for(root)(root)
        target: Any = schema
        return bool(self._validator.evolve(schema=target).is_valid(value))

    def _pick_branch(self, branches: list[Any], depth: int) -> list[Any]:
        """Branches in the order to try: as given, or ref-free ones first when deep."""
        if depth >= _SHALLOW_DEPTH:
            return sorted(branches, key=_has_ref)  # stable: keeps the given order otherwise
        return branches

    # --- values ------------------------------------------------------------------------------

    def build(self, schema: object, salt: int, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise SchemaError("the schema recurses without end")
        if schema is False:
            raise SchemaError("the false schema admits no value")
        if not isinstance(schema, Mapping):
            schema = {}
        flat = self._flatten(schema)
        description = flat.get("description")
        if isinstance(description, str) and description.endswith("}"):
            flat = {**_description_hints(description), **flat}
        if "const" in flat:
            return flat["const"]
        for key in ("anyOf", "oneOf"):
            branches = flat.pop(key, None)
            if isinstance(branches, list) and branches:
                return self._branch(flat, key, branches, salt, depth)
        kind = self._kind(flat, depth)
        if isinstance(flat.get("enum"), list) and flat["enum"]:
            fitting = [v for v in flat["enum"] if _type_ok(v, kind)] or flat["enum"]
            return fitting[salt % len(fitting)]
        maker: Callable[[dict[str, Any], int, int], Any] = {
            "null": lambda s, salt, depth: None,
            "boolean": lambda s, salt, depth: salt % 2 == 0,
            "integer": self._integer,
            "number": self._number,
            "string": self._string,
            "array": self._array,
            "object": self._object,
        }.get(kind, self._string)
        return maker(flat, salt, depth)

    def _branch(self, flat: dict[str, Any], key: str, branches: list[Any], salt: int, depth: int) -> Any:
        ordered = [b for b in self._pick_branch(branches, depth) if b is not False]
        if not ordered:
            raise SchemaError(f"every {key} branch is the false schema")
        first: Any = None
        for index, branch in enumerate(ordered):
            merged = _merge(flat, self._flatten(branch) if isinstance(branch, Mapping) else {})
            value = self.build(merged, salt, depth)
            if key == "anyOf":
                return value
            others = [b for b in branches if b is not branch]
            if not any(self._matches(value, other) for other in others):
                return value
            if index == 0:
                first = value
        return first

    def _kind(self, flat: Mapping[str, Any], depth: int) -> str:
        declared = flat.get("type")
        if isinstance(declared, str):
            return declared
        if isinstance(declared, list) and declared:
            concrete = [t for t in declared if t != "null"]
            if not concrete or (depth >= _SHALLOW_DEPTH and "null" in declared):
                return "null"
            return str(concrete[0])
        for kind, hints in _TYPE_HINTS:
            if any(hint in flat for hint in hints):
                return kind
        return "string"

    def _phrase(self, salt: int, count: int) -> str:
        """Up to `count` of the words, each at most once, starting at a salted position."""
        start, size = salt % len(self.words), len(self.words)
        return " ".join(self.words[(start + i) % size] for i in range(min(count, size)))

    def _string(self, s: dict[str, Any], salt: int, depth: int) -> str:
        lo = int(s.get("minLength", 0))
        hi = s.get("maxLength")
        fmt = s.get("format")
        if fmt == "uuid":
            digits = f"{salt:08x}{_mix(salt, 1):08x}{_mix(salt, 2):08x}{_mix(salt, 3):08x}"
            text = f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-8{digits[17:20]}-{digits[20:32]}"
        else:
            text = _FORMATS.get(fmt, "") if isinstance(fmt, str) else ""
            text = text or self._phrase(salt, 3)
        pattern = s.get("pattern")
        if isinstance(pattern, str):
            candidates = [text, self._phrase(salt, 1), *_FORMATS.values()]
            found = matching_string(pattern, candidates, lo, hi if isinstance(hi, int) else None)
            if found is None:
                raise SchemaError(f"invalid pattern {pattern!r}")
            return found
        if len(text) < lo:
            filler = text + " " + self._phrase(salt + 1, 8)
            text = (filler + " ") * (lo // (len(filler) + 1) + 1)
            text = text[:lo]
        if isinstance(hi, int) and len(text) > hi:
            text = text[:hi]
        return text

    def _bounds(self, s: Mapping[str, Any]) -> tuple[float | None, bool, float | None, bool]:
        """(low, low is exclusive, high, high is exclusive), from drafts 4 to 2020-12."""
        low, high = s.get("minimum"), s.get("maximum")
        low_x = high_x = False
        ex_min, ex_max = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
        if ex_min is True:
            low_x = True
        elif _is_number(ex_min) and (low is None or ex_min >= low):
            low, low_x = ex_min, True
        if ex_max is True:
            high_x = True
        elif _is_number(ex_max) and (high is None or ex_max <= high):
            high, high_x = ex_max, True
        return low, low_x, high, high_x

    def _integer(self, s: dict[str, Any], salt: int, depth: int) -> int:
        low, low_x, high, high_x = self._bounds(s)
        lo = None if low is None else (math.floor(low) + 1 if low_x else math.ceil(low))
        hi = None if high is None else (math.ceil(high) - 1 if high_x else math.floor(high))
        value = 1 + salt % 100
        if lo is not None and hi is None:
            value = lo + salt % 10
        if hi is not None and value > hi:
            value = hi - (salt % 10 if lo is None else min(salt % 10, hi - lo))
        if lo is not None and value < lo:
            value = lo
        step = s.get("multipleOf")
        if _is_number(step) and step > 0:
            unit = step if float(step).is_integer() else None
            unit = int(unit) if unit is not None else _int_multiple(step)
            value = math.ceil(value / unit) * unit
            if hi is not None and value > hi:
                value = math.floor(hi / unit) * unit
        return int(value)

    def _number(self, s: dict[str, Any], salt: int, depth: int) -> float | int:
        low, low_x, high, high_x = self._bounds(s)
        step = s.get("multipleOf")
        if _is_number(step) and step > 0:
            return _multiple(step, low, low_x, high, high_x=high_x, salt=salt)
        value: float = 1.5 + salt % 100
        if low is not None and high is not None:
            return low + (high - low) / 2 if low_x or high_x or value < low or value > high else value
        if low is not None and (value < low or (low_x and value == low)):
            value = low + 1.5
        if high is not None and (value > high or (high_x and value == high)):
            value = high - 1.5
        return value

    def _array(self, s: dict[str, Any], salt: int, depth: int) -> list[Any]:
        prefix = s.get("prefixItems")
        items = s.get("items", {})
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, s.get("additionalItems", {})
        prefix = prefix if isinstance(prefix, list) else []
        lo = int(s.get("minItems", 0))
        hi = s.get("maxItems")
        count = max(lo, 1) if depth < _RICH_DEPTH else lo
        if isinstance(hi, int):
            count = min(count, hi)
        if items is False:
            count = min(count, len(prefix))
        contains = s.get("contains")
        if contains is not None and count == 0 and hi != 0:
            count = 1
        values: list[Any] = []
        for index in range(count):
            sub = prefix[index] if index < len(prefix) else items
            if index == 0 and contains is not None and isinstance(sub, Mapping | bool):
                sub = _merge(
                    sub if isinstance(sub, Mapping) else {}, contains if isinstance(contains, Mapping) else {}
                )
            value = self.build(sub, _mix(salt, index), depth + 1)
            for attempt in range(1, 8):
                if not s.get("uniqueItems") or value not in values:
                    break
                value = self.build(sub, _mix(salt, f"{index}.{attempt}"), depth + 1)
            values.append(value)
        return values

    def _object(self, s: dict[str, Any], salt: int, depth: int) -> dict[str, Any]:
        declared = s.get("properties")
        props: Mapping[str, Any] = declared if isinstance(declared, Mapping) else {}
        required = [name for name in s.get("required", []) if isinstance(name, str)]
        extra = s.get("additionalProperties", True)
        wanted = [name for name in props if name in required or depth < _RICH_DEPTH]
        wanted += [name for name in required if name not in props]
        dependent = s.get("dependentRequired")
        if isinstance(dependent, Mapping):
            for name in list(wanted):
                wanted += [d for d in dependent.get(name, []) if d not in wanted]
        low, high = int(s.get("minProperties", 0)), s.get("maxProperties")
        wanted += [name for name in props if name not in wanted][: max(0, low - len(wanted))]
        spare = 0
        while len(wanted) < low and extra is not False:
            spare += 1
            if f"extra_{spare}" not in props:
                wanted.append(f"extra_{spare}")
        if isinstance(high, int) and len(wanted) > high:
            optional = [name for name in wanted if name not in required]
            drop = set(optional[len(optional) - (len(wanted) - high) :])
            wanted = [name for name in wanted if name not in drop]
        result: dict[str, Any] = {}
        for name in wanted:
            sub = props.get(name, extra if isinstance(extra, Mapping) else {})
            result[name] = self.build(sub, _mix(salt, name), depth + 1)
        return result


def _int_multiple(step: float) -> int:
    """The smallest positive integer multiple of a fractional `step`, as jsonschema checks it."""
    for k in range(1, 10_001):
        candidate = k * step
        if abs(candidate - round(candidate)) < 1e-9 and round(candidate) > 0:
            return round(candidate)
    raise SchemaError(f"no integer is a multiple of {step}")


def _multiple(
    step: float, low: float | None, low_x: bool, high: float | None, *, high_x: bool, salt: int
) -> float | int:
    """A multiple of `step` inside the bounds, chosen so that `value / step` is an exact integer."""
    start = 1 + salt % 10
    if low is not None:
        start = max(start, math.floor(low / step) if step else 0)
    for k in range(start, start + 10_000):
        value: float | int = k * step
        if float(step).is_integer():
            value = int(value)
        ok_low = low is None or (value > low if low_x else value >= low)
        ok_high = high is None or (value < high if high_x else value <= high)
        if ok_low and ok_high and (value / step) == int(value / step):
            return value
        if not ok_high:
            break
    for k in range(start, start - 10_000, -1):
        value = k * step
        ok_low = low is None or (value > low if low_x else value >= low)
        ok_high = high is None or (value < high if high_x else value <= high)
        if ok_low and ok_high and (value / step) == int(value / step):
            return value
    raise SchemaError(f"no multiple of {step} lies within the bounds")
