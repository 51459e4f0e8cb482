"""A batch's figures on its dashboard page: counts per status, answers per deployment, failures by
reason and cost, computed from SQL and, once the batch has ended, kept in Redis.

A batch that ended changes no more (every job is terminal, every charge in the ledger), so its
figures are computed once and kept under `routeq:ui:batch:<id>` for `UI_BATCH_SUMMARY_TTL_S`: the
page of a finished 100,000-job batch then aggregates nothing. A running batch's are computed on
every view (two GROUP BYs over indexes: storage/sql/dashboard.py), its cost taken from its budget
scope's settled spend in Redis (the ledger's fast copy) when there is one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from producer.api.context import ApiContext
from storage import keys
from storage.connections import as_text
from storage.fleet.budgets import batch_scope
from storage.jobs import BatchRecord, JobStatus
from storage.sql.dashboard import BatchDeployment, BatchFailure, batch_breakdown, batch_failures

__all__ = ["BatchSummary", "batch_cost", "batch_summary"]


@dataclass(frozen=True, slots=True)
class BatchSummary:
    counts: dict[JobStatus, int]
    deployments: list[BatchDeployment]
    failures: list[BatchFailure]
    cost_usd: Decimal

    def to_json(self) -> str:
        return json.dumps(
            {
                "counts": {status.value: n for status, n in self.counts.items()},
                "deployments": [asdict(row) for row in self.deployments],
                "failures": [asdict(row) for row in self.failures],
                "cost_usd": str(self.cost_usd),
            },
            default=str,  # Decimal
        )

    @classmethod
    def from_json(cls, raw: str) -> BatchSummary:
        data: dict[str, Any] = json.loads(raw)
        deployments = [
            BatchDeployment(**{**row, "cost_usd": Decimal(row["cost_usd"])}) for row in data["deployments"]
        ]
        return cls(
            counts={JobStatus(status): int(n) for status, n in data["counts"].items()},
            deployments=deployments,
            failures=[BatchFailure(**row) for row in data["failures"]],
            cost_usd=Decimal(data["cost_usd"]),
        )


async def batch_cost(ctx: ApiContext, batch_id: str) -> Decimal:
    """What the batch's calls cost: its budget scope's settled spend, or the ledger's sum (by its
    batch index) when Redis has no such scope (no call settled yet, or the counters were lost)."""
    scope = batch_scope(batch_id)
    if await ctx.redis.exists(keys.budget(scope)):
        return Decimal(str((await ctx.budgets.usage(scope)).spent_usd))
    billed, _calls = await ctx.store.ledger.billed(batch_id)
    return billed


async def batch_summary(ctx: ApiContext, batch: BatchRecord) -> BatchSummary:
    """The batch's figures (`batch` is its row, read after the caller checked its tenant)."""
    key = keys.ui_batch_summary(batch.id)
    ended = batch.completed_at is not None
    if ended and (raw := await ctx.redis.get(key)) is not None:
        return BatchSummary.from_json(as_text(raw))
    breakdown = await batch_breakdown(ctx.store, batch.id)
    failures = await batch_failures(ctx.store, batch.id)
    if ended:  # final: the ledger's own sum, then kept
        cost, _calls = await ctx.store.ledger.billed(batch.id)
    else:
        cost = await batch_cost(ctx, batch.id)
    summary = BatchSummary(breakdown.counts, breakdown.deployments, failures, cost)
    if ended:
        await ctx.redis.set(key, summary.to_json(), ex=keys.UI_BATCH_SUMMARY_TTL_S)
    return summary
