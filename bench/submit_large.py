"""Submission of a large JSONL file (a benchmark, not a test): parse + SQL insert + enqueue.

Generates a file of N lines (default 100,000: short-form and OpenAI Batch lines mixed, one line in
1,000 bad), then submits it in a child process, so that the peak RSS printed is that process's own
(`ru_maxrss`, plus each parsing process's own, `VmHWM` sampled): what `routeq submit FILE` does,
without the CLI's printing.

    file  `Client.submit_chunks(JsonlFile(...))`: what `routeq submit` does; chunk by chunk
          (--chunk-lines, default 2,000), parsed in a process of its own
    new   `read_jsonl_chunks` + `Client.submit_chunks`: chunk by chunk, parsed in a thread
    old   `read_jsonl` + `Client.submit_batch`: the whole file parsed, then one transaction

`--base DIR` also runs `--base-mode` (default `new`) with the routeq code of DIR (a worktree of the
code before a change, put first on PYTHONPATH), alternating with the others: before and after in
one run. `--phases` prints where the submitting process's time went: waiting for parsed chunks,
inserting rows (`Batches.append`), queuing (`enqueue_jobs`), each as busy wall time (the insert of
one chunk overlaps the queuing of the one before), and the parsing process's CPU.

Each store given (--database-url, repeatable: `sqlite` = a fresh SQLite file per run, the default;
or a PostgreSQL URL, whose tables are TRUNCATEd before each run) runs each mode --repeat
times, runs of the stores and modes alternating (the machine's noise spreads over all of them),
against a Redis database FLUSHDB'd before each run (default redis://127.0.0.1:6379/11, or
--redis-url). Each run is checked: every valid line is a job in SQL and on the arq queue with its
payload, and the batch's rejected lines are the bad ones. Prints each run, then per store and mode
the median wall time, lines/s, CPU and peak RSS, against the goal (issue 17: 100,000 lines parsed
and submitted in <= 8 s, peak RSS <= 300 MB).

Run: `.venv/bin/python bench/submit_large.py [--lines N] [--mode file|new|old ...] [--repeat 3]
[--database-url sqlite] [--database-url postgresql+asyncpg://...] [--base DIR] [--phases]
[--profile FILE]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BAD_EVERY = 1_000


def generate(path: Path, lines: int) -> tuple[int, int]:
    """Write the file; returns (valid lines, bad lines)."""
    rng = random.Random(17)
    bad = 0
    with path.open("w", encoding="utf-8") as out:
        for n in range(1, lines + 1):
            if n % BAD_EVERY == 0:
                bad += 1
                out.write(_bad_line(n) + "\n")
                continue
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 40)))
            if n % 2:
                line: dict[str, Any] = {"custom_id": f"short-{n}", "prompt": f"Summarise: {words}"}
                if n % 3 == 0:
                    line["system"] = "Answer in one sentence."
                    line["max_tokens"] = 200
            else:
                line = {
                    "custom_id": f"openai-{n}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "router:cost" if n % 4 else "auto",
                        "messages": [
                            {"role": "system", "content": "You are terse."},
                            {"role": "user", "content": f"Classify: {words}"},
                        ],
                        "max_completion_tokens": 100,
                        "temperature": 0.2,
                        "metadata": {"bench": "submit_large"},
                    },
                }
            out.write(json.dumps(line) + "\n")
    return lines - bad, bad


def _bad_line(n: int) -> str:
    kinds = [
        '{"custom_id": "broken", "prompt": ',  # not JSON
        json.dumps({"custom_id": f"bad-{n}", "prompt": "x", "temperature": 7}),  # out of range
        json.dumps({"custom_id": "short-1", "prompt": "duplicate custom_id"}),
        json.dumps({"custom_id": f"bad-{n}", "method": "GET", "url": "/v1/chat/completions", "body": {}}),
    ]
    return kinds[(n // BAD_EVERY) % len(kinds)]


_WORDS = "the quick brown fox jumps over a lazy dog while routing prompts across fast models".split()  # noqa: SIM905


# --- the child: one submission, measured ---------------------------------------------------------


async def _child(args: argparse.Namespace) -> dict[str, Any]:
    from producer.client import Client  # noqa: PLC0415 - the parent process imports none of routeq
    from producer.inputs import InputRules, read_jsonl  # noqa: PLC0415
    from router_core.catalog import load_catalog  # noqa: PLC0415
    from storage.jobs import NewJob  # noqa: PLC0415
    from storage.settings import Settings  # noqa: PLC0415

    settings = Settings(redis_url=args.redis_url, database_url=args.database_url)
    rules = InputRules.from_settings(settings, load_catalog(settings.catalog_path))
    phases = _Phases() if args.phases else None
    parsers = _ParserMemory()
    async with await Client.connect(settings) as client:
        before = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = before.ru_utime + before.ru_stime
        started = time.perf_counter()
        if args.mode == "file":
            from producer.parsing import JsonlFile  # noqa: PLC0415 - `new` and `old` run on older trees too

            chunks: Any = JsonlFile(Path(args.file), rules, chunk_lines=args.chunk_lines)
            done = await client.submit_chunks(chunks, name="bench")
            batch_id, rejected = done.batch_id, len(done.errors)
        elif args.mode == "new":
            from producer.inputs import read_jsonl_chunks  # noqa: PLC0415 - `old` runs on older trees too

            with Path(args.file).open("rb") as file:  # noqa: ASYNC230 - read as submitted, as the CLI did
                done = await client.submit_chunks(
                    read_jsonl_chunks(file, rules, chunk_lines=args.chunk_lines), name="bench"
                )
            batch_id, rejected = done.batch_id, len(done.errors)
        else:
            parsed = read_jsonl(args.file, rules)
            items = [NewJob(item.custom_id, item.request) for item in parsed.items]
            invalid = [{"line": e.line, "reason": e.reason, "custom_id": e.custom_id} for e in parsed.errors]
            batch_id = await client.submit_batch(items, name="bench", invalid_lines=invalid)
            rejected = len(parsed.errors)
            del parsed, items
        seconds = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        peaks = parsers.stop()
        measured = {
            "seconds": seconds,
            "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
            "child_cpu_s": children.ru_utime + children.ru_stime,
            "self_peak_mb": usage.ru_maxrss / 1024,
            "parser_peaks_mb": peaks,
            # Every parsing process at its peak on top of this one's: an upper bound of them at once.
            "peak_mb": usage.ru_maxrss / 1024 + sum(peaks),
            "phases": None if phases is None else phases.busy,
        }
        assert batch_id is not None
        return {"batch_id": batch_id, "rejected": rejected} | measured | (await _check(client, batch_id))


class _ParserMemory:
    """The peak RSS of each child process (the parsers) after it started its own program (`VmHWM`,
    sampled every 50 ms): `RUSAGE_CHILDREN`'s `ru_maxrss` would count the pages a child shared with
    this process between its fork and its exec."""

    def __init__(self) -> None:
        self._peaks: dict[int, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> list[float]:
        self._done.set()
        self._thread.join()
        return sorted(self._peaks.values(), reverse=True)

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            for pid in _children():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    exe = os.readlink(f"/proc/{pid}/exe")
                except OSError:  # ended meanwhile
                    continue
                if "python" not in Path(exe).name:  # still the fork, before its exec
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) / 1024
                        self._peaks[pid] = max(self._peaks.get(pid, 0.0), peak)


def _children() -> list[int]:
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in (task / "children").read_text().split()]
    return pids


class _Phases:
    """Busy wall time of the submitting process's phases: each wrapped function's calls, in seconds."""

    def __init__(self) -> None:
        import producer.client  # noqa: PLC0415
        import storage.sql.batches  # noqa: PLC0415

        self.busy: dict[str, float] = {}
        batches = storage.sql.batches.Batches
        batches.append = self._timed("insert rows (Batches.append)", batches.append)  # type: ignore[method-assign]
        client = producer.client
        client.enqueue_jobs = self._timed("queue (enqueue_jobs)", client.enqueue_jobs)  # type: ignore[attr-defined]
        if hasattr(producer.client, "encoded_chunks"):  # the trees with `producer.parsing`
            producer.client.encoded_chunks = self._timed_chunks(producer.client.encoded_chunks)

    def _timed_chunks(self, chunks: Any) -> Any:
        name = "wait for parsed chunks"

        async def timed(*args: Any) -> Any:
            encoded = chunks(*args)
            try:
                while True:
                    started = time.perf_counter()
                    try:
                        chunk = await anext(encoded)
                    except StopAsyncIteration:
                        return
                    finally:
                        self.busy[name] = self.busy.get(name, 0.0) + time.perf_counter() - started
                    yield chunk
            finally:
                await encoded.aclose()

        return timed

    def _timed(self, name: str, function: Any) -> Any:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                self.busy[name] = self.busy.get(name, 0.0) + time.perf_counter() - started

        return timed


async def _check(client: Any, batch_id: str) -> dict[str, Any]:
    """What SQL and Redis hold for the batch: jobs, queued ids with a payload, its total."""
    from storage import keys  # noqa: PLC0415
    from storage.jobs import JobStatus  # noqa: PLC0415

    batch = await client.batch(batch_id)
    ids = await client.store.jobs.ids(batch_id, tenant=client.scope, statuses=(JobStatus.QUEUED,))
    queued = 0
    for start in range(0, len(ids), 5_000):
        chunk = ids[start : start + 5_000]
        async with client.redis.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.zscore(client.settings.queue_name, job_id)
                pipe.exists(keys.ARQ_JOB_PREFIX + job_id)
            replies = await pipe.execute()
        queued += sum(1 for n in range(len(chunk)) if replies[2 * n] is not None and replies[2 * n + 1])
    progress = await client.progress(batch_id)
    return {
        "sql_jobs": len(ids),
        "queued": queued,
        "total": batch.total,
        "progress_total": progress.total,
        "invalid_lines": len(batch.invalid_lines),
    }


def child_main(args: argparse.Namespace) -> None:
    if args.profile:
        import cProfile  # noqa: PLC0415

        profiler = cProfile.Profile()
        result = profiler.runcall(asyncio.run, _child(args))
        profiler.dump_stats(args.profile)
    else:
        result = asyncio.run(_child(args))
    print(json.dumps(result))


# --- the parent: generate, run each mode in a child, report ---------------------------------------


def _reset(redis_url: str, database_url: str | None) -> None:
    import redis  # noqa: PLC0415

    redis.Redis.from_url(redis_url).flushdb()
    if database_url and database_url.startswith("postgresql"):
        asyncio.run(_truncate(database_url))


async def _truncate(database_url: str) -> None:
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415

    from storage.sql.schema import truncate_all  # noqa: PLC0415

    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(truncate_all())
    except SQLAlchemyError as exc:  # a database not migrated yet has nothing to truncate
        print(f"(not truncated: {exc.__class__.__name__})", file=sys.stderr)
    finally:
        await engine.dispose()


GOAL_SECONDS = 8.0  # issue 17, per 100,000 lines
GOAL_PEAK_MB = 300.0


@dataclass(frozen=True)
class Variant:
    """One kind of run: a mode, on this tree's code or on the code of `base` (a directory)."""

    mode: str
    base: str | None = None

    @property
    def label(self) -> str:
        return self.mode if self.base is None else f"{self.mode} (base)"


