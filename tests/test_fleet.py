"""Limits that hold for the fleet: real `routeq worker` processes sharing one Redis and one sim server.

Needs ROUTEQ_TEST_REDIS_URL and ROUTEQ_TEST_DATABASE_URL (always set in CI). Time is scaled down
(rate windows of seconds, cooldowns of seconds); every wait has a deadline and every process is
stopped by the `fleet` context.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import RedisError

from producer.client import Client
from router_core import CircuitState
from storage.connections import connect_redis
from storage.fleet.state import RedisFleetState
from storage.jobs import JobStatus, NewJob
from tests.backends import Backend, open_backend
from tests.fleet import (
    PROCESS_TEST_TIMEOUT_S,
    finished,
    fleet,
    free_port,
    most_in_any_window,
    set_sim_profile,
    sim_stats,
    until,
)
from tests.test_pipeline import chat

# Each test here starts Python processes (workers, a sim, an API) and waits on conditions with deadlines
# of its own; on a busy machine process start-up alone can take tens of seconds, so the per-test
# timeout (60 s in pyproject.toml) is raised above those deadlines instead of cutting them short.
pytestmark = pytest.mark.timeout(PROCESS_TEST_TIMEOUT_S)


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_backend("services", tmp_path, worker_concurrency=50) as backend:
        yield backend


def sim_deployment(
    id: str,
    *,
    quality: float,
    price: tuple[float, float],
    extra: str = "",
    sim: str = "",
    latency_ms: int = 20,
) -> str:
    return f"""
