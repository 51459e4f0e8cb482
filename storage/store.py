"""The SQL store: batches and jobs in, results, attempts and the cost ledger out.

Every write goes through the group committer (`storage/group_commit.py`): writes of concurrent
jobs share a transaction, and each write begins with a write statement (SQLite then takes its lock
up front and never has to upgrade a read lock). `finish_job` writes the result, the attempts and
the ledger together; inserts use ON CONFLICT DO NOTHING against the unique (job_id, run,
attempt_no) keys, so replaying a run is harmless and no charge is ever recorded twice.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Insert, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from router_core.models import Attempt, AttemptOutcome, ChatRequest, CompletionResult
from storage._rows import (
    OUTCOME_COLUMNS,
    JobFailure,
    attempt_row,
    billed_calls,
    ledger_row,
    money,
    outcome_values,
    run_rows,
)
from storage.db import connect_database, is_single_connection
from storage.errors import NotFoundError
from storage.group_commit import GroupCommitter
from storage.records import (
    BatchRecord,
    BatchSummary,
    DeploymentSummary,
    JobRecord,
    StartedJob,
    aware,
)
from storage.tables import JobStatus, attempts, batches, files, jobs, ledger

__all__ = [
    "IN_DOUBT",
    "ApiBatch",
    "BatchLimits",
    "CreatedBatch",
    "InDoubtCall",
    "JobFailure",
    "NewJob",
    "Store",
    "new_id",
]

_RUNNABLE_VALUES = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
_PAGE = 500

# Statements built once: per-job writes then skip SQLAlchemy's statement construction and coercion.
# (Bind names carry a b_ prefix: SQLAlchemy reserves column names for the SET clause.)
_START_JOB = (
    update(jobs)
    .where((jobs.c.id == bindparam("b_id")) & jobs.c.status.in_(_RUNNABLE_VALUES))
    .values(
        status=JobStatus.RUNNING.value,
        run=bindparam("b_run"),
        starts=jobs.c.starts + 1,
        worker=bindparam("b_worker"),
        started_at=bindparam("b_now"),
    )
    .returning(
        jobs.c.id,
        jobs.c.batch_id,
        jobs.c.custom_id,
        jobs.c.tenant,
        jobs.c.user_id,
        jobs.c.request,
        jobs.c.starts,
        jobs.c.stream,
    )
)
_FINISH_JOB = (
    update(jobs)
    .where((jobs.c.id == bindparam("b_id")) & jobs.c.status.in_(_RUNNABLE_VALUES))
    .values({name: bindparam(name, type_=jobs.c[name].type) for name in OUTCOME_COLUMNS})
)


def new_id(prefix: str) -> str:
    """A random id such as `job_3f9c...`: 96 random bits, unguessable across tenants."""
    return f"{prefix}_{secrets.token_hex(12)}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class NewJob:
    custom_id: str
    request: ChatRequest
    stream: bool = False  # relay the completion's text through Redis as it is generated


@dataclass(frozen=True, slots=True)
class ApiBatch:
    """What a batch made through the OpenAI Batch API (`POST /v1/batches`) also records."""

    endpoint: str
    input_file_id: str
    completion_window: str
    expires_at: datetime
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What a worker checks before running a batch's job: its own cap, and when it expires."""

    budget_usd: float | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CreatedBatch:
    batch_id: str
    job_ids: list[str]


# attempts.outcome of a call whose run died before recording it (see `Store.record_in_doubt`).
IN_DOUBT = "in_doubt"


@dataclass(frozen=True, slots=True)
class InDoubtCall:
    """A call a dead run reserved budget for and may have made: charged at the amount held."""

    run: int
    attempt_no: int
    deployment: str
    provider: str
    model: str
    cost_usd: float
    simulated: bool


