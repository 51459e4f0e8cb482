"""The queue pipeline end to end: submit, arq worker, SQL results and ledger, completion events.

Every test runs on both backends (fakeredis + SQLite, real Redis + PostgreSQL in CI).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from producer.client import Client
from router_core import Catalog, Router
from router_core.models import Attempt, AttemptOutcome, ChatRequest, CompletionResult, Message, Plan, Usage
from router_core.providers import sim_world_for
from storage.bus.events import Event, EventBus
from storage.fleet.budgets import Budgets
from storage.jobs import ANY_TENANT, JobStatus, NewJob, StartedJob
from storage.sql.schema import jobs, ledger
from tests.backends import Backend
from tests.conftest import deployment, make_catalog
from workers.runner import JobRunner


def chat(text: str, **kwargs: Any) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)], **kwargs)


def items(n: int) -> list[NewJob]:
    return [NewJob(f"item-{i}", chat(f"Say hello number {i}")) for i in range(n)]


async def all_events(client: Client, batch_id: str) -> list[Event]:
    return [event async for event in client.events(batch_id)]


@pytest.fixture
def flaky() -> Catalog:
    """Two deployments: the preferred one fails every call with a 500, the other always works."""
    return make_catalog(
        [
            deployment("bad-a", quality=0.9, sim={"error_rate": 1.0}),
            deployment("good-b", quality=0.5),
        ]
    )


async def test_batch_runs_to_completion(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(items(30), name="hello")
    assert (await client.batch(batch_id)).counts == {JobStatus.QUEUED: 30}

    assert await backend.run_worker() == 30

    batch = await client.batch(batch_id)
    assert batch.counts == {JobStatus.SUCCEEDED: 30}
    assert batch.status == "completed"
    assert batch.completed_at is not None
    jobs = [job async for job in client.results(batch_id)]
    assert [job.custom_id for job in jobs] == [f"item-{i}" for i in range(30)]
    for job in jobs:
        assert job.result is not None
        assert job.result["content"]
        assert job.deployment is not None
        assert job.finished_at is not None
    ledger = await backend.store.ledger.rows(batch_id=batch_id)
    assert len(ledger) == 30  # one successful call each, on the always-working demo sim
    assert sum(row["cost_usd"] for row in ledger) == sum(job.cost_usd or 0 for job in jobs)

    events = await all_events(client, batch_id)
    terminal = [e for e in events if e.type == "job.succeeded"]
    assert sorted(e.data["custom_id"] for e in terminal) == sorted(f"item-{i}" for i in range(30))
    assert all(e.data["deployment"] and e.data["cost_usd"] > 0 for e in terminal)
    completed = [e for e in events if e.type == "batch.completed"]
    assert len(completed) == 1
    assert completed[0].data == {"total": 30, "done": 30, "succeeded": 30, "failed": 0, "cancelled": 0}
    assert events[-1].type == "batch.completed"
    assert [e for e in events if e.type == "batch.progress"][-1].data["done"] == 30


async def test_failover_and_failure_record_every_attempt(backend: Backend, flaky: Catalog) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    # Separate batches and worker runs; the breaker (shared in Redis) is lifted out of reach here,
    # so one job's failures cannot open bad-a's circuit for the other.
    backend.settings = backend.settings.model_copy(update={"breaker_failures": 1_000})
    ok_batch = await client.submit_batch([NewJob("fails-over", chat("hello"))])
    await backend.run_worker(catalog=flaky, sim_world=sim_world_for(flaky))
    batch_id = await client.submit_batch(
        [NewJob("only-bad", chat("hello", preferences={"include_providers": ["bad"]}))]
    )
    await backend.run_worker(catalog=flaky, sim_world=sim_world_for(flaky))

    jobs = {job.custom_id: job async for job in client.results(batch_id)}
    jobs |= {job.custom_id: job async for job in client.results(ok_batch)}
    assert jobs["fails-over"].status == JobStatus.SUCCEEDED
    assert jobs["fails-over"].deployment == "good-b"
    assert jobs["fails-over"].failovers == 1
    assert jobs["only-bad"].status == JobStatus.FAILED
    assert jobs["only-bad"].error is not None
    assert jobs["only-bad"].error["type"] == "AllAttemptsFailedError"
    bad_attempts = await backend.store.jobs.attempts(jobs["only-bad"].id, tenant=ANY_TENANT)
    assert len(bad_attempts) == backend.settings.max_attempts_per_deployment
    assert {a["deployment"] for a in bad_attempts} == {"bad-a"}
    assert all(a["outcome"] == "error" and a["status_code"] == 500 for a in bad_attempts)
    # Only calls the provider billed are charged: the one success.
    assert await backend.store.ledger.rows(batch_id=batch_id) == []
    ledger = await backend.store.ledger.rows(batch_id=ok_batch)
    assert [(row["job_id"], row["deployment"]) for row in ledger] == [(jobs["fails-over"].id, "good-b")]

    assert [e.type for e in await all_events(client, batch_id)] == [
        "job.failed",
        "batch.progress",
        "batch.completed",
    ]


async def test_redelivery_after_commit_bills_once_and_publishes_once(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("hello"))
    await backend.run_worker()
    first = await client.get(job_id)

    # arq delivers the same job again (e.g. the worker died before acknowledging it).
    await client.redis.enqueue_job("route_job", job_id, _queue_name=backend.settings.queue_name)
    await backend.run_worker()

    again = await client.get(job_id)
    assert again.status == JobStatus.SUCCEEDED
    assert again.result == first.result
    assert again.run == first.run
    assert len(await backend.store.ledger.rows(job_id=job_id)) == 1
    assert len(await backend.store.jobs.attempts(job_id, tenant=ANY_TENANT)) == 1
    events = await all_events(client, first.batch_id)
    assert [e.type for e in events if e.type.startswith("job.")] == ["job.succeeded"]


class _MeetFirst:
    """Routes with a real router, but only once every run has started: forces the overlap."""

    def __init__(self, router: Router, runs: int) -> None:
        self._router = router
        self._barrier = asyncio.Barrier(runs)

    async def plan(self, request: ChatRequest) -> Plan:
        return await self._router.plan(request)

    async def complete(self, request: ChatRequest, **route: Any) -> CompletionResult:
        await self._barrier.wait()
        return await self._router.complete(request, **route)


async def test_concurrent_duplicate_runs_keep_one_result_and_every_charge(
    backend: Backend, trio: Catalog
) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("hello"))
    world = sim_world_for(trio)
    async with Router.from_settings(backend.settings, catalog=trio, sim_world=world) as router:
        events = EventBus(await backend.redis(), retention_s=60)
        runner = JobRunner(
            cast(Router, _MeetFirst(router, 2)),
            backend.store,
            events,
            worker_id="w1",
            budgets=Budgets(await backend.redis()),
        )
        # arq re-delivered the job (its in-progress key expired) while try 1 was still running.
        statuses = await asyncio.gather(runner.run(job_id, run=1), runner.run(job_id, run=2))

    assert list(statuses) == ["succeeded", "succeeded"]
    job = await client.get(job_id)
    assert job.status == JobStatus.SUCCEEDED
    calls = sum(stats.requests for stats in world.stats.values())
    assert calls == 2
    ledger = await backend.store.ledger.rows(job_id=job_id)
    assert sorted(row["run"] for row in ledger) == [1, 2]  # both calls were billed, both are charged
    assert job.run in (1, 2)
    terminal = [e for e in await all_events(client, job.batch_id) if e.type.startswith("job.")]
    assert len(terminal) == 1


class _Gate:
    """Routes with a real router, but holds every call until released: status can be read mid-run."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def plan(self, request: ChatRequest) -> Plan:
        return await self._router.plan(request)

    async def complete(self, request: ChatRequest, **route: Any) -> CompletionResult:
        self.entered.set()
        await self.release.wait()
        return await self._router.complete(request, **route)


