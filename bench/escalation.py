"""Escalation benchmark (a benchmark, not a test): difficulty-aware routing against always-strong routing.

A catalog of three sim deployments at real list prices, whose answers a simulated judge scores as
a q = 0.6, 0.8 and 0.95 model's (`router_core.sim.judge`: a weak model is nearly as good as a strong
one on easy prompts and much worse on hard ones), plus a sim judge deployment. The prompts are a
mix: 60% short factual questions (the classifier's low complexity) and 40% long code / design tasks
(high complexity); the bench checks each prompt's class.

Phase 1 learns, through the real pipeline: every training prompt is answered by each deployment
(pinned), then one beat of the fleet's automatic evaluations (`workers.evals.EvalBeat`, sample
rate 1) sends every answer to the judge as eval jobs, whose verdicts the workers record as quality
evidence (deployment x capability x complexity). The learned per-complexity scores are printed.

Phase 2 runs a fresh test set once per arm: `quality` (always the strong model), `cost` (always the
cheap one, for reference) and `escalate` in each mode; the workers plan with the learned board.
Another eval beat then has the judge score every answer. Per arm: the cost billed, the mean judged
quality (overall and per complexity), the deployment mix; then the cost ratio and the quality gap
against `quality`, and whether the gap stays within the mode's tolerance
(`router_core.models.ESCALATION_TOLERANCE`).

Everything runs in this process (the sim in-process, one burst-mode worker per phase); the Redis
database (default redis://127.0.0.1:6379/14, or ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd at the start
and the end; the SQL store is a fresh SQLite file. About 3,800 jobs at the defaults (half of them judge
calls, each checked against the verdict's JSON schema): 2-3 minutes on a busy 2-core machine.
The last line is the figures as JSON.

Why 300 training prompts: the board shrinks a deployment's score on one complexity towards its
score on the others (`QualityBoard.by_complexity`), so the cheap model's easy-prompt score needs
some 150+ samples to get within `fast`'s tolerance of the strong one's; with fewer, escalate is
more cautious (it sends easy prompts to the mid model), never less.

Run: `.venv/bin/python bench/escalation.py [--train N] [--test N] [--easy-share 0.6]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
import time
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from throughput import DEFAULT_REDIS_URL, bench_settings, close_services, open_services

from producer.client import Client
from router_core.catalog import Catalog, parse_catalog
from router_core.classify import classify
from router_core.judging import parse_verdict
from router_core.models import ESCALATION_TOLERANCE, ChatRequest, Complexity, Message, Preferences
from router_core.providers import sim_world_for
from router_core.quality import QualityBoard
from router_core.sim.world import SimWorld
from storage import keys
from storage.connections import connect_redis
from storage.jobs import JobRecord, JobStatus, NewJob
from storage.settings import Settings
from storage.sql.store import Store
from workers.context import Shared
from workers.evals import EVAL_OF, EvalBeat
from workers.worker import build_worker

# List prices per million tokens (genai-prices): gpt-4.1-nano, gpt-4.1-mini, claude-sonnet-4-6; the
# judge at gpt-4o-mini's. Capabilities are left out so that no capability boost blurs the ranking.
_DEPLOYMENT = """
[[deployments]]
id = "{id}"
kind = "sim"
provider = "{provider}"
model = "{id}-model"
quality = {quality}
latency_ms = {latency}
context_window = 200000
price = {{ input_per_mtok = {input}, output_per_mtok = {output} }}
sim = {{ latency_ms = 0, output_tokens = 120{extra} }}
"""
ANSWERING = ("cheap", "mid", "strong")
CATALOG_TOML = "".join(
    _DEPLOYMENT.format(id=id, provider=provider, quality=q, latency=lat, input=i, output=o, extra=extra)
    for id, provider, q, lat, i, o, extra in (
        ("cheap", "nano", 0.6, 400, 0.10, 0.40, ""),
        ("mid", "mini", 0.8, 700, 0.40, 1.60, ""),
        ("strong", "sonnet", 0.95, 1800, 3.00, 15.00, ""),
        # Low quality and dear: never a candidate the strategies put first.
        ("judge", "judge", 0.3, 900, 5.00, 20.00, ", judge = true"),
    )
)

_EASY = (
    "What is the capital of {}?",
    "Who is the most famous writer from {}?",
    "Which language is spoken in {}?",
    "What currency does {} use?",
)
_PLACES = [
    "France",
    "Peru",
    "Kenya",
    "Norway",
    "Japan",
    "Chile",
    "Egypt",
    "Canada",
    "Vietnam",
    "Ghana",
    "Iceland",
    "Portugal",
    "Nepal",
]
_HARD = (
    "Design a detailed, step-by-step architecture for a Python service that {}. Explain why each "
    "component is needed, optimize the hot path, and write the core algorithm with unit tests.\n"
    "Current code, for context:\n```python\n{}```\n"
)
_TASKS = (
    "deduplicates a stream of billing events",
    "schedules jobs across regions with quotas",
    "reconciles ledgers from three payment providers",
    "compacts time series older than a week",
    "routes support tickets by language and urgency",
)
_CONTEXT = "".join(
    f"def handler_{n}(event, store):\n    record = store.get(event.key)\n"
    f"    if record is None or record.version < event.version:\n        store.put(event.key, event)\n"
    for n in range(8)
)


def prompt(i: int, easy: bool, run: str) -> str:
    """Prompt `i` of a set (`run` keeps the training and test sets apart)."""
    if easy:
        place = _PLACES[i % len(_PLACES)]
        return _EASY[(i // len(_PLACES)) % len(_EASY)].format(f"{place} ({run} {i})")
    task = _TASKS[i % len(_TASKS)]
    return _HARD.format(f"{task} (tenant {run}-{i})", _CONTEXT)


def prompt_set(n: int, easy_share: float, run: str) -> list[tuple[str, Complexity]]:
    """n prompts, easy ones first, each with its class; exits if the classifier disagrees."""
    easy = round(n * easy_share)
    texts = [prompt(i, True, run) for i in range(easy)] + [prompt(i, False, run) for i in range(n - easy)]
    classes = [classify(t).complexity for t in texts]
    expected = [Complexity.LOW] * easy + [Complexity.HIGH] * (n - easy)
    if classes != expected:
        raise SystemExit(f"the prompt set is not {easy} low + {n - easy} high: {Counter(classes)}")
    return list(zip(texts, classes, strict=True))


def ask(text: str, preferences: dict[str, object], model: str = "auto") -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=[Message(role="user", content=text)],
        max_tokens=300,
        preferences=Preferences.model_validate(preferences),
    )


ARMS: dict[str, dict[str, object]] = {
    "quality": {"strategy": "quality"},
    "cost": {"strategy": "cost"},
    **{
        f"escalate:{mode}": {"strategy": "escalate", "escalation": {"mode": mode}}
        for mode in ESCALATION_TOLERANCE
    },
}


@dataclass
class Pipeline:
    """What every phase runs on: settings, the store, the catalog and its sim world, a client."""

    settings: Settings
    store: Store
    catalog: Catalog
    world: SimWorld
    client: Client

    async def work(self) -> float:
        """One burst-mode worker until the queue is empty; the seconds it took."""
        redis = await connect_redis(self.settings)  # the worker's own: close() closes it
        worker = build_worker(
            self.settings,
            redis=redis,
            burst=True,
            poll_delay=0.01,
            handle_signals=False,
            shared=Shared(store=self.store, catalog=self.catalog, sim_world=self.world),
        )
        started = time.perf_counter()
        try:
            await worker.main()
        finally:
            await worker.close()
        return time.perf_counter() - started

    async def jobs(self, batch_id: str, label: str) -> list[JobRecord]:
        """The batch's jobs; exits unless every one succeeded (a bench that loses jobs is void)."""
        jobs = [job async for job in self.client.results(batch_id)]
        failed = Counter(job.status.value for job in jobs if job.status is not JobStatus.SUCCEEDED)
        if failed:
            raise SystemExit(f"{label}: not every job succeeded: {dict(failed)}")
        return jobs

    async def judge_all(self, beat: EvalBeat) -> dict[str, float]:
        """One eval beat over every answered job not judged yet, run; the verdicts by graded job id."""
        await self.client.redis.delete(keys.EVAL_BEAT)  # this beat now, not an interval after the last
        tick = await beat.tick()
        if tick is None or not tick.batches:
            raise SystemExit("the eval beat sent nothing to the judge")
        await self.work()
        verdicts: dict[str, float] = {}
        for batch_id in tick.batches:
            for job in await self.jobs(batch_id, "judge jobs"):
                content = (job.result or {}).get("content", "")
                verdicts[job.request["metadata"][EVAL_OF]] = parse_verdict(content)
        return verdicts


