"""HTTP API benchmark (a benchmark, not a test): chat completions through `routeq serve` next to the
Python client on the same Redis, the same worker process and the same sim.

Prints, from one run:
1. direct: C concurrent tasks doing `Client.submit` + `Client.wait` (what the API does inside);
2. bare front, light caller: the light caller below against bench/bare_front.py, a bare ASGI
   application on uvicorn that does only what the API's route does inside (no FastAPI, key, limits
   or validation): the least any HTTP front can cost here, so bare / direct is what the HTTP hop
   itself costs on this machine, and API / bare front what routeq's API adds on top;
3. API, light caller: C concurrent POSTs of the Chat Completions JSON body on one shared aiohttp
   session against `routeq serve` (its own process) on loopback, each answer parsed and checked
   (a `chat.completion` holding the sim's text);
4. API, openai SDK: the same through the official SDK's `chat.completions.create`;
5. API, streamed: the SDK with `stream=True`, consumed to the end (time to first chunk too).
API / direct is what the HTTP layer costs; it is printed for each caller, the line naming it, and
again from the CPU a request of the processes it times (`all` below; direct's over the API's):
with the callers, the server, the worker and Redis sharing two cores, the rates follow it. The
callers are the bench's load generator, not routeq: they run in this process, on the same two
cores as the server, so a heavy caller (the SDK: about as much CPU per request as the server)
takes the server's core where production callers run elsewhere. The light caller measures the
API; the SDK's ratio says what a caller on the same machine sees. Every request must succeed; a
failed one stops the run.
With wrk, the API phase's lines also give the median of each step its answers' `Server-Timing`
header names (producer/api/timing.py: auth, admit, store, enqueue, job, read; route within job)
and what wrk's median latency holds past their sum (the HTTP hop and the server's event loop).
Each line also gives the CPU time per request of the worker, of `routeq serve`, of the bare front,
of the sim, of this process (the callers: the client, aiohttp, or the openai SDK) and their sum
(`all`; Redis, shared with whatever else runs, is left out), read from /proc: on a machine whose
cores are shared, CPU per request says what a change saved when the rates are noisy, and when other
work leaves less than two cores the rates follow `all`.
The worker and the sim (0 ms latency) are separate processes, as in production; the Redis database
(default redis://127.0.0.1:6379/14, or ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd at the start and end.

With `--caller wrk` the bare and API phases are driven by wrk (`apt-get install wrk`; bench/wrk_chat.lua
writes the same bodies and checks the same answers) for `--wrk-seconds` each: a C load generator
costs about a tenth of the light caller's CPU a request, so the HTTP phases keep nearly all of the
two cores, as with callers on other machines. Its rates are wrk's count over wrk's time.

The phases run `--rounds R` times in turn (5 by default; other prompts each round) and each ratio
is the median of the rounds' ratios, every round's shown: on a shared host one round's phases meet
different loads (a round's API / direct moved from 0.72 to 1.31 within one 9-round run here).

Run: `.venv/bin/python bench/api.py [--requests N] [--concurrency C] [--rounds R]
[--phases direct,bare,http,api,stream] [--caller aiohttp|wrk]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
from arq.connections import ArqRedis
from openai.types.chat import ChatCompletionMessageParam
from saturation import routeq_env, spawn_routeq, start_workers, wait_for_workers
from throughput import (
    DEFAULT_REDIS_URL,
    NOTE,
    bench_settings,
    close_services,
    free_port,
    open_services,
    process_cpu_s,
    sim_server,
)

from producer.client import Client
from router_core.models import ChatRequest, Message
from storage.bus.registry import queue_stats
from storage.jobs import JobStatus
from storage.settings import Settings

Call = Callable[[int], Awaitable[float | None]]


def cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds of process `pid` (this process when None)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    return process_cpu_s(pid)


def sim_pid() -> int | None:
    """The `routeq sim` process this bench started (a child of this process), from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):  # gone meanwhile, or not ours to read
            continue
        if ppid == os.getpid() and b"sim" in command[2:3]:
            return int(entry.name)
    return None


def start_api(settings: Settings, catalog: Path, sim_url: str, port: int) -> subprocess.Popen[bytes]:
    return spawn_routeq(["serve", "--port", str(port)], routeq_env(settings, catalog, sim_url))


