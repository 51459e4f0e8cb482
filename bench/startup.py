"""Start-up time of the quick CLI commands (a benchmark, not a test).

In a temporary directory, `routeq run` puts the first lines of examples/demo.jsonl into the
embedded SQLite database (./routeq.db, simulated providers), then each command below runs as its
own process, as a user would type it:

    routeq --help
    routeq status <batch_id>
    routeq status <job_id>
    routeq results <batch_id> -o out.jsonl

Prints the median, min and max wall time of each over `--runs` runs. What these commands may
import is checked by tests/test_cli_startup.py; this measures what that costs.

Run: `make bench` or `.venv/bin/python bench/startup.py [--lines N] [--runs N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.jsonl"
ROUTEQ = str(Path(sys.executable).with_name("routeq"))


def environment() -> dict[str, str]:
    """The caller's environment without ROUTEQ_* settings: embedded Redis, ./routeq.db, simulated."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEQ_")}
    env["ROUTEQ_SIMULATE"] = "always"  # never call a real provider, whatever keys are set
    return env


def routeq(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run `routeq ARGS` in `cwd`; its stdout, or exit with its stderr when it fails."""
    done = subprocess.run(
        [ROUTEQ, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0:
        sys.exit(f"routeq {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def prepare(workdir: Path, env: dict[str, str], lines: int) -> tuple[str, str]:
    """A small `routeq run` into ./routeq.db; returns its batch id and one of its job ids."""
    sample = workdir / "sample.jsonl"
    sample.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:lines]))
    output = routeq(["run", str(sample), "-o", "run.jsonl"], workdir, env)
    found = re.search(r"batch_[0-9a-f]+", output)
    if found is None:
        sys.exit(f"no batch id in the output of routeq run:\n{output}")
    first = (workdir / "run.jsonl").read_text().splitlines()[0]
    job_id: str = json.loads(first)["id"]
    return found.group(), job_id


def timed(args: list[str], workdir: Path, env: dict[str, str], runs: int) -> list[float]:
    """Wall time of `runs` runs of `routeq ARGS`, each a fresh process."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        routeq(args, workdir, env)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20, help="Lines of examples/demo.jsonl to run first.")
    parser.add_argument("--runs", type=int, default=5, help="Runs of each command.")
    options = parser.parse_args()
    env = environment()
    with tempfile.TemporaryDirectory(prefix="routeq-startup-") as tmp:
        workdir = Path(tmp)
        batch_id, job_id = prepare(workdir, env, options.lines)
        commands = {
            "routeq --help": ["--help"],
            "routeq status <batch>": ["status", batch_id],
            "routeq status <job>": ["status", job_id],
            "routeq results <batch> -o file": ["results", batch_id, "-o", "out.jsonl"],
        }
        print(f"start-up, {options.runs} runs each ({options.lines}-job batch in ./routeq.db)")
        print(f"{'command':<32} {'median':>8} {'min':>8} {'max':>8}")
        for label, args in commands.items():
            times = timed(args, workdir, env, options.runs)
            print(f"{label:<32} {statistics.median(times):>7.2f}s {min(times):>7.2f}s {max(times):>7.2f}s")


if __name__ == "__main__":
    main()
