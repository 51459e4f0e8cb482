"""What a worker's claim costs Redis while jobs run elsewhere in the fleet (a benchmark, not a test).

An idle worker claims queued jobs with one Lua call (`storage.bus.queue.JobClaimer`). Redis runs
every such call alone, on one core shared by the whole fleet: a claim whose cost grows with the
number of jobs running fleet-wide puts a ceiling on how many workers one Redis can feed.

For each fleet-wide in-flight count F (default 0, 200, 2,000, 10,000), on a flushed Redis database:
1. F + Q jobs are queued (`enqueue_jobs`, real payloads), then F of them are claimed with a long
   lease (what workers running them elsewhere have done): they stay running for the whole phase;
2. the Q others (default 2,000) are claimed as a worker's poll loop claims them, 10 per call, and
   each call's jobs ended as arq ends a finished job (`JobEnder.end`, the worker's own script)
   before the next call: jobs that run briefly here;
3. printed: Redis's own CPU per job claimed and ended (INFO cpu, the server's user + system time,
   over step 2 only) and the wall time per claim call, as seen by this client.

A flat line across F is the goal: the claim's cost should not depend on work running elsewhere.
Every phase checks that it claimed exactly the Q queued jobs, none of the F running ones, and
that none was claimed twice.

The Redis database (default redis://127.0.0.1:6379/14, or ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd
before each phase and at the end: give it one that holds nothing you want. Other clients of the
same Redis server add to its CPU: run it on a quiet server.

Run: `.venv/bin/python bench/claims.py [--running 0,200,2000,10000] [--queued 2000] [--per-call 10]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from throughput import DEFAULT_REDIS_URL

from storage.bus.queue import JobClaimer, JobEnder, enqueue_jobs
from storage.connections import connect_redis
from storage.settings import Settings

QUEUE = "bench:claims"
LEASE_MS = 600_000  # the running jobs' lease outlives the phase


async def server_cpu_s(redis: ArqRedis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def phase(redis: ArqRedis, running: int, queued: int, per_call: int) -> tuple[float, float]:
    """Redis CPU (us) per job claimed and ended, and wall time (us) per claim call, with `running`
    jobs held by others."""
    await redis.flushdb()
    ids = [f"job-{n:07d}" for n in range(running + queued)]
    for start in range(0, len(ids), 2_000):
        await enqueue_jobs(redis, ids[start : start + 2_000], queue_name=QUEUE)
    claimer, ender = JobClaimer(redis, QUEUE), JobEnder(redis, QUEUE)
    held: set[str] = set()
    while len(held) < running:
        claim = await claimer.claim(
            limit=min(500, running - len(held)), lease_ms=LEASE_MS, now_ms=timestamp_ms()
        )
        held.update(job_id for job_id, _ in claim.jobs)
    taken: list[str] = []
    calls = 0
    cpu = await server_cpu_s(redis)
    claiming = 0.0
    while len(taken) < queued:
        began = time.perf_counter()
        claim = await claimer.claim(limit=per_call, lease_ms=LEASE_MS, now_ms=timestamp_ms())
        claiming += time.perf_counter() - began
        calls += 1
        if not claim.jobs:
            raise SystemExit(
                f"F={running}: a claim found nothing with {queued - len(taken)} jobs still queued"
            )
        taken.extend(job_id for job_id, _ in claim.jobs)
        await asyncio.gather(
            *(ender.end(job_id, True, None, None, False, None, None) for job_id, _ in claim.jobs)
        )
    cpu = await server_cpu_s(redis) - cpu
    if len(set(taken)) != len(taken) or held & set(taken) or len(taken) != queued:
        raise SystemExit(
            f"F={running}: claimed {len(taken)} ({len(set(taken))} distinct), "
            f"{len(held & set(taken))} of them running"
        )
    return cpu / queued * 1e6, claiming / calls * 1e6


async def run(args: argparse.Namespace) -> None:
    settings = Settings(_env_file=None, redis_url=args.redis_url)
    redis = await connect_redis(settings)
    try:
        print(f"redis: {args.redis_url} (FLUSHDB before each phase and at the end)")
        print(f"{args.queued:,} queued jobs claimed {args.per_call} a call and ended, F running elsewhere")
        print(f"   {'F (running)':>12}  {'Redis CPU a job (claim + end)':>30}  {'wall a claim call':>18}")
        base = None
        for running in args.running:
            cpu_us, wall_us = await phase(redis, running, args.queued, args.per_call)
            base = cpu_us if base is None else base
            print(f"   {running:>12,}  {cpu_us:>24.1f} us ({cpu_us / base:4.1f}x)  {wall_us:>15.0f} us")
    finally:
        await redis.flushdb()
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument(
        "--running", type=lambda text: [int(n) for n in text.split(",")], default=[0, 200, 2_000, 10_000]
    )
    parser.add_argument("--queued", type=int, default=2_000)
    parser.add_argument("--per-call", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
