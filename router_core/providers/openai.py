"""Adapter for OpenAI and every OpenAI-compatible endpoint (vLLM, Ollama, OpenRouter, Groq, ...)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import openai
from openai.types import CompletionUsage

from router_core.catalog import Deployment
from router_core.models import ChatRequest, Usage
from router_core.providers.base import SIMULATED_HEADER, ProviderReply, StreamPart
from router_core.providers.errors import map_provider_error

__all__ = ["OpenAIProvider"]

logger = logging.getLogger("routeq.providers")


def _usage(usage: CompletionUsage | None) -> Usage:
    """OpenAI's prompt_tokens already include cached tokens, as routeq's input_tokens do."""
    if usage is None:
        # Some OpenAI-compatible servers send no usage; nothing is known, so nothing is billed.
        logger.warning("response without usage: cost recorded as 0")
        return Usage()
    details = usage.prompt_tokens_details
    return Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cache_read_tokens=(details.cached_tokens or 0) if details else 0,
    )


class OpenAIProvider:
    """Chat Completions through `openai.AsyncOpenAI` (SDK retries off: the router retries)."""

    def __init__(self, deployment: Deployment, client: openai.AsyncOpenAI) -> None:
        self.deployment = deployment
        self._client = client

    async def _send(self, request: ChatRequest, max_tokens: int, timeout_s: float, **extra: Any) -> Any:
        """POST the chat completion; the raw response gives access to headers."""
        if request.temperature is not None:
            extra["temperature"] = request.temperature
        try:
            return await self._client.chat.completions.with_raw_response.create(
                model=self.deployment.model,
                messages=[m.model_dump(exclude_none=True) for m in request.messages],  # type: ignore[misc]
                max_tokens=max_tokens,
                timeout=timeout_s,
                **extra,
            )
        except Exception as exc:
            raise map_provider_error(exc, self.deployment.id) from exc

    async def complete(self, request: ChatRequest, *, max_tokens: int, timeout_s: float) -> ProviderReply:
        dep = self.deployment
        raw = await self._send(request, max_tokens, timeout_s)
        try:
            completion = raw.parse()
            choice = completion.choices[0]
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        return ProviderReply(
            content=choice.message.content or "",
            finish_reason=choice.finish_reason,
            usage=_usage(completion.usage),
            model=completion.model or dep.model,
            simulated=raw.headers.get(SIMULATED_HEADER) == "1",
        )

    async def stream(
        self, request: ChatRequest, *, max_tokens: int, timeout_s: float
    ) -> AsyncGenerator[StreamPart, None]:
        dep = self.deployment
        raw = await self._send(
            request, max_tokens, timeout_s, stream=True, stream_options={"include_usage": True}
        )
        try:
            chunks = raw.parse()
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        pieces: list[str] = []
        finish: str | None = None
        usage: CompletionUsage | None = None
        model = dep.model
        try:
            async for chunk in chunks:
                model = chunk.model or model
                usage = chunk.usage or usage
                for choice in chunk.choices[:1]:
                    finish = choice.finish_reason or finish
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                        yield choice.delta.content
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        finally:
            await chunks.close()
        yield ProviderReply(
            content="".join(pieces),
            finish_reason=finish,
            usage=_usage(usage),
            model=model,
            simulated=raw.headers.get(SIMULATED_HEADER) == "1",
        )

    async def aclose(self) -> None:
        await self._client.close()
