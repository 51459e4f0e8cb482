"""Batches in SQL: a batch and all its jobs in one transaction, cancel, reads, the end-of-run summary.

Every read and the cancel take a tenant: another tenant's batch is the same `NotFoundError` as a
batch that does not exist, and so is a batch its tenant deleted (only reads for any tenant see it).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import NotFoundError
from storage.jobs import (
    ANY_TENANT,
    SINGLE,
    ApiBatch,
    BatchLimits,
    BatchRecord,
    BatchSummary,
    CancelledJob,
    CreatedBatch,
    DeploymentSummary,
    FailureCode,
    IdempotencyKey,
    JobFailure,
    JobStatus,
    NewJob,
    TenantScope,
    aware,
    new_id,
)
from storage.sql.database import Database, owned_by
from storage.sql.idempotency import IdempotencyKeys, KeyRecord
from storage.sql.jobs import Jobs
from storage.sql.ledger import Ledger
from storage.sql.new_jobs import (
    ROW_COLUMNS,
    EncodedJobs,
    JobOwner,
    encode_jobs,
    insert_jobs,
    insert_singles,
    job_rows,
)
from storage.sql.outbox import batch_finished, batch_url
from storage.sql.runs import money
from storage.sql.schema import attempts, batches, files, jobs

__all__ = ["UNFINISHED_SUBMISSION", "Batches", "unfinished_line"]

UNFINISHED_SUBMISSION = "submission unfinished:"
"""How the reason starts of the rejected-line entry a batch carries while its file is submitted
chunk by chunk (`Client.submit_chunks`), telling a reader how far the file got. What the sweeper
reads is the batch's `submitting` flag (`finalizing`)."""


def unfinished_line(line: int) -> dict[str, Any]:
    """The rejected-line entry a batch carries while its file is being submitted, from `line` on."""
    reason = "this line and the ones after it were not submitted (yet, or ever if the submitting "
    reason += "process stopped: then submit them again)"
    return {"line": line, "reason": f"{UNFINISHED_SUBMISSION} {reason}", "custom_id": None}


_CODES = frozenset(code.value for code in FailureCode)
# Every finished batch of one runs this: built once (building it cost more than running it).
_MARK_COMPLETED = (
    update(batches)
    .where((batches.c.id == bindparam("batch_id")) & batches.c.completed_at.is_(None))
    .values(completed_at=bindparam("now", type_=batches.c.completed_at.type))
    .returning(batches.c.kind)
)

# Batches at least this big serialize their requests in a thread (a single submit stays inline).
_ROWS_IN_THREAD = 1_000


