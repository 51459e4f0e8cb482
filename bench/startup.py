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

`--baseline PATH` also times another `routeq` executable (an older checkout's venv), runs
interleaved, each on a database it made itself (its schema may be older), and prints the ratio of
the medians: a before/after in one run.

Run: `make bench` or `.venv/bin/python bench/startup.py [--lines N] [--runs N] [--baseline PATH]`.
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


def routeq(args: list[str], cwd: Path, env: dict[str, str], executable: str = ROUTEQ) -> str:
    """Run `routeq ARGS` in `cwd`; its stdout, or exit with its stderr when it fails."""
    done = subprocess.run(
        [executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0:
        sys.exit(f"routeq {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def prepare(workdir: Path, env: dict[str, str], lines: int, executable: str) -> tuple[str, str]:
    """A small `routeq run` into ./routeq.db; returns its batch id and one of its job ids."""
    workdir.mkdir()
    sample = workdir / "sample.jsonl"
    sample.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:lines]))
    output = routeq(["run", str(sample), "-o", "run.jsonl"], workdir, env, executable)
    found = re.search(r"batch_[0-9a-f]+", output)
    if found is None:
        sys.exit(f"no batch id in the output of routeq run:\n{output}")
    first = (workdir / "run.jsonl").read_text().splitlines()[0]
    job_id: str = json.loads(first)["id"]
    return found.group(), job_id


# What each command is given: its ids come from the `routeq run` of the executable timed.
COMMANDS = {
    "routeq --help": ["--help"],
    "routeq status <batch>": ["status", "{batch}"],
    "routeq status <job>": ["status", "{job}"],
    "routeq results <batch> -o file": ["results", "{batch}", "-o", "out.jsonl"],
}


def timed(
    template: list[str], places: list[tuple[str, Path, dict[str, str]]], env: dict[str, str], runs: int
) -> list[list[float]]:
    """Wall times of `runs` runs of the command per executable, each a fresh process, interleaved.

    `places` holds (executable, its working directory, the ids its run made) per executable.
    """
    times: list[list[float]] = [[] for _ in places]
    for _ in range(runs):
        for slot, (executable, workdir, ids) in zip(times, places, strict=True):
            args = [part.format(**ids) for part in template]
            started = time.perf_counter()
            routeq(args, workdir, env, executable)
            slot.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20, help="Lines of examples/demo.jsonl to run first.")
    parser.add_argument("--runs", type=int, default=5, help="Runs of each command.")
    parser.add_argument("--baseline", help="Another routeq executable to time beside this one.")
    options = parser.parse_args()
    executables = [ROUTEQ] + ([options.baseline] if options.baseline else [])
    env = environment()
    with tempfile.TemporaryDirectory(prefix="routeq-startup-") as tmp:
        places = []
        for n, executable in enumerate(executables):
            workdir = Path(tmp) / f"routeq-{n}"
            batch_id, job_id = prepare(workdir, env, options.lines, executable)
            places.append((executable, workdir, {"batch": batch_id, "job": job_id}))
        print(f"start-up, {options.runs} runs each ({options.lines}-job batch in ./routeq.db)")
        header = f"{'command':<32} {'median':>8} {'min':>8} {'max':>8}"
        if options.baseline:
            header += f" {'baseline':>9} {'ratio':>6}"
        print(header)
        for label, template in COMMANDS.items():
            ours, *baseline = timed(template, places, env, options.runs)
            row = f"{label:<32} {statistics.median(ours):>7.2f}s {min(ours):>7.2f}s {max(ours):>7.2f}s"
            if baseline:
                before = statistics.median(baseline[0])
                row += f" {before:>8.2f}s {statistics.median(ours) / before:>6.3f}"
            print(row)


if __name__ == "__main__":
    main()
