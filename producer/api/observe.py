"""`/metrics` (Prometheus) and `/v1/analytics` (SQL), plus the middleware counting API requests.

The API process exports the same metric families as the workers (storage.metrics): its fleet gauges
(queue depth, workers, circuit state, in-flight per deployment, capped budgets) are read from Redis
at each scrape, and it counts its own HTTP requests by route template. Job, attempt, cost and
latency counters are incremented where jobs run: scrape each worker's own metrics port for those.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.api.auth import Caller, tenant_or_all
from producer.api.context import ApiContext, Ctx
from producer.api.errors import ApiError
from router_core.periods import BudgetPeriod
from storage.metrics import CONTENT_TYPE
from storage.sql.analytics import analytics as compute_analytics
from storage.sql.spend import spend_per_period

__all__ = ["RequestMetrics", "router"]

router = APIRouter(tags=["Operations"])

_PERIODS = {"day": BudgetPeriod.DAILY, "week": BudgetPeriod.WEEKLY, "month": BudgetPeriod.MONTHLY}


@router.get("/metrics", summary="Prometheus metrics (fleet gauges and this API's requests)")
async def metrics(ctx: Ctx) -> Response:
    settings = ctx.settings
    await ctx.metrics.refresh(
        ctx.redis, ctx.fleet, list(ctx.catalog), settings.queue_name, job_lease_s=settings.job_lease_s
    )
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/analytics", summary="Requests, failures, failovers, cost and latency, from SQL")
async def analytics(
    principal: Caller,
    ctx: Ctx,
    *,
    since: Annotated[datetime | None, Query(description="Window start (default: `days` ago).")] = None,
    until: Annotated[datetime | None, Query(description="Window end, excluded (default: now).")] = None,
    days: Annotated[int, Query(ge=1, le=366, description="Window length when `since` is not given.")] = 7,
    all_tenants: Annotated[bool, Query(description="Every tenant's numbers (operator keys only).")] = False,
    group_by: Annotated[
        Literal["end_user"] | None,
        Query(
            description="`end_user`: also `end_users`, one row per end user (the `user` requests "
            "named; null for requests that named none) with requests, calls, tokens and cost."
        ),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=1000, description="With `group_by`: at most this many rows, most cost first.")
    ] = 100,
    period: Annotated[
        Literal["day", "week", "month"] | None,
        Query(
            description="Also `spend`: the ledger's charges per day, week (from Monday) or month, each from "
            "local midnight in ROUTEQ_BUDGET_TIMEZONE as budget periods are (`start` is its local date)."
        ),
    ] = None,
) -> dict[str, Any]:
    """Global totals, per-deployment rows and daily rollups per model, for the caller's tenant; per
    end user too with `group_by=end_user`, spend per day, week or month with `period`."""
    scope = tenant_or_all(principal, None, all_tenants)
    try:
        end = _utc(until) if until is not None else datetime.now(UTC)
        start = _utc(since) if since is not None else end - timedelta(days=days)
    except OverflowError:
        raise ApiError(400, "since/until: out of the calendar's range", param="since") from None
    if start >= end:
        raise ApiError(400, "since: must be before until", param="since")
    report = await compute_analytics(
        ctx.store,
        tenant=scope,
        since=start,
        until=end,
        by_end_user=group_by == "end_user",
        end_user_limit=limit,
    )
    body = report.to_dict()
    if period is not None:
        zone = ctx.settings.budget_zone()
        try:
            rows = await spend_per_period(
                ctx.store, _PERIODS[period], zone, tenant=report.tenant, since=start, until=end
            )
        except (OverflowError, ValueError) as exc:  # too many periods, or one ending past year 9999
            raise ApiError(400, f"period: {exc}", param="period") from None
        body["spend"] = {
            "period": period,
            "timezone": ctx.settings.budget_timezone,
            "rows": [
                {"start": r.start.isoformat(), "cost_usd": float(r.cost_usd), "calls": r.calls} for r in rows
            ],
        }
    return body


def _utc(value: datetime) -> datetime:
    """An aware UTC time; a time without an offset is taken as UTC."""
    return value.replace(tzinfo=value.tzinfo or UTC).astimezone(UTC)


class RequestMetrics:
    """Pure ASGI middleware: each HTTP request counted by method, route template and status.

    The outermost of the app's middleware: a request refused before it reached its route (a 413
    from the body limit) is counted too, under the template of the route it was for.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            template = getattr(scope.get("route"), "path", None) or _template(scope)
            ctx: ApiContext | None = getattr(scope["app"].state, "ctx", None)
            if ctx is not None:
                ctx.metrics.observe_http(scope["method"], template, status, time.perf_counter() - started)


_PARAMETER = re.compile(r"\\\{[^/]+?\\\}")  # a path parameter, `{name}`, as re.escape writes it


def _template(scope: Scope) -> str:
    """The template of the route the request was for, when it was answered before routing (which
    names its route in the scope): a 413 from the body limit. Matched against the app's OpenAPI
    paths (the routes it documents; the dashboard's are not), "unmatched" when none fits (a 404)."""
    app = scope["app"]
    templates: list[tuple[re.Pattern[str], str]] | None = getattr(app.state, "route_templates", None)
    if templates is None:  # made on the first such request; fixed paths before templated ones
        paths = sorted(app.openapi()["paths"], key=lambda path: path.count("{"))
        templates = [(re.compile(_PARAMETER.sub("[^/]+", re.escape(path)) + "$"), path) for path in paths]
        app.state.route_templates = templates
    return next((path for pattern, path in templates if pattern.match(scope["path"])), "unmatched")