async def test_status_is_visible_in_sql_while_the_job_runs(backend: Backend, trio: Catalog) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("hello"))
    assert (await client.get(job_id)).status == JobStatus.QUEUED
    async with Router.from_settings(backend.settings, catalog=trio, sim_world=sim_world_for(trio)) as router:
        gate = _Gate(router)
        events = EventBus(await backend.redis(), retention_s=60)
        runner = JobRunner(
            cast(Router, gate),
            backend.store,
            events,
            worker_id="worker-7",
            budgets=Budgets(await backend.redis()),
        )
        running = asyncio.create_task(runner.run(job_id, run=1))
        async with asyncio.timeout(10):
            await gate.entered.wait()
        mid = await client.get(job_id)
        assert (mid.status, mid.worker, mid.run) == (JobStatus.RUNNING, "worker-7", 1)
        assert mid.started_at is not None
        assert mid.finished_at is None
        gate.release.set()
        assert await running == "succeeded"
    done = await client.get(job_id)
    assert done.status == JobStatus.SUCCEEDED
    assert done.finished_at is not None
    assert done.started_at is not None
    assert done.finished_at >= done.started_at


async def test_replaying_a_persisted_run_adds_nothing(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("hello"))
    await backend.run_worker()
    job = await client.get(job_id)
    attempts = await backend.store.jobs.attempts(job_id, tenant=ANY_TENANT)
    started = StartedJob(job.id, job.batch_id, job.custom_id, job.tenant, job.user_id, job.request)
    billed = Attempt(
        deployment=attempts[0]["deployment"],
        provider="p",
        model="m",
        outcome=AttemptOutcome.SUCCESS,
        usage=Usage(input_tokens=5, output_tokens=5),
        cost_usd=0.5,
    )
    # The same run written again (a retried transaction): the unique keys swallow it.
    applied = await backend.store.runs.finish(started, run=job.run, attempts_made=[billed], result=None)
    assert applied is False
    assert len(await backend.store.ledger.rows(job_id=job_id)) == 1
    assert (await client.get(job_id)).result == job.result
    # And the database itself refuses a second charge for the same attempt, whoever inserts it.
    row = (await backend.store.ledger.rows(job_id=job_id))[0]
    del row["id"]
    with pytest.raises(IntegrityError):
        async with backend.store.engine.begin() as conn:
            await conn.execute(ledger.insert(), row)


