"""In-flight capacity benchmark (a benchmark, not a test): how many slow calls one worker keeps open.

One `routeq worker` process with `--concurrency C` (default 3,000) drains N prompts (default 10,000)
against a `routeq sim` process whose deployments answer after L ms (default 5,000): four equal
deployments of `max_concurrency = 1000` each (the SDK's HTTP client opens at most 1,000 connections
to one deployment), so the router spreads the calls. Prints, from submit to `batch.completed`:
- the batch time and the calls in flight on average, N / batch time x latency (the worker is
  waiting on providers, not on itself, when this approaches C);
- the worker's peak resident memory (VmHWM from /proc);
- the worker's CPU per job and its share of a core, and the machine's load average: a worker that
  waits for a CPU (other work on the machine) keeps fewer calls open than it could.

Every run checks that all N jobs succeeded. The Redis database (default redis://127.0.0.1:6379/14 or
ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd at the start and the end; the SQL store is a fresh SQLite file
unless --database-url is given.

Run: `.venv/bin/python bench/inflight.py [--jobs N] [--concurrency C] [--latency-ms L]`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
from pathlib import Path

from saturation import check_all_succeeded, routeq_env, spawn_routeq, timed_batch, wait_for_workers
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

DEPLOYMENTS = 4


def catalog_toml(latency_ms: int) -> str:
    return "".join(
        f"""
[[deployments]]
id = "slow-{n}"
kind = "sim"
provider = "sim"
model = "slow-{n}-model"
quality = 0.8
latency_ms = {latency_ms}
context_window = 100000
max_concurrency = 1000
price = {{ input_per_mtok = 1.0, output_per_mtok = 4.0 }}
sim = {{ latency_ms = {latency_ms} }}
"""
        for n in range(DEPLOYMENTS)
    )


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmHWM for process {pid}")


async def run(args: argparse.Namespace, tmp: Path, sim_url: str, database_url: str) -> None:
    settings = bench_settings(args.redis_url, database_url, "bench:inflight")
    redis, store = await open_services(settings)
    env = routeq_env(settings, tmp / "bench-catalog.toml", sim_url) | {
        "ROUTEQ_DEFAULT_USER_BUDGET_USD": "1000000",
        "ROUTEQ_WORKER_CONCURRENCY": str(args.concurrency),
        "ROUTEQ_JOB_TIMEOUT_S": str(max(300, 4 * args.latency_ms / 1000)),
        "ROUTEQ_WORKER_METRICS_PORT": "",
    }
    worker = spawn_routeq(["worker"], env)
    try:
        async with asyncio.timeout(args.timeout):
            await wait_for_workers(redis, [worker])
            client = Client(redis, store, settings)
            cpu = process_cpu_s(worker.pid)
            batch_id, timing = await timed_batch(client, prompts(args.jobs))
            elapsed = timing.elapsed
            cpu = process_cpu_s(worker.pid) - cpu
        rss = peak_rss_mb(worker.pid)
        batch = await client.batch(batch_id)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        await close_services(redis, store)
    latency_s = args.latency_ms / 1000
    print(
        f"{args.jobs:,} jobs, 1 worker at concurrency {args.concurrency:,}, sim latency {args.latency_ms} ms"
    )
    print(
        f"   batch time:              {elapsed:8.1f} s  (ideal at full concurrency: "
        f"{args.jobs / args.concurrency * latency_s:.1f} s)"
    )
    print(f"   calls in flight (mean):  {args.jobs / elapsed * latency_s:8.0f}  (N / batch time x latency)")
    print(f"   worker peak RSS:         {rss:8.0f} MB")
    cpu_ms = cpu * 1000 / args.jobs
    print(f"   worker CPU per job:      {cpu_ms:8.2f} ms  ({cpu / elapsed:.0%} of a core over the batch)")
    print(
        f"   load average (1 min):    {os.getloadavg()[0]:8.2f}   (on {os.cpu_count()} CPUs: above that, "
        "the worker waited for a CPU and the figures above are low)"
    )
    check_all_succeeded(batch, args.jobs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file in a temp dir")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=3_000)
    parser.add_argument("--latency-ms", type=int, default=5_000)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before the run gives up")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="routeq-bench-") as tmp,
            sim_server(Path(tmp), catalog_toml(args.latency_ms)) as sim_url,
        ):
            database_url = args.database_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
            asyncio.run(run(args, Path(tmp), sim_url, database_url))
    except TimeoutError:
        raise SystemExit(f"gave up after --timeout {args.timeout:g} s: lower --jobs") from None


if __name__ == "__main__":
    main()
