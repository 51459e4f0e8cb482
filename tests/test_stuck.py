"""Nothing stuck after a fault: real `routeq worker` processes, real Redis and PostgreSQL.

- PostgreSQL stalls (a paused proxy: connections open, no bytes) for longer than the job timeout:
  arq drops the jobs whose writes are waiting, the writes land afterwards, and the workers' sweeper
  has to finish them.
- Redis loses everything (FLUSHALL on the test's own redis-server) and a worker dies: `routeq
  requeue` has to finish the batch, as `routeq status` and the Batch API then show.

Needs ROUTEQ_TEST_REDIS_URL and ROUTEQ_TEST_DATABASE_URL. Times are scaled down (a 2 s job timeout,
a 4.5 s stall); every wait has a deadline and every process is stopped by the `fleet` context.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from producer.client import Client
from storage.connections import connect_redis
from storage.jobs import TERMINAL, JobRecord, JobStatus, NewJob
from storage.settings import Settings
from tests.api_harness import serve_api
from tests.backends import Backend, open_backend
from tests.fleet import PROCESS_TEST_TIMEOUT_S, ROUTEQ, finished, fleet, free_port, until
from tests.pg_proxy import PausableProxy
from tests.test_api_batches import jsonl, line
from tests.test_fleet import sim_deployment
from tests.test_pipeline import chat

pytestmark = pytest.mark.timeout(PROCESS_TEST_TIMEOUT_S)

JOBS = 300
# Short enough for seconds-long tests; the stall outlasts the job timeout by more than one lease.
FAST = {
    "ROUTEQ_WORKER_CONCURRENCY": "20",
    "ROUTEQ_JOB_TIMEOUT_S": "2",
    "ROUTEQ_JOB_LEASE_S": "1.5",
    "ROUTEQ_SWEEP_INTERVAL_S": "0.5",
    "ROUTEQ_SWEEP_MIN_AGE_S": "1",
}
STALL_S = 4.5


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_backend("services", tmp_path) as backend:
        yield backend


def write_catalog(tmp_path: Path) -> Path:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        sim_deployment("sim-a", quality=0.8, price=(1.0, 4.0), latency_ms=150)
        + sim_deployment("sim-b", quality=0.7, price=(0.5, 2.0), latency_ms=150)
    )
    return catalog


async def test_a_database_stall_longer_than_the_job_timeout_leaves_nothing_stuck(
    services: Backend, tmp_path: Path
) -> None:
    url = make_url(services.settings.database_url)
    catalog = write_catalog(tmp_path)
    with PausableProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        async with fleet(tmp_path) as procs:
            for n in range(2):
                procs.worker(f"worker-{n}", services.settings, catalog, ROUTEQ_DATABASE_URL=proxied, **FAST)
            redis = await services.redis()
            await procs.registered(redis, 2)
            # The test's own client reads PostgreSQL directly: only the workers' database stalls.
            client = Client(redis, services.store, services.settings)
            batch_id = await client.submit_batch([NewJob(f"s-{i}", chat(f"stall {i}")) for i in range(JOBS)])

            async def a_fifth_done() -> bool:
                return (await client.batch(batch_id)).done >= JOBS // 5

            await until(a_fifth_done, timeout_s=60, what="a fifth of the batch")
            proxy.pause()
            await asyncio.sleep(STALL_S)  # the fault itself: arq times out every job waiting on SQL
            proxy.resume()
            events = await finished(client, batch_id, timeout_s=30)
            await until(lambda: _completed(client, batch_id), timeout_s=30, what="completed_at")
            alive = {name: proc.poll() is None for name, proc in procs.procs.items()}

    assert alive == {"worker-0": True, "worker-1": True}
    jobs = [job async for job in client.results(batch_id)]
    assert Counter(job.status for job in jobs) == Counter({JobStatus.SUCCEEDED: JOBS})
    rerun = sum(1 for job in jobs if job.starts > 1)
    print(f"{rerun} jobs ran again after the stall")
    assert rerun > 0  # the stall did drop jobs, and they were swept back
    terminal = Counter(e.data["job_id"] for e in events if e.type.startswith("job."))
    assert terminal == Counter({job.id: 1 for job in jobs})  # one terminal event, one result each
    assert [e.type for e in events].count("batch.completed") == 1
    await _ledger_matches_jobs(services, batch_id, jobs)


async def _completed(client: Client, batch_id: str) -> bool:
    return (await client.batch(batch_id)).completed_at is not None


async def _ledger_matches_jobs(services: Backend, batch_id: str, jobs: list[JobRecord]) -> None:
    """The ledger is every job's cost, plus the calls of runs whose result lost to another run's.

    A job's `cost_usd` is what the run that set its outcome was billed; a run the sweeper started
    while the first one's commit was still stalled is billed too (the provider billed it), and is
    recorded under its own run number: never a call twice, never a call missing.
    """
    rows = await services.store.ledger.rows(batch_id=batch_id)
    assert max(Counter((r["job_id"], r["run"], r["attempt_no"]) for r in rows).values()) == 1
    per_run: dict[str, dict[int, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in rows:
        per_run[row["job_id"]][row["run"]] += Decimal(row["cost_usd"])
    other_runs = Decimal(0)
    for job in jobs:
        runs = per_run[job.id]
        assert job.cost_usd in runs.values(), (job.id, job.cost_usd, dict(runs))
        other_runs += sum(runs.values(), Decimal(0)) - (job.cost_usd or Decimal(0))
    total = sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))
    assert total == sum((job.cost_usd or Decimal(0) for job in jobs), Decimal(0)) + other_runs
    print(f"ledger {total} USD, of which {other_runs} billed to runs that lost")


async def test_requeue_after_a_flushall_mid_batch_completes_the_batch(
    services: Backend, tmp_path: Path
) -> None:
    """FLUSHALL on our own redis-server mid-batch, one worker SIGKILLed, then `routeq requeue`."""
    port = free_port()
    services.settings = services.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    settings = services.settings
    catalog = write_catalog(tmp_path)
    # No sweeper in this fleet: what finishes the batch is the operator's requeue.
    no_sweeper = {**FAST, "ROUTEQ_SWEEP_INTERVAL_S": "0"}
    async with fleet(tmp_path) as procs:
        procs.spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""])
        await until(lambda: _listening(port), timeout_s=10, what="our redis-server")
        redis = await connect_redis(settings)
        for n in range(2):
            procs.worker(f"worker-{n}", settings, catalog, **no_sweeper)
        await procs.registered(redis, 2)
        async with serve_api(services, worker=False) as api:
            sdk = api.openai(await api.key("acme"))
            lines = [line(f"f-{i}", f"flush {i}", max_tokens=20) for i in range(JOBS)]
            uploaded = await sdk.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
            created = await sdk.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            client = Client(redis, services.store, settings, all_tenants=True)

            async def a_third_done() -> bool:
                return (await client.batch(created.id)).done >= JOBS // 3

            await until(a_third_done, timeout_s=60, what="a third of the batch")
            victim = procs.procs["worker-1"].pid

            async def frozen_while_running() -> bool:
                # Frozen (SIGSTOP), the victim finishes nothing more: a job it runs now is orphaned
                # for sure. Between two jobs it is let go and looked at again a moment later.
                os.kill(victim, signal.SIGSTOP)
                if any(_runs_on(job, victim) for job in await _running(client, created.id)):
                    return True
                os.kill(victim, signal.SIGCONT)
                return False

            await until(frozen_while_running, timeout_s=60, what="worker-1 to be running a job")
            await redis.flushall()
            procs.stop("worker-1", signal.SIGKILL)

            async def only_the_dead_run() -> bool:
                # The survivor's jobs finish (and publish into the emptied Redis); the victim's stay.
                running = await _running(client, created.id)
                return all(_runs_on(job, victim) for job in running)

            await until(only_the_dead_run, timeout_s=30, what="the surviving worker's jobs to finish")
            orphaned = (await client.batch(created.id)).counts.get(JobStatus.RUNNING, 0)
            requeued = _routeq(settings, "requeue", created.id)
            assert "put back on the queue" in requeued
            await until(lambda: _completed(client, created.id), timeout_s=30, what="the batch to complete")

            status = _routeq(settings, "status", created.id)
            batch = await sdk.batches.retrieve(created.id)
            assert batch.output_file_id is not None
            output = (await sdk.files.content(batch.output_file_id)).text.splitlines()
        await redis.aclose()

    assert "completed" in status, status
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (JOBS, 0)
    assert sorted(json.loads(row)["custom_id"] for row in output) == sorted(f"f-{i}" for i in range(JOBS))
    jobs = [job async for job in client.results(created.id)]
    assert {job.status for job in jobs} <= TERMINAL
    print(f"requeue: {requeued.strip()}; {orphaned} of them were the dead worker's running jobs")
    assert orphaned > 0


async def _running(client: Client, batch_id: str) -> list[JobRecord]:
    """The batch's jobs SQL shows running."""
    return [job async for job in client.results(batch_id) if job.status == JobStatus.RUNNING]


def _runs_on(job: JobRecord, pid: int) -> bool:
    """Whether `job` runs on the worker process `pid` (its worker id names the pid)."""
    return f":{pid}:" in (job.worker or "")


def _routeq(settings: Settings, *argv: str) -> str:
    """Run the `routeq` CLI against the test's Redis, database and queue; returns its output."""
    assert ROUTEQ is not None
    assert settings.redis_url is not None
    env = {
        **os.environ,
        "ROUTEQ_REDIS_URL": settings.redis_url,
        "ROUTEQ_DATABASE_URL": settings.database_url,
        "ROUTEQ_QUEUE_NAME": settings.queue_name,
        "COLUMNS": "200",
    }
    done = subprocess.run([ROUTEQ, *argv], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
