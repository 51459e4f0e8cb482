"""Log lines: ROUTEQ_LOG_FORMAT=json, the job's fields on every line of its run, --verbose.

The configuration under test is the one `routeq worker`, `serve` and `run` apply
(`storage.logs.configure_logging`), writing to a buffer; conftest's autouse fixture puts the
logging state back after each test.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from producer.client import Client
from router_core.models import ChatRequest, Message
from router_core.providers import sim_world_for
from router_core.sim import SimProfile
from storage.jobs import ANY_TENANT, NewJob
from storage.logs import (
    CONTEXT_FIELDS,
    HANDLER_NAME,
    JobContextFilter,
    LogFormat,
    bind_job_log,
    configure_logging,
    job_log_context,
    json_formatter,
)
from storage.settings import Settings
from tests.backends import Backend, open_backend
from tests.conftest import TRIO, make_catalog


@pytest.fixture
def configured() -> io.StringIO:
    """Where `apply` sends the lines."""
    return io.StringIO()


def apply(buffer: io.StringIO, fmt: LogFormat, **options: Any) -> None:
    handler = configure_logging(fmt, stream=buffer, **options)
    assert [h for h in logging.getLogger().handlers if h.get_name() == HANDLER_NAME] == [handler]


async def run_jobs(backend: Backend, count: int) -> list[str]:
    client = Client(await backend.redis(), backend.store, backend.settings)
    items = [
        NewJob(f"item-{i}", ChatRequest(messages=[Message(role="user", content=f"hi {i}")]))
        for i in range(count)
    ]
    batch_id = await client.submit_batch(items)
    assert await backend.run_worker() == count
    return [job.id async for job in client.results(batch_id)]


async def test_json_lines_of_a_job_carry_its_job_batch_tenant_and_deployment(
    backend: Backend, configured: io.StringIO
) -> None:
    apply(configured, "json", verbose=True)
    job_ids = await run_jobs(backend, 3)

    lines = [json.loads(line) for line in configured.getvalue().splitlines()]  # every line is JSON
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
    for job_id in job_ids:
        record = await backend.store.jobs.get(job_id, tenant=ANY_TENANT)
        (done,) = [line for line in lines if line["message"] == f"job {job_id} run 1: succeeded"]
        assert done["level"] == "DEBUG"
        assert done["logger"] == "routeq.worker"
        assert done["job"] == job_id
        assert done["batch"] == record.batch_id
        assert done["tenant"] == record.tenant == backend.settings.tenant
        assert done["deployment"] == record.deployment
    # arq's own per-job lines are there too (verbose), at DEBUG.
    arq_job_lines = [line for line in lines if line["logger"] == "arq.worker" and "←" in line["message"]]
    assert len(arq_job_lines) == 3
    assert {line["level"] for line in arq_job_lines} == {"DEBUG"}


async def test_a_line_about_an_attempt_names_the_deployment_tried_not_the_one_that_answered(
    tmp_path: Path, configured: io.StringIO
) -> None:
    """The router's own lines (router_core logs through `extra`): a job that fails over logs each
    deployment it left under that deployment, while its last line names the one that answered."""
    apply(configured, "json", verbose=True)
    catalog = make_catalog(TRIO)
    world = sim_world_for(catalog)
    for refusing in ("cheap-a", "fast-b"):  # 429 with a wait far past the router's limit: fail over
        world.set_profile(refusing, SimProfile(rate_limit_rate=1.0, retry_after_s=600))
    async with open_backend("embedded", tmp_path) as backend:
        client = Client(await backend.redis(), backend.store, backend.settings)
        batch_id = await client.submit_batch(
            [NewJob("one", ChatRequest(messages=[Message(role="user", content="hi")]))]
        )
        assert await backend.run_worker(catalog=catalog, sim_world=world) == 1
        (job,) = [job async for job in client.results(batch_id)]

    lines = [json.loads(line) for line in configured.getvalue().splitlines()]
    left = [line for line in lines if "failing over" in line["message"]]
    assert left, lines
    for line in left:
        assert line["message"].startswith(f"{line['deployment']} asks to wait")
        assert line["deployment"] != job.deployment
        assert line["job"] == job.id
    (done,) = [line for line in lines if line["message"] == f"job {job.id} run 1: succeeded"]
    assert done["deployment"] == job.deployment == "smart-c"


@pytest.mark.parametrize("verbose", [False, True])
async def test_verbose_logs_every_job_and_nothing_else_does(
    tmp_path: Path, configured: io.StringIO, verbose: bool
) -> None:
    apply(configured, "text", verbose=verbose)
    async with open_backend("embedded", tmp_path) as backend:  # one backend is enough: no Redis logic
        job_ids = await run_jobs(backend, 2)
    text = configured.getvalue()
    assert "Starting worker" in text  # INFO start-up lines either way
    per_job = [f"job {job_id} run 1: succeeded" for job_id in job_ids]
    assert all((line in text) is verbose for line in per_job), text
    assert ("→" in text) is verbose
    assert ("←" in text) is verbose


def test_other_libraries_log_warnings_only_in_the_same_format(configured: io.StringIO) -> None:
    apply(configured, "json")
    logging.getLogger("sqlalchemy.engine").info("SELECT 1")
    logging.getLogger("sqlalchemy.engine").warning("pool exhausted")
    logging.getLogger("routeq.api").info("started")
    logging.getLogger("routeq.api").debug("not shown")
    lines = [json.loads(line) for line in configured.getvalue().splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("sqlalchemy.engine", "pool exhausted"),
        ("routeq.api", "started"),
    ]


def test_run_logs_warnings_only(configured: io.StringIO) -> None:
    apply(configured, "text", level="WARNING")
    logging.getLogger("routeq.worker").info("worker started")
    logging.getLogger("routeq.worker").warning("Redis unavailable")
    assert configured.getvalue().splitlines()[0].endswith(": Redis unavailable")
    assert "worker started" not in configured.getvalue()


def test_exceptions_are_one_json_line() -> None:
    record = logging.LogRecord("routeq.worker", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    line = json_formatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed x"
    assert "RuntimeError: boom" in parsed["exc_info"]


async def test_job_context_is_per_task_and_ends_with_the_block() -> None:
    seen: dict[str, dict[str, str]] = {}

    class Capture(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen[record.getMessage()] = {f: getattr(record, f) for f in CONTEXT_FIELDS if hasattr(record, f)}
            return False

    logger = logging.getLogger("routeq.test_logging")
    handler = logging.Handler()
    handler.addFilter(JobContextFilter())
    handler.addFilter(Capture())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    started = asyncio.Event()

    async def job(name: str) -> None:
        with job_log_context(job=name):
            bind_job_log(batch=f"batch-{name}", deployment=None)
            if name == "a":
                started.set()
            else:
                await started.wait()
            await asyncio.sleep(0)
            logger.info("in %s", name)

    try:
        bind_job_log(job="outside")  # no block: nothing to bind to
        await asyncio.gather(job("a"), job("b"))
        logger.info("after")
        with pytest.raises(ValueError, match="not a job log field"):
            bind_job_log(user="x")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert seen == {
        "in a": {"job": "a", "batch": "batch-a"},
        "in b": {"job": "b", "batch": "batch-b"},
        "after": {},
    }


def test_log_format_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTEQ_LOG_FORMAT", raising=False)
    assert Settings(_env_file=None).log_format == "text"
    monkeypatch.setenv("ROUTEQ_LOG_FORMAT", "json")
    assert Settings(_env_file=None).log_format == "json"
    monkeypatch.setenv("ROUTEQ_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match="log_format"):
        Settings(_env_file=None)


@pytest.mark.parametrize("verbose", [False, True])
def test_arqs_job_lines_are_not_even_made_unless_verbose(
    configured: io.StringIO, verbose: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not verbose, arq's per-job lines cost no record (made only to be dropped, they cost a busy
    worker about a fiftieth of its CPU); its other INFO lines are logged as before."""
    apply(configured, "text", verbose=verbose)
    arq_worker = logging.getLogger("arq.worker")
    made: list[str] = []
    callers: list[str] = []
    make = arq_worker.makeRecord

    def counted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        made.append(record.getMessage())
        callers.append(record.funcName)
        return record

    monkeypatch.setattr(arq_worker, "makeRecord", counted)
    arq_worker.info("%6.2fs → %s(%s)%s", 0.01, "job_1:route_job", "", "")
    arq_worker.info("Starting worker for %d functions: %s", 1, "route_job")
    assert made == (["  0.01s → job_1:route_job()"] if verbose else []) + [
        "Starting worker for 1 functions: route_job"
    ]
    assert ("→" in configured.getvalue()) is verbose
    assert "Starting worker" in configured.getvalue()
    assert set(callers) == {"test_arqs_job_lines_are_not_even_made_unless_verbose"}  # arq's call site
