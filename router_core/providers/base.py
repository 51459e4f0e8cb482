"""The provider seam: one adapter per wire protocol, all with the same small interface."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from router_core.catalog import Deployment
from router_core.models import ChatRequest, Usage

__all__ = ["SIMULATED_HEADER", "Provider", "ProviderReply", "StreamPart"]

# The simulated provider world sets this header on every response it sends.
SIMULATED_HEADER = "x-routeq-simulated"


@dataclass(frozen=True, slots=True)
class ProviderReply:
    """A successful completion as the provider reported it."""

    content: str
    finish_reason: str | None
    usage: Usage
    model: str
    simulated: bool


# What a provider stream yields: text pieces, then exactly one final ProviderReply.
StreamPart = str | ProviderReply


class Provider(Protocol):
    """Calls one deployment. Raises only `router_core.errors.ProviderError` subclasses."""

    deployment: Deployment

    async def complete(self, request: ChatRequest, *, max_tokens: int, timeout_s: float) -> ProviderReply: ...

    def stream(
        self, request: ChatRequest, *, max_tokens: int, timeout_s: float
    ) -> AsyncGenerator[StreamPart, None]:
        """Text pieces as they arrive, then one `ProviderReply` with the whole text and the usage."""
        ...

    async def aclose(self) -> None: ...
