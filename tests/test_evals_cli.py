"""`routeq eval FILE --deployments a,b`: reference lines scored per method, bad lines reported by number
and field, the table per deployment x capability, the run in SQL and its scores as evidence."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from producer.cli import _common, app, evals
from producer.cli.evals import parse_reference, score_answer
from storage.sql.store import Store

runner = CliRunner()

CATALOG = """
[[deployments]]
id = "liar"
kind = "sim"
model = "liar-model"
quality = 0.9
latency_ms = 100
context_window = 100000
price = { input_per_mtok = 1.0, output_per_mtok = 4.0 }
sim = { judged_quality = 0.5 }

[[deployments]]
id = "honest"
kind = "sim"
model = "honest-model"
quality = 0.8
latency_ms = 100
context_window = 100000
price = { input_per_mtok = 1.0, output_per_mtok = 4.0 }

[[deployments]]
id = "judge"
kind = "sim"
model = "judge-model"
quality = 0.5
latency_ms = 100
context_window = 100000
price = { input_per_mtok = 2.0, output_per_mtok = 8.0 }
sim = { judge = true }
"""

LINES = [
    {"prompt": "What is the capital of France? Paris or Lyon", "expected": "paris", "method": "contains"},
    {"prompt": "Say hello", "expected": "hello", "method": "exact"},
    {"prompt": "Explain why the sky is blue", "method": "judge", "expected": "Rayleigh scattering"},
    {"prompt": "Give me a JSON object", "expected": {"a": 1}, "method": "json", "capability": "code"},
    {"prompt": "x", "expected": "y", "method": "fuzzy"},
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    monkeypatch.chdir(tmp_path)
    for name in ("ROUTEQ_REDIS_URL", "ROUTEQ_DATABASE_URL", "ROUTEQ_QUEUE_NAME", "ROUTEQ_EVAL_JUDGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ROUTEQ_CATALOG_PATH", str(catalog))
    monkeypatch.setenv("ROUTEQ_SIMULATE", "always")
    monkeypatch.setenv("ROUTEQ_TENANT", "acme")
    monkeypatch.setattr(evals, "console", Console(width=200))
    wide = Console(width=200, stderr=True)
    monkeypatch.setattr(evals, "err_console", wide)
    monkeypatch.setattr(_common, "err_console", wide)
    (tmp_path / "refs.jsonl").write_text("\n".join(json.dumps(line) for line in LINES) + "\nnot json\n")
    return tmp_path


def test_scoring_methods() -> None:
    assert score_answer("exact", "Paris", "  Paris \n") == 1.0
    assert score_answer("exact", "Paris", "Paris, France") == 0.0
    assert score_answer("contains", "PARIS", "it is paris.") == 1.0
    assert score_answer("json", {"a": 1}, 'Sure: {"a": 1, "b": 2}') == 1.0
    assert score_answer("json", '{"a": 1}', '{"a": 2}') == 0.0
    assert score_answer("json", [1, 2], "[1, 2]") == 1.0
    assert score_answer("json", {"a": 1}, "no json here") == 0.0
    with pytest.raises(ValueError, match="judge"):
        score_answer("judge", None, "x")


def test_bad_lines_name_their_number_and_field() -> None:
    text = "\n".join(
        [
            '{"prompt": "ok", "expected": "a"}',
            "[1]",
            '{"prompt": "x", "expected": "y", "method": "fuzzy"}',
            '{"messages": [{"role": "robot", "content": "x"}], "expected": "y"}',
            '{"prompt": "x", "method": "contains"}',
            '{"prompt": "x", "expected": "y", "capability": "poetry"}',
            '{"prompt": "x", "expected": "y", "color": "red"}',
            '{"prompt": "", "expected": "y"}',
            "",
            '{"prompt": "x", "messages": [], "expected": "y"}',
        ]
    )
    lines, errors = parse_reference(text)
    assert [line.line for line in lines] == [1]
    assert [(e.line, e.field) for e in errors] == [
        (2, "line"),
        (3, "method"),
        (4, "messages"),
        (5, "expected"),
        (6, "capability"),
        (7, "color"),
        (8, "prompt"),
        (10, "prompt"),
    ]
    assert "line 3: field 'method': 'fuzzy' is not one of exact, contains, json, judge" in [
        str(e) for e in errors
    ]


def test_eval_scores_each_line_on_each_deployment_and_records_it(workdir: Path) -> None:
    result = runner.invoke(
        app, ["eval", "refs.jsonl", "--deployments", "liar,honest", "--judge", "judge", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["errors"][0].startswith("line 5: field 'method'")
    assert out["errors"][1].startswith("line 6: field 'line': not JSON")
    rows = {(r["deployment"], r["capability"]): r for r in out["rows"]}
    # The sim echoes the prompt's words: "contains paris" holds, "exact hello" does not.
    assert rows["liar", "simple_qa"]["score"] == 1.0
    assert rows["liar", "simple_qa"]["samples"] == 1
    assert rows["liar", "code"]["score"] == 0.0  # the sim's answer is no {"a": 1}
    # The judge line is medium complexity: the sim judge scores liar as 0.5, honest as 0.8 (+-0.02).
    general_liar, general_honest = rows["liar", "general"], rows["honest", "general"]
    assert general_liar["samples"] == general_honest["samples"] == 2  # "Say hello" and the judged line
    assert general_liar["score"] == pytest.approx((0.0 + 0.5) / 2, abs=0.011)
    assert general_honest["score"] == pytest.approx((0.0 + 0.8) / 2, abs=0.011)
    assert all(r["cost_usd"] > 0 for r in out["rows"])
    assert general_liar["cost_usd"] > rows["liar", "simple_qa"]["cost_usd"]  # the judge's call is in it
    assert out["evidence"] == 8  # 4 lines x 2 deployments

    async def stored() -> tuple[list[str], list[tuple[str, int]], float]:
        """The run, its lines and the evidence's total, read back from the SQLite file."""
        store = await Store.open(f"sqlite+aiosqlite:///{workdir / 'routeq.db'}")
        try:
            run = await store.evals.run(out["run_id"])
            results = await store.evals.results(out["run_id"])
            tallies = await store.quality.tallies()
        finally:
            await store.close()
        return run.deployments, [(r.deployment, r.line) for r in results], sum(t.total for t in tallies)

    deployments, results, total = asyncio.run(stored())
    assert deployments == ["liar", "honest"]
    assert sorted(results) == sorted((d, n) for d in ("liar", "honest") for n in (1, 2, 3, 4))
    assert total == pytest.approx(2 * 1.0 + 0.5 + 0.8, abs=0.05)

    # The same, shown as a table (the database is migrated already: a second run starts faster).
    (workdir / "one.jsonl").write_text(json.dumps(LINES[0]) + "\n")
    shown = runner.invoke(app, ["eval", "one.jsonl", "--deployments", "honest"])
    assert shown.exit_code == 0, shown.output
    assert "honest" in shown.output
    assert "simple_qa" in shown.output
    assert "1 scores recorded as evidence" in shown.output


def test_eval_errors_before_anything_runs(workdir: Path) -> None:
    unknown = runner.invoke(app, ["eval", "refs.jsonl", "--deployments", "honest,nope", "--judge", "judge"])
    assert unknown.exit_code == 2
    assert "'nope' is not a chat deployment" in unknown.output
    no_judge = runner.invoke(app, ["eval", "refs.jsonl", "--deployments", "honest"])
    assert no_judge.exit_code == 2
    assert "--judge DEP or ROUTEQ_EVAL_JUDGE" in no_judge.output