def start_bare_front(settings: Settings, catalog: Path, sim_url: str, port: int) -> subprocess.Popen[bytes]:
    """bench/bare_front.py on `port`: the least an HTTP front can do (see its docstring)."""
    script = Path(__file__).with_name("bare_front.py")
    return subprocess.Popen(
        [sys.executable, str(script), str(port)],
        env=routeq_env(settings, catalog, sim_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_for_port(port: int, proc: subprocess.Popen[bytes], name: str) -> None:
    while True:
        with socket.socket() as conn:
            if conn.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited at start-up")
        await asyncio.sleep(0.05)


async def measure(
    label: str, call: Call, requests: int, concurrency: int, pids: dict[str, int | None], *, first: int = 0
) -> tuple[float, float]:
    """Run `requests` calls (prompts `first`, `first` + 1, ...), `concurrency` at a time; print the
    rate, latencies and CPU per request of each process in `pids`; return the rate and the CPU a
    request of all of them (ms)."""
    latencies: list[float] = []
    firsts: list[float] = []
    queue = iter(range(first, first + requests))

    async def lane() -> None:
        for i in queue:
            started = time.perf_counter()
            first = await call(i)
            latencies.append(time.perf_counter() - started)
            if first is not None:
                firsts.append(first - started)

    cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = {name: (cpu_s(pid) - cpu_before[name]) / requests * 1000 for name, pid in pids.items()}
    rate = requests / elapsed
    p50, p95 = statistics.quantiles(latencies, n=20)[9], statistics.quantiles(latencies, n=20)[18]
    after = f"   first chunk p50 {statistics.median(firsts) * 1000:6.1f} ms" if firsts else ""
    return rate, report(label, rate, p50 * 1000, p95 * 1000, cpu, after=after)


def report(
    label: str, rate: float, p50_ms: float, p95_ms: float, cpu: dict[str, float], *, after: str
) -> float:
    """Print a phase's rate and latencies (then `after`), and the CPU a request of each process
    timed (ms) and of all of them; returns that sum."""
    print(f"   {label:<28} {rate:8.1f} req/s   p50 {p50_ms:6.1f} ms   p95 {p95_ms:6.1f} ms{after}")
    cpu["all"] = sum(cpu.values())
    print("   " + " " * 28 + "   CPU ms/request: " + "  ".join(f"{k} {v:5.2f}" for k, v in cpu.items()))
    return cpu["all"]


def run_wrk(command: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """Run wrk to its end: its exit status, its output and the CPU seconds it used (wait4's usage)."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # its output is a few lines: the pipe never fills
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = proc.stdout.read() if proc.stdout else ""
    return proc.returncode, output, usage.ru_utime + usage.ru_stime


async def measure_wrk(
    label: str, *, url: str, secret: str, over: str, args: argparse.Namespace, pids: dict[str, int | None]
) -> tuple[float, float]:
    """As `measure`, with wrk as the callers: `args.concurrency` connections of one wrk thread POST
    chat completions to `url` for `args.wrk_seconds` (bench/wrk_chat.lua checks every answer). The
    callers' CPU is wrk's own; requests wrk left unanswered when its time was up are drained before
    the next phase (`drained`)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("--caller wrk needs wrk on the PATH (Debian: apt-get install wrk)")
    command = [wrk, "-t1", f"-c{args.concurrency}", f"-d{args.wrk_seconds}s", "--timeout", "60s"]
    command += ["-s", str(Path(__file__).with_name("wrk_chat.lua")), url]
    env = os.environ | {"WRK_SECRET": secret, "WRK_OVER": over}
    cpu_before = {name: cpu_s(pid) for name, pid in pids.items() if pid is not None}
    status, output, wrk_cpu_s = await asyncio.to_thread(run_wrk, command, env)
    cpu_after = {name: cpu_s(pid) for name, pid in pids.items() if pid is not None}
    found = re.search(r"^routeq-wrk (.*)$", output, re.MULTILINE)
    if status != 0 or found is None:
        raise SystemExit(f"wrk failed (exit {status}):\n{output}")
    fields = dict(field.split("=", 1) for field in found.group(1).split(" first_bad=")[0].split())
    requests, bad = int(fields["requests"]), int(fields["bad"]) + int(fields["socket_errors"])
    if bad or not requests:
        raise SystemExit(f"{bad} of {requests} requests through wrk failed: {found.group(1)}")
    rate = requests / (int(fields["duration_us"]) / 1e6)
    p50, p95 = int(fields["p50_us"]) / 1000, int(fields["p95_us"]) / 1000
    cpu = {name: (cpu_after[name] - cpu_before[name]) / requests * 1000 for name in cpu_after}
    cpu["callers"] = wrk_cpu_s / requests * 1000
    total = report(label, rate, p50, p95, cpu, after=f"   ({requests:,} requests)")
    steps = re.search(r"^routeq-wrk-steps (.*)$", output, re.MULTILINE)
    if steps is not None:
        print_steps(dict(step.split("=", 1) for step in steps.group(1).split()), p50)
    return rate, total


def print_steps(medians: dict[str, str], p50_ms: float) -> None:
    """The API's steps from its answers' `Server-Timing` header (the median of each, ms), and what
    wrk's median latency holds past their sum: the HTTP hop and the server's event loop. `route`
    (the worker's walk) is part of `job`, not added again."""
    shown = "  ".join(f"{name} {float(ms):.2f}" for name, ms in medians.items())
    past = p50_ms - sum(float(ms) for name, ms in medians.items() if name != "route")
    print("   " + " " * 28 + f"   steps, medians (ms): {shown}   past their sum: {past:.2f}")


async def drained(redis: ArqRedis, queue: str) -> None:
    """Until the worker has run every job queued (what wrk's unanswered requests left behind)."""
    while True:
        if not (await queue_stats(redis, queue, now_ms=int(time.time() * 1000))).depth:
            return
        await asyncio.sleep(0.05)


def calls(client: Client, sdk: openai.AsyncOpenAI) -> tuple[Call, Call, Call]:
    """The three ways of asking: the Python client, the API, the API streamed. Every request is a
    prompt of its own: the response cache (on by default) would answer a repeated one without a
    provider call, and make whichever phase repeats its prompt look cheaper than the others."""

    def messages(text: str) -> list[ChatCompletionMessageParam]:
        return [{"role": "user", "content": text}]

    async def direct(i: int) -> float | None:
        request = ChatRequest(messages=[Message(role="user", content=f"Say hello {i}")])
        job = await client.wait(await client.submit(request))
        if job.status != JobStatus.SUCCEEDED:
            raise SystemExit(f"direct request {i} failed: {job.error}")
        return None

    async def plain(i: int) -> float | None:
        reply = await sdk.chat.completions.create(model="auto", messages=messages(f"Say hello {i} over HTTP"))
        if not reply.choices[0].message.content:
            raise SystemExit(f"API request {i} came back empty")
        return None

    async def streamed(i: int) -> float | None:
        first: float | None = None
        stream = await sdk.chat.completions.create(
            model="auto", messages=messages(f"Say hello {i}, streamed"), stream=True
        )
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
        if first is None:
            raise SystemExit(f"streamed request {i} had no text")
        return first

    return direct, plain, streamed


def light_call(session: aiohttp.ClientSession, url: str, secret: str, over: str) -> Call:
    """The API asked by a light HTTP client: the body an SDK would send, POSTed on one shared
    aiohttp session, the JSON answer parsed and checked (a `chat.completion` holding the sim's
    answer). The bench's callers are its load generator, not routeq: on a machine of two cores a
    heavy caller takes CPU from the server it measures, where production callers run elsewhere.
    `over` names the server in each prompt: every server gets prompts of its own (see `calls`)."""
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}

    async def light(i: int) -> float | None:
        body = {"model": "auto", "messages": [{"role": "user", "content": f"Say hello {i} over {over}"}]}
        async with session.post(url, data=json.dumps(body), headers=headers) as response:
            payload = await response.read()
        if response.status != 200:
            raise SystemExit(f"API request {i} answered {response.status}: {payload[:200]!r}")
        reply = json.loads(payload)
        content = reply["choices"][0]["message"]["content"] if reply.get("choices") else None
        if reply.get("object") != "chat.completion" or not str(content).startswith("[simulated "):
            raise SystemExit(f"API request {i} is not the sim's chat completion: {payload[:200]!r}")
        return None

    return light


def print_ratios(rates: dict[str, list[float]], cpus: dict[str, list[float]], caller: str) -> None:
    """Each phase's rate over another's (the median over rounds), naming its caller; then the
    second phase's CPU a request over the first's (`all`: every process timed): with the callers and
    the servers on the same two cores, the rates follow it."""
    for phase, base, label in (
        ("bare", "direct", f"bare front / direct, {caller} caller:"),
        ("http", "direct", f"API / direct, {caller} caller:"),
        ("http", "bare", f"API / bare front, {caller} caller:"),
        ("api", "direct", "API / direct, openai SDK caller:"),
        ("stream", "direct", "API stream / direct, openai SDK caller:"),
    ):
        if phase in rates and base in rates:
            ratios = [r / d for r, d in zip(rates[phase], rates[base], strict=True)]
            by_cpu = [d / a for a, d in zip(cpus[phase], cpus[base], strict=True)]
            median, median_cpu = statistics.median(ratios), statistics.median(by_cpu)
            line = f"   {label:<42} {median:6.3f}   by CPU a request {median_cpu:6.3f}"
            if len(ratios) > 1:
                line += "  (medians; each round: " + ", ".join(f"{r:.3f}" for r in ratios) + ")"
            print(line)


# A phase: its name, its label, its call, and for the light caller's phases the port and the name
# of the server in the prompts (what wrk needs with --caller wrk).
Phase = tuple[str, str, Call, tuple[int, str] | None]


async def run_rounds(
    args: argparse.Namespace,
    phases: list[Phase],
    *,
    pids: dict[str, int | None],
    secret: str,
    redis: ArqRedis,
    queue: str,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each phase in turn, `args.rounds` times: every round's rate and CPU a request of each phase."""
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}  # CPU a request of every process timed (`all`)
    for round_no in range(args.rounds):
        if args.rounds > 1:
            print(f" round {round_no + 1} of {args.rounds}")
        for phase, label, call, server in phases:
            if args.caller == "wrk" and server is not None:
                port, server_name = server
                timed = {name: pid for name, pid in pids.items() if name != "callers"}  # wrk's: its own
                over = f"{server_name}, wrk round {round_no}"  # prompts of their own each round
                url = f"http://127.0.0.1:{port}"
                rate, cpu = await measure_wrk(label, url=url, secret=secret, over=over, args=args, pids=timed)
                await drained(redis, queue)
            else:
                # Prompts of their own each round: the response cache answers none of them.
                first = round_no * args.requests
                rate, cpu = await measure(label, call, args.requests, args.concurrency, pids, first=first)
            rates.setdefault(phase, []).append(rate)
            cpus.setdefault(phase, []).append(cpu)
    return rates, cpus


async def run(args: argparse.Namespace, tmp: Path, sim_url: str) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp}/bench-api.db"
    catalog = tmp / "bench-catalog.toml"  # written by sim_server
    settings = bench_settings(args.redis_url, database_url, "bench:api")
    redis, store = await open_services(settings)
    _, secret = await store.api_keys.create(tenant="bench", user_id="bench")
    port, bare_port = free_port(), free_port()
    workers = start_workers(settings, catalog, sim_url, 1)
    api = start_api(settings, catalog, sim_url, port)
    front = start_bare_front(settings, catalog, sim_url, bare_port)
    sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=secret, max_retries=0)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency))
    client = Client(redis, store, settings, tenant="bench", user="bench")
    direct, plain, streamed = calls(client, sdk)
    light = light_call(session, f"http://127.0.0.1:{port}/v1/chat/completions", secret, "plain HTTP")
    bare = light_call(session, f"http://127.0.0.1:{bare_port}/v1/chat/completions", secret, "a bare front")

    try:
        async with asyncio.timeout(args.timeout):
            await wait_for_workers(redis, workers)
            await wait_for_port(port, api, "routeq serve")
            await wait_for_port(bare_port, front, "bench/bare_front.py")
            for warm in (direct, bare, light, plain):  # connections, SDK import paths, SQLite pages
                await asyncio.gather(*(warm(-1 - i) for i in range(10)))  # prompts not measured
            print(f"{args.requests:,} chat completions, {args.concurrency} at a time, 1 worker, sim 0 ms")
            pids = {
                "worker": workers[0].pid,
                "serve": api.pid,
                "front": front.pid,
                "sim": sim_pid(),
                "callers": None,
            }
            if pids["sim"] is None:
                raise SystemExit("the sim process was not found among this process's children")
            caller = "wrk" if args.caller == "wrk" else "light aiohttp"
            phases: list[Phase] = [
                ("direct", "direct (Client.submit+wait)", direct, None),
                ("bare", f"bare HTTP front, {caller} caller", bare, (bare_port, "a bare front")),
                ("http", f"API, {caller} caller", light, (port, "plain HTTP")),
                ("api", "API, openai SDK", plain, None),
                ("stream", "API, openai SDK, stream", streamed, None),
            ]
            chosen = [phase for phase in phases if phase[0] in args.phases]
            rates, cpus = await run_rounds(
                args, chosen, pids=pids, secret=secret, redis=redis, queue=settings.queue_name
            )
        print_ratios(rates, cpus, caller)
        print(f"   ({NOTE})")
    finally:
        await sdk.close()
        await session.close()
        for proc in (api, front, *workers):
            proc.terminate()
        for proc in (api, front, *workers):
            proc.wait(timeout=30)
        await close_services(redis, store)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="run the phases this many times, one after the other; ratios are the median of the rounds' "
        "(on a busy machine a round's phases see different loads)",
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--caller",
        choices=["aiohttp", "wrk"],
        default="aiohttp",
        help="what drives the bare and API phases: the light aiohttp caller in this process, or wrk "
        "(a C load generator, `apt-get install wrk`: about a tenth of aiohttp's CPU a request, the "
        "nearest this machine gets to callers on other machines)",
    )
    parser.add_argument("--wrk-seconds", type=int, default=4, help="how long each wrk phase runs")
    parser.add_argument(
        "--phases",
        type=lambda text: text.split(","),
        default=["direct", "bare", "http", "api", "stream"],
        help="which of direct,bare,http,api,stream to run (e.g. `api` alone, under a profiler)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sim_server(Path(tmp)) as sim_url:
        asyncio.run(run(args, Path(tmp), sim_url))


if __name__ == "__main__":
    main()
