"""The router's inputs and outputs as pydantic models.

A `ChatRequest` is OpenAI-style `messages` plus routing `Preferences`; `Router.plan` answers with a
`Plan` of ranked `Candidate`s and the `Exclusion`s, and `Router.complete` with a `CompletionResult`
that carries every `Attempt`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Attempt",
    "AttemptOutcome",
    "Candidate",
    "Capability",
    "ChatRequest",
    "CompletionResult",
    "Complexity",
    "Exclusion",
    "ExclusionReason",
    "Message",
    "Plan",
    "Preferences",
    "Strategy",
    "Usage",
    "Weights",
    "deployment_switches",
    "non_finite_numbers",
]


class Strategy(StrEnum):
    """How candidates are ordered. `fast` and `accurate` are accepted as aliases."""

    COST = "cost"
    SPEED = "speed"
    QUALITY = "quality"
    BALANCED = "balanced"
    ROUND_ROBIN = "round_robin"
    LEAST_LOADED = "least_loaded"
    FALLBACK_CHAIN = "fallback_chain"


STRATEGY_ALIASES = {"fast": Strategy.SPEED, "accurate": Strategy.QUALITY}


class Capability(StrEnum):
    """What a prompt asks for; deployments list the ones they are good at."""

    CODE = "code"
    MATH = "math"
    WRITING = "writing"
    ANALYSIS = "analysis"
    SUMMARIZATION = "summarization"
    TRANSLATION = "translation"
    SIMPLE_QA = "simple_qa"
    GENERAL = "general"


class Complexity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


NOT_FINITE = "not a finite number (NaN, Infinity and numbers beyond ±1.8e308 are refused)"


def non_finite_numbers(value: Any, path: str) -> Iterator[str]:
    """The dotted paths in a JSON-like `value` that hold NaN or an infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path or "value"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite_numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from non_finite_numbers(item, f"{path}.{index}" if path else str(index))


class Message(BaseModel):
    """One chat message. `content` may be a string or OpenAI content parts (text parts are used)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _finite(self) -> Message:
        # Content parts and extra fields are free-form JSON, which pydantic does not check for
        # NaN or infinity; stored requests must be JSON every database accepts.
        free = {"content": self.content if isinstance(self.content, list) else None}
        for path in non_finite_numbers(free | (self.model_extra or {}), ""):
            raise ValueError(f"{path}: {NOT_FINITE}")
        return self

    def text(self) -> str:
        """The message's text, joining text parts."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class Weights(BaseModel):
    """Relative weights of the balanced strategy; they need not sum to 1."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cost: float = Field(default=1.0, ge=0)
    latency: float = Field(default=1.0, ge=0)
    quality: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _not_all_zero(self) -> Weights:
        if self.cost + self.latency + self.quality == 0:
            raise ValueError("at least one of cost, latency, quality must be > 0")
        return self


class Preferences(BaseModel):
    """Routing strategy and constraints for one request."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    strategy: Strategy = Strategy.BALANCED
    weights: Weights = Field(default_factory=Weights)
    chain: list[str] | None = Field(
        default=None, description="Ordered deployment ids for the fallback_chain strategy."
    )
    max_cost_per_request: Annotated[float, Field(gt=0)] | None = None
    max_latency_ms: Annotated[float, Field(gt=0)] | None = None
    min_quality: Annotated[float, Field(ge=0, le=1)] | None = None
    timeout_ms: Annotated[float, Field(gt=0)] | None = None
    include_providers: list[str] | None = None
    exclude_providers: list[str] | None = None
    capability: Capability | None = None

    @field_validator("strategy", mode="before")
    @classmethod
    def _aliases(cls, value: Any) -> Any:
        if isinstance(value, str):
            return STRATEGY_ALIASES.get(value.lower(), value.lower())
        return value

    @model_validator(mode="after")
    def _chain_needs_list(self) -> Preferences:
        if self.strategy is Strategy.FALLBACK_CHAIN and not self.chain:
            raise ValueError("strategy 'fallback_chain' needs 'chain': an ordered list of deployment ids")
        return self


