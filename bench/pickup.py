"""Pick-up and event latency benchmark (a benchmark, not a test): wake-up pings against poll only.

Prints, for each mode (by default both, in one run on one Redis: "poll only", then "wake-up"):
1. Pick-up latency, p50/p99/max: one idle `RouteqWorker` (routeq's claim and poll loop, with a job
   function that only records when it started), N single jobs enqueued one at a time with
   `storage.bus.queue.enqueue_jobs`, each after the previous one started plus a random gap of up
   to `--gap-ms` (default 50 ms, one poll delay: a job starts just after a poll, so with shorter
   gaps every enqueue would come just after a poll too and poll-only pick-up would read as a whole
   poll delay instead of half of one on average). Measured from just before the enqueue to the
   job function's first line, on one clock (one process).
2. The pipeline, M jobs one at a time through `Client.submit` and the real worker (`build_worker`,
   the router on a 0 ms in-process sim, SQL commit, events script):
   - event latency: the job's finish (`jobs.finished_at`, taken just before its SQL commit) to a
     client's subscription (PSUBSCRIBE `routeq:job-done:*`, what `Client.wait` listens to)
     receiving the ping the events script publishes with `job.succeeded`;
   - submit to start: `Client.submit` called (SQL insert, then the enqueue) to arq's job start.
   Every job is checked to have succeeded.

Poll only is `ROUTEQ_QUEUE_WAKE=false`: a worker looks at the queue every `--poll-delay` (routeq's
default 0.05 s), so pick-up averages half of it. Wake-up is the default: the enqueue's ping wakes
the worker at once. Latencies depend on the machine and its load; compare the modes of one run.

The Redis database (default redis://127.0.0.1:6379/12, or ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd at
the start and between phases: give it one that holds nothing you want. The SQL store is a fresh
SQLite file in a temporary directory unless --database-url is given.

Run: `.venv/bin/python bench/pickup.py [--jobs N] [--pipeline-jobs M] [--poll-delay S] [--no-wake]`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import random
import signal
import statistics
import tempfile
import time
import tomllib
from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.worker import func
from throughput import close_services

from producer.client import Client
from router_core import SimulateMode
from router_core.catalog import parse_catalog
from router_core.models import ChatRequest, Message
from router_core.providers import sim_world_for
from storage import keys
from storage.bus.queue import JOB_FUNCTION, deserialize, enqueue_jobs, serialize
from storage.connections import connect_redis
from storage.jobs import ANY_TENANT, JobStatus
from storage.settings import Settings
from storage.sql.store import Store
from workers.context import Shared
from workers.worker import RouteqWorker, build_worker, run_worker

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
QUEUE = "bench:pickup"

CATALOG_TOML = """
[[deployments]]
id = "sim-a"
kind = "sim"
provider = "sim"
model = "sim-a-model"
quality = 0.7
latency_ms = 1
context_window = 100000
price = { input_per_mtok = 1.0, output_per_mtok = 4.0 }
sim = { latency_ms = 0 }
"""


def percentiles(samples_s: Sequence[float]) -> str:
    ms = sorted(s * 1000 for s in samples_s)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   max {ms[-1]:7.2f} ms   (n={len(ms)})"


async def until_idle(worker: RouteqWorker) -> None:
    """Until the worker has started up and waits for work, plus time for its subscription's wake-up."""
    for _ in range(20_000):
        if worker.waiting:
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.2)


async def pickup(settings: Settings, redis: ArqRedis, n: int, gap_ms: float) -> list[float]:
    """Enqueue → job function start for `n` single jobs, one at a time, on an idle worker."""
    started: dict[str, float] = {}
    began = asyncio.Event()

    async def job(ctx: dict[str, Any], job_id: str) -> None:
        started[job_id] = time.perf_counter()
        began.set()

    worker = RouteqWorker(
        functions=[func(job, name=JOB_FUNCTION)],
        queue_name=settings.queue_name,
        redis_pool=redis,
        handle_signals=False,
        poll_delay=settings.poll_delay_s,
        max_jobs=settings.worker_concurrency,
        keep_result=0,
        job_serializer=serialize,
        job_deserializer=deserialize,
        lease_s=settings.job_lease_s,
        wake=settings.queue_wake,
    )
    worker.log_results = False
    task = asyncio.create_task(run_worker(worker))
    latencies = []
    try:
        await until_idle(worker)
        for i in range(n):
            job_id = f"job_pickup{i:05}"
            began.clear()
            enqueued = time.perf_counter()
            await enqueue_jobs(redis, [job_id], queue_name=settings.queue_name)
            await asyncio.wait_for(began.wait(), timeout=10)
            latencies.append(started[job_id] - enqueued)
            await asyncio.sleep(random.uniform(0, gap_ms) / 1000)
    finally:
        worker.handle_sig(signal.SIGINT)
        await task
    return latencies


