"""OpenAI Chat Completions <-> Anthropic Messages: a `ChatRequest` as `messages.create` keyword
arguments, and Anthropic's answer (a `Message`, or a stream's events) as OpenAI-shaped choices.

The planner only routes a request to an Anthropic deployment when it needs no feature outside
tools, parallel tool calls, vision, JSON object/schema, stop and reasoning (`catalog.default_features`),
so sampling parameters, logprobs, seed, penalties and native `n` never arrive here.

What does not translate is refused before anything is sent: `anthropic_body` raises
`BadRequestError`, which makes the router fail over to the next candidate (an OpenAI deployment
takes the request as it is). That covers tool-call arguments that are not a JSON object (Anthropic's
`tool_use.input` is an object), a schema the SDK's `transform_schema` cannot bring into the subset
Anthropic's structured output accepts, and OpenAI service tiers Anthropic has no match for.

Structured output uses Anthropic's native `output_config.format` (constrained decoding), not a
forced tool: the answer stays text in `content` as OpenAI's does, streams as text, and leaves the
request's own tools and tool_choice alone. The schema goes through `anthropic.transform_schema`
(what the SDK's own `messages.parse` sends): every object gets `additionalProperties: false` and
constraints Anthropic does not enforce (minimum, pattern...) move into descriptions; the router still
checks the answer against the full original schema. JSON mode (`json_object`) asks for no schema
at all, which constrained decoding cannot express (an object schema without properties admits only
`{}`), so it becomes an instruction in `system`, and the router checks that the answer is an object.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anthropic
from anthropic.types import (
    ContentBlock,
    InputJSONDelta,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStreamEvent,
    RefusalStopDetails,
    TextBlock,
    TextDelta,
    ToolUseBlock,
)
from anthropic.types import Message as AnthropicMessage

from router_core.catalog import Deployment
from router_core.chat import Choice, ContentPart, Tool, ToolChoice
from router_core.errors import BadRequestError
from router_core.models import ChatRequest, Message, Usage
from router_core.providers.base import Delta, StreamPart

__all__ = [
    "FINISH_REASONS",
    "JSON_MODE_INSTRUCTION",
    "StreamedMessage",
    "Untranslatable",
    "anthropic_body",
    "openai_choice",
    "to_anthropic_messages",
    "to_usage",
]

# Anthropic's stop reasons in OpenAI's finish_reason vocabulary.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# What `response_format: {"type": "json_object"}` adds to `system` (see the module docstring).
JSON_MODE_INSTRUCTION = "Answer with one JSON object and nothing else: no prose, no Markdown code fences."

# OpenAI reasoning_effort -> Anthropic output_config.effort ("none": no effort sent).
_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}
# OpenAI service_tier -> Anthropic's; flex, scale and priority have no match and are refused.
_SERVICE_TIERS = {"auto": "auto", "default": "standard_only"}


class Untranslatable(ValueError):
    """A request field the Messages API cannot carry; the message names the field."""


# --- request ------------------------------------------------------------------------------------


def _image(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")  # data:image/png;base64,<data>
        media_type = header.removeprefix("data:").split(";")[0]
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(content: str | list[ContentPart] | None, *, images: bool) -> list[dict[str, Any]]:
    """Text and image blocks; Anthropic refuses empty or whitespace-only text blocks, so none is made."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if part.image_url is not None:
            if images:
                blocks.append(_image(part.image_url.url))
        elif part.text and part.text.strip():
            blocks.append({"type": "text", "text": part.text})
    return blocks