@dataclass
class Arm:
    """One strategy's test run: each job's cost, class, deployment and (later) judged score."""

    name: str
    batch_id: str
    jobs: list[tuple[str, Complexity, str, float]] = field(default_factory=list)  # id, class, dep, $

    def figures(self, verdicts: dict[str, float]) -> dict[str, object]:
        by_class: dict[Complexity, list[float]] = defaultdict(list)
        for job_id, complexity, _, _ in self.jobs:
            by_class[complexity].append(verdicts[job_id])
        scores = [verdicts[job_id] for job_id, *_ in self.jobs]
        mix = Counter(dep for _, _, dep, _ in self.jobs)
        return {
            "cost_usd": sum(cost for *_, cost in self.jobs),
            "judged": sum(scores) / len(scores),
            "judged_by_complexity": {cx.value: sum(v) / len(v) for cx, v in sorted(by_class.items())},
            "mix": {dep: n / len(self.jobs) for dep, n in mix.most_common()},
        }


async def learn(pipe: Pipeline, beat: EvalBeat, n: int, easy_share: float) -> None:
    """Phase 1: each deployment answers every training prompt; the judge grades every answer."""
    training = prompt_set(n, easy_share, "train")
    items = [
        NewJob(f"train-{dep}-{i}", ask(text, {"allow_fallbacks": False}, model=dep))
        for dep in ANSWERING
        for i, (text, _) in enumerate(training)
    ]
    started = time.perf_counter()
    batch_id = await pipe.client.submit_batch(items, name="escalation-train")
    await pipe.work()
    await pipe.jobs(batch_id, "training")
    verdicts = await pipe.judge_all(beat)
    print(
        f"phase 1: {len(items):,} training answers judged ({len(verdicts):,} verdicts) "
        f"in {time.perf_counter() - started:.1f}s"
    )
    board = QualityBoard(await pipe.store.quality.tallies(), strength=pipe.settings.quality_prior_strength)
    print(f"   learned quality by complexity (strength {board.strength:g}; samples per cell in brackets):")
    for dep in ANSWERING:
        cells = []
        for cx in (Complexity.LOW, Complexity.HIGH):
            score = board.by_complexity(pipe.catalog[dep], cx)
            cells.append(f"{cx.value} {score.value:.3f} [{score.samples}]")
        print(f"   {dep:<8} prior {pipe.catalog[dep].quality:.2f}   " + "   ".join(cells))