def run_mode(variant: Variant, args: argparse.Namespace, file: Path, tmp: Path, store: str) -> dict[str, Any]:
    mode = variant.mode
    database_url = f"sqlite+aiosqlite:///{tmp / f'{mode}.db'}" if store == "sqlite" else store
    (tmp / f"{mode}.db").unlink(missing_ok=True)
    _reset(args.redis_url, None if store == "sqlite" else store)
    command = [
        sys.executable,
        __file__,
        "--child",
        "--mode",
        mode,
        "--file",
        str(file),
        "--redis-url",
        args.redis_url,
        "--database-url",
        database_url,
        "--chunk-lines",
        str(args.chunk_lines),
    ]
    if args.phases:
        command.append("--phases")
    if args.profile:
        command += ["--profile", f"{args.profile}.{mode}{'.base' if variant.base else ''}"]
    env = dict(os.environ)
    if variant.base is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [variant.base, env.get("PYTHONPATH")]))
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        sys.exit(f"{variant.label} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _store_name(store: str) -> str:
    return "sqlite" if store == "sqlite" else store.partition(":")[0].partition("+")[0]


def _checked(result: dict[str, Any], valid: int, bad: int) -> bool:
    return bool(
        result["sql_jobs"] == result["queued"] == result["total"] == result["progress_total"] == valid
        and result["invalid_lines"] == result["rejected"] == bad
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument(
        "--mode",
        action="append",
        choices=["file", "new", "old"],
        default=None,
        help="What to run, repeatable (default: file).",
    )
    parser.add_argument("--base", default=None, help="Also run --base-mode with the routeq code of BASE.")
    parser.add_argument("--base-mode", default="new", choices=["new", "old"])
    parser.add_argument("--phases", action="store_true", help="Print where the submitting time went.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument(
        "--database-url",
        action="append",
        default=None,
        help="A store to run against, repeatable: 'sqlite' (a fresh file per run) or a PostgreSQL URL.",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="Runs per store and mode (the median is reported)."
    )
    parser.add_argument("--chunk-lines", type=int, default=2_000)
    parser.add_argument("--profile", default=None, help="Write cProfile stats to PROFILE.<mode>.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.mode[0]
        args.database_url = args.database_url[0]
        child_main(args)
        return
    stores = args.database_url or ["sqlite"]
    with tempfile.TemporaryDirectory(prefix="routeq-submit-") as tmp_dir:
        tmp = Path(tmp_dir)
        file = tmp / "large.jsonl"
        valid, bad = generate(file, args.lines)
        size_mb = file.stat().st_size / 1e6
        print(
            f"{args.lines} lines ({valid} valid, {bad} bad), {size_mb:.1f} MB; chunks of {args.chunk_lines}; "
            f"{args.repeat} runs per store and mode"
        )
        variants = [Variant(mode) for mode in args.mode or ["file"]]
        if args.base:
            variants.insert(0, Variant(args.base_mode, str(Path(args.base).resolve())))
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for run in range(1, args.repeat + 1):
            for store in stores:
                for variant in variants:
                    result = run_mode(variant, args, file, tmp, store)
                    results.setdefault((store, variant.label), []).append(result)
                    ok = _checked(result, valid, bad)
                    print(
                        f"  run {run} {_store_name(store)} {variant.label}: {result['seconds']:.2f} s "
                        f"(CPU {result['cpu_s']:.2f} s, parsing processes {result['child_cpu_s']:.2f} s), "
                        f"peak RSS {result['peak_mb']:.0f} MB ({result['self_peak_mb']:.0f} MB"
                        f"{''.join(f' + {mb:.0f}' for mb in result['parser_peaks_mb'])}); "
                        f"{result['sql_jobs']} jobs in SQL, {result['queued']} queued, total "
                        f"{result['total']}, {result['invalid_lines']} rejected lines: "
                        f"{'OK' if ok else 'MISMATCH'}"
                    )
                    if result["phases"]:
                        print("    " + ", ".join(f"{k} {v:.2f} s" for k, v in result["phases"].items()))
                    if not ok:
                        sys.exit(f"{variant.label}: {result}")
        scale = args.lines / 100_000
        for (store, mode), runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu_s"] for r in runs)
            peak = max(r["peak_mb"] for r in runs)
            met = "met" if seconds <= GOAL_SECONDS * scale and peak <= GOAL_PEAK_MB else "NOT met"
            print(
                f"{_store_name(store)} {mode}: median {seconds:.2f} s, {args.lines / seconds:,.0f} lines/s, "
                f"CPU {cpu:.2f} s, peak RSS {peak:.0f} MB (max of {len(runs)}); "
                f"goal <= {GOAL_SECONDS * scale:.1f} s and <= {GOAL_PEAK_MB:.0f} MB: {met}"
            )


if __name__ == "__main__":
    main()