class Store:
    """Async access to routeq's SQL tables. Open with `Store.open(url)`, close with `close()`."""

    def __init__(self, engine: AsyncEngine, *, now: Callable[[], datetime] = _utcnow) -> None:
        self.engine = engine
        self._now = now
        # Every write goes through one group committer: concurrent jobs share transactions, and on
        # SQLite this process is then a single writer instead of many waiting on its lock.
        # In-memory SQLite has one shared connection: reads and write groups then take turns.
        self._turns: asyncio.Lock | None = asyncio.Lock() if is_single_connection(engine) else None
        self.writes = GroupCommitter(engine, lock=self._turns)
        self._insert_attempts = self._insert_ignoring_duplicates(attempts)
        self._insert_ledger = self._insert_ignoring_duplicates(ledger)

    @classmethod
    async def open(cls, url: str, *, run_migrations: bool = True) -> Store:
        """Connect (raising `ServiceUnavailableError` with the URL) and migrate to the newest schema."""
        return cls(await connect_database(url, run_migrations=run_migrations))

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        async with self._turns or nullcontext(), self.engine.connect() as conn:
            yield conn

    def reading(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for reads (it waits its turn on an in-memory SQLite's one connection)."""
        return self._reading()

    async def close(self) -> None:
        await self.writes.close()
        await self.engine.dispose()

    async def _insert_calls(
        self, conn: AsyncConnection, attempt_rows: list[dict[str, Any]], ledger_rows: list[dict[str, Any]]
    ) -> None:
        """Insert a run's attempts and charges; rows already there (same job, run, attempt_no) stay."""
        if attempt_rows:
            await conn.execute(self._insert_attempts, attempt_rows)
        if ledger_rows:
            await conn.execute(self._insert_ledger, ledger_rows)

    def _insert_ignoring_duplicates(self, table: Table) -> Insert:
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    # -- producer side ---------------------------------------------------------------------------

    async def create_batch(
        self,
        items: Sequence[NewJob],
        *,
        tenant: str,
        user_id: str,
        kind: str = "batch",
        name: str | None = None,
        invalid_lines: Sequence[dict[str, Any]] = (),
        budget_usd: float | None = None,
        api: ApiBatch | None = None,
    ) -> CreatedBatch:
        """Insert a batch and all its jobs (status `queued`) in one transaction.

        A batch made through the OpenAI Batch API (`api`) also gets its output and error files:
        rows in `files` whose content is generated from the jobs when read.
        """
        now = self._now()
        batch_id = new_id("batch")
        rows: list[dict[str, Any]] = [
            {
                "id": new_id("job"),
                "batch_id": batch_id,
                "seq": seq,
                "custom_id": item.custom_id,
                "tenant": tenant,
                "user_id": user_id,
                "request": item.request.model_dump(mode="json", exclude_defaults=True),
                "stream": item.stream,
                "status": JobStatus.QUEUED.value,
                "run": 0,
                "created_at": now,
            }
            for seq, item in enumerate(items)
        ]
        batch_row = {
            "id": batch_id,
            "kind": kind,
            "tenant": tenant,
            "user_id": user_id,
            "name": name,
            "total": len(rows),
            "invalid_lines": list(invalid_lines),
            "budget_usd": None if budget_usd is None else money(budget_usd),
            "created_at": now,
            "completed_at": now if not rows else None,
        }
        file_rows = [] if api is None else _api_batch_files(api, batch_row, now)

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(batches.insert(), batch_row)
            if rows:
                await conn.execute(jobs.insert(), rows)
            if file_rows:
                await conn.execute(files.insert(), file_rows)

        await self.writes.run(write)
        return CreatedBatch(batch_id, [row["id"] for row in rows])

    async def cancel(self, batch_id: str, job_id: str | None = None) -> list[JobRecord]:
        """Cancel the batch's queued jobs (or one of them); running ones finish. Returns those cancelled."""
        now = self._now()
        condition = (jobs.c.batch_id == batch_id) & (jobs.c.status == JobStatus.QUEUED.value)
        if job_id is not None:
            condition &= jobs.c.id == job_id
        error = {"type": "Cancelled", "message": "cancelled before it started"}

        async def write(conn: AsyncConnection) -> list[JobRecord]:
            result = await conn.execute(
                update(jobs)
                .where(condition)
                .values(status=JobStatus.CANCELLED.value, finished_at=now, error=error)
                .returning(*jobs.c)
            )
            cancelled = [JobRecord.from_row(row._mapping) for row in result]
            if job_id is None:
                await conn.execute(
                    update(batches)
                    .where((batches.c.id == batch_id) & batches.c.cancelled_at.is_(None))
                    .values(cancelled_at=now)
                )
            return cancelled

        return await self.writes.run(write)

    # -- worker side -----------------------------------------------------------------------------

    async def start_job(self, job_id: str, *, run: int, worker: str) -> StartedJob | JobRecord:
        """Move a queued (or re-delivered running) job to `running` for arq try `run`.

        Returns the `StartedJob` to route, or the job's record when it must not run: cancelled or
        already finished (a redelivery after the result was committed).

        Raises:
            NotFoundError: no such job.
        """
        params = {"b_id": job_id, "b_run": run, "b_worker": worker, "b_now": self._now()}

        async def write(conn: AsyncConnection) -> Any:
            return (await conn.execute(_START_JOB, params)).first()

        row = await self.writes.run(write)
        if row is not None:
            return StartedJob(**row._mapping)
        return await self.get_job(job_id)

    async def finish_job(
        self,
        job: StartedJob,
        *,
        run: int,
        attempts_made: Sequence[Attempt],
        result: CompletionResult | None,
        failure: JobFailure | None = None,
    ) -> bool:
        """Record a run's attempts and ledger charges, and its outcome if the job is still open.

        One transaction. Returns True when this run set the job's final status, False when another
        run (a concurrent redelivery) had already finished it; its attempts and charges are recorded
        either way, because the provider billed them either way.
        """
        now = self._now()
        billed = billed_calls(attempts_made)
        outcome = {"b_id": job.id, **outcome_values(attempts_made, result, failure, billed, now)}
        calls = run_rows(job, run, attempts_made, billed, now)

        async def write(conn: AsyncConnection) -> bool:
            applied = await conn.execute(_FINISH_JOB, outcome)
            await self._insert_calls(conn, *calls)
            return applied.rowcount == 1

        return await self.writes.run(write)

    async def defer_job(self, job: StartedJob, *, run: int, attempts_made: Sequence[Attempt]) -> None:
        """Put a started job back to `queued` to wait for capacity, keeping what its run did.

        The run's attempts and charges are recorded like `finish_job` does. A run that made no call
        gives its start back: waiting for room is not a crash, so it must not count toward max_tries.
        """
        calls = run_rows(job, run, attempts_made, billed_calls(attempts_made), self._now())
        starts = jobs.c.starts if attempts_made else jobs.c.starts - 1
        reopen = (
            update(jobs)
            .where((jobs.c.id == job.id) & (jobs.c.status == JobStatus.RUNNING.value))
            .values(status=JobStatus.QUEUED.value, starts=starts, worker=None)
        )

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(reopen)
            await self._insert_calls(conn, *calls)

        await self.writes.run(write)

    async def record_in_doubt(self, job: StartedJob, calls: Sequence[InDoubtCall]) -> None:
        """Record calls a dead run held budget for but never recorded: an attempt and an estimated charge.

        The run died between reserving and committing, so whether the provider billed the call is
        unknown; it is charged at the worst case that was held (`ledger.estimated`). A call the
        dead run did record keeps its row: the inserts skip existing (job, run, attempt_no) keys.
        """
        now = self._now()
        lost = [
            (
                c,
                Attempt(
                    deployment=c.deployment,
                    provider=c.provider,
                    model=c.model,
                    outcome=AttemptOutcome.ERROR,
                    error_class="WorkerLost",
                    error="the worker running this call stopped before recording its answer",
                    cost_usd=c.cost_usd,
                    simulated=c.simulated,
                ),
            )
            for c in calls
        ]
        attempt_rows = [
            attempt_row(job.id, c.run, c.attempt_no, a, now) | {"outcome": IN_DOUBT} for c, a in lost
        ]
        ledger_rows = [ledger_row(job, c.run, c.attempt_no, a, now) | {"estimated": True} for c, a in lost]

        async def write(conn: AsyncConnection) -> None:
            await self._insert_calls(conn, attempt_rows, ledger_rows)

        await self.writes.run(write)

    async def ledger_costs(self, job_id: str) -> dict[str, Decimal]:
        """The job's charges as `{"<run>:<attempt_no>": cost}` (the keys of its budget holds)."""
        query = select(ledger.c.run, ledger.c.attempt_no, ledger.c.cost_usd).where(ledger.c.job_id == job_id)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return {f"{run}:{number}": Decimal(cost) for run, number, cost in rows}

    async def batch_limits(self, batch_id: str) -> BatchLimits:
        """The batch's own spend cap and expiry, if it has them."""
        query = select(batches.c.budget_usd, batches.c.expires_at).where(batches.c.id == batch_id)
        async with self._reading() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return BatchLimits()
        cap, expires = row
        return BatchLimits(None if cap is None else float(cap), aware(expires))

    async def mark_batch_completed(self, batch_id: str) -> None:
        now = self._now()

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(
                update(batches)
                .where((batches.c.id == batch_id) & batches.c.completed_at.is_(None))
                .values(completed_at=now)
            )

        await self.writes.run(write)

    # -- reads -----------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobRecord:
        async with self._reading() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        if row is None:
            raise NotFoundError("job", job_id)
        return JobRecord.from_row(row._mapping)

    async def get_batch(self, batch_id: str) -> BatchRecord:
        async with self._reading() as conn:
            row = (await conn.execute(select(batches).where(batches.c.id == batch_id))).first()
            if row is None:
                raise NotFoundError("batch", batch_id)
            counts = await _status_counts(conn, batch_id)
        return BatchRecord.from_row(row._mapping, counts)

    async def list_batches(
        self, *, tenant: str, after: str | None = None, limit: int = 20
    ) -> list[BatchRecord]:
        """The tenant's batches, newest first; `after` is the last id of the previous page."""
        query = select(batches).where(batches.c.tenant == tenant)
        if after is not None:
            async with self._reading() as conn:
                cursor = (
                    await conn.execute(
                        select(batches.c.created_at, batches.c.id).where(
                            (batches.c.id == after) & (batches.c.tenant == tenant)
                        )
                    )
                ).first()
            if cursor is None:
                raise NotFoundError("batch", after)
            query = query.where(
                (batches.c.created_at < cursor.created_at)
                | ((batches.c.created_at == cursor.created_at) & (batches.c.id < cursor.id))
            )
        query = query.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
            return [BatchRecord.from_row(row._mapping, await _status_counts(conn, row.id)) for row in rows]

    async def iter_jobs(self, batch_id: str, *, terminal_only: bool = False) -> AsyncIterator[JobRecord]:
        """The batch's jobs in input order, read a page at a time."""
        after = -1
        while True:
            query = select(jobs).where((jobs.c.batch_id == batch_id) & (jobs.c.seq > after))
            if terminal_only:
                query = query.where(jobs.c.status.not_in(_RUNNABLE_VALUES))
            async with self._reading() as conn:
                rows = (await conn.execute(query.order_by(jobs.c.seq).limit(_PAGE))).all()
            for row in rows:
                yield JobRecord.from_row(row._mapping)
            if len(rows) < _PAGE:
                return
            after = rows[-1].seq

    async def page_jobs(
        self, batch_id: str, *, after_seq: int = -1, limit: int = 100, status: JobStatus | None = None
    ) -> list[JobRecord]:
        """Up to `limit` of the batch's jobs after position `after_seq`, in input order."""
        query = select(jobs).where((jobs.c.batch_id == batch_id) & (jobs.c.seq > after_seq))
        if status is not None:
            query = query.where(jobs.c.status == status.value)
        async with self._reading() as conn:
            rows = (await conn.execute(query.order_by(jobs.c.seq).limit(limit))).all()
        return [JobRecord.from_row(row._mapping) for row in rows]

    async def job_attempts(self, job_id: str) -> list[dict[str, Any]]:
        async with self._reading() as conn:
            rows = await conn.execute(
                select(attempts)
                .where(attempts.c.job_id == job_id)
                .order_by(attempts.c.run, attempts.c.attempt_no)
            )
            return [dict(row._mapping) for row in rows]

    async def ledger_rows(
        self, *, batch_id: str | None = None, job_id: str | None = None
    ) -> list[dict[str, Any]]:
        query = select(ledger).order_by(ledger.c.id)
        if batch_id is not None:
            query = query.where(ledger.c.batch_id == batch_id)
        if job_id is not None:
            query = query.where(ledger.c.job_id == job_id)
        async with self._reading() as conn:
            return [dict(row._mapping) for row in await conn.execute(query)]

    async def batch_summary(self, batch_id: str) -> BatchSummary:
        """Per-deployment jobs, cost, latency percentiles and failovers, for succeeded jobs."""
        per_deployment: dict[str, list[tuple[float, Decimal, int]]] = {}
        statuses: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        async for job in self.iter_jobs(batch_id):
            statuses[job.status] += 1
            if job.status == JobStatus.SUCCEEDED and job.deployment is not None:
                per_deployment.setdefault(job.deployment, []).append(
                    (job.latency_ms or 0.0, job.cost_usd or Decimal(0), job.failovers or 0)
                )
            elif job.status == JobStatus.FAILED and job.error is not None:
                reasons[str(job.error.get("type", "Error"))] += 1
        async with self._reading() as conn:
            billed, calls = (
                await conn.execute(
                    select(func.coalesce(func.sum(ledger.c.cost_usd), 0), func.count()).where(
                        ledger.c.batch_id == batch_id
                    )
                )
            ).one()
        rows = [
            DeploymentSummary(
                deployment=name,
                jobs=len(entries),
                cost_usd=sum((cost for _, cost, _ in entries), Decimal(0)),
                p50_latency_ms=_percentile([lat for lat, _, _ in entries], 0.50),
                p95_latency_ms=_percentile([lat for lat, _, _ in entries], 0.95),
                failovers=sum(f for _, _, f in entries),
            )
            for name, entries in per_deployment.items()
        ]
        rows.sort(key=lambda r: (-r.jobs, r.deployment))
        return BatchSummary(
            deployments=rows,
            succeeded=statuses[JobStatus.SUCCEEDED],
            failed=statuses[JobStatus.FAILED],
            cancelled=statuses[JobStatus.CANCELLED],
            failovers=sum(r.failovers for r in rows),
            billed_usd=Decimal(billed),
            provider_calls=int(calls),
            failure_reasons=dict(reasons),
        )


async def _status_counts(conn: AsyncConnection, batch_id: str) -> dict[JobStatus, int]:
    rows = await conn.execute(
        select(jobs.c.status, func.count()).where(jobs.c.batch_id == batch_id).group_by(jobs.c.status)
    )
    return {JobStatus(status): int(n) for status, n in rows.all()}


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))  # round() would round halves to even: one rank high
    return ordered[min(rank, len(ordered)) - 1]


def _api_batch_files(api: ApiBatch, batch_row: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """Fill the batch row's OpenAI fields; return the rows of its output and error files."""
    batch_row.update(
        endpoint=api.endpoint,
        input_file_id=api.input_file_id,
        completion_window=api.completion_window,
        expires_at=api.expires_at,
        metadata=api.metadata,
        output_file_id=new_id("file"),
        error_file_id=new_id("file"),
    )
    owner = {"tenant": batch_row["tenant"], "user_id": batch_row["user_id"], "created_at": now}
    return [
        {
            **owner,
            "id": batch_row[f"{kind}_file_id"],
            "purpose": f"batch_{kind}",
            "filename": f"{batch_row['id']}_{kind}.jsonl",
            "bytes": 0,
            "content": None,
            "batch_id": batch_row["id"],
        }
        for kind in ("output", "error")
    ]
