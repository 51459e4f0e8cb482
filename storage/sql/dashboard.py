"""The web dashboard's reads (producer/ui): one batch's jobs per status and deployment and its failures
by reason, jobs finished and money spent since a time.

Each is one GROUP BY or aggregate the database does on an index: a batch's breakdown through
`ix_jobs_batch_breakdown` (on PostgreSQL the index alone: a 100,000-job batch is one index scan,
its counts and per-deployment table together), its failures through `(batch_id, status)`, a
tenant's jobs through `(tenant, finished_at)` and its charges through the ledger's `(tenant,
user_id, created_at)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Integer, cast, func, select

from storage.jobs import JobStatus
from storage.sql.schema import jobs, ledger
from storage.sql.store import Store

__all__ = [
    "BatchBreakdown",
    "BatchDeployment",
    "BatchFailure",
    "batch_breakdown",
    "batch_failures",
    "finished_per_minute",
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


@dataclass(frozen=True, slots=True)
class BatchBreakdown:
    """A batch's jobs per status, and its succeeded ones per deployment (most jobs first)."""

    counts: dict[JobStatus, int]
    deployments: list[BatchDeployment]


async def batch_breakdown(store: Store, batch_id: str) -> BatchBreakdown:
    """The batch's counts per status and its answers per deployment (how many, their cost and
    latency), from one GROUP BY over `ix_jobs_batch_breakdown`."""
    query = (
        select(
            jobs.c.status,
            jobs.c.deployment,
            func.count(),
            func.coalesce(func.sum(jobs.c.cost_usd), 0),
            func.avg(jobs.c.latency_ms),
            func.max(jobs.c.latency_ms),
            func.coalesce(func.sum(jobs.c.failovers), 0),
        )
        .where(jobs.c.batch_id == batch_id)
        .group_by(jobs.c.status, jobs.c.deployment)
    )
    async with store.reading() as conn:
        rows = (await conn.execute(query)).all()
    counts: dict[JobStatus, int] = {}
    deployments = []
    for status, name, n, cost, avg, top, failovers in rows:
        counts[JobStatus(status)] = counts.get(JobStatus(status), 0) + int(n)
        if status == JobStatus.SUCCEEDED.value:
            deployments.append(
                BatchDeployment(
                    deployment=name or "-",
                    jobs=int(n),
                    cost_usd=Decimal(cost),
                    avg_latency_ms=None if avg is None else float(avg),
                    max_latency_ms=None if top is None else float(top),
                    failovers=int(failovers),
                )
            )
    return BatchBreakdown(counts, sorted(deployments, key=lambda row: (-row.jobs, row.deployment)))


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


async def finished_per_minute(store: Store, tenant: str, since: datetime) -> dict[int, int]:
    """How many of the tenant's jobs finished in each minute since `since`, by the minute's epoch
    number (seconds // 60); minutes with none are absent."""
    async with store.reading() as conn:
        minute: ColumnElement[Any]
        if conn.dialect.name == "postgresql":
            minute = func.floor(func.extract("epoch", jobs.c.finished_at) / 60)
        else:  # SQLite keeps UTC text
            minute = cast(func.strftime("%s", jobs.c.finished_at), Integer) / 60
        query = (
            select(minute.label("minute"), func.count())
            .where((jobs.c.tenant == tenant) & (jobs.c.finished_at >= since))
            .group_by(minute)
        )
        rows = (await conn.execute(query)).all()
    return {int(at): int(n) for at, n in rows}


async def spent_since(store: Store, tenant: str, since: datetime) -> Decimal:
    """Every ledger charge of the tenant at or after `since`, estimated ones included."""
    query = select(func.coalesce(func.sum(ledger.c.cost_usd), 0)).where(
        (ledger.c.tenant == tenant) & (ledger.c.created_at >= since)
    )
    async with store.reading() as conn:
        return Decimal((await conn.execute(query)).scalar_one())
