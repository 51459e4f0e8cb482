"""The schema-instance generator: every value it builds validates against its schema (per `jsonschema`)."""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import Enum
from typing import Any, Literal
from uuid import UUID

import jsonschema
import pytest
from pydantic import BaseModel, Field

from router_core.sim.regex_gen import matching_string
from router_core.sim.schema_gen import SchemaError, schema_instance, stable_salt


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str = Field(min_length=5, max_length=40)
    zip: str = Field(pattern=r"^\d{5}(-\d{4})?$")


class Node(BaseModel):
    value: int
    children: list[Node] = []
    parent: Node | None = None


class Person(BaseModel):
    name: str
    age: int = Field(ge=18, le=30)
    score: float = Field(gt=0, lt=1)
    color: Color
    kind: Literal["a", "b"]
    born: date
    seen: datetime
    id: UUID
    addresses: list[Address] = Field(min_length=2)
    tags: set[str]
    tree: Node
    note: str | None = None
    weight: float = Field(multiple_of=0.25, ge=3)
    count: int = Field(multiple_of=7, gt=100, lt=120)


SCHEMAS: dict[str, Any] = {
    "pydantic model with $defs, enums, formats, bounds": Person.model_json_schema(),
    "enum, additionalProperties false": {
        "type": "object",
        "properties": {"a": {"type": "string", "enum": ["x", "y"]}, "b": {"type": "boolean"}},
        "required": ["a"],
        "additionalProperties": False,
    },
    "integer bounds": {
        "type": "array",
        "items": {"type": "integer", "minimum": -3, "maximum": -3},
        "minItems": 3,
    },
    "exclusive bounds in a type list": {
        "type": ["null", "integer"],
        "exclusiveMinimum": 0,
        "exclusiveMaximum": 2,
    },
    "draft-4 exclusive bounds": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "number",
        "minimum": 5,
        "exclusiveMinimum": True,
        "maximum": 6,
        "exclusiveMaximum": True,
    },
    "oneOf overlapping branches": {"oneOf": [{"type": "number"}, {"type": "integer"}]},
    "anyOf first branch": {"anyOf": [{"type": "string", "const": "first"}, {"type": "integer"}]},
    "recursive strict-mode list": {
        "type": "object",
        "properties": {"next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}, "v": {"type": "string"}},
        "required": ["next", "v"],
        "additionalProperties": False,
    },
    "definitions and multipleOf": {
        "definitions": {
            "x": {"type": "object", "properties": {"q": {"$ref": "#/definitions/y"}}, "required": ["q"]},
            "y": {"type": "number", "multipleOf": 0.1, "minimum": 0.35},
        },
        "$ref": "#/definitions/x",
    },
    "minProperties from additionalProperties": {
        "type": "object",
        "minProperties": 3,
        "additionalProperties": {"type": "boolean"},
    },
    "maxProperties": {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"}},
        "required": ["c"],
        "maxProperties": 1,
    },
    "nested arrays of objects": {
        "type": "object",
        "properties": {
            "rows": {
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {"cells": {"type": "array", "items": {"type": "number"}, "minItems": 3}},
                    "required": ["cells"],
                },
            }
        },
        "required": ["rows"],
    },
    "uniqueItems": {
        "type": "array",
        "uniqueItems": True,
        "minItems": 4,
        "items": {"type": "integer", "minimum": 0},
    },
    "prefixItems": {
        "type": "array",
        "prefixItems": [{"const": 1}, {"type": "string"}],
        "items": False,
        "minItems": 2,
    },
    "contains": {"type": "array", "items": {"type": "integer"}, "contains": {"minimum": 50}},
    "allOf": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string", "format": "email"}}, "required": ["b"]},
        ]
    },
    "string lengths and formats": {
        "type": "object",
        "properties": {
            "long": {"type": "string", "minLength": 100},
            "short": {"type": "string", "maxLength": 2},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$", "minLength": 8},
            "when": {"type": "string", "format": "date-time"},
            "ip": {"type": "string", "format": "ipv4"},
            "link": {"type": "string", "format": "uri"},
        },
        "required": ["long", "short", "code", "when", "ip", "link"],
    },
    "dependentRequired": {
        "type": "object",
        "properties": {"card": {"type": "string"}, "billing": {"type": "string"}},
        "dependentRequired": {"card": ["billing"]},
    },
    "nothing declared": {},
    "true": True,
}


