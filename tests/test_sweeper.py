"""Nothing stuck: jobs arq dropped are swept back onto the queue, and requeue rebuilds what Redis lost.

Each test puts a job in the state a fault leaves it in (its arq keys gone while SQL says `queued` or
`running`), in-process, on both backends; tests/test_stuck.py makes the faults themselves happen.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

import pytest
from arq.constants import expires_extra_ms
from arq.worker import Retry
from sqlalchemy import update

from producer.client import Client
from router_core.errors import CapacityExhaustedError
from router_core.models import ChatRequest, CompletionResult
from router_core.providers import sim_world_for
from router_core.router import Router
from storage import keys
from storage.bus.events import EventBus
from storage.fleet.budgets import Budgets
from storage.jobs import JobStatus
from storage.sql.schema import jobs
from tests.backends import Backend
from tests.conftest import TRIO, make_catalog
from tests.fleet import until
from tests.test_pipeline import all_events, chat, items
from workers.context import Shared, WorkerContext, attach
from workers.runner import JobRunner
from workers.sweeper import Sweeper
from workers.worker import build_worker, route_job, run_worker

SWEEPING = {"sweep_interval_s": 0.05, "sweep_min_age_s": 0.0}


@asynccontextmanager
async def live_worker(backend: Backend, **settings: Any) -> AsyncIterator[None]:
    """A worker (not in burst mode: its sweeper has to get a turn) running until the block ends."""
    catalog = make_catalog(TRIO)
    worker = build_worker(
        backend.settings.model_copy(update=settings),
        redis=await backend.redis(),
        shared=Shared(store=backend.store, catalog=catalog, sim_world=sim_world_for(catalog)),
        handle_signals=False,
        poll_delay=0.01,
    )
    task = asyncio.create_task(run_worker(worker))
    try:
        yield
    finally:
        worker.handle_sig(signal.SIGINT)
        await task


async def completed(client: Client, batch_id: str) -> None:
    async def marked() -> bool:
        return (await client.batch(batch_id)).completed_at is not None

    await until(marked, timeout_s=15, what=f"batch {batch_id} to be marked complete")


async def drop_from_arq(client: Client, job_id: str) -> None:
    """What arq's job timeout does to a job: its payload and queue entry go, with its try counter."""
    await client.redis.delete(keys.ARQ_JOB_PREFIX + job_id, f"arq:retry:{job_id}")
    await client.redis.zrem(client.settings.queue_name, job_id)


async def test_a_running_job_arq_dropped_is_swept_and_run_again(backend: Backend) -> None:
    """Job timeout during a database stall: arq drops the job, then the stalled start lands `running`."""
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(items(3))
    dropped = [job.id async for job in client.results(batch_id)][1]
    await drop_from_arq(client, dropped)
    async with backend.store.engine.begin() as conn:
        await conn.execute(
            update(jobs).where(jobs.c.id == dropped).values(status="running", run=1, starts=1, worker="gone")
        )

    async with live_worker(backend, **SWEEPING):
        await completed(client, batch_id)

    job = await client.get(dropped)
    assert (job.status, job.starts, job.run) == (JobStatus.SUCCEEDED, 2, 2)  # numbered after run 1
    events = await all_events(client, batch_id)
    assert Counter(e.type for e in events if e.type.startswith("job.")) == {"job.succeeded": 3}
    assert [e.type for e in events].count("batch.completed") == 1


async def test_a_queued_job_whose_payload_expired_is_swept(backend: Backend) -> None:
    """arq's payload expires a day after enqueue; here after 1 ms. arq then drops the job unseen."""
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(items(3))
    expired, *_ = [job.id async for job in client.results(batch_id)]
    await client.redis.pexpire(keys.ARQ_JOB_PREFIX + expired, 1)

    async with live_worker(backend, **SWEEPING):
        await completed(client, batch_id)

    assert (await client.batch(batch_id)).counts == {JobStatus.SUCCEEDED: 3}


class _Full:
    """A router whose every candidate is full."""

    async def plan(self, request: ChatRequest) -> None:
        return None

    async def complete(self, request: ChatRequest, **route: Any) -> CompletionResult:
        raise CapacityExhaustedError("all full", [], retry_after_s=5.0)


async def test_a_deferred_job_keeps_its_payload_a_day_past_its_new_run_time(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("wait for room"))
    runner = JobRunner(
        cast(Router, _Full()),
        backend.store,
        EventBus(client.redis, retention_s=60),
        worker_id="w",
        budgets=Budgets(client.redis),
    )
    ctx: dict[str, Any] = {"redis": client.redis, "job_try": 1}
    attach(ctx, WorkerContext(runner, "w", 0.0, opened=AsyncExitStack()))
    with pytest.raises(Retry):
        await route_job(ctx, job_id)
    assert await client.redis.pttl(keys.ARQ_JOB_PREFIX + job_id) > expires_extra_ms + 4_000


