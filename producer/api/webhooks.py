"""Webhooks' routes: a tenant's endpoints (`/v1/webhooks`) and what was sent to them (`.../deliveries`).

An endpoint receives the tenant's `batch.completed`, `batch.failed` and `job.failed` events (those it
asks for), signed with its own secret, shown once when it is created. A batch's own URL (Batch API
`metadata.webhook_url`, `routeq submit --webhook`) is signed with the tenant's secret
(`GET /v1/webhooks/secret`). Registering, removing, re-sending and reading the secret take an admin
key of the tenant; any key of the tenant reads its endpoints and deliveries.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from producer.api.auth import Admin, Caller
from producer.api.context import Ctx
from producer.api.errors import ApiError
from router_core.errors import InvalidRequestError
from storage.webhooks import DeliveryState, check_events, check_url

__all__ = ["router"]

router = APIRouter(tags=["Webhooks"])


class EndpointBody(BaseModel):
    """A webhook endpoint to register."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="http:// or https:// URL that receives the events.")
    events: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Event types to send: batch.completed, batch.failed, job.failed (default: all).",
    )


@router.post("/v1/webhooks", summary="Register a webhook endpoint (admin); its secret is shown once")
async def add_endpoint(body: EndpointBody, principal: Admin, ctx: Ctx) -> dict[str, Any]:
    """The answer's `secret` (`whsec_...`) verifies the endpoint's messages (Standard Webhooks); it is
    never shown again."""
    try:
        url = check_url(body.url)
        events = check_events(body.events)
    except InvalidRequestError as exc:
        raise ApiError(400, str(exc), param=exc.field) from None
    endpoint = await ctx.store.webhooks.add_endpoint(principal.tenant, url, events)
    return {"object": "webhook_endpoint", **endpoint.view()}


@router.get("/v1/webhooks", summary="The tenant's webhook endpoints")
async def list_endpoints(principal: Caller, ctx: Ctx) -> dict[str, Any]:
    endpoints = await ctx.store.webhooks.endpoints(principal.tenant)
    return {"object": "list", "data": [{"object": "webhook_endpoint", **e.view()} for e in endpoints]}


@router.delete("/v1/webhooks/{endpoint_id}", summary="Remove a webhook endpoint (admin)")
async def remove_endpoint(endpoint_id: str, principal: Admin, ctx: Ctx) -> dict[str, Any]:
    """No event goes to it any more; its deliveries still pending are given up (state `failed`)."""
    await ctx.store.webhooks.remove_endpoint(endpoint_id, tenant=principal.tenant)
    return {"object": "webhook_endpoint.deleted", "id": endpoint_id, "deleted": True}


@router.get("/v1/webhooks/secret", summary="The secret the tenant's batch webhooks are signed with (admin)")
async def tenant_secret(principal: Admin, ctx: Ctx) -> dict[str, Any]:
    """Batches given a `webhook_url` have their events signed with this secret (made on first use)."""
    secret = await ctx.store.webhooks.tenant_secret(principal.tenant)
    return {"object": "webhook_secret", "tenant": principal.tenant, "secret": secret}


@router.get("/v1/webhooks/deliveries", summary="Webhook deliveries and their attempts, newest first")
async def list_deliveries(
    principal: Caller,
    ctx: Ctx,
    *,
    batch_id: Annotated[str | None, Query(max_length=40, description="One batch's deliveries.")] = None,
    state: Annotated[DeliveryState | None, Query(description="pending, delivered or failed.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Each delivery (one event for one endpoint) with its state and every attempt: when, HTTP status
    or error, latency and the start of the receiver's answer."""
    found = await ctx.store.webhooks.deliveries(
        tenant=principal.tenant, batch_id=batch_id, state=state, limit=limit
    )
    return {"object": "list", "data": [{"object": "webhook_delivery", **d.view()} for d in found]}


@router.get("/v1/webhooks/deliveries/{delivery_id}", summary="One webhook delivery and its attempts")
async def get_delivery(delivery_id: str, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    delivery = await ctx.store.webhooks.delivery(delivery_id, tenant=principal.tenant)
    return {"object": "webhook_delivery", **delivery.view()}


@router.post(
    "/v1/webhooks/deliveries/{delivery_id}/retry", summary="Send a failed webhook delivery again (admin)"
)
async def retry_delivery(delivery_id: str, principal: Admin, ctx: Ctx) -> dict[str, Any]:
    """The delivery is due again now for one more attempt (409 unless it is `failed`)."""
    try:
        delivery = await ctx.store.webhooks.retry(delivery_id, tenant=principal.tenant)
    except ValueError as exc:
        raise ApiError(409, str(exc), code="not_failed") from None
    return {"object": "webhook_delivery", **delivery.view()}
