"""routeq next to LiteLLM's Router (a benchmark, not a test): the same prompts, the same simulated providers.

One `routeq sim` process serves three OpenAI-wire deployments over loopback (gpt-4.1-nano,
gpt-4o-mini, gpt-4o; 50 ms +- 10 each); gpt-4.1-nano, the cheapest and routeq's first choice,
answers 20% of its calls with a 500. Each round then sends N prompts (default 1,500) through:

- routeq: ONE `routeq worker` process (concurrency C, default 200) on real Redis and a fresh SQLite
  file, the prompts submitted with `Client.submit_batch`; timed from the start of the submit to the
  batch's `batch.completed` event (the worker is started and registered before the clock, as a
  fleet's workers would be). Retries and failover are routeq's defaults: up to 3 attempts per
  deployment with full-jitter backoff (0.5 s base), then the next candidate of the plan.
- LiteLLM: `litellm.Router` in one process, no queue, no SQL: `acompletion` for every prompt through
  `asyncio.gather` under a `Semaphore(C)`; timed from the first call to the last answer (imports and
  Router construction before the clock). Each deployment is `openai/<model>` with `api_base` on the
  sim. `--litellm-routing chain` (default) gives LiteLLM routeq's plan: model gpt-4.1-nano,
  `num_retries=2` (3 attempts, with LiteLLM's backoff), then `fallbacks` to gpt-4o-mini and
  gpt-4o; `shuffle` puts the three in one model group (LiteLLM's simple-shuffle load balancing,
  `num_retries=2`, retried at once on another deployment).

Prints per round both rates (requests/s), the ratio routeq / LiteLLM, the CPU time each side's
process spent while timed (the routeq worker's from /proc, so Linux only; Redis's own CPU and the
submitting client's are not in it) and the checks: every request succeeded (after retries or
failover), and the calls and 500s each side made as the sim counted them. With several rounds
(default 3) it also prints the median and the range: on a loaded machine single runs move a lot,
and the CPU time a request moves much less than the rates.

LiteLLM is not a dependency of routeq: the bench makes its own virtualenv with `litellm==1.80.0`
(and `certifi` pinned) under ~/.cache/routeq-bench/ (or --litellm-venv) the first time, from the
package index pip is configured with, and reuses it afterwards; the LiteLLM side runs in a
subprocess of that virtualenv (the script is LITELLM_SCRIPT below; it prints its figures as JSON).
No real provider is called: everything is on 127.0.0.1.

The Redis database (default redis://127.0.0.1:6379/13, or ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd at
the start, between rounds and at the end: give it a database that holds nothing you want. A default
run (3 rounds) took 2.5 to 3.5 minutes on a loaded 2-core machine once the virtualenv existed
(creating it takes a minute or two more); --timeout bounds each side of each round.

Run: `.venv/bin/python bench/vs_litellm.py [--requests N] [--concurrency C] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saturation import routeq_env, spawn_routeq, wait_for_workers
from sqlalchemy import func, select
from throughput import bench_settings, close_services, open_services, process_cpu_s, prompts, sim_server

from producer.client import Client
from storage.jobs import JobStatus
from storage.sql.schema import attempts, jobs

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
LITELLM_VERSION = "1.80.0"
CERTIFI_VERSION = "2026.10.18"
PINS = (f"litellm=={LITELLM_VERSION}", f"certifi=={CERTIFI_VERSION}")
DEFAULT_VENV = Path.home() / ".cache" / "routeq-bench" / f"litellm-{LITELLM_VERSION}"
LATENCY_MS = 50
JITTER_MS = 10
ERROR_RATE = 0.2
FAILING = "gpt-4.1-nano"
# (deployment id = model, quality, sim error rate); the failing one is the cheapest, so routeq's
# balanced strategy ranks it first and every one of its failures is retried or failed over.
DEPLOYMENTS = (("gpt-4.1-nano", 0.6, ERROR_RATE), ("gpt-4o-mini", 0.7, 0.0), ("gpt-4o", 0.85, 0.0))
CHAIN = [dep for dep, _, _ in DEPLOYMENTS]
NUM_RETRIES = 2  # LiteLLM: 3 attempts per deployment, as routeq's max_attempts_per_deployment


def catalog_toml() -> str:
    return "".join(
        f"""
