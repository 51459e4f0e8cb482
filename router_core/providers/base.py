"""The provider seam: one adapter per wire protocol, all with the same small interface."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

from router_core.catalog import Deployment
from router_core.chat import Choice
from router_core.models import ChatRequest, Usage

__all__ = ["SIMULATED_HEADER", "Delta", "EmbeddingReply", "Provider", "ProviderReply", "StreamPart"]

# The simulated provider world sets this header on every response it sends.
SIMULATED_HEADER = "x-routeq-simulated"


@dataclass(frozen=True, slots=True)
class ProviderReply:
    """A successful completion as the provider reported it, in the OpenAI shape.

    `choices` hold each answer's message (`content`, `tool_calls`, `refusal`), its OpenAI
    `finish_reason` ("stop", "length", "tool_calls", "content_filter") and `logprobs`.
    `server_s`: how long the provider says it held the request, from counting it to answering
    (OpenAI's `openai-processing-ms`, less a millisecond for its rounding); None when it says nothing.
    The call arrived at least this long before its reply reached us (`router_core.fleet`).
    """

    choices: tuple[Choice, ...]
    usage: Usage
    model: str
    simulated: bool
    server_s: float | None = None

    @property
    def content(self) -> str:
        """The first answer's text."""
        return self.choices[0].text if self.choices else ""

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None


@dataclass(frozen=True, slots=True)
class EmbeddingReply:
    """Embeddings as the provider reported them: one vector per input text, in order."""

    vectors: list[list[float]]
    input_tokens: int
    simulated: bool


@dataclass(frozen=True, slots=True)
class Delta:
    """A streamed change that is not plain text of the first choice: tool-call pieces, a refusal,
    logprobs, or any part of another choice, as an OpenAI `chat.completion.chunk` choice."""

    choice: dict[str, Any]

    @property
    def text(self) -> str:
        """The text it carries (content, tool-call arguments), for the charge of a stream that breaks off."""
        inner = self.choice.get("delta") or {}
        calls = inner.get("tool_calls") or ()
        text = str(inner.get("content") or "")
        return text + "".join(str((c.get("function") or {}).get("arguments") or "") for c in calls)


# What a provider stream yields: text pieces of choice 0 and `Delta`s, then exactly one ProviderReply.
StreamPart = str | Delta | ProviderReply


class Provider(Protocol):
    """Calls one deployment. Raises only `router_core.errors.ProviderError` subclasses."""

    deployment: Deployment

    async def complete(self, request: ChatRequest, *, max_tokens: int, timeout_s: float) -> ProviderReply: ...

    def stream(
        self, request: ChatRequest, *, max_tokens: int, timeout_s: float
    ) -> AsyncGenerator[StreamPart, None]:
        """Text pieces and `Delta`s as they arrive, then one `ProviderReply` with the whole answer."""
        ...

    async def embed(
        self, texts: list[str], *, dimensions: int | None, timeout_s: float | None = None
    ) -> EmbeddingReply:
        """One vector per text: `dimensions` values each when given, else the model's own length.

        `timeout_s` bounds the HTTP call (None: the SDK's default). A kind without an embeddings
        API raises `BadRequestError`.
        """
        ...

    async def aclose(self) -> None: ...
