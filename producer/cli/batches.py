"""Batch commands of the `routeq` CLI: run, submit, status, results, watch, cancel, requeue.

`status` and `results` read SQL only, so they import neither Redis nor arq; `run` alone imports the
embedded stack (and so `workers`), and FastAPI only with `--serve`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import typer
from rich.console import Console

from producer.cli._common import execute, finite_usd, load_settings, with_client, with_store
from router_core.errors import ConfigError
from router_core.redact import mask_url
from storage.logs import configure_logging

if TYPE_CHECKING:
    from producer.client import Client, SubmitProgress
    from producer.inputs import InputRules, LineError, ParsedInput
    from storage.bus.events import Event
    from storage.jobs import NewJob
    from storage.settings import Settings
    from storage.sql.store import Store

__all__ = ["cancel", "requeue", "results", "run", "status", "submit", "watch"]

console = Console()
err_console = Console(stderr=True)

BudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--budget",
        min=0,
        callback=finite_usd,
        help="Spend cap for this batch, in USD (the user's cap still holds).",
    ),
]
FileArg = Annotated[Path, typer.Argument(help="JSONL file: OpenAI Batch lines or {prompt|messages, ...}.")]
IdArg = Annotated[str, typer.Argument(help="A batch id (batch_...) or a job id (job_...).")]


def _input_rules(settings: Settings) -> InputRules:
    """The settings' limits and the catalog the workers route with: a line naming an unknown model
    or deployment is refused at submission, by line and field."""
    from producer.inputs import InputRules  # noqa: PLC0415 - pydantic models of requests, on use
    from router_core.catalog import load_catalog  # noqa: PLC0415 - pydantic models of deployments, on use

    try:
        catalog = load_catalog(settings.catalog_path)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    return InputRules.from_settings(settings, catalog)


def _cannot_read(path: Path, exc: OSError) -> typer.Exit:
    err_console.print(f"[red]error:[/red] cannot read {path}: {exc.strerror or exc}")
    return typer.Exit(2)


def _report_input(path: Path, errors: Sequence[LineError], lines_read: int, valid: int) -> None:
    """The rejected lines, how many, and an exit when nothing is left to run."""
    from producer.cli.reporting import print_line_errors  # noqa: PLC0415 - rich's tables, on use

    print_line_errors(errors, err_console, source=str(path))
    if errors:
        err_console.print(
            f"[yellow]{len(errors)} of {lines_read} lines rejected (kept on the batch); "
            f"the other {valid} run.[/yellow]"
        )
    if not valid:
        err_console.print(f"[red]error:[/red] {path} has no valid lines to run")
        raise typer.Exit(1)


def _read_input(path: Path, settings: Settings) -> ParsedInput:
    """The whole file's requests, each checked against `_input_rules` (for `routeq run`)."""
    from producer.inputs import read_jsonl  # noqa: PLC0415 - pydantic models of requests, on use

    rules = _input_rules(settings)
    try:
        parsed = read_jsonl(path, rules)
    except OSError as exc:
        raise _cannot_read(path, exc) from exc
    _report_input(path, parsed.errors, parsed.lines_read, len(parsed.items))
    return parsed


def _batch_items(parsed: ParsedInput) -> tuple[list[NewJob], list[dict[str, Any]]]:
    from storage.jobs import NewJob  # noqa: PLC0415 - pydantic models of requests, on use

    items = [NewJob(item.custom_id, item.request) for item in parsed.items]
    invalid = [dataclasses.asdict(e) for e in parsed.errors]
    return items, invalid