async def test_requeue_completes_a_batch_after_redis_lost_its_data(backend: Backend) -> None:
    """Jobs finish between the data loss and the requeue, and a dead worker's job stays `running`."""
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(items(10))
    await backend.run_worker(max_burst_jobs=4)
    ids = [job.id async for job in client.results(batch_id) if job.status == JobStatus.QUEUED]
    await client.redis.flushdb()  # queue, payloads, leases, events, counters, published markers: gone
    # Two workers still held jobs: they finish after the loss, and publish into an empty hash.
    runner_redis = await backend.redis()
    catalog = make_catalog(TRIO)
    async with Router.from_settings(
        backend.settings, catalog=catalog, sim_world=sim_world_for(catalog)
    ) as router:
        runner = JobRunner(
            router,
            backend.store,
            EventBus(runner_redis, retention_s=60),
            worker_id="w",
            budgets=Budgets(runner_redis),
        )
        for job_id in ids[:2]:
            assert await runner.run(job_id, run=1) == "succeeded"
    # A third worker was killed: its job is `running` with nothing left in Redis.
    dead = ids[2]
    async with backend.store.engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == dead).values(status="running", run=1, starts=1))

    assert await client.requeue(batch_id) == 4  # the dead worker's job and the three queued ones
    assert (await client.progress(batch_id)).done == 6
    await backend.run_worker()

    assert (await client.batch(batch_id)).counts == {JobStatus.SUCCEEDED: 10}
    assert (await client.batch(batch_id)).completed_at is not None
    assert (await client.get(dead)).run == 2
    counts = await client.progress(batch_id)
    assert (counts.total, counts.done, counts.succeeded) == (10, 10, 10)
    events = await all_events(client, batch_id)
    assert Counter(e.type for e in events)["job.succeeded"] == 10  # one per job, the stream rebuilt
    assert [e.type for e in events].count("batch.completed") == 1
    assert await client.requeue(batch_id) == 0


async def test_requeue_marks_a_batch_whose_jobs_all_finished_after_the_loss(backend: Backend) -> None:
    """Every job finished after Redis lost its data: no event reached `total`, so none completed it."""
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(items(3))
    await client.redis.delete(keys.batch_progress(batch_id))  # the total is lost before any job ends
    await backend.run_worker()
    assert (await client.batch(batch_id)).completed_at is None

    assert await client.requeue(batch_id) == 0
    assert (await client.batch(batch_id)).completed_at is not None
    events = await all_events(client, batch_id)
    assert events[-1].type == "batch.completed"
    assert events[-1].data["done"] == 3


def sweeper(backend: Backend, redis: Any, holder: str) -> Sweeper:
    return Sweeper(
        redis,
        backend.store,
        EventBus(redis, retention_s=60),
        queue_name=backend.settings.queue_name,
        holder=holder,
        interval_s=30,
        min_age_s=0,
    )


async def test_a_job_with_a_live_lease_or_a_place_in_the_queue_is_left_alone(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(items(4))
    slow, waiting, deferred, orphan = [job.id async for job in client.results(batch_id)]
    # A slow job on a live worker: whatever else is gone, its renewed lease says it runs.
    await drop_from_arq(client, slow)
    await client.redis.set(keys.ARQ_IN_PROGRESS_PREFIX + slow, b"1", px=15_000)
    # A job deferred into the future keeps its payload and its queue entry (a later score).
    await client.redis.zadd(client.settings.queue_name, {deferred: 10**13})
    await drop_from_arq(client, orphan)
    async with backend.store.engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id.in_([slow, orphan])).values(status="running", run=1))

    report = await sweeper(backend, client.redis, "w1").sweep()

    assert report is not None
    assert report.requeued == [orphan]
    assert await client.redis.zscore(client.settings.queue_name, orphan) is not None
    assert await client.redis.zscore(client.settings.queue_name, slow) is None
    assert waiting not in report.requeued


async def test_one_worker_sweeps_at_a_time(backend: Backend) -> None:
    redis = await backend.redis()
    assert await sweeper(backend, redis, "w1").sweep() is not None
    assert await sweeper(backend, redis, "w2").sweep() is None  # w1's lock lasts one interval
    assert await redis.get(keys.SWEEPER) in (b"w1", "w1")


async def test_closing_lets_the_sweep_in_progress_finish(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep cancelled mid-query would cost its database connection (an in-memory SQLite's data with
    it): a worker shutting down waits for the sweep, and the store is still whole afterwards."""
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(items(2))
    in_query, release = asyncio.Event(), asyncio.Event()
    read = backend.store.jobs.unfinished
    finished: list[bool] = []

    async def slow_read(**kwargs: Any) -> Any:
        in_query.set()
        await release.wait()  # the query in flight when the worker is told to stop
        page = await read(**kwargs)
        finished.append(True)
        return page

    monkeypatch.setattr(backend.store.jobs, "unfinished", slow_read)
    swept = Sweeper(
        client.redis,
        backend.store,
        EventBus(client.redis, retention_s=60),
        queue_name=backend.settings.queue_name,
        holder="closing",
        interval_s=0.01,
        min_age_s=0,
    )
    swept.start()
    await asyncio.wait_for(in_query.wait(), timeout=10)
    closing = asyncio.create_task(swept.close())
    await asyncio.sleep(0)
    assert not closing.done()  # it waits for the sweep instead of cancelling it
    release.set()
    await asyncio.wait_for(closing, timeout=10)
    assert finished == [True]
    assert (await client.batch(batch_id)).total == 2
