"""Two trees of routeq's code on one machine, alternated (a benchmark, not a test).

On a machine whose speed moves by a fifth within minutes (a shared host), one run of the code
before a change and one after says little: a change of a few percent is lost in the drift. This
runs bench/throughput.py's pipeline phase (one burst worker draining N prompts: SQL start, the real
router and openai SDK against the sim, commit, settle, publish) on the code of BASE and on this
tree's, in turn, each run in a process of its own (its garbage collector as that tree's `routeq
worker` has it), and prints every pair and, per phase:
- the CPU a job of each tree, median of its runs (the process's CPU over the drain, every thread;
  load moves it far less than it moves rates), and of it the garbage collector's (`nan` for a tree
  whose throughput.py does not time it);
- the median of the pairs' ratios (this tree / BASE) and how many pairs this tree won.

Phases: `inproc` (the sim in the worker's process) and `http` (`routeq sim` in its own process over
loopback, started once and shared by both trees). BASE is a directory holding another version of
the code, e.g. `git worktree add /tmp/base <commit>`: its bench/throughput.py is what runs there
(it must have `pipeline_worker`, as every version since 2026-11 has). Each run gets a fresh SQLite
file; the Redis database (default redis://127.0.0.1:6379/14, or ROUTEQ_BENCH_REDIS_URL) is FLUSHDB'd
before each run: give it a database that holds nothing you want. Runs are bounded by --timeout.

Run: `.venv/bin/python bench/ab.py BASE [--pairs P] [--jobs N] [--phases inproc,http]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
PHASES = ("inproc", "http")


def child(tree: str, phase: str, jobs: int, redis_url: str, sim_url: str) -> None:
    """One drain on `tree`'s code; prints {"rate": jobs/s, "cpu_ms", "gc_ms": CPU a job} as JSON."""
    sys.path[:0] = [tree, str(Path(tree) / "bench")]
    import logging  # noqa: PLC0415 - the tree's modules must be found first

    import throughput  # noqa: PLC0415 - the tree's own bench/throughput.py
    import uvloop  # noqa: PLC0415

    from storage.settings import Settings  # noqa: PLC0415 - the tree's

    logging.basicConfig(level=logging.WARNING)  # arq logs every job at INFO
    if "gc_threshold" in Settings.model_fields:  # each tree's process as its `routeq worker` has it
        from storage.logs import tune_gc  # noqa: PLC0415 - the tree's (older ones have none)

        tune_gc(Settings(_env_file=None).gc_threshold)

    async def drain() -> None:
        with tempfile.TemporaryDirectory(prefix="routeq-ab-") as tmp:
            settings = throughput.bench_settings(
                redis_url,
                f"sqlite+aiosqlite:///{tmp}/bench.db",
                "bench:routeq",
                worker_concurrency=200,
                default_user_budget_usd=1e9,
            )
            redis, store = await throughput.open_services(settings)
            try:
                if phase == "http":
                    settings = settings.model_copy(update={"sim_url": sim_url})
                drained, _ = await throughput.pipeline_worker(
                    settings, redis, store, jobs, in_process_sim=phase == "inproc"
                )
                await redis.flushdb()
            finally:
                await throughput.close_services(redis, store)
        gc_ms = getattr(drained, "gc_ms", float("nan"))  # trees before 2026-12-01 do not time it
        print(json.dumps({"rate": drained.rate, "cpu_ms": drained.cpu_ms, "gc_ms": gc_ms}))

    uvloop.run(drain())


def one_run(tree: Path, phase: str, args: argparse.Namespace, sim_url: str) -> dict[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, __file__, "--child", str(tree), phase, str(args.jobs), args.redis_url, sim_url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {phase} run on {tree} failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        tree, phase, jobs, redis_url, sim_url = sys.argv[2:7]
        child(tree, phase, int(jobs), redis_url, sim_url)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "base", type=Path, help="a directory holding the code to compare with (a git worktree)"
    )
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2_000)
    parser.add_argument("--phases", default="inproc,http")
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one run may take")
    args = parser.parse_args()
    phases = [p for p in args.phases.split(",") if p]
    if unknown := set(phases) - set(PHASES):
        parser.error(f"--phases: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    if not (args.base / "bench" / "throughput.py").is_file():
        parser.error(f"{args.base} holds no bench/throughput.py: give a directory with routeq's code")
    trees = {"base": args.base.resolve(), "this": HERE.parent}
    sys.path.insert(0, str(HERE))
    from throughput import sim_server  # noqa: PLC0415 - this tree's sim server serves both

    print(f"base: {trees['base']}\nthis: {trees['this']}\n{args.pairs} pairs of {args.jobs:,} jobs per phase")
    with tempfile.TemporaryDirectory(prefix="routeq-ab-") as tmp, sim_server(Path(tmp)) as sim_url:
        for phase in phases:
            runs: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
            for pair in range(args.pairs):
                order = ("base", "this") if pair % 2 == 0 else ("this", "base")  # neither always first
                for name in order:
                    runs[name].append(one_run(trees[name], phase, args, sim_url))
                base, this = runs["base"][-1], runs["this"][-1]
                print(
                    f"  {phase} pair {pair + 1}: base {base['rate']:6.0f} jobs/s {base['cpu_ms']:.3f} ms "
                    f"({base['gc_ms']:.3f} in gc), this {this['rate']:6.0f} jobs/s {this['cpu_ms']:.3f} ms "
                    f"({this['gc_ms']:.3f} in gc) CPU a job",
                    flush=True,
                )
            cpu = {name: statistics.median(r["cpu_ms"] for r in rs) for name, rs in runs.items()}
            ratios = [t["cpu_ms"] / b["cpu_ms"] for b, t in zip(runs["base"], runs["this"], strict=True)]
            won = sum(r < 1 for r in ratios)
            print(
                f"{phase}: CPU a job, median: base {cpu['base']:.3f} ms, this {cpu['this']:.3f} ms; "
                f"this / base per pair: median {statistics.median(ratios):.3f} "
                f"(min {min(ratios):.3f}, max {max(ratios):.3f}); this tree lower in {won} of {len(ratios)}"
            )


if __name__ == "__main__":
    main()