_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def _tool_input(arguments: str, field: str) -> dict[str, Any]:
    """A call's JSON `arguments` as Anthropic's `tool_use.input` object ("" counts as no arguments)."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise Untranslatable(f"{field}: not valid JSON ({exc.msg}), not the object Anthropic needs") from None
    if not isinstance(value, dict):
        raise Untranslatable(
            f"{field}: {_JSON_KINDS.get(type(value), 'a number')}, not the object Anthropic needs"
        )
    return value


def _blocks(message: Message, index: int) -> list[dict[str, Any]]:
    """One user, assistant or tool message as Anthropic content blocks (empty: it says nothing)."""
    if message.role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if text := message.text():
            result["content"] = text
        return [result]
    # OpenAI puts images in user messages only; an assistant's content parts are text.
    blocks = _content_blocks(message.content, images=message.role == "user")
    for j, call in enumerate(message.tool_calls or ()):
        where = f"messages.{index}.tool_calls.{j}.function.arguments"
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": _tool_input(call.function.arguments, where),
            }
        )
    return blocks


def to_anthropic_messages(request: ChatRequest) -> tuple[str | None, list[dict[str, Any]]]:
    """Split OpenAI-style messages into Anthropic's `system` string and alternating turns.

    System and developer messages join into `system`; tool results become `tool_result` blocks of
    a user turn; consecutive turns of one role merge into one (parallel tool results into one user
    turn), since Anthropic requires alternation, with the tool results first as it also requires.
    A turn of one text block stays a plain string. Messages with nothing to say are dropped.

    Raises:
        Untranslatable: A tool call's arguments are not a JSON object (the message names it), or
            there is no turn besides the system messages.
    """
    system = [text for m in request.messages if m.role in ("system", "developer") if (text := m.text())]
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        if message.role in ("system", "developer"):
            continue
        blocks = _blocks(message, index)
        if not blocks:
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise Untranslatable("messages: nothing but system messages, and Anthropic needs a user turn")
    for turn in turns:
        blocks = sorted(turn["content"], key=lambda b: b["type"] != "tool_result")  # stable
        only_text = len(blocks) == 1 and blocks[0]["type"] == "text"
        turn["content"] = blocks[0]["text"] if only_text else blocks
    return ("\n\n".join(system) or None), turns


def _type_lists_as_any_of(schema: Any) -> Any:
    """`{"type": ["string", "null"]}` (common in OpenAI strict schemas) as an `anyOf` of single
    types, which `anthropic.transform_schema` understands (it cannot take a list of types)."""
    if isinstance(schema, list):
        return [_type_lists_as_any_of(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _type_lists_as_any_of(value) for key, value in schema.items()}
    types = out.get("type")
    if isinstance(types, list):
        notes = {k: v for k, v in out.items() if k in ("description", "title")}
        rest = {k: v for k, v in out.items() if k not in ("type", "description", "title")}
        variants = [{"type": t} if t == "null" else {**rest, "type": t} for t in types]
        out = {**notes, "anyOf": variants}
    return out


def _strict_schema(schema: dict[str, Any], field: str) -> dict[str, Any]:
    """`schema` in the subset Anthropic's structured output and strict tools accept.

    Raises:
        Untranslatable: The SDK's transform cannot take the schema (the message names `field`).
    """
    try:
        return anthropic.transform_schema(_type_lists_as_any_of(schema))
    except (ValueError, TypeError, KeyError, AssertionError) as exc:  # assert_never on unknown shapes
        raise Untranslatable(f"{field}: Anthropic's structured output cannot take it: {exc}") from None


def _tool(tool: Tool, index: int) -> dict[str, Any]:
    fn = tool.function
    schema = fn.parameters or {"type": "object", "properties": {}}
    out: dict[str, Any] = {"name": fn.name}
    if fn.description:
        out["description"] = fn.description
    if fn.strict:
        schema = _strict_schema(schema, f"tools.{index}.function.parameters")
    out["input_schema"] = schema
    if fn.strict is not None:
        out["strict"] = fn.strict
    return out


def _tool_choice(choice: ToolChoice | None, parallel: bool | None) -> dict[str, Any] | None:
    """Anthropic's tool_choice; `parallel_tool_calls: false` rides on it (auto when none is given)."""
    if choice == "none":
        return {"type": "none"}  # no tool use at all, so nothing to say about parallel use
    if choice is None and parallel is not False:
        return None
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    else:
        out = {"type": "tool", "name": choice.function.name}
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def _output_config(request: ChatRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    form = request.response_format
    if form is not None and form.json_schema is not None:
        schema = _strict_schema(form.json_schema.schema_, "response_format.json_schema.schema")
        config["format"] = {"type": "json_schema", "schema": schema}
    if request.reasoning_effort in _EFFORTS:
        config["effort"] = _EFFORTS[request.reasoning_effort]
    return config


def _build(request: ChatRequest, deployment: Deployment, max_tokens: int) -> dict[str, Any]:
    system, turns = to_anthropic_messages(request)
    if request.response_format is not None and request.response_format.type == "json_object":
        system = f"{system}\n\n{JSON_MODE_INSTRUCTION}" if system else JSON_MODE_INSTRUCTION
    body: dict[str, Any] = {"model": deployment.model, "max_tokens": max_tokens, "messages": turns}
    if system:
        body["system"] = system
    if request.tools is not None:
        body["tools"] = [_tool(tool, k) for k, tool in enumerate(request.tools)]
        if (choice := _tool_choice(request.tool_choice, request.parallel_tool_calls)) is not None:
            body["tool_choice"] = choice
    if request.stop is not None:
        stops = [request.stop] if isinstance(request.stop, str) else request.stop
        if stops := [s for s in stops if s]:
            body["stop_sequences"] = stops
    if config := _output_config(request):
        body["output_config"] = config
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    if request.service_tier is not None:
        if request.service_tier not in _SERVICE_TIERS:
            raise Untranslatable(f"service_tier: Anthropic has no {request.service_tier!r} tier")
        body["service_tier"] = _SERVICE_TIERS[request.service_tier]
    return body


def anthropic_body(request: ChatRequest, deployment: Deployment, max_tokens: int) -> dict[str, Any]:
    """The `messages.create` keyword arguments for `request` on `deployment`.

    Not sent, having no Messages API counterpart: message `name`s, an assistant message's
    `refusal`, image `detail`, and the request's `metadata` (only `user` has one: `metadata.user_id`).

    Raises:
        BadRequestError: Part of the request cannot be said to Anthropic (the message names the
            field); the router fails over to the next candidate.
    """
    try:
        return _build(request, deployment, max_tokens)
    except Untranslatable as exc:
        raise BadRequestError(
            f"{deployment.id} cannot take this request (Anthropic Messages API): {exc}",
            deployment=deployment.id,
        ) from exc


# --- answer -------------------------------------------------------------------------------------


def _choice(
    text: str, calls: list[dict[str, Any]], stop_reason: str | None, refusal: RefusalStopDetails | None
) -> Choice:
    """One OpenAI choice. A refusal's text goes to `message.refusal`, as OpenAI reports one."""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    message["refusal"] = None
    if stop_reason == "refusal":
        # Never empty: the router checks a non-refused answer against the requested schema.
        explanation = refusal.explanation if refusal is not None else None
        message["content"] = None
        message["refusal"] = text or explanation or "The model declined to answer."
    if calls:
        message["tool_calls"] = calls
    finish = FINISH_REASONS.get(stop_reason or "", stop_reason)
    return Choice(index=0, message=message, finish_reason=finish)


def _call(block: ToolUseBlock, arguments: str) -> dict[str, Any]:
    return {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}}


