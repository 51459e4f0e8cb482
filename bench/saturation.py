"""Saturation benchmark (a benchmark, not a test): how close a fleet gets to the providers' limits.

Three sim deployments, each limited to a number of requests per second (the catalog's `rpm` over
`rate_window_s = 1`, and the same limit enforced by the sim itself), and N prompts (default 3,000)
submitted at once to two `routeq worker` processes. No deployment can take the whole batch: the
router fills the preferred one, moves to the next candidate when it is full, and defers jobs
through arq when all three are full.

Prints:
- batch time, from submit to `batch.completed`, against the ideal N / (sum of limits): the ratio
  is how much of the providers' combined capacity the fleet used (1.00 = all of it);
- provider 429s as the sim counted them: any 429 means a worker sent a call the limit forbade;
- calls per deployment against its limit;
- runs (sum of `jobs.run`: a delivery refused admission gives its arq try back, so this counts the
  deliveries that ran), refusals re-queued (deliveries refused admission, each re-queued at its
  turn with no SQL write: the `waits` of `routeq:dep:<id>`), arq deliveries (their sum), and
  holds (refusals whose job waited for its near turn in its worker: `holds`, no delivery);
- per deployment, as the fleet measured them at the end (EWMAs): a call's latency, the part of it
  the provider said it held the call (`openai-processing-ms`: its slot frees a window after the
  answer less this), and the hop from a job finding room to its admission;
- the workers' CPU (user + system, from /proc) per job, and the load average before and after;
- with `--timeline`, calls per second per deployment, 5 s at a time.

`ROUTEQ_TRUST_PROCESSING_TIME=false` in the environment (the workers inherit it) runs the rule
without the providers' reported hold, for a comparison on the same machine.

Every run checks that all N jobs succeeded. The Redis database (default redis://127.0.0.1:6379/14 or
ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd at the start and the end; the SQL store is a fresh SQLite file
unless --database-url is given. A default run takes about 40 s; --timeout bounds it.

Run: `.venv/bin/python bench/saturation.py [--jobs N] [--limits 40,30,20] [--workers 2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import func, select
from throughput import (
    DEFAULT_REDIS_URL,
    bench_settings,
    close_services,
    open_services,
    process_cpu_s,
    prompts,
    sim_server,
)

from producer.client import Client
from storage import keys
from storage.jobs import BatchRecord, JobStatus, NewJob
from storage.settings import Settings
from storage.sql.schema import attempts, jobs

LATENCY_MS = 50


def catalog_toml(limits: list[int]) -> str:
    """Deployments d0, d1... with the given per-second limits; d0 is the best and cheapest."""
    return "".join(
        f"""
[[deployments]]
id = "d{n}"
kind = "sim"
provider = "sim"
model = "d{n}-model"
quality = {0.9 - n * 0.1:.1f}
latency_ms = {LATENCY_MS}
context_window = 100000
rpm = {limit}
rate_window_s = 1.0
price = {{ input_per_mtok = {1.0 + n}, output_per_mtok = {4.0 + n} }}
sim = {{ latency_ms = {LATENCY_MS}, rpm = {limit}, window_s = 1.0 }}
"""
        for n, limit in enumerate(limits)
    )


def routeq_env(settings: Settings, catalog: Path, sim_url: str) -> dict[str, str]:
    """The environment of a `routeq` process on the bench's Redis, database, queue, catalog and sim."""
    return {
        **os.environ,
        **settings.fleet_env(),
        "ROUTEQ_SIMULATE": "always",
        "ROUTEQ_SIM_URL": sim_url,
        "ROUTEQ_CATALOG_PATH": str(catalog),
    }


