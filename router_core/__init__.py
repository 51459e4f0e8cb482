"""routeq's router core: routing, provider adapters and the simulated provider world.

This package imports nothing from `workers`, `storage` or `producer`.

Names are loaded on first use (PEP 562): `import router_core.models` must not pay for the provider
SDKs that `Router` pulls in, since the CLI's read-only commands start with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router_core._lazy import lazy_exports

if TYPE_CHECKING:
    from router_core.catalog import Catalog, Deployment, ProviderKind, Task, load_catalog
    from router_core.clock import Clock, FakeClock, SystemClock
    from router_core.errors import (
        AllAttemptsFailedError,
        AuthenticationError,
        BadRequestError,
        BudgetExceededError,
        CapacityExhaustedError,
        ConfigError,
        ContextLengthError,
        FatalProviderError,
        InvalidRequestError,
        MalformedResponseError,
        NoRouteError,
        ProviderConnectionError,
        ProviderError,
        ProviderServerError,
        ProviderTimeoutError,
        RateLimitedError,
        RetryableProviderError,
        RouteqError,
        StreamInterruptedError,
    )
    from router_core.fleet import (
        Admission,
        BreakerPolicy,
        CallOutcome,
        CircuitState,
        DeploymentSnapshot,
        FleetState,
        Forced,
        InMemoryFleetState,
        Refusal,
    )
    from router_core.models import (
        Attempt,
        AttemptOutcome,
        Candidate,
        Capability,
        ChatRequest,
        CompletionResult,
        Complexity,
        Embeddings,
        Exclusion,
        ExclusionReason,
        Message,
        Plan,
        Preferences,
        Strategy,
        Usage,
        Weights,
    )
    from router_core.planner import PlanLimits, build_plan
    from router_core.router import RetryPolicy, Router
    from router_core.settings import RouterSettings, SimulateMode
    from router_core.spend import SpendGuard

__all__ = [
    "Admission",
    "AllAttemptsFailedError",
    "Attempt",
    "AttemptOutcome",
    "AuthenticationError",
    "BadRequestError",
    "BreakerPolicy",
    "BudgetExceededError",
    "CallOutcome",
    "Candidate",
    "Capability",
    "CapacityExhaustedError",
    "Catalog",
    "ChatRequest",
    "CircuitState",
    "Clock",
    "CompletionResult",
    "Complexity",
    "ConfigError",
    "ContextLengthError",
    "Deployment",
    "DeploymentSnapshot",
    "Embeddings",
    "Exclusion",
    "ExclusionReason",
    "FakeClock",
    "FatalProviderError",
    "FleetState",
    "Forced",
    "InMemoryFleetState",
    "InvalidRequestError",
    "MalformedResponseError",
    "Message",
    "NoRouteError",
    "Plan",
    "PlanLimits",
    "Preferences",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderKind",
    "ProviderServerError",
    "ProviderTimeoutError",
    "RateLimitedError",
    "Refusal",
    "RetryPolicy",
    "RetryableProviderError",
    "RouteqError",
    "Router",
    "RouterSettings",
    "SimulateMode",
    "SpendGuard",
    "Strategy",
    "StreamInterruptedError",
    "SystemClock",
    "Task",
    "Usage",
    "Weights",
    "build_plan",
    "load_catalog",
]

# Which module defines each public name; `__getattr__` imports it on first access.
_MODULES: dict[str, tuple[str, ...]] = {
    "router_core.catalog": ("Catalog", "Deployment", "ProviderKind", "Task", "load_catalog"),
    "router_core.clock": ("Clock", "FakeClock", "SystemClock"),
    "router_core.errors": (
        "AllAttemptsFailedError",
        "AuthenticationError",
        "BadRequestError",
        "BudgetExceededError",
        "CapacityExhaustedError",
        "ConfigError",
        "ContextLengthError",
        "FatalProviderError",
        "InvalidRequestError",
        "MalformedResponseError",
        "NoRouteError",
        "ProviderConnectionError",
        "ProviderError",
        "ProviderServerError",
        "ProviderTimeoutError",
        "RateLimitedError",
        "RetryableProviderError",
        "RouteqError",
        "StreamInterruptedError",
    ),
    "router_core.models": (
        "Attempt",
        "AttemptOutcome",
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
    ),
    "router_core.planner": ("PlanLimits", "build_plan"),
    "router_core.router": ("RetryPolicy", "Router"),
    "router_core.settings": ("RouterSettings", "SimulateMode"),
    "router_core.spend": ("SpendGuard",),
    "router_core.fleet": (
        "Admission",
        "BreakerPolicy",
        "CallOutcome",
        "CircuitState",
        "DeploymentSnapshot",
        "Forced",
        "InMemoryFleetState",
        "Refusal",
        "FleetState",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _MODULES, globals())