async def pipeline(
    settings: Settings, redis: ArqRedis, store: Store, n: int, gap_ms: float
) -> tuple[list[float], list[float]]:
    """(finish → job-done ping received, submit → job start) for `n` jobs through the real worker."""
    catalog = parse_catalog(tomllib.loads(CATALOG_TOML), source="<bench>")
    worker = build_worker(
        settings,
        redis=await connect_redis(settings),
        shared=Shared(store=store, catalog=catalog, sim_world=sim_world_for(catalog)),
        handle_signals=False,
    )
    job_started: dict[str, float] = {}

    async def on_job_start(ctx: dict[str, Any]) -> None:
        job_started[ctx["job_id"]] = time.time()

    worker.on_job_start = on_job_start
    pinged: dict[str, float] = {}
    arrived = asyncio.Event()

    async def listen() -> None:
        async with redis.pubsub() as pubsub:
            await pubsub.psubscribe(keys.job_done_channel("*"))
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None and message["type"] == "pmessage":
                    pinged[message["channel"].decode().rsplit(":", 1)[1]] = time.time()
                    arrived.set()

    listener = asyncio.create_task(listen())
    task = asyncio.create_task(run_worker(worker))
    client = Client(redis, store, settings)
    events, starts = [], []
    try:
        await until_idle(worker)
        for i in range(n):
            request = ChatRequest(messages=[Message(role="user", content=f"Say hello number {i}")])
            submitted = time.time()
            job_id = await client.submit(request)
            while job_id not in pinged:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), timeout=10)
            job = await store.jobs.get(job_id, tenant=ANY_TENANT)
            if job.status is not JobStatus.SUCCEEDED or job.finished_at is None:
                raise SystemExit(f"job {job_id} ended {job.status}: the bench is worthless")
            events.append(pinged[job_id] - job.finished_at.timestamp())
            starts.append(job_started[job_id] - submitted)
            await asyncio.sleep(random.uniform(0, gap_ms) / 1000)
    finally:
        worker.handle_sig(signal.SIGINT)
        await task
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    return events, starts


async def run(args: argparse.Namespace, database_url: str) -> None:
    base = Settings(
        _env_file=None,
        redis_url=args.redis_url,
        database_url=database_url,
        simulate=SimulateMode.ALWAYS,
        queue_name=QUEUE,
        poll_delay_s=args.poll_delay,
        worker_metrics_port=None,
        sweep_interval_s=0,
        default_user_budget_usd=1e9,
    )
    print(f"redis:      {args.redis_url} (FLUSHDB at the start and between phases)")
    print(
        f"python:     {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    print(f"poll delay: {args.poll_delay:g} s; {args.jobs} pick-ups, {args.pipeline_jobs} pipeline jobs")
    modes = [("poll only", False), ("wake-up", True)]
    if args.no_wake:
        modes = modes[:1]
    elif args.wake_only:
        modes = modes[1:]
    redis = await connect_redis(base)
    store = await Store.open(database_url)
    try:
        for label, wake in modes:
            settings = base.model_copy(update={"queue_wake": wake})
            await redis.flushdb()
            picked = await pickup(settings, redis, args.jobs, args.gap_ms)
            await redis.flushdb()
            events, starts = await pipeline(settings, redis, store, args.pipeline_jobs, args.gap_ms)
            print(f"\n{label} (ROUTEQ_QUEUE_WAKE={str(wake).lower()})")
            print(f"  pick-up, enqueue -> job start:        {percentiles(picked)}")
            print(f"  pipeline, submit -> job start:        {percentiles(starts)}")
            print(f"  event, finish/commit -> job-done ping: {percentiles(events)}")
    finally:
        await close_services(redis, store)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file in a temp dir")
    parser.add_argument("--jobs", type=int, default=500, help="pick-ups measured (default 500)")
    parser.add_argument("--pipeline-jobs", type=int, default=200, help="jobs through the real worker")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="random pause after each job, up to this")
    parser.add_argument("--poll-delay", type=float, default=0.05, help="ROUTEQ_POLL_DELAY_S (default 0.05)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-wake", action="store_true", help="only the poll-only mode (before)")
    which.add_argument("--wake-only", action="store_true", help="only the wake-up mode (after)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # arq logs every job at INFO
    with tempfile.TemporaryDirectory(prefix="routeq-bench-") as tmp:
        asyncio.run(run(args, args.database_url or f"sqlite+aiosqlite:///{tmp}/pickup.db"))


if __name__ == "__main__":
    main()
