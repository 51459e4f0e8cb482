"""A job's runs in SQL: start, finish or defer, and the calls of a dead run charged after it.

    start   UPDATE jobs SET status='running', run, starts+1 ... WHERE status IN (queued, running)
            RETURNING what routing needs (no row: cancelled or finished → the job's record)
    finish  ONE transaction: the outcome on `jobs` (if still open: first finisher wins), an
            `attempts` row per call and a `ledger` row per billed call (ON CONFLICT DO NOTHING);
            a job it failed gets its `job.failed` webhook event in the outbox (sql/outbox.py)

Starts and finishes are batched writes (sql/group_commit.py): the jobs a worker starts (or
finishes) while a group commits share one statement per kind in the next group: one UPDATE ...
WHERE id IN (...) RETURNING for their starts; for their finishes one UPDATE that locks the rows
still open (first finisher wins, as before), then one executemany each for the outcomes, attempts,
ledger rows and plans.
    defer   back to `queued` to wait for capacity, keeping the run's attempts and charges
    record_in_doubt   calls a dead run held budget for: an in_doubt attempt and an estimated charge
    hand_back         a stopping worker's unfinished jobs back to `queued` (`routeq run` on Ctrl-C)

Attempts and ledger rows are keyed by (job_id, run, attempt_no), so replaying a run adds nothing:
the unique constraint, not a prior SELECT, keeps the ledger exactly-once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, bindparam, update

from router_core.models import Attempt, AttemptOutcome, CompletionResult, deployment_switches
from storage.jobs import (
    ANY_TENANT,
    SINGLE,
    FailureCode,
    InDoubtCall,
    JobFailure,
    JobRecord,
    JobStatus,
    StartedJob,
)
from storage.sql.cache import CacheRecord
from storage.sql.database import Database
from storage.sql.jobs import Jobs
from storage.sql.outbox import job_failed
from storage.sql.schema import attempts, batches, job_plans, jobs, ledger

__all__ = ["IN_DOUBT", "Runs", "money"]

_RUNNABLE_VALUES = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
# attempts.outcome of a call whose run died before recording it (see `Runs.record_in_doubt`).
IN_DOUBT = "in_doubt"

# The columns a run's outcome sets on its job.
OUTCOME_COLUMNS = (
    "status",
    "finished_at",
    "attempt_count",
    "cost_usd",
    "deployment",
    "model",
    "latency_ms",
    "failovers",
    "result",
    "error",
    "cache_key",
    "cache_source",
    "cache_similarity",
    "saved_usd",
)


# Statements built once: per-job writes then skip SQLAlchemy's statement construction and coercion.
# (Bind names carry a b_ prefix: SQLAlchemy reserves column names for the SET clause.)
_START_JOBS = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("b_ids", expanding=True)) & jobs.c.status.in_(_RUNNABLE_VALUES))
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
# For the rows `_LOCK_OPEN_JOBS` found open and locked in the same transaction (executemany: no IN).
_FINISH_JOB = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"))
    .values({name: bindparam(name, type_=jobs.c[name].type) for name in OUTCOME_COLUMNS})
)
# Takes the write lock on the jobs of a group of finishes that are still open, and names them: a
# no-op write (SQLite: the database's write lock; PostgreSQL: the rows' locks, until the commit), so
# no other worker can finish them between this and the outcomes written after it.
_LOCK_OPEN_JOBS = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("b_ids", expanding=True)) & jobs.c.status.in_(_RUNNABLE_VALUES))
    .values(status=jobs.c.status)
    .returning(jobs.c.id)
)
# A batch of one is done once its job is: its completion is set in the finish that closes the job,
# not by a write of its own after the publish (`Batches.mark_completed`: a batch of one has no
# webhook event to write with it). `kind` guards it: only a batch of one completes with one job.
# Run as an executemany: each batch completes at its own job's finish time.
_COMPLETE_SINGLE = (
    update(batches)
    .where(
        (batches.c.id == bindparam("b_batch")) & (batches.c.kind == SINGLE) & batches.c.completed_at.is_(None)
    )
    .values(completed_at=bindparam("b_now", type_=batches.c.completed_at.type))
)


@dataclass(frozen=True, slots=True)
class _Start:
    job_id: str
    run: int
    worker: str
    now: datetime


@dataclass(frozen=True, slots=True)
class _Finish:
    job: StartedJob
    run: int
    attempts_made: Sequence[Attempt]
    outcome: dict[str, Any]  # the outcome columns, with b_id
    calls: tuple[list[dict[str, Any]], list[dict[str, Any]]]  # attempt rows, ledger rows
    plan: dict[str, Any] | None  # the job_plans row
    failure: JobFailure | None  # the run ends the job failed with this (no result), else None


class Runs:
    """The worker's writes: one job's run from start to its committed outcome."""

    def __init__(self, db: Database, jobs: Jobs) -> None:
        self._db = db
        self._jobs = jobs
        self._insert_attempts = db.insert_ignoring_duplicates(attempts)
        self._insert_ledger = db.insert_ignoring_duplicates(ledger)
        self._insert_plan = db.insert_ignoring_duplicates(job_plans)

    async def start(self, job_id: str, *, run: int, worker: str) -> StartedJob | JobRecord:
        """Move a queued (or re-delivered running) job to `running` for arq try `run`.

        Returns the `StartedJob` to route, or the job's record when it must not run: cancelled or
        already finished (a redelivery after the result was committed).

        Raises:
            NotFoundError: no such job.
        """
        start = _Start(job_id, run, worker, self._db.now())
        row = await self._db.writes.run_sync_batched(self._start_many, start)
        if row is not None:
            return StartedJob(**row._mapping)
        return await self._jobs.get(job_id, tenant=ANY_TENANT)

    @staticmethod
    def _start_many(conn: Connection, starts: list[_Start]) -> list[Any]:
        """The starts of one group: one UPDATE ... RETURNING per (run, worker) among them."""
        rows: dict[int, Any] = {}
        for group in _passes(starts, lambda s: s.job_id):  # a job twice in a group starts twice
            by_run: dict[tuple[int, str], list[int]] = {}
            for n in group:
                by_run.setdefault((starts[n].run, starts[n].worker), []).append(n)
            for (run, worker), members in by_run.items():
                ids = [starts[n].job_id for n in members]
                params = {"b_ids": ids, "b_run": run, "b_worker": worker, "b_now": starts[members[0]].now}
                found = {row.id: row for row in conn.execute(_START_JOBS, params).all()}
                rows.update((n, found.get(starts[n].job_id)) for n in members)
        return [rows[n] for n in range(len(starts))]

    async def finish(
        self,
        job: StartedJob,
        *,
        run: int,
        attempts_made: Sequence[Attempt],
        result: CompletionResult | None,
        failure: JobFailure | None = None,
        cache: CacheRecord | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a run's attempts and ledger charges, and its outcome if the job is still open.

        One transaction. Returns True when this run set the job's final status, False when another
        run (a concurrent redelivery) had already finished it; its attempts and charges are recorded
        either way, because the provider billed them either way. `cache` is what the job did with
        the response cache (the key its answer is cached under; a hit's source), set with the outcome;
        `plan` the plan the run routed with (`job_plans`, once per run). A job known to be a batch of
        one (`job.single`) completes its batch in the same transaction when it sets its final status.
        """
        now = self._db.now()
        billed = billed_calls(attempts_made)
        outcome = {"b_id": job.id, **outcome_values(attempts_made, result, failure, billed, now, cache=cache)}
        plan_row = None if plan is None else {"job_id": job.id, "run": run, "plan": plan, "created_at": now}
        finish = _Finish(
            job,
            run,
            attempts_made,
            outcome,
            run_rows(job, run, attempts_made, billed, now),
            plan_row,
            failure if result is None else None,
        )
        applied: bool = await self._db.writes.run_sync_batched(self._finish_many, finish)
        return applied

    def _finish_many(self, conn: Connection, finishes: list[_Finish]) -> list[bool]:
        """The finishes of one group: the open jobs locked and named, then one statement per table."""
        applied = [False] * len(finishes)
        for group in _passes(finishes, lambda f: f.job.id):  # a job twice: the second finds it closed
            ids = [finishes[n].job.id for n in group]
            still_open = set(conn.execute(_LOCK_OPEN_JOBS, {"b_ids": ids}).scalars())
            closing = [n for n in group if finishes[n].job.id in still_open]
            if closing:
                conn.execute(_FINISH_JOB, [finishes[n].outcome for n in closing])
            singles = []
            for n in closing:
                applied[n] = True
                finish = finishes[n]
                if finish.failure is not None:
                    self._failed_event(conn, finish, finish.failure)
                if finish.job.single:
                    singles.append({"b_batch": finish.job.batch_id, "b_now": finish.outcome["finished_at"]})
            if singles:
                conn.execute(_COMPLETE_SINGLE, singles)
        attempt_rows = [row for f in finishes for row in f.calls[0]]
        ledger_rows = [row for f in finishes for row in f.calls[1]]
        self._insert_calls(conn, attempt_rows, ledger_rows)
        plans = [f.plan for f in finishes if f.plan is not None]
        if plans:
            conn.execute(self._insert_plan, plans)
        return applied

    @staticmethod
    def _failed_event(conn: Connection, finish: _Finish, failure: JobFailure) -> None:
        """The `job.failed` webhook event of a job this finish failed (in its transaction)."""
        cost = finish.outcome["cost_usd"] or Decimal(0)
        job_failed(
            conn,
            finish.job,
            failure=failure,
            attempts_made=finish.attempts_made,
            cost_usd=cost,
            now=finish.outcome["finished_at"],
        )

    async def defer(self, job: StartedJob, *, run: int, attempts_made: Sequence[Attempt]) -> None:
        """Put a started job back to `queued` to wait for capacity, keeping what its run did.

        The run's attempts and charges are recorded like `finish` does. A run that made no call
        gives its start back: waiting for room is not a crash, so it must not count toward max_tries.
        """
        calls = run_rows(job, run, attempts_made, billed_calls(attempts_made), self._db.now())
        starts = jobs.c.starts if attempts_made else jobs.c.starts - 1
        reopen = (
            update(jobs)
            .where((jobs.c.id == job.id) & (jobs.c.status == JobStatus.RUNNING.value))
            .values(status=JobStatus.QUEUED.value, starts=starts, worker=None)
        )

        def write(conn: Connection) -> None:
            conn.execute(reopen)
            self._insert_calls(conn, *calls)

        await self._db.writes.run_sync(write)

    async def hand_back(self, worker: str) -> int:
        """Put the jobs `worker` started and never finished back to `queued`; returns how many.

        For a worker that stops on purpose with jobs cancelled mid-run (Ctrl-C on `routeq run`): its
        rows would otherwise read `running` until a sweep or `requeue` found them. `starts` is
        kept, so the next run of each job goes through the recovery of a run that did not finish
        (calls it held budget for are charged, an answer it saved is used).
        """
        reopen = (
            update(jobs)
            .where((jobs.c.worker == worker) & (jobs.c.status == JobStatus.RUNNING.value))
            .values(status=JobStatus.QUEUED.value, worker=None)
        )

        def write(conn: Connection) -> int:
            return conn.execute(reopen).rowcount

        return await self._db.writes.run_sync(write)

    async def record_in_doubt(self, job: StartedJob, calls: Sequence[InDoubtCall]) -> None:
        """Record calls a dead run held budget for but never recorded: an attempt and an estimated charge.

        The run died between reserving and committing, so whether the provider billed the call is
        unknown; it is charged at the worst case that was held (`ledger.estimated`). A call the
        dead run did record keeps its row: the inserts skip existing (job, run, attempt_no) keys.
        """
        now = self._db.now()
        lost = [(c, _lost_attempt(c)) for c in calls]
        attempt_rows = [
            attempt_row(job.id, c.run, c.attempt_no, a, now) | {"outcome": IN_DOUBT} for c, a in lost
        ]
        ledger_rows = [ledger_row(job, c.run, c.attempt_no, a, now) | {"estimated": True} for c, a in lost]

        def write(conn: Connection) -> None:
            self._insert_calls(conn, attempt_rows, ledger_rows)

        await self._db.writes.run_sync(write)

    def _insert_calls(
        self, conn: Connection, attempt_rows: list[dict[str, Any]], ledger_rows: list[dict[str, Any]]
    ) -> None:
        """Insert a run's attempts and charges; rows already there (same job, run, attempt_no) stay."""
        if attempt_rows:
            conn.execute(self._insert_attempts, attempt_rows)
        if ledger_rows:
            conn.execute(self._insert_ledger, ledger_rows)


