"""Two `routeq worker` processes on real Redis share one 500-job batch; every job completes once.

Needs ROUTEQ_TEST_REDIS_URL and ROUTEQ_TEST_DATABASE_URL (always set in CI). Bounded: the workers
are stopped with SIGTERM at the end, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from producer.client import Client
from storage import keys
from storage.store import NewJob
from storage.tables import JobStatus
from tests.backends import Backend, open_backend
from tests.test_pipeline import chat

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


def start_worker(backend: Backend, catalog: Path, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    settings = backend.settings
    assert settings.redis_url is not None
    env = {
        **os.environ,
        "ROUTEQ_REDIS_URL": settings.redis_url,
        "ROUTEQ_DATABASE_URL": settings.database_url,
        "ROUTEQ_QUEUE_NAME": settings.queue_name,
        "ROUTEQ_SIMULATE": "always",
        "ROUTEQ_CATALOG_PATH": str(catalog),
        "ROUTEQ_WORKER_CONCURRENCY": "50",
        **extra_env,
    }
    routeq = shutil.which("routeq", path=str(Path(sys.executable).parent))
    assert routeq is not None
    with log.open("wb") as out:
        return subprocess.Popen([routeq, "worker"], env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_two_worker_processes_share_a_batch(services: Backend, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
    procs = [start_worker(services, catalog, log) for log in logs]
    try:
        redis = await services.redis()
        async with asyncio.timeout(30):  # both processes up and registered
            while len(await redis.hkeys(keys.WORKERS)) < 2:  # type: ignore[misc]
                assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
                await asyncio.sleep(0.1)

        client = Client(redis, services.store, services.settings)
        batch_id = await client.submit_batch([NewJob(f"p-{i}", chat(f"prompt {i}")) for i in range(JOBS)])
        async with asyncio.timeout(90):
            events = [event async for event in client.events(batch_id)]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=30) for proc in procs]

    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    batch = await client.batch(batch_id)
    assert batch.counts == {JobStatus.SUCCEEDED: JOBS}
    jobs = [job async for job in client.results(batch_id)]
    per_worker = Counter(job.worker for job in jobs)
    assert len(per_worker) == 2, per_worker  # both processes took a share
    ledger = await services.store.ledger_rows(batch_id=batch_id)
    assert len(ledger) == JOBS
    assert Counter(row["job_id"] for row in ledger) == Counter({job.id: 1 for job in jobs})
    terminal = Counter(e.data["job_id"] for e in events if e.type.startswith("job."))
    assert terminal == Counter({job.id: 1 for job in jobs})
    assert [e.type for e in events].count("batch.completed") == 1


async def test_sigterm_requeues_running_jobs_and_exits_cleanly(services: Backend, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG.replace("latency_ms = 20, latency_jitter_ms = 10", "latency_ms = 30000"))
    log = tmp_path / "worker.log"
    proc = start_worker(services, catalog, log, ROUTEQ_SHUTDOWN_GRACE_S="0")
    try:
        client = Client(await services.redis(), services.store, services.settings)
        batch_id = await client.submit_batch([NewJob(f"slow-{i}", chat(f"prompt {i}")) for i in range(5)])
        async with asyncio.timeout(30):  # every job is in flight at the slow sim
            while (await client.batch(batch_id)).counts.get(JobStatus.RUNNING, 0) < 5:
                assert proc.poll() is None, log.read_text()
                await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)

    assert code == 0, log.read_text()[-3000:]
    # arq put the cut-short jobs back; another worker (here in-process, fast sim) finishes them all.
    await services.run_worker()
    batch = await client.batch(batch_id)
    assert batch.counts == {JobStatus.SUCCEEDED: 5}
    assert len(await services.store.ledger_rows(batch_id=batch_id)) == 5  # the cut-short calls billed nothing
