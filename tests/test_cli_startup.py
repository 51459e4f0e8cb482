"""What the quick commands import: `routeq --help`, `status` and `results` stay off the heavy packages.

Not a timing test: a fresh interpreter runs the commands against a SQLite file and then reports
which modules it loaded. The provider SDKs, FastAPI, uvicorn and arq's worker cost seconds to
import; these commands need none of them (bench/startup.py measures the time itself).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from router_core.models import Attempt, AttemptOutcome, ChatRequest, CompletionResult, Strategy, Usage
from storage.jobs import NewJob, StartedJob
from storage.sql.store import Store

# Loaded only by the commands that use them; none of these may be in sys.modules after the quick ones.
HEAVY = (
    "openai",
    "anthropic",
    "fastapi",
    "uvicorn",
    "arq.worker",
    "genai_prices",
    "alembic",  # the test's database is at the newest schema: nothing to migrate
    "workers",
    "producer.api",
)

# Runs in the child: each argv through the typer app, then the heavy modules it loaded, as JSON.
CHILD = """
import json, sys
from producer.cli import app
for argv in json.loads(sys.argv[1]):
    try:
        app(argv, prog_name="routeq")
    except SystemExit as exc:
        if exc.code:
            raise
heavy = json.loads(sys.argv[2])
loaded = sorted(name for name in heavy if name in sys.modules)
print(json.dumps(loaded), file=sys.stderr)
"""


async def make_batch(database: Path) -> tuple[str, str]:
    """A two-job batch in `database`: one job finished with a result, one still queued."""
    store = await Store.open(f"sqlite+aiosqlite:///{database}")
    try:
        request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
        created = await store.batches.create(
            [NewJob("a", request), NewJob("b", request)], tenant="t", user_id="u"
        )
        job_id = created.job_ids[0]
        started = await store.runs.start(job_id, run=1, worker="w")
        assert isinstance(started, StartedJob)
        usage = Usage(input_tokens=3, output_tokens=2)
        call = Attempt(
            deployment="d",
            provider="p",
            model="m",
            outcome=AttemptOutcome.SUCCESS,
            latency_ms=5.0,
            usage=usage,
            cost_usd=0.001,
        )
        result = CompletionResult(
            content="hello",
            deployment="d",
            provider="p",
            model="m",
            usage=usage,
            cost_usd=0.001,
            latency_ms=5.0,
            simulated=True,
            attempts=[call],
            plan_strategy=Strategy.BALANCED,
        )
        assert await store.runs.finish(started, run=1, attempts_made=[call], result=result)
        return created.batch_id, job_id
    finally:
        await store.close()


def test_help_status_and_results_load_no_heavy_package(tmp_path: Path) -> None:
    # The default database, as a user's first `routeq status` sees it: ./routeq.db.
    batch_id, job_id = asyncio.run(make_batch(tmp_path / "routeq.db"))
    commands = [
        ["--help"],
        ["status", batch_id],
        ["status", job_id],
        ["results", batch_id, "-o", "out.jsonl"],
        ["results", batch_id],
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEQ_")}
    env["COLUMNS"] = "200"  # rich wraps at 80 columns without a terminal
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(commands), json.dumps(HEAVY)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    # The commands did their work...
    assert "Usage: routeq" in child.stdout
    assert f"batch {batch_id}" in child.stdout
    assert f"job {job_id} (a) in {batch_id}: succeeded" in child.stdout
    assert "try 1.1 d: success" in child.stdout
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 1
    assert '"custom_id": "a"' in child.stdout
    # ...without importing any of the heavy packages.
    loaded = json.loads(child.stderr.strip().splitlines()[-1])
    assert loaded == []
