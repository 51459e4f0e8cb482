"""What every route needs, built once when the app starts and closed when it stops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, FastAPI, Request

from producer.api.stopping import Stopping
from producer.client import Client
from producer.inputs import InputRules
from producer.planning import Planner
from producer.strategy_defaults import StrategyDefaults
from router_core.catalog import Catalog, load_catalog
from router_core.planner import PlanLimits
from storage.bus.notifier import Notifier
from storage.bus.relay import StreamRelay
from storage.connections import connect_redis
from storage.fleet.budgets import Budgets
from storage.fleet.catalog import LiveCatalog
from storage.fleet.key_cache import KeyCache
from storage.fleet.quality import FleetQuality
from storage.fleet.ratelimits import RateLimiter, RateLimits
from storage.fleet.state import RedisFleetState
from storage.metrics import Metrics
from storage.settings import Settings
from storage.sql.store import Store

__all__ = ["ApiContext", "Ctx", "context", "open_context"]

# Callers whose clients an API process keeps (`ApiContext.client`); more are forgotten all at once.
_KEPT_CLIENTS = 1024


@dataclass
class ApiContext:
    """The API process's connections and the helpers built on them."""

    settings: Settings
    redis: ArqRedis
    store: Store
    live: LiveCatalog  # the catalog, swapped when a new version is committed (`catalog` reads it)
    budgets: Budgets = field(init=False)
    fleet: RedisFleetState = field(init=False)
    relay: StreamRelay = field(init=False)
    metrics: Metrics = field(init=False)
    quality: FleetQuality = field(init=False)
    planner: Planner = field(init=False)
    limiter: RateLimiter = field(init=False)
    # The API keys callers sent, kept until any key changes (storage.fleet.key_cache).
    keys: KeyCache = field(init=False)
    # Tenants' rate limits read from SQL, each kept a few seconds: tenant -> (until, limits).
    tenant_limits: dict[str, tuple[float, RateLimits]] = field(init=False, default_factory=dict)
    rules: InputRules = field(init=False)
    # Tenants' default strategies, each kept a few seconds; shared by every request's client.
    strategies: StrategyDefaults = field(init=False)
    # One subscription for every waiting request of this app (chat completions, streamed pieces).
    notifier: Notifier = field(init=False)
    # Waits on jobs, cut short when the server stops (the app's own, set by its lifespan).
    stopping: Stopping = field(init=False, default_factory=Stopping)

    def __post_init__(self) -> None:
        self.budgets = Budgets(
            self.redis,
            default_user_cap_usd=self.settings.default_user_budget_usd,
            zone=self.settings.budget_zone(),
        )
        self.fleet = RedisFleetState(self.redis, breaker=self.settings.breaker_policy())
        self.notifier = Notifier(self.redis)
        self.relay = StreamRelay(self.redis, notifier=self.notifier)
        self.metrics = Metrics()
        self.limiter = RateLimiter(self.redis)
        self.keys = KeyCache(self.redis, self.store.api_keys)
        self.quality = FleetQuality.from_settings(self.redis, self.store, self.settings)
        limits = PlanLimits(self.settings.default_completion_tokens, self.settings.max_candidates)
        self.planner = Planner(self.fleet, self.quality, limits)  # POST /v1/route
        # Jobs and Batch API lines are checked against the catalog as they arrive, like the CLI's.
        self.rules = InputRules.from_settings(self.settings, self.catalog)
        self.strategies = StrategyDefaults(self.store, self.settings.default_strategy)
        self.live.on_change(self._catalog_changed)
        self._clients: dict[tuple[str, str, str | None], Client] = {}

    @property
    def catalog(self) -> Catalog:
        """The catalog now: the live catalog's current version (no I/O)."""
        return self.live.current

    def _catalog_changed(self, catalog: Catalog) -> None:
        self.rules = InputRules.from_settings(self.settings, catalog)

    def client(self, tenant: str, user: str, api_key_id: str | None = None) -> Client:
        """A client that submits and reads as `tenant`/`user` (it shares the app's connections); the
        jobs it submits record `api_key_id`, the caller's key (None in dev mode).

        Kept per caller (a client holds no state of a request's): building one for every request
        cost a chat completion about a fiftieth of the API's CPU.
        """
        caller = (tenant, user, api_key_id)
        client = self._clients.get(caller)
        if client is None:
            if len(self._clients) >= _KEPT_CLIENTS:
                self._clients.clear()
            client = self._clients[caller] = Client(
                self.redis,
                self.store,
                self.settings,
                tenant=tenant,
                user=user,
                notifier=self.notifier,
                strategies=self.strategies,
                api_key_id=api_key_id,
            )
        return client


@asynccontextmanager
async def open_context(
    settings: Settings,
    *,
    redis: ArqRedis | None = None,
    store: Store | None = None,
    catalog: Catalog | None = None,
) -> AsyncIterator[ApiContext]:
    """Connect to Redis and the database (unless given), and close what was opened here on exit.

    With no `catalog`, the app follows the live catalog (seeded from `settings.catalog_path`).

    Raises:
        ServiceUnavailableError: Redis or the database cannot be reached (the URL is named).
        ConfigError: the catalog is invalid.
    """
    if catalog is None:
        load_catalog(settings.catalog_path)  # a bad file fails here, before anything is opened
    own_redis = redis is None
    redis = redis or await connect_redis(settings)
    try:
        own_store = store is None
        store = store or await Store.open(settings.database_url)
        try:
            if catalog is not None:
                live = LiveCatalog.fixed(catalog)
            else:
                live = await LiveCatalog.from_settings(redis, store, settings)
            ctx = ApiContext(settings, redis, store, live)
            try:
                yield ctx
            finally:
                await ctx.notifier.close()
                await live.close()
        finally:
            if own_store:
                await store.close()
    finally:
        if own_redis:
            await redis.aclose()


async def context(request: Request) -> ApiContext:
    """The app's context (a FastAPI dependency; a coroutine: FastAPI runs a plain function
    dependency in its thread pool, a thread hop on every request)."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


# A route's parameter `ctx: Ctx` receives the app's context.
Ctx = Annotated[ApiContext, Depends(context)]


def attach(app: FastAPI, ctx: ApiContext) -> None:
    app.state.ctx = ctx
