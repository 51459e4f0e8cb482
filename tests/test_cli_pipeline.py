"""The pipeline commands: `routeq run` end to end, `results` reading the same SQLite later, errors."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from producer import parsing
from producer.cli import _common, app, batches, cache
from tests.test_multiprocess import CATALOG

runner = CliRunner()
EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean directory and environment: embedded Redis, SQLite file, a fast sim catalog."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG.replace("latency_ms = 20, latency_jitter_ms = 10", "latency_ms = 0"))
    monkeypatch.chdir(tmp_path)
    for name in ("ROUTEQ_REDIS_URL", "ROUTEQ_DATABASE_URL", "ROUTEQ_QUEUE_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ROUTEQ_CATALOG_PATH", str(catalog))
    monkeypatch.setenv("ROUTEQ_SIMULATE", "always")
    monkeypatch.setattr(batches, "console", Console(width=200))
    wide_stderr = Console(width=200, stderr=True)
    monkeypatch.setattr(batches, "err_console", wide_stderr)
    monkeypatch.setattr(_common, "err_console", wide_stderr)
    return tmp_path


def test_run_reports_bad_lines_runs_the_rest_and_results_reads_them_later(workdir: Path) -> None:
    result = runner.invoke(app, ["run", str(EXAMPLES / "with-errors.jsonl"), "-o", "out.jsonl"])
    assert result.exit_code == 0, result.output
    for line in (3, 6, 8, 11):
        assert f"with-errors.jsonl:{line}:" in result.output
    assert "4 of 12 lines rejected" in result.output
    assert "jobs per deployment" in result.output
    # Simulated is visible: in the header, per deployment in the summary, and in a closing line.
    assert "deployments: all simulated (ROUTEQ_SIMULATE=always)" in result.output
    assert "sim-a (sim)" in result.output or "sim-b (sim)" in result.output
    assert "simulated: all 8 answers came from the simulated provider world" in result.output
    batch_id = re.search(r"batch (batch_[0-9a-f]+)", result.output)
    assert batch_id is not None, result.output
    lines = [json.loads(line) for line in (workdir / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    for line in lines:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"]
        assert line["routeq"]["deployment"] in ("sim-a", "sim-b")
    assert (workdir / "routeq.db").exists()

    # Later, in another process: the same results from the SQLite file, no Redis needed.
    later = runner.invoke(app, ["results", batch_id.group(1), "-o", "again.jsonl"])
    assert later.exit_code == 0, later.output
    assert sorted((workdir / "again.jsonl").read_text().splitlines()) == sorted(
        (workdir / "out.jsonl").read_text().splitlines()
    )
    status = runner.invoke(app, ["status", batch_id.group(1)])
    assert status.exit_code == 0
    assert "completed" in status.output
    assert "rejected input lines" in status.output


def test_unknown_id_is_one_line_and_exit_1(workdir: Path) -> None:
    result = runner.invoke(app, ["status", "batch_doesnotexist"])
    assert result.exit_code == 1
    assert "no batch with id 'batch_doesnotexist'" in result.output


def test_unreachable_redis_names_the_masked_url(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTEQ_REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    result = runner.invoke(app, ["submit", str(EXAMPLES / "with-errors.jsonl")])
    assert result.exit_code == 2
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


def test_submit_without_redis_url_says_what_to_do(workdir: Path) -> None:
    result = runner.invoke(app, ["submit", str(EXAMPLES / "with-errors.jsonl")])
    assert result.exit_code == 2
    assert "ROUTEQ_REDIS_URL is not set" in result.output
    assert "routeq run" in result.output


def test_unreachable_database_names_the_masked_url(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", "postgresql+asyncpg://u:s3cret@127.0.0.1:1/x")
    result = runner.invoke(app, ["status", "batch_x"])
    assert result.exit_code == 2
    assert "cannot reach the database at postgresql+asyncpg://u:***@127.0.0.1:1/x" in result.output
    assert "s3cret" not in result.output


def test_file_with_no_valid_lines_fails(workdir: Path) -> None:
    bad = workdir / "bad.jsonl"
    bad.write_text('{"prompt": ""}\nnot json\n')
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 1
    assert "bad.jsonl:1:" in result.output
    assert "bad.jsonl:2:" in result.output
    assert "no valid lines" in result.output


@pytest.fixture
def services_env(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI pointed at the real Redis and PostgreSQL (CI), on a fresh queue and empty tables."""
    import asyncio  # noqa: PLC0415

    from tests.backends import DATABASE_ENV, REDIS_ENV, open_backend, service_url  # noqa: PLC0415

    # `routeq worker` configures logging handlers on the test runner's stream: undo that afterwards.
    for name in ("arq", "routeq"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setenv("ROUTEQ_REDIS_URL", service_url(REDIS_ENV))
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", service_url(DATABASE_ENV))

    async def reset() -> str:
        async with open_backend("services", workdir) as backend:  # truncates tables, flushes Redis
            return backend.settings.queue_name

    monkeypatch.setenv("ROUTEQ_QUEUE_NAME", asyncio.run(reset()))


@pytest.mark.usefixtures("services_env")
def test_submit_worker_watch_status_on_real_services() -> None:
    submitted = runner.invoke(app, ["submit", str(EXAMPLES / "with-errors.jsonl")])
    assert submitted.exit_code == 0, submitted.output
    batch_id = re.search(r"batch_[0-9a-f]+", submitted.output)
    assert batch_id is not None
    assert "4 of 12 lines rejected" in submitted.output

    # --metrics-port 0: a free port, never the default 9101 another process may hold.
    worked = runner.invoke(app, ["worker", "--burst", "--concurrency", "20", "--metrics-port", "0"])
    assert worked.exit_code == 0, worked.output

    watched = runner.invoke(app, ["watch", batch_id.group(0)])
    assert watched.exit_code == 0, watched.output
    assert "completed" in watched.output
    assert "is finished (read from the database)" in watched.output  # no event stream needed
    status = runner.invoke(app, ["status", batch_id.group(0)])
    assert "completed" in status.output
    assert re.search(r"succeeded\s*│\s*8", status.output), status.output


@pytest.mark.usefixtures("services_env")
def test_submit_parses_a_large_file_in_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsing, "IN_PROCESS_MIN_BYTES", 1)  # this small file counts as large
    submitted = runner.invoke(app, ["submit", str(EXAMPLES / "with-errors.jsonl"), "--chunk-lines", "5"])
    assert submitted.exit_code == 0, submitted.output
    assert re.search(r"batch_[0-9a-f]+", submitted.output)
    for line in (3, 6, 8, 11):
        assert f"with-errors.jsonl:{line}:" in submitted.output
    assert "4 of 12 lines rejected" in submitted.output