@pytest.mark.parametrize("schema", list(SCHEMAS.values()), ids=list(SCHEMAS))
def test_instances_validate(schema: Any) -> None:
    checker = jsonschema.FormatChecker()
    for salt in range(25):
        value = schema_instance(schema, words=("weather", "in", "paris"), salt=salt)
        jsonschema.validate(value, schema, format_checker=checker)


def test_instances_are_deterministic_and_vary_with_the_salt() -> None:
    schema = SCHEMAS["pydantic model with $defs, enums, formats, bounds"]
    first = schema_instance(schema, words=("a", "b"), salt=3)
    assert schema_instance(schema, words=("a", "b"), salt=3) == first
    assert schema_instance(schema, words=("a", "b"), salt=4) != first
    assert stable_salt(None, "tool", 0) == stable_salt(None, "tool", 0)


def test_optional_properties_near_the_root_and_words_in_strings() -> None:
    value = schema_instance(
        {"type": "object", "properties": {"city": {"type": "string"}, "note": {"type": "string"}}},
        words=("paris",),
    )
    assert value == {"city": "paris", "note": "paris"}


def test_constraints_moved_into_a_description_are_honoured() -> None:
    # anthropic's SDK writes the constraints the Messages API does not enforce into the description.
    schema = {
        "type": "object",
        "properties": {
            "confidence": {"type": "number", "description": "How sure\n\n{maximum: 1, minimum: 0}"},
            "count": {"type": "integer", "description": "{exclusiveMinimum: 500, multipleOf: 7}"},
            "tags": {"type": "array", "items": {"type": "string"}, "description": "{minItems: 3}"},
            "day": {"type": "string", "description": "{format: date}"},
        },
        "required": ["confidence", "count", "tags", "day"],
    }
    hinted = {
        "type": "object",
        "properties": {
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "count": {"type": "integer", "exclusiveMinimum": 500, "multipleOf": 7},
            "tags": {"type": "array", "minItems": 3},
            "day": {"type": "string", "format": "date"},
        },
    }
    for salt in range(10):
        value = schema_instance(schema, salt=salt)
        jsonschema.validate(value, schema)
        jsonschema.validate(value, hinted, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize(
    "schema",
    [
        False,
        {"type": "object", "properties": {"x": False}, "required": ["x"]},
        {"$ref": "#/$defs/missing"},
        {"anyOf": [False]},
        {"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]},
    ],
)
def test_schemas_without_a_buildable_instance(schema: Any) -> None:
    with pytest.raises(SchemaError):
        schema_instance(schema)


@pytest.mark.parametrize(
    ("pattern", "min_length"),
    [
        (r"^[A-Z]{2}-\d{3,}$", 8),
        (r"^(?:foo|bar)+baz$", 9),
        (r"^[^aeiou]{4}$", 0),
        (r"^\w+@\w+\.com$", 10),
        (r"^v\d+\.\d+(?=x)x$", 0),
        (r"^\s*\S+\W$", 5),
    ],
)
def test_strings_built_for_patterns(pattern: str, min_length: int) -> None:
    text = matching_string(pattern, ["no match here"], lo=min_length)
    assert text is not None
    assert re.search(pattern, text)
    assert len(text) >= min_length


def test_patterns_without_a_built_string() -> None:
    assert matching_string(r"^(a|b)\1$", ["fallback"]) == "fallback"  # back-references: not built
    assert matching_string(r"^[^aeiou]{4}$", ["fallback"], lo=6) == "fallback"  # too short to fit
    assert matching_string("(", ["x"]) is None  # not a regex
