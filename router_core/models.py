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
    Choice,
    Choices,
    Effort,
    EndUser,
    Feature,
    LogitBias,
    Message,
    Metadata,
    Penalty,
    ResponseFormat,
    ServiceTier,
    Stop,
    Temperature,
    ToolChoice,
    Tools,
    TopLogprobs,
    TopP,
    non_finite_numbers,
    required_features,
)

__all__ = [
    "ESCALATION_TOLERANCE",
    "Attempt",
    "AttemptOutcome",
    "CacheHit",
    "Candidate",
    "Capability",
    "ChatRequest",
    "CompletionResult",
    "Complexity",
    "Embeddings",
    "Escalation",
    "EscalationPlan",
    "Exclusion",
    "ExclusionReason",
    "Message",
    "Plan",
    "Preferences",
    "Strategy",
    "StrategySource",
    "Usage",
    "Weights",
    "deployment_switches",
    "non_finite_numbers",
]


class Strategy(StrEnum):
    """How candidates are ordered. `fast` and `accurate` are accepted as aliases.

    `ensemble` is a weighted vote of other strategies' rankings (`Preferences.ensemble`); `escalate`
    sends a prompt to the cheapest deployment whose learned quality on prompts of its complexity is
    within a tolerance of the best one's (`Preferences.escalation`).
    """

    COST = "cost"
    SPEED = "speed"
    QUALITY = "quality"
    BALANCED = "balanced"
    ROUND_ROBIN = "round_robin"
    LEAST_LOADED = "least_loaded"
    FALLBACK_CHAIN = "fallback_chain"
    ENSEMBLE = "ensemble"
    ESCALATE = "escalate"


StrategySource = Literal["request", "tenant", "environment", "default"]
"""Where a job's strategy came from: the request, its tenant's default, ROUTEQ_DEFAULT_STRATEGY or the
built-in balanced (`router_core.policy.with_default_strategy`)."""

STRATEGY_ALIASES = {"fast": Strategy.SPEED, "accurate": Strategy.QUALITY}

DEFAULT_ENSEMBLE = {Strategy.COST: 1.0, Strategy.SPEED: 1.0, Strategy.QUALITY: 1.0}
"""The vote of `strategy: ensemble` without `preferences.ensemble`: cost, speed and quality alike."""

ESCALATION_TOLERANCE = {"fast": 0.15, "balanced": 0.07, "accurate": 0.03}
"""How far (in learned quality, 0..1) below the best deployment for a prompt's complexity the
escalate strategy may go to save cost, per mode. Chosen with bench/escalation.py: there `fast`
sends easy prompts to the cheap model, `balanced` to the mid one, and both send hard prompts to
the strong one; `accurate` gives up little quality anywhere."""

EscalationMode = Literal["fast", "balanced", "accurate"]


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


