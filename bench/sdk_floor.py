"""What the provider call alone costs (a benchmark, not a test): the floor under bench/throughput.py.

Every routeq job calls its provider through the official SDK. This bench measures, in one run on
one event loop (uvloop, as `routeq worker`), the CPU of this process per job or call for:
1. raw arq: a burst worker draining N no-op jobs (bench/throughput.py's phase 1a);
2. the call alone, through routeq's own adapter (`OpenAIProvider.complete`: the openai SDK, its
   HTTP client), C calls at a time:
   (a) to the sim world in this process (its CPU counted, as in throughput's in-process phase);
   (b) to a `routeq sim` process over loopback (aiohttp, as over the network; the sim not counted).
It then prints the ceiling each puts on throughput's "pipeline / raw" ratio: a pipeline that did
nothing but arq's delivery and this one call would reach raw / (raw + call) by CPU per job, and
the CPU per job left for everything else routeq does (routing, fleet-wide limits and budgets in
Redis, results, attempts and ledger in SQL, events) if a ratio of 0.35 / 0.30 is to be met.

The Redis database (default redis://127.0.0.1:6379/14, or ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd at
the start and end. A default run takes about 20 s.

Run: `.venv/bin/python bench/sdk_floor.py [--jobs N] [--calls M] [--concurrency C]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from throughput import DEFAULT_REDIS_URL, bench_catalog, bench_settings, loop_factory, raw_worker, sim_server

from router_core import SimulateMode
from router_core.models import ChatRequest, Message
from router_core.providers.factory import build_providers
from storage.connections import connect_redis

GOALS = {"in-process sim": 0.35, "sim over HTTP": 0.30}  # issue 17's pipeline / raw goals


async def call_cpu_ms(sim_url: str | None, calls: int, concurrency: int) -> float:
    """CPU ms of this process per `OpenAIProvider.complete` call, `concurrency` calls at a time."""
    providers, _ = build_providers(bench_catalog(), simulate=SimulateMode.ALWAYS, sim_url=sim_url)
    provider = providers["sim-a"]
    requests = [
        ChatRequest(messages=[Message(role="user", content=f"Say hello number {i}")]) for i in range(calls)
    ]
    await provider.complete(requests[0], max_tokens=64, timeout_s=30)  # connections, lazy imports
    lanes = iter(requests)

    async def lane() -> None:
        for request in lanes:
            reply = await provider.complete(request, max_tokens=64, timeout_s=30)
            if not reply.content:
                raise SystemExit("the sim sent an empty answer")

    try:
        cpu = time.process_time()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        return (time.process_time() - cpu) * 1000 / calls
    finally:
        await asyncio.gather(*(p.aclose() for p in providers.values()))


async def run(args: argparse.Namespace, sim_url: str) -> None:
    settings = bench_settings(args.redis_url, "sqlite+aiosqlite:///:memory:", "bench:floor")
    redis = await connect_redis(settings)
    try:
        await redis.flushdb()
        raw = (await raw_worker(settings, redis, args.jobs, args.concurrency)).cpu_ms
    finally:
        await redis.flushdb()
        await redis.aclose()
    calls = {
        "in-process sim": await call_cpu_ms(None, args.calls, args.concurrency),
        "sim over HTTP": await call_cpu_ms(sim_url, args.calls, args.concurrency),
    }
    print(f"CPU per job or call of this process (uvloop), {args.concurrency} at a time")
    print(f"   {f'raw arq no-op job ({args.jobs:,}):':<42}{raw:6.3f} ms")
    for label, call in calls.items():
        goal = GOALS[label]
        left = raw / goal - raw - call
        print(f"   {f'one call, {label} ({args.calls:,}):':<42}{call:6.3f} ms")
        print(
            f"      ceiling of pipeline / raw by CPU: {raw / (raw + call):.3f}; "
            f"a ratio of {goal} leaves {left:.3f} ms a job for the rest of routeq's work"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--jobs", type=int, default=5_000, help="raw arq no-op jobs")
    parser.add_argument("--calls", type=int, default=5_000, help="provider calls per phase")
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="routeq-bench-") as tmp,
        sim_server(Path(tmp)) as sim_url,
        asyncio.Runner(loop_factory=loop_factory("uvloop")) as runner,
    ):
        runner.run(run(args, sim_url))


if __name__ == "__main__":
    main()