@pytest.mark.usefixtures("services_env")
def test_cancel_then_requeue_on_real_services() -> None:
    submitted = runner.invoke(app, ["submit", str(EXAMPLES / "with-errors.jsonl")])
    batch_id = re.search(r"batch_[0-9a-f]+", submitted.output)
    assert batch_id is not None
    cancelled = runner.invoke(app, ["cancel", batch_id.group(0)])
    assert cancelled.exit_code == 0
    assert "8 queued jobs cancelled" in cancelled.output
    requeued = runner.invoke(app, ["requeue", batch_id.group(0)])
    assert "0 jobs put back" in requeued.output
    status = runner.invoke(app, ["status", batch_id.group(0)])
    assert "cancelled" in status.output


def test_run_with_a_bad_catalog_fails_at_once(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = workdir / "bad.toml"
    bad.write_text('[[deployments]]\nid = "x"\nkind = "sim"\nmodel = "m"\nquality = 3\n')
    monkeypatch.setenv("ROUTEQ_CATALOG_PATH", str(bad))
    result = runner.invoke(app, ["run", str(EXAMPLES / "with-errors.jsonl")])
    assert result.exit_code == 2
    assert "bad.toml" in result.output
    assert "quality" in result.output


@pytest.mark.usefixtures("services_env")
def test_worker_with_a_bad_catalog_fails_with_one_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = workdir / "bad.toml"
    bad.write_text('[[deployments]]\nid = "x"\nkind = "sim"\nmodel = "m"\nquality = 3\n')
    monkeypatch.setenv("ROUTEQ_CATALOG_PATH", str(bad))
    result = runner.invoke(app, ["worker", "--burst"])
    assert result.exit_code == 2, result.output
    assert "bad.toml" in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("services_env")
def test_operators_force_a_deployment_down_and_set_a_budget() -> None:
    down = runner.invoke(app, ["deployments", "down", "sim-a"])
    assert down.exit_code == 0, down.output
    assert "sim-a is down for every worker" in down.output
    listed = runner.invoke(app, ["deployments", "list"])
    assert re.search(r"sim-a\s*│\s*open\s*│\s*down", listed.output), listed.output
    assert runner.invoke(app, ["deployments", "auto", "sim-a"]).exit_code == 0
    listed = runner.invoke(app, ["deployments", "list"])
    assert re.search(r"sim-a\s*│\s*closed\s*│\s*│", listed.output), listed.output
    unknown = runner.invoke(app, ["deployments", "down", "no-such-model"])
    assert unknown.exit_code == 1
    assert "unknown deployment 'no-such-model'" in unknown.output

    assert runner.invoke(app, ["budget", "set", "user:default/alice", "2.5"]).exit_code == 0
    shown = runner.invoke(app, ["budget", "show", "user:default/alice"])
    assert "spent $0.0000, held $0.0000, cap $2.5000" in shown.output, shown.output
    rebuilt = runner.invoke(app, ["budget", "rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "rebuilt from the ledger" in rebuilt.output


@pytest.mark.usefixtures("services_env")
def test_budget_scopes_are_typed_and_shown_with_their_names_as_they_are() -> None:
    # tenant:x printed as rich markup would end in the :x: emoji.
    assert runner.invoke(app, ["budget", "set", "tenant:x", "1"]).exit_code == 0
    shown = runner.invoke(app, ["budget", "show", "tenant:x"])
    assert shown.output == "tenant:x: spent $0.0000, held $0.0000, cap $1.0000\n", shown.output
    # Tenant x/y's user z is not tenant x's user y/z: a '/' inside a user scope's name is %2F.
    assert runner.invoke(app, ["budget", "set", "user:x%2Fy/z", "2"]).exit_code == 0
    other = runner.invoke(app, ["budget", "show", "user:x/y%2Fz"])
    assert other.output == "user:x/y%2Fz: spent $0.0000, held $0.0000, cap $1.0000\n", other.output
    shown = runner.invoke(app, ["budget", "show", "user:x%2Fy/z"])
    assert shown.output == "user:x%2Fy/z: spent $0.0000, held $0.0000, cap $2.0000\n", shown.output
    infinite = runner.invoke(app, ["budget", "set", "tenant:x", "inf"])  # a float to click, not money
    assert infinite.exit_code == 2
    assert "finite number of USD" in infinite.output
    assert runner.invoke(app, ["budget", "set", "tenant:x", "nan"]).exit_code == 2
    ambiguous = runner.invoke(app, ["budget", "set", "user:x/y/z", "2"])
    assert ambiguous.exit_code == 2
    assert "%2F" in ambiguous.output
    assert runner.invoke(app, ["budget", "set", "tenant:[b]x/y", "3"]).exit_code == 0
    shown = runner.invoke(app, ["budget", "show", "tenant:[b]x/y"])
    assert shown.output == "tenant:[b]x/y: spent $0.0000, held $0.0000, cap $3.0000\n", shown.output


def test_results_filtered_by_metadata(workdir: Path) -> None:
    prompts = [
        {"custom_id": "a", "prompt": "One?", "metadata": {"team": "search"}, "user": "end-1"},
        {"custom_id": "b", "prompt": "Two?", "metadata": {"team": "ads"}},
        {"custom_id": "c", "prompt": "Three?", "metadata": {"team": "search", "env": "prod"}},
    ]
    (workdir / "in.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    result = runner.invoke(app, ["run", "in.jsonl", "-o", "all.jsonl"])
    assert result.exit_code == 0, result.output
    batch_id = re.search(r"batch (batch_[0-9a-f]+)", result.output)
    assert batch_id is not None, result.output

    def custom_ids(*filters: str) -> list[str]:
        args = [arg for f in filters for arg in ("--metadata", f)]
        later = runner.invoke(app, ["results", batch_id.group(1), *args, "-o", "some.jsonl"])
        assert later.exit_code == 0, later.output
        return [json.loads(line)["custom_id"] for line in (workdir / "some.jsonl").read_text().splitlines()]

    assert custom_ids("team=search") == ["a", "c"]
    assert custom_ids("team=search", "env=prod") == ["c"]
    assert custom_ids("team=nobody") == []
    first = json.loads((workdir / "all.jsonl").read_text().splitlines()[0])
    assert first["routeq"]["user"] == "end-1"
    bad = runner.invoke(app, ["results", batch_id.group(1), "--metadata", "team"])
    assert bad.exit_code == 2
    assert "is not <key>=<value>" in bad.output


def test_a_rerun_is_served_from_the_cache_and_the_cache_commands_show_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTEQ_CACHE", "true")
    monkeypatch.setattr(cache, "console", Console(width=200))
    first = runner.invoke(app, ["run", str(EXAMPLES / "with-errors.jsonl"), "-o", "first.jsonl"])
    assert first.exit_code == 0, first.output
    assert "cache: 0 of 8 jobs served from it (hit rate 0%), $0.000000 saved" in first.output
    again = runner.invoke(app, ["run", str(EXAMPLES / "with-errors.jsonl"), "-o", "again.jsonl"])
    assert again.exit_code == 0, again.output
    paid = [json.loads(line)["routeq"] for line in (workdir / "first.jsonl").read_text().splitlines()]
    saved = sum(line["cost_usd"] for line in paid)
    line = re.search(r"cache: 8 of 8 jobs served from it \(hit rate 100%\), \$([0-9.]+) saved", again.output)
    assert line is not None, again.output
    # The summary rounds an exact sum (Decimal) to 6 places; this float sum may round the other way.
    assert float(line.group(1)) == pytest.approx(saved, abs=1e-6)
    assert "0 billed provider calls" in again.output
    served = [json.loads(line)["routeq"] for line in (workdir / "again.jsonl").read_text().splitlines()]
    assert {line["cache_source_job"] for line in served} == {line["job_id"] for line in paid}

    stats = runner.invoke(app, ["cache", "stats", "--tenant", "default", "--json"])
    assert stats.exit_code == 0, stats.output
    view = json.loads(stats.output)
    assert (view["jobs"], view["hits"], view["misses"], view["hit_rate"]) == (16, 8, 8, 0.5)
    assert view["saved_usd"] == pytest.approx(saved)
    text = runner.invoke(app, ["cache", "stats", "--since", "1h"]).output
    assert "cache of every tenant since" in text
    assert "16 jobs used it: 8 hits (0 semantic), 8 misses, hit rate 50.0%" in text
    assert (
        json.loads(runner.invoke(app, ["cache", "stats", "--tenant", "nobody", "--json"]).output)["jobs"] == 0
    )
    assert "neither an ISO time" in runner.invoke(app, ["cache", "stats", "--since", "soon"]).output

    changed = runner.invoke(app, ["cache", "policy", "--tenant", "default", "--off", "--ttl", "60"])
    assert changed.exit_code == 0, changed.output
    assert re.search(r"enabled\s+False\s+\(tenant\)", changed.output), changed.output
    assert re.search(r"semantic\s+False\s+\(fleet default\)", changed.output), changed.output
    kept = json.loads(runner.invoke(app, ["cache", "policy", "--tenant", "default", "--json"]).output)
    assert (kept["enabled"], kept["ttl_s"], kept["effective"]["threshold"]) == (False, 60, 0.95)
    off = runner.invoke(app, ["run", str(EXAMPLES / "with-errors.jsonl")])
    assert "cache:" not in off.output  # the tenant's policy: no job used the cache
    assert runner.invoke(app, ["cache", "policy", "--tenant", "default", "--threshold", "0"]).exit_code == 2
    assert runner.invoke(app, ["cache", "policy", "--tenant", "default", "--reset", "--on"]).exit_code == 2
    reset = json.loads(
        runner.invoke(app, ["cache", "policy", "--tenant", "default", "--reset", "--json"]).output
    )
    assert (reset["enabled"], reset["ttl_s"]) == (None, None)

    assert runner.invoke(app, ["cache", "clear"]).exit_code == 2  # the tenant is never implied
    cleared = runner.invoke(app, ["cache", "clear", "--tenant", "default"])
    assert cleared.exit_code == 0, cleared.output
    assert "cache of tenant default cleared at" in cleared.output
    after = runner.invoke(app, ["run", str(EXAMPLES / "with-errors.jsonl")])
    assert "cache: 0 of 8 jobs served from it" in after.output
