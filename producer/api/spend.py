"""`GET /v1/spend`: what each user, API key or batch spent, from the SQL ledger.

Rows are `{group, tenant, cost_usd, requests, tokens}`, most cost first, paged by `limit` and
`offset`. The window is `since`/`until`, or `period` (`today`, `week`, `month`: the current one,
from local midnight in ROUTEQ_BUDGET_TIMEZONE, as budget periods start), or by default the current
month. A key reads its own tenant; an operator key may name another (`tenant`) or every tenant
(`all_tenants=true`).
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from producer.api.auth import Caller, TenantParam, tenant_or_all
from producer.api.context import Ctx
from producer.api.errors import ApiError
from router_core.periods import BudgetPeriod, period_bounds
from storage.sql.spend import SpendGroup, spend_by

__all__ = ["router"]

router = APIRouter(tags=["Operations"])

_PERIODS = {"today": BudgetPeriod.DAILY, "week": BudgetPeriod.WEEKLY, "month": BudgetPeriod.MONTHLY}


@router.get("/v1/spend", summary="Spend per user, API key or batch, from the SQL ledger")
async def spend(
    principal: Caller,
    ctx: Ctx,
    *,
    group_by: Annotated[
        SpendGroup,
        Query(description="`user` (who submitted), `key` (the API key that did; null: no key) or `batch`."),
    ],
    period: Annotated[
        Literal["today", "week", "month"] | None,
        Query(description="The current day, week (from Monday) or month, in ROUTEQ_BUDGET_TIMEZONE."),
    ] = None,
    since: Annotated[datetime | None, Query(description="Window start (instead of `period`).")] = None,
    until: Annotated[datetime | None, Query(description="Window end, excluded (default: now).")] = None,
    tenant: TenantParam = None,
    all_tenants: Annotated[bool, Query(description="Every tenant's spend (operator keys only).")] = False,
    limit: Annotated[int, Query(ge=1, le=1000, description="Rows per page.")] = 100,
    offset: Annotated[int, Query(ge=0, description="Rows to skip (the previous page's `next_offset`).")] = 0,
) -> dict[str, Any]:
    """Charges per group in the window, biggest first; each row's `requests` counts the jobs charged."""
    who = tenant_or_all(principal, tenant, all_tenants)
    start, end = _window(ctx.settings.budget_zone(), period, since, until)
    rows, more = await spend_by(
        ctx.store, group_by, tenant=who, since=start, until=end, limit=limit, offset=offset
    )
    return {
        "object": "list",
        "group_by": group_by.value,
        "tenant": who,
        "since": start.isoformat(),
        "until": end.isoformat(),
        "data": [
            {
                "group": row.group,
                "tenant": row.tenant,
                "cost_usd": float(row.cost_usd),
                "requests": row.requests,
                "tokens": row.tokens,
            }
            for row in rows
        ],
        "has_more": more,
        "next_offset": offset + len(rows) if more else None,
    }


def _window(
    zone: tzinfo, period: str | None, since: datetime | None, until: datetime | None
) -> tuple[datetime, datetime]:
    """`[since, until)` as aware times: the period's start to now, or the given bounds."""
    now = datetime.now(UTC)
    if period is not None and since is not None:
        raise ApiError(400, "give `period` or `since`, not both", param="period")
    try:
        end = _aware(until) if until is not None else now
        if since is not None:
            start = _aware(since)
        else:
            start = period_bounds(_PERIODS[period or "month"], end if until is not None else now, zone)[0]
    except (OverflowError, ValueError):  # a period ending past year 9999
        raise ApiError(400, "since/until: out of the calendar's range", param="since") from None
    if start >= end:
        raise ApiError(400, "since: must be before until", param="since")
    return start, end


def _aware(value: datetime) -> datetime:
    """A time without an offset is taken as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
