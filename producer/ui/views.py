"""What each dashboard page shows, gathered from the same reads the API and the CLI use.

Nothing here reads more than a page. A batch's page takes its figures from `summaries` (computed
from SQL, kept in Redis once the batch ended) and its jobs a page at a time by position (keyset,
`Jobs.page`). The live stream, which asks every second, takes the counts from the batch's progress
counters in Redis (`routeq:progress:<id>`, SQL's when Redis has lost them) and the cost from its
budget scope.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from producer.api.auth import Principal
from producer.api.batches import batch_object, batch_status
from producer.api.context import ApiContext
from producer.api.ops import provider_views
from producer.ui import charts
from producer.ui.summaries import batch_cost, batch_summary
from storage.bus.events import EventBus
from storage.bus.registry import WorkerEntry, queue_stats, registered_workers
from storage.fleet.budgets import BudgetPeriod, ScopeUsage, readable_scope, tenant_scope, user_scope
from storage.jobs import BatchRecord, JobRecord, JobStatus
from storage.keys import key_part
from storage.sql.dashboard import (
    BatchDeployment,
    BatchFailure,
    finished_per_minute,
    finished_since,
    spent_since,
)

__all__ = [
    "ENDED",
    "BatchPage",
    "batch_counted",
    "batch_figures",
    "batch_page",
    "batch_snapshot",
    "budget_rows",
    "counted",
    "overview",
    "providers",
    "workers",
]

# A batch in one of these states changes no more: its live stream ends, its cancel form goes.
ENDED = frozenset({"completed", "failed", "cancelled", "expired"})
JOBS_PER_PAGE = 50
_RATE_WINDOW_S = 60  # jobs per second: over the last minute
_TREND_MINUTES = 30  # and its sparkline: per minute, over the last half hour


def batch_snapshot(batch: BatchRecord, cost: Decimal) -> dict[str, Any]:
    """The figures a batch's page shows and its live stream sends: the status word and counts as
    GET /v1/batches/{id} says them, progress and cost."""
    counts = batch_object(batch)["request_counts"]
    status = batch_status(batch)
    return {
        "id": batch.id,
        "status": status,
        "total": counts["total"],
        "completed": counts["completed"],
        "failed": counts["failed"],
        "done": batch.done,
        "jobs": batch.total,
        "cost_usd": float(cost),
        "cancellable": batch.done < batch.total and batch.cancelled_at is None,
        "ended": status in ENDED,
    }


@dataclass(frozen=True, slots=True)
class BatchPage:
    batch: BatchRecord
    figures: dict[str, Any]
    deployments: list[BatchDeployment]
    failures: list[BatchFailure]
    jobs: list[JobRecord]
    next_after: int | None  # the `after` of the next page of jobs, if there is one


async def batch_counted(ctx: ApiContext, principal: Principal, batch_id: str) -> BatchRecord:
    """The principal's batch with its counts (`counted`). Raises `NotFoundError` for another
    tenant's batch."""
    batch = await ctx.store.batches.row(batch_id, tenant=principal.tenant)
    return (await counted(ctx, [batch]))[0]


async def counted(ctx: ApiContext, found: list[BatchRecord]) -> list[BatchRecord]:
    """Batches read without counts, with them: from each one's progress counters in Redis while they
    hold its total, else from SQL (an ended batch's from its figures, computed once and kept)."""
    bus = EventBus(ctx.redis, retention_s=ctx.settings.event_retention_s)
    progress = await asyncio.gather(*(bus.counts(batch.id) for batch in found))
    out = []
    for batch, known in zip(found, progress, strict=True):
        if batch.completed_at is not None and known.total != batch.total:  # counters expired
            out.append(replace(batch, counts=(await batch_summary(ctx, batch)).counts))  # kept once read
            continue
        if batch.submitting or known.total != batch.total:  # lost, or not all in yet
            out.append(await ctx.store.batches.get(batch.id, tenant=batch.tenant))
            continue
        counts = {
            JobStatus.SUCCEEDED: known.succeeded,
            JobStatus.FAILED: known.failed,
            JobStatus.CANCELLED: known.cancelled,
        }
        out.append(replace(batch, counts=counts))
    return out


async def batch_figures(ctx: ApiContext, principal: Principal, batch_id: str) -> dict[str, Any]:
    """The batch's live snapshot (`batch_snapshot`)."""
    batch = await batch_counted(ctx, principal, batch_id)
    return batch_snapshot(batch, await batch_cost(ctx, batch_id))


