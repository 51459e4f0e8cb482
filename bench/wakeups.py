"""What a wake-up costs on this machine (a benchmark of the host, not of routeq).

A worker's CPU a job depends on how busy it is: one chat job at a time cost `routeq worker` about
15 ms of CPU on the development machine, twenty at a time about 5 ms, two hundred about 3.5 ms
(bench/api.py --concurrency 1, 20 and 200). Batching explains part of it: Redis calls, SQL groups
and event-loop turns are shared by more jobs. The rest is the host: a process that sleeps between
events pays for every wake-up (the virtual CPU halted and resumed, caches and branch predictors
cold). This measures that alone, with nothing of routeq's: the CPU of one Redis PING, sent back to
back and with an idle gap of 1, 5 and 20 ms before each (an `asyncio.sleep`, whose own cost is
tiny). On a machine where the gap costs nothing the four figures are close.

Run: `.venv/bin/python bench/wakeups.py [--redis-url URL]` (default redis://127.0.0.1:6379/14, or
ROUTEQ_BENCH_REDIS_URL; only PINGs are sent).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import redis.asyncio as redis

GAPS_MS = (0.0, 1.0, 5.0, 20.0)


async def main(url: str, pings: int) -> None:
    client = redis.Redis.from_url(url)
    try:
        await client.ping()
        print(f"CPU of one Redis PING ({url}), this process only")
        for gap_ms in GAPS_MS:
            count = pings if gap_ms == 0 else max(50, pings // 10)
            cpu = time.process_time()
            for _ in range(count):
                if gap_ms:
                    await asyncio.sleep(gap_ms / 1000)
                await client.ping()
            cpu = time.process_time() - cpu
            each = cpu / count * 1e6
            print(f"   idle gap before each {gap_ms:4.0f} ms: {each:7.1f} us CPU a PING ({count:,} PINGs)")
    finally:
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    )
    parser.add_argument("--pings", type=int, default=3000, help="back to back; a tenth of it with each gap")
    args = parser.parse_args()
    asyncio.run(main(args.redis_url, args.pings))
