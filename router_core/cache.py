"""The response cache's vocabulary: what a request's answer is keyed by, and when the cache is used.

routeq never pays twice for the same answer. Two requests get the same `cache_key` when nothing
that changes the answer differs between them: the messages, the model asked for, the routing
strategy (and its weights, chain, ensemble and escalation) and every OpenAI field that shapes the
reply (sampling, `n`, `seed`, `stop`, tools, response format, reasoning effort, token limit). Left
out, because they do not change what the model says: the end user (`user`), `metadata`,
`service_tier`, the constraints in `preferences` (a cached answer must satisfy them instead:
`planner.answer_fits`) and the cache preference itself. The key is namespaced by tenant where it is
stored, never here.

Whether a request reads and writes the cache is decided from three layers, each overriding the one
before: the fleet's settings (`ROUTEQ_CACHE*`), the tenant's policy (`routeq cache policy`), the
request's `preferences.cache`:

    use       read a cached answer if one fits; otherwise call, and the answer is cached
    refresh   call whatever the cache holds; the new answer is the one cached from now on
    off       neither read nor write

A request that samples (`temperature > 0`) is cached like any other by default: a batch run again
is meant to cost nothing. `ROUTEQ_CACHE_SAMPLED=false` leaves such requests out unless they ask.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from router_core.models import ChatRequest

__all__ = [
    "CacheDecision",
    "CacheMode",
    "CachePolicy",
    "CachePreference",
    "cache_key",
    "decide",
    "semantic_group",
    "semantic_text",
]

# Bumped when the key's recipe changes, so old entries stop matching instead of matching wrongly.
_VERSION = "routeq-cache-1"
# Fields that do not change the answer (see the module docstring).
_NOT_THE_ANSWER = {"user", "metadata", "service_tier", "preferences"}


class CacheMode(StrEnum):
    USE = "use"
    REFRESH = "refresh"
    OFF = "off"


class CachePreference(BaseModel):
    """`preferences.cache`: a mode (`"use"`, `"refresh"`, `"off"`) or an object with more."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mode: CacheMode | None = None
    ttl_s: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Serve only answers younger than this many seconds."
    )
    semantic: bool | None = Field(default=None, description="Also serve answers to similar prompts.")
    threshold: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="Least cosine similarity of a semantic hit."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The defaults a request falls back to: the fleet's settings, a tenant's policy over them."""

    enabled: bool = True
    ttl_s: int = 7 * 24 * 3600
    semantic: bool = False
    threshold: float = 0.95
    sampled: bool = True  # cache requests with temperature > 0 too

    def overridden(self, **values: Any) -> CachePolicy:
        """This policy with the given fields replaced where they are not None (a tenant's row)."""
        changes = {name: value for name, value in values.items() if value is not None}
        return CachePolicy(**{**_fields(self), **changes})


@dataclass(frozen=True, slots=True)
class CacheDecision:
    """What one request does with the cache."""

    mode: CacheMode
    ttl_s: int
    semantic: bool
    threshold: float

    @property
    def reads(self) -> bool:
        return self.mode is CacheMode.USE

    @property
    def writes(self) -> bool:
        return self.mode is not CacheMode.OFF


def decide(request: ChatRequest, policy: CachePolicy) -> CacheDecision:
    """The request's own `preferences.cache` over `policy`."""
    asked = request.preferences.cache or CachePreference()
    if asked.mode is not None:
        mode = asked.mode
    elif not policy.enabled or (not policy.sampled and (request.temperature or 0) > 0):
        mode = CacheMode.OFF
    else:
        mode = CacheMode.USE
    return CacheDecision(
        mode=mode,
        ttl_s=asked.ttl_s or policy.ttl_s,
        semantic=policy.semantic if asked.semantic is None else asked.semantic,
        threshold=asked.threshold or policy.threshold,
    )


def cache_key(request: ChatRequest) -> str:
    """SHA-256 (hex) of everything in `request` that changes the answer."""
    body = request.model_dump(mode="json", exclude_none=True, exclude=_NOT_THE_ANSWER)
    return _digest(body | {"routing": _routing(request)})


def semantic_group(request: ChatRequest) -> str:
    """The key without the messages' text: only requests alike in all else are compared by meaning."""
    body = request.model_dump(mode="json", exclude_none=True, exclude=_NOT_THE_ANSWER | {"messages"})
    roles = [message.role for message in request.messages]
    return _digest(body | {"routing": _routing(request), "roles": roles})


def semantic_text(request: ChatRequest) -> str:
    """The text whose embedding stands for the request: every message, with its role."""
    return "\n".join(f"{message.role}: {message.text()}" for message in request.messages)


_ROUTING = {"strategy", "weights", "chain", "ensemble", "escalation"}


def _routing(request: ChatRequest) -> dict[str, Any]:
    prefs = request.preferences
    return prefs.model_dump(mode="json", include=_ROUTING, exclude_none=True)


def _digest(body: dict[str, Any]) -> str:
    canonical = json.dumps([_VERSION, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _fields(policy: CachePolicy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in policy.__slots__}
