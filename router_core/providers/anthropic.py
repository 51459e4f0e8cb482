"""Adapter for Anthropic's Messages API through `anthropic.AsyncAnthropic`.

The request is translated from OpenAI's Chat Completions and the answer back, plain and streamed,
in `router_core.providers.anthropic_translate` (which says what crosses and what cannot). The
Messages API has no embeddings: `embed` is a fatal `BadRequestError` (the catalog refuses an
Anthropic embedding deployment before it gets here).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anthropic
from anthropic.types import Message

from router_core.catalog import Deployment
from router_core.errors import BadRequestError
from router_core.models import ChatRequest
from router_core.providers.anthropic_translate import (
    StreamedMessage,
    anthropic_body,
    openai_choice,
    to_anthropic_messages,
    to_usage,
)
from router_core.providers.base import SIMULATED_HEADER, EmbeddingReply, ProviderReply, StreamPart
from router_core.providers.errors import map_provider_error

__all__ = ["AnthropicProvider", "anthropic_body", "to_anthropic_messages", "to_usage"]


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
            choice = openai_choice(message)
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        return ProviderReply(
            choices=(choice,),
            usage=to_usage(message.usage),
            model=message.model or dep.model,
            simulated=raw.headers.get(SIMULATED_HEADER) == "1",
        )

    async def stream(
        self, request: ChatRequest, *, max_tokens: int, timeout_s: float
    ) -> AsyncGenerator[StreamPart, None]:
        dep = self.deployment
        raw = await self._send(request, max_tokens, timeout_s, stream=True)
        try:
            events = await raw.parse()
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        answer = StreamedMessage(dep.model)
        try:
            async for event in events:
                for part in answer.add(event):
                    yield part
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        finally:
            # Also when the consumer stops early: release the HTTP connection.
            await events.close()
        yield ProviderReply(
            choices=answer.choices(),
            usage=to_usage(answer.usage),
            model=answer.model,
            simulated=raw.headers.get(SIMULATED_HEADER) == "1",
        )

    async def embed(
        self, texts: list[str], *, dimensions: int | None, timeout_s: float | None = None
    ) -> EmbeddingReply:
        raise BadRequestError(
            f"{self.deployment.id}: Anthropic's API has no embeddings; "
            'use a deployment of kind openai, openai_compatible or sim with task = "embedding"',
            deployment=self.deployment.id,
        )

    async def aclose(self) -> None:
        await self._client.close()
