"""Evaluations in SQL: the answered jobs the eval beat samples, and reference-set runs with their scores.

    answered   succeeded jobs a provider answered (no cache hits), finished after a cursor, oldest
               first (index `ix_jobs_answered`); evaluation jobs themselves (`EVAL_USER`) are left out,
               so routeq never judges its own judges
    save_run   one `routeq eval` run (`eval_runs`) and its scored lines (`eval_results`), one transaction
    results    a run's scored lines, in line order

The scores themselves become quality evidence through `storage.fleet.quality.FleetQuality.record`
(sources "judge" and "reference"); these tables keep what a reference run measured beside them
(cost, latency, the job that answered), for reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select, text

from router_core.models import Capability, Complexity
from storage.jobs import aware, new_id
from storage.sql.database import Database
from storage.sql.runs import money
from storage.sql.schema import ANSWERED_JOBS, eval_results, eval_runs, jobs

__all__ = ["EVAL_USER", "AnsweredJob", "Cursor", "EvalResult", "EvalRun", "Evals", "answered_query"]

EVAL_USER = "routeq-eval"  # spelt out in schema.ANSWERED_JOBS too
"""The user a tenant's evaluation jobs are submitted as (judge calls, reference runs).

`storage.fleet.budgets` bills them to `eval:<tenant>` instead of a user scope, and the eval beat
never samples them. Reserved: give no API key this user name."""

Cursor = tuple[datetime, str]
"""(finished_at, job id) of the last job the eval beat looked at."""

_J = jobs.c
_R = eval_results.c


@dataclass(frozen=True, slots=True)
class AnsweredJob:
    """A succeeded job a provider answered: what a judge needs to grade it."""

    id: str
    tenant: str
    deployment: str
    request: dict[str, Any]
    content: str
    finished_at: datetime

    @property
    def cursor(self) -> Cursor:
        return (self.finished_at, self.id)


@dataclass(frozen=True, slots=True)
class EvalResult:
    """One reference line answered by one deployment, scored (score None: no score, see `error`)."""

    line: int
    deployment: str
    capability: Capability
    complexity: Complexity
    method: str
    score: float | None
    cost_usd: float | None = None
    latency_ms: float | None = None
    job_id: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EvalRun:
    """A row of `eval_runs`."""

    id: str
    tenant: str
    name: str
    judge: str | None
    batch_id: str | None
    deployments: list[str]
    created_at: datetime


def answered_query(after: Cursor | None, limit: int) -> Select[Any]:
    """The eval beat's page of answered jobs after its cursor, on the partial index `ix_jobs_answered`."""
    query = (
        select(_J.id, _J.tenant, _J.deployment, _J.request, _J.result, _J.finished_at)
        # As literal text, the partial index's own condition (see schema.ANSWERED_JOBS).
        .where(text(ANSWERED_JOBS))
        .where(_J.deployment.is_not(None), _J.finished_at.is_not(None))
        .order_by(_J.finished_at, _J.id)
        .limit(limit)
    )
    if after is not None:
        at, job_id = after
        query = query.where(or_(_J.finished_at > at, and_(_J.finished_at == at, _J.id > job_id)))
    return query


class Evals:
    """`store.evals`: what the eval beat samples, and reference-set runs."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def answered(self, *, after: Cursor | None, limit: int) -> list[AnsweredJob]:
        """Up to `limit` answered jobs finished after `after`, by (finished_at, id)."""
        query = answered_query(after, limit)
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        answered = []
        for row in rows:
            finished = aware(row.finished_at)
            assert finished is not None  # filtered above
            result = row.result if isinstance(row.result, dict) else {}
            content = result.get("content")
            answered.append(
                AnsweredJob(
                    row.id,
                    row.tenant,
                    row.deployment,
                    row.request,
                    content if isinstance(content, str) else "",
                    finished,
                )
            )
        return answered

    async def save_run(
        self,
        *,
        tenant: str,
        name: str,
        judge: str | None,
        batch_id: str | None,
        deployments: Sequence[str],
        results: Sequence[EvalResult],
    ) -> str:
        """Record a reference run and its scored lines in one transaction; returns the run's id."""
        run_id = new_id("evalrun")
        run_row = {
            "id": run_id,
            "tenant": tenant,
            "name": name[:255],
            "judge": judge,
            "batch_id": batch_id,
            "deployments": list(deployments),
            "created_at": self._db.now(),
        }
        result_rows = [
            {
                "run_id": run_id,
                "line": r.line,
                "deployment": r.deployment,
                "capability": r.capability.value,
                "complexity": r.complexity.value,
                "method": r.method,
                "score": r.score,
                "cost_usd": None if r.cost_usd is None else money(r.cost_usd),
                "latency_ms": r.latency_ms,
                "job_id": r.job_id,
                "error": r.error,
            }
            for r in results
        ]

        async def write(conn: Any) -> None:
            await conn.execute(eval_runs.insert(), run_row)
            if result_rows:
                await conn.execute(eval_results.insert(), result_rows)

        await self._db.writes.run(write)
        return run_id

    async def run(self, run_id: str) -> EvalRun:
        """One run's row (KeyError if there is none)."""
        async with self._db.reading() as conn:
            row = (await conn.execute(select(eval_runs).where(eval_runs.c.id == run_id))).one_or_none()
        if row is None:
            raise KeyError(run_id)
        created = aware(row.created_at)
        assert created is not None
        return EvalRun(row.id, row.tenant, row.name, row.judge, row.batch_id, list(row.deployments), created)

    async def results(self, run_id: str) -> list[EvalResult]:
        """A run's scored lines, by line then deployment."""
        query = select(eval_results).where(_R.run_id == run_id).order_by(_R.line, _R.id)
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        return [
            EvalResult(
                line=r.line,
                deployment=r.deployment,
                capability=Capability(r.capability),
                complexity=Complexity(r.complexity),
                method=r.method,
                score=r.score,
                cost_usd=None if r.cost_usd is None else float(r.cost_usd),
                latency_ms=r.latency_ms,
                job_id=r.job_id,
                error=r.error,
            )
            for r in rows
        ]
