"""Adapter for OpenAI and every OpenAI-compatible endpoint (vLLM, Ollama, OpenRouter, Groq, ...)."""

from __future__ import annotations

from typing import Any

import openai

from router_core.catalog import Deployment
from router_core.models import ChatRequest, Usage
from router_core.providers.base import SIMULATED_HEADER, ProviderReply
from router_core.providers.errors import map_provider_error

__all__ = ["OpenAIProvider"]


class OpenAIProvider:
    """Chat Completions through `openai.AsyncOpenAI` (SDK retries off: the router retries)."""

    def __init__(self, deployment: Deployment, client: openai.AsyncOpenAI) -> None:
        self.deployment = deployment
        self._client = client

    async def complete(self, request: ChatRequest, *, max_tokens: int, timeout_s: float) -> ProviderReply:
        dep = self.deployment
        extra: dict[str, Any] = {}
        if request.temperature is not None:
            extra["temperature"] = request.temperature
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=dep.model,
                messages=[m.model_dump(exclude_none=True) for m in request.messages],  # type: ignore[misc]
                max_tokens=max_tokens,
                timeout=timeout_s,
                **extra,
            )
        except Exception as exc:
            raise map_provider_error(exc, dep.id) from exc
        try:
            completion = raw.parse()
            choice = completion.choices[0]
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        usage = completion.usage
        cached = 0
        if usage is not None and usage.prompt_tokens_details is not None:
            cached = usage.prompt_tokens_details.cached_tokens or 0
        return ProviderReply(
            content=choice.message.content or "",
            finish_reason=choice.finish_reason,
            usage=Usage(
                input_tokens=usage.prompt_tokens if usage else 0,
                output_tokens=usage.completion_tokens if usage else 0,
                cache_read_tokens=cached,
            ),
            model=completion.model or dep.model,
            simulated=raw.headers.get(SIMULATED_HEADER) == "1",
        )

    async def aclose(self) -> None:
        await self._client.close()