def _arguments(block: ToolUseBlock) -> str:
    return json.dumps(block.input, ensure_ascii=False)


def openai_choice(message: AnthropicMessage) -> Choice:
    """The OpenAI choice for an Anthropic `Message`: text blocks as `content`, `tool_use` blocks as
    `tool_calls` (arguments a JSON string), the stop reason as `finish_reason`. Thinking and
    server-tool blocks are not part of the answer."""
    content: Sequence[ContentBlock] = message.content
    text = "".join(block.text for block in content if isinstance(block, TextBlock))
    calls = [_call(block, _arguments(block)) for block in content if isinstance(block, ToolUseBlock)]
    return _choice(text, calls, message.stop_reason, message.stop_details)


def to_usage(usage: anthropic.types.Usage) -> Usage:
    """Anthropic counts cached prompt tokens apart from `input_tokens`; routeq's `input_tokens`
    is the whole prompt (as genai-prices expects), with the cached parts also given separately.
    Thinking tokens are part of `output_tokens`, as routeq's `reasoning_tokens` are.
    """
    cache_read = usage.cache_read_input_tokens or 0
    cache_write = usage.cache_creation_input_tokens or 0
    details = usage.output_tokens_details
    return Usage(
        input_tokens=usage.input_tokens + cache_read + cache_write,
        output_tokens=usage.output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=details.thinking_tokens if details is not None else 0,
    )


