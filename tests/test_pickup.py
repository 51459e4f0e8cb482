"""Pick-up: an idle worker starts a new job on the enqueue's ping, and never starves behind jobs
running on other workers (issue 17).

No test here measures time (bench/pickup.py does): a worker that only woke on `poll_delay` is made
to wait an hour, so a missing wake-up shows as the test's timeout, not as a slow assertion.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

import pytest
from arq.connections import ArqRedis
from arq.typing import WorkerCoroutine
from arq.utils import timestamp_ms
from arq.worker import Retry, Worker, func

from storage import keys
from storage.bus.notifier import Notifier, exact_pattern
from storage.bus.queue import JOB_FUNCTION, JobClaimer, deserialize, enqueue_jobs, serialize
from tests.backends import Backend
from tests.fleet import until
from workers.worker import RouteqWorker, run_worker

HOUR_S = 3600.0  # a poll delay no test waits out

JobFunction = WorkerCoroutine


def worker_on(
    backend: Backend,
    redis: ArqRedis,
    job: JobFunction,
    *,
    poll_delay: float = HOUR_S,
    max_jobs: int = 10,
    read_limit: int = 5,
    wake: bool = True,
) -> RouteqWorker:
    """A RouteqWorker on the backend's queue running `job` instead of routing (arq's own start-up)."""
    return RouteqWorker(
        functions=[func(job, name=JOB_FUNCTION, max_tries=100)],
        queue_name=backend.settings.queue_name,
        redis_pool=redis,
        handle_signals=False,
        poll_delay=poll_delay,
        max_jobs=max_jobs,
        queue_read_limit=read_limit,
        keep_result=0,
        job_serializer=serialize,
        job_deserializer=deserialize,
        lease_s=30,
        wake=wake,
    )


@asynccontextmanager
async def running(worker: RouteqWorker) -> AsyncIterator[RouteqWorker]:
    """Run `worker` until the block ends; yields once it has polled and waits, subscribed if it wakes."""
    task = asyncio.create_task(run_worker(worker))

    def idle() -> bool:
        subscribed = not worker.wake or (worker.notifier is not None and worker.notifier.subscriptions > 0)
        return worker.polls > 0 and worker.waiting and subscribed

    try:
        await until(idle, timeout_s=15, what="the worker to poll, subscribe and wait", every_s=0.005)
        yield worker
    finally:
        worker.handle_sig(signal.SIGINT)
        await task


def recorder(into: list[str], release: asyncio.Event | None = None) -> JobFunction:
    async def job(ctx: dict[str, Any], job_id: str) -> None:
        into.append(job_id)
        if release is not None:
            await release.wait()

    return cast(JobFunction, job)


async def test_an_idle_worker_starts_a_new_job_on_the_enqueue_ping(backend: Backend) -> None:
    redis = await backend.redis()
    ran: list[str] = []
    async with running(worker_on(backend, redis, recorder(ran))):
        await enqueue_jobs(redis, ["job_new"], queue_name=backend.settings.queue_name)
        await until(lambda: ran == ["job_new"], timeout_s=15, what="the job to start without a poll")


async def test_without_wake_ups_the_poll_still_runs_every_job(backend: Backend) -> None:
    """A lost ping (here: none at all) costs latency, never a job."""
    redis = await backend.redis()
    ran: list[str] = []
    async with running(worker_on(backend, redis, recorder(ran), poll_delay=0.01, wake=False)):
        await enqueue_jobs(redis, ["job_1", "job_2"], queue_name=backend.settings.queue_name)
        await until(lambda: sorted(ran) == ["job_1", "job_2"], timeout_s=15, what="both jobs to run")


async def test_an_idle_worker_is_not_starved_by_jobs_running_on_another(backend: Backend) -> None:
    """Worker A runs 20 jobs (more than B's read limit of 5); idle B takes the next one.

    arq's own poll reads the first 5 due ids - all A's, all leased - and B would wait for A.
    """
    queue = backend.settings.queue_name
    release = asyncio.Event()
    on_a: list[str] = []
    on_b: list[str] = []
    redis_a, redis_b = await backend.redis(), await backend.redis()
    busy = [f"job_a{n:02}" for n in range(20)]
    async with running(worker_on(backend, redis_a, recorder(on_a, release), max_jobs=20, read_limit=20)):
        await enqueue_jobs(redis_a, busy, queue_name=queue)
        await until(lambda: len(on_a) == 20, timeout_s=15, what="worker A to run 20 jobs")
        async with running(worker_on(backend, redis_b, recorder(on_b, release))):
            await enqueue_jobs(redis_b, ["job_b"], queue_name=queue)
            await until(lambda: on_b == ["job_b"], timeout_s=15, what="idle worker B to take the new job")
            release.set()

            async def drained() -> bool:
                return await redis_a.zcard(queue) == 0  # type: ignore[no-any-return]

            await until(drained, timeout_s=15, what="every job to finish")
    assert sorted(on_a) == busy  # each job ran once, on the worker that claimed it


async def test_a_poll_reaps_the_jobs_that_ended_and_keeps_the_running_ones(backend: Backend) -> None:
    """Ended jobs leave `tasks` at the next poll (their ends are noted as they happen: no poll walks
    every running job), the running ones stay, and a job id started again is not reaped with its
    earlier run."""
    releases = {f"job_{n}": asyncio.Event() for n in range(5)}
    ran: list[str] = []

    async def job(ctx: dict[str, Any], job_id: str) -> None:
        ran.append(job_id)
        await releases[job_id].wait()

    redis = await backend.redis()
    async with running(worker_on(backend, redis, cast(JobFunction, job))) as worker:
        await enqueue_jobs(redis, list(releases), queue_name=backend.settings.queue_name)
        await until(lambda: len(ran) == 5, timeout_s=15, what="five jobs to start")
        releases["job_0"].set()
        releases["job_1"].set()
        running_ids = {"job_2", "job_3", "job_4"}
        await until(
            lambda: set(worker.tasks) == running_ids, timeout_s=15, what="the two ended jobs to be reaped"
        )
        assert all(not worker.tasks[job_id].done() for job_id in running_ids)
        await until(lambda: worker.waiting and not worker._ended, timeout_s=15, what="the poll to reap")
        releases["job_0"].clear()
        await enqueue_jobs(redis, ["job_0"], queue_name=backend.settings.queue_name)  # a second run
        await until(lambda: ran.count("job_0") == 2, timeout_s=15, what="job_0 to run again")
        assert set(worker.tasks) == running_ids | {"job_0"}
        for release in releases.values():
            release.set()
        await until(lambda: not worker.tasks, timeout_s=15, what="every job to be reaped")


async def test_a_job_ending_after_a_claim_that_took_every_due_job_claims_nothing(backend: Backend) -> None:
    """A job's end wakes the poll to reap it; it claims only if the last claim may have left due jobs
    behind (cut at its limit, or put off with no free slot). A job queued since pings, and is claimed."""
    redis = await backend.redis()
    ran: list[str] = []
    async with running(worker_on(backend, redis, recorder(ran))) as worker:
        await enqueue_jobs(redis, ["job_1"], queue_name=backend.settings.queue_name)
        await until(lambda: ran == ["job_1"], timeout_s=15, what="the job to start")
        await until(lambda: not worker.tasks and worker.waiting, timeout_s=15, what="the job to be reaped")
        claims = worker.polls
        await enqueue_jobs(redis, ["job_2"], queue_name=backend.settings.queue_name)
        await until(lambda: ran == ["job_1", "job_2"], timeout_s=15, what="the next job to start on its ping")
        await until(lambda: not worker.tasks and worker.waiting, timeout_s=15, what="the job to be reaped")
        assert worker.polls == claims + 1  # the ping's claim; the job's end made none


async def test_a_slot_freed_on_a_full_worker_takes_the_job_waiting_for_it(backend: Backend) -> None:
    release = asyncio.Event()
    ran: list[str] = []
    redis = await backend.redis()
    async with running(worker_on(backend, redis, recorder(ran, release), max_jobs=1)):
        await enqueue_jobs(redis, ["job_1", "job_2"], queue_name=backend.settings.queue_name)
        await until(lambda: ran == ["job_1"], timeout_s=15, what="the first job to start")
        release.set()
        await until(lambda: ran == ["job_1", "job_2"], timeout_s=15, what="the second job, on the freed slot")


async def test_a_deferred_job_runs_when_due_not_a_poll_later(backend: Backend) -> None:
    """`Retry(defer=...)` re-queues with a later score; the worker waits for that time, not an hour."""
    redis = await backend.redis()
    tries: list[int] = []

    async def defer_once(ctx: dict[str, Any], job_id: str) -> None:
        tries.append(ctx["job_try"])
        if len(tries) == 1:
            raise Retry(defer=0.05)

    async with running(worker_on(backend, redis, cast(JobFunction, defer_once))):
        await enqueue_jobs(redis, ["job_later"], queue_name=backend.settings.queue_name)
        await until(lambda: tries == [1, 2], timeout_s=15, what="the deferred job's second try")


async def test_a_job_re_queued_at_shut_down_wakes_another_worker(backend: Backend) -> None:
    """Worker A is stopped mid-job: arq re-queues the job, and idle B takes it on A's ping."""
    redis_a, redis_b = await backend.redis(), await backend.redis()
    on_a: list[str] = []
    on_b: list[str] = []
    stuck = asyncio.Event()  # never set: A's run ends only by cancellation
    async with AsyncExitStack() as b_stack:
        async with AsyncExitStack() as a_stack:
            await a_stack.enter_async_context(running(worker_on(backend, redis_a, recorder(on_a, stuck))))
            await enqueue_jobs(redis_a, ["job_moved"], queue_name=backend.settings.queue_name)
            await until(lambda: on_a == ["job_moved"], timeout_s=15, what="A to start the job")
            await b_stack.enter_async_context(running(worker_on(backend, redis_b, recorder(on_b))))
        # A has stopped: its job is back in the queue, and B (polling hourly) was pinged.
        await until(lambda: on_b == ["job_moved"], timeout_s=15, what="B to take the re-queued job")


async def test_claims_skip_leased_and_future_jobs_and_report_the_next_due(backend: Backend) -> None:
    redis = await backend.redis()
    queue = backend.settings.queue_name
    now = timestamp_ms()
    await redis.zadd(queue, {f"job_run{n}": now - 1000 for n in range(700)})  # past one Lua page
    await redis.zadd(queue, {"job_free": now - 500, "job_later": now + 60_000, "job_sooner": now + 5_000})
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(700):
            pipe.set(keys.ARQ_IN_PROGRESS_PREFIX + f"job_run{n}", b"1", px=60_000)
        await pipe.execute()
    claimer = JobClaimer(redis, queue)

    claim = await claimer.claim(limit=5, lease_ms=30_000, now_ms=now)

    assert claim.jobs == [("job_free", now - 500)]
    assert claim.next_due_ms == now + 5_000
    assert 0 < await redis.pttl(keys.ARQ_IN_PROGRESS_PREFIX + "job_free") <= 30_000
    assert (await claimer.claim(limit=5, lease_ms=30_000, now_ms=now)).jobs == []  # leased now
    # Claimed, it left the queue for the running set, scored by its lease's expiry.
    assert await redis.zscore(queue, "job_free") is None
    assert await redis.zscore(keys.queue_running(queue), "job_free") == now + 30_000
    # A job leased by other means (a plain arq worker) stays in its place in the queue until its
    # lease goes: then it is claimed.
    await redis.delete(keys.ARQ_IN_PROGRESS_PREFIX + "job_run3")
    assert (await claimer.claim(limit=5, lease_ms=30_000, now_ms=now)).jobs == [("job_run3", now - 1000)]
    assert await redis.zcard(queue) == 701
    assert await redis.zcard(keys.queue_running(queue)) == 2


async def test_a_claimed_job_whose_lease_lapses_is_queued_again_and_claimed(backend: Backend) -> None:
    """A worker dies mid-job: its lease is not renewed. The next claim after the lease's expiry
    puts the job back on the queue at that expiry, ahead of jobs queued since, and takes it."""
    redis = await backend.redis()
    queue, running = backend.settings.queue_name, keys.queue_running(backend.settings.queue_name)
    now = timestamp_ms()
    await redis.zadd(queue, {"job_a": now - 100})
    claimer = JobClaimer(redis, queue)
    assert (await claimer.claim(limit=1, lease_ms=5_000, now_ms=now)).jobs == [("job_a", now - 100)]
    await redis.zadd(queue, {"job_b": now + 5_500})

    # Its lease is live: a claim before the expiry finds nothing to take back.
    assert (await claimer.claim(limit=5, lease_ms=5_000, now_ms=now + 4_000)).jobs == []
    await redis.delete(keys.ARQ_IN_PROGRESS_PREFIX + "job_a")  # the worker died; its lease ran out
    later = now + 6_000
    claim = await claimer.claim(limit=5, lease_ms=5_000, now_ms=later)
    assert claim.jobs == [("job_a", now + 5_000), ("job_b", now + 5_500)]
    assert await redis.zrange(running, 0, -1, withscores=True) == [
        (b"job_a", later + 5_000),
        (b"job_b", later + 5_000),
    ]


async def test_a_renewed_lease_keeps_a_job_running_however_its_entry_is_scored(backend: Backend) -> None:
    """A claim that finds a running entry past its score with the lease still live (a renewal in
    flight, another worker's clock) moves the entry to the lease's expiry and leaves the job alone."""
    redis = await backend.redis()
    queue, running = backend.settings.queue_name, keys.queue_running(backend.settings.queue_name)
    now = timestamp_ms()
    await redis.zadd(running, {"job_a": now - 1})
    await redis.set(keys.ARQ_IN_PROGRESS_PREFIX + "job_a", b"1", px=20_000)
    assert (await JobClaimer(redis, queue).claim(limit=5, lease_ms=5_000, now_ms=now)).jobs == []
    assert await redis.zcard(queue) == 0
    score = await redis.zscore(running, "job_a")
    assert score is not None
    assert now + 15_000 < score <= now + 20_000


async def test_claims_take_due_jobs_in_queue_order_up_to_the_limit(backend: Backend) -> None:
    redis = await backend.redis()
    queue = backend.settings.queue_name
    await redis.zadd(queue, {f"job_{n}": 1000 + n for n in range(10)})
    claim = await JobClaimer(redis, queue).claim(limit=3, lease_ms=1000, now_ms=timestamp_ms())
    assert claim.jobs == [("job_0", 1000), ("job_1", 1001), ("job_2", 1002)]
    assert claim.next_due_ms is None


async def test_enqueue_pings_only_its_own_queue(backend: Backend) -> None:
    redis = await backend.redis()
    queue = backend.settings.queue_name + ":[odd]*"  # glob characters: matched literally
    async with redis.pubsub() as pubsub:
        await pubsub.psubscribe(exact_pattern(keys.queue_wake_channel(queue)))
        async with asyncio.timeout(15):
            assert (await pubsub.get_message(timeout=None))["type"] == "psubscribe"
            await enqueue_jobs(redis, ["job_other"], queue_name=backend.settings.queue_name)
            await enqueue_jobs(redis, ["job_mine"], queue_name=queue)
            message = await pubsub.get_message(timeout=None)  # the first ping that matched
        assert message["channel"] == keys.queue_wake_channel(queue).encode()


async def test_a_worker_notifier_wakes_its_waiter_on_a_ping(backend: Backend) -> None:
    redis = await backend.redis()
    channel = keys.queue_wake_channel(backend.settings.queue_name)
    notifier = Notifier(redis, patterns=(exact_pattern(channel),))
    try:
        async with notifier.watch(channel) as woken:
            await until(lambda: notifier.subscriptions > 0, timeout_s=15, what="the subscription")
            await woken.wait()  # the subscription's own wake-up: read again
            await enqueue_jobs(redis, ["job_1"], queue_name=backend.settings.queue_name)
            async with asyncio.timeout(15):
                await woken.wait()
    finally:
        await notifier.close()


async def test_the_arq_internals_the_worker_relies_on() -> None:
    """arq's private loop, pinned: a new arq that changes these must fail here, not in production."""
    # main() drives _poll_iteration through arq.utils.poll(poll_delay_s): RouteqWorker sets 0 and
    # waits inside the iteration; run_job takes (job_id, score); finish_job's first two are these.
    assert "poll(self.poll_delay_s)" in inspect.getsource(Worker.main)
    assert "_poll_iteration" in inspect.getsource(Worker.main)
    assert list(inspect.signature(Worker.run_job).parameters) == ["self", "job_id", "score"]
    assert list(inspect.signature(Worker.finish_job).parameters)[:3] == ["self", "job_id", "finish"]
    assert callable(Worker._release_sem_dec_counter_on_complete)
    assert callable(Worker._cancel_aborted_jobs)
    assert "await self.start_jobs(" in inspect.getsource(Worker._poll_iteration)  # what we replace
    worker = RouteqWorker(
        functions=[func(recorder([]), name=JOB_FUNCTION)],
        queue_name="q",
        redis_pool=None,
        handle_signals=False,
        poll_delay=0.25,
    )
    assert (worker.poll_delay_s, worker.idle_wait_s) == (0.0, 0.25)


@pytest.mark.parametrize("channel", ["routeq:queue-wake:plain", "routeq:queue-wake:a*b?[c]\\d"])
def test_exact_pattern_escapes_glob_characters(channel: str) -> None:
    pattern = exact_pattern(channel)
    assert pattern.replace("\\", "") == channel.replace("\\", "")
    assert all(pattern[i - 1] == "\\" for i, c in enumerate(pattern) if c in "*?[]" and i > 0)


async def test_a_job_arq_ends_unrun_leaves_the_running_set_and_a_burst_worker_stops(backend: Backend) -> None:
    """arq ends a claimed job whose payload is gone without running it (`finish_failed_job`): the
    job leaves the running set its claim put it in, so a burst worker, which polls on while that set
    holds jobs, stops; one that did run ends the same way."""
    redis = await backend.redis()
    queue = backend.settings.queue_name
    ran: list[str] = []
    await enqueue_jobs(redis, ["job_ran"], queue_name=queue)
    await redis.zadd(queue, {"job_gone": timestamp_ms() - 1})  # queued, its payload lost
    worker = worker_on(backend, redis, recorder(ran))
    worker.burst = True
    await asyncio.wait_for(run_worker(worker), timeout=15)
    assert ran == ["job_ran"]
    assert await redis.zcard(queue) == 0
    assert await redis.zcard(keys.queue_running(queue)) == 0


async def test_a_worker_renews_the_leases_it_owns_and_not_one_another_claim_took(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """`renew_leases_once` on a worker running two claimed jobs: both leases are pushed back while
    they hold its claim's token; once one holds another claim's token (this worker stalled past
    its lease and another took the job) that lease is left to its owner, and the worker says so."""
    redis = await backend.redis()
    release = asyncio.Event()
    ran: list[str] = []
    leases = [keys.ARQ_IN_PROGRESS_PREFIX + job_id for job_id in ("job_1", "job_2")]
    worker = worker_on(backend, redis, recorder(ran, release))
    async with running(worker):
        await enqueue_jobs(redis, ["job_1", "job_2"], queue_name=backend.settings.queue_name)
        await until(lambda: sorted(ran) == ["job_1", "job_2"], timeout_s=15, what="both jobs to start")
        for lease in leases:
            await redis.pexpire(lease, 1_000)
        await worker.renew_leases_once()
        assert [await redis.pttl(lease) > 20_000 for lease in leases] == [True, True]  # lease_s is 30

        await redis.set(leases[1], "another:1", px=1_000)
        with caplog.at_level(logging.WARNING, logger="routeq"):
            await worker.renew_leases_once()
        assert await redis.pttl(leases[0]) > 20_000
        assert await redis.get(leases[1]) == b"another:1"
        assert await redis.pttl(leases[1]) <= 1_000
        assert "job job_2: its lease lapsed" in caplog.text
        release.set()
