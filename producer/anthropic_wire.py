"""The Anthropic Messages API as a way in: a `messages.create` body as routeq's chat request, and a
finished job as Anthropic's `message` (its stream of events: `producer.anthropic_stream`).

Code written for the anthropic SDK points at routeq unchanged and is routed across every provider:
the body becomes an OpenAI Chat Completions body (which `producer.inputs.parse_chat_body` checks
like any other, naming fields as the client sent them), the job runs like any other, and its
answer comes back in Anthropic's shape.

    system (text or text blocks)        -> a system message
    text / image / tool_use / tool_result blocks -> content parts, assistant tool_calls, tool messages
    tools (input_schema), tool_choice (auto / any / tool / none) -> OpenAI tools and tool_choice
    stop_sequences, metadata.user_id    -> stop, user
    max_tokens, temperature, top_p, stream, and routeq's own `preferences`: as they are

Anthropic's `model` names a deployment or a served model (or `auto`, `router:<strategy>`), like
OpenAI's. Thinking blocks, documents and server tools have no counterpart here and are refused by
field.
"""

from __future__ import annotations

import json
from typing import Any

from storage.jobs import JobRecord

__all__ = ["MessagesBodyError", "chat_body", "message_object"]

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_PASSED = ("model", "max_tokens", "temperature", "top_p", "stream", "preferences")


class MessagesBodyError(ValueError):
    """A Messages body routeq cannot take; `field` names where (as the client sent it)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages body as an OpenAI Chat Completions body (not validated yet)."""
    chat: dict[str, Any] = {key: body[key] for key in _PASSED if key in body}
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system, "system")})
    for n, message in enumerate(body.get("messages") or []):
        messages.extend(_messages(message, f"messages.{n}"))
    chat["messages"] = messages
    if "stop_sequences" in body:
        chat["stop"] = body["stop_sequences"]
    if user := (body.get("metadata") or {}).get("user_id"):
        chat["user"] = user
    if "tools" in body:
        chat["tools"] = [_tool(tool, f"tools.{n}") for n, tool in enumerate(body["tools"])]
    if "tool_choice" in body:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    return chat


def _text_of(content: Any, field: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return "\n".join(str(b.get("text", "")) for b in content)
    raise MessagesBodyError(field, "expected text or a list of text blocks")


def _messages(message: Any, field: str) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages (a user turn's tool results become tool messages)."""
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise MessagesBodyError(f"{field}.role", "must be 'user' or 'assistant'")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise MessagesBodyError(f"{field}.content", "expected a string or a list of content blocks")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for n, block in enumerate(content):
        where = f"{field}.content.{n}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), where)}})
        elif kind == "tool_use" and role == "assistant":
            arguments = json.dumps(block.get("input") or {})
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif kind == "tool_result" and role == "user":
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id"),
                    "content": _text_of(block.get("content", ""), where + ".content"),
                }
            )
        else:
            raise MessagesBodyError(f"{where}.type", f"{kind!r} blocks are not supported in a {role} message")
    out: list[dict[str, Any]] = list(results)
    if parts or calls:
        turn: dict[str, Any] = {"role": role, "content": parts or None}
        if calls:
            turn["tool_calls"] = calls
        out.append(turn)
    return out


def _image_url(source: Any, field: str) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if isinstance(source, dict) and source.get("type") == "url":
        return str(source.get("url"))
    raise MessagesBodyError(f"{field}.source", "expected a base64 or url image source")


def _tool(tool: Any, field: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or "name" not in tool:
        raise MessagesBodyError(field, "a tool needs a name and an input_schema")
    function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if "description" in tool:
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise MessagesBodyError("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")


def message_object(job: JobRecord) -> dict[str, Any]:
    """A succeeded job's first answer as an Anthropic `message`."""
    result = job.result or {}
    choices = result.get("choices") or [{"message": {"content": result.get("content", "")}}]
    first = choices[0]
    message = first.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": json.loads(function.get("arguments") or "{}"),
            }
        )
    usage = result.get("usage") or {}
    finish = first.get("finish_reason") or result.get("finish_reason") or "stop"
    return {
        "id": f"msg_{job.id}",
        "type": "message",
        "role": "assistant",
        "model": result.get("model") or job.model or "",
        "content": content,
        "stop_reason": _STOP_REASONS.get(finish, "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("input_tokens", 0),
            "output_tokens": usage.get("output_tokens", 0),
        },
    }