[[deployments]]
id = "{dep}"
kind = "openai"
model = "{dep}"
quality = {quality}
latency_ms = {LATENCY_MS}
context_window = 128000
sim = {{ latency_ms = {LATENCY_MS}, latency_jitter_ms = {JITTER_MS}, error_rate = {rate}, seed = {n} }}
"""
        for n, (dep, quality, rate) in enumerate(DEPLOYMENTS)
    )


LITELLM_SCRIPT = r'''
"""The LiteLLM side of bench/vs_litellm.py: argv[1] is its JSON config; prints one JSON line."""
import asyncio, json, logging, os, sys, time
from collections import Counter

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost map fetched from the web
logging.basicConfig(level=logging.WARNING)
cfg = json.loads(sys.argv[1])
import litellm  # noqa: E402
from litellm import Router  # noqa: E402

litellm.suppress_debug_info = True
litellm.telemetry = False
for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
    logging.getLogger(name).setLevel(logging.CRITICAL)


async def main() -> None:
    router = Router(
        model_list=cfg["model_list"],
        num_retries=cfg["num_retries"],
        fallbacks=cfg["fallbacks"],
        timeout=60,
        routing_strategy="simple-shuffle",
    )
    gate = asyncio.Semaphore(cfg["concurrency"])
    messages = [[{"role": "user", "content": f"Say hello number {i}"}] for i in range(cfg["requests"])]

    async def one(msgs):
        async with gate:
            try:
                reply = await router.acompletion(model=cfg["model"], messages=msgs)
            except Exception as exc:  # counted, not raised: the bench checks the count
                return None, f"{type(exc).__name__}: {exc}"[:300]
            return reply, None

    t0, cpu0 = time.perf_counter(), time.process_time()
    results = await asyncio.gather(*(one(m) for m in messages))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    errors = [e for _, e in results if e is not None]
    replies = [r for r, _ in results if r is not None]
    empty = sum(1 for r in replies if not r.choices[0].message.content)
    models = Counter(str(r.model) for r in replies)
    print(json.dumps({
        "elapsed_s": elapsed, "cpu_s": cpu, "ok": len(replies) - empty, "failed": len(errors), "empty": empty,
        "errors": errors[:3], "models": dict(models),
    }), flush=True)
    # With litellm 1.80.0 asyncio.run does not return after main() (its background work does not end):
    # the figures are out, so leave at once.
    os._exit(0)


asyncio.run(main())
'''


def litellm_python(venv: Path) -> Path:
    """The virtualenv's python with litellm installed: made (and pip-installed) once, then reused."""
    python = venv / "bin" / "python"
    stamp = venv / f".routeq-bench-litellm-{LITELLM_VERSION}"
    if stamp.exists():
        return python
    print(f"making {venv} (litellm=={LITELLM_VERSION}, certifi=={CERTIFI_VERSION}); once only", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PINS],
        check=True,
    )
    stamp.touch()
    return python


def litellm_config(sim_url: str, args: argparse.Namespace) -> dict[str, Any]:
    def entry(group: str, dep: str) -> dict[str, Any]:
        params = {"model": f"openai/{dep}", "api_base": f"{sim_url}/{dep}/v1", "api_key": "sk-bench-dummy"}
        return {"model_name": group, "litellm_params": params}

    if args.litellm_routing == "chain":  # routeq's plan: the failing one, 3 attempts, then the others
        model_list = [entry(dep, dep) for dep in CHAIN]
        model, fallbacks = CHAIN[0], [{CHAIN[0]: CHAIN[1:]}]
    else:  # one group, LiteLLM's load balancing
        model_list = [entry("bench", dep) for dep in CHAIN]
        model, fallbacks = "bench", []
    return {
        "model_list": model_list,
        "model": model,
        "fallbacks": fallbacks,
        "num_retries": NUM_RETRIES,
        "concurrency": args.concurrency,
        "requests": args.requests,
    }


@dataclass
class Side:
    """One side of one round: its rate, its checks and the calls the sim saw from it."""

    rate: float = 0.0
    elapsed_s: float = 0.0
    succeeded: int = 0
    failed: int = 0
    calls: Counter[str] = field(default_factory=Counter)  # by deployment
    errors_500: int = 0
    cpu_s: float | None = None  # CPU time of the routeq worker / LiteLLM process while timed
    detail: str = ""


def worker_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        return process_cpu_s(pid)
    except OSError:
        return None