async def compare(pipe: Pipeline, beat: EvalBeat, n: int, easy_share: float) -> dict[str, dict[str, object]]:
    """Phase 2: the test set once per arm, then every answer judged; the figures per arm."""
    test = prompt_set(n, easy_share, "test")
    arms = []
    for name, prefs in ARMS.items():
        items = [NewJob(f"{name}-{i}", ask(text, prefs)) for i, (text, _) in enumerate(test)]
        arms.append(Arm(name, await pipe.client.submit_batch(items, name=f"escalation-{name}")))
    started = time.perf_counter()
    await pipe.work()
    for arm in arms:
        jobs = await pipe.jobs(arm.batch_id, arm.name)
        arm.jobs = [
            (job.id, cx, job.deployment or "", float(job.cost_usd or 0))
            for job, (_, cx) in zip(jobs, test, strict=True)
        ]
    verdicts = await pipe.judge_all(beat)
    print(
        f"phase 2: {len(arms)} arms x {n} test prompts answered and judged in "
        f"{time.perf_counter() - started:.1f}s"
    )
    return {arm.name: arm.figures(verdicts) for arm in arms}


def report(figures: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """Print each arm against `quality` (always strong); the figures with ratio, gap and verdict."""
    base = figures["quality"]
    base_cost, base_judged = float(base["cost_usd"]), float(base["judged"])  # type: ignore[arg-type]
    print(
        f"   {'arm':<20}{'cost $':>10}{'x strong':>10}{'judged':>8}{'low':>7}{'high':>7}"
        f"{'gap':>8}{'tolerance':>11}  mix"
    )
    out = {}
    for name, f in figures.items():
        cost, judged = float(f["cost_usd"]), float(f["judged"])  # type: ignore[arg-type]
        by_cx: dict[str, float] = f["judged_by_complexity"]  # type: ignore[assignment]
        mix: dict[str, float] = f["mix"]  # type: ignore[assignment]
        gap = base_judged - judged
        mode = name.partition(":")[2]
        tolerance = ESCALATION_TOLERANCE.get(mode)
        within = None if tolerance is None else gap <= tolerance
        verdict = "" if within is None else ("  within" if within else "  OVER")
        print(
            f"   {name:<20}{cost:>10.4f}{cost / base_cost:>10.2f}{judged:>8.3f}{by_cx.get('low', 0):>7.3f}"
            f"{by_cx.get('high', 0):>7.3f}{gap:>8.3f}{'' if tolerance is None else f'{tolerance:.2f}':>11}"
            f"  {', '.join(f'{d} {s:.0%}' for d, s in mix.items())}{verdict}"
        )
        out[name] = {
            **{k: round(v, 6) if isinstance(v, float) else v for k, v in f.items()},
            "cost_ratio": round(cost / base_cost, 4),
            "quality_gap": round(gap, 4),
            "tolerance": tolerance,
            "within_tolerance": within,
        }
    return out


async def run(args: argparse.Namespace, database_url: str) -> None:
    settings = bench_settings(
        args.redis_url,
        database_url,
        "bench:escalation",
        worker_concurrency=args.concurrency,
        default_user_budget_usd=1e9,  # thousands of bench jobs would exhaust the default $1 cap
        cache=False,  # every arm pays for its own answers
    )
    print(f"redis: {args.redis_url} (FLUSHDB at start and end); database: a fresh SQLite file")
    print(f"prompts: {args.easy_share:.0%} short factual (low complexity), the rest long code/design (high)")
    catalog = parse_catalog(tomllib.loads(CATALOG_TOML), source="<bench>")
    redis, store = await open_services(settings)
    started = time.perf_counter()
    try:
        client = Client(redis, store, settings, tenant="bench")
        pipe = Pipeline(settings, store, catalog, sim_world_for(catalog), client)
        evals = settings.model_copy(
            update={"eval_judge": "judge", "eval_sample_rate": 1.0, "eval_batch": 10**7}
        )
        beat = EvalBeat.from_settings(redis, store, client.events_bus, catalog, evals, holder="bench")
        assert beat is not None
        await learn(pipe, beat, args.train, args.easy_share)
        figures = report(await compare(pipe, beat, args.test, args.easy_share))
    finally:
        await close_services(redis, store)
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.1f}s")
    line = {"bench": "escalation", "train": args.train, "test": args.test, "easy_share": args.easy_share}
    print(json.dumps(line | {"seconds": round(elapsed, 1), "arms": figures}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--train", type=int, default=300, help="training prompts (each answered 3 times)")
    parser.add_argument("--test", type=int, default=200, help="test prompts (answered once per arm)")
    parser.add_argument("--easy-share", type=float, default=0.6, help="share of short factual prompts")
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    logging.getLogger("arq").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, f"sqlite+aiosqlite:///{tmp}/bench-escalation.db"))


if __name__ == "__main__":
    main()
