"""Adapter for Anthropic's Messages API through `anthropic.AsyncAnthropic`.

The request is translated from OpenAI's Chat Completions in
`router_core.providers.anthropic_translate` (which says what crosses and what cannot).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anthropic
from anthropic.types import Message

from router_core.catalog import Deployment
from router_core.chat import Choice
from router_core.models import ChatRequest, Usage
from router_core.providers.anthropic_translate import anthropic_body, to_anthropic_messages
from router_core.providers.base import SIMULATED_HEADER, ProviderReply, StreamPart
from router_core.providers.errors import map_provider_error

__all__ = ["AnthropicProvider", "anthropic_body", "to_anthropic_messages", "to_usage"]


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


def _text_reply(text: str, stop_reason: str | None) -> tuple[Choice, ...]:
    message = {"role": "assistant", "content": text, "refusal": None}
    return (
        Choice(index=0, message=message, finish_reason=FINISH_REASONS.get(stop_reason or "", stop_reason)),
    )


def to_usage(usage: anthropic.types.Usage) -> Usage:
    """Anthropic counts cached prompt tokens apart from `input_tokens`; routeq's `input_tokens`
    is the whole prompt (as genai-prices expects), with the cached parts also given separately.
    """
    cache_read = usage.cache_read_input_tokens or 0
    cache_write = usage.cache_creation_input_tokens or 0
    return Usage(
        input_tokens=usage.input_tokens + cache_read + cache_write,
        output_tokens=usage.output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


class AnthropicProvider:
    """Messages API calls (SDK retries off: the router retries)."""

    def __init__(self, deployment: Deployment, client: anthropic.AsyncAnthropic) -> None:
        self.deployment = deployment
        self._client = client

    async def _send(self, request: ChatRequest, max_tokens: int, timeout_s: float, **extra: Any) -> Any:
        """POST the message; the raw response gives access to headers.

        A request that does not translate raises `BadRequestError` before anything is sent.
        """
        body = anthropic_body(request, self.deployment, max_tokens)
        try:
            return await self._client.messages.with_raw_response.create(**body, timeout=timeout_s, **extra)
        except Exception as exc:
            raise map_provider_error(exc, self.deployment.id) from exc

    async def complete(self, request: ChatRequest, *, max_tokens: int, timeout_s: float) -> ProviderReply:
        dep = self.deployment
        raw = await self._send(request, max_tokens, timeout_s)
        try:
            message: Message = await raw.parse()
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        return ProviderReply(
            choices=_text_reply(
                "".join(block.text for block in message.content if block.type == "text"), message.stop_reason
            ),
            usage=to_usage(message.usage),
            model=message.model or dep.model,
            simulated=raw.headers.get(SIMULATED_HEADER) == "1",
        )

    async def stream(
        self, request: ChatRequest, *, max_tokens: int, timeout_s: float
    ) -> AsyncGenerator[StreamPart, None]:
        dep = self.deployment
        raw = await self._send(request, max_tokens, timeout_s, stream=True)
        pieces: list[str] = []
        usage = anthropic.types.Usage(input_tokens=0, output_tokens=0)
        finish: str | None = None
        model = dep.model
        try:
            events = await raw.parse()
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        try:
            async for event in events:
                if event.type == "message_start":
                    usage, model = event.message.usage, event.message.model or model
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    pieces.append(event.delta.text)
                    yield event.delta.text
                elif event.type == "message_delta":
                    usage = usage.model_copy(update={"output_tokens": event.usage.output_tokens})
                    finish = event.delta.stop_reason or finish
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        finally:
            # Also when the consumer stops early: release the HTTP connection.
            await events.close()
        yield ProviderReply(
            choices=_text_reply("".join(pieces), finish),
            usage=to_usage(usage),
            model=model,
            simulated=raw.headers.get(SIMULATED_HEADER) == "1",
        )

    async def aclose(self) -> None:
        await self._client.close()