def _passes(items: Sequence[Any], key: Callable[[Any], str]) -> list[list[int]]:
    """Indexes of `items` in passes where no key repeats: the first of each key, then the second..."""
    passes: list[list[int]] = []
    seen: dict[str, int] = {}
    for n, item in enumerate(items):
        k = key(item)
        depth = seen.get(k, 0)
        seen[k] = depth + 1
        if depth == len(passes):
            passes.append([])
        passes[depth].append(n)
    return passes


def _lost_attempt(call: InDoubtCall) -> Attempt:
    return Attempt(
        deployment=call.deployment,
        provider=call.provider,
        model=call.model,
        outcome=AttemptOutcome.ERROR,
        error_class="WorkerLost",
        error="the worker running this call stopped before recording its answer",
        cost_usd=call.cost_usd,
        simulated=call.simulated,
    )


def money(value: float) -> Decimal:
    """A router cost as the NUMERIC(20, 10) the ledger stores."""
    # Router costs are floats from genai-prices' Decimals; 10 decimal places is sub-nano-dollar.
    return Decimal(repr(value)).quantize(Decimal("1e-10"))


def outcome_values(
    attempts_made: Sequence[Attempt],
    result: CompletionResult | None,
    failure: JobFailure | None,
    billed: Sequence[tuple[int, Attempt]],
    now: datetime,
    *,
    cache: CacheRecord | None = None,
) -> dict[str, Any]:
    values: dict[str, Any] = dict.fromkeys(OUTCOME_COLUMNS)
    if cache is not None:
        values.update(
            cache_key=cache.key,
            cache_source=cache.source_job,
            cache_similarity=cache.similarity,
            saved_usd=cache.saved_usd,
        )
    values.update(
        finished_at=now,
        attempt_count=len(attempts_made),
        cost_usd=sum((money(a.cost_usd) for _, a in billed), Decimal(0)),
    )
    if result is not None:
        values.update(
            status=JobStatus.SUCCEEDED.value,
            deployment=result.deployment,
            model=result.model,
            latency_ms=result.latency_ms,
            failovers=result.failovers,
            result=result.model_dump(mode="json", exclude={"attempts"}),
            error=None,
        )
    else:
        failure = failure or JobFailure(FailureCode.UNKNOWN, "the job failed without an error message")
        values.update(
            status=JobStatus.FAILED.value,
            error=failure.as_json(),
            failovers=deployment_switches(attempts_made),
        )
    return values


