"""Request bodies of the HTTP API, as pydantic models: they validate input and document /docs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from router_core.chat import (
    Choices,
    Effort,
    EndUser,
    LogitBias,
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
)
from router_core.models import Message, Preferences

__all__ = [
    "CachePolicyBody",
    "ChatCompletionBody",
    "ChatFields",
    "DeploymentStateBody",
    "JobBody",
    "OpenAIBatchBody",
    "StreamOptions",
]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class ChatFields(BaseModel):
    """The Chat Completions fields a chat body and a job share, typed as the router reads them.

    Each is honoured by the deployments whose catalog `features` say they can; a request setting
    one that no deployment it may use honours is refused (400 naming the field), and a deployment
    that cannot honour it is left out of the plan rather than sent the field to ignore.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Choices | None = Field(
        default=None,
        description="How many answers (choices). A deployment without native `n` is called n times.",
    )
    stop: Stop | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = Field(default=None, description="Needs `logprobs: true`.")
    tools: Tools | None = None
    tool_choice: ToolChoice | None = Field(default=None, description="Needs `tools`.")
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = Field(
        default=None,
        description="`json_schema`: every answer must validate against the schema; a deployment whose "
        "answer does not is billed and the router fails over.",
    )
    reasoning_effort: Effort | None = None
    service_tier: ServiceTier | None = None
    user: EndUser | None = Field(
        default=None,
        description="Your end user: stored with the job (analytics by end user, a spend cap per end "
        "user with `routeq budget set end_user:<tenant>/<user>`).",
    )
    metadata: Metadata | None = Field(
        default=None,
        description="Up to 16 string pairs stored with the job: shown on it and its output line, and "
        "filterable (`GET /v1/batches/{id}/jobs?metadata=<key>=<value>`).",
    )


class ChatCompletionBody(ChatFields):
    """An OpenAI chat completion request; `preferences` (routeq's) steers the routing.

    `model` is `auto`, `router:<strategy>` (`router:cost`, `router:quality`, `router:speed`...),
    a deployment id, or a model name served by some deployment.
    """

    # allow_inf_nan=False: NaN and Infinity are refused by field here, never stored (PostgreSQL's
    # JSON has no such numbers).
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=255, examples=["auto", "router:cost"])
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0, description="The same as `max_tokens`.")
    stream: bool = Field(default=False, description="Server-sent chunks; only with `n` 1.")
    stream_options: StreamOptions | None = None
    store: bool | None = Field(
        default=None, description="Accepted and ignored: routeq keeps every job's request and answer."
    )
    preferences: Preferences | None = Field(
        default=None, description="routeq routing preferences: strategy, weights, limits, providers."
    )


class JobBody(ChatFields):
    """One prompt for `POST /v1/jobs`: the short form of a batch line."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    custom_id: str | None = Field(default=None, min_length=1, max_length=255)
    prompt: str | None = Field(default=None, description="The user message; or give `messages`.")
    messages: list[Message] | None = None
    system: str | None = None
    model: str | None = Field(default=None, min_length=1, max_length=255)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0, description="The same as `max_tokens`.")
    preferences: Preferences | None = None


class ExpiresAfter(BaseModel):
    """OpenAI's expiration policy of a file: `seconds` after its creation (1 hour to 30 days)."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class OpenAIBatchBody(BaseModel):
    """`POST /v1/batches`: run an uploaded JSONL file of chat completion requests."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Literal["/v1/chat/completions"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    output_expires_after: ExpiresAfter | None = Field(
        default=None, description="When the batch's output and error files expire (after their creation)."
    )


class DeploymentStateBody(BaseModel):
    """`POST /v1/admin/deployments/{id}/state`: force a deployment down or up, or back to auto."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["down", "up", "auto"] = Field(
        description="down: never route to it; up: route to it even with an open circuit; "
        "auto: the breaker decides."
    )


class CachePolicyBody(BaseModel):
    """`PUT /v1/cache/policy`: the tenant's cache defaults; a field left out or null is the fleet's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool | None = Field(default=None, description="Serve and keep answers (ROUTEQ_CACHE).")
    ttl_s: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Oldest answer served, in seconds (ROUTEQ_CACHE_TTL_S)."
    )
    semantic: bool | None = Field(default=None, description="Also serve answers to similar prompts.")
    threshold: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="Least cosine similarity of a semantic hit."
    )


class FeedbackBody(BaseModel):
    """`POST /v1/feedback`: a rating of a job's answer, stars or thumbs."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(min_length=1, max_length=40, description="The job whose answer is rated.")
    rating: Annotated[int, Field(ge=1, le=5)] | None = Field(default=None, description="1-5 stars.")
    thumbs: Literal["up", "down"] | None = Field(default=None, description="Instead of stars.")
    category: str | None = Field(
        default=None, max_length=64, description="What the rating is about (wrong, slow, format...)."
    )
    comment: str | None = Field(default=None, max_length=4000)
