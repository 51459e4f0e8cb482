"""routeq's public Python API: `import routeq`, or `from routeq import Client, ChatRequest, ...`.

    async with await routeq.Client.connect() as client:  # ROUTEQ_REDIS_URL + ROUTEQ_DATABASE_URL
        job = await client.wait(await client.submit({"messages": [{"role": "user", "content": "Hi"}]}))

The names live in `router_core` (routing, requests, catalog, errors), `storage` (jobs, settings,
events, storage errors) and `producer` (the client); this package only gathers them, so user code
does not depend on that layout. It never imports `workers`.

Names are loaded on first use (PEP 562): `import routeq` costs next to nothing, and `routeq.Router`
alone does not pull in what `routeq.Client` needs (or the other way round).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router_core._lazy import lazy_exports

if TYPE_CHECKING:
    from producer.client import Client
    from router_core.catalog import Catalog, Deployment, load_catalog
    from router_core.errors import (
        AllAttemptsFailedError,
        BudgetExceededError,
        CapacityExhaustedError,
        ConfigError,
        InvalidRequestError,
        NoRouteError,
        ProviderError,
        RouteqError,
        StreamInterruptedError,
    )
    from router_core.models import (
        Attempt,
        ChatRequest,
        CompletionResult,
        Message,
        Preferences,
        Strategy,
        Usage,
    )
    from router_core.router import Router
    from router_core.settings import RouterSettings, SimulateMode
    from storage.bus.events import Event
    from storage.errors import NotFoundError, ServiceUnavailableError, StorageError
    from storage.jobs import BatchRecord, BatchSummary, JobRecord, JobStatus, NewJob
    from storage.settings import Settings

__all__ = [
    "AllAttemptsFailedError",
    "Attempt",
    "BatchRecord",
    "BatchSummary",
    "BudgetExceededError",
    "CapacityExhaustedError",
    "Catalog",
    "ChatRequest",
    "Client",
    "CompletionResult",
    "ConfigError",
    "Deployment",
    "Event",
    "InvalidRequestError",
    "JobRecord",
    "JobStatus",
    "Message",
    "NewJob",
    "NoRouteError",
    "NotFoundError",
    "Preferences",
    "ProviderError",
    "RouteqError",
    "Router",
    "RouterSettings",
    "ServiceUnavailableError",
    "Settings",
    "SimulateMode",
    "StorageError",
    "Strategy",
    "StreamInterruptedError",
    "Usage",
    "load_catalog",
]

# Which module defines each public name; `__getattr__` imports it on first access.
_MODULES: dict[str, tuple[str, ...]] = {
    "producer.client": ("Client",),
    "router_core.catalog": ("Catalog", "Deployment", "load_catalog"),
    "router_core.errors": (
        "AllAttemptsFailedError",
        "BudgetExceededError",
        "CapacityExhaustedError",
        "ConfigError",
        "InvalidRequestError",
        "NoRouteError",
        "ProviderError",
        "RouteqError",
        "StreamInterruptedError",
    ),
    "router_core.models": (
        "Attempt",
        "ChatRequest",
        "CompletionResult",
        "Message",
        "Preferences",
        "Strategy",
        "Usage",
    ),
    "router_core.router": ("Router",),
    "router_core.settings": ("RouterSettings", "SimulateMode"),
    "storage.bus.events": ("Event",),
    "storage.errors": ("NotFoundError", "ServiceUnavailableError", "StorageError"),
    "storage.jobs": ("BatchRecord", "BatchSummary", "JobRecord", "JobStatus", "NewJob"),
    "storage.settings": ("Settings",),
}
__getattr__, __dir__ = lazy_exports(__name__, _MODULES, globals())