class Escalation(BaseModel):
    """How much learned quality the escalate strategy may give up for cost: a `mode` or a `tolerance`.

    Neither given is `balanced`. See `ESCALATION_TOLERANCE` for what each mode allows.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mode: EscalationMode | None = None
    tolerance: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="Quality (0..1) below the best score for the complexity that is enough."
    )

    @model_validator(mode="after")
    def _one_of(self) -> Escalation:
        if self.mode is not None and self.tolerance is not None:
            raise ValueError("give either 'mode' or 'tolerance', not both")
        return self

    @property
    def effective_tolerance(self) -> float:
        if self.tolerance is not None:
            return self.tolerance
        return ESCALATION_TOLERANCE[self.mode or "balanced"]


def _ensemble_members(value: Any) -> Any:
    """Member names lower-cased and aliased like `strategy`; an unknown name says which are known."""
    if not isinstance(value, dict):
        return value
    members: dict[Any, Any] = {}
    for name, weight in value.items():
        key = STRATEGY_ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
        if key not in set(Strategy):
            known = ", ".join([*Strategy, *STRATEGY_ALIASES])
            raise ValueError(f"unknown strategy {name!r} (known: {known})")
        if key in members:
            raise ValueError(f"strategy {Strategy(key).value!r} is given twice (an alias counts as its name)")
        members[key] = weight
    return members


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
    ensemble: dict[Strategy, Annotated[float, Field(ge=0)]] | None = Field(
        default=None,
        description="For strategy 'ensemble': weights of the strategies that vote, e.g. "
        '{"cost": 1, "quality": 2}; unset = cost, speed and quality at 1 each.',
    )
    escalation: Escalation | None = Field(
        default=None,
        description='For strategy \'escalate\': {"mode": "fast"|"balanced"|"accurate"} or {"tolerance": '
        "0..1}; unset = balanced.",
    )
    # Set by routeq as the job is made, never by a request: where `strategy` came from, and the API
    # key's allowed models (ids, model names, <provider>/<model>, * wildcards; the others are excluded).
    strategy_source: StrategySource | None = None
    allowed_models: list[Annotated[str, Field(min_length=1)]] | None = None

    @field_validator("strategy", mode="before")
    @classmethod
    def _aliases(cls, value: Any) -> Any:
        if isinstance(value, str):
            return STRATEGY_ALIASES.get(value.lower(), value.lower())
        return value

    @field_validator("ensemble", mode="before")
    @classmethod
    def _ensemble_names(cls, value: Any) -> Any:
        return _ensemble_members(value)

    @model_validator(mode="after")
    def _chain_needs_list(self) -> Preferences:
        if self.strategy is Strategy.FALLBACK_CHAIN and not self.chain:
            raise ValueError("strategy 'fallback_chain' needs 'chain': an ordered list of deployment ids")
        if self.ensemble is not None:
            self._check_ensemble(self.ensemble)
        if self.escalation is not None and self.strategy is not Strategy.ESCALATE:
            raise ValueError(f"'escalation' is for strategy 'escalate', not {self.strategy.value!r}")
        return self

    def _check_ensemble(self, members: dict[Strategy, float]) -> None:
        where = "preferences.ensemble"
        if self.strategy is not Strategy.ENSEMBLE:
            raise ValueError(f"{where} is for strategy 'ensemble', not {self.strategy.value!r}")
        if not members or sum(members.values()) <= 0:
            raise ValueError(f"{where} needs at least one strategy with a weight > 0")
        for member in (Strategy.ENSEMBLE, Strategy.ESCALATE):
            if member in members:
                raise ValueError(
                    f"{where} cannot hold {member.value!r}: an ensemble votes with rankings of the "
                    "deployments for the prompt's capability (ensemble in ensemble would not end; "
                    "escalate ranks by complexity)"
                )
        if Strategy.FALLBACK_CHAIN in members and not self.chain:
            raise ValueError(f"{where} has 'fallback_chain', which needs 'chain': ordered deployment ids")

    def votes(self) -> dict[Strategy, float]:
        """The ensemble's member strategies with their weights (the default vote when none given)."""
        return dict(self.ensemble) if self.ensemble is not None else dict(DEFAULT_ENSEMBLE)

    def uses(self, strategy: Strategy) -> bool:
        """Whether `strategy` ranks this request: it is the strategy or one of the ensemble's members."""
        return self.strategy is strategy or (
            self.strategy is Strategy.ENSEMBLE and self.votes().get(strategy, 0.0) > 0
        )


def _default_preferences() -> Preferences:
    """`Preferences()`, copied from one made once: defaults need no validation, and validating them
    again (with their `Weights()`) was half the validation of a request naming no preferences."""
    preferences = _DEFAULT_PREFERENCES.model_copy()
    # Its own weights, as `Preferences()` has: set in the copy's fields, not as a field the caller set.
    preferences.__dict__["weights"] = _DEFAULT_PREFERENCES.weights.model_copy()
    return preferences


_DEFAULT_PREFERENCES = Preferences()


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
    preferences: Preferences = Field(default_factory=_default_preferences)

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
    NOT_ALLOWED = "not_allowed"  # not among the API key's allowed models


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


class EscalationPlan(BaseModel):
    """How an escalate plan chose: the prompt's complexity, the bar and what the scores rest on."""

    complexity: Complexity
    tolerance: float
    best: float = Field(description="The best eligible deployment's quality on prompts of this complexity.")
    threshold: float = Field(description="best - tolerance: the cheapest deployment at or above it leads.")
    source: Literal["prior", "learned"] = Field(
        description="'prior': no eligible deployment has evidence for this complexity, so the catalog's "
        "qualities decided."
    )


class Plan(BaseModel):
    """The ordered candidates (primary first) and every exclusion with its reason."""

    strategy: Strategy
    strategy_source: StrategySource | None = None  # the request, its tenant, the environment, built in
    capability: Capability
    complexity: Complexity
    prompt_tokens_estimate: int
    completion_tokens_estimate: int
    candidates: list[Candidate]
    excluded: list[Exclusion]
    escalation: EscalationPlan | None = None  # strategy escalate only

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
