"""The cache through the CLI: a 1,000-line file with 300 repeated lines makes 700 provider calls, and
the same file run again makes none, bills nothing and answers the same; embedded (`routeq run`) and
on the real Redis + PostgreSQL (`routeq submit` + `routeq worker --burst`).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from producer.cli import app
from storage.sql.schema import attempts, jobs, ledger
from storage.sql.store import Store
from tests import test_cli_pipeline
from tests.fleet import PROCESS_TEST_TIMEOUT_S
from tests.test_cli_pipeline import runner

# The CLI tests' fixtures: a clean working directory and environment, and the real services.
workdir = test_cli_pipeline.workdir
services_env = test_cli_pipeline.services_env

# Each test runs 2,000 jobs through the whole pipeline: on a loaded machine that outlasts pytest's 60 s.
pytestmark = pytest.mark.timeout(PROCESS_TEST_TIMEOUT_S)

LINES = 1_000
REPEATS = 300


@pytest.fixture
def repeated_file(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """700 distinct prompts, and 300 more lines each repeating one of them, shuffled."""
    monkeypatch.setenv("ROUTEQ_CACHE", "true")
    rng = random.Random(14)
    prompts = [f"Write one line about subject {n}" for n in range(LINES - REPEATS)]
    lines = prompts + [rng.choice(prompts) for _ in range(REPEATS)]
    rng.shuffle(lines)
    path = workdir / "repeated.jsonl"
    path.write_text(
        "".join(json.dumps({"custom_id": f"line-{i}", "prompt": p}) + "\n" for i, p in enumerate(lines))
    )
    return path


async def _calls_and_charges(database_url: str, batch_id: str) -> tuple[int, int]:
    """Provider calls (attempts) and ledger charges of the batch, read from SQL."""
    store = await Store.open(database_url, run_migrations=False)
    try:
        async with store.reading() as conn:
            calls = await conn.scalar(
                select(func.count()).select_from(attempts.join(jobs)).where(jobs.c.batch_id == batch_id)
            )
            charges = await conn.scalar(select(func.count()).where(ledger.c.batch_id == batch_id))
    finally:
        await store.close()
    return int(calls or 0), int(charges or 0)


def _answers(path: Path) -> dict[str, str]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"] for line in lines}


def _batch_id(output: str) -> str:
    found = re.search(r"batch_[0-9a-f]+", output)
    assert found is not None, output
    return found.group(0)


def test_run_twice_embedded_the_second_run_makes_no_call(repeated_file: Path, workdir: Path) -> None:
    database = f"sqlite+aiosqlite:///{workdir / 'routeq.db'}"
    first = runner.invoke(app, ["run", str(repeated_file), "-o", "first.jsonl"])
    assert first.exit_code == 0, first.output
    assert asyncio.run(_calls_and_charges(database, _batch_id(first.output))) == (700, 700)

    second = runner.invoke(app, ["run", str(repeated_file), "-o", "second.jsonl"])
    assert second.exit_code == 0, second.output
    assert asyncio.run(_calls_and_charges(database, _batch_id(second.output))) == (0, 0)
    assert _answers(workdir / "second.jsonl") == _answers(workdir / "first.jsonl")
    assert len(_answers(workdir / "first.jsonl")) == LINES


@pytest.mark.usefixtures("services_env")
def test_submit_and_work_twice_on_real_services_the_second_makes_no_call(
    repeated_file: Path, workdir: Path
) -> None:
    import os  # noqa: PLC0415

    database = os.environ["ROUTEQ_DATABASE_URL"]
    outputs = []
    for run in ("first", "second"):
        submitted = runner.invoke(app, ["submit", str(repeated_file)])
        assert submitted.exit_code == 0, submitted.output
        batch_id = _batch_id(submitted.output)
        worked = runner.invoke(app, ["worker", "--burst", "--concurrency", "100", "--metrics-port", "0"])
        assert worked.exit_code == 0, worked.output
        results = runner.invoke(app, ["results", batch_id, "-o", f"{run}.jsonl"])
        assert results.exit_code == 0, results.output
        outputs.append((batch_id, asyncio.run(_calls_and_charges(database, batch_id))))
    assert [counts for _, counts in outputs] == [(700, 700), (0, 0)]
    assert _answers(workdir / "second.jsonl") == _answers(workdir / "first.jsonl")
