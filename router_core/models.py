"""The router's inputs and outputs as pydantic models.

A `ChatRequest` is OpenAI-style `messages` plus routing `Preferences`; `Router.plan` answers with a
`Plan` of ranked `Candidate`s and the `Exclusion`s, and `Router.complete` with a `CompletionResult`
that carries every `Attempt`; `Router.embed` answers with `Embeddings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router_core.cache import CachePreference
from router_core.chat import (
    IMAGE_TOKENS_ESTIMATE,
    IMAGE_TOKENS_LOW_DETAIL,
    Choice,
    Choices,
    ContentPart,
    Effort,
    EndUser,
    Feature,
    LogitBias,
    Metadata,
    Penalty,
    ResponseFormat,
    ServiceTier,
    Stop,
    Temperature,
    ToolCall,
    ToolChoice,
    Tools,
    TopLogprobs,
    TopP,
    non_finite_numbers,
    required_features,
)

__all__ = [
    "Attempt",
    "AttemptOutcome",
    "CacheHit",
    "Candidate",
    "Capability",
    "ChatRequest",
    "CompletionResult",
    "Complexity",
    "Embeddings",
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


class Message(BaseModel):
    """One chat message: text or content parts (text, images); an assistant's `tool_calls`; a
    `tool` message's result for `tool_call_id`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id': the id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an 'assistant' message carries 'tool_calls'")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only a 'tool' message carries 'tool_call_id'")
        return self

    def text(self) -> str:
        """The message's text, joining text parts."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")

    def image_tokens(self) -> int:
        """Estimated prompt tokens of the message's images (0 for text)."""
        if not isinstance(self.content, list):
            return 0
        return sum(
            IMAGE_TOKENS_LOW_DETAIL if p.image_url.detail == "low" else IMAGE_TOKENS_ESTIMATE
            for p in self.content
            if p.image_url is not None
        )

    def has_payload(self) -> bool:
        """Whether the message says anything: text, an image, tool calls or a tool result."""
        if self.tool_calls or self.tool_call_id:
            return True
        if isinstance(self.content, list):
            return any(p.image_url is not None or (p.text or "").strip() for p in self.content)
        return bool(self.content and self.content.strip())


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
    allow_fallbacks: bool = Field(
        default=True,
        description="With a pinned `model`, whether other deployments may answer when it cannot; "
        "false keeps the request on the named model (or fails it).",
    )
    cache: CachePreference | None = Field(
        default=None,
        description='The response cache for this request: "use", "refresh", "off", or '
        "{mode, ttl_s, semantic, threshold}; unset = the tenant's and the fleet's defaults.",
    )

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
    """An OpenAI Chat Completions request with routing preferences.

    `model` is "auto" (let the strategy choose), a deployment id, or a model name served by one or
    more deployments; the named deployment goes first and the rest of the plan follows as fallbacks
    (unless `preferences.allow_fallbacks` is false). Every other field is OpenAI's, honoured by the
    deployments whose catalog `features` say they can (see `required_features`).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    messages: list[Message] = Field(min_length=1)
    model: str = "auto"
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Choices | None = None
    stop: Stop | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    tools: Tools | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Effort | None = None
    service_tier: ServiceTier | None = None
    user: EndUser | None = None
    metadata: Metadata | None = None
    preferences: Preferences = Field(default_factory=Preferences)

    @field_validator("messages")
    @classmethod
    def _has_payload(cls, messages: list[Message]) -> list[Message]:
        if not any(m.has_payload() for m in messages):
            raise ValueError("every message is empty: give at least one message with text")
        return messages

    @model_validator(mode="after")
    def _consistent(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tool_choice is not None and self.tools is None:
            raise ValueError("tool_choice needs tools")
        if self.tools is not None:
            self._check_tools()
        # Most requests carry no tool result: their messages need no walk.
        if any(message.tool_call_id is not None for message in self.messages):
            self._check_tool_results()
        return self

    def _check_tools(self) -> None:
        names = {t.function.name for t in self.tools or ()}
        if len(names) < len(self.tools or ()):
            raise ValueError("tools: each function name must be unique")
        if not isinstance(self.tool_choice, str | None) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")

    def _check_tool_results(self) -> None:
        calls: set[str] = set()
        for index, message in enumerate(self.messages):
            calls.update(call.id for call in message.tool_calls or ())
            if message.tool_call_id is not None and message.tool_call_id not in calls:
                raise ValueError(
                    f"messages.{index}.tool_call_id {message.tool_call_id!r} answers no earlier "
                    "assistant tool call"
                )

    def prompt_text(self) -> str:
        """All message text joined, for classification and token estimates."""
        return "\n".join(m.text() for m in self.messages)

    @property
    def choices(self) -> int:
        """How many answers are asked for (`n`)."""
        return self.n or 1

    @property
    def output_schema(self) -> dict[str, Any] | None:
        """The JSON Schema every answer must satisfy (JSON mode: any object), if any."""
        return None if self.response_format is None else self.response_format.schema

    def required_features(self) -> dict[Feature, str]:
        """The deployment features this request needs, each with the field that needs it."""
        fields = {name: getattr(self, name) for name in _FEATURE_FIELDS}
        images = sum(m.image_tokens() for m in self.messages)
        history = any(m.tool_calls or m.tool_call_id for m in self.messages)
        return required_features(fields, images, history)


_FEATURE_FIELDS = (
    "tools",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "seed",
    "reasoning_effort",
    "stop",
    "temperature",
    "top_p",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "service_tier",
)


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
    UNSUPPORTED = "unsupported"
    NOT_PINNED = "not_pinned"


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
    quality: float | None = Field(
        default=None, description="The quality the plan used: learned from evidence, or the catalog's."
    )
    quality_source: Literal["prior", "learned"] | None = None
    quality_samples: int = Field(default=0, description="Scored answers of the deployment behind `quality`.")


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
    image_tokens: int = Field(default=0, description="Part of input_tokens: images.")
    reasoning_tokens: int = Field(default=0, description="Part of output_tokens: hidden reasoning.")

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{name: getattr(self, name) + getattr(other, name) for name in Usage.model_fields})

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class AttemptOutcome(StrEnum):
    SUCCESS = "success"
    ERROR = "error"
    INVALID_OUTPUT = "invalid_output"
    """The provider answered (and billed), but not with JSON valid for the requested schema."""


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


class CacheHit(BaseModel):
    """Where a cached answer came from, and what serving it from the cache saved."""

    source_job: str = Field(description="The job whose provider answer this is.")
    similarity: float | None = Field(default=None, description="A semantic hit's; None: exact.")
    saved_usd: float = Field(description="What the source's calls cost: not paid again.")


class CompletionResult(BaseModel):
    """A successful routed completion, with every attempt that led to it.

    `choices` are the answers as OpenAI shapes them (message with `tool_calls`, `refusal`,
    `logprobs`); `content` and `finish_reason` repeat the first one's, for text consumers.
    """

    content: str
    finish_reason: str | None = None
    choices: list[Choice] = Field(default_factory=list)
    deployment: str
    provider: str
    model: str
    usage: Usage
    cost_usd: float
    latency_ms: float
    simulated: bool
    attempts: list[Attempt]
    plan_strategy: Strategy
    cache: CacheHit | None = None  # served from the response cache: no call was made

    @property
    def failovers(self) -> int:
        """How many times the router moved to another deployment."""
        return deployment_switches(self.attempts)


class Embeddings(BaseModel):
    """Vectors from an embedding deployment (`Router.embed`): one per text, in the texts' order.

    `cost_usd` is what the provider bills for `input_tokens` (embeddings have no output tokens).
    """

    vectors: list[list[float]]
    deployment: str
    model: str
    input_tokens: int
    cost_usd: float
    latency_ms: float
    simulated: bool


def deployment_switches(attempts: Sequence[Attempt]) -> int:
    """How many times a run's `attempts` moved to another deployment: its failovers."""
    return sum(1 for prev, cur in pairwise(attempts) if prev.deployment != cur.deployment)
