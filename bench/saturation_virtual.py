"""The saturation bench on virtual time (a benchmark, not a test): the line and the rate counting alone.

`bench/saturation.py` measures the whole fleet, whose CPU (and a shared machine's) blurs what the
admission rules themselves cost. Here the same three deployments (40/30/20 requests per second)
and N jobs run through the real Lua scripts (`RedisFleetState`, `AdmissionLine`) on a real Redis,
with a `FakeClock` and a discrete-event loop standing in for workers: `--held` jobs at a time wait
in "workers" (`wait_for_room`'s loop: ask, sleep to the turn, ask again), each admitted a random hop
after it finds room (`--hop`, the pick-up, plan and SQL start), and no sooner than its slot frees
(`Turn.ready_s`: room may be a slot freeing within the line's lead), answered a random latency after its
admission (`--latency`), its release followed by the next queued job. The provider counts a call
at its admission and holds it its whole latency (no network), and says so as OpenAI's API does
(`openai-processing-ms`, whole ms, read by the adapter's `processing_s`: the release's `server_s`);
`--no-report-hold` answers without it (the rule then counts a call until a window after its
answer). No CPU is simulated: the figure is what the rules leave of the providers' capacity, with
the hops and latencies given.

Prints the batch time against the ideal N / (sum of limits), asks of the line per job (1 = admitted
at the first ask), jobs that found no room at their admission (0 expected: a claim holds the slot),
and the most calls any window of each deployment holds as the provider counts them (arrival at
admission, the earliest it can be: at most its rpm, or the rule let a 429 through).

Run: `.venv/bin/python bench/saturation_virtual.py [--jobs 3000] [--held 400] [--hop 0.005,0.04]
[--latency 0.05,0.08] [--seed 1] [--no-report-hold]`. The Redis database (default
redis://127.0.0.1:6379/14, or ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd at the start and the end. A
default run takes about 20 s.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import math
import os
import random
from collections import Counter
from typing import Any

from redis.asyncio import Redis
from throughput import DEFAULT_REDIS_URL

from router_core import CallOutcome, FakeClock
from router_core.catalog import Deployment
from router_core.providers.openai import PROCESSING_HEADER, processing_s
from storage.fleet.line import AdmissionLine, Place
from storage.fleet.state import RedisFleetState

LIMITS = (40, 30, 20)


def deployments() -> list[Deployment]:
    return [
        Deployment.model_validate(
            {
                "id": f"d{n}",
                "kind": "sim",
                "provider": "sim",
                "model": f"d{n}-model",
                "quality": 0.9 - n * 0.1,
                "latency_ms": 50,
                "context_window": 100_000,
                "rpm": rpm,
                "rate_window_s": 1.0,
                "price": {"input_per_mtok": 1.0 + n, "output_per_mtok": 4.0 + n},
            }
        )
        for n, rpm in enumerate(LIMITS)
    ]


def span(text: str) -> tuple[float, float]:
    low, high = (float(x) for x in text.split(","))
    return low, high


def most_in_a_window(times: list[float], window_s: float = 1.0) -> int:
    ordered, most, first = sorted(times), 0, 0
    for last, at in enumerate(ordered):
        while ordered[first] <= at - window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


class VirtualFleet:
    """Workers on virtual time: each event is a job asking the line, being admitted, or released."""

    def __init__(self, args: argparse.Namespace, redis: Redis) -> None:
        self.args, self.rng = args, random.Random(args.seed)
        self.clock = FakeClock(start=1_000.0)
        self.fleet = RedisFleetState(redis, clock=self.clock)
        self.line = AdmissionLine(redis, clock=self.clock)
        self.deps = deployments()
        self.places = [Place(d, 10) for d in self.deps]
        self.events: list[tuple[float, int, str, str, Any]] = []
        self.order = itertools.count()
        self.asks: Counter[str] = Counter()
        self.admitted_at: dict[str, list[float]] = {d.id: [] for d in self.deps}
        self.missed = 0
        self.queued = iter(range(args.held, args.jobs))
        for n in range(min(args.held, args.jobs)):
            self.push(0.0, "ask", f"j{n}")

    def push(self, delay: float, kind: str, job: str, data: Any = None) -> None:
        heapq.heappush(self.events, (self.clock.now() + delay, next(self.order), kind, job, data))

    async def run(self) -> float:
        """Play every event; the virtual seconds the batch took."""
        while self.events:
            at, _, kind, job, data = heapq.heappop(self.events)
            self.clock.advance(at - self.clock.now())
            await {"ask": self.ask, "admit": self.admit, "release": self.release}[kind](job, data)
        return self.clock.now() - 1_000.0

    async def ask(self, job: str, _: Any) -> None:
        self.asks[job] += 1
        turn = await self.line.turn(job, self.places, check_room=True, hold_s=10.0)
        if not turn.room:
            self.push(turn.delay_s, "ask", job)
            return
        dep = next(d for d in self.deps if d.id == turn.deployment)
        # Admitted after its hop, and no sooner than its slot frees (the worker's runner waits).
        self.push(max(self.rng.uniform(*self.args.hop), turn.ready_s), "admit", job, dep)

    async def admit(self, job: str, dep: Deployment) -> None:
        admission = await self.fleet.admit(dep, 10, waiter=job)
        if not admission.admitted:
            self.missed += 1
            self.push(0.0, "ask", job)
            return
        self.admitted_at[dep.id].append(self.clock.now())
        latency = self.rng.uniform(*self.args.latency)
        self.push(latency, "release", job, (dep, admission, latency))

    async def release(self, _: str, data: Any) -> None:
        dep, admission, latency = data
        held = {PROCESSING_HEADER: str(math.floor(latency * 1000))} if self.args.report_hold else {}
        await self.fleet.release(
            dep, admission, CallOutcome.SUCCESS, latency * 1000, 10, server_s=processing_s(held)
        )
        following = next(self.queued, None)
        if following is not None:
            self.push(0.0, "ask", f"j{following}")

    def report(self, elapsed: float) -> None:
        args, ideal = self.args, self.args.jobs / sum(LIMITS)
        print(f"{args.jobs:,} jobs, {args.held} held at a time, hop {args.hop} s, latency {args.latency} s")
        print(f"   provider reports its hold: {'yes' if args.report_hold else 'no'}")
        print(f"   batch time / ideal:   {elapsed / ideal:6.3f} ({elapsed:.2f} s against {ideal:.2f} s)")
        asks = self.asks.values()
        print(f"   asks per job:         {sum(asks) / args.jobs:6.2f} (at most {max(asks)})")
        print(f"   no room at admission: {self.missed}")
        for dep in self.deps:
            times = self.admitted_at[dep.id]
            most = most_in_a_window(times)
            print(f"   {dep.id}: {len(times):5d} calls, at most {most} in a window (limit {dep.rpm})")


async def run(args: argparse.Namespace) -> None:
    redis = Redis.from_url(args.redis_url)
    await redis.flushdb()
    try:
        virtual = VirtualFleet(args, redis)
        virtual.report(await virtual.run())
    finally:
        await redis.flushdb()
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--jobs", type=int, default=3_000)
    parser.add_argument("--held", type=int, default=400, help="jobs waiting in workers at a time")
    parser.add_argument("--hop", type=span, default=(0.005, 0.04), help="room to admission, s: low,high")
    parser.add_argument("--latency", type=span, default=(0.05, 0.08), help="a call's latency, s: low,high")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--report-hold",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the provider sends openai-processing-ms (its hold: the whole latency)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