def spawn_routeq(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`routeq ARGS` from this virtualenv, its output discarded."""
    routeq = Path(sys.executable).with_name("routeq")
    return subprocess.Popen(
        [str(routeq), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def start_workers(
    settings: Settings, catalog: Path, sim_url: str, count: int
) -> list[subprocess.Popen[bytes]]:
    env = routeq_env(settings, catalog, sim_url)
    env |= {"ROUTEQ_DEFAULT_USER_BUDGET_USD": "1000000", "ROUTEQ_POLL_DELAY_S": "0.02"}
    return [spawn_routeq(["worker"], env) for _ in range(count)]


async def wait_for_workers(redis: Redis, workers: list[subprocess.Popen[bytes]]) -> None:
    """Until every worker has registered in `routeq:workers`; exits if one dies first."""
    while len(await redis.hkeys(keys.WORKERS)) < len(workers):  # type: ignore[misc]
        if any(w.poll() is not None for w in workers):
            raise SystemExit("a worker exited at start-up")
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Counts:
    runs: int  # sum of jobs.run: deliveries that started a run
    starts: int  # sum of jobs.starts: SQL starts (a run the router then found full starts too)
    most_runs: int
    calls: int
    waits: int  # deliveries refused admission and re-queued (routeq:dep:<id> waits)
    holds: int  # refusals waited out in the worker (routeq:dep:<id> holds)
    worker_cpu_s: float  # the workers' user + system CPU from the submit to the end
    measured: dict[str, tuple[float, float, float]]  # deployment -> latency, held, hop (ms, EWMAs)


def report(
    args: argparse.Namespace, limits: list[int], elapsed: float, sim: dict[str, Any], counts: Counts
) -> None:
    ideal = args.jobs / sum(limits)
    throttled = sum(
        d["by_outcome"].get("rpm_limited", 0) + d["by_outcome"].get("rate_limit", 0) for d in sim.values()
    )
    print(f"{args.jobs:,} jobs, {args.workers} workers, limits {limits} requests/s, sim {LATENCY_MS} ms")
    print(f"   batch time:           {elapsed:8.2f} s")
    print(f"   ideal N / sum(limits): {ideal:7.2f} s")
    print(f"   batch time / ideal:   {elapsed / ideal:8.3f}")
    print(f"   provider 429s:        {throttled:8d}")
    for name, limit in zip(sorted(sim), limits, strict=True):
        ok = sim[name]["by_outcome"].get("ok", 0)
        print(f"   {name}: {ok:5d} calls ({ok / elapsed:6.1f}/s against a limit of {limit}/s)")
    runs, waits, most = counts.runs, counts.waits, counts.most_runs
    print(f"   runs: {runs:,} for {args.jobs:,} jobs (at most {most} for one); {counts.calls:,} calls")
    print(f"   SQL starts: {counts.starts:,} (a start the router then found full defers through SQL)")
    print(f"   refused admission: {waits:,} deliveries (each re-queued at its turn, no SQL write)")
    print(f"   arq deliveries: {runs + waits:,} ({(runs + waits) / args.jobs:.2f} per job)")
    print(f"   waits in a worker for a near turn: {counts.holds:,} (no delivery)")
    for name, (latency, held, hop) in sorted(counts.measured.items()):
        print(f"   {name}: latency {latency:5.1f} ms, held by the provider {held:5.1f} ms, hop {hop:5.1f} ms")
    cpu = counts.worker_cpu_s
    print(f"   worker CPU: {cpu:.1f} s ({cpu / args.jobs * 1000:.2f} ms per job)")
    if args.timeline:
        start = min(t for d in sim.values() for t in d["admitted_at"])
        buckets = int(elapsed // 5) + 1
        for name in sorted(sim):
            per = [0] * buckets
            for t in sim[name]["admitted_at"]:
                per[min(buckets - 1, int((t - start) // 5))] += 1
            print(f"   {name} calls/s per 5 s: " + " ".join(f"{n / 5:.0f}" for n in per))


@dataclass(frozen=True)
class Timing:
    """When the batch's phases happened, `time.monotonic()` (the sim's clock too: one machine)."""

    started: float  # the submit began
    submitted: float  # submit_batch returned (rows inserted, jobs queued)
    completed: float  # batch.completed arrived

    @property
    def elapsed(self) -> float:
        return self.completed - self.started


async def timed_batch(client: Client, items: list[NewJob]) -> tuple[str, Timing]:
    """Submit `items` as one batch and wait for its `batch.completed`: its id and its timing."""
    started = time.monotonic()
    batch_id = await client.submit_batch(items)
    submitted = time.monotonic()
    async for event in client.events(batch_id):
        if event.type == "batch.completed":
            break
    return batch_id, Timing(started, submitted, time.monotonic())


def report_phases(timing: Timing, sim: dict[str, Any], limits: list[int]) -> None:
    """Where the batch time went: before the first call, the calls, after the last one."""
    ideal = sum(d["admitted"] for d in sim.values()) / sum(limits)
    calls = sorted(t for d in sim.values() for t in d["admitted_at"])
    first, last = calls[0] - timing.started, calls[-1] - timing.started
    print(f"   submit returned after {timing.submitted - timing.started:.2f} s; first call at {first:.2f} s")
    print(f"   calls from first to last: {last - first:.2f} s ({(last - first) / ideal:.3f} x ideal)")
    print(f"   last call to batch.completed: {timing.elapsed - last:.2f} s")
    for name, limit in zip(sorted(sim), limits, strict=True):
        # A slot's cycle: from a call to the call `limit` places after it (the slot's next use).
        times = sorted(sim[name]["admitted_at"])
        cycles = sorted(times[k + limit] - times[k] for k in range(len(times) - limit))
        quartiles = " ".join(f"{cycles[len(cycles) * q // 4]:.3f}" for q in (1, 2, 3))
        print(f"   {name}: a slot's cycle (a call to the one {limit} after it), quartiles {quartiles} s")


def check_all_succeeded(batch: BatchRecord, jobs: int) -> None:
    """Print the batch's check line; exit if a job did not succeed (a bench that loses jobs is void)."""
    succeeded = batch.counts.get(JobStatus.SUCCEEDED, 0)
    print(f"   check: {succeeded:,}/{jobs:,} succeeded")
    if succeeded != jobs:
        raise SystemExit(f"only {succeeded} of {jobs} jobs succeeded: {batch.counts}")


