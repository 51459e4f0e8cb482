"""The provider seam: one adapter per wire protocol, all with the same small interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router_core.catalog import Deployment
from router_core.models import ChatRequest, Usage

__all__ = ["SIMULATED_HEADER", "Provider", "ProviderReply"]

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


class Provider(Protocol):
    """Calls one deployment. Raises only `router_core.errors.ProviderError` subclasses."""

    deployment: Deployment

    async def complete(self, request: ChatRequest, *, max_tokens: int, timeout_s: float) -> ProviderReply: ...

    async def aclose(self) -> None: ...
