"""Response cache benchmark (a benchmark, not a test): a fully cached batch next to the same batch uncached.

Prints, from one run on one Redis and one SQL store, one worker draining N prompts (default 10,000;
the queue filled before the clock starts, the clock stopped when the burst-mode worker returns):
1. uncached: the cache off (ROUTEQ_CACHE=false): every job calls the sim;
2. first run, cache on: the same N prompts, none cached yet: every job looks up, leads its
   flight, calls, and its answer is cached (what the cache costs on a miss);
3. second run, cache on: the same N prompts again: every job is a hit, no call;
4. uncached again, so that the uncached rate is the mean of a run before and a run after the cached
   ones (a machine whose load drifts during the bench biases the ratios less).
Ratios: cached / uncached (the cache's speed-up) and first run / uncached (its overhead on misses).
Each run is checked: every job succeeded, and the ledger holds N charges for runs 1 and 2 and none
for run 3.

The sim answers inside the worker's process with `--latency-ms` of latency (default 0: the CPU cost
of the pipeline itself). The Redis database (default redis://127.0.0.1:6379/14, or
ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd; the SQL store is a fresh SQLite file unless --database-url
names a PostgreSQL database, whose tables are TRUNCATEd first.

Run: `.venv/bin/python bench/cache.py [--jobs N] [--concurrency C] [--latency-ms L]`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
import tomllib

from throughput import (
    BENCH_CATALOG_TOML,
    DEFAULT_REDIS_URL,
    NOTE,
    bench_settings,
    close_services,
    open_services,
    prompts,
    row,
)

from producer.client import Client
from router_core.catalog import parse_catalog
from router_core.providers import sim_world_for
from storage.connections import connect_redis
from storage.jobs import ANY_TENANT, JobStatus
from storage.settings import Settings
from storage.sql.store import Store
from workers.context import Shared, WorkerContext
from workers.worker import build_worker


async def drain(settings: Settings, store: Store, n: int, latency_ms: int) -> tuple[float, int]:
    """Submit N prompts, run one burst worker over them: (jobs/s, ledger charges of the batch)."""
    toml = BENCH_CATALOG_TOML.replace("sim = { latency_ms = 0 }", f"sim = {{ latency_ms = {latency_ms} }}")
    catalog = parse_catalog(tomllib.loads(toml), source="<bench>")
    redis = await connect_redis(settings)  # the worker's own: close() closes it
    batch_id = await Client(redis, store, settings).submit_batch(prompts(n), name="bench-cache")
    started: list[float] = []

    async def mark(context: WorkerContext) -> None:
        started.append(time.perf_counter())

    worker = build_worker(
        settings,
        redis=redis,
        burst=True,
        poll_delay=0.01,
        handle_signals=False,
        after_startup=mark,
        shared=Shared(store=store, catalog=catalog, sim_world=sim_world_for(catalog)),
    )
    try:
        await worker.main()
        elapsed = time.perf_counter() - started[0]
    finally:
        await worker.close()
    batch = await store.batches.get(batch_id, tenant=ANY_TENANT)
    if batch.counts != {JobStatus.SUCCEEDED: n}:
        raise SystemExit(f"batch check FAILED: counts {batch.counts}")
    return worker.jobs_complete / elapsed, len(await store.ledger.rows(batch_id=batch_id))


async def run(args: argparse.Namespace, database_url: str) -> None:
    base = bench_settings(
        args.redis_url,
        database_url,
        "bench:cache",
        worker_concurrency=args.concurrency,
        default_user_budget_usd=1e9,
        cache=False,
    )
    cached = base.model_copy(update={"cache": True})
    print(
        f"redis: {args.redis_url} (FLUSHDB); jobs: {args.jobs:,}; concurrency {args.concurrency}; sim "
        f"latency {args.latency_ms} ms; {NOTE}"
    )
    redis, store = await open_services(base)
    try:
        async with asyncio.timeout(args.timeout):
            uncached, uncached_charges = await drain(base, store, args.jobs, args.latency_ms)
            await redis.flushdb()
            first, first_charges = await drain(cached, store, args.jobs, args.latency_ms)
            second, second_charges = await drain(cached, store, args.jobs, args.latency_ms)
            await redis.flushdb()
            after, after_charges = await drain(base, store, args.jobs, args.latency_ms)
    finally:
        await close_services(redis, store)
    expected = (args.jobs, args.jobs, 0, args.jobs)
    charges = (uncached_charges, first_charges, second_charges, after_charges)
    print(f"\none worker, {args.jobs:,} prompts, the queue filled before the clock")
    row("uncached (cache off):", uncached, "jobs/s", f"{uncached_charges:,} provider charges")
    row("uncached, after:", after, "jobs/s", f"{after_charges:,} provider charges")
    uncached = (uncached + after) / 2
    row("first run, cache on:", first, "jobs/s", f"{first_charges:,} charges: every job a miss")
    row("second run, all hits:", second, "jobs/s", f"{second_charges:,} charges")
    print(f"   {'cached / uncached:':<28}{second / uncached:9.2f}")
    print(f"   {'first run / uncached:':<28}{first / uncached:9.2f}  (the cache's cost on misses)")
    print(f"   check: {'OK' if charges == expected else 'FAILED'}: charges {charges}, expected {expected}")
    if charges != expected:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file in a temp dir")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    logging.getLogger("arq").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        database_url = args.database_url or f"sqlite+aiosqlite:///{tmp}/bench-cache.db"
        asyncio.run(run(args, database_url))


if __name__ == "__main__":
    main()
