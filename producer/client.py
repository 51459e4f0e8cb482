"""The async Python client: submit prompts, follow their progress, read results.

It meets the workers only through Redis (the queue and the event streams) and SQL (jobs and
results); nothing here imports `workers`.

    async with await Client.connect() as client:        # ROUTEQ_REDIS_URL, ROUTEQ_DATABASE_URL
        batch_id = await client.submit_batch(items)
        async for event in client.events(batch_id): ...
        async for job in client.results(batch_id): ...
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from arq.connections import ArqRedis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from producer.inputs import LineError, ParsedInput
from producer.parsing import EncodedChunk, JsonlFile, encoded_chunks
from producer.storable import check_storable
from producer.strategy_defaults import StrategyDefaults
from router_core.catalog import Catalog, load_catalog
from router_core.errors import NoRouteError, RouteqError
from router_core.models import ChatRequest, Plan
from storage import keys
from storage.bus.events import BatchCounts, Event, EventBus, JobEvent
from storage.bus.notifier import Notifier, Signal
from storage.bus.queue import carried_requests, enqueue_jobs
from storage.bus.recovery import finish_batch, requeue_orphans
from storage.connections import connect_redis
from storage.jobs import (
    ANY_TENANT,
    SINGLE,
    ApiBatch,
    BatchRecord,
    CreatedBatch,
    IdempotencyKey,
    JobRecord,
    JobStatus,
    NewJob,
    TenantScope,
)
from storage.settings import Settings
from storage.sql.batches import unfinished_line
from storage.sql.store import Store
from storage.webhooks.model import check_url

__all__ = ["Client", "SubmitProgress"]

logger = logging.getLogger("routeq.client")

# From this many items on, checking what they would store runs in a thread (as building their rows
# does in `storage.sql.batches`).
_CHECK_IN_THREAD = 1_000
_Resolve = Callable[[ChatRequest], ChatRequest]  # a request with its default strategy resolved


@dataclass(slots=True)
class SubmitProgress:
    """How far `Client.submit_chunks` got: updated after every chunk.

    Attributes:
        batch_id: The batch, once the first valid line made one.
        lines_read: Non-blank lines parsed and dealt with (queued or rejected).
        next_line: The first line not dealt with yet.
        queued: Jobs inserted into SQL and queued.
        errors: The rejected lines, in order.
        bytes_read: How far into the file the lines dealt with end (a `JsonlFile`'s; else 0).
    """

    batch_id: str | None = None
    lines_read: int = 0
    next_line: int = 1
    queued: int = 0
    errors: list[LineError] = field(default_factory=list)
    bytes_read: int = 0


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
        notifier: Notifier | None = None,
        strategies: StrategyDefaults | None = None,
        api_key_id: str | None = None,
    ) -> None:
        self.redis = redis
        self.store = store
        self.settings = settings
        self.tenant = tenant or settings.tenant
        self.user = user or settings.user
        # Recorded on every job this client submits (the API's clients: spend per key); None: no key.
        self.api_key_id = api_key_id
        # What this client may read: its own tenant's jobs and batches, or every tenant's (operators).
        self.scope: TenantScope = ANY_TENANT if all_tenants else self.tenant
        self.events_bus = EventBus(redis, retention_s=settings.event_retention_s)
        self._owns = owns_connections
        # Every wait of this client (and of clients sharing the notifier) shares one subscription.
        self._own_notifier = notifier is None
        self.notifier = notifier or Notifier(redis)
        # Default strategies are resolved here, each job recording which (producer/strategy_defaults.py).
        self.strategies = strategies or StrategyDefaults(store, settings.default_strategy)

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
        if self._own_notifier:
            await self.notifier.close()
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
        self,
        request: ChatRequest | dict[str, Any],
        *,
        custom_id: str = "request",
        stream: bool = False,
        idempotency: IdempotencyKey | None = None,
    ) -> str:
        """Queue one chat request; returns its job id.

        With `stream`, the worker relays the answer's text through Redis as it is generated
        (read it with `storage.bus.relay.StreamRelay.follow`). With `idempotency`, a key the tenant
        already used returns that request's job instead of queuing another.
        """
        created = await self.create_single(
            request, custom_id=custom_id, stream=stream, idempotency=idempotency
        )
        await self.enqueue(created)
        return created.job_ids[0]

    async def create_single(
        self,
        request: ChatRequest | dict[str, Any],
        *,
        custom_id: str = "request",
        stream: bool = False,
        idempotency: IdempotencyKey | None = None,
        checked: bool = False,
    ) -> CreatedBatch:
        """Record one chat request in SQL (a batch of one), not yet queued: `enqueue` queues it.

        Split from `submit` so a caller knows the job id before Redis is touched. `checked`: the
        request passed `check_storable`'s checks (the API's `parse_chat_body` on its body).
        """
        chat = request if isinstance(request, ChatRequest) else ChatRequest.model_validate(request)
        return await self.create(
            [NewJob(custom_id, chat, stream)], kind=SINGLE, idempotency=idempotency, checked=checked
        )

    async def submit_batch(
        self,
        items: Iterable[NewJob],
        *,
        name: str | None = None,
        invalid_lines: Sequence[dict[str, Any]] = (),
        budget_usd: float | None = None,
        api: ApiBatch | None = None,
        idempotency: IdempotencyKey | None = None,
        webhook_url: str | None = None,
    ) -> str:
        """Queue many requests as one batch; returns the batch id.

        All rows go in one SQL transaction, then the ids are enqueued in pipelined chunks: a handful
        of round trips for ten thousand jobs. `invalid_lines` (rejected input lines) are kept on the
        batch so nothing the user sent goes unaccounted for. `budget_usd` caps the batch's spend
        (the user's and tenant's caps still apply); a job that cannot fit fails with
        `BudgetExceededError`. `api` records a batch made through the OpenAI Batch API.
        `idempotency`: as for `submit`. `webhook_url` receives the batch's webhook events
        (`batch.completed` / `batch.failed`, `job.failed`), signed with the tenant's webhook secret.
        """
        created = await self.create(
            list(items),
            name=name,
            invalid_lines=invalid_lines,
            budget_usd=budget_usd,
            api=api,
            idempotency=idempotency,
            webhook_url=webhook_url,
        )
        await self.enqueue(created)
        return created.batch_id

    async def submit_chunks(
        self,
        chunks: Iterable[ParsedInput] | JsonlFile,
        *,
        name: str | None = None,
        budget_usd: float | None = None,
        on_chunk: Callable[[SubmitProgress], None] | None = None,
        webhook_url: str | None = None,
    ) -> SubmitProgress:
        """Queue a parsed file as one batch, chunk by chunk: memory holds one chunk, not the file.

        Each chunk's valid items are inserted into SQL (one transaction, which also adds them to
        the batch's `total`), then queued while the next chunk is inserted; rejected lines are
        collected and recorded on the batch at the end, with the batch's final total in Redis.
        The batch row is created with the first valid item: a file without one makes no batch
        (`batch_id` stays None). `on_chunk` is called after each chunk with the counts so far.

        Until the end the batch carries, as a rejected line, a note naming the first line not yet
        submitted, and the fleet's sweeper leaves it alone: a submitter killed mid-file leaves a
        batch whose jobs so far run and which says where it stopped (`routeq requeue` completes
        it, `routeq cancel` stops it). An error or a cancellation mid-file cancels the batch's
        queued jobs and records the failure in place of that note, then propagates: submit the
        file again.

        `chunks` are `producer.inputs.read_jsonl_chunks` output, parsed in a thread as they are
        asked for, or a `JsonlFile`, parsed in a process of its own when it is large (see
        `producer.parsing`): either way checked line by line, so the per-item check of `create` is
        not repeated.

        Raises:
            InvalidRequestError: `name`, `budget_usd` or `webhook_url` cannot be stored.
        """
        check_storable([], name, budget_usd, self.settings.request_limits())
        resolve = await self.strategies.resolver(self.tenant)
        webhook_url = None if webhook_url is None else check_url(webhook_url, field="webhook_url")
        progress = SubmitProgress()
        encoded = encoded_chunks(chunks, resolve)
        pipeline = _Pipeline()
        writing: asyncio.Task[None] | None = None
        try:
            # Chunk n+1 is parsed (and its requests serialized) in a thread or a process while
            # chunk n is written (and chunk n-1 queued): three chunks at most, whatever the file.
            async for ready in encoded:
                if writing is not None:
                    await writing
                pipeline.check()
                writing = asyncio.create_task(
                    self._submit_chunk(
                        ready,
                        progress,
                        pipeline,
                        name=name,
                        budget_usd=budget_usd,
                        on_chunk=on_chunk,
                        webhook_url=webhook_url,
                    )
                )
            if writing is not None:
                await writing
            if pipeline.queuing is not None:
                await pipeline.queuing
        except BaseException as exc:
            # The chunks being written and queued end as wholes, either way: the write first, as
            # it starts its chunk's queuing.
            if writing is not None and not writing.done():
                await asyncio.wait([writing])
            if pipeline.queuing is not None:
                await asyncio.wait([pipeline.queuing])
                if not pipeline.queuing.cancelled():
                    pipeline.queuing.exception()  # seen: its error is `exc` or one the abandon meets
            if progress.batch_id is not None:
                await self._abandon(progress, exc)
            raise
        finally:
            await encoded.aclose()  # a parsing process stopped, when the file is not read to its end
        if progress.batch_id is not None:
            invalid = [dataclasses.asdict(e) for e in progress.errors]
            total = await self.store.batches.seal(progress.batch_id, invalid)
            # The total arrives last: the last job may already be done, and this completes the batch.
            counts = await self.events_bus.restore(progress.batch_id, total, [])
            if counts.complete:
                await self.store.batches.mark_completed(progress.batch_id)
        return progress

    async def _submit_chunk(
        self,
        chunk: EncodedChunk,
        progress: SubmitProgress,
        pipeline: _Pipeline,
        *,
        name: str | None,
        budget_usd: float | None,
        on_chunk: Callable[[SubmitProgress], None] | None,
        webhook_url: str | None = None,
    ) -> None:
        """Insert the chunk's jobs, then queue them once the chunk before is queued (in order): the
        next chunk's insert need not wait for this queuing."""
        next_line = None if chunk.last_line is None else chunk.last_line + 1
        job_ids: list[str] = []
        if chunk.jobs:
            if progress.batch_id is None:
                progress.batch_id = await self.store.batches.open(
                    tenant=self.tenant,
                    user_id=self.user,
                    name=name,
                    budget_usd=budget_usd,
                    invalid_lines=[unfinished_line(progress.next_line)],
                    webhook_url=webhook_url,
                )
            job_ids = await self.store.batches.append(
                progress.batch_id,
                chunk.jobs,
                tenant=self.tenant,
                user_id=self.user,
                first_seq=pipeline.inserted,
                invalid_lines=[unfinished_line(next_line or progress.next_line)],
            )
            pipeline.inserted += len(job_ids)
        done = _ChunkDone(job_ids, chunk.errors, chunk.lines_read, next_line, chunk.offset)
        pipeline.queuing = asyncio.create_task(self._queue_chunk(pipeline.queuing, done, progress, on_chunk))

    async def _queue_chunk(
        self,
        previous: asyncio.Task[None] | None,
        done: _ChunkDone,
        progress: SubmitProgress,
        on_chunk: Callable[[SubmitProgress], None] | None,
    ) -> None:
        if previous is not None:
            await previous
        if done.job_ids:
            # No `open_batch`: the progress total is set once, at the end (see `submit_chunks`).
            await enqueue_jobs(self.redis, done.job_ids, queue_name=self.settings.queue_name)
            progress.queued += len(done.job_ids)
        progress.errors.extend(done.errors)
        progress.lines_read += done.lines_read
        if done.next_line is not None:
            progress.next_line = done.next_line
        if done.offset is not None:
            progress.bytes_read = done.offset
        if on_chunk is not None:
            on_chunk(progress)

    async def _abandon(self, progress: SubmitProgress, exc: BaseException) -> None:
        """Cancel a batch whose file could not be submitted to the end, saying why on the batch."""
        assert progress.batch_id is not None
        reason = (
            f"submission failed here ({type(exc).__name__}: {exc}): this line and the ones after it "
            "were not submitted and the batch was cancelled: submit the file again"
        )
        invalid = [dataclasses.asdict(e) for e in progress.errors]
        invalid.append({"line": progress.next_line, "reason": reason, "custom_id": None})
        try:
            await self.store.batches.seal(progress.batch_id, invalid)
            await self.cancel(progress.batch_id)
        except (RouteqError, RedisError, SQLAlchemyError, OSError) as cleanup:
            # Left as far as it got: still `submitting` until a seal (`routeq requeue` or `cancel`).
            logger.warning("could not cancel batch %s after a failed submit: %s", progress.batch_id, cleanup)

    async def create(
        self,
        items: list[NewJob],
        *,
        kind: str = "batch",
        name: str | None = None,
        invalid_lines: Sequence[dict[str, Any]] = (),
        budget_usd: float | None = None,
        api: ApiBatch | None = None,
        idempotency: IdempotencyKey | None = None,
        expires_at: datetime | None = None,
        webhook_url: str | None = None,
        checked: bool = False,
    ) -> CreatedBatch:
        """Step 1 of submitting: the batch and its jobs in one SQL transaction (with the key, if any).
        Jobs not started by `expires_at` end as expired; a request naming no strategy gets the
        tenant's default, or the environment's (recorded in its `preferences.strategy_source`).
        `checked`: the items passed `check_storable` already (as for `create_single`).

        Raises:
            InvalidRequestError: an item the database would refuse or should never hold, by field
                (`webhook_url` too).
            IdempotencyKeyReusedError: `idempotency` was used by this tenant for another request.
        """
        limits = self.settings.request_limits()
        resolve = await self.strategies.resolver(self.tenant)
        if len(items) < _CHECK_IN_THREAD:
            items = _resolved(items, resolve)
            check_storable([] if checked else items, name, budget_usd, limits)
        else:  # 50,000 items take most of a second of CPU: not on the loop an API process shares
            items = await asyncio.to_thread(_resolved, items, resolve)
            await asyncio.to_thread(check_storable, [] if checked else items, name, budget_usd, limits)
        webhook_url = None if webhook_url is None else check_url(webhook_url, field="webhook_url")
        return await self.store.batches.create(
            items,
            tenant=self.tenant,
            user_id=self.user,
            kind=kind,
            name=name,
            invalid_lines=invalid_lines,
            budget_usd=budget_usd,
            api=api,
            idempotency=idempotency,
            expires_at=expires_at,
            api_key_id=self.api_key_id,
            webhook_url=webhook_url,
        )

    async def enqueue(self, created: CreatedBatch) -> None:
        """Steps 2-3: the batch's progress counter, then its jobs on the arq queue (one script call
        for both when the batch fits one: `enqueue_jobs`).

        A replayed batch (same idempotency key) may have been left unqueued by a Redis error
        after its SQL commit: its jobs still `queued` in SQL are queued again, and one already
        waiting in the queue (a deferral) keeps its time.
        """
        job_ids = created.job_ids
        total = len(job_ids)
        carried = None
        limit = self.settings.carry_request_max_bytes
        if not created.replayed and created.requests is not None and created.tenant is not None and limit:
            carried = carried_requests(
                created.batch_id, created.tenant, created.requests, max_bytes=limit, single=created.single
            )
        if created.replayed:
            job_ids = await self.store.jobs.ids(
                created.batch_id, tenant=self.scope, statuses=(JobStatus.QUEUED,)
            )
            if job_ids:
                total = (await self.store.batches.get(created.batch_id, tenant=self.scope)).total
        if job_ids:
            await enqueue_jobs(
                self.redis,
                job_ids,
                queue_name=self.settings.queue_name,
                keep_scheduled=created.replayed,
                carried=carried,
                opening=self.events_bus.opening(created.batch_id, total),  # the total, set first
            )

    # -- reading ---------------------------------------------------------------------------------

    async def plan(self, request: ChatRequest, *, catalog: Catalog | None = None) -> Plan:
        """The plan a worker would follow for `request` now (no job, no provider call): candidates
        in order with their estimates and every exclusion with its reason. `catalog` defaults to the
        live catalog's newest version (as workers plan), or `settings.catalog_path`'s before one exists.

        Raises:
            NoRouteError: every deployment is excluded (`exclusions` says why each).
            InvalidRequestError: `model` or `preferences.chain` names what the catalog lacks.
        """
        from producer.planning import Planner  # noqa: PLC0415 - the planner's imports: only when planning
        from storage.fleet.catalog import newest_catalog  # noqa: PLC0415 - with the planner

        catalog = catalog or await newest_catalog(self.store) or load_catalog(self.settings.catalog_path)
        request = await self.strategies.resolve(request, self.tenant)  # as `create` would
        result = await Planner.from_settings(self.settings, self.store, self.redis).preview(request, catalog)
        if isinstance(result, NoRouteError):
            raise result
        return result

    async def get(self, job_id: str) -> JobRecord:
        """The job as stored now. Raises `NotFoundError` for an unknown id or another tenant's job."""
        return await self.store.jobs.get(job_id, tenant=self.scope)

    async def wait(self, job_id: str, *, woken: Signal | None = None) -> JobRecord:
        """Wait until the job is finished and return it.

        Registers with the client's notifier (one subscription for all its waits) first, then
        reads SQL, and reads again each time it is woken: by the job's completion ping, or by the
        subscription coming back after a Redis failure (pings sent meanwhile are lost). A job that
        finishes in between is seen by one or the other, and there is no polling loop.

        `woken`: the job's signal, registered (`notifier.watch`) before the job was queued, so it
        cannot finish unseen: the first read waits for a wake-up. Bound it with `asyncio.timeout`.

        Raises:
            NotFoundError: no such job.
        """
        if woken is not None:
            await woken.wait()
            return await self._read_until_finished(job_id, woken)
        async with self.notifier.watch(keys.job_done_channel(job_id)) as done:
            return await self._read_until_finished(job_id, done)

    async def _read_until_finished(self, job_id: str, woken: Signal) -> JobRecord:
        while True:
            job = await self.store.jobs.get(job_id, tenant=self.scope)
            if job.terminal:
                return job
            await woken.wait()

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
        unfinished = await self.store.jobs.ids(
            batch_id, tenant=self.scope, statuses=(JobStatus.QUEUED, JobStatus.RUNNING)
        )
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
            # Workers would skip them anyway (SQL says cancelled); removing them saves the trip (one
            # claimed before its SQL start leaves the running set: not queued again).
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.settings.queue_name, *ids)
                pipe.zrem(keys.queue_running(self.settings.queue_name), *ids)
                await pipe.execute()
            await self.events_bus.publish_terminal([JobEvent.cancelled(job) for job in cancelled])
        batch = await self.store.batches.get(batch_id, tenant=self.scope)
        if batch.done >= batch.total:
            await self.store.batches.mark_completed(batch_id)
        return len(cancelled)


@dataclass(slots=True)
class _Pipeline:
    """`submit_chunks` in flight: jobs inserted so far, and the queuing of the last chunk inserted."""

    inserted: int = 0
    queuing: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Raise the error a finished queuing ended with: no more chunks are inserted after it."""
        if self.queuing is not None and self.queuing.done():
            self.queuing.result()


@dataclass(frozen=True, slots=True)
class _ChunkDone:
    """What is left of an inserted chunk until it is queued and counted."""

    job_ids: list[str]
    errors: list[LineError]
    lines_read: int
    next_line: int | None
    offset: int | None


def _resolved(items: list[NewJob], resolve: _Resolve) -> list[NewJob]:
    return [dataclasses.replace(item, request=resolve(item.request)) for item in items]