def run(
    file: FileArg,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Results JSONL path.")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs run at once (ROUTEQ_WORKER_CONCURRENCY).")
    ] = None,
    budget: BudgetOpt = None,
    serve: Annotated[
        int | None,
        typer.Option(
            "--serve",
            metavar="PORT",
            help="Then keep running and serve the HTTP API on 127.0.0.1:PORT in dev mode (no keys).",
        ),
    ] = None,
) -> None:
    """Run a batch here and now: in-process Redis and workers, results to SQLite and a JSONL file.

    With `--serve PORT` the same in-process stack then serves the HTTP API (OpenAI-compatible
    chat completions and Batch API, results, events) until Ctrl-C, without API keys.
    """
    from producer.cli.embedded import embedded_client  # noqa: PLC0415 - imports workers: `run` only
    from producer.cli.reporting import (  # noqa: PLC0415 - start-up: imported on use
        cache_line,
        follow_with_progress,
        summary_table,
    )
    from producer.outputs import write_results  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()
    # Warnings and errors only (the progress bar says the rest), in ROUTEQ_LOG_FORMAT.
    configure_logging(settings.log_format, level="WARNING")
    parsed = _read_input(file, settings)
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})

    async def go() -> int | None:
        """Run the batch (then serve, with --serve); the signal that stopped the server, if any."""
        async with embedded_client(settings) as embedded:
            client = embedded.client
            items, invalid = _batch_items(parsed)
            started = time.perf_counter()
            batch_id = await client.submit_batch(
                items, name=file.name, invalid_lines=invalid, budget_usd=budget
            )
            batch = await client.batch(batch_id)
            mode = (
                "in-process Redis" if settings.redis_url is None else f"Redis {mask_url(settings.redis_url)}"
            )
            database = mask_url(settings.database_url)
            console.print(f"batch [bold]{batch_id}[/bold]: {batch.total} jobs · {mode} · {database}")
            await embedded.until(follow_with_progress(client, batch, console))
            elapsed = time.perf_counter() - started
            summary = await client.store.batches.summary(batch_id)
            console.print(summary_table(summary))
            if (cached := cache_line(summary)) is not None:
                console.print(cached, highlight=False)
            path = output or Path(f"results-{batch_id}.jsonl")
            written, _ = await write_results(path, client.results(batch_id))
            console.print(
                f"{batch.total} jobs in {elapsed:.1f}s ({batch.total / elapsed:.0f} jobs/s). "
                f"Results: [bold]{path}[/bold] ({written} lines). Later: `routeq results {batch_id}`."
            )
            if serve is not None:
                from producer.api import serve_app  # noqa: PLC0415 - FastAPI and uvicorn: --serve only

                dev = settings.model_copy(update={"api_dev_mode": True})
                console.print(
                    f"HTTP API on http://127.0.0.1:{serve} (docs at /docs), dev mode without keys. "
                    "Ctrl-C stops."
                )
                return await embedded.until(
                    serve_app(dev, client.redis, client.store, host="127.0.0.1", port=serve)
                )
        return None

    stopped_by = execute(go())
    if stopped_by is not None:  # everything is closed: exit as the signal would have (130 for Ctrl-C)
        raise typer.Exit(128 + stopped_by)


def submit(
    file: FileArg,
    wait: Annotated[bool, typer.Option("--wait", help="Follow progress until the batch is done.")] = False,
    name: Annotated[str | None, typer.Option(help="A name for the batch.")] = None,
    budget: BudgetOpt = None,
    chunk_lines: Annotated[
        int, typer.Option(min=1, help="Lines read, checked, written and queued at a time.")
    ] = 2_000,
) -> None:
    """Queue a batch on ROUTEQ_REDIS_URL for `routeq worker` processes; prints the batch id.

    The file is read, checked, written to SQL and queued a chunk at a time, so a file of any size
    takes the memory of one chunk; jobs of the first chunks may run while later ones are read.
    """
    from producer.cli.reporting import follow_with_progress, status_table  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()
    rules = _input_rules(settings)
    try:
        source = file.open("rb")
    except OSError as exc:
        raise _cannot_read(file, exc) from exc

    async def go(client: Client) -> None:
        done = await _submit_file(
            client, source, file, rules, name=name or file.name, budget=budget, chunk_lines=chunk_lines
        )
        _report_input(file, done.errors, done.lines_read, done.queued)
        assert done.batch_id is not None  # a file with a valid line makes a batch
        console.print(done.batch_id)
        if wait:
            await follow_with_progress(client, await client.batch(done.batch_id), err_console)
            err_console.print(status_table(await client.batch(done.batch_id)))

    with source:
        execute(with_client(settings, go))


