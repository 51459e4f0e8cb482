"""The async Python client: submit prompts, follow their progress, read results.

It meets the workers only through Redis (the queue and the event streams) and SQL (jobs and
results); nothing here imports `workers`.

    async with await Client.connect() as client:        # ROUTEQ_REDIS_URL, ROUTEQ_DATABASE_URL
        batch_id = await client.submit_batch(items)
        async for event in client.events(batch_id): ...
        async for job in client.results(batch_id): ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Any

from arq.connections import ArqRedis

from router_core.models import ChatRequest
from storage import keys
from storage.bus.events import BatchCounts, Event, EventBus, JobEvent
from storage.bus.queue import enqueue_jobs
from storage.bus.recovery import finish_batch, requeue_orphans
from storage.connections import connect_redis
from storage.jobs import ANY_TENANT, ApiBatch, BatchRecord, JobRecord, JobStatus, NewJob, TenantScope
from storage.settings import Settings
from storage.sql.store import Store

__all__ = ["Client"]


class Client:
    """Submits jobs and reads their outcome. Build with `await Client.connect()` or from parts."""

    def __init__(
        self,
        redis: ArqRedis,
        store: Store,
        settings: Settings,
        *,
        tenant: str | None = None,
        user: str | None = None,
        all_tenants: bool = False,
        owns_connections: bool = False,
    ) -> None:
        self.redis = redis
        self.store = store
        self.settings = settings
        self.tenant = tenant or settings.tenant
        self.user = user or settings.user
        # What this client may read: its own tenant's jobs and batches, or every tenant's (operators).
        self.scope: TenantScope = ANY_TENANT if all_tenants else self.tenant
        self.events_bus = EventBus(redis, retention_s=settings.event_retention_s)
        self._owns = owns_connections

    @classmethod
    async def connect(cls, settings: Settings | None = None, **kwargs: Any) -> Client:
        """Connect to `settings.redis_url` and `settings.database_url` (migrating the schema).

        Raises:
            ServiceUnavailableError: Redis or the database cannot be reached (the URL is named).
        """
        settings = settings or Settings()
        redis = await connect_redis(settings)
        try:
            store = await Store.open(settings.database_url)
        except BaseException:
            await redis.aclose()
            raise
        return cls(redis, store, settings, owns_connections=True, **kwargs)

    async def close(self) -> None:
        if self._owns:
            await self.redis.aclose()
            await self.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- submitting ------------------------------------------------------------------------------

    async def submit(
        self, request: ChatRequest | dict[str, Any], *, custom_id: str = "request", stream: bool = False
    ) -> str:
        """Queue one chat request; returns its job id.

        With `stream`, the worker relays the answer's text through Redis as it is generated
        (read it with `storage.bus.relay.StreamRelay.follow`).
        """
        chat = request if isinstance(request, ChatRequest) else ChatRequest.model_validate(request)
        created = await self._create([NewJob(custom_id, chat, stream)], kind="single", name=None)
        return created[1][0]

    async def submit_batch(
        self,
        items: Iterable[NewJob],
        *,
        name: str | None = None,
        invalid_lines: Sequence[dict[str, Any]] = (),
        budget_usd: float | None = None,
        api: ApiBatch | None = None,
    ) -> str:
        """Queue many requests as one batch; returns the batch id.

        All rows go in one SQL transaction, then the ids are enqueued in pipelined chunks: a handful
        of round trips for ten thousand jobs. `invalid_lines` (rejected input lines) are kept on the
        batch so nothing the user sent goes unaccounted for. `budget_usd` caps the batch's spend
        (the user's and tenant's caps still apply); a job that cannot fit fails with
        `BudgetExceededError`. `api` records a batch made through the OpenAI Batch API.
        """
        batch_id, _ = await self._create(
            list(items), kind="batch", name=name, invalid_lines=invalid_lines, budget_usd=budget_usd, api=api
        )
        return batch_id

    async def _create(
        self,
        items: list[NewJob],
        *,
        kind: str,
        name: str | None,
        invalid_lines: Sequence[dict[str, Any]] = (),
        budget_usd: float | None = None,
        api: ApiBatch | None = None,
    ) -> tuple[str, list[str]]:
        created = await self.store.batches.create(
            items,
            tenant=self.tenant,
            user_id=self.user,
            kind=kind,
            name=name,
            invalid_lines=invalid_lines,
            budget_usd=budget_usd,
            api=api,
        )
        if created.job_ids:
            await self.events_bus.open_batch(created.batch_id, len(created.job_ids))
            await enqueue_jobs(self.redis, created.job_ids, queue_name=self.settings.queue_name)
        return created.batch_id, created.job_ids

    # -- reading ---------------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord:
        """The job as stored now. Raises `NotFoundError` for an unknown id or another tenant's job."""
        return await self.store.jobs.get(job_id, tenant=self.scope)

    async def wait(self, job_id: str) -> JobRecord:
        """Wait until the job is finished and return it.

        Subscribes to the job's completion channel first, then reads SQL: a job that finishes in
        between is seen by one or the other, and there is no polling loop.

        Wrap it in `asyncio.timeout(...)` to bound the wait.

        Raises:
            NotFoundError: no such job.
        """
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(keys.job_done_channel(job_id))
            job = await self.store.jobs.get(job_id, tenant=self.scope)
            if job.terminal:
                return job
            async for message in pubsub.listen():
                if message["type"] == "message":
                    break
        return await self.store.jobs.get(job_id, tenant=self.scope)

    async def batch(self, batch_id: str) -> BatchRecord:
        """The batch with its job counts per status, from SQL."""
        return await self.store.batches.get(batch_id, tenant=self.scope)

    async def progress(self, batch_id: str) -> BatchCounts:
        """The batch's live counters from Redis (what the events report)."""
        return await self.events_bus.counts(batch_id)

    def results(self, batch_id: str, *, finished_only: bool = False) -> AsyncIterator[JobRecord]:
        """The batch's jobs in input order (only finished ones with `finished_only`)."""
        return self.store.jobs.iter(batch_id, tenant=self.scope, terminal_only=finished_only)

    def events(self, batch_id: str, *, after: str = "0-0") -> AsyncIterator[Event]:
        """The batch's events from stream id `after` (0-0 = the start), live, until it completes."""
        return self.events_bus.follow(batch_id, after=after)

    async def requeue(self, batch_id: str) -> int:
        """Put the batch's jobs that nothing will run back on the arq queue; returns how many.

        SQL is the source of truth. After a crash between the SQL insert and the enqueue, a Redis
        that lost its data, or a job arq dropped (its job timeout, an expired payload), this
        re-queues every unfinished job with no live lease (`queued` and `running` alike; one a
        live worker runs keeps running), counts the finished jobs Redis has not counted (the
        progress counters), and marks the batch complete when that finishes it. The fleet's
        sweeper does the same on its own (`ROUTEQ_SWEEP_INTERVAL_S`); this does it now.
        Safe to repeat: workers skip jobs that already ran, and no job is counted twice.
        """
        await self.store.batches.get(batch_id, tenant=self.scope)  # NotFoundError for another tenant
        unfinished = [
            job.id
            async for job in self.store.jobs.iter(batch_id, tenant=self.scope)
            if job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
        ]
        await finish_batch(self.store, self.events_bus, batch_id)
        requeued = await requeue_orphans(
            self.redis, self.store, unfinished, queue_name=self.settings.queue_name
        )
        return len(requeued)

    # -- cancelling ------------------------------------------------------------------------------

    async def cancel(self, batch_id: str, *, job_id: str | None = None) -> int:
        """Cancel the batch's queued jobs (or just `job_id`); running jobs finish. Returns how many."""
        cancelled = await self.store.batches.cancel(batch_id, tenant=self.scope, job_id=job_id)
        if cancelled:
            ids = [job.id for job in cancelled]
            # Workers would skip them anyway (SQL says cancelled); removing them saves the trip.
            await self.redis.zrem(self.settings.queue_name, *ids)
            await self.events_bus.publish_terminal([JobEvent.from_record(job) for job in cancelled])
        batch = await self.store.batches.get(batch_id, tenant=self.scope)
        if batch.done >= batch.total:
            await self.store.batches.mark_completed(batch_id)
        return len(cancelled)