async def sim_counts(sim_url: str) -> dict[str, Counter[str]]:
    import httpx2  # noqa: PLC0415 - only to read the sim's counters

    async with httpx2.AsyncClient() as http:
        deployments = (await http.get(f"{sim_url}/_sim/stats")).json()["deployments"]
    return {dep: Counter(stats["by_outcome"]) for dep, stats in deployments.items()}


async def sim_delta(sim_url: str, before: dict[str, Counter[str]], side: Side) -> None:
    after = await sim_counts(sim_url)
    for dep, counts in after.items():
        diff = counts - before.get(dep, Counter())
        side.calls[dep] = sum(diff.values())
        side.errors_500 += diff.get("server_error", 0)


async def routeq_side(args: argparse.Namespace, tmp: Path, sim_url: str, n_round: int) -> Side:
    database_url = f"sqlite+aiosqlite:///{tmp}/routeq-round-{n_round}.db"
    catalog = tmp / "bench-catalog.toml"  # written by sim_server
    settings = bench_settings(args.redis_url, database_url, "bench:vs-litellm")
    redis, store = await open_services(settings)
    env = routeq_env(settings, catalog, sim_url) | {
        "ROUTEQ_DEFAULT_USER_BUDGET_USD": "1000000",  # the default $1 cap would stop a long run
        "ROUTEQ_WORKER_CONCURRENCY": str(args.concurrency),
    }
    worker = spawn_routeq(["worker"], env)
    side = Side()
    try:
        async with asyncio.timeout(args.timeout):
            await wait_for_workers(redis, [worker])
            before = await sim_counts(sim_url)
            items = prompts(args.requests)  # built before the clock, as on the LiteLLM side
            client = Client(redis, store, settings)
            cpu0 = worker_cpu_s(worker.pid)
            t0 = time.perf_counter()
            batch_id = await client.submit_batch(items, name="vs-litellm")
            async for event in client.events(batch_id):
                if event.type == "batch.completed":
                    break
            side.elapsed_s = time.perf_counter() - t0
            cpu1 = worker_cpu_s(worker.pid)
            if cpu0 is not None and cpu1 is not None:
                side.cpu_s = cpu1 - cpu0
        await sim_delta(sim_url, before, side)
        batch = await client.batch(batch_id)
        async with store.engine.connect() as conn:
            failed_attempts = await conn.scalar(
                select(func.count()).select_from(attempts).where(attempts.c.outcome != "success")
            )
            in_batch = jobs.c.batch_id == batch_id
            failovers = await conn.scalar(select(func.sum(jobs.c.failovers)).where(in_batch))
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await close_services(redis, store)
    side.rate = args.requests / side.elapsed_s
    side.succeeded = batch.counts.get(JobStatus.SUCCEEDED, 0)
    side.failed = args.requests - side.succeeded
    side.detail = f"{failed_attempts} failed attempts in SQL, {failovers or 0} failovers"
    return side


