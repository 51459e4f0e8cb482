"""The arq worker: settings, start-up/shut-down hooks and the one job function.

`routeq worker` runs it (`build_worker`); so does `arq workers.WorkerSettings`. Start-up builds the
router (its catalog and SDK clients, with breakers, limits and live stats in Redis shared by the
fleet), the budgets, the SQL engine, the event bus and the job runner once per process, as one
`WorkerContext` (workers/context.py, built by workers/startup.py) stored in arq's `ctx`; each job
reads it back with `worker_context(ctx)`. What a caller shares (`Shared`: store, catalog, sim world,
metrics) replaces the part start-up would build, and shut-down closes only what start-up opened.

Crash recovery: arq marks a started job with `arq:in-progress:<id>` and only hands it to another
worker once that key expires. arq sets its TTL to the longest job timeout + 10 s (310 s here);
`RouteqWorker` sets it to `job_lease_s` (15 s) instead and renews it for its running jobs every
third of that, so a SIGKILLed worker's jobs run again within `job_lease_s` + one poll while a
long-running job on a live worker is never taken from it. docs/arq.md says why, and what else
about arq shaped this module (Retry, max_tries, the poll scan, Redis errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import arq.worker
from arq.connections import ArqRedis
from arq.connections import log_redis_info as _arq_log_redis_info
from arq.utils import timestamp_ms
from arq.worker import Function, Retry, Worker, func
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from storage import keys
from storage.bus.notifier import Notifier, Signal, exact_pattern
from storage.bus.queue import JOB_FUNCTION, JobClaimer, JobEnder, deserialize, serialize
from storage.bus.registry import queue_stats
from storage.bus.transactions import worker_client
from storage.connections import redis_settings
from storage.settings import Settings
from workers.context import Shared, WorkerContext, attach, detach, worker_context
from workers.deferral import keep_payload, requeue
from workers.runner import JobDeferred
from workers.startup import open_context

__all__ = [
    "ContextHook",
    "RouteqWorker",
    "build_worker",
    "make_worker_settings",
    "route_job",
    "run_worker",
    "worker_settings_class",
]

logger = logging.getLogger("routeq.worker")

# Jobs whose persistence hit a Redis or database outage are retried after this many seconds.
_INFRA_RETRY_S = (1, 2, 5, 10, 30)
# arq's own end-of-job transaction is retried this way through a Redis outage (about 30 s).
_FINISH_RETRY_S = (0.2, 0.5, 1, 2, 4, 8, 15)


# What build_worker's caller may run with the started context (bench timing, test scrapes).
ContextHook = Callable[[WorkerContext], Awaitable[None]]


@dataclass(frozen=True)
class _Lifecycle:
    """arq's `on_startup`/`on_shutdown` for one worker: their inputs travel here, not in `ctx`."""

    settings: Settings
    shared: Shared
    after_startup: ContextHook | None = None
    before_shutdown: ContextHook | None = None

    async def startup(self, ctx: dict[str, Any]) -> None:
        """Build the worker context once per process and store it in `ctx` (arq `on_startup`)."""
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{id(ctx):x}"
        context = await open_context(ctx["redis"], self.settings, self.shared, worker_id=worker_id)
        attach(ctx, context)
        if self.after_startup is not None:
            await self.after_startup(context)

    async def shutdown(self, ctx: dict[str, Any]) -> None:
        """Close what `startup` opened (arq `on_shutdown`)."""
        context = detach(ctx)
        if context is None:
            return  # start-up failed and closed what it had opened, or never ran
        try:
            if self.before_shutdown is not None:
                await self.before_shutdown(context)
        finally:
            await context.close()


