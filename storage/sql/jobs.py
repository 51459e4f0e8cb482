"""Reading jobs: one by id, a batch's jobs in input order, a job's attempts. Every read takes a tenant.

A job of another tenant is the same `NotFoundError` as a job that does not exist, so no caller has
to remember to compare tenants (workers and operators pass `ANY_TENANT`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, bindparam, exists, func, select, true

from storage.bus.coalesce import TickBatcher
from storage.errors import NotFoundError
from storage.jobs import AnyTenant, FinishedJob, JobRecord, JobStatus, TenantScope
from storage.sql.database import Database, owned_by
from storage.sql.schema import attempts, job_plans, jobs

__all__ = ["Jobs"]

_RUNNABLE_VALUES = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
_PAGE = 500
_FINISHED_COLUMNS = [field.name for field in dataclasses.fields(FinishedJob)]
# One job by id, and the jobs read in one event-loop turn (`Jobs.get`), built once: every chat
# completion reads its job, and building the statement (and its cache key) each time cost more than
# running it. By id only: the tenant is checked on the rows read. SQLite ran `id IN (...) AND
# tenant = ?` with work growing with the tenant's jobs (about 5 VM steps per job stored, every read:
# the client's CPU per request doubled over 10,000 chat completions), `id IN (...)` in constant steps.
_READS = {
    False: select(jobs).where(jobs.c.id == bindparam("job_id")),
    True: select(jobs).where(jobs.c.id.in_(bindparam("job_ids", expanding=True))),
}


class Jobs:
    """Reads of the `jobs` and `attempts` tables, scoped by tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._reads: TickBatcher[tuple[str, TenantScope], RowMapping | None] = TickBatcher(self._read_many)

    async def get(self, job_id: str, *, tenant: TenantScope) -> JobRecord:
        """The job as stored now.

        Raises:
            NotFoundError: no such job, or it belongs to another tenant.
        """
        # Reads made in one event-loop turn share a query: jobs that finished together (one group
        # commit, one wake-up of their waiters) are read together.
        row = await self._reads.submit((job_id, tenant))
        if row is None:
            raise NotFoundError("job", job_id)
        return JobRecord.from_row(row)

    async def _read_many(self, reads: list[tuple[str, TenantScope]]) -> list[RowMapping | None]:
        """One query per tenant scope for a turn's reads (`get`); None for a job not found."""
        scopes: dict[TenantScope, list[str]] = {}
        for job_id, tenant in reads:
            scopes.setdefault(tenant, []).append(job_id)
        found: dict[tuple[str, TenantScope], RowMapping] = {}
        async with self._db.reading() as conn:
            for tenant, ids in scopes.items():
                unique = list(dict.fromkeys(ids))
                many = len(unique) > 1
                params: dict[str, Any] = {"job_ids": unique} if many else {"job_id": unique[0]}
                for row in (await conn.execute(_READS[many], params)).all():
                    if isinstance(tenant, AnyTenant) or row.tenant == tenant:  # else another's: not found
                        found[(row.id, tenant)] = row._mapping
        return [found.get(read) for read in reads]

    async def plan(self, job_id: str, *, tenant: TenantScope) -> tuple[int, dict[str, Any]] | None:
        """The plan the job's last planned run routed with, and that run's number; None if no run
        made one (yet), or the job is not the tenant's."""
        query = (
            select(job_plans.c.run, job_plans.c.plan)
            .join(jobs, jobs.c.id == job_plans.c.job_id)
            .where((job_plans.c.job_id == job_id) & owned_by(jobs.c.tenant, tenant))
            .order_by(job_plans.c.run.desc())
            .limit(1)
        )
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else (int(row.run), dict(row.plan))

    async def iter(
        self,
        batch_id: str,
        *,
        tenant: TenantScope,
        terminal_only: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> AsyncIterator[JobRecord]:
        """The batch's jobs in input order, read a page at a time (none for another tenant's batch);
        with `metadata`, only those whose metadata holds every one of its pairs."""
        where = self.metadata_is(metadata) if metadata else None
        async for row in self._rows_in_order(
            batch_id, tenant, list(jobs.c), terminal_only=terminal_only, where=where
        ):
            yield JobRecord.from_row(row)

    async def finished(self, batch_id: str, *, tenant: TenantScope) -> AsyncIterator[FinishedJob]:
        """The batch's finished jobs in input order, with only what their terminal events say."""
        columns = [*(jobs.c[name] for name in _FINISHED_COLUMNS), jobs.c.seq]
        async for row in self._rows_in_order(batch_id, tenant, columns, terminal_only=True):
            values = {name: row[name] for name in _FINISHED_COLUMNS}
            yield FinishedJob(**values | {"status": JobStatus(values["status"])})

    async def _rows_in_order(
        self,
        batch_id: str,
        tenant: TenantScope,
        columns: list[Any],
        *,
        terminal_only: bool,
        where: ColumnElement[bool] | None = None,
    ) -> AsyncIterator[Mapping[Any, Any]]:
        """`columns` (the page key `seq` among them) of the batch's jobs in input order, page by page."""
        after = -1
        while True:
            query = select(*columns).where(
                (jobs.c.batch_id == batch_id) & (jobs.c.seq > after) & owned_by(jobs.c.tenant, tenant)
            )
            if terminal_only:
                query = query.where(jobs.c.status.not_in(_RUNNABLE_VALUES))
            if where is not None:
                query = query.where(where)
            async with self._db.reading() as conn:
                rows = (await conn.execute(query.order_by(jobs.c.seq).limit(_PAGE))).all()
            for row in rows:
                yield row._mapping
            if len(rows) < _PAGE:
                return
            after = rows[-1].seq

    async def ids(self, batch_id: str, *, tenant: TenantScope, statuses: Collection[JobStatus]) -> list[str]:
        """The ids of the batch's jobs in one of `statuses`, in input order (no request is read)."""
        query = (
            select(jobs.c.id)
            .where(
                (jobs.c.batch_id == batch_id)
                & jobs.c.status.in_([status.value for status in statuses])
                & owned_by(jobs.c.tenant, tenant)
            )
            .order_by(jobs.c.seq)
        )
        async with self._db.reading() as conn:
            return list((await conn.execute(query)).scalars())

    async def page(
        self,
        batch_id: str,
        *,
        tenant: TenantScope,
        after_seq: int = -1,
        limit: int = 100,
        status: JobStatus | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> list[JobRecord]:
        """Up to `limit` of the batch's jobs after position `after_seq`, in input order; with
        `metadata`, only those whose metadata holds every one of its pairs."""
        query = select(jobs).where(
            (jobs.c.batch_id == batch_id) & (jobs.c.seq > after_seq) & owned_by(jobs.c.tenant, tenant)
        )
        if status is not None:
            query = query.where(jobs.c.status == status.value)
        if metadata:
            query = query.where(self.metadata_is(metadata))
        async with self._db.reading() as conn:
            rows = (await conn.execute(query.order_by(jobs.c.seq).limit(limit))).all()
        return [JobRecord.from_row(row._mapping) for row in rows]

    def metadata_is(self, metadata: Mapping[str, str]) -> ColumnElement[bool]:
        """Jobs whose `metadata` holds every pair of `metadata` (its values are strings).

        PostgreSQL reads a key with JSON index access (`metadata ->> key`). SQLite's path syntax
        (`$."key"`) compares a key as stored, escapes included, so a key with a quote, a backslash
        or (as JSON is written, ASCII only) any non-ASCII letter would never match: there the pairs
        are read with `json_each`, which decodes them.
        """
        condition: ColumnElement[bool] = true()
        for key, value in metadata.items():
            if self._db.engine.dialect.name == "sqlite":
                pairs = func.json_each(jobs.c.metadata).table_valued("key", "value")
                condition &= (
                    exists().select_from(pairs).where((pairs.c.key == key) & (pairs.c.value == value))
                )
            else:
                condition &= jobs.c.metadata[key].as_string() == value
        return condition

    async def unfinished(
        self, *, created_before: datetime, after: tuple[datetime, str] | None = None, limit: int = _PAGE
    ) -> list[tuple[datetime, str]]:
        """(created_at, id) of up to `limit` queued or running jobs created before `created_before`.

        Oldest first, after the key `after` of the previous page. Every tenant's (the fleet's
        sweeper asks); the partial index `ix_jobs_unfinished` holds only these rows.
        """
        query = select(jobs.c.created_at, jobs.c.id).where(
            jobs.c.status.in_(_RUNNABLE_VALUES) & (jobs.c.created_at < created_before)
        )
        if after is not None:
            query = query.where(
                (jobs.c.created_at > after[0]) | ((jobs.c.created_at == after[0]) & (jobs.c.id > after[1]))
            )
        query = query.order_by(jobs.c.created_at, jobs.c.id).limit(limit)
        async with self._db.reading() as conn:
            return [(row.created_at, row.id) for row in await conn.execute(query)]

    async def open_runs(self, job_ids: Collection[str]) -> dict[str, int]:
        """Of `job_ids`, those still queued or running, each with the arq try that last started it."""
        if not job_ids:
            return {}
        query = select(jobs.c.id, jobs.c.run).where(
            jobs.c.id.in_(list(job_ids)) & jobs.c.status.in_(_RUNNABLE_VALUES)
        )
        async with self._db.reading() as conn:
            return {row.id: int(row.run) for row in await conn.execute(query)}

    async def attempts(self, job_id: str, *, tenant: TenantScope) -> list[dict[str, Any]]:
        """Every provider call of the job, in the order made (none for another tenant's job)."""
        query = (
            select(attempts)
            .join(jobs, jobs.c.id == attempts.c.job_id)
            .where((attempts.c.job_id == job_id) & owned_by(jobs.c.tenant, tenant))
            .order_by(attempts.c.run, attempts.c.attempt_no)
        )
        async with self._db.reading() as conn:
            return [dict(row._mapping) for row in await conn.execute(query)]
