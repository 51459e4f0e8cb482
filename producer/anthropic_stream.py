"""A streamed job as the Messages API's server-sent events, written piece by piece as the worker
relays them (`storage.bus.relay`), so the anthropic SDK's stream helpers see tokens as they come.

    message_start                       at once (the model asked for; usage not known yet)
    content_block_start, ping           when the first piece of a block arrives
    content_block_delta                 text_delta per text piece; input_json_delta per piece of a
                                        tool call's arguments (each tool call is a tool_use block)
    content_block_stop                  when the next block starts, or the answer ends
    message_delta, message_stop         stop reason and usage (input and output tokens), from the job
                                        as SQL recorded it
    error                               the job failed after its first piece (Anthropic's error body)

Pure formatting, no I/O: `producer.api.messages` feeds it.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MessageStream", "error_event", "error_type"]

# Anthropic's error `type` for an HTTP status (what its SDK and its error bodies use).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status; `api_error` for any other failure."""
    return _ERROR_TYPES.get(status, "api_error")


def error_event(message: str, status: int) -> str:
    """The stream's `error` event: the SDK raises it as the status error of that type."""
    return _event("error", {"type": "error", "error": {"type": error_type(status), "message": message}})


class MessageStream:
    """Formats one message's events; remembers which content block is open."""

    def __init__(self, message_id: str, model: str) -> None:
        self.id = message_id
        self.model = model
        self._index = -1  # the open block's index (-1: none yet)
        self._open: str | None = None  # "text", or the OpenAI index of the tool call being streamed
        self.blocks = 0

    def start(self) -> str:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def text(self, text: str) -> list[str]:
        """A piece of the answer's text (a new text block if another block is open)."""
        events = [] if self._open == "text" else self._begin("text", {"type": "text", "text": ""})
        return [*events, self._delta({"type": "text_delta", "text": text})]

    def choice(self, choice: dict[str, Any]) -> list[str]:
        """An OpenAI chunk choice the worker relayed: its tool-call pieces as tool_use blocks."""
        events: list[str] = []
        for call in (choice.get("delta") or {}).get("tool_calls") or []:
            key = f"tool:{call.get('index', 0)}"
            function = call.get("function") or {}
            if self._open != key:
                block = {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": {}}
                events += self._begin(key, block)
            if function.get("arguments"):
                events.append(
                    self._delta({"type": "input_json_delta", "partial_json": function["arguments"]})
                )
        return events

    def whole(self, message: dict[str, Any]) -> list[str]:
        """Every content block of a finished message at once (an answer that streamed no piece)."""
        events: list[str] = []
        for n, block in enumerate(message["content"]):
            if block["type"] == "text":
                events += self.text(block["text"])
            else:
                opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                events += self._begin(f"tool:{n}", opening)
                events.append(
                    self._delta({"type": "input_json_delta", "partial_json": json.dumps(block["input"])})
                )
        return events

    def end(self, message: dict[str, Any], routing: dict[str, Any]) -> list[str]:
        """Close the open block, then the stop reason, the usage and routeq's routing; message_stop."""
        events = self._close()
        usage = message["usage"]
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"]},
            "routeq": routing,
        }
        return [*events, _event("message_delta", delta), _event("message_stop", {"type": "message_stop"})]

    def _begin(self, key: str, block: dict[str, Any]) -> list[str]:
        events = self._close()
        self._index += 1
        self._open = key
        self.blocks += 1
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        events.append(_event("content_block_start", start))
        if self._index == 0:
            events.append(_event("ping", {"type": "ping"}))
        return events

    def _delta(self, delta: dict[str, Any]) -> str:
        return _event(
            "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}
        )

    def _close(self) -> list[str]:
        if self._open is None:
            return []
        self._open = None
        return [_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