def billed_calls(attempts_made: Sequence[Attempt]) -> list[tuple[int, Attempt]]:
    """(attempt_no, attempt) of the calls the provider billed: those that report usage or cost."""
    return [(n, a) for n, a in enumerate(attempts_made, start=1) if a.usage is not None or a.cost_usd > 0]


def run_rows(
    job: StartedJob,
    run: int,
    attempts_made: Sequence[Attempt],
    billed: Sequence[tuple[int, Attempt]],
    now: datetime,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's attempt rows (every call) and ledger rows (billed calls), numbered from 1."""
    attempt_rows = [attempt_row(job.id, run, n, a, now) for n, a in enumerate(attempts_made, start=1)]
    return attempt_rows, [ledger_row(job, run, n, a, now) for n, a in billed]


def attempt_row(job_id: str, run: int, number: int, attempt: Attempt, now: datetime) -> dict[str, Any]:
    usage = attempt.usage
    return {
        "job_id": job_id,
        "run": run,
        "attempt_no": number,
        "deployment": attempt.deployment,
        "provider": attempt.provider,
        "model": attempt.model,
        "outcome": attempt.outcome.value,
        "error_class": attempt.error_class,
        "error": attempt.error,
        "status_code": attempt.status_code,
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "latency_ms": attempt.latency_ms,
        "wait_ms": attempt.wait_ms,
        "simulated": attempt.simulated,
        "created_at": now,
    }


def ledger_row(job: StartedJob, run: int, number: int, attempt: Attempt, now: datetime) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "run": run,
        "attempt_no": number,
        "batch_id": job.batch_id,
        "tenant": job.tenant,
        "user_id": job.user_id,
        "deployment": attempt.deployment,
        "provider": attempt.provider,
        "model": attempt.model,
        "cost_usd": money(attempt.cost_usd),
        "usage": attempt.usage.model_dump() if attempt.usage else {},
        "simulated": attempt.simulated,
        "estimated": attempt.estimated,
        "created_at": now,
    }