async def _submit_file(
    client: Client,
    source: BinaryIO,
    path: Path,
    rules: InputRules,
    *,
    name: str,
    budget: float | None,
    chunk_lines: int,
) -> SubmitProgress:
    """`Client.submit_chunks` of the open file, with a progress bar of the bytes read (on stderr)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    from producer.inputs import read_jsonl_chunks  # noqa: PLC0415 - pydantic models of requests, on use

    size = os.fstat(source.fileno()).st_size
    columns = (
        TextColumn("[bold]submitting"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[queued]} queued, {task.fields[rejected]} rejected"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(path.name, total=size, queued=0, rejected=0)

        def show(progress: SubmitProgress) -> None:
            bar.update(task, completed=source.tell(), queued=progress.queued, rejected=len(progress.errors))

        try:
            return await client.submit_chunks(
                read_jsonl_chunks(source, rules, chunk_lines=chunk_lines),
                name=name,
                budget_usd=budget,
                on_chunk=show,
            )
        except OSError as exc:
            raise _cannot_read(path, exc) from exc


def status(id: IdArg) -> None:
    """A batch's counts per status, or one job's status, cost and attempts (reads SQL only)."""
    from producer.cli.reporting import status_table  # noqa: PLC0415 - start-up: imported on use
    from storage.jobs import ANY_TENANT  # noqa: PLC0415 - start-up: imported on use

    async def go(store: Store) -> None:
        if id.startswith("job_"):
            job = await store.jobs.get(id, tenant=ANY_TENANT)
            console.print(
                f"job {job.id} ({job.custom_id}) in {job.batch_id}: [bold]{job.status.value}[/bold]"
            )
            for attempt in await store.jobs.attempts(id, tenant=ANY_TENANT):
                outcome = (
                    attempt["outcome"]
                    if not attempt["error"]
                    else f"{attempt['outcome']}: {attempt['error']}"
                )
                console.print(
                    f"  try {attempt['run']}.{attempt['attempt_no']} {attempt['deployment']}: {outcome}"
                )
            if job.cost_usd is not None:
                console.print(f"  cost ${job.cost_usd:.6f} on {job.deployment}")
            return
        console.print(status_table(await store.batches.get(id, tenant=ANY_TENANT)))

    execute(with_store(load_settings(), go))


def results(
    id: IdArg,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            metavar="KEY=VALUE",
            help="Only jobs whose request metadata holds this pair (split at the first '='); "
            "repeat it for several pairs, all of which must match.",
        ),
    ] = None,
) -> None:
    """The batch's finished results as OpenAI-batch-style JSONL (reads SQL only)."""
    from producer.outputs import metadata_filter, write_results  # noqa: PLC0415 - start-up: imported on use
    from storage.jobs import ANY_TENANT  # noqa: PLC0415 - start-up: imported on use

    try:
        pairs = metadata_filter(metadata or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--metadata") from None

    async def go(store: Store) -> None:
        batch = await store.batches.get(id, tenant=ANY_TENANT)
        target = output or Path("/dev/stdout")
        jobs = store.jobs.iter(batch.id, tenant=ANY_TENANT, metadata=pairs)
        written, pending = await write_results(target, jobs)
        if output is not None:
            err_console.print(f"{written} results written to {output}")
        if pending:
            err_console.print(f"[yellow]{pending} jobs not finished yet[/yellow]")

    execute(with_store(load_settings(), go))


def watch(
    id: IdArg,
    after: Annotated[str, typer.Option(help="Resume after this event id (0-0 = from the start).")] = "0-0",
) -> None:
    """Live progress of a batch from its event stream; failures are printed as they happen."""
    from producer.cli.reporting import follow_with_progress, status_table  # noqa: PLC0415 - start-up: imported on use

    def show_failure(event: Event) -> None:
        if event.type == "job.failed":
            err_console.print(
                f"[red]{event.data['custom_id']}[/red]: {event.data.get('error')}", highlight=False
            )

    async def go(client: Client) -> None:
        batch = await client.batch(id)
        last = await follow_with_progress(client, batch, console, after=after, on_event=show_failure)
        console.print(status_table(await client.batch(id)))
        console.print(f"last event id: {last}")

    execute(with_client(load_settings(), go))


def cancel(id: IdArg) -> None:
    """Cancel a batch's queued jobs (or one job); jobs already running finish."""

    async def go(client: Client) -> None:
        if id.startswith("job_"):
            job = await client.get(id)
            count = await client.cancel(job.batch_id, job_id=id)
        else:
            count = await client.cancel(id)
        console.print(f"{count} queued jobs cancelled")

    execute(with_client(load_settings(), go))


def requeue(id: IdArg) -> None:
    """Re-enqueue a batch's jobs that nothing will run, and restore its counters, from SQL.

    For a crash mid-submit, a Redis data loss or jobs arq dropped: queued and running jobs with no
    live lease go back on the queue; a batch whose jobs are all finished is marked complete.
    """

    async def go(client: Client) -> None:
        console.print(f"{await client.requeue(id)} jobs put back on the queue")

    execute(with_client(load_settings(), go))
