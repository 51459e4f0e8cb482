"""Request bodies of the HTTP API, as pydantic models: they validate input and document /docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from router_core.models import Message, Preferences

__all__ = ["ChatCompletionBody", "DeploymentStateBody", "JobBody", "OpenAIBatchBody", "StreamOptions"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class ChatCompletionBody(BaseModel):
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
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    user: str | None = None
    seed: int | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    preferences: Preferences | None = Field(
        default=None, description="routeq routing preferences: strategy, weights, limits, providers."
    )


class JobBody(BaseModel):
    """One prompt for `POST /v1/jobs`: the short form of a batch line."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    custom_id: str | None = Field(default=None, min_length=1, max_length=255)
    prompt: str | None = Field(default=None, description="The user message; or give `messages`.")
    messages: list[Message] | None = None
    system: str | None = None
    model: str | None = Field(default=None, min_length=1, max_length=255)
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    preferences: Preferences | None = None


class OpenAIBatchBody(BaseModel):
    """`POST /v1/batches`: run an uploaded JSONL file of chat completion requests."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Literal["/v1/chat/completions"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    output_expires_after: dict[str, Any] | None = None


class DeploymentStateBody(BaseModel):
    """`POST /v1/admin/deployments/{id}/state`: force a deployment down or up, or back to auto."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["down", "up", "auto"] = Field(
        description="down: never route to it; up: route to it even with an open circuit; "
        "auto: the breaker decides."
    )
