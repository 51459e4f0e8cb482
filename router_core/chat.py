"""The Chat Completions vocabulary beyond plain text: messages, tools, output formats, content parts,
features.

A `ChatRequest` (router_core.models) carries these; this module also says which deployment
`Feature`s a request needs (`required_features`), so the planner can exclude a deployment that
cannot honour a field instead of silently dropping it, and checks a structured answer against
the schema the request asked for (`output_problem`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

__all__ = [
    "ALL_FEATURES",
    "NOT_FINITE",
    "Choice",
    "ContentPart",
    "Feature",
    "FunctionDef",
    "JsonSchemaFormat",
    "Message",
    "NamedToolChoice",
    "ResponseFormat",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "check_schema",
    "non_finite_numbers",
    "output_problem",
]

_TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"
# What one image costs in prompt tokens, for planning and budget holds (OpenAI's high-detail tile
# count for a 512px image plus its base; providers report the real count in usage).
IMAGE_TOKENS_ESTIMATE = 765
IMAGE_TOKENS_LOW_DETAIL = 85


NOT_FINITE = "not a finite number (NaN, Infinity and numbers beyond ±1.8e308 are refused)"


def non_finite_numbers(value: Any, path: str) -> Iterator[str]:
    """The dotted paths in a JSON-like `value` that hold NaN or an infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path or "value"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite_numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from non_finite_numbers(item, f"{path}.{index}" if path else str(index))


class Feature(StrEnum):
    """What a deployment can honour beyond plain text; the catalog lists them per deployment."""

    TOOLS = "tools"
    PARALLEL_TOOL_CALLS = "parallel_tool_calls"
    VISION = "vision"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"
    LOGPROBS = "logprobs"
    N = "n"
    """Several choices in one call; without it, routeq makes `n` calls and merges them."""
    SEED = "seed"
    REASONING = "reasoning"
    STOP = "stop"
    TEMPERATURE = "temperature"
    TOP_P = "top_p"
    PENALTIES = "penalties"
    LOGIT_BIAS = "logit_bias"
    SERVICE_TIER = "service_tier"


ALL_FEATURES = frozenset(Feature)


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=_TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            check_schema(value)
        return value


class Tool(BaseModel):
    """A function the model may call (OpenAI `tools[]`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionDef


class _FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_TOOL_NAME)


class NamedToolChoice(BaseModel):
    """`tool_choice` forcing one named function."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: _FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: the schema the answer must satisfy."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, serialize_by_alias=True, allow_inf_nan=False
    )

    name: str = Field(pattern=_TOOL_NAME)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_schema(value)
        return value


class ResponseFormat(BaseModel):
    """OpenAI `response_format`: plain text, any JSON object, or JSON valid for a schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs 'json_schema': {name, schema, strict?}")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"'json_schema' goes with type 'json_schema', not {self.type!r}")
        return self

    @property
    def schema(self) -> dict[str, Any] | None:  # type: ignore[override]
        """The schema an answer must satisfy: the given one, `{"type": "object"}` for JSON mode."""
        if self.json_schema is not None:
            return self.json_schema.schema_
        return {"type": "object"} if self.type == "json_object" else None


class _FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str


class ToolCall(BaseModel):
    """A call the assistant made (`message.tool_calls[]`); `arguments` is a JSON string."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: _FunctionCall