async def route_job(ctx: dict[str, Any], job_id: str, carried: dict[str, Any] | None = None) -> str:
    """arq job function: route one routeq job; returns its final status.

    `carried`: a deferred job's request (tenant, batch), written into its payload at its deferral.
    """
    context = worker_context(ctx)
    run: int = ctx["job_try"]  # arq's own entry: this delivery's number, from 1
    try:
        return await context.runner.run(job_id, run=run, carried=carried)
    except JobDeferred as exc:
        # Every candidate is full: wait in the queue, not in a worker slot. A turn in a waiting
        # line is exact (spread 0); the router's guess is spread over the window, so waiting jobs
        # do not all race for the first free slot (and get deferred again).
        delay = exc.delay_s + random.uniform(0.0, exc.spread_s)
        logger.debug("%s", exc)
        if context.deferrals is None:
            await keep_payload(ctx["redis"], job_id, delay)
            raise Retry(defer=delay) from exc
        if not await requeue(context.deferrals, ctx, job_id, exc, delay):
            raise Retry(defer=delay) from exc
        raise Retry() from exc  # no defer: the score is set already, arq leaves it
    except (SQLAlchemyError, RedisError, OSError) as exc:
        # Redis or the database is down: try again later rather than leave the job `running`.
        delay = _INFRA_RETRY_S[min(run, len(_INFRA_RETRY_S)) - 1]
        logger.warning("job %s try %d hit %s; retrying in %ss", job_id, run, exc, delay)
        raise Retry(defer=delay) from exc


# Most jobs one claim takes; a worker with more free slots claims again at once. Idle workers wake on
# the same ping: small claims share a burst among them (as arq's start, one id per transaction).
_CLAIM_AT_ONCE = 10

# arq counts every delivery, deferrals for capacity included, and drops a job silently past its
# max_tries, leaving it `running` in SQL. routeq counts the runs that matter itself (`jobs.starts`,
# see JobRunner), so arq's own limit is set out of reach.
_ARQ_MAX_TRIES = 1_000_000


def job_function(settings: Settings) -> Function:
    return func(route_job, name=JOB_FUNCTION, timeout=settings.job_timeout_s, max_tries=_ARQ_MAX_TRIES)


