"""`routeq eval FILE.jsonl --deployments a,b,c`: run a reference set on named deployments and score it.

Each line of the file is a JSON object:

    {"prompt": "..."} or {"messages": [...]}   the question (one of the two)
    "expected": "..." (or any JSON value)       the reference answer
    "method": "exact" | "contains" | "json" | "judge"   how the answer is scored (default "exact")
    "capability": "code" | "math" | ...         count the line under this capability (default:
                                                the classifier's guess, as the planner makes it)

Scoring, each to a score in [0, 1]:

    exact      1 when the answer equals `expected` (surrounding whitespace and runs of spaces aside)
    contains   1 when `expected` appears in the answer (case-insensitive)
    json       the answer (the first `{`/`[` to the last `}`/`]`) parsed as JSON: 1 when it equals
               `expected`; for an object, when every key of `expected` has its value in the answer
               (extra keys are fine)
    judge      the judge deployment's verdict (`--judge`, or ROUTEQ_EVAL_JUDGE) on the answer, with
               `expected`, when given, offered to the judge as a reference answer

A bad line is reported with its number and field, and the rest run. Every line runs on every named
deployment, pinned (no fallbacks, no response cache), through the normal pipeline: one batch on the
queue, with a worker in this process as `routeq run` has (`producer/cli/embedded.py`); the judge's
requests are a second batch. Both are submitted as the tenant's `routeq-eval` user, so they are
billed to its `eval:<tenant>` budget scope. The table shows, per deployment x capability, the mean
score, the scored samples, the cost (answers plus the judge's calls) and the median latency; `--json`
prints it as JSON. The run and its lines are written to SQL (`eval_runs`, `eval_results`), and each
score is recorded as quality evidence (source "reference"), so it feeds the learned scores.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from producer.cli._common import err_console, execute, load_settings
from router_core.errors import InvalidRequestError

if TYPE_CHECKING:
    from producer.client import Client
    from router_core.catalog import Catalog
    from router_core.models import ChatRequest, Message
    from storage.jobs import JobRecord
    from storage.settings import Settings
    from storage.sql.evals import EvalResult

__all__ = ["METHODS", "LineError", "ReferenceLine", "parse_reference", "run_eval", "score_answer"]

console = Console()

METHODS = ("exact", "contains", "json", "judge")
_FIELDS = frozenset({"prompt", "messages", "expected", "method", "capability"})
_SPACES = re.compile(r"\s+")
_JSON_SPAN = re.compile(r"[\[{].*[\]}]", re.DOTALL)


@dataclass(frozen=True, slots=True)
class LineError:
    """A reference line that cannot run: its number, the field at fault and why."""

    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: field {self.field!r}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ReferenceLine:
    """One valid line: the question, how to score its answer, and what against."""

    line: int
    messages: list[Message]
    expected: Any
    method: str
    capability: str | None


def parse_reference(text: str) -> tuple[list[ReferenceLine], list[LineError]]:
    """The valid lines of a reference file and an error for each bad one (blank lines are skipped)."""
    lines: list[ReferenceLine] = []
    errors: list[LineError] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:
            errors.append(LineError(number, "line", f"not JSON ({exc})"))
            continue
        parsed = _parse_line(number, value)
        (lines if isinstance(parsed, ReferenceLine) else errors).append(parsed)  # type: ignore[arg-type]
    return lines, errors


def _parse_line(number: int, value: Any) -> ReferenceLine | LineError:
    if not isinstance(value, dict):
        return LineError(number, "line", "not a JSON object")
    error = _field_error(number, value)
    if error is not None:
        return error
    messages = _question(number, value.get("prompt"), value.get("messages"))
    if isinstance(messages, LineError):
        return messages
    method = value.get("method", "exact")
    return ReferenceLine(number, messages, value.get("expected"), method, value.get("capability"))


def _field_error(number: int, value: dict[str, Any]) -> LineError | None:
    """What is wrong with a line's fields other than its question, if anything."""
    from router_core.models import Capability  # noqa: PLC0415 - start-up: imported on use

    unknown = sorted(set(value) - _FIELDS)
    method = value.get("method", "exact")
    capability = value.get("capability")
    capabilities = [c.value for c in Capability]
    error = None
    if unknown:
        error = LineError(number, unknown[0], f"unknown field; use {', '.join(sorted(_FIELDS))}")
    elif method not in METHODS:
        error = LineError(number, "method", f"{method!r} is not one of {', '.join(METHODS)}")
    elif "expected" not in value and method != "judge":
        error = LineError(number, "expected", f"method {method!r} needs the expected answer")
    elif method in ("exact", "contains") and not isinstance(value.get("expected"), str):
        error = LineError(number, "expected", f"method {method!r} needs a string")
    elif capability is not None and capability not in capabilities:
        error = LineError(number, "capability", f"{capability!r} is not one of {capabilities}")
    return error


