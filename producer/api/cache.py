"""The response cache's routes: what it did (`/v1/cache/stats`), forgetting a tenant's answers
(`/v1/cache/clear`) and the tenant's defaults (`/v1/cache/policy`).

A key acts on its own tenant. An operator key (`routeq keys create --operator`) may name any tenant
with `?tenant=`, as it may read every tenant's analytics; a tenant's admin may not. Changing the
cache (clear, policy) takes an admin key of the tenant, or an operator key.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from producer.api.auth import Caller, TenantParam, acting_tenant, tenant_or_all
from producer.api.context import Ctx
from producer.api.errors import ApiError
from producer.api.schemas import CachePolicyBody
from producer.cache_views import policy_view, stats_view
from storage.jobs import ANY_TENANT
from storage.sql.cache import TenantCachePolicy

__all__ = ["router"]

router = APIRouter(tags=["Response cache"])


@router.get("/v1/cache/stats", summary="What the response cache did: hits, misses, hit rate, dollars saved")
async def cache_stats(
    principal: Caller,
    ctx: Ctx,
    *,
    tenant: TenantParam = None,
    all_tenants: Annotated[bool, Query(description="Every tenant's numbers (operator keys only).")] = False,
    since: Annotated[datetime | None, Query(description="Only jobs finished from this time on.")] = None,
    days: Annotated[
        int | None,
        Query(ge=1, le=366, description="Only jobs finished in the last `days` (without `since`)."),
    ] = None,
) -> dict[str, Any]:
    """Jobs that used the cache, hits among them (exact and semantic), misses, hit rate and dollars not
    paid again, for jobs finished in the window (default: every job); `entries` is how many distinct
    answers may still be served."""
    scope = tenant_or_all(principal, tenant, all_tenants)
    try:
        start = _utc(since) if since is not None else None
        if start is None and days is not None:
            start = datetime.now(UTC) - timedelta(days=days)
    except OverflowError:
        raise ApiError(400, "since: out of the calendar's range", param="since") from None
    stats = await ctx.store.cache.stats(ANY_TENANT if scope is None else scope, since=start)
    return stats_view(scope, start, stats)


@router.post("/v1/cache/clear", summary="Stop serving every answer the tenant has cached so far (admin)")
async def cache_clear(principal: Caller, ctx: Ctx, *, tenant: TenantParam = None) -> dict[str, Any]:
    """Answers finished before `cleared_at` are never served again (nothing is deleted: the jobs keep
    their results); new answers are cached from now on."""
    name = acting_tenant(principal, tenant, changing="the tenant's cache")
    cleared = await ctx.store.cache.clear(name)
    return {"object": "routeq.cache_clear", "tenant": name, "cleared_at": cleared.isoformat()}


@router.get("/v1/cache/policy", summary="The tenant's cache defaults, over the fleet's")
async def get_cache_policy(principal: Caller, ctx: Ctx, *, tenant: TenantParam = None) -> dict[str, Any]:
    """The tenant's own settings (null: the fleet's default) and what they come to (`effective`)."""
    name = acting_tenant(principal, tenant)
    return policy_view(name, await ctx.store.cache.policy(name), ctx.settings.cache_policy())


@router.put("/v1/cache/policy", summary="Set the tenant's cache defaults (admin)")
async def put_cache_policy(
    body: CachePolicyBody, principal: Caller, ctx: Ctx, *, tenant: TenantParam = None
) -> dict[str, Any]:
    """Replaces all four settings: a field left out or null falls back to the fleet's default. A
    request's own `preferences.cache` still overrides them. Workers see a change within seconds."""
    name = acting_tenant(principal, tenant, changing="the tenant's cache")
    await ctx.store.cache.set_policy(TenantCachePolicy(name, **body.model_dump()))
    return policy_view(name, await ctx.store.cache.policy(name), ctx.settings.cache_policy())


def _utc(value: datetime) -> datetime:
    """An aware UTC time; a time without an offset is taken as UTC."""
    return value.replace(tzinfo=value.tzinfo or UTC).astimezone(UTC)