def make_worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker` built from routeq settings (start-up builds everything)."""
    return _worker_options(settings, _Lifecycle(settings, Shared()))


def _worker_options(settings: Settings, lifecycle: _Lifecycle) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "functions": [job_function(settings)],
        "queue_name": settings.queue_name,
        "on_startup": lifecycle.startup,
        "on_shutdown": lifecycle.shutdown,
        "max_jobs": settings.worker_concurrency,
        "queue_read_limit": settings.read_limit,
        "poll_delay": settings.poll_delay_s,
        # The job function carries its own timeout and max_tries (see job_function).
        "keep_result": 0,  # results live in SQL; arq's copy would only cost memory
        "job_completion_wait": settings.shutdown_grace_s,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
    }
    if settings.redis_url is not None:
        kwargs["redis_settings"] = redis_settings(settings.redis_url)
    return kwargs


def worker_settings_class(settings: Settings) -> type:
    """A `WorkerSettings` class for arq's command line (`arq workers.WorkerSettings`).

    arq's command line builds a plain `arq.Worker`: it works, but a killed worker's jobs then wait
    arq's in-progress TTL (job timeout + 10 s) instead of `job_lease_s`. Prefer `routeq worker`.
    """
    attributes: Mapping[str, Any] = make_worker_settings(settings)
    return type("WorkerSettings", (), dict(attributes))


async def _log_redis_info(redis: Redis, log_func: Callable[[str], Any]) -> None:
    # fakeredis has no INFO command, which arq's start-up logging needs (see docs/arq.md).
    if redis.connection_pool.connection_class.__module__.startswith("fakeredis"):
        log_func("redis: embedded in-process (fakeredis)")
        return
    await _arq_log_redis_info(redis, log_func)


class RouteqWorker(Worker):
    """arq's `Worker` with short, renewed job leases, one-call claims and a poll loop woken by pings.

    Leases: see the module docstring. Client: `storage.bus.transactions.worker_client` (commands
    packed by hiredis; transactions, as arq's start of each job, sent with the other calls).

    Claims: arq's poll reads the first `queue_read_limit` due ids, where (in arq) jobs running
    anywhere in the fleet stay until they end, and checks each in a WATCH/EXISTS/ZSCORE/MULTI
    transaction: with more jobs running fleet-wide than that limit, a worker with free slots saw
    only running jobs and starved. Here `_poll_iteration` claims with one Lua call
    (`storage.bus.queue.JobClaimer`) that takes arq's own decision for due ids and moves each job
    it takes from the queue to the queue's running set until its delivery ends (`finish_job`,
    `finish_failed_job`: one script), so a claim never reads the jobs running fleet-wide; it starts
    the claimed jobs as arq's `start_jobs` would (same semaphore, counter and `run_job`). arq's keys
    keep their meaning; a dead worker's job goes back on the queue at the first claim after its
    lease expires (docs/arq.md).

    Wake-ups: arq sleeps `poll_delay` between polls. Here arq's own loop (`main`, `poll`) runs with
    a delay of 0 and each iteration ends waiting for the first of: a ping on
    `routeq:queue-wake:<queue>` (every enqueue and re-queue publishes one; one subscription per
    worker through `storage.bus.notifier.Notifier`), one of this worker's jobs ending (a free
    slot), the next deferred job falling due, or `poll_delay` (`idle_wait_s`). A lost ping costs
    at most `poll_delay`; the poll itself never depends on one.
    """

    def __init__(self, *args: Any, lease_s: float = 15.0, wake: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lease_s = lease_s
        self.in_progress_timeout_s = lease_s  # arq's default is the longest job timeout + 10 s
        # arq's loop (`arq.utils.poll`) sleeps `poll_delay_s` minus the iteration's time: 0 makes
        # it go straight on, and the iteration waits itself (`_wait_for_work`).
        self.idle_wait_s = self.poll_delay_s
        self.poll_delay_s = 0.0
        # False: poll every idle_wait_s only, as arq does (no pings, no wake on a freed slot).
        self.wake = wake
        self.polls = 0  # claims made, for tests
        self.waiting = False  # in _wait_for_work, for tests
        self._work = Signal()
        self._claimer: JobClaimer | None = None
        self._next_due_ms: int | None = None
        # Running job -> its queue score when claimed and the claim's token (JobEnder).
        self._claimed: dict[str, tuple[int, str]] = {}
        self._claim_tokens = f"{secrets.token_hex(6)}:"  # + the claim's number: each claim's own
        self._claim_due, self._pings_seen = True, 0  # see _claim_and_start
        self._ended: list[tuple[str, asyncio.Task[None]]] = []
        self._subscription = contextlib.AsyncExitStack()
        self.notifier: Notifier | None = None

    async def _poll_iteration(self) -> None:
        await self._poll_once()
        # arq's burst worker stops once the queue is empty: jobs running here or elsewhere used to
        # keep their entries there until they ended, and may still come back to it (a retry, a
        # deferral, a dead worker's job). Now they are in the running set: polling goes on while
        # this worker runs jobs (no need to ask Redis, nor for arq's own look at the queue after
        # each poll), or while the queue is empty and jobs run elsewhere.
        while (
            self.burst
            and not 0 <= self.max_burst_jobs <= self._jobs_started()
            and (self.job_counter > 0 or await self._only_running())
        ):
            await self._poll_once()

    async def _only_running(self) -> bool:
        """True when the queue is empty and jobs are running (here or elsewhere): burst mode only."""
        try:
            stats = await queue_stats(self.pool, self.queue_name, now_ms=timestamp_ms())
        except (RedisError, OSError):
            return False  # arq's own check of the queue decides
        return stats.running > 0 and stats.depth == stats.running

    async def _poll_once(self) -> None:
        # arq's poll loop dies on the first Redis error that its client does not retry (its
        # WATCH/MULTI pipelines are not retried on a dropped connection). Here an outage only
        # pauses polling; jobs whose bookkeeping failed come back when their lease runs out.
        try:
            await self._claim_and_start()
            if self.allow_abort_jobs:  # as arq (routeq itself does not abort running jobs)
                await self._cancel_aborted_jobs()
            ended, self._ended = self._ended, []  # as arq: reap, surfacing run_job errors; the ended
            for job_id, task in ended:  # only (arq walks every task: 5% of the CPU at 3,000 running)
                if self.tasks.get(job_id) is task:
                    del self.tasks[job_id]
                    task.result()
            await self.heart_beat()
        except (RedisError, OSError) as exc:
            logger.warning("Redis unavailable (%s); polling again in 1s", exc)
            await asyncio.sleep(1)
            return
        await self._wait_for_work()

    async def _claim_and_start(self) -> None:
        """arq's read of the queue and `start_jobs`, as one claim of as many jobs as slots are free.

        Only when one is due: a ping came (a job was queued), a wait timed out, or the last claim may
        have left due jobs behind (cut at its limit, or put off with no free slot). A job's end alone
        wakes the loop to reap it, and calls for no claim after one that took every due job.
        """
        if self._claimer is None:
            self._claimer = JobClaimer(self.pool, self.queue_name)
            await self._subscribe()
        limit = min(self.max_jobs - self.job_counter, self.queue_read_limit, _CLAIM_AT_ONCE)
        if self.burst and self.max_burst_jobs >= 0:
            limit = min(limit, self.max_burst_jobs - self._jobs_started())
        if not self.allow_pick_jobs or limit < 1:  # no free slot: nothing falling due is waited for,
            self._next_due_ms, self._claim_due = None, True  # and the next slot freed claims
            return
        if not self._claim_due and self._work.sets == self._pings_seen:
            return
        self.polls += 1
        self._claim_due, self._pings_seen = False, self._work.sets  # a ping from here on calls again
        try:
            lease_ms = int(self.in_progress_timeout_s * 1000)
            token = f"{self._claim_tokens}{self.polls}"
            claim = await self._claimer.claim(
                limit=limit, lease_ms=lease_ms, now_ms=timestamp_ms(), token=token
            )
        except BaseException:
            self._claim_due = True
            raise
        self._next_due_ms = claim.next_due_ms
        for job_id, score in claim.jobs:
            self._claimed[job_id] = (score, token)
            # Never blocks: `sem` holds max_jobs + 1 and only `limit` free slots were claimed.
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(functools.partial(self._job_ended, job_id))
            self.tasks[job_id] = task
        if len(claim.jobs) == limit:  # cut at its limit: there may be more, with slots for them
            self._claim_due = True
            self._work.nudge()

    def _job_ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._ended.append((job_id, task))  # reaped by the next poll
        self._claimed.pop(job_id, None)  # (finish_job took it, unless run_job failed before its end)
        self._release_sem_dec_counter_on_complete()
        if self.wake:
            self._work.nudge()  # a free slot: look at the queue now (if a claim is due), not a poll later

    async def _subscribe(self) -> None:
        if not self.wake:
            return
        channel = keys.queue_wake_channel(self.queue_name)
        self.notifier = Notifier(self.pool, patterns=(exact_pattern(channel),))
        await self._subscription.enter_async_context(self.notifier.watch(channel, self._work))
        self._subscription.push_async_callback(self.notifier.close)

    async def _wait_for_work(self) -> None:
        """Wait for a ping, a free slot, the next deferred job's time or `idle_wait_s`, first of all."""
        timeout = self.idle_wait_s
        if self._next_due_ms is not None:
            timeout = min(timeout, max(0.0, (self._next_due_ms - timestamp_ms()) / 1000))
        self.waiting = True
        try:
            async with asyncio.timeout(timeout):
                await self._work.wait()
        except TimeoutError:
            self._claim_due = True  # the poll as arq's, or the next deferred job's time
        finally:
            self.waiting = False

    async def finish_job(self, job_id: str, finish: bool, *args: Any) -> None:
        """arq's end-of-job transaction, retried through a short Redis outage.

        A job that goes back to the queue (`Retry`, deferred for capacity, cancelled at shut-down)
        is announced like a new one: another worker takes it now, or waits for its time exactly.
        """
        ender = JobEnder(self.pool, self.queue_name)
        score, token = self._claimed.pop(job_id, (None, None))
        for delay in _FINISH_RETRY_S:
            try:
                await ender.end(job_id, finish, *args, claimed_score=score, token=token)
                break
            except (RedisError, OSError) as exc:
                logger.warning("could not record a finished job (%s); retrying in %ss", exc, delay)
                await asyncio.sleep(delay)
        else:
            await ender.end(job_id, finish, *args, claimed_score=score, token=token)
        if not finish:
            await self._announce_requeue()

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq's end of a job that never ran (payload gone, max tries, aborted before its start):
        arq's own transaction is `finish_job`'s with `finish`, which also takes the job out of the
        running set its claim put it in."""
        keep = self.keep_result_forever or self.keep_result_s > 0
        data = result_data if keep else None
        await self.finish_job(job_id, True, data, self.keep_result_s, self.keep_result_forever, None, None)

    async def _announce_requeue(self) -> None:
        try:
            await self.pool.publish(keys.queue_wake_channel(self.queue_name), b"")
        except (RedisError, OSError) as exc:  # only latency is lost: every worker still polls
            logger.warning("could not announce a re-queued job: %s", exc)

    async def main(self) -> None:
        serializers = {"job_serializer": self.job_serializer, "job_deserializer": self.job_deserializer}
        options = {"default_queue_name": self.queue_name, **serializers}  # arq's main's create_pool
        self._pool = await worker_client(self._pool, self.redis_settings, **options)
        renewer = asyncio.create_task(self._renew_leases())
        try:
            await super().main()
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self._subscription.aclose()

    async def _renew_leases(self) -> None:
        """Every third of the lease, push back the expiry of every job this worker is running.

        Runs as its own task: the poll loop can block for long (waiting for a free job slot).
        A Redis outage is logged and retried on the next beat; the leases then last until it.
        """
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew_leases_once()
            except (RedisError, OSError) as exc:
                logger.warning("could not renew job leases: %s", exc)

    async def renew_leases_once(self) -> None:
        """Renew the lease of each job running here (those its claim still owns) and this worker's
        entry in the registry."""
        if self._pool is None:
            return
        if self._claimer is not None:
            # A job not claimed here (none are, but arq's own start could) shows no token: any live lease.
            leases = {job_id: self._claimed.get(job_id, (0, ""))[1] for job_id in self.job_tasks}
            lost = await self._claimer.renew(leases, lease_ms=int(self.lease_s * 1000), now_ms=timestamp_ms())
            for job_id in lost:
                logger.warning(
                    "job %s: its lease lapsed (this worker stalled past it) or another worker took the "
                    "job; not renewed, and it may run twice (routeq's writes are idempotent)",
                    job_id,
                    extra={"job_id": job_id},
                )
        with contextlib.suppress(LookupError):  # none before start-up has finished
            context = worker_context(self.ctx)
            record = context.record(running=len(self.job_tasks))
            await self.pool.hset(keys.WORKERS, context.worker_id, record)  # type: ignore[misc]


async def run_worker(worker: Worker) -> None:
    """Run `worker` until a signal (or `main_task.cancel()`) stops it, then close it cleanly.

    On SIGTERM/SIGINT arq stops taking jobs, waits up to `shutdown_grace_s` for running ones, then
    cancels the rest, which it re-queues. Those tasks end cancelled; they are reaped here so that
    closing the worker does not re-raise their cancellation.
    """
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await worker.async_run()
    finally:  # also when start-up failed (bad catalog, database gone): the Redis pool is closed
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        worker.tasks.clear()
        await worker.close()


def build_worker(
    settings: Settings,
    *,
    redis: ArqRedis | None = None,
    shared: Shared | None = None,
    burst: bool = False,
    max_burst_jobs: int = -1,
    handle_signals: bool = True,
    poll_delay: float | None = None,
    max_jobs: int | None = None,
    after_startup: ContextHook | None = None,
    before_shutdown: ContextHook | None = None,
) -> RouteqWorker:
    """A `RouteqWorker` for routeq jobs.

    Args:
        settings: everything else (queue, concurrency, timeouts, lease, Redis URL).
        redis: an existing pool to share (embedded mode, tests); None connects to
            `settings.redis_url`. The worker closes it either way when it closes.
        shared: store, catalog, sim world or metrics to use instead of building them at start-up.
        burst: exit once the queue is empty; `max_burst_jobs` (-1: no limit) stops it sooner.
        handle_signals: stop on SIGINT/SIGTERM (False where the caller owns the signals).
        poll_delay: seconds between queue polls; None keeps `settings.poll_delay_s`.
        max_jobs: jobs run at once; None keeps `settings.worker_concurrency`.
        after_startup: awaited with the context once start-up has built it.
        before_shutdown: awaited with the context before shut-down closes it.
    """
    lifecycle = _Lifecycle(settings, shared or Shared(), after_startup, before_shutdown)
    kwargs = _worker_options(settings, lifecycle)
    if redis is not None:
        kwargs.pop("redis_settings", None)
        kwargs["redis_pool"] = redis
    if poll_delay is not None:
        kwargs["poll_delay"] = poll_delay
    if max_jobs is not None:
        kwargs["max_jobs"] = max_jobs
    return RouteqWorker(
        **kwargs,
        burst=burst,
        max_burst_jobs=max_burst_jobs,
        handle_signals=handle_signals,
        lease_s=settings.job_lease_s,
        wake=settings.queue_wake,
    )


# The one patch of a library global: arq's worker calls this name at start-up.
arq.worker.log_redis_info = _log_redis_info  # type: ignore[attr-defined]
