"""What a new user hits in the first minutes: one-line errors, --version, --json, the catalog in 80
columns, `results` and `status` of a job, `watch` of a finished batch without Redis, `routeq workers`
and `routeq queue`, and `submit --wait` with nobody to run the batch."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from rich.console import Console

from producer.cli import app, fleet, tools
from storage import keys
from storage.bus.registry import registered_workers, worker_record
from storage.connections import connect_redis
from storage.settings import Settings
from storage.sql.store import Store
from tests import test_cli_pipeline
from tests.backends import Backend
from tests.test_cli_pipeline import EXAMPLES, runner
from tests.test_cli_startup import make_batch

# The CLI tests' fixtures: a clean working directory and environment, and the real services.
workdir = test_cli_pipeline.workdir
services_env = test_cli_pipeline.services_env

# A catalog whose one deployment has no price genai-prices knows: the error's hint quotes a TOML table.
NO_PRICE = """
[[deployments]]
id = "x"
kind = "openai"
model = "no-such-model-zzz"
quality = 0.5
latency_ms = 100
context_window = 1000
"""


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"routeq {version('routeq')}"


@pytest.mark.usefixtures("workdir")
def test_a_bad_budget_scope_is_one_line_saying_what_to_type() -> None:
    result = runner.invoke(app, ["budget", "show", "ana"])
    assert result.exit_code == 2
    line = one_line(result.output)
    assert "not a budget scope: 'ana'" in line
    assert "tenant:<tenant>" in line  # the markup-like placeholders are printed, not eaten


@pytest.mark.parametrize("command", [["deployments", "list"], ["deployments", "down", "x"]])
@pytest.mark.parametrize("catalog", ["missing", "no-price"])
def test_deployments_with_a_bad_catalog_is_one_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], catalog: str
) -> None:
    path = workdir / f"{catalog}.toml"
    if catalog == "no-price":
        path.write_text(NO_PRICE)
    monkeypatch.setenv("ROUTEQ_CATALOG_PATH", str(path))
    monkeypatch.setenv("ROUTEQ_REDIS_URL", "redis://127.0.0.1:1/0")  # never reached: the catalog fails first
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    line = one_line(result.output)
    assert line.startswith("config error:")
    assert str(path) in line
    assert "ROUTEQ_CATALOG_PATH" in line  # where the path came from, and what to do
    if catalog == "missing":
        assert "No such file or directory" in line
    else:
        assert "[deployments.price] input_per_mtok / output_per_mtok" in line  # not eaten as markup


@pytest.mark.parametrize("command", [["catalog", "{path}"], ["run", "{examples}/with-errors.jsonl"]])
def test_the_price_hint_survives_rich_markup(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    path = workdir / "no-price.toml"
    path.write_text(NO_PRICE)
    if command[0] == "run":
        monkeypatch.setenv("ROUTEQ_CATALOG_PATH", str(path))
    argv = [arg.format(path=path, examples=EXAMPLES) for arg in command]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "give [deployments.price] input_per_mtok" in one_line(result.output)


def test_the_catalog_reads_in_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTEQ_CATALOG_PATH", raising=False)
    monkeypatch.setattr(tools, "console", Console(width=80, record=True))
    result = runner.invoke(app, ["catalog"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not [line for line in lines if "…" in line]  # nothing cut to an ellipsis
    # Ids, models and prices whole, one deployment per row...
    row = next(line for line in lines if line.split()[:1] == ["llama-3.3-70b"])
    assert row.split()[1:] == ["llama-3.3-70b-versatile", "0.75", "0.590", "0.790", "yes"]
    # ...and its long fields on their own lines, words unbroken.
    text = " ".join(line.strip() for line in lines)
    assert (
        "llama-3.3-70b: openai_compatible chat at meta, price genai-prices:groq/llama-3.3-70b-versatile"
        in text
    )
    assert "features: tools, parallel_tool_calls, json_object, seed, stop, temperature" in text
    assert "deployments: all simulated (ROUTEQ_SIMULATE=auto, no API keys set)" in text


def test_the_catalog_says_which_deployments_are_simulated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTEQ_CATALOG_PATH", raising=False)
    monkeypatch.setenv("ROUTEQ_SIMULATE", "auto")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")  # no call is made: the catalog is only shown
    result = runner.invoke(app, ["catalog", "--json"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    simulated = {d["id"]: d["simulated"] for d in view["deployments"]}
    assert simulated["gpt-4o-mini"] is False  # its key is set: real
    assert simulated["claude-haiku-4-5"] is True  # ANTHROPIC_API_KEY unset: simulated
    assert view["simulate"] == "auto"
    monkeypatch.setattr(tools, "console", Console(width=200))
    text = runner.invoke(app, ["catalog"]).output
    count = sum(simulated.values())
    assert 0 < count < len(simulated)
    note = f"deployments: {count} of {len(simulated)} simulated: claude-haiku-4-5, claude-sonnet-4-6,"
    assert note in text.replace("\n", " ")


@pytest.fixture
def finished_batch(workdir: Path) -> tuple[str, str]:
    """A batch in ./routeq.db with one job succeeded and one still queued."""
    return asyncio.run(make_batch(workdir / "routeq.db"))


def test_results_and_status_take_a_job_id(workdir: Path, finished_batch: tuple[str, str]) -> None:
    batch_id, job_id = finished_batch
    result = runner.invoke(app, ["results", job_id, "-o", "one.jsonl"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (workdir / "one.jsonl").read_text().splitlines()]
    assert [(line["id"], line["custom_id"]) for line in lines] == [(job_id, "a")]
    refused = runner.invoke(app, ["results", job_id, "--metadata", "team=x"])
    assert refused.exit_code == 2
    assert "give a batch id" in one_line(refused.output)

    job = json.loads(runner.invoke(app, ["status", job_id, "--json"]).output)
    assert (job["status"], job["batch_id"], job["cost_usd"]) == ("succeeded", batch_id, 0.001)
    assert [a["outcome"] for a in job["attempts"]] == ["success"]
    batch = json.loads(runner.invoke(app, ["status", batch_id, "--json"]).output)
    assert (batch["total"], batch["done"], batch["status"]) == (2, 1, "in_progress")
    assert batch["counts"]["queued"] == 1


def test_watch_of_a_finished_batch_needs_no_redis(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, finished_batch: tuple[str, str]
) -> None:
    batch_id, job_id = finished_batch
    monkeypatch.setenv("ROUTEQ_REDIS_URL", "redis://127.0.0.1:1/0")  # a closed port
    cancelled = runner.invoke(app, ["watch", batch_id])  # unfinished: needs Redis, says so in one line
    assert cancelled.exit_code == 2
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in one_line(cancelled.output)

    async def finish() -> None:
        store = await Store.open(f"sqlite+aiosqlite:///{workdir / 'routeq.db'}")
        try:
            await store.batches.cancel(batch_id, tenant="t")
        finally:
            await store.close()

    asyncio.run(finish())
    result = runner.invoke(app, ["watch", batch_id])
    assert result.exit_code == 0, result.output
    assert f"batch {batch_id}: cancelled" in result.output
    assert "read from the database" in result.output
    wrong = runner.invoke(app, ["watch", job_id])
    assert wrong.exit_code == 2
    assert f"`routeq status {job_id}`" in one_line(wrong.output)


@pytest.mark.usefixtures("services_env")
def test_queue_and_workers_show_depth_deferred_age_and_liveness() -> None:
    settings = Settings()
    submitted = runner.invoke(app, ["submit", str(EXAMPLES / "with-errors.jsonl")])
    assert submitted.exit_code == 0, submitted.output

    async def arrange() -> None:
        redis = await connect_redis(settings)
        try:
            now = time.time()
            await redis.zadd(settings.queue_name, {"job_later": int((now + 600) * 1000)})
            stale = {"host": "old", "pid": 7, "started": now - 900, "seen": now - 600, "running": 2}
            await redis.hset(keys.WORKERS, "old:7:1", json.dumps(stale))  # type: ignore[misc]
            live = json.loads(worker_record(now - 60, running=3, simulated={"sim-a"}))
            await redis.hset(keys.WORKERS, "here:1:1", json.dumps(live))  # type: ignore[misc]
        finally:
            await redis.aclose()

    asyncio.run(arrange())
    queue = json.loads(runner.invoke(app, ["queue", "--json"]).output)
    assert (queue["depth"], queue["due"], queue["deferred"], queue["live_workers"]) == (9, 8, 1, 1)
    assert 0 <= queue["oldest_due_age_s"] < 60
    workers = json.loads(runner.invoke(app, ["workers", "--json"]).output)["workers"]
    assert [(w["pid"], w["live"], w["running"]) for w in workers][1:] == [(7, False, 2)]
    assert (workers[0]["live"], workers[0]["running"], workers[0]["simulated"]) == (True, 3, ["sim-a"])
    table = runner.invoke(app, ["workers"]).output
    assert "(stale)" in table
    assert "1 live" in table


@pytest.mark.usefixtures("services_env")
def test_submit_wait_with_no_live_worker_says_so_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "NO_WORKER_GRACE_S", 0.0)
    started = time.monotonic()
    result = runner.invoke(app, ["submit", str(EXAMPLES / "with-errors.jsonl"), "--wait"])
    assert time.monotonic() - started < 15  # bounded: it never hangs
    assert result.exit_code == 3, result.output
    batch_id = re.search(r"batch_[0-9a-f]+", result.output)
    assert batch_id is not None
    assert "no live worker on queue" in result.output
    assert f"routeq watch {batch_id.group(0)}" in result.output


@pytest.mark.usefixtures("services_env")
def test_json_of_fleet_and_key_commands() -> None:
    created = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--user", "ana", "--budget", "2"])
    assert created.exit_code == 0, created.output
    keys_view = json.loads(runner.invoke(app, ["keys", "list", "--json"]).output)["keys"]
    assert [(k["tenant"], k["user"], k["revoked_at"]) for k in keys_view] == [("acme", "ana", None)]
    assert "secret" not in json.dumps(keys_view)
    budget = json.loads(runner.invoke(app, ["budget", "show", "user:acme/ana", "--json"]).output)
    assert budget == {"scope": "user:acme/ana", "spent_usd": 0.0, "held_usd": 0.0, "cap_usd": 2.0}
    deployments = json.loads(runner.invoke(app, ["deployments", "list", "--json"]).output)["deployments"]
    assert {d["id"] for d in deployments} == {"sim-a", "sim-b"}
    assert all(d["circuit"] == "closed" and d["forced"] is None for d in deployments)


async def test_a_running_worker_registers_what_it_runs_and_simulates(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    from workers.context import WorkerContext  # noqa: PLC0415 - the worker side of the registry

    seen: list[tuple[int, frozenset[str] | None]] = []

    async def look(context: WorkerContext) -> None:
        redis = await backend.redis()
        entry = next(w for w in await registered_workers(redis) if w.id == context.worker_id)
        seen.append((entry.pid, entry.simulated))

    caplog.set_level("INFO", logger="routeq.worker")
    await backend.run_worker(before_shutdown=look)
    assert seen == [(os.getpid(), frozenset({"cheap-a", "fast-b", "smart-c"}))]
    assert "ready: 3 deployments, all simulated" in caplog.text


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ROUTEQ_SIMULATE", "sometimes", "ROUTEQ_SIMULATE: Input should be 'auto', 'always' or 'never'"),
        ("ROUTEQ_WORKER_CONCURRENCY", "-3", "ROUTEQ_WORKER_CONCURRENCY: Input should be greater than"),
        ("ROUTEQ_DATABASE_URL", "nonsense://", "cannot reach the database at nonsense://: no async driver"),
        ("ROUTEQ_DATABASE_URL", "postgresql://u@h/d", "no async driver for 'postgresql'"),
    ],
)
@pytest.mark.usefixtures("workdir")
def test_bad_settings_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    result = runner.invoke(app, ["status", "batch_x"])
    assert result.exit_code == 2
    assert says in one_line(result.output)
