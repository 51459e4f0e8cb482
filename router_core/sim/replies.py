"""The bytes of an answer: OpenAI `chat.completion` / `chat.completion.chunk`s, Anthropic `message` / events,
and OpenAI's embeddings `list`.

Pure functions, no I/O. `answers.compose` decides what the answer says; this module renders it in
the provider's wire format, plain or streamed, exactly as the official SDKs parse the real APIs
(their stream accumulators included: tool-call argument deltas, `input_json_delta`s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import zip_longest
from typing import Any

from router_core.sim.answers import Answer, Choice, Finish
from router_core.sim.embeddings import embed, encode_base64
from router_core.sim.wire import Dialect, EmbeddingRequest, WireRequest, dumps

__all__ = ["completion_body", "embedding_body", "malformed_body", "stream_frames"]

# Size of the content pieces in streamed chunks; small enough that short answers span several.
# A multiple of 4 so each piece carries whole 4-character logprob tokens.
_STREAM_PIECE_CHARS = 16
_TOKENS_PER_PIECE = 4
_OPENAI_FINISH: dict[Finish, str] = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
}
_ANTHROPIC_STOP: dict[Finish, str] = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
}


def _pieces(text: str) -> list[str]:
    return [text[i : i + _STREAM_PIECE_CHARS] for i in range(0, len(text), _STREAM_PIECE_CHARS)]


def _openai_usage(req: WireRequest, answer: Answer) -> dict[str, Any]:
    completion = answer.completion_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": req.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": req.prompt_tokens + completion,
    }
    if req.reasoning_effort is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": answer.reasoning_tokens}
    return usage


def _anthropic_usage(req: WireRequest, output_tokens: int, answer: Answer | None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": req.prompt_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    if answer is not None and req.thinking is not None:
        usage["output_tokens_details"] = {"thinking_tokens": answer.reasoning_tokens}
    return usage


def _anthropic_message(
    req: WireRequest, response_id: str, content: list[Any], usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": response_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }


def _anthropic_block(choice: Choice) -> dict[str, Any]:
    call = choice.tool_call
    if call is not None:
        return {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}
    return {"type": "text", "text": choice.text or ""}


def _openai_message(choice: Choice) -> dict[str, Any]:
    call = choice.tool_call
    if call is None:
        return {"role": "assistant", "content": choice.text, "refusal": None, "annotations": []}
    function = {"name": call.name, "arguments": call.arguments}
    return {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
        "tool_calls": [{"id": call.id, "type": "function", "function": function}],
    }


def _logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": entries, "refusal": None}


def completion_body(req: WireRequest, *, response_id: str, answer: Answer) -> dict[str, Any]:
    """A non-streaming success body (`chat.completion` or Anthropic `message`).

    Args:
        req: The parsed request.
        response_id: Id to report, already prefixed `sim-`.
        answer: What to answer (`answers.compose`).

    Returns:
        The JSON-ready body.
    """
    if req.dialect == "anthropic":
        choice = answer.choices[0]
        usage = _anthropic_usage(req, answer.completion_tokens, answer)
        body = _anthropic_message(req, response_id, [_anthropic_block(choice)], usage)
        body["stop_reason"] = _ANTHROPIC_STOP[choice.finish]
        body["stop_sequence"] = choice.stop_sequence
        return body
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": "routeq-sim",
        "choices": [
            {
                "index": choice.index,
                "message": _openai_message(choice),
                "logprobs": _logprobs(choice.logprobs),
                "finish_reason": _OPENAI_FINISH[choice.finish],
            }
            for choice in answer.choices
        ],
        "usage": _openai_usage(req, answer),
    }


def _data(payload: object) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


def _anthropic_frames(req: WireRequest, response_id: str, answer: Answer) -> list[bytes]:
    choice = answer.choices[0]
    call = choice.tool_call
    block: dict[str, Any]
    if call is not None:
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        # A call cut by max_tokens has `input: {}` in the plain body; stream the same: no deltas.
        partial = _pieces(call.arguments) if choice.finish != "length" else []
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in partial]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(choice.text or "")]
    stop = {"stop_reason": _ANTHROPIC_STOP[choice.finish], "stop_sequence": choice.stop_sequence}
    end_usage: dict[str, Any] = {"output_tokens": answer.completion_tokens}
    if req.thinking is not None:
        end_usage["output_tokens_details"] = {"thinking_tokens": answer.reasoning_tokens}
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": _anthropic_message(req, response_id, [], _anthropic_usage(req, 1, None)),
        },
        {"type": "content_block_start", "index": 0, "content_block": block},
        *({"type": "content_block_delta", "index": 0, "delta": delta} for delta in deltas),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": stop, "usage": end_usage},
        {"type": "message_stop"},
    ]
    # Anthropic names every SSE event after its payload's `type`.
    return [f"event: {event['type']}\n".encode() + _data(event) for event in events]


def _openai_choice_frames(choice: Choice, chunk: Any) -> Iterator[bytes]:
    """One choice's chunks: its opening delta, its content or argument pieces, its finish."""
    call = choice.tool_call
    if call is not None:
        opening = {
            "index": 0,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield chunk(
            choice.index, {"role": "assistant", "content": None, "refusal": None, "tool_calls": [opening]}
        )
        for piece in _pieces(call.arguments):
            yield chunk(choice.index, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    else:
        yield chunk(choice.index, {"role": "assistant", "content": "", "refusal": None})
        entries = choice.logprobs
        for number, piece in enumerate(_pieces(choice.text or "")):
            logprobs = None
            if entries is not None:
                first = number * _TOKENS_PER_PIECE
                logprobs = {"content": entries[first : first + _TOKENS_PER_PIECE], "refusal": None}
            yield chunk(choice.index, {"content": piece}, logprobs=logprobs)
    yield chunk(choice.index, {}, _OPENAI_FINISH[choice.finish])


def _openai_frames(req: WireRequest, response_id: str, answer: Answer) -> list[bytes]:
    base: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": "routeq-sim",
    }
    if req.include_usage:
        base["usage"] = None  # OpenAI sends an explicit null on every chunk but the last.

    def chunk(
        index: int, delta: dict[str, Any], finish: str | None = None, logprobs: dict[str, Any] | None = None
    ) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return _data({**base, "choices": [choice]})

    per_choice = [list(_openai_choice_frames(choice, chunk)) for choice in answer.choices]
    # With n > 1 the choices' chunks interleave, as the real API's do.
    frames = [frame for row in zip_longest(*per_choice) for frame in row if frame is not None]
    if req.include_usage:
        frames.append(_data({**base, "choices": [], "usage": _openai_usage(req, answer)}))
    frames.append(b"data: [DONE]\n\n")
    return frames


def stream_frames(req: WireRequest, *, response_id: str, answer: Answer) -> list[bytes]:
    """The server-sent-event frames of a streamed answer, in the provider's event format.

    OpenAI: `chat.completion.chunk` objects ending with `data: [DONE]`, plus a `choices: []`
    usage chunk when `include_usage` was asked; a tool call opens with its id and name and sends
    its arguments in pieces; with `n > 1` the choices' chunks interleave. Anthropic:
    `message_start` ... `message_stop`, a `tool_use` block's input as `input_json_delta`s.

    Args:
        req: The parsed request.
        response_id: Id to report, already prefixed `sim-`.
        answer: What to answer; the deltas concatenate to its texts / arguments.

    Returns:
        Encoded frames, to be sent in order.
    """
    build = _anthropic_frames if req.dialect == "anthropic" else _openai_frames
    return build(req, response_id, answer)


def embedding_body(req: EmbeddingRequest) -> dict[str, Any]:
    """OpenAI's embeddings response: one vector per input, in order, encoded as asked."""
    data = []
    for index, text in enumerate(req.texts):
        vector = embed(text, req.dimensions)
        encoded: list[float] | str = encode_base64(vector) if req.encoding_format == "base64" else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    usage = {"prompt_tokens": req.prompt_tokens, "total_tokens": req.prompt_tokens}
    return {"object": "list", "data": data, "model": req.model, "usage": usage}


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