class ChatRequest(BaseModel):
    """An OpenAI-style chat request with routing preferences.

    `model` is "auto" (let the strategy choose), a deployment id, or a model name served by one or
    more deployments; the named deployment goes first and the rest of the plan follows as fallbacks.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    messages: list[Message] = Field(min_length=1)
    model: str = "auto"
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    preferences: Preferences = Field(default_factory=Preferences)

    @field_validator("messages")
    @classmethod
    def _has_text(cls, messages: list[Message]) -> list[Message]:
        if not any(m.text().strip() for m in messages):
            raise ValueError("every message is empty: give at least one message with text")
        return messages

    def prompt_text(self) -> str:
        """All message text joined, for classification and token estimates."""
        return "\n".join(m.text() for m in self.messages)


class ExclusionReason(StrEnum):
    OVER_BUDGET = "over_budget"
    OVER_LATENCY = "over_latency"
    BELOW_QUALITY = "below_quality"
    CONTEXT_TOO_SMALL = "context_too_small"
    EXCLUDED_PROVIDER = "excluded_provider"
    NOT_INCLUDED_PROVIDER = "not_included_provider"
    CIRCUIT_OPEN = "circuit_open"
    FORCED_DOWN = "forced_down"
    OVER_RATE_LIMIT = "over_rate_limit"
    NOT_IN_CHAIN = "not_in_chain"


class Exclusion(BaseModel):
    """Why one deployment is not a candidate for this request."""

    deployment: str
    reason: ExclusionReason
    detail: str


class Candidate(BaseModel):
    """One deployment in the plan, with the estimates that ranked it."""

    deployment: str
    provider: str
    model: str
    estimated_cost_usd: float
    estimated_latency_ms: float
    score: float
    capability_match: bool = False


class Plan(BaseModel):
    """The ordered candidates (primary first) and every exclusion with its reason."""

    strategy: Strategy
    capability: Capability
    complexity: Complexity
    prompt_tokens_estimate: int
    completion_tokens_estimate: int
    candidates: list[Candidate]
    excluded: list[Exclusion]

    @property
    def primary(self) -> Candidate:
        return self.candidates[0]


class Usage(BaseModel):
    """Tokens as the provider reported them.

    `input_tokens` is the whole prompt, cached parts included (OpenAI's `prompt_tokens`; Anthropic's
    input + cache read + cache write); `cache_read_tokens` / `cache_write_tokens` say how much of it
    was read from or written to the provider's prompt cache, which is priced differently.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class AttemptOutcome(StrEnum):
    SUCCESS = "success"
    ERROR = "error"


class Attempt(BaseModel):
    """One provider call (or one refusal to make it), as recorded for the ledger and analytics."""

    deployment: str
    provider: str
    model: str
    outcome: AttemptOutcome
    error_class: str | None = None
    error: str | None = None
    status_code: int | None = None
    latency_ms: float = 0.0
    wait_ms: float = Field(default=0.0, description="Backoff / Retry-After wait before this attempt.")
    usage: Usage | None = None
    cost_usd: float = 0.0
    simulated: bool = False
    estimated: bool = Field(
        default=False,
        description="usage and cost are routeq's estimate: a stream broke off before the provider "
        "reported usage, but the provider bills the prompt and the text it sent.",
    )


class CompletionResult(BaseModel):
    """A successful routed completion, with every attempt that led to it."""

    content: str
    finish_reason: str | None = None
    deployment: str
    provider: str
    model: str
    usage: Usage
    cost_usd: float
    latency_ms: float
    simulated: bool
    attempts: list[Attempt]
    plan_strategy: Strategy

    @property
    def failovers(self) -> int:
        """How many times the router moved to another deployment."""
        return deployment_switches(self.attempts)


def deployment_switches(attempts: Sequence[Attempt]) -> int:
    """How many times a run's `attempts` moved to another deployment: its failovers."""
    return sum(1 for prev, cur in pairwise(attempts) if prev.deployment != cur.deployment)