[[deployments]]
id = "{id}"
kind = "sim"
model = "{id}-model"
quality = {quality}
latency_ms = 20
context_window = 100000
price = {{ input_per_mtok = {price[0]}, output_per_mtok = {price[1]} }}
sim = {{ latency_ms = {latency_ms}, latency_jitter_ms = 10{sim} }}
{extra}
"""


LIMIT, WINDOW_S = 20, 2.0
# The sim enforces the same limit on its own clock, on arrival; any 429 from it means the fleet
# overshot as the provider measures it. (Workers count a call until a window after its answer,
# which came after its arrival: see "Rate windows" in router_core/fleet.py.)
SIM_WINDOW_S = WINDOW_S


async def test_rpm_limit_holds_across_two_worker_processes(services: Backend, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        sim_deployment(
            "lim-a",
            quality=0.8,
            price=(1.0, 4.0),
            extra=f"rpm = {LIMIT}\nrate_window_s = {WINDOW_S}",
            sim=f", rpm = {LIMIT}, window_s = {SIM_WINDOW_S}",
        )
    )
    jobs = 3 * LIMIT
    async with fleet(tmp_path) as procs:
        sim_url = await procs.sim(catalog)
        for n in range(2):
            procs.worker(f"worker-{n}", services.settings, catalog, ROUTEQ_SIM_URL=sim_url)
        redis = await services.redis()
        await procs.registered(redis, 2)
        client = Client(redis, services.store, services.settings)
        started = time.monotonic()
        batch_id = await client.submit_batch([NewJob(f"p-{i}", chat(f"prompt {i}")) for i in range(jobs)])
        await finished(client, batch_id, timeout_s=60)
        elapsed = time.monotonic() - started
        stats = (await sim_stats(sim_url))["lim-a"]

    batch = await client.batch(batch_id)
    assert batch.counts == {JobStatus.SUCCEEDED: jobs}
    assert stats["by_outcome"].get("rpm_limited", 0) == 0, stats["by_outcome"]
    assert most_in_any_window(stats["admitted_at"], SIM_WINDOW_S) <= LIMIT
    # Three windows' worth of jobs need at least two full windows of waiting.
    assert elapsed >= 2 * WINDOW_S - 0.1, elapsed
    workers = Counter(job.worker for job in [j async for j in client.results(batch_id)])
    assert len(workers) == 2, workers


async def test_breaker_opens_for_every_worker_and_a_probe_closes_it(
    services: Backend, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.toml"
    # flaky-a is cheaper, better and as fast as backup-b: every strategy tries it first.
    catalog.write_text(
        sim_deployment("flaky-a", quality=0.9, price=(0.5, 2.0), sim=", error_rate = 1.0")
        + sim_deployment("backup-b", quality=0.7, price=(1.0, 4.0))
    )
    breaker = {
        "ROUTEQ_BREAKER_FAILURES": "3",
        "ROUTEQ_BREAKER_WINDOW_S": "60",
        "ROUTEQ_BREAKER_COOLDOWN_S": "4",
        "ROUTEQ_MAX_ATTEMPTS_PER_DEPLOYMENT": "1",
        # Four slots a worker: one worker alone needs ten turns of a 20 ms call for the 40 jobs of
        # step 2, so the other, woken by the same ping, takes some. With 50 slots the first worker
        # awake could claim them all before the other's first claim (claims take 10 at once).
        "ROUTEQ_WORKER_CONCURRENCY": "4",
    }
    async with fleet(tmp_path) as procs:
        sim_url = await procs.sim(catalog)
        for n in range(2):
            procs.worker(f"worker-{n}", services.settings, catalog, ROUTEQ_SIM_URL=sim_url, **breaker)
        redis = await services.redis()
        await procs.registered(redis, 2)
        client = Client(redis, services.store, services.settings)
        # Read with the default policy (30 s cooldown): the 4 s the workers opened it with is stored.
        fleet_state = RedisFleetState(redis)

        async def circuit() -> CircuitState:
            return (await fleet_state.snapshot(["flaky-a"]))["flaky-a"].circuit

        async def run_batch(name: str, n: int) -> list[str]:
            batch_id = await client.submit_batch(
                [NewJob(f"{name}-{i}", chat(f"{name} {i}")) for i in range(n)]
            )
            await finished(client, batch_id, timeout_s=60)
            jobs = [job async for job in client.results(batch_id)]
            assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
            return [str(job.deployment) for job in jobs]

        # 1. flaky-a fails: after three failures its circuit opens; every job fails over to backup-b.
        assert set(await run_batch("first", 30)) == {"backup-b"}
        assert await circuit() is CircuitState.OPEN
        failures_while_closed = (await sim_stats(sim_url))["flaky-a"]["requests"]

        # 2. While it is open, no worker sends flaky-a anything, and both workers take jobs.
        batch_id = await client.submit_batch([NewJob(f"open-{i}", chat(f"open {i}")) for i in range(40)])
        await finished(client, batch_id, timeout_s=60)
        jobs = [job async for job in client.results(batch_id)]
        assert {job.deployment for job in jobs} == {"backup-b"}
        assert len({job.worker for job in jobs}) == 2
        assert (await sim_stats(sim_url))["flaky-a"]["requests"] == failures_while_closed

        # 3. flaky-a recovers; after the cooldown one probe closes the circuit and traffic returns.
        await set_sim_profile(sim_url, "flaky-a", {"latency_ms": 20})

        async def half_open() -> bool:
            return await circuit() is CircuitState.HALF_OPEN

        await until(half_open, timeout_s=10, what="the circuit to half-open")
        assert "flaky-a" in await run_batch("after", 30)
        assert await circuit() is CircuitState.CLOSED
        assert (await sim_stats(sim_url))["flaky-a"]["by_outcome"]["ok"] > 0


KILL_JOBS = 1_000


async def test_sigkilled_worker_loses_no_job_and_bills_each_call_once(
    services: Backend, tmp_path: Path
) -> None:
    """SIGKILL one of two workers three times mid-batch, restarting it each time."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        sim_deployment("sim-a", quality=0.8, price=(1.0, 4.0), latency_ms=150)
        + sim_deployment("sim-b", quality=0.7, price=(0.5, 2.0), latency_ms=150)
    )
    lease = {"ROUTEQ_JOB_LEASE_S": "2"}
    async with fleet(tmp_path) as procs:
        sim_url = await procs.sim(catalog)
        for name in ("steady", "victim"):
            procs.worker(name, services.settings, catalog, ROUTEQ_SIM_URL=sim_url, **lease)
        redis = await services.redis()
        await procs.registered(redis, 2)
        client = Client(redis, services.store, services.settings)
        batch_id = await client.submit_batch(
            [NewJob(f"k-{i}", chat(f"kill test prompt {i}")) for i in range(KILL_JOBS)]
        )
        for kill, at in enumerate((0.2, 0.45, 0.7), start=1):

            async def reached(share: float = at) -> bool:
                return (await client.batch(batch_id)).done >= share * KILL_JOBS

            await until(reached, timeout_s=120, what=f"{at:.0%} of the batch")
            procs.stop("victim", signal.SIGKILL)
            procs.worker("victim", services.settings, catalog, ROUTEQ_SIM_URL=sim_url, **lease)
            print(f"kill {kill}: SIGKILL at {(await client.batch(batch_id)).done} jobs done")
        events = await finished(client, batch_id, timeout_s=180)
        sim = await sim_stats(sim_url)

    jobs = [job async for job in client.results(batch_id)]
    assert Counter(job.status for job in jobs) == Counter({JobStatus.SUCCEEDED: KILL_JOBS})
    terminal = Counter(e.data["job_id"] for e in events if e.type.startswith("job."))
    assert terminal == Counter({job.id: 1 for job in jobs})  # exactly one terminal event per job
    assert [e.type for e in events].count("batch.completed") == 1

    ledger = await services.store.ledger.rows(batch_id=batch_id)
    keys = Counter((row["job_id"], row["run"], row["attempt_no"]) for row in ledger)
    assert max(keys.values()) == 1  # no call charged twice
    calls = sum(d["by_outcome"].get("ok", 0) for d in sim.values())  # calls the sim answered or began
    estimated = sum(1 for row in ledger if row["estimated"])
    print(f"sim calls {calls}, ledger charges {len(ledger)} ({estimated} estimated)")
    # Every call the provider saw is charged. A charge beyond that can only be an estimated one:
    # a worker killed after writing a call's hold and before its request left the machine.
    assert calls <= len(ledger) <= calls + estimated
    confirmed_per_job = Counter(row["job_id"] for row in ledger if not row["estimated"])
    assert all(confirmed_per_job[job.id] >= 1 for job in jobs)