async def run(args: argparse.Namespace, tmp: Path, sim_url: str, database_url: str) -> None:
    import httpx2  # noqa: PLC0415 - only this benchmark reads the sim's counters

    limits = [int(x) for x in args.limits.split(",")]
    catalog = tmp / "bench-catalog.toml"  # written by sim_server
    settings = bench_settings(args.redis_url, database_url, "bench:saturation")
    redis, store = await open_services(settings)
    workers = start_workers(settings, catalog, sim_url, args.workers)
    try:
        async with asyncio.timeout(args.timeout):
            await wait_for_workers(redis, workers)
            cpu_before = sum(process_cpu_s(w.pid) for w in workers)  # start-up (imports) left out
            client = Client(redis, store, settings)
            batch_id, timing = await timed_batch(client, prompts(args.jobs))
        worker_cpu = sum(process_cpu_s(w.pid) for w in workers) - cpu_before
        waits = holds = 0
        measured: dict[str, tuple[float, float, float]] = {}
        for n in range(len(limits)):
            fields = ["waits", "holds", "latency_ms", "held_ms", "hop_s"]
            stats = await redis.hmget(keys.deployment(f"d{n}"), fields)  # type: ignore[misc]
            waits, holds = waits + int(stats[0] or 0), holds + int(stats[1] or 0)
            latency, held, hop = (float(v or 0) for v in stats[2:])
            measured[f"d{n}"] = (latency, held, hop * 1000)
        async with httpx2.AsyncClient() as http:
            sim = (await http.get(f"{sim_url}/_sim/stats")).json()["deployments"]
        batch = await client.batch(batch_id)
        async with store.engine.connect() as conn:
            most_runs = await conn.scalar(select(func.max(jobs.c.run)).where(jobs.c.batch_id == batch_id))
            deliveries = await conn.scalar(select(func.sum(jobs.c.run)).where(jobs.c.batch_id == batch_id))
            starts = await conn.scalar(select(func.sum(jobs.c.starts)).where(jobs.c.batch_id == batch_id))
            calls = await conn.scalar(select(func.count()).select_from(attempts))
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
        await close_services(redis, store)

    counts = Counts(
        deliveries or 0, starts or 0, most_runs or 0, calls or 0, waits, holds, worker_cpu, measured
    )
    report(args, limits, timing.elapsed, sim, counts)
    report_phases(timing, sim, limits)
    print(f"   load average before, after: {args.load_before:.2f}, {os.getloadavg()[0]:.2f}")
    check_all_succeeded(batch, args.jobs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file in a temp dir")
    parser.add_argument("--jobs", type=int, default=3_000)
    parser.add_argument("--limits", default="40,30,20", help="requests per second of each deployment")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeline", action="store_true", help="calls per second, 5 s at a time")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before the run gives up")
    args = parser.parse_args()
    args.load_before = os.getloadavg()[0]
    logging.basicConfig(level=logging.WARNING)
    limits = [int(x) for x in args.limits.split(",")]
    try:
        with (
            tempfile.TemporaryDirectory(prefix="routeq-bench-") as tmp,
            sim_server(Path(tmp), catalog_toml(limits)) as sim_url,
        ):
            database_url = args.database_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
            asyncio.run(run(args, Path(tmp), sim_url, database_url))
    except TimeoutError:
        raise SystemExit(f"gave up after --timeout {args.timeout:g} s: lower --jobs") from None


if __name__ == "__main__":
    main()