async def batch_page(ctx: ApiContext, principal: Principal, batch_id: str, after: int) -> BatchPage:
    """Everything the batch page shows. Raises `NotFoundError` for another tenant's batch."""
    batch = await ctx.store.batches.row(batch_id, tenant=principal.tenant)
    summary = await batch_summary(ctx, batch)
    batch = replace(batch, counts=summary.counts)
    page = await ctx.store.jobs.page(
        batch_id, tenant=principal.tenant, after_seq=after, limit=JOBS_PER_PAGE + 1
    )
    more = len(page) > JOBS_PER_PAGE
    page = page[:JOBS_PER_PAGE]
    return BatchPage(
        batch=batch,
        figures=batch_snapshot(batch, summary.cost_usd),
        deployments=summary.deployments,
        failures=summary.failures,
        jobs=page,
        next_after=page[-1].seq if more and page else None,
    )


async def overview(ctx: ApiContext, principal: Principal) -> dict[str, Any]:
    """The fleet at a glance: queue, workers, throughput, calls in flight, today's spend, circuits."""
    now = time.time()
    settings = ctx.settings
    queue = await queue_stats(ctx.redis, settings.queue_name, now_ms=int(now * 1000))
    registered = await registered_workers(ctx.redis)
    live = [w for w in registered if w.is_live(job_lease_s=settings.job_lease_s, now=now)]
    utc_now = datetime.now(UTC)
    finished = await finished_since(ctx.store, principal.tenant, utc_now - timedelta(seconds=_RATE_WINDOW_S))
    this_minute = int(utc_now.timestamp()) // 60
    first = this_minute - _TREND_MINUTES + 1
    per_minute = await finished_per_minute(
        ctx.store, principal.tenant, datetime.fromtimestamp(first * 60, UTC)
    )
    midnight = utc_now.replace(hour=0, minute=0, second=0, microsecond=0)
    rows = await providers(ctx)
    return {
        "queue": queue,
        "workers": len(live),
        "running": sum(w.running for w in live),
        "jobs_per_s": finished / _RATE_WINDOW_S,
        "trend": charts.sparkline([per_minute.get(m, 0) / 60 for m in range(first, this_minute + 1)]),
        "in_flight": sum(row["in_flight"] for row in rows),
        "spend_today": await spent_since(ctx.store, principal.tenant, midnight),
        "providers": rows,
        "recent": await counted(
            ctx, await ctx.store.batches.list(tenant=principal.tenant, limit=5, counts=False)
        ),
    }


async def providers(ctx: ApiContext) -> list[dict[str, Any]]:
    """Every deployment as GET /v1/providers shows it, with the circuit word the page prints."""
    rows = []
    for view in await provider_views(ctx):
        view["circuit_shown"] = f"forced {view['forced']}" if view["forced"] else view["circuit"]
        limits = view["rate_limits"]
        view["rpm_use"] = limits["requests_in_window"] / limits["rpm"] if limits["rpm"] else None
        view["tpm_use"] = limits["tokens_in_window"] / limits["tpm"] if limits["tpm"] else None
        rows.append(view)
    return rows


async def budget_rows(ctx: ApiContext, principal: Principal) -> list[tuple[str, ScopeUsage]]:
    """The principal's tenant and user scopes and every cap it may see (an operator: all of them),
    lifetime and daily / weekly / monthly (spend in the current period), as (readable scope, usage)."""
    mine = [tenant_scope(principal.tenant), user_scope(principal.tenant, principal.user)]
    name = key_part(principal.tenant)
    rows = [u for u in await ctx.budgets.every_cap_usage() if principal.operator or _owned(u.scope, name)]
    for scope in mine:  # their lifetime spend, capped or not
        if not any(u.scope == scope and u.period is BudgetPeriod.LIFETIME for u in rows):
            rows.append(await ctx.budgets.usage(scope))
    periods = list(BudgetPeriod)
    rows.sort(key=lambda u: (u.scope not in mine, u.scope, periods.index(u.period)))
    return [(readable_scope(u.scope), u) for u in rows]


def _owned(scope: str, tenant_part: str) -> bool:
    """Whether a scope is the tenant's (`tenant:<t>`, or a user, end user or evaluation scope of it);
    `tenant_part` is the tenant's name as a key part (`keys.key_part`), as scopes hold it."""
    kind, _, rest = scope.partition(":")
    return kind in {"user", "end_user", "eval", "tenant"} and rest.partition("/")[0] == tenant_part


async def workers(ctx: ApiContext) -> tuple[list[WorkerEntry], float]:
    """Every registered worker (stale ones too: the page marks them) and the time they were read."""
    return await registered_workers(ctx.redis), time.time()