def _question(number: int, prompt: Any, messages: Any) -> list[Message] | LineError:
    from pydantic import ValidationError  # noqa: PLC0415 - start-up: imported on use

    from router_core.models import Message  # noqa: PLC0415 - start-up: imported on use

    if (prompt is None) == (messages is None):
        return LineError(number, "prompt", "give either 'prompt' (a string) or 'messages'")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            return LineError(number, "prompt", "must be a non-empty string")
        return [Message(role="user", content=prompt)]
    if not isinstance(messages, list) or not messages:
        return LineError(number, "messages", "must be a non-empty list of chat messages")
    try:
        return [Message.model_validate(m) for m in messages]
    except ValidationError as exc:
        return LineError(number, "messages", str(exc).splitlines()[0] + ": " + str(exc).splitlines()[-1])


def _normal(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _contains_expected(answer: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(answer, dict) and all(
            key in answer and _contains_expected(answer[key], want) for key, want in expected.items()
        )
    return bool(answer == expected)


def score_answer(method: str, expected: Any, answer: str) -> float:
    """The score of `answer` against `expected` by `method` ("exact", "contains" or "json")."""
    if method == "exact":
        return 1.0 if _normal(answer) == _normal(str(expected)) else 0.0
    if method == "contains":
        return 1.0 if str(expected).casefold() in answer.casefold() else 0.0
    if method == "json":
        want = expected
        if isinstance(expected, str):
            try:
                want = json.loads(expected)
            except ValueError:
                want = expected
        span = _JSON_SPAN.search(answer)
        try:
            got = json.loads(span.group(0) if span else answer)
        except ValueError:
            return 0.0
        return 1.0 if _contains_expected(got, want) else 0.0
    raise ValueError(f"method {method!r} is not scored here (judge lines are scored by the judge)")


def _request(line: ReferenceLine, deployment: str) -> ChatRequest:
    from router_core.models import ChatRequest, Preferences  # noqa: PLC0415 - start-up: imported on use

    preferences = Preferences(allow_fallbacks=False, capability=line.capability, cache="off")
    return ChatRequest(model=deployment, messages=line.messages, preferences=preferences)


async def _wait(client: Client, batch_id: str) -> None:
    """Until every job of the batch is finished (its `batch.completed`, or the counts say so)."""
    total = (await client.batch(batch_id)).total
    after = "0-0"
    while True:
        events = await client.events_bus.read(batch_id, after=after, block_ms=500)
        for event in events:
            after = event.id
            if event.type == "batch.completed":
                return
        if not events and (await client.batch(batch_id)).done >= total:
            return


async def _results(client: Client, batch_id: str) -> dict[str, JobRecord]:
    return {job.custom_id: job async for job in client.results(batch_id)}


def _content(job: JobRecord | None) -> str | None:
    if job is None or job.result is None:
        return None
    content = job.result.get("content")
    return content if isinstance(content, str) else None


def _failure(job: JobRecord | None) -> str:
    if job is None:
        return "no job"
    error = job.error or {}
    return f"job {job.status.value}: {error.get('message', '')}".strip()


@dataclass
class _Scored:
    line: ReferenceLine
    deployment: str
    request: ChatRequest
    job: JobRecord | None
    score: float | None = None
    error: str | None = None
    judge_cost: float = 0.0


def _rubric(base: str, expected: Any) -> str:
    if expected is None:
        return base
    reference = expected if isinstance(expected, str) else json.dumps(expected)
    return f"{base}\nA reference answer to compare with:\n{reference}"


async def _judge(
    client: Client, scored: list[_Scored], judge: str, catalog: Catalog, rubric: str
) -> str | None:
    """Send the answers of judge lines to the judge (one batch) and read its verdicts."""
    from router_core.judging import VerdictError, judge_request, parse_verdict  # noqa: PLC0415
    from storage.jobs import NewJob  # noqa: PLC0415 - start-up: imported on use

    todo = [s for s in scored if s.line.method == "judge" and s.score is None and s.error is None]
    if not todo:
        return None
    items = []
    for s in todo:
        answer = _content(s.job) or ""
        request = judge_request(
            s.line.messages, answer, catalog[judge], rubric=_rubric(rubric, s.line.expected)
        )
        items.append(NewJob(f"{s.line.line}:{s.deployment}", request))
    batch_id = await client.submit_batch(items, name="routeq eval: judge")
    await _wait(client, batch_id)
    verdicts = await _results(client, batch_id)
    for s in todo:
        verdict = verdicts.get(f"{s.line.line}:{s.deployment}")
        s.judge_cost = float(verdict.cost_usd or 0) if verdict is not None else 0.0
        text = _content(verdict)
        if text is None:
            s.error = f"judge {_failure(verdict)}"
            continue
        try:
            s.score = parse_verdict(text)
        except VerdictError as exc:
            s.error = str(exc)
    return batch_id


def _as_result(s: _Scored) -> EvalResult:
    from router_core.classify import classify  # noqa: PLC0415 - start-up: imported on use
    from router_core.models import Capability  # noqa: PLC0415 - start-up: imported on use
    from storage.sql.evals import EvalResult  # noqa: PLC0415 - start-up: imported on use

    guess = classify(s.request.prompt_text())
    capability = Capability(s.line.capability) if s.line.capability else guess.capability
    job = s.job
    cost = (float(job.cost_usd) if job is not None and job.cost_usd is not None else 0.0) + s.judge_cost
    return EvalResult(
        line=s.line.line,
        deployment=s.deployment,
        capability=capability,
        complexity=guess.complexity,
        method=s.line.method,
        score=s.score,
        cost_usd=cost,
        latency_ms=job.latency_ms if job is not None else None,
        job_id=job.id if job is not None else None,
        error=s.error,
    )


def summary_rows(results: Sequence[EvalResult], deployments: Sequence[str]) -> list[dict[str, Any]]:
    """Per deployment (in the order asked) x capability: mean score, scored samples, cost, p50 latency."""
    groups: dict[tuple[str, str], list[EvalResult]] = {}
    for r in results:
        groups.setdefault((r.deployment, r.capability.value), []).append(r)
    rows = []
    for dep in deployments:
        for (deployment, capability), members in sorted(groups.items()):
            if deployment != dep:
                continue
            scores = [r.score for r in members if r.score is not None]
            latencies = [r.latency_ms for r in members if r.latency_ms is not None]
            rows.append(
                {
                    "deployment": deployment,
                    "capability": capability,
                    "score": statistics.fmean(scores) if scores else None,
                    "samples": len(scores),
                    "failed": len(members) - len(scores),
                    "cost_usd": sum(r.cost_usd or 0.0 for r in members),
                    "p50_latency_ms": statistics.median(latencies) if latencies else None,
                }
            )
    return rows


def _table(rows: list[dict[str, Any]], run_id: str) -> Table:
    table = Table(title=f"eval run {run_id}", title_justify="left")
    for column in ("deployment", "capability", "score", "samples", "failed", "cost $", "p50 ms"):
        table.add_column(column, justify="left" if column in ("deployment", "capability") else "right")
    for row in rows:
        score, p50 = row["score"], row["p50_latency_ms"]
        table.add_row(
            row["deployment"],
            row["capability"],
            "-" if score is None else f"{score:.3f}",
            str(row["samples"]),
            str(row["failed"]),
            f"{row['cost_usd']:.6f}",
            "-" if p50 is None else f"{p50:.0f}",
        )
    return table


async def _record(client: Client, settings: Settings, run_id: str, results: Sequence[EvalResult]) -> int:
    """Each score as quality evidence (source "reference"), the fleet told; returns how many were new."""
    from router_core.quality import Evidence  # noqa: PLC0415 - start-up: imported on use
    from storage.fleet.quality import FleetQuality  # noqa: PLC0415 - start-up: imported on use
    from storage.sql.quality import ScoredAnswer  # noqa: PLC0415 - start-up: imported on use

    fleet = FleetQuality.from_settings(client.redis, client.store, settings)
    answers = [
        ScoredAnswer(
            "reference",
            f"{run_id}:{r.line}:{r.deployment}",
            Evidence(r.deployment, r.capability, r.complexity, r.score),
            tenant=client.tenant,
            job_id=r.job_id,
        )
        for r in results
        if r.score is not None
    ]
    return await fleet.record(answers)


def _check_deployments(names: list[str], catalog: Catalog, judge: str | None, needs_judge: bool) -> None:
    chat = {d.id for d in catalog.chat_deployments()}
    if not names:
        raise InvalidRequestError("name at least one deployment: --deployments a,b,c", field="deployments")
    for name in names:
        if name not in chat:
            raise InvalidRequestError(
                f"{name!r} is not a chat deployment of the catalog ({', '.join(sorted(chat))})",
                field="deployments",
            )
    if needs_judge and judge is None:
        raise InvalidRequestError(
            "lines scored by 'judge' need a judge deployment: --judge DEP or ROUTEQ_EVAL_JUDGE", field="judge"
        )
    if needs_judge and judge not in chat:
        raise InvalidRequestError(
            f"the judge {judge!r} is not a chat deployment of the catalog", field="judge"
        )


def run_eval(
    file: Annotated[
        Path, typer.Argument(help="Reference set: JSONL of {prompt|messages, expected, method}.")
    ],
    deployments: Annotated[str, typer.Option("--deployments", help="Comma-separated deployment ids.")],
    judge: Annotated[
        str | None, typer.Option("--judge", help="Judge deployment for 'judge' lines (ROUTEQ_EVAL_JUDGE).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run a reference set on each named deployment and score it: a table per deployment x capability."""
    from router_core.catalog import load_catalog  # noqa: PLC0415 - start-up: imported on use
    from storage.sql.evals import EVAL_USER  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings().model_copy(update={"user": EVAL_USER})  # billed to eval:<tenant>
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        err_console.print(f"[red]error:[/red] cannot read {file}: {exc.strerror or exc}", highlight=False)
        raise typer.Exit(2) from exc
    lines, errors = parse_reference(text)
    for error in errors:
        err_console.print(f"[red]{file.name}:[/red] {error}", highlight=False, soft_wrap=True)
    if not lines:
        err_console.print(f"[red]error:[/red] {file} has no valid reference line", highlight=False)
        raise typer.Exit(2)
    names = [name.strip() for name in deployments.split(",") if name.strip()]
    judge = judge or settings.eval_judge
    needs_judge = any(line.method == "judge" for line in lines)
    catalog = execute(_load(load_catalog, settings, names, judge, needs_judge=needs_judge))
    outcome = execute(_run(settings, file.name, lines, names, judge=judge, catalog=catalog))
    payload = {**outcome, "errors": [str(e) for e in errors]}
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    console.print(_table(outcome["rows"], outcome["run_id"]))
    judged = f" (judge: {outcome['judge_batch_id']})" if outcome["judge_batch_id"] else ""
    console.print(
        f"{len(lines)} lines x {len(names)} deployments; {outcome['evidence']} scores recorded as evidence. "
        f"Batch {outcome['batch_id']}{judged}.",
        highlight=False,
    )


async def _load(
    load: Any, settings: Settings, names: list[str], judge: str | None, *, needs_judge: bool
) -> Catalog:
    """The catalog, with the deployments named checked (errors: one red line through `execute`)."""
    catalog: Catalog = load(settings.catalog_path)
    _check_deployments(names, catalog, judge, needs_judge)
    return catalog


async def _run(
    settings: Settings,
    name: str,
    lines: list[ReferenceLine],
    names: list[str],
    *,
    judge: str | None,
    catalog: Catalog,
) -> dict[str, Any]:
    from producer.cli.embedded import embedded_client  # noqa: PLC0415 - imports workers: `eval` only
    from router_core.judging import DEFAULT_RUBRIC  # noqa: PLC0415 - start-up: imported on use
    from storage.jobs import NewJob  # noqa: PLC0415 - start-up: imported on use

    async with embedded_client(settings) as embedded:
        client = embedded.client
        scored = [_Scored(line, dep, _request(line, dep), None) for line in lines for dep in names]
        items = [NewJob(f"{s.line.line}:{s.deployment}", s.request) for s in scored]
        batch_id = await client.submit_batch(items, name=f"routeq eval: {name}")
        await embedded.until(_wait(client, batch_id))
        jobs = await _results(client, batch_id)
        for s in scored:
            s.job = jobs.get(f"{s.line.line}:{s.deployment}")
            answer = _content(s.job)
            if answer is None:
                s.error = _failure(s.job)
            elif s.line.method != "judge":
                s.score = score_answer(s.line.method, s.line.expected, answer)
        judge_batch = None
        if judge is not None:
            rubric = settings.eval_rubric or DEFAULT_RUBRIC
            judge_batch = await embedded.until(_judge(client, scored, judge, catalog, rubric))
        results = [_as_result(s) for s in scored]
        run_id = await client.store.evals.save_run(
            tenant=client.tenant,
            name=name,
            judge=judge,
            batch_id=batch_id,
            deployments=names,
            results=results,
        )
        added = await _record(client, settings, run_id, results)
    return {
        "run_id": run_id,
        "batch_id": batch_id,
        "judge_batch_id": judge_batch,
        "evidence": added,
        "rows": summary_rows(results, names),
    }
