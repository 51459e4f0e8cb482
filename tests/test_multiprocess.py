"""Two `routeq worker` processes on real Redis share one 500-job batch; every job completes once.

Needs ROUTEQ_TEST_REDIS_URL and ROUTEQ_TEST_DATABASE_URL (always set in CI). Bounded: the workers
are stopped with SIGTERM at the end, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from producer.client import Client
from storage.jobs import JobStatus, NewJob
from tests.backends import Backend, open_backend
from tests.fleet import PROCESS_TEST_TIMEOUT_S, fleet, until
from tests.test_pipeline import chat

# Each test here starts Python processes (workers, a sim, an API) and waits on conditions with deadlines
# of its own; on a busy machine process start-up alone can take tens of seconds, so the per-test
# timeout (60 s in pyproject.toml) is raised above those deadlines instead of cutting them short.
pytestmark = pytest.mark.timeout(PROCESS_TEST_TIMEOUT_S)

JOBS = 500
CATALOG = """
[[deployments]]
id = "sim-a"
kind = "sim"
model = "sim-a-model"
quality = 0.8
latency_ms = 20
context_window = 100000
price = { input_per_mtok = 1.0, output_per_mtok = 4.0 }
sim = { latency_ms = 20, latency_jitter_ms = 10 }

[[deployments]]
id = "sim-b"
kind = "sim"
model = "sim-b-model"
quality = 0.7
latency_ms = 20
context_window = 100000
price = { input_per_mtok = 0.5, output_per_mtok = 2.0 }
sim = { latency_ms = 20, latency_jitter_ms = 10 }
"""


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_backend("services", tmp_path, worker_concurrency=50) as backend:
        yield backend


async def test_two_worker_processes_share_a_batch(services: Backend, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    async with fleet(tmp_path) as procs:
        for n in range(2):
            procs.worker(f"worker-{n}", services.settings, catalog)
        redis = await services.redis()
        await procs.registered(redis, 2)
        client = Client(redis, services.store, services.settings)
        batch_id = await client.submit_batch([NewJob(f"p-{i}", chat(f"prompt {i}")) for i in range(JOBS)])
        async with asyncio.timeout(90):
            events = [event async for event in client.events(batch_id)]
        codes = procs.stop_all()
        logs = [procs.log(f"worker-{n}") for n in range(2)]

    assert list(codes.values()) == [0, 0], logs
    batch = await client.batch(batch_id)
    assert batch.counts == {JobStatus.SUCCEEDED: JOBS}
    jobs = [job async for job in client.results(batch_id)]
    per_worker = Counter(job.worker for job in jobs)
    assert len(per_worker) == 2, per_worker  # both processes took a share
    ledger = await services.store.ledger.rows(batch_id=batch_id)
    assert len(ledger) == JOBS
    assert Counter(row["job_id"] for row in ledger) == Counter({job.id: 1 for job in jobs})
    terminal = Counter(e.data["job_id"] for e in events if e.type.startswith("job."))
    assert terminal == Counter({job.id: 1 for job in jobs})
    assert [e.type for e in events].count("batch.completed") == 1


async def test_sigterm_requeues_running_jobs_and_exits_cleanly(services: Backend, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG.replace("latency_ms = 20, latency_jitter_ms = 10", "latency_ms = 30000"))
    async with fleet(tmp_path) as procs:
        procs.worker("worker", services.settings, catalog, ROUTEQ_SHUTDOWN_GRACE_S="0")
        client = Client(await services.redis(), services.store, services.settings)
        batch_id = await client.submit_batch([NewJob(f"slow-{i}", chat(f"prompt {i}")) for i in range(5)])

        async def all_running() -> bool:
            assert procs.procs["worker"].poll() is None, procs.log("worker")
            return (await client.batch(batch_id)).counts.get(JobStatus.RUNNING, 0) == 5

        await until(all_running, timeout_s=30, what="five jobs in flight at the slow sim")
        code = procs.stop("worker")
        assert code == 0, procs.log("worker")

    # arq put the cut-short jobs back; another worker (here in-process, fast sim) finishes them all.
    await services.run_worker()
    batch = await client.batch(batch_id)
    assert batch.counts == {JobStatus.SUCCEEDED: 5}
    assert len(await services.store.ledger.rows(batch_id=batch_id)) == 5  # the cut-short calls billed nothing
