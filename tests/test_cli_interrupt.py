"""Ctrl-C during `routeq run` leaves the batch resumable: nothing stuck `running`, and
`routeq run --resume BATCH_ID` runs every unfinished job exactly once.

The one subprocess test of the CLI's pipeline: a real SIGINT reaches a real `routeq run` process.
The sim answers in 30 s, so no job can finish before the interrupt; the test waits on conditions
(rows `running` in SQLite, the `stopping:` line), never on a clock.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from producer.cli import app
from producer.cli.embedded import embedded_client
from router_core.models import ChatRequest
from router_core.settings import SimulateMode
from storage.jobs import ANY_TENANT, JobStatus, NewJob, StartedJob
from storage.settings import Settings

JOBS = 12
CONCURRENCY = 4
# Process start and shut-down: slow on a busy machine, a bound for a hang, never a timing check.
BOUND_S = 90.0

CATALOG = """
[[deployments]]
id = "slow"
kind = "sim"
model = "slow-model"
quality = 0.8
latency_ms = 100
context_window = 100000
price = {{ input_per_mtok = 1.0, output_per_mtok = 4.0 }}
sim = {{ latency_ms = {latency_ms}, latency_jitter_ms = 0 }}
"""


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db, timeout=10) as conn:
        return conn.execute(sql).fetchall()


def wait_for(what: str, condition: object, proc: subprocess.Popen[str], deadline: float) -> None:
    """Poll `condition()` until true; fail naming `what` if the process dies or the bound passes."""
    while not condition():  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"gave up waiting for {what}; routeq run said:\n{out}")
        time.sleep(0.05)


def test_ctrl_c_hands_running_jobs_back_and_resume_runs_each_job_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG.format(latency_ms=30_000))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"custom_id": "q{n}", "prompt": "question {n}"}}\n' for n in range(JOBS)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEQ_")}
    env |= {"ROUTEQ_CATALOG_PATH": str(catalog), "ROUTEQ_SIMULATE": "always", "ROUTEQ_CACHE": "false"}
    env["COLUMNS"] = "200"
    routeq = Path(sys.executable).with_name("routeq")
    db = tmp_path / "routeq.db"
    deadline = time.monotonic() + BOUND_S
    proc = subprocess.Popen(
        [str(routeq), "run", str(prompts), "--concurrency", str(CONCURRENCY)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        header = ""
        while not header.startswith("deployments:"):  # the batch is submitted and Ctrl-C handled
            header = proc.stdout.readline()
            if not header:
                pytest.fail(f"routeq run ended early: {proc.wait()}")
        wait_for(
            f"{CONCURRENCY} jobs running",
            lambda: rows(db, "SELECT count(*) FROM jobs WHERE status = 'running'")[0][0] == CONCURRENCY,
            proc,
            deadline,
        )
        proc.send_signal(signal.SIGINT)  # stop taking jobs; running ones would get the grace period
        stopping = ""
        while not stopping.startswith("stopping:"):
            stopping = proc.stdout.readline()
            if not stopping:
                pytest.fail(f"no 'stopping:' line; exit {proc.wait()}")
        assert f"{CONCURRENCY} running jobs" in stopping
        proc.send_signal(signal.SIGINT)  # and now: cancel them
        out = proc.stdout.read()
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 130, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    resume = re.search(r"Resume with: routeq run --resume (batch_[0-9a-f]+)", out)
    assert resume is not None, out
    assert f"{CONCURRENCY} stopped mid-run and put back" in out
    # Nothing is left `running`: the interrupted jobs are queued again, nothing finished.
    assert rows(db, "SELECT status, count(*) FROM jobs GROUP BY status") == [("queued", JOBS)]
    assert rows(db, "SELECT count(*) FROM jobs WHERE starts = 1")[0][0] == CONCURRENCY

    # Resume, here in the test process, on a sim that now answers at once.
    catalog.write_text(CATALOG.format(latency_ms=0))
    for name, value in env.items():
        if name.startswith("ROUTEQ_"):
            monkeypatch.setenv(name, value)
    for name in ("ROUTEQ_REDIS_URL", "ROUTEQ_DATABASE_URL", "ROUTEQ_QUEUE_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "--resume", resume.group(1), "-o", "out.jsonl"])
    assert result.exit_code == 0, result.output
    assert (
        f"resuming {resume.group(1)}: 0 of {JOBS} jobs already finished, {JOBS} queued again" in result.output
    )
    assert rows(db, "SELECT status, count(*) FROM jobs GROUP BY status") == [("succeeded", JOBS)]
    # Each job answered exactly once: one successful attempt and one charge per job.
    assert rows(db, "SELECT count(*), count(DISTINCT job_id) FROM attempts WHERE outcome = 'success'") == [
        (JOBS, JOBS)
    ]
    assert rows(db, "SELECT count(*), count(DISTINCT job_id) FROM ledger") == [(JOBS, JOBS)]
    written = (tmp_path / "out.jsonl").read_text().splitlines()
    assert sorted(re.findall(r'"custom_id": "(q\d+)"', "".join(written))) == sorted(
        f"q{n}" for n in range(JOBS)
    )


async def test_the_first_ctrl_c_lets_running_jobs_finish_and_starts_no_other(tmp_path: Path) -> None:
    """`Embedded.stop_work` with time to spare (no second Ctrl-C): the running jobs finish, no other
    job starts, nothing is handed back."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG.format(latency_ms=300))
    settings = Settings(
        redis_url=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'routeq.db'}",
        catalog_path=catalog,
        simulate=SimulateMode.ALWAYS,
        worker_concurrency=CONCURRENCY,
        cache=False,
    )
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    async with embedded_client(settings) as embedded:
        store = embedded.client.store  # the worker's too: it starts jobs through this one
        all_running = asyncio.Event()
        start = store.runs.start

        async def counted_start(job_id: str, **kwargs: Any) -> Any:
            started = await start(job_id, **kwargs)
            if isinstance(started, StartedJob):
                batch = await store.batches.get(started.batch_id, tenant=ANY_TENANT)
                if batch.counts.get(JobStatus.RUNNING, 0) == CONCURRENCY:
                    all_running.set()
            return started

        store.runs.start = counted_start  # type: ignore[method-assign]
        batch_id = await embedded.client.submit_batch([NewJob(f"q{n}", request) for n in range(JOBS)])
        async with asyncio.timeout(BOUND_S):  # a bound for a hang: the jobs start within milliseconds
            await all_running.wait()
        assert await embedded.stop_work(grace_s=BOUND_S, hurry=asyncio.Event()) == 0
        after = (await store.batches.get(batch_id, tenant=ANY_TENANT)).counts
    assert after.get(JobStatus.RUNNING, 0) == 0
    assert after[JobStatus.SUCCEEDED] == CONCURRENCY  # the ones running when Ctrl-C came
    assert after[JobStatus.QUEUED] == JOBS - CONCURRENCY  # none started after it