async def litellm_side(args: argparse.Namespace, python: Path, sim_url: str) -> Side:
    before = await sim_counts(sim_url)
    config = json.dumps(litellm_config(sim_url, args))
    proc = await asyncio.create_subprocess_exec(
        str(python), "-c", LITELLM_SCRIPT, config, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        async with asyncio.timeout(args.timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"the LiteLLM side failed:\n{err.decode()[-3000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    side = Side(elapsed_s=result["elapsed_s"], succeeded=result["ok"], failed=args.requests - result["ok"])
    side.cpu_s = result["cpu_s"]
    side.rate = args.requests / side.elapsed_s
    await sim_delta(sim_url, before, side)
    side.detail = f"answered by {result['models']}"
    if result["errors"]:
        side.detail += f"; first errors: {result['errors']}"
    return side


def show(label: str, side: Side, n: int) -> None:
    calls = ", ".join(f"{dep} {side.calls[dep]:,}" for dep in CHAIN)
    check = "OK" if side.succeeded == n else "FAILED"
    cpu = f", {side.cpu_s:.1f} s CPU = {1000 * side.cpu_s / n:.1f} ms a request" if side.cpu_s else ""
    print(f"   {label:<18}{side.rate:8,.0f} requests/s  ({side.elapsed_s:.2f} s{cpu})")
    print(f"      check {check}: {side.succeeded:,}/{n:,} succeeded, {side.failed:,} failed")
    print(f"      sim: {sum(side.calls.values()):,} calls ({calls}), {side.errors_500:,} of them 500s")
    print(f"      {side.detail}")


def spread(values: list[float], fmt: str) -> str:
    return f"median {statistics.median(values):{fmt}} (min {min(values):{fmt}}, max {max(values):{fmt}})"


async def run(args: argparse.Namespace, tmp: Path, sim_url: str, python: Path) -> bool:
    ratios: list[float] = []
    rates: dict[str, list[float]] = {"routeq": [], "litellm": []}
    cpu_ms: dict[str, list[float]] = {"routeq": [], "litellm": []}
    all_ok = True
    for n_round in range(1, args.rounds + 1):
        routeq = await routeq_side(args, tmp, sim_url, n_round)
        litellm = await litellm_side(args, python, sim_url)
        ratio = routeq.rate / litellm.rate
        load = os.getloadavg()[0]
        print(f"\nround {n_round}/{args.rounds}: {args.requests:,} requests (load average {load:.1f})")
        show("routeq worker:", routeq, args.requests)
        show("LiteLLM Router:", litellm, args.requests)
        print(f"   {'routeq / LiteLLM:':<18}{ratio:8.2f}")
        ratios.append(ratio)
        rates["routeq"].append(routeq.rate)
        rates["litellm"].append(litellm.rate)
        for name, side in (("routeq", routeq), ("litellm", litellm)):
            if side.cpu_s is not None:
                cpu_ms[name].append(1000 * side.cpu_s / args.requests)
        all_ok &= routeq.succeeded == args.requests and litellm.succeeded == args.requests
    if args.rounds > 1:
        print(f"\n{args.rounds} rounds:")
        print(f"   routeq worker:    {spread(rates['routeq'], ',.0f')} requests/s")
        print(f"   LiteLLM Router:   {spread(rates['litellm'], ',.0f')} requests/s")
        print(f"   routeq / LiteLLM: {spread(ratios, '.2f')}")
        if cpu_ms["routeq"] and cpu_ms["litellm"]:
            print(f"   CPU a request:    routeq {spread(cpu_ms['routeq'], '.1f')} ms")
            print(f"                     LiteLLM {spread(cpu_ms['litellm'], '.1f')} ms")
    return all_ok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--requests", type=int, default=1_500)
    parser.add_argument("--concurrency", type=int, default=200, help="routeq worker and LiteLLM semaphore")
    parser.add_argument("--rounds", type=int, default=3, help="routeq then LiteLLM, this many times")
    parser.add_argument(
        "--litellm-routing",
        choices=("chain", "shuffle"),
        default="chain",
        help="chain: routeq's plan as num_retries + fallbacks; shuffle: one load-balanced model group",
    )
    parser.add_argument("--litellm-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds each side of a round may take")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    python = litellm_python(args.litellm_venv)
    print(
        f"sim:         routeq sim on loopback, {len(DEPLOYMENTS)} openai-wire deployments {CHAIN}, "
        f"{LATENCY_MS} ms +- {JITTER_MS}; {FAILING} answers {ERROR_RATE:.0%} of calls with a 500"
    )
    print(
        f"routeq:      1 `routeq worker`, concurrency {args.concurrency}, default retries/failover; "
        f"{args.redis_url} (FLUSHDB'd), fresh SQLite per round"
    )
    routing = (
        f"model {CHAIN[0]}, num_retries={NUM_RETRIES}, fallbacks {CHAIN[1:]}"
        if args.litellm_routing == "chain"
        else f"one model group of {len(CHAIN)} (simple-shuffle), num_retries={NUM_RETRIES}"
    )
    print(f"LiteLLM:     {PINS[0]} Router, 1 process, Semaphore({args.concurrency}); {routing}")
    python_version = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"python:      {python_version}, {os.cpu_count()} CPUs; single runs move with the machine's load")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="routeq-bench-") as tmp,
            sim_server(Path(tmp), catalog_toml()) as sim_url,
        ):
            ok = asyncio.run(run(args, Path(tmp), sim_url, python))
    except TimeoutError:
        raise SystemExit(f"gave up after --timeout {args.timeout:g} s: lower --requests") from None
    if not ok:
        raise SystemExit("a request was lost or failed: see the checks above")


if __name__ == "__main__":
    main()
