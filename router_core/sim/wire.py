"""Provider wire formats the sim speaks: request parsing and OpenAI / Anthropic response bodies.

Pure functions, no I/O: `world.py` decides what happens to a request, this module only knows what
the bytes look like, so both official SDKs parse them exactly as they parse the real APIs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal

from router_core.tokens import estimate_tokens, prompt_tokens

__all__ = [
    "ERROR_STATUS",
    "Dialect",
    "ErrorKind",
    "RequestError",
    "WireRequest",
    "completion_body",
    "context_length_message",
    "dumps",
    "error_body",
    "malformed_body",
    "parse_request",
    "stream_frames",
]

Dialect = Literal["openai", "anthropic"]
ErrorKind = Literal["invalid_request", "not_found", "rate_limit", "server_error", "context_length"]

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
# Size of the content pieces in streamed chunks; small enough that short answers span several.
_STREAM_PIECE_CHARS = 16


class RequestError(Exception):
    """A request the provider would reject before doing any work (HTTP 4xx)."""

    def __init__(self, message: str, *, kind: ErrorKind = "invalid_request", param: str | None = None):
        """Create the error.

        Args:
            message: Human-readable message placed in the provider's error body.
            kind: Which provider error to render.
            param: The offending request field, reported by OpenAI-shaped bodies.
        """
        super().__init__(message)
        self.message = message
        self.kind: ErrorKind = kind
        self.param = param


@dataclass(frozen=True, slots=True)
class WireRequest:
    """What the sim needs from a chat request, independent of the provider dialect.

    Attributes:
        dialect: Which provider API the request came through.
        model: The requested model name, echoed back in the response.
        prompt_tokens: `router_core.tokens.prompt_tokens` of the messages, plus the system text.
        prompt_words: A few words of the last user turn, used to make the answer look related.
        max_tokens: The request's completion cap, if it set one.
        stream: Whether the client asked for server-sent events.
        include_usage: OpenAI `stream_options.include_usage`: send a final usage chunk.
    """

    dialect: Dialect
    model: str
    prompt_tokens: int
    prompt_words: tuple[str, ...]
    max_tokens: int | None
    stream: bool
    include_usage: bool


def dumps(payload: object) -> bytes:
    """Serialize `payload` as compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


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


def parse_request(dialect: Dialect, raw: bytes) -> WireRequest:
    """Validate a chat request body and extract what the sim needs.

    Args:
        dialect: The provider API the body was sent to.
        raw: The HTTP request body.

    Returns:
        The parsed request.

    Raises:
        RequestError: If the body is not JSON or lacks `model` / `messages` (or `max_tokens` for
            Anthropic), as the real APIs would answer with a 400.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model: Field required", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError("messages: must be a non-empty list of message objects", param="messages")

    texts = [_content_text(message.get("content")) for message in messages]
    prompt_size = prompt_tokens(texts)
    if dialect == "anthropic" and body.get("system"):
        prompt_size += estimate_tokens(_content_text(body["system"]))
    user_texts = [
        text for message, text in zip(messages, texts, strict=True) if message.get("role") == "user"
    ]
    # The first few words only: finding them all in a megabyte prompt held the (shared) event loop.
    found = _WORD.finditer(user_texts[-1] if user_texts else texts[-1])
    words = [match.group() for match in islice(found, _MAX_PROMPT_WORDS)]

    stream_options = body.get("stream_options")
    return WireRequest(
        dialect=dialect,
        model=model,
        prompt_tokens=prompt_size,
        prompt_words=tuple(word.lower() for word in words),
        max_tokens=_max_tokens(body, dialect),
        stream=body.get("stream") is True,
        include_usage=isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
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


def _openai_usage(req: WireRequest, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": req.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": req.prompt_tokens + completion_tokens,
    }


def _anthropic_message(
    req: WireRequest, response_id: str, content: list[Any], output_tokens: int
) -> dict[str, Any]:
    return {
        "id": response_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": req.prompt_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def completion_body(
    req: WireRequest, *, response_id: str, text: str, completion_tokens: int, capped: bool
) -> dict[str, Any]:
    """A non-streaming success body (`chat.completion` or Anthropic `message`).

    Args:
        req: The parsed request.
        response_id: Id to report, already prefixed `sim-`.
        text: The answer.
        completion_tokens: Token count of `text`.
        capped: Whether max_tokens cut the answer, which sets `length` / `max_tokens`.

    Returns:
        The JSON-ready body.
    """
    if req.dialect == "anthropic":
        body = _anthropic_message(req, response_id, [{"type": "text", "text": text}], completion_tokens)
        body["stop_reason"] = "max_tokens" if capped else "end_turn"
        return body
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": "routeq-sim",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "length" if capped else "stop",
            }
        ],
        "usage": _openai_usage(req, completion_tokens),
    }


def _data(payload: object) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


def _anthropic_frames(
    req: WireRequest, response_id: str, pieces: list[str], tokens: int, capped: bool
) -> list[bytes]:
    stop = {"stop_reason": "max_tokens" if capped else "end_turn", "stop_sequence": None}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": _anthropic_message(req, response_id, [], 1)},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
            for p in pieces
        ),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": stop, "usage": {"output_tokens": tokens}},
        {"type": "message_stop"},
    ]
    # Anthropic names every SSE event after its payload's `type`.
    return [f"event: {event['type']}\n".encode() + _data(event) for event in events]


def _openai_frames(
    req: WireRequest, response_id: str, pieces: list[str], tokens: int, capped: bool
) -> list[bytes]:
    base: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": "routeq-sim",
    }
    if req.include_usage:
        base["usage"] = None  # OpenAI sends an explicit null on every chunk but the last.

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data(
            {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        )

    frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
    frames += [chunk({"content": piece}) for piece in pieces]
    frames.append(chunk({}, "length" if capped else "stop"))
    if req.include_usage:
        frames.append(_data({**base, "choices": [], "usage": _openai_usage(req, tokens)}))
    frames.append(b"data: [DONE]\n\n")
    return frames


def stream_frames(
    req: WireRequest, *, response_id: str, text: str, completion_tokens: int, capped: bool
) -> list[bytes]:
    """The server-sent-event frames of a streamed answer, in the provider's event format.

    OpenAI: `chat.completion.chunk` objects ending with `data: [DONE]`, plus a `choices: []`
    usage chunk when `include_usage` was asked. Anthropic: `message_start` ... `message_stop`.

    Args:
        req: The parsed request.
        response_id: Id to report, already prefixed `sim-`.
        text: The whole answer; the frames' deltas concatenate to it.
        completion_tokens: Token count of `text`.
        capped: Whether max_tokens cut the answer.

    Returns:
        Encoded frames, to be sent in order.
    """
    pieces = [text[i : i + _STREAM_PIECE_CHARS] for i in range(0, len(text), _STREAM_PIECE_CHARS)]
    build = _anthropic_frames if req.dialect == "anthropic" else _openai_frames
    return build(req, response_id, pieces, completion_tokens, capped)


def malformed_body(dialect: Dialect, stream: bool) -> tuple[bytes, str]:
    """A 200 body that is truncated JSON, as a broken proxy or provider might send.

    Args:
        dialect: The provider whose success body is imitated.
        stream: Whether the client asked for server-sent events.

    Returns:
        The body and its content type (an SSE frame when the client asked to stream, so the
        SDK actually tries to decode it instead of seeing an empty stream).
    """
    opening = (
        b'{"id": "sim-broken", "choices": [' if dialect == "openai" else b'{"id": "sim-broken", "content": ['
    )
    if stream:
        return b"data: " + opening + b"\n\n", "text/event-stream"
    return opening, "application/json"
