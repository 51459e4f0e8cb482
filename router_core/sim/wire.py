"""What the sim reads from a request, in either provider's dialect, and how it refuses one.

Pure functions, no I/O: `world.py` decides what happens to a request, `answers.py` what the answer
says, `replies.py` what its bytes look like; this module turns an OpenAI Chat Completions or an
Anthropic Messages body into one `WireRequest`, or a `RequestError` shaped like the provider's 400.

A plain text request touches only `model`, `messages` (one pass), `max_tokens` and a few dictionary
lookups for the optional fields; everything else (tools, images, tool results, formats) is parsed
only when present. An OpenAI embeddings body becomes an `EmbeddingRequest` (`parse_embedding_body`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal

from pydantic_core import from_json, to_json

from router_core.sim.options import (
    ErrorKind,
    RequestError,
    ToolSpec,
    anthropic_options,
    openai_options,
)
from router_core.tokens import TOKENS_PER_MESSAGE, estimate_tokens

__all__ = [
    "ANTHROPIC_IMAGE_TOKENS",
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "ERROR_STATUS",
    "MAX_EMBEDDING_DIMENSIONS",
    "MAX_EMBEDDING_INPUTS",
    "OPENAI_IMAGE_TOKENS",
    "OPENAI_IMAGE_TOKENS_LOW",
    "Dialect",
    "EmbeddingRequest",
    "EncodingFormat",
    "ErrorKind",
    "OutputFormat",
    "RequestError",
    "ToolMode",
    "ToolSpec",
    "WireRequest",
    "context_length_message",
    "decode_body",
    "dumps",
    "error_body",
    "parse_body",
    "parse_embedding_body",
    "parse_request",
]

Dialect = Literal["openai", "anthropic"]
ToolMode = Literal["auto", "none", "required"]
OutputFormat = Literal["text", "json_object", "json_schema"]
EncodingFormat = Literal["float", "base64"]

DEFAULT_EMBEDDING_DIMENSIONS = 1536
"""Vector length when an embeddings request gives no `dimensions` (text-embedding-3-small's)."""
MAX_EMBEDDING_DIMENSIONS = 3072
"""The largest `dimensions` the sim accepts (text-embedding-3-large's native length)."""
MAX_EMBEDDING_INPUTS = 2048
"""The most texts one embeddings request may carry, as on OpenAI."""

OPENAI_IMAGE_TOKENS_LOW = 85
"""Prompt tokens of one OpenAI `image_url` part with `detail: "low"`."""
OPENAI_IMAGE_TOKENS = 765
"""Prompt tokens of one OpenAI `image_url` part with any other detail ("high", "auto", none)."""
ANTHROPIC_IMAGE_TOKENS = 1_600
"""Prompt tokens of one Anthropic `image` block, whatever its source (url, base64, file)."""

# kind -> (HTTP status, OpenAI error.type, OpenAI error.code, Anthropic error.type)
_ERRORS: dict[ErrorKind, tuple[int, str, str | None, str]] = {
    "invalid_request": (400, "invalid_request_error", None, "invalid_request_error"),
    "not_found": (404, "invalid_request_error", "model_not_found", "not_found_error"),
    "rate_limit": (429, "rate_limit_exceeded", "rate_limit_exceeded", "rate_limit_error"),
    "server_error": (500, "server_error", None, "api_error"),
    "context_length": (400, "invalid_request_error", "context_length_exceeded", "invalid_request_error"),
}
ERROR_STATUS: dict[ErrorKind, int] = {kind: spec[0] for kind, spec in _ERRORS.items()}

_WORD = re.compile(r"\w+")
_MAX_PROMPT_WORDS = 12
_ANTHROPIC_IMAGE_SOURCES = ("base64", "url", "file")


@dataclass(slots=True)
class WireRequest:
    """What the sim needs from a chat request, independent of the provider dialect.

    Read-only by convention: it is built on every request, and a frozen dataclass's `__init__`
    (one `object.__setattr__` per field) would cost a plain request ~2 µs more.

    Attributes:
        dialect: Which provider API the request came through.
        model: The requested model name, echoed back in the response.
        prompt_tokens: `router_core.tokens.prompt_tokens` of the messages (tool calls and results
            included), plus the system text, plus `image_tokens`, plus the estimated tokens of the
            tool definitions and of a `json_schema` output schema.
        prompt_words: A few words of the last user turn, used to make the answer look related.
        max_tokens: The request's completion cap, if it set one; it caps reasoning + visible tokens.
        stream: Whether the client asked for server-sent events.
        include_usage: OpenAI `stream_options.include_usage`: send a final usage chunk.
        tools: The function tools the model may call (OpenAI `function` tools after any
            `allowed_tools` restriction; Anthropic custom tools). Other tool kinds are accepted
            and never called.
        tool_choice: "auto", "none" or "required" (OpenAI "required", Anthropic "any" / "tool").
        forced_tool: The tool a named tool_choice forces, if any.
        parallel_tool_calls: OpenAI `parallel_tool_calls`, or not Anthropic
            `disable_parallel_tool_use`. Recorded only: the sim makes one call per answer.
        output_format: "text", "json_object" (OpenAI) or "json_schema" (OpenAI `response_format`,
            Anthropic `output_config.format`).
        output_schema: The JSON Schema of a "json_schema" answer.
        n: OpenAI `n`: how many choices to answer with (always 1 for Anthropic).
        logprobs: OpenAI `logprobs`.
        top_logprobs: OpenAI `top_logprobs` (0 when not given).
        seed: OpenAI `seed`; it varies generated tool arguments and JSON answers.
        stop: Stop sequences (OpenAI `stop`, Anthropic `stop_sequences`).
        reasoning_effort: OpenAI `reasoning_effort`, or Anthropic `output_config.effort`.
        thinking: Anthropic `thinking.type` ("enabled", "adaptive", ...), if given.
        thinking_budget: Anthropic `thinking.budget_tokens`, if given.
        images: How many image inputs the messages hold.
        image_tokens: Prompt tokens counted for them (see the `*_IMAGE_TOKENS` constants).
        tool_result_words: When the last turn answers tool calls (OpenAI `tool` messages, an
            Anthropic user turn with `tool_result` blocks): the first words of those results;
            None otherwise.
    """

    dialect: Dialect
    model: str
    prompt_tokens: int
    prompt_words: tuple[str, ...]
    max_tokens: int | None
    stream: bool
    include_usage: bool
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolMode = "auto"
    forced_tool: str | None = None
    parallel_tool_calls: bool = True
    output_format: OutputFormat = "text"
    output_schema: Mapping[str, Any] | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    reasoning_effort: str | None = None
    thinking: str | None = None
    thinking_budget: int | None = None
    images: int = 0
    image_tokens: int = 0
    tool_result_words: tuple[str, ...] | None = None


def dumps(payload: object) -> bytes:
    """Serialize `payload` as compact UTF-8 JSON (pydantic-core: a few times `json.dumps`'s speed)."""
    return to_json(payload)


def _first_words(text: str) -> list[str]:
    # The first few words only: finding them all in a megabyte prompt held the (shared) event loop.
    return [match.group() for match in islice(_WORD.finditer(text), _MAX_PROMPT_WORDS)]


def _content_text(content: object) -> str:
    """Text of a message `content`: a string or a list of blocks/parts, non-text ones ignored."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts)
    return ""


class _Walk:
    """One pass over the messages: the text to count, the words to echo, images and tool turns."""

    def __init__(self) -> None:
        self.tokens = 0
        self.last_user: str | None = None
        self.last_text = ""
        self.images = 0
        self.image_tokens = 0
        self.tool_result: list[str] | None = None
        self.call_ids: set[str] = set()
        self.texts: list[str] = []

    def count(self, text: str) -> None:
        self.tokens += estimate_tokens(text) + TOKENS_PER_MESSAGE
        self.last_text = text

    def image(self, tokens: int) -> None:
        self.images += 1
        self.image_tokens += tokens


def _openai_parts(walk: _Walk, parts: list[Any], where: str) -> str:
    texts: list[str] = []
    for j, part in enumerate(parts):
        if not isinstance(part, Mapping):
            raise RequestError(
                f"Invalid type for '{where}.[{j}]': expected an object.", param=f"{where}.[{j}]"
            )
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, Mapping) or not isinstance(image.get("url"), str):
                param = f"{where}.[{j}].image_url.url"
                raise RequestError(f"Missing required parameter: '{param}'.", param=param)
            low = image.get("detail") == "low"
            walk.image(OPENAI_IMAGE_TOKENS_LOW if low else OPENAI_IMAGE_TOKENS)
    return "\n".join(texts)


def _walk_openai(messages: list[dict[str, Any]]) -> _Walk:
    walk = _Walk()
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = _openai_parts(walk, content, f"messages.[{i}].content")
        else:
            text = ""
        if role == "user":
            walk.last_user = text
            walk.tool_result = None
        elif role == "assistant":
            calls = message.get("tool_calls")
            if calls:
                text = _openai_history_calls(walk, calls, i, text)
            walk.tool_result = None
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in walk.call_ids:
                raise RequestError(
                    f"Invalid parameter: 'tool_call_id' {call_id!r} of a message with role 'tool' must "
                    "answer a 'tool_calls' entry of a preceding assistant message.",
                    param=f"messages.[{i}].tool_call_id",
                )
            walk.tool_result = [*(walk.tool_result or []), text]
        else:
            walk.tool_result = None
        walk.count(text)
        walk.texts.append(text)
    return walk


def _openai_history_calls(walk: _Walk, calls: object, i: int, text: str) -> str:
    if not isinstance(calls, list):
        raise RequestError(
            "Invalid type for 'tool_calls': expected an array.", param=f"messages.[{i}].tool_calls"
        )
    pieces = [text]
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, Mapping) else None
        if (
            not isinstance(call, Mapping)
            or not isinstance(call.get("id"), str)
            or not isinstance(function, Mapping)
        ):
            param = f"messages.[{i}].tool_calls.[{j}]"
            raise RequestError(f"Invalid value for '{param}': expected an id and a function.", param=param)
        walk.call_ids.add(call["id"])
        pieces += [str(function.get("name", "")), str(function.get("arguments", ""))]
    return "\n".join(piece for piece in pieces if piece)


def _anthropic_image(walk: _Walk, block: Mapping[str, Any], where: str) -> None:
    source = block.get("source")
    if not isinstance(source, Mapping) or source.get("type") not in _ANTHROPIC_IMAGE_SOURCES:
        raise RequestError(f"{where}.source: Input tag does not match 'base64', 'url' or 'file'")
    needed = {"base64": ("media_type", "data"), "url": ("url",), "file": ("file_id",)}[source["type"]]
    for key in needed:
        if not isinstance(source.get(key), str):
            raise RequestError(f"{where}.source.{source['type']}.{key}: Field required")
    walk.image(ANTHROPIC_IMAGE_TOKENS)


def _anthropic_result(walk: _Walk, block: Mapping[str, Any], where: str) -> str:
    content = block.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") == "image":
                _anthropic_image(walk, part, f"{where}.content.{j}")
    return _content_text(content)


def _walk_anthropic(messages: list[dict[str, Any]]) -> _Walk:
    walk = _Walk()
    previous_uses: set[str] = set()
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        uses: set[str] = set()
        results: list[str] = []
        if isinstance(content, str):
            text = words_text = content
        elif isinstance(content, list):
            texts: list[str] = []
            counted: list[str] = []
            for j, block in enumerate(content):
                kind = block.get("type") if isinstance(block, Mapping) else None
                if kind == "text" and isinstance(block.get("text"), str):
                    texts.append(block["text"])
                elif kind == "image":
                    _anthropic_image(walk, block, f"messages.{i}.content.{j}")
                elif kind == "tool_use" and isinstance(block.get("id"), str):
                    uses.add(block["id"])
                    counted.append(f"{block.get('name', '')}\n{json.dumps(block.get('input', {}))}")
                elif kind == "tool_result":
                    if block.get("tool_use_id") not in previous_uses:
                        raise RequestError(
                            f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                            f"blocks: {block.get('tool_use_id')}. Each `tool_result` block must have a "
                            "corresponding `tool_use` block in the previous message."
                        )
                    results.append(_anthropic_result(walk, block, f"messages.{i}.content.{j}"))
            words_text = "\n".join(texts)
            text = "\n".join([*texts, *results, *counted])
        else:
            text = words_text = ""
        if role == "user" and (words_text or not results):
            walk.last_user = words_text
        walk.tool_result = results if role == "user" and results else None
        previous_uses = uses
        walk.count(text)
        walk.texts.append(text)
    return walk


def _max_tokens(body: Mapping[str, Any], dialect: Dialect) -> int | None:
    # OpenAI deprecated `max_tokens` for `max_completion_tokens` but still honours both.
    names = ("max_tokens",) if dialect == "anthropic" else ("max_completion_tokens", "max_tokens")
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError(f"{name}: must be an integer >= 1", param=name)
        return value
    if dialect == "anthropic":
        raise RequestError("max_tokens: Field required", param="max_tokens")
    return None


def decode_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body.

    Raises:
        RequestError: If the body is not a JSON object.
    """
    try:
        body = from_json(raw)
    except ValueError as exc:  # not UTF-8, not JSON
        raise RequestError(f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    return body


def parse_request(dialect: Dialect, raw: bytes) -> WireRequest:
    """`parse_body` of the decoded `raw` body."""
    return parse_body(dialect, decode_body(raw))


def parse_body(dialect: Dialect, body: Mapping[str, Any]) -> WireRequest:
    """Validate a decoded chat request body and extract what the sim needs.

    Args:
        dialect: The provider API the body was sent to.
        body: The request's JSON object.

    Returns:
        The parsed request.

    Raises:
        RequestError: What the real API would answer with a 400 and the sim can check cheaply: no
            `model` / `messages` (or `max_tokens` for Anthropic), a malformed image or tool call,
            a tool result answering no call, and the option errors of `router_core.sim.options`.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model: Field required", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError("messages: must be a non-empty list of message objects", param="messages")

    walk = _walk_openai(messages) if dialect == "openai" else _walk_anthropic(messages)
    prompt_size = walk.tokens + walk.image_tokens
    if dialect == "anthropic" and body.get("system"):
        prompt_size += estimate_tokens(_content_text(body["system"]))
    words = _first_words(walk.last_user if walk.last_user is not None else walk.last_text)
    max_tokens = _max_tokens(body, dialect)
    parse_options = openai_options if dialect == "openai" else anthropic_options
    options = parse_options(body, walk.texts, max_tokens)
    prompt_size += options.pop("extra_prompt_tokens", 0)
    if walk.tool_result is not None:
        options["tool_result_words"] = tuple(_first_words("\n".join(walk.tool_result)))

    stream_options = body.get("stream_options")
    return WireRequest(
        dialect=dialect,
        model=model,
        prompt_tokens=prompt_size,
        prompt_words=tuple(word.lower() for word in words),
        max_tokens=max_tokens,
        stream=body.get("stream") is True,
        include_usage=isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
        images=walk.images,
        image_tokens=walk.image_tokens,
        **options,
    )


def context_length_message(dialect: Dialect, prompt_tokens: int, window: int) -> str:
    """The provider's own wording of a context-length rejection."""
    if dialect == "openai":
        return (
            f"This model's maximum context length is {window} tokens. "
            f"However, your messages resulted in {prompt_tokens} tokens."
        )
    return f"prompt is too long: {prompt_tokens} tokens > {window} maximum"


def error_body(
    dialect: Dialect, kind: ErrorKind, message: str, *, param: str | None = None
) -> dict[str, Any]:
    """An error body shaped like the provider's, which the SDKs read into their exceptions.

    Args:
        dialect: The provider whose shape to use.
        kind: Which error; picks OpenAI's `type`/`code` or Anthropic's `error.type`.
        message: Human-readable message.
        param: OpenAI's `param` field (ignored for Anthropic).

    Returns:
        The JSON-ready body.
    """
    _, openai_type, openai_code, anthropic_type = _ERRORS[kind]
    if dialect == "openai":
        return {"error": {"message": message, "type": openai_type, "param": param, "code": openai_code}}
    return {"type": "error", "error": {"type": anthropic_type, "message": message}}


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """What the sim needs from an OpenAI `POST /v1/embeddings` body.

    Attributes:
        model: The requested model name, echoed back.
        texts: The inputs, in order (a single string is one input).
        dimensions: The vector length to answer with.
        encoding_format: "float" (JSON numbers) or "base64" (little-endian float32 bytes).
        input_tokens: `router_core.tokens.estimate_tokens` of each input.
    """

    model: str
    texts: tuple[str, ...]
    dimensions: int
    encoding_format: EncodingFormat
    input_tokens: tuple[int, ...]

    @property
    def prompt_tokens(self) -> int:
        """Tokens of all inputs: what usage reports and the request is billed."""
        return sum(self.input_tokens)


def parse_embedding_body(body: Mapping[str, Any]) -> EmbeddingRequest:
    """Validate a decoded OpenAI embeddings body.

    Raises:
        RequestError: No `model`; `input` not a non-empty string or list of at most
            `MAX_EMBEDDING_INPUTS` non-empty strings (token arrays are not simulated); `dimensions`
            not an integer in 1..`MAX_EMBEDDING_DIMENSIONS`; `encoding_format` not float or base64.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model: Field required", param="model")
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise RequestError(
            "input: must be a string or a non-empty list of strings (token arrays are not simulated)",
            param="input",
        )
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise RequestError(f"input: at most {MAX_EMBEDDING_INPUTS} inputs per request", param="input")
    empty = next((i for i, text in enumerate(texts) if not text), None)
    if empty is not None:
        raise RequestError(f"'$.input' is invalid: input {empty} is an empty string", param="input")
    dimensions = body.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
    valid = isinstance(dimensions, int) and not isinstance(dimensions, bool)
    if not valid or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS:
        raise RequestError(
            f"dimensions: must be an integer from 1 to {MAX_EMBEDDING_DIMENSIONS}", param="dimensions"
        )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise RequestError("encoding_format: must be 'float' or 'base64'", param="encoding_format")
    return EmbeddingRequest(
        model=model,
        texts=tuple(texts),
        dimensions=dimensions,
        encoding_format=encoding,
        input_tokens=tuple(estimate_tokens(text) for text in texts),
    )
