"""Operations: providers and their live state, forcing a deployment, liveness and readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from producer.api.auth import Caller, Operator
from producer.api.context import ApiContext, Ctx
from producer.api.schemas import DeploymentStateBody
from router_core.catalog import Catalog
from router_core.fleet import DeploymentSnapshot, Forced
from router_core.redact import mask_url
from router_core.simulated import simulated_ids
from storage.bus.registry import registered_workers
from storage.errors import NotFoundError

__all__ = ["force_deployment", "provider_view", "provider_views", "router", "simulated_deployments"]

router = APIRouter(tags=["Operations"])
logger = logging.getLogger("routeq.api")

# /ready gives each dependency this long to answer.
_READY_TIMEOUT_S = 2.0


async def simulated_deployments(ctx: ApiContext) -> frozenset[str]:
    """The deployments the fleet serves from the simulated world.

    The workers decide (their ROUTEQ_SIMULATE and API keys, not the API's), and each says so in
    its `routeq:workers` entry: a deployment any live worker simulates may get simulated answers.
    With no live worker that says, the API's own settings and environment stand in.
    """
    now = time.time()
    told = [
        worker.simulated
        for worker in await registered_workers(ctx.redis)
        if worker.simulated is not None and worker.is_live(job_lease_s=ctx.settings.job_lease_s, now=now)
    ]
    if not told:
        return simulated_ids(ctx.catalog, ctx.settings.simulate)
    return frozenset().union(*told)


async def provider_views(ctx: ApiContext) -> list[dict[str, Any]]:
    """Every deployment of the catalog as GET /v1/providers shows it. The catalog is read once: a
    live catalog swapped between the awaits would lack a deployment the list was made from."""
    catalog = ctx.catalog
    ids = list(catalog)
    snapshot = await ctx.fleet.snapshot(ids)
    simulated = await simulated_deployments(ctx)
    return [provider_view(catalog, dep, snapshot[dep], simulated) for dep in ids]


def provider_view(
    catalog: Catalog, deployment_id: str, stats: DeploymentSnapshot, simulated: frozenset[str]
) -> dict[str, Any]:
    dep = catalog[deployment_id]
    price = catalog.price(deployment_id)
    return {
        "id": dep.id,
        "object": "routeq.deployment",
        "simulated": deployment_id in simulated,
        "enabled": dep.enabled,  # false: disabled in the live catalog, never planned
        "provider": dep.provider,
        "kind": dep.kind.value,
        "model": dep.model,
        "quality": dep.quality,
        "context_window": dep.context_window,
        "circuit": stats.circuit.value,
        "forced": None if stats.forced is None else stats.forced.value,
        "success_rate": stats.success_rate,
        "latency_ewma_ms": stats.latency_ewma_ms,
        "in_flight": stats.in_flight,
        "calls": stats.calls,
        "rate_limits": {
            "window_s": dep.rate_window_s,
            "rpm": dep.rpm,
            "tpm": dep.tpm,
            "max_concurrency": dep.max_concurrency,
            "requests_in_window": stats.requests_in_window,
            "tokens_in_window": stats.tokens_in_window,
        },
        "price": {
            "input_per_mtok_usd": price.input_per_token * 1e6,
            "output_per_mtok_usd": price.output_per_token * 1e6,
            "source": price.source,
        },
    }


@router.get(
    "/v1/providers",
    summary="Every deployment: circuit, live stats, rate-limit use, price, whether it is simulated",
)
async def providers(_principal: Caller, ctx: Ctx) -> dict[str, Any]:
    return {"object": "list", "data": await provider_views(ctx)}


@router.post(
    "/v1/admin/deployments/{deployment_id}/state", summary="Force a deployment down or up (operator)"
)
async def set_deployment_state(
    deployment_id: str, body: DeploymentStateBody, _operator: Operator, ctx: Ctx
) -> dict[str, Any]:
    """Fleet-wide, until set back to `auto`: workers see it on their next plan. Every tenant's
    calls are affected, so this takes an operator key, not a tenant's admin key."""
    catalog = ctx.catalog
    await force_deployment(ctx, deployment_id, body.state)
    snapshot = await ctx.fleet.snapshot([deployment_id])
    return provider_view(catalog, deployment_id, snapshot[deployment_id], await simulated_deployments(ctx))


async def force_deployment(ctx: ApiContext, deployment_id: str, state: str) -> None:
    """Force a deployment `down` or `up` for the whole fleet, or hand it back to its breaker (`auto`).
    The API's admin route and the dashboard's operator form both come here.

    Raises:
        NotFoundError: the catalog has no such deployment.
    """
    if deployment_id not in ctx.catalog:
        raise NotFoundError("deployment", deployment_id)
    await ctx.fleet.force(deployment_id, None if state == "auto" else Forced(state))


@router.get("/health", summary="Liveness: the process answers", tags=["Operations"])
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: Redis and the database answer (no provider is called)")
async def ready(ctx: Ctx) -> JSONResponse:
    """`reachable` or `unreachable` per dependency, and nothing more: the route takes no key (load
    balancers call it), so it shows no URL, host or error text. Why a dependency is unreachable is
    logged, with the URL masked."""
    checks = {"redis": _check(ctx.redis.ping()), "database": _check(_select_one(ctx))}
    results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
    for name, error in results.items():
        if error is not None:
            where = ctx.settings.redis_url if name == "redis" else ctx.settings.database_url
            logger.warning("/ready: %s at %s is unreachable: %s", name, mask_url(where or "-"), error)
    ok = all(error is None for error in results.values())
    body = {"status": "ready" if ok else "unavailable"}
    body |= {name: "unreachable" if error else "reachable" for name, error in results.items()}
    return JSONResponse(body, status_code=200 if ok else 503)


async def _select_one(ctx: ApiContext) -> None:
    async with ctx.store.reading() as conn:
        await conn.execute(text("SELECT 1"))


async def _check(probe: Any) -> str | None:
    try:
        async with asyncio.timeout(_READY_TIMEOUT_S):
            await probe
    except Exception as exc:  # readiness reports any failure instead of raising it
        return f"{type(exc).__name__}: {exc}"[:300]
    return None
