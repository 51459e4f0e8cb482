"""Queue throughput benchmark (a benchmark, not a test): routeq's pipeline next to raw arq.

Prints, from one run on one Redis:
1. Worker throughput, one worker draining N jobs (default 5,000), the queue filled before the clock
   starts and the clock stopped when the burst-mode worker returns:
   (a) raw arq: a no-op job function (max_jobs, poll_delay 0.01, keep_result 0, JSON serializer);
   (b) routeq: the same number of prompts through the real worker - start the job in SQL, route it
       with the real router and the official openai SDK to the in-process sim (0 ms latency),
       persist result + attempts + ledger in one transaction, publish the events with Lua;
   (c) the same pipeline with the sim as a separate `routeq sim` process over loopback HTTP, as a
       real provider would be: the sim's own work no longer shares the worker's CPU.
   Raw arq runs before and after both pipeline phases, and the ratios are taken against the mean of
   the two (both printed): the host's speed drifts by up to a fifth within minutes, and a base
   measured at one end of the run alone moved the ratios by as much. The phases run `--rounds R`
   times (3 by default; a round's "before" is the last round's "after") and each ratio is the median
   of the rounds' ratios, every round's shown: on one day here, four single-round runs of the same
   code gave pipeline / raw from 0.22 to 0.31, raw arq's CPU a job moving from 0.24 to 0.37 ms.
   pipeline / raw is the share of arq's own ceiling routeq reaches; the pipeline's results are then
   checked (every job succeeded, one ledger row each): a benchmark that loses jobs is worthless.
   Each phase also prints this process's CPU per job, and each ratio again from it: on a machine
   busy with other work the rates of two phases can be cut by different amounts, their CPU per job
   far less (over HTTP the sim's CPU is in its own process and not counted).
2. Submission of M lines (default 10,000): routeq `Client.submit_batch` (one SQL transaction plus a
   pipelined enqueue) against a loop of arq's `enqueue_job` (three round trips per job).

Both workers run on uvloop, the event loop `routeq worker` runs on (`--loop asyncio`: asyncio's own
loop, as runs before 2026-12 did; on it both phases cost about a tenth more CPU per job), in a process
whose garbage collector is tuned as `routeq worker` tunes its own (storage/logs.py; `--gc python`:
Python's defaults, as runs before 2026-12-01 had).

Numbers vary by about +-10% between runs; compare ratios within one run, not across machines. A
default run takes about two minutes, mostly the pipeline phases; --timeout bounds it. The
Redis database (default redis://127.0.0.1:6379/14, or ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd at the
start, between phases and at the end: give it a database that holds nothing you want. The SQL store
is a fresh SQLite file in a temporary directory unless --database-url is given; a PostgreSQL
database given there has its tables TRUNCATEd first.

Run: `.venv/bin/python bench/throughput.py [--jobs N] [--rounds R] [--submit M] [--concurrency C]
[--loop L]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms
from arq.jobs import serialize_job
from arq.worker import Worker, func
from sqlalchemy import make_url

from producer.client import Client
from router_core import SimulateMode
from router_core.catalog import Catalog, parse_catalog
from router_core.models import ChatRequest, Message
from router_core.providers import sim_world_for
from storage.bus.queue import deserialize, serialize
from storage.connections import connect_redis
from storage.jobs import ANY_TENANT, JobStatus, NewJob
from storage.logs import tune_gc
from storage.settings import Settings
from storage.sql.schema import truncate_all
from storage.sql.store import Store
from workers.context import Shared, WorkerContext
from workers.worker import build_worker

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
RAW_QUEUE = "bench:arq"
NOTE = "numbers vary by about +-10% between runs; compare the ratios, which are from one run"


BENCH_CATALOG_TOML = "".join(
    f"""