async def test_cancel_before_run(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(items(10))
    job_ids = [job.id async for job in client.results(batch_id)]
    assert await client.cancel(batch_id, job_id=job_ids[0]) == 1
    assert await client.cancel(batch_id) == 9
    assert await client.cancel(batch_id) == 0

    assert await backend.run_worker() == 0  # nothing left on the queue

    batch = await client.batch(batch_id)
    assert batch.counts == {JobStatus.CANCELLED: 10}
    assert batch.status == "cancelled"
    assert await backend.store.ledger.rows(batch_id=batch_id) == []
    events = await all_events(client, batch_id)
    assert [e.type for e in events].count("job.cancelled") == 10
    assert events[-1].type == "batch.completed"
    assert events[-1].data["cancelled"] == 10


async def test_wait_subscribes_then_checks(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("hello"))
    waiter = asyncio.create_task(client.wait(job_id))
    await asyncio.sleep(0)  # let it subscribe; the worker finishing afterwards must wake it
    await backend.run_worker()
    async with asyncio.timeout(10):
        job = await waiter
    assert job.status == JobStatus.SUCCEEDED
    # Already finished: returns at once.
    async with asyncio.timeout(10):
        assert (await client.wait(job_id)).status == JobStatus.SUCCEEDED


async def test_events_resume_from_an_id(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(items(12))
    await backend.run_worker()
    everything = await all_events(client, batch_id)
    resumed = [e async for e in client.events(batch_id, after=everything[4].id)]
    assert resumed == everything[5:]


async def test_requeue_rebuilds_a_lost_queue_from_sql(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(items(10))
    await backend.run_worker(max_burst_jobs=4)
    assert (await client.batch(batch_id)).counts == {JobStatus.SUCCEEDED: 4, JobStatus.QUEUED: 6}

    await client.redis.flushdb()  # Redis lost everything: queue, events, counters
    assert await client.requeue(batch_id) == 6
    assert (await client.progress(batch_id)).done == 4
    await backend.run_worker()

    assert (await client.batch(batch_id)).counts == {JobStatus.SUCCEEDED: 10}
    events = await all_events(client, batch_id)
    # The stream went with the data: requeue put back the 4 earlier jobs' events, the workers the 6.
    assert [e.type for e in events].count("job.succeeded") == 10
    assert events[-1].type == "batch.completed"
    assert events[-1].data["done"] == 10
    assert await client.requeue(batch_id) == 0


async def test_a_job_that_never_finishes_is_failed_after_max_tries(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("hello"))
    # As if five deliveries had started the job and died: the next one gives up.
    async with backend.store.engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == job_id).values(starts=backend.settings.max_tries))
    await backend.run_worker()

    job = await client.get(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error == {
        "type": "MaxTriesExceeded",
        "message": "gave up after 5 deliveries that did not finish",
    }
    assert await backend.store.ledger.rows(job_id=job_id) == []
    events = await all_events(client, job.batch_id)
    assert [e.type for e in events if e.type.startswith("job.")] == ["job.failed"]


async def test_routing_that_outlives_the_job_timeout_fails_the_job(backend: Backend, trio: Catalog) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("hello"))
    async with Router.from_settings(backend.settings, catalog=trio, sim_world=sim_world_for(trio)) as router:
        never = _Gate(router)  # holds the call forever
        events = EventBus(await backend.redis(), retention_s=60)
        runner = JobRunner(
            cast(Router, never),
            backend.store,
            events,
            worker_id="w",
            budgets=Budgets(await backend.redis()),
            route_timeout_s=0.05,
        )
        assert await runner.run(job_id, run=1) == "failed"
    job = await client.get(job_id)
    assert job.error is not None
    assert job.error["type"] == "JobTimeoutError"
    assert "0.05s" in job.error["message"]
