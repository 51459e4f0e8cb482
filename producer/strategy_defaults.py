"""The strategy of a request that names none, resolved where the job is made (producer side).

Precedence: the request's own strategy > its tenant's default (`routeq tenant set-default-strategy`,
`PUT /v1/tenant/settings`) > the environment's (`ROUTEQ_DEFAULT_STRATEGY`) > `balanced`
(`router_core.policy.with_default_strategy`). The resolved strategy and its source are written into
the job's request (`preferences.strategy`, `preferences.strategy_source`), so the worker plans what
the job says and never looks a default up, a re-delivered job plans the same, and `POST /v1/route`
previews with the same resolution. A change of a tenant's default applies to jobs made after it.

Each process keeps a tenant's default for `TENANT_DEFAULT_TTL_S` (one SQL read per tenant per
interval, not one per request); a change made through this process is seen at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from router_core.models import ChatRequest, Message, Strategy
from router_core.policy import DefaultStrategy, with_default_strategy
from storage.fleet.ratelimits import RateLimits
from storage.sql.store import Store

__all__ = ["TENANT_DEFAULT_TTL_S", "StrategyDefaults", "tenant_settings_view"]

TENANT_DEFAULT_TTL_S = 5.0
"""How long a process uses a tenant's default strategy it read: other API processes see a change
within this."""

_MAX_TENANTS = 10_000  # kept at once; past it the cache starts again


class StrategyDefaults:
    """Resolves requests' strategies for one process: the environment's default and each tenant's."""

    def __init__(
        self,
        store: Store,
        environment: Strategy | None,
        *,
        ttl_s: float = TENANT_DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.environment = environment
        self.ttl_s = ttl_s
        self._clock = clock
        self._tenants: dict[str, tuple[float, Strategy | None]] = {}

    async def tenant_default(self, tenant: str) -> Strategy | None:
        """The tenant's own default (None: none), read from SQL at most every `ttl_s`."""
        cached = self._tenants.get(tenant)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        strategy = await self.store.api_keys.default_strategy(tenant)
        if len(self._tenants) >= _MAX_TENANTS:
            self._tenants.clear()
        self._tenants[tenant] = (now + self.ttl_s, strategy)
        return strategy

    def forget(self, tenant: str) -> None:
        """Read the tenant's default again on next use (it was just changed through this process)."""
        self._tenants.pop(tenant, None)

    async def resolver(self, tenant: str) -> Callable[[ChatRequest], ChatRequest]:
        """A function resolving the tenant's requests (one read for a whole batch; CPU only after).

        It pickles: a process parsing a file resolves its requests (`producer.parsing`).
        """
        return DefaultStrategy(await self.tenant_default(tenant), self.environment)

    async def resolve(self, request: ChatRequest, tenant: str) -> ChatRequest:
        """`request` with its strategy and `strategy_source` set for `tenant`."""
        return (await self.resolver(tenant))(request)


def tenant_settings_view(
    tenant: str, default: Strategy | None, environment: Strategy | None, limits: RateLimits
) -> dict[str, Any]:
    """A tenant's settings as `GET /v1/tenant/settings` and `routeq tenant show --json` print them:
    its own default strategy (null: none), what a request naming none gets and from where, and its
    rate limits over all its keys."""
    effective = with_default_strategy(_UNNAMED, default, environment).preferences
    return {
        "object": "routeq.tenant_settings",
        "tenant": tenant,
        "default_strategy": None if default is None else default.value,
        "environment_default_strategy": None if environment is None else environment.value,
        "effective_default_strategy": {
            "strategy": effective.strategy.value,
            "source": effective.strategy_source,
        },
        "rate_limits": limits.as_json(),
    }


# A request naming no strategy: what the defaults make of one is what they make of every one.
_UNNAMED = ChatRequest(messages=[Message(role="user", content="-")])