# Usage fields a `message_delta` may update (each cumulative, so the latest value wins).
_DELTA_USAGE = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens_details",
)


class StreamedMessage:
    """Rebuilds a streamed Anthropic message from its events, and says what to relay: text as
    plain strings, each `tool_use` block as OpenAI tool-call `Delta`s (a header with id and name,
    then the input's JSON pieces as `arguments`), indexed from 0 in the order the blocks come."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage = anthropic.types.Usage(input_tokens=0, output_tokens=0)
        self._text: list[str] = []
        self._calls: list[dict[str, Any]] = []
        self._tool_blocks: dict[int, tuple[int, ToolUseBlock]] = {}  # block index -> call index, block
        self._stop: str | None = None
        self._refusal: RefusalStopDetails | None = None

    def _call_delta(self, index: int, call: dict[str, Any]) -> Delta:
        return Delta({"index": 0, "delta": {"tool_calls": [{"index": index, **call}]}})

    def _text_piece(self, text: str) -> list[StreamPart]:
        if not text:
            return []
        self._text.append(text)
        return [text]

    def _arguments_piece(self, block_index: int, piece: str) -> list[StreamPart]:
        if block_index not in self._tool_blocks or not piece:
            return []
        k, _ = self._tool_blocks[block_index]
        self._calls[k]["function"]["arguments"] += piece
        return [self._call_delta(k, {"function": {"arguments": piece}})]

    def add(self, event: RawMessageStreamEvent) -> list[StreamPart]:
        """Take one event; return the parts to relay for it (often none)."""
        if isinstance(event, RawMessageStartEvent):
            self.usage, self.model = event.message.usage, event.message.model or self.model
        elif isinstance(event, RawContentBlockStartEvent):
            block = event.content_block
            if isinstance(block, TextBlock):
                return self._text_piece(block.text)
            if isinstance(block, ToolUseBlock):
                self._tool_blocks[event.index] = (len(self._calls), block)
                self._calls.append(_call(block, ""))
                return [self._call_delta(len(self._calls) - 1, _call(block, ""))]
        elif isinstance(event, RawContentBlockDeltaEvent):
            if isinstance(event.delta, TextDelta):
                return self._text_piece(event.delta.text)
            if isinstance(event.delta, InputJSONDelta):
                return self._arguments_piece(event.index, event.delta.partial_json)
        elif isinstance(event, RawContentBlockStopEvent):
            # A call whose input came whole in its start block (no JSON pieces: `{}`) still gets
            # its arguments, so what was relayed adds up to the final message.
            if event.index in self._tool_blocks:
                k, block = self._tool_blocks[event.index]
                if not self._calls[k]["function"]["arguments"]:
                    return self._arguments_piece(event.index, _arguments(block))
        elif isinstance(event, RawMessageDeltaEvent):
            update = {name: getattr(event.usage, name) for name in _DELTA_USAGE}
            self.usage = self.usage.model_copy(update={k: v for k, v in update.items() if v is not None})
            self._stop = event.delta.stop_reason or self._stop
            self._refusal = event.delta.stop_details or self._refusal
        return []

    def choices(self) -> tuple[Choice, ...]:
        """The whole answer so far, as `openai_choice` gives a non-streamed one."""
        return (_choice("".join(self._text), self._calls, self._stop, self._refusal),)
