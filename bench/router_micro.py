"""Micro-benchmark of the router core (a benchmark, not a test).

Prints:
- plan() decisions/s on a 50-deployment catalog (Router.plan: stats snapshot + classify + rank),
  over a mix of prompts and strategies;
- complete() calls/s against the in-process simulated provider world (0 ms latency) at
  concurrency 100, through the official SDKs' real HTTP code path (httpx2 ASGI transport).

Run: `make bench` or `.venv/bin/python bench/router_micro.py [--plans N] [--calls N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

from router_core import ChatRequest, Router, RouterSettings, SimulateMode, load_catalog
from router_core.catalog import Catalog, parse_catalog
from router_core.sim import SimProfile

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
    """Five copies of the demo catalog's ten real models: 50 deployments at genai-prices prices."""
    demo = load_catalog()
    raw = []
    for copy in range(5):
        for dep in demo.values():
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


async def bench_complete(n: int, concurrency: int) -> float:
    demo = load_catalog()
    async with Router.from_settings(RouterSettings(simulate=SimulateMode.ALWAYS), catalog=demo) as router:
        world = router.sim_world
        assert world is not None
        for dep in demo.values():  # 0 ms latency, no faults: measure the router and SDK overhead
            world.set_profile(dep.id, SimProfile(output_tokens=32, context_window=dep.context_window, seed=1))
        reqs = requests()
        queue = iter(range(n))

        async def worker() -> None:
            for i in queue:
                result = await router.complete(reqs[i % len(reqs)])
                assert result.simulated

        await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up round
        queue = iter(range(n))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


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
        f"(in-process sim, 0 ms latency, concurrency {args.concurrency})"
    )


if __name__ == "__main__":
    main()
