"""Micro-benchmark of the router core (a benchmark, not a test).

Prints:
- plan() decisions/s on a 50-deployment catalog (Router.plan: fleet-state snapshot + classify + rank),
  over a mix of prompts and strategies;
- complete() calls/s against the in-process simulated provider world (0 ms latency) at
  concurrency 100, through the official SDKs' real HTTP code path (httpx2 ASGI transport),
  for the mixed strategies and, side by side in the same run, the raw openai SDK calling the same
  sim deployment vs the router pinned to it: the ratio is the router's own overhead.

Run: `make bench` or `.venv/bin/python bench/router_micro.py [--plans N] [--calls N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import openai

from router_core import ChatRequest, Router, RouterSettings, SimulateMode, load_catalog
from router_core.catalog import Catalog, Task, parse_catalog
from router_core.sim import SimProfile, SimWorld, sim_http_client

PROMPTS = [
    "Write a Python function that merges two sorted lists, with unit tests.",
    "Translate 'the meeting is moved to Thursday' into German.",
    "Summarize the key points of the attached quarterly report in five bullets. " * 8,
    "What is the capital of Canada?",
    "Compare the trade-offs of event sourcing and CRUD for an order system, step by step.",
    "Write a short poem about a lighthouse in winter.",
]
STRATEGIES = ["cost", "speed", "quality", "balanced", "round_robin", "least_loaded"]


def fifty_deployments() -> Catalog:
    """Five copies of the demo catalog's ten chat models: 50 deployments at genai-prices prices."""
    demo = load_catalog()
    raw = []
    for copy in range(5):
        for dep in demo.values():
            if dep.task is not Task.CHAT:
                continue
            entry = dep.model_dump(mode="json", exclude={"fallbacks", "sim"}, exclude_none=True)
            entry["id"] = f"{dep.id}.{copy}"
            entry["quality"] = round(min(1.0, dep.quality + copy * 0.01), 3)
            entry["sim"] = {"seed": copy}
            raw.append(entry)
    return parse_catalog({"deployments": raw}, source="<bench 50>")


def requests() -> list[ChatRequest]:
    return [
        ChatRequest.model_validate(
            {"messages": [{"role": "user", "content": p}], "max_tokens": 256, "preferences": {"strategy": s}}
        )
        for p, s in itertools.product(PROMPTS, STRATEGIES)
    ]


async def bench_plan(n: int) -> float:
    catalog = fifty_deployments()
    assert len(catalog) == 50
    async with Router.from_settings(RouterSettings(simulate=SimulateMode.ALWAYS), catalog=catalog) as router:
        reqs = requests()
        for r in reqs:  # warm caches
            await router.plan(r)
        t0 = time.perf_counter()
        for i in range(n):
            await router.plan(reqs[i % len(reqs)])
        return n / (time.perf_counter() - t0)


async def run_concurrently(n: int, concurrency: int, call: Callable[[int], Awaitable[None]]) -> float:
    """Calls per second for `n` calls spread over `concurrency` tasks, after one warm-up round."""

    async def round_of(count: int) -> None:
        queue = iter(range(count))

        async def worker() -> None:
            for i in queue:
                await call(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    await round_of(min(n, concurrency * 5))
    t0 = time.perf_counter()
    await round_of(n)
    return n / (time.perf_counter() - t0)


def zero_latency(world: SimWorld, catalog: Catalog) -> None:
    """0 ms latency, no faults: measure the router and SDK overhead, not the simulated wait."""
    for dep in catalog.values():
        world.set_profile(dep.id, SimProfile(output_tokens=32, context_window=dep.context_window, seed=1))


async def bench_complete(n: int, concurrency: int, *, pinned: str | None = None) -> float:
    demo = load_catalog()
    async with Router.from_settings(RouterSettings(simulate=SimulateMode.ALWAYS), catalog=demo) as router:
        assert router.sim_world is not None
        zero_latency(router.sim_world, demo)
        reqs = requests()
        if pinned:
            reqs = [r.model_copy(update={"model": pinned}) for r in reqs]

        async def call(i: int) -> None:
            result = await router.complete(reqs[i % len(reqs)])
            assert result.simulated

        return await run_concurrently(n, concurrency, call)


async def bench_raw_sdk(n: int, concurrency: int, deployment: str) -> float:
    """The openai SDK alone against the same in-process sim deployment: no planning, no retries."""
    demo = load_catalog()
    world = SimWorld({})
    zero_latency(world, demo)
    client = openai.AsyncOpenAI(
        api_key="sim",
        base_url=f"http://sim.routeq.invalid/{deployment}/v1",
        http_client=sim_http_client(world),
        max_retries=0,
    )
    reqs = requests()

    async def call(i: int) -> None:
        req = reqs[i % len(reqs)]
        await client.chat.completions.create(
            model=demo[deployment].model,
            messages=[m.model_dump(exclude_none=True) for m in req.messages],  # type: ignore[misc]
            max_tokens=req.max_tokens,
        )

    try:
        return await run_concurrently(n, concurrency, call)
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plans", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    plans = asyncio.run(bench_plan(args.plans))
    print(f"plan():     {plans:10,.0f} decisions/s  (50 deployments, {args.plans:,} plans)")
    calls = asyncio.run(bench_complete(args.calls, args.concurrency))
    print(
        f"complete(): {calls:10,.0f} calls/s      "
        f"(in-process sim, 0 ms latency, concurrency {args.concurrency}, mixed strategies)"
    )
    raw = asyncio.run(bench_raw_sdk(args.calls, args.concurrency, "gpt-4o-mini"))
    pinned = asyncio.run(bench_complete(args.calls, args.concurrency, pinned="gpt-4o-mini"))
    print(f"raw openai SDK -> sim gpt-4o-mini:       {raw:8,.0f} calls/s")
    print(f"router.complete() pinned to gpt-4o-mini: {pinned:8,.0f} calls/s")
    print(f"router / raw SDK:                        {pinned / raw:8.2f}")


if __name__ == "__main__":
    main()