RESTART_JOBS = 300


async def test_workers_ride_out_a_redis_restart(services: Backend, tmp_path: Path) -> None:
    """Stop our own redis-server (appendonly yes) mid-batch and start it again: nothing is lost."""
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    redis_argv = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data),
    ]  # fmt: skip
    settings = services.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(sim_deployment("sim-a", quality=0.8, price=(1.0, 4.0), latency_ms=50))
    async with fleet(tmp_path) as procs:
        procs.spawn("redis", redis_argv)
        await until(lambda: _listening(port), timeout_s=10, what="our redis-server")
        redis = await connect_redis(settings)
        for n in range(2):
            procs.worker(f"worker-{n}", settings, catalog)
        await procs.registered(redis, 2)
        client = Client(redis, services.store, settings)
        batch_id = await client.submit_batch(
            [NewJob(f"r-{i}", chat(f"restart {i}")) for i in range(RESTART_JOBS)]
        )

        async def a_third_done() -> bool:
            return (await client.batch(batch_id)).done >= RESTART_JOBS // 3

        await until(a_third_done, timeout_s=60, what="a third of the batch")
        assert procs.stop("redis") == 0  # SIGTERM: Redis flushes its append-only file and exits
        await asyncio.sleep(1.5)  # the workers see the outage
        procs.spawn("redis", redis_argv)
        await until(lambda: _pings(redis), timeout_s=10, what="redis to come back")
        events = await finished(client, batch_id, timeout_s=120)
        alive = {name: proc.poll() is None for name, proc in procs.procs.items()}
        await redis.aclose()

    assert alive == {"redis": True, "worker-0": True, "worker-1": True}  # reconnected by themselves
    jobs = [job async for job in client.results(batch_id)]
    assert Counter(job.status for job in jobs) == Counter({JobStatus.SUCCEEDED: RESTART_JOBS})
    terminal = Counter(e.data["job_id"] for e in events if e.type.startswith("job."))
    assert terminal == Counter({job.id: 1 for job in jobs})
    ledger = await services.store.ledger.rows(batch_id=batch_id)
    confirmed = Counter(row["job_id"] for row in ledger if not row["estimated"])
    assert confirmed == Counter({job.id: 1 for job in jobs})


async def _pings(redis: Any) -> bool:
    try:
        return bool(await redis.ping())
    except (RedisError, OSError):
        return False


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