[[deployments]]
id = "{id}"
kind = "sim"
provider = "sim"
model = "{id}-model"
quality = {quality}
latency_ms = 1
context_window = 100000
price = {{ input_per_mtok = 1.0, output_per_mtok = 4.0 }}
sim = {{ latency_ms = 0 }}
"""
    for id, quality in (("sim-a", 0.7), ("sim-b", 0.6))
)


def bench_catalog() -> Catalog:
    """Two 0 ms sim deployments (openai wire protocol), so the planner has a real choice to rank."""
    return parse_catalog(tomllib.loads(BENCH_CATALOG_TOML), source="<bench>")


def free_port() -> int:
    """A loopback port free now (for a server the bench starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


@contextlib.contextmanager
def sim_server(tmp: Path, catalog_toml: str = BENCH_CATALOG_TOML) -> Iterator[str]:
    """`routeq sim` in its own process on a free loopback port; yields its URL."""
    catalog = tmp / "bench-catalog.toml"
    catalog.write_text(catalog_toml)
    port = free_port()
    routeq = Path(sys.executable).with_name("routeq")
    proc = subprocess.Popen(
        [str(routeq), "sim", "--port", str(port), "--catalog", str(catalog)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as conn:
                if conn.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("routeq sim did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def prompts(n: int, *, run: str = "") -> list[NewJob]:
    """N distinct prompts; another `run` gives other prompts, so the response cache (on by default)
    serves none of them from an earlier phase's answers."""
    return [
        NewJob(
            f"line-{i}", ChatRequest(messages=[Message(role="user", content=f"Say hello number {i}{run}")])
        )
        for i in range(n)
    ]


async def noop(ctx: dict[str, Any], i: int) -> None:
    """arq's floor: a job that does nothing."""


async def enqueue_noops(redis: ArqRedis, n: int) -> None:
    """Fill the raw queue untimed, pipelined like routeq's bulk enqueue (same keys as enqueue_job)."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            payload = serialize_job("noop", (i,), {}, None, now_ms, serializer=serialize)
            pipe.psetex(f"arq:job:noop-{i}", expires_extra_ms, payload)
        pipe.zadd(RAW_QUEUE, {f"noop-{i}": now_ms for i in range(n)})
        await pipe.execute()


@dataclass(frozen=True)
class Drained:
    """A burst worker's run: jobs/s, and this process's CPU per job (every thread, the in-process
    sim's included), which a machine busy with other work inflates far less than it cuts the rate."""

    rate: float
    cpu_ms: float
    gc_ms: float = 0.0  # of cpu_ms: the garbage collector's (its collections, timed as they run)


@contextlib.contextmanager
def collections_timed() -> Iterator[list[float]]:
    """The CPU the garbage collector spends inside the block: [seconds] once it ends."""
    spent, began = [0.0], [0.0]

    def timing(phase: str, _: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.process_time()
        else:
            spent[0] += time.process_time() - began[0]

    gc.callbacks.append(timing)
    try:
        yield spent
    finally:
        gc.callbacks.remove(timing)


async def drain(worker: Worker, started: list[float]) -> Drained:
    """A burst worker timed from the end of its start-up hook to its return."""
    cpu = time.process_time()
    try:
        with collections_timed() as collecting:
            await worker.main()
        elapsed = time.perf_counter() - started[0]
        cpu = time.process_time() - cpu
    finally:
        await worker.close()
    jobs = max(1, worker.jobs_complete)
    return Drained(worker.jobs_complete / elapsed, cpu * 1000 / jobs, collecting[0] * 1000 / jobs)


async def raw_worker(settings: Settings, redis: ArqRedis, n: int, concurrency: int) -> Drained:
    await enqueue_noops(redis, n)
    started: list[float] = []

    async def mark(ctx: dict[str, Any]) -> None:
        started.append(time.perf_counter())

    worker = Worker(
        [func(noop, name="noop")],
        queue_name=RAW_QUEUE,
        redis_pool=await connect_redis(settings),  # its own pool, as build_worker's: close() closes it
        burst=True,
        max_jobs=concurrency,
        poll_delay=0.01,
        keep_result=0,
        handle_signals=False,
        job_serializer=serialize,
        job_deserializer=deserialize,
        on_startup=mark,
    )
    drained = await drain(worker, started)
    if worker.jobs_complete != n:
        raise SystemExit(
            f"raw arq worker completed {worker.jobs_complete} of {n} jobs ({worker.jobs_failed} failed, "
            f"{worker.jobs_retried} retried): did another process (another bench's FLUSHDB, a worker of "
            f"{RAW_QUEUE!r}) use this Redis database meanwhile?"
        )
    return drained


def mean_drained(*runs: Drained) -> Drained:
    """The mean of several runs' rates and CPU: raw arq is run before and after the pipeline phases,
    so a machine whose speed drifts during the run moves the base of the ratios with them."""
    return Drained(
        statistics.fmean(r.rate for r in runs),
        statistics.fmean(r.cpu_ms for r in runs),
        statistics.fmean(r.gc_ms for r in runs),
    )


async def pipeline_worker(
    settings: Settings,
    redis: ArqRedis,
    store: Store,
    n: int,
    *,
    in_process_sim: bool = True,
    tag: str = "",
) -> tuple[Drained, str]:
    """routeq's worker on `n` prompts, and the result check line (exits if it fails).

    With `in_process_sim` the sim world answers inside the worker's process (sharing its CPU);
    otherwise `settings.sim_url` names a `routeq sim` server reached over loopback HTTP. The prompts
    differ by phase and by `tag`: a prompt run before would be answered from the response cache.
    """
    run = ("" if in_process_sim else " (over HTTP)") + tag
    batch_id = await Client(redis, store, settings).submit_batch(prompts(n, run=run), name="bench")
    catalog = bench_catalog()
    sim_world = sim_world_for(catalog) if in_process_sim else None
    started: list[float] = []

    async def mark(context: WorkerContext) -> None:
        started.append(time.perf_counter())

    worker = build_worker(
        settings,
        redis=await connect_redis(settings),
        burst=True,
        poll_delay=0.01,
        handle_signals=False,
        after_startup=mark,
        shared=Shared(store=store, catalog=catalog, sim_world=sim_world),
    )
    drained = await drain(worker, started)
    batch = await store.batches.get(batch_id, tenant=ANY_TENANT)
    ledger_rows = len(await store.ledger.rows(batch_id=batch_id))
    ok = batch.counts == {JobStatus.SUCCEEDED: n} and ledger_rows == n and batch.status == "completed"
    counts = {status.value: count for status, count in batch.counts.items()}
    check = f"{'OK' if ok else 'FAILED'}: batch {batch.status}, counts {counts}, ledger rows {ledger_rows:,}"
    if not ok:
        raise SystemExit(f"pipeline check {check}")
    return drained, check


async def submit_routeq(settings: Settings, redis: ArqRedis, store: Store, n: int) -> float:
    items = prompts(n)  # built before the clock: the caller has its requests already
    client = Client(redis, store, settings)
    t0 = time.perf_counter()
    await client.submit_batch(items, name="bench-submit")
    rate = n / (time.perf_counter() - t0)
    if (queued := await redis.zcard(settings.queue_name)) != n:
        raise SystemExit(f"submit_batch queued {queued} of {n} jobs")
    return rate


async def submit_arq(redis: ArqRedis, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        await redis.enqueue_job("noop", i, _queue_name=RAW_QUEUE)
    rate = n / (time.perf_counter() - t0)
    if (queued := await redis.zcard(RAW_QUEUE)) != n:
        raise SystemExit(f"enqueue_job queued {queued} of {n} jobs")
    return rate


async def open_store(url: str) -> Store:
    store = await Store.open(url)
    if store.engine.dialect.name == "postgresql":
        async with store.engine.begin() as conn:
            await conn.execute(truncate_all())
    return store


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a bench runs its in-process workers on: `routeq worker` runs on uvloop
    (`producer.cli._common.execute`), so the default compares routeq and raw arq on that loop."""
    return uvloop.new_event_loop if name == "uvloop" else None


def bench_settings(redis_url: str, database_url: str, queue_name: str, **extra: Any) -> Settings:
    """Settings of a bench run: no .env file, simulated providers, the bench's own queue."""
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        database_url=database_url,
        simulate=SimulateMode.ALWAYS,
        queue_name=queue_name,
        **extra,
    )


async def open_services(settings: Settings) -> tuple[ArqRedis, Store]:
    """The bench's Redis database (emptied) and its store (`open_store`)."""
    redis = await connect_redis(settings)
    await redis.flushdb()
    return redis, await open_store(settings.database_url)


async def close_services(redis: ArqRedis, store: Store) -> None:
    """Empty the bench's Redis database and close it and the store."""
    await redis.flushdb()
    await redis.aclose()
    await store.close()


def row(label: str, value: float, unit: str, note: str = "") -> None:
    print(f"   {label:<28}{value:9,.0f} {unit}{f'  ({note})' if note else ''}")


def drained_row(label: str, drained: Drained, note: str = "") -> None:
    row(label, drained.rate, f"jobs/s  {drained.cpu_ms:6.3f} ms CPU/job ({drained.gc_ms:.3f} in gc)", note)


def ratios(raw: Drained, other: Drained) -> tuple[float, float]:
    """other / raw by rate, and the same ratio from CPU per job (raw's CPU / other's)."""
    return other.rate / raw.rate, raw.cpu_ms / other.cpu_ms


def ratio_row(label: str, raw: Drained, other: Drained, note: str = "") -> None:
    by_rate, by_cpu = ratios(raw, other)
    print(f"   {label:<28}{by_rate:9.3f}   by CPU per job {by_cpu:.3f}{f'  ({note})' if note else ''}")


@dataclass(frozen=True)
class Round:
    """One round of phase 1: raw arq before and after both pipeline phases (the next round's
    "before" is this round's "after"), routeq with the sim in process and over HTTP."""

    raw_before: Drained
    pipeline: Drained
    remote: Drained
    raw_after: Drained

    @property
    def raw(self) -> Drained:
        return mean_drained(self.raw_before, self.raw_after)


async def worker_rounds(
    args: argparse.Namespace, settings: Settings, redis: ArqRedis, store: Store, sim_url: str
) -> tuple[list[Round], str, str]:
    """Phase 1's rounds, and the last round's checks of both pipeline phases."""
    remote_settings = settings.model_copy(update={"sim_url": sim_url})
    await redis.flushdb()
    raw_before = await raw_worker(settings, redis, args.jobs, args.concurrency)
    rounds: list[Round] = []
    for number in range(args.rounds):
        tag = f" (round {number + 1})" if number else ""
        await redis.flushdb()
        pipeline, check = await pipeline_worker(settings, redis, store, args.jobs, tag=tag)
        await redis.flushdb()
        remote, remote_check = await pipeline_worker(
            remote_settings, redis, store, args.jobs, in_process_sim=False, tag=tag
        )
        await redis.flushdb()
        raw_after = await raw_worker(settings, redis, args.jobs, args.concurrency)
        rounds.append(Round(raw_before, pipeline, remote, raw_after))
        raw_before = raw_after
    return rounds, check, remote_check


def print_rounds(rounds: list[Round], check: str, remote_check: str) -> None:
    for number, one in enumerate(rounds, 1):
        if len(rounds) > 1:
            print(f" round {number} of {len(rounds)}")
        drained_row("raw arq, before:", one.raw_before)
        drained_row("raw arq, after:", one.raw_after)
        drained_row("raw arq no-op job:", one.raw, "the mean of both: the ratios' base")
        drained_row("routeq pipeline (sim 0 ms):", one.pipeline, "sim in the worker's process")
        ratio_row("pipeline / raw:", one.raw, one.pipeline)
        drained_row("routeq, sim over HTTP:", one.remote, "routeq sim in its own process, loopback")
        ratio_row("pipeline over HTTP / raw:", one.raw, one.remote, "the sim's CPU is not counted")
    print(f"   check (in process): {check}")
    print(f"   check (over HTTP):  {remote_check}")
    if len(rounds) > 1:
        for label, phase, note in (
            ("pipeline / raw:", [one.pipeline for one in rounds], ""),
            ("pipeline over HTTP / raw:", [one.remote for one in rounds], "the sim's CPU is not counted"),
        ):
            pairs = [ratios(one.raw, drained) for one, drained in zip(rounds, phase, strict=True)]
            by_rate = [rate for rate, _ in pairs]
            by_cpu = statistics.median(cpu for _, cpu in pairs)
            each = ", ".join(f"{r:.3f}" for r in by_rate)
            print(
                f"   {label:<28}{statistics.median(by_rate):9.3f}   by CPU per job {by_cpu:.3f}"
                f"  (medians of {len(rounds)} rounds; each round: {each}){f'  ({note})' if note else ''}"
            )


async def run(args: argparse.Namespace, database_url: str, sim_url: str) -> None:
    settings = bench_settings(
        args.redis_url,
        database_url,
        "bench:routeq",
        worker_concurrency=args.concurrency,
        default_user_budget_usd=1e9,  # thousands of bench jobs would exhaust the default $1 cap
    )
    print(f"redis:       {args.redis_url} (FLUSHDB at start, between phases and at the end)")
    print(f"database:    {make_url(database_url).render_as_string(hide_password=True)}")
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"python:      {python}, {os.cpu_count()} CPUs, both workers on {args.loop}'s event loop")
    collector = "tuned as `routeq worker` tunes it" if args.gc == "routeq" else "Python's defaults"
    print(f"gc:          {collector}, for both workers (--gc)")
    print(f"concurrency: {args.concurrency} jobs at once per worker; {NOTE}")
    redis = await connect_redis(settings)
    store = await open_store(database_url)
    try:
        async with asyncio.timeout(args.timeout):
            rounds, check, remote_check = await worker_rounds(args, settings, redis, store, sim_url)
            print(f"\n1. worker throughput, 1 worker, {args.jobs:,} jobs (queue filled before the clock)")
            print_rounds(rounds, check, remote_check)
            await redis.flushdb()
            submit = await submit_routeq(settings, redis, store, args.submit)
            await redis.flushdb()
            enqueue = await submit_arq(redis, args.submit)
            print(f"\n2. submission, {args.submit:,} lines")
            row("routeq Client.submit_batch:", submit, "lines/s", "1 SQL transaction + pipelined enqueue")
            row("arq enqueue_job loop:", enqueue, "lines/s", "3 round trips per job, no SQL")
            print(f"   {'submit_batch / enqueue_job:':<28}{submit / enqueue:9.2f}")
    finally:
        await close_services(redis, store)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file in a temp dir")
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--submit", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of phase 1 (ratios: their medians)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before the run gives up")
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the event loop of both workers (default uvloop, the loop `routeq worker` runs on)",
    )
    parser.add_argument(
        "--gc",
        choices=("routeq", "python"),
        default="routeq",
        help="the process's garbage collector for both workers: tuned as `routeq worker` tunes its own "
        "(default; storage/logs.py, ROUTEQ_GC_THRESHOLD) or Python's defaults",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    # arq logs every job at INFO: formatting those lines would be part of what is timed.
    logging.basicConfig(level=logging.WARNING)
    if args.gc == "routeq":
        tune_gc(Settings(_env_file=None).gc_threshold)
    try:
        with tempfile.TemporaryDirectory(prefix="routeq-bench-") as tmp, sim_server(Path(tmp)) as sim_url:
            database_url = args.database_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
            with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
                runner.run(run(args, database_url, sim_url))
    except TimeoutError:
        raise SystemExit(f"gave up after --timeout {args.timeout:g} s: lower --jobs/--submit") from None


if __name__ == "__main__":
    main()
