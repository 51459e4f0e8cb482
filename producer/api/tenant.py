"""The tenant's settings: `GET /v1/tenant/settings` and `PUT /v1/tenant/settings` (its default strategy).

A key reads its own tenant's settings; an operator key may name any tenant with `?tenant=`.
Changing them takes an admin key of the tenant, or an operator key. The default strategy applies to
the tenant's requests that name none, from the next job this process makes and within
`TENANT_DEFAULT_TTL_S` on every other API process (producer/strategy_defaults.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from producer.api.auth import Caller, TenantParam, acting_tenant
from producer.api.context import ApiContext, Ctx
from producer.api.errors import ApiError
from producer.strategy_defaults import tenant_settings_view
from router_core.policy import parse_default_strategy

__all__ = ["router"]

router = APIRouter(tags=["Tenant"])


class TenantSettingsBody(BaseModel):
    """`PUT /v1/tenant/settings`: the settings to change."""

    model_config = ConfigDict(extra="forbid")

    default_strategy: str | None = Field(
        description="The strategy of the tenant's requests that name none (cost, speed, quality, "
        "balanced, ...); null: the environment's (ROUTEQ_DEFAULT_STRATEGY), else balanced."
    )


async def _view(ctx: ApiContext, tenant: str) -> dict[str, Any]:
    keys = ctx.store.api_keys
    default, limits = await keys.default_strategy(tenant), await keys.tenant_limits(tenant)
    return tenant_settings_view(tenant, default, ctx.settings.default_strategy, limits)


@router.get("/v1/tenant/settings", summary="The tenant's settings: default strategy, rate limits")
async def get_settings(principal: Caller, ctx: Ctx, *, tenant: TenantParam = None) -> dict[str, Any]:
    """The tenant's own default strategy (null: none), the one its requests naming none get and where
    it comes from (`tenant`, `environment` or `default`), and its rate limits over all its keys."""
    return await _view(ctx, acting_tenant(principal, tenant))


@router.put("/v1/tenant/settings", summary="Set the tenant's default strategy (admin)")
async def put_settings(
    body: TenantSettingsBody, principal: Caller, ctx: Ctx, *, tenant: TenantParam = None
) -> dict[str, Any]:
    """Sets the tenant's default strategy (null clears it). Rate limits are the operator's
    (`routeq keys tenant-limit`) and are not changed here."""
    name = acting_tenant(principal, tenant, changing="the tenant's settings")
    strategy = None
    if body.default_strategy is not None:
        try:
            strategy = parse_default_strategy(body.default_strategy)
        except ValueError as exc:
            raise ApiError(
                400, f"default_strategy: {exc}", param="default_strategy", code="invalid_request"
            ) from None
    await ctx.store.api_keys.set_default_strategy(name, strategy)
    ctx.strategies.forget(name)
    return await _view(ctx, name)