class _ImageUrl(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^(https?://|data:image/(png|jpeg|gif|webp);base64,)")
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(BaseModel):
    """One part of a message's content: text, or an image by URL or data URL."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: _ImageUrl | None = None

    @model_validator(mode="after")
    def _matches_type(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a 'text' part needs 'text'")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an 'image_url' part needs 'image_url': {url, detail?}")
        return self


class Message(BaseModel):
    """One chat message: text or content parts (text, images); an assistant's `tool_calls`; a
    `tool` message's result for `tool_call_id`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id': the id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an 'assistant' message carries 'tool_calls'")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only a 'tool' message carries 'tool_call_id'")
        return self

    def text(self) -> str:
        """The message's text, joining text parts."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")

    def image_tokens(self) -> int:
        """Estimated prompt tokens of the message's images (0 for text)."""
        if not isinstance(self.content, list):
            return 0
        return sum(
            IMAGE_TOKENS_LOW_DETAIL if p.image_url.detail == "low" else IMAGE_TOKENS_ESTIMATE
            for p in self.content
            if p.image_url is not None
        )

    def has_payload(self) -> bool:
        """Whether the message says anything: text, an image, tool calls or a tool result."""
        if self.tool_calls or self.tool_call_id:
            return True
        if isinstance(self.content, list):
            return any(p.image_url is not None or (p.text or "").strip() for p in self.content)
        return bool(self.content and self.content.strip())


class Choice(BaseModel):
    """One answer (`choices[]`), its message exactly as OpenAI shapes it."""

    index: int = 0
    message: dict[str, Any]
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        content = self.message.get("content")
        return content if isinstance(content, str) else ""


# The request fields' types and bounds, as OpenAI documents them: `ChatRequest` and the HTTP
# API's bodies (producer/api/schemas.py) both declare their fields with these.
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
ServiceTier = Literal["auto", "default", "flex", "scale", "priority"]
Penalty = Annotated[float, Field(ge=-2, le=2)]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]
Choices = Annotated[int, Field(ge=1, le=16)]
Stop = str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=4)]
LogitBias = dict[str, Annotated[int, Field(ge=-100, le=100)]]
TopLogprobs = Annotated[int, Field(ge=0, le=20)]
Tools = Annotated[list[Tool], Field(min_length=1, max_length=128)]
EndUser = Annotated[str, Field(max_length=256)]
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]


# Fields that need a feature whenever they are set (not None, not empty).
_SIMPLE_NEEDS: tuple[tuple[str, Feature], ...] = (
    ("parallel_tool_calls", Feature.PARALLEL_TOOL_CALLS),
    ("seed", Feature.SEED),
    ("reasoning_effort", Feature.REASONING),
    ("stop", Feature.STOP),
    ("temperature", Feature.TEMPERATURE),
    ("top_p", Feature.TOP_P),
    ("logit_bias", Feature.LOGIT_BIAS),
    ("presence_penalty", Feature.PENALTIES),
    ("frequency_penalty", Feature.PENALTIES),
)


def required_features(fields: Mapping[str, Any], images: int, tool_history: bool) -> dict[Feature, str]:
    """The features a request's set `fields` need, each with the field that needs it.

    Args:
        fields: The request's fields by name (None when not set).
        images: How many image parts its messages carry.
        tool_history: Whether its messages hold tool calls or tool results.
    """
    needs: dict[Feature, str] = {}
    if fields.get("tools") or tool_history:
        needs[Feature.TOOLS] = "tools" if fields.get("tools") else "messages"
    if images:
        needs[Feature.VISION] = "messages"
    response_format = fields.get("response_format")
    if response_format is not None and response_format.type != "text":
        needs[Feature(response_format.type)] = "response_format"
    for name, feature in _SIMPLE_NEEDS:
        value = fields.get(name)
        if value is not None and value != []:
            needs.setdefault(feature, name)
    if fields.get("logprobs"):
        needs[Feature.LOGPROBS] = "logprobs"
    if fields.get("service_tier") not in (None, "auto"):
        needs[Feature.SERVICE_TIER] = "service_tier"
    return needs


# --- JSON Schema --------------------------------------------------------------------------------
# jsonschema is imported on first use: most requests carry no schema, and startup stays fast.


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError naming the problem when `schema` is not a valid JSON Schema (or holds a
    number no database stores: NaN, an infinity)."""
    for path in non_finite_numbers(schema, ""):
        raise ValueError(f"{path}: {NOT_FINITE}")
    from jsonschema import Draft202012Validator  # noqa: PLC0415
    from jsonschema.exceptions import SchemaError  # noqa: PLC0415

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise ValueError(f"not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}") from None


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Validator:
    from jsonschema import Draft202012Validator  # noqa: PLC0415

    return Draft202012Validator(json.loads(schema_json))


_WS = re.compile(r"\s+")


def output_problem(schema: dict[str, Any], text: str | None) -> str | None:
    """Why `text` is not a JSON value valid for `schema`, or None when it is.

    The reason names the path in the answer (`$.items.0.price`) and the rule it breaks, short
    enough to record on an attempt.
    """
    if not text:
        return "the answer is empty, not JSON"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"the answer is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    validator = _validator(json.dumps(schema, sort_keys=True))
    error = next(iter(validator.iter_errors(value)), None)
    if error is None:
        return None
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    message = _WS.sub(" ", error.message)
    if len(message) > 300:
        message = message[:297] + "..."
    return f"the answer does not match the schema at ${path}: {message}"