class Batches:
    """Creating, cancelling and reading batches."""

    def __init__(self, db: Database, jobs: Jobs, ledger: Ledger, keys: IdempotencyKeys) -> None:
        self._db = db
        self._jobs = jobs
        self._ledger = ledger
        self._keys = keys

    async def create(
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
        idempotency: IdempotencyKey | None = None,
        expires_at: datetime | None = None,
        api_key_id: str | None = None,
        webhook_url: str | None = None,
    ) -> CreatedBatch:
        """Insert a batch and all its jobs (status `queued`) in one transaction.

        Past `expires_at` (an OpenAI batch's completion window, `api`, sets its own), jobs not
        started yet end as expired.

        A batch made through the OpenAI Batch API (`api`) also gets its output and error files:
        rows in `files` whose content is generated from the jobs when read. With `idempotency`,
        the key is recorded in the same transaction; if the tenant's earlier request holds it,
        nothing is inserted and that request's batch comes back (`replayed`). `webhook_url` (checked
        by the caller) receives the batch's webhook events.

        A batch of one (`kind` SINGLE) has no cap, window or URL: workers count on it.

        Raises:
            IdempotencyKeyReusedError: the key was used for a different request.
            ValueError: a batch of one given a cap, a window or a URL.
        """
        if kind == SINGLE and (budget_usd is not None or expires_at is not None or webhook_url is not None):
            raise ValueError("a batch of one has no budget_usd, expires_at or webhook_url: make a batch")
        now = self._db.now()
        batch_id = new_id("batch")
        owner = JobOwner(batch_id, tenant, user_id, now, api_key_id)
        rows = job_rows(await _encoded(items), owner, self._db.engine.dialect)
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
            "expires_at": expires_at,
        }
        file_rows = [] if api is None else _api_batch_files(api, batch_row, now)

        requests = [row[ROW_COLUMNS.index("request")] for row in rows]  # JSON text, as stored
        created = CreatedBatch(
            batch_id, [row[0] for row in rows], requests=requests, tenant=tenant, single=kind == SINGLE
        )

        if kind == SINGLE and idempotency is None and len(rows) == 1 and not file_rows:
            # Batches of one made at the same time (chat completions) share their two statements.
            await self._db.writes.run_sync_batched(insert_singles, (batch_row, rows[0]))
            return created

        async def write(conn: AsyncConnection) -> KeyRecord | None:
            if idempotency is not None:
                taken = await self._keys.claim(conn, tenant, idempotency, created)
                if taken is not None:
                    return taken
            await conn.execute(batches.insert(), batch_row)
            await insert_jobs(conn, rows)
            if file_rows:
                await conn.execute(files.insert(), file_rows)
            if webhook_url is not None:
                await conn.run_sync(batch_url, tenant=tenant, batch_id=batch_id, url=webhook_url, now=now)
            if not rows:  # complete at birth (every line was invalid): its event goes out now
                await conn.run_sync(batch_finished, batch_id, now)
            return None

        taken = await self._db.writes.run(write)
        if taken is not None and idempotency is not None:
            return taken.replay(idempotency)
        return created

    # -- a batch written chunk by chunk (`Client.submit_chunks`) ----------------------------------

    async def open(
        self,
        *,
        tenant: str,
        user_id: str,
        name: str | None = None,
        budget_usd: float | None = None,
        invalid_lines: Sequence[dict[str, Any]] = (),
        webhook_url: str | None = None,
    ) -> str:
        """Insert an empty batch that `append` fills; returns its id.

        Its `total` counts the jobs appended so far, so SQL always agrees with itself. What says the
        file is not all in yet is the caller's: `invalid_lines` (an entry naming the first line not
        submitted), replaced chunk by chunk by `append` and at the end by `seal`.
        """
        now = self._db.now()
        batch_id = new_id("batch")
        row = {
            "id": batch_id,
            "kind": "batch",
            "tenant": tenant,
            "user_id": user_id,
            "name": name,
            "total": 0,
            "submitting": True,
            "invalid_lines": list(invalid_lines),
            "budget_usd": None if budget_usd is None else money(budget_usd),
            "created_at": now,
            "completed_at": None,
        }

        def write(conn: Connection) -> None:
            conn.execute(batches.insert(), row)
            if webhook_url is not None:
                batch_url(conn, tenant=tenant, batch_id=batch_id, url=webhook_url, now=now)

        await self._db.writes.run_sync(write)
        return batch_id

    async def append(
        self,
        batch_id: str,
        items: Sequence[NewJob] | EncodedJobs,
        *,
        tenant: str,
        user_id: str,
        first_seq: int,
        invalid_lines: Sequence[dict[str, Any]] | None = None,
    ) -> list[str]:
        """Insert `items` as the batch's jobs `first_seq`, `first_seq + 1`... (status `queued`) and
        add them to its `total`, in one transaction; returns their ids in order.

        `invalid_lines`, when given, replaces the batch's in the same transaction (the caller's
        note of how far the file got). `items` may come encoded already (`encode_jobs`).
        """
        owner = JobOwner(batch_id, tenant, user_id, self._db.now())
        rows = job_rows(await _encoded(items), owner, self._db.engine.dialect, first_seq)
        values: dict[str, Any] = {"total": batches.c.total + len(rows)}
        if invalid_lines is not None:
            values["invalid_lines"] = list(invalid_lines)

        async def write(conn: AsyncConnection) -> None:
            # The batch first: its row is locked before its jobs go in (and, on PostgreSQL, the
            # transaction the jobs' COPY joins has begun).
            await conn.execute(update(batches).where(batches.c.id == batch_id).values(**values))
            await insert_jobs(conn, rows)

        await self._db.writes.run(write)
        return [row[0] for row in rows]

    async def seal(self, batch_id: str, invalid_lines: Sequence[dict[str, Any]]) -> int:
        """Record the file's rejected lines on a batch `append` has filled and end its submission
        (its total is final: the sweeper may complete it); returns its total."""

        async def write(conn: AsyncConnection) -> int:
            result = await conn.execute(
                update(batches)
                .where(batches.c.id == batch_id)
                .values(invalid_lines=list(invalid_lines), submitting=False)
                .returning(batches.c.total)
            )
            return int(result.scalar_one())

        return await self._db.writes.run(write)

    async def cancel(
        self, batch_id: str, *, tenant: TenantScope, job_id: str | None = None
    ) -> list[CancelledJob]:
        """Cancel the batch's queued jobs (or one of them); running ones finish. Returns those cancelled.

        Only their ids come back, not their rows: a batch of 50,000 requests is cancelled without
        reading 50,000 requests back.

        Raises:
            NotFoundError: no such batch, or it belongs to another tenant.
        """
        await self.get(batch_id, tenant=tenant)
        now = self._db.now()
        condition = (jobs.c.batch_id == batch_id) & (jobs.c.status == JobStatus.QUEUED.value)
        if job_id is not None:
            condition &= jobs.c.id == job_id
        failure = JobFailure(FailureCode.CANCELLED, "cancelled before it started")

        async def write(conn: AsyncConnection) -> list[CancelledJob]:
            result = await conn.execute(
                update(jobs)
                .where(condition)
                .values(status=JobStatus.CANCELLED.value, finished_at=now, error=failure.as_json())
                .returning(jobs.c.id, jobs.c.custom_id)
            )
            cancelled = [CancelledJob(id_, batch_id, custom_id, failure) for id_, custom_id in result]
            if job_id is None:
                await conn.execute(
                    update(batches)
                    .where((batches.c.id == batch_id) & batches.c.cancelled_at.is_(None))
                    .values(cancelled_at=now)
                )
            return cancelled

        return await self._db.writes.run(write)

    async def get(self, batch_id: str, *, tenant: TenantScope) -> BatchRecord:
        """The batch with its job counts per status.

        Raises:
            NotFoundError: no such batch, or it belongs to another tenant.
        """
        query = select(batches).where((batches.c.id == batch_id) & owned_by(batches.c.tenant, tenant))
        if tenant is not ANY_TENANT:
            query = query.where(batches.c.deleted_at.is_(None))
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
            if row is None:
                raise NotFoundError("batch", batch_id)
            counts = await _status_counts(conn, batch_id)
        return BatchRecord.from_row(row._mapping, counts)

    async def row(self, batch_id: str, *, tenant: TenantScope) -> BatchRecord:
        """The batch without its job counts (`counts` is empty): one primary-key read, for a caller
        that has the counts already (the dashboard reads them from the batch's progress in Redis).

        Raises:
            NotFoundError: no such batch, or it belongs to another tenant.
        """
        query = select(batches).where((batches.c.id == batch_id) & owned_by(batches.c.tenant, tenant))
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError("batch", batch_id)
        return BatchRecord.from_row(row._mapping, {})

    async def token_usage(self, batch_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Input and output tokens of every call each batch's jobs made (as the providers reported),
        in one query for a page of batches; (0, 0) for a batch with no call yet."""
        query = (
            select(
                jobs.c.batch_id,
                func.coalesce(func.sum(attempts.c.input_tokens), 0),
                func.coalesce(func.sum(attempts.c.output_tokens), 0),
            )
            .select_from(attempts.join(jobs, attempts.c.job_id == jobs.c.id))
            .where(jobs.c.batch_id.in_(list(batch_ids)))
            .group_by(jobs.c.batch_id)
        )
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        found = {batch_id: (int(tokens_in), int(tokens_out)) for batch_id, tokens_in, tokens_out in rows}
        return {batch_id: found.get(batch_id, (0, 0)) for batch_id in batch_ids}

    async def list(
        self,
        *,
        tenant: str,
        after: str | None = None,
        before: str | None = None,
        kind: str | None = None,
        limit: int = 20,
        counts: bool = True,
    ) -> list[BatchRecord]:
        """The tenant's batches (of one `kind` if given), newest first. `after` is the last id of the
        previous page: the `limit` batches older than it; `before` the first id of the next page:
        the `limit` batches newer than it, just before it. Without `counts`, their job counts are left
        empty (one query in all, for a caller that has them).

        Raises:
            NotFoundError: a cursor that is not one of the tenant's batches.
        """
        query = select(batches).where((batches.c.tenant == tenant) & batches.c.deleted_at.is_(None))
        if kind is not None:
            query = query.where(batches.c.kind == kind)
        if after is not None:
            created, id_ = await self._cursor(after, tenant)
            query = query.where(
                (batches.c.created_at < created) | ((batches.c.created_at == created) & (batches.c.id < id_))
            )
        if before is not None:
            created, id_ = await self._cursor(before, tenant)
            query = query.where(
                (batches.c.created_at > created) | ((batches.c.created_at == created) & (batches.c.id > id_))
            )
        # Before a cursor, the nearest `limit` newer batches: read upwards from it, then turned round.
        order = (batches.c.created_at, batches.c.id)
        query = query.order_by(*(o.asc() if before is not None else o.desc() for o in order)).limit(limit)
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
            if not counts:
                records = [BatchRecord.from_row(row._mapping, {}) for row in rows]
            else:
                records = [
                    BatchRecord.from_row(row._mapping, await _status_counts(conn, row.id)) for row in rows
                ]
        return records[::-1] if before is not None else records

    async def _cursor(self, batch_id: str, tenant: str) -> tuple[datetime, str]:
        query = select(batches.c.created_at, batches.c.id).where(
            (batches.c.id == batch_id) & (batches.c.tenant == tenant)
        )
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError("batch", batch_id)
        return row.created_at, row.id

    async def delete(self, batch_id: str, *, tenant: str) -> bool:
        """Delete an ended batch (one marked complete) for its tenant: from then on its reads answer
        `NotFoundError`; its jobs and ledger rows stay. False if it has not ended (nothing changes).

        Raises:
            NotFoundError: no such batch, it belongs to another tenant, or it is deleted already.
        """
        batch = await self.get(batch_id, tenant=tenant)
        if batch.completed_at is None:
            return False
        now = self._db.now()

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(
                update(batches)
                .where((batches.c.id == batch_id) & batches.c.deleted_at.is_(None))
                .values(deleted_at=now)
            )

        await self._db.writes.run(write)
        return True

    async def failure_counts(self, batch_ids: Sequence[str]) -> dict[str, dict[FailureCode, int]]:
        """How many of each batch's failed jobs failed with each code (`batch_expired`, ...), in one
        query for a page of batches."""
        code = jobs.c.error["type"].as_string()
        query = (
            select(jobs.c.batch_id, code, func.count())
            .where(jobs.c.batch_id.in_(list(batch_ids)) & (jobs.c.status == JobStatus.FAILED.value))
            .group_by(jobs.c.batch_id, code)
        )
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        counts: dict[str, dict[FailureCode, int]] = {batch_id: {} for batch_id in batch_ids}
        for batch_id, value, n in rows:
            if value in _CODES:
                counts[batch_id][FailureCode(value)] = int(n)
        return counts

    async def limits(self, batch_id: str) -> BatchLimits:
        """The batch's own spend cap and expiry, if it has them (what a worker checks)."""
        query = select(batches.c.budget_usd, batches.c.expires_at).where(batches.c.id == batch_id)
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return BatchLimits()
        cap, expires = row
        return BatchLimits(None if cap is None else float(cap), aware(expires))

    async def finalizing(self, *, created_before: datetime, limit: int = 100) -> Sequence[str]:
        """Batches created before `created_before` whose jobs are all finished, not marked complete.

        A terminal event that never went out (its run was cancelled after the commit) or a worker
        that died before marking the batch leaves one. Every tenant's (the fleet's sweeper asks).
        A batch whose file is still being submitted is not one, however long that takes: its total
        is not final (nor, if its submitter was killed, ever will be: `routeq requeue` completes it).
        """
        open_job = select(jobs.c.id).where(
            (jobs.c.batch_id == batches.c.id)
            & jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value])
        )
        query = (
            select(batches.c.id)
            .where(
                batches.c.completed_at.is_(None)
                & (batches.c.created_at < created_before)
                & (batches.c.total > 0)
                & ~batches.c.submitting
                & ~open_job.exists()
            )
            .order_by(batches.c.created_at)
            .limit(limit)
        )
        async with self._db.reading() as conn:
            return list((await conn.execute(query)).scalars())

    async def mark_completed(self, batch_id: str) -> None:
        """Set `completed_at` once (the first call wins; later ones change nothing).

        The call that sets it writes the batch's webhook event in the same transaction; a batch of
        one has none (it has no URL of its own, and endpoints take only real batches' events), so
        its completion is this one UPDATE.
        """
        now = self._db.now()

        def write(conn: Connection) -> None:
            kind = conn.execute(_MARK_COMPLETED, {"batch_id": batch_id, "now": now}).scalar()
            if kind is not None and kind != SINGLE:
                batch_finished(conn, batch_id, now)

        await self._db.writes.run_sync(write)

    async def summary(self, batch_id: str, *, tenant: TenantScope = ANY_TENANT) -> BatchSummary:
        """Per-deployment jobs, cost, latency percentiles and failovers, for succeeded jobs; what the
        response cache served (hits, dollars saved)."""
        per_deployment: dict[str, list[tuple[float, Decimal, int]]] = {}
        statuses: Counter[str] = Counter()
        reasons: Counter[FailureCode] = Counter()
        cache_jobs = cache_hits = 0
        saved = Decimal(0)
        async for job in self._jobs.iter(batch_id, tenant=tenant):
            statuses[job.status] += 1
            if job.terminal and job.cache_key is not None:
                cache_jobs += 1
            if job.cache_source is not None:
                cache_hits += 1
                saved += job.saved_usd or 0
            if job.status == JobStatus.SUCCEEDED and job.deployment is not None:
                per_deployment.setdefault(job.deployment, []).append(
                    (job.latency_ms or 0.0, job.cost_usd or Decimal(0), job.failovers or 0)
                )
            elif job.status == JobStatus.FAILED and job.failure is not None:
                reasons[job.failure.code] += 1
        billed, calls = await self._ledger.billed(batch_id)
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
            billed_usd=billed,
            provider_calls=calls,
            failure_reasons=dict(reasons),
            cache_jobs=cache_jobs,
            cache_hits=cache_hits,
            saved_usd=saved,
        )


async def _encoded(items: Sequence[NewJob] | EncodedJobs) -> EncodedJobs:
    if isinstance(items, EncodedJobs):
        return items
    if len(items) < _ROWS_IN_THREAD:
        return encode_jobs(items)
    # A big file's requests take a second of CPU to serialize: not on the loop other requests share.
    return await asyncio.to_thread(encode_jobs, items)


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
    expires = None if api.output_expires_s is None else now + timedelta(seconds=api.output_expires_s)
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
            "expires_at": expires,
        }
        for kind in ("output", "error")
    ]
