"""The web dashboard's reads (producer/ui): one batch's jobs per deployment and its failures by reason,
jobs finished and money spent since a time.

Each is one GROUP BY or aggregate the database does on an index: a batch's rows through
`(batch_id, status)` (a 100,000-job batch's page reads its succeeded or failed jobs only, never the
whole table), a tenant's through `(tenant, finished_at)` and the ledger's `(tenant, user_id,
created_at)` and `(batch_id)`. Counts per status come with the batch (`Batches.get`), not from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select

from storage.jobs import JobStatus
from storage.sql.schema import jobs, ledger
from storage.sql.store import Store

__all__ = [
    "BatchDeployment",
    "BatchFailure",
    "batch_deployments",
    "batch_failures",
    "finished_since",
    "spent_since",
]


@dataclass(frozen=True, slots=True)
class BatchDeployment:
    """The batch's succeeded jobs that one deployment answered."""

    deployment: str
    jobs: int
    cost_usd: Decimal  # what those jobs' answering runs cost
    avg_latency_ms: float | None
    max_latency_ms: float | None
    failovers: int


@dataclass(frozen=True, slots=True)
class BatchFailure:
    """The batch's jobs that ended without an answer for one reason (`FailureCode`)."""

    reason: str
    jobs: int
    example: str  # one of their messages


async def batch_deployments(store: Store, batch_id: str) -> list[BatchDeployment]:
    """Per deployment that answered some of the batch's jobs: how many, their cost and latency;
    most jobs first."""
    query = (
        select(
            jobs.c.deployment,
            func.count(),
            func.coalesce(func.sum(jobs.c.cost_usd), 0),
            func.avg(jobs.c.latency_ms),
            func.max(jobs.c.latency_ms),
            func.coalesce(func.sum(jobs.c.failovers), 0),
        )
        .where((jobs.c.batch_id == batch_id) & (jobs.c.status == JobStatus.SUCCEEDED.value))
        .group_by(jobs.c.deployment)
    )
    async with store.reading() as conn:
        rows = (await conn.execute(query)).all()
    found = [
        BatchDeployment(
            deployment=name or "-",
            jobs=int(n),
            cost_usd=Decimal(cost),
            avg_latency_ms=None if avg is None else float(avg),
            max_latency_ms=None if top is None else float(top),
            failovers=int(failovers),
        )
        for name, n, cost, avg, top, failovers in rows
    ]
    return sorted(found, key=lambda row: (-row.jobs, row.deployment))


async def batch_failures(store: Store, batch_id: str) -> list[BatchFailure]:
    """The batch's failed and cancelled jobs grouped by their failure code, most first."""
    reason = jobs.c.error["type"].as_string()
    query = (
        select(reason, func.count(), func.max(jobs.c.error["message"].as_string()))
        .where(
            (jobs.c.batch_id == batch_id)
            & jobs.c.status.in_([JobStatus.FAILED.value, JobStatus.CANCELLED.value])
        )
        .group_by(reason)
    )
    async with store.reading() as conn:
        rows = (await conn.execute(query)).all()
    found = [BatchFailure(code or "unknown", int(n), example or "") for code, n, example in rows]
    return sorted(found, key=lambda row: (-row.jobs, row.reason))


async def finished_since(store: Store, tenant: str, since: datetime) -> int:
    """How many of the tenant's jobs finished at or after `since` (any outcome)."""
    query = select(func.count()).where((jobs.c.tenant == tenant) & (jobs.c.finished_at >= since))
    async with store.reading() as conn:
        return int((await conn.execute(query)).scalar_one())


async def spent_since(store: Store, tenant: str, since: datetime) -> Decimal:
    """Every ledger charge of the tenant at or after `since`, estimated ones included."""
    query = select(func.coalesce(func.sum(ledger.c.cost_usd), 0)).where(
        (ledger.c.tenant == tenant) & (ledger.c.created_at >= since)
    )
    async with store.reading() as conn:
        return Decimal((await conn.execute(query)).scalar_one())
