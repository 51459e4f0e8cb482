"""Batch commands of the `routeq` CLI: run, submit, status, results, watch, cancel, requeue.

`status` and `results` read SQL only, so they import neither Redis nor arq; `run` alone imports the
embedded stack (and so `workers`), and FastAPI only with `--serve`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import typer
from rich.console import Console
from rich.markup import escape

from producer.cli._common import (
    JsonFlag,
    execute,
    fail,
    finite_usd,
    load_catalog_or_exit,
    load_settings,
    print_json,
    with_client,
    with_store,
)
from storage.logs import configure_logging

if TYPE_CHECKING:
    from producer.client import Client, SubmitProgress
    from producer.inputs import InputRules, LineError, ParsedInput
    from storage.bus.events import Event
    from storage.jobs import BatchRecord, JobRecord
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
BatchIdArg = Annotated[str, typer.Argument(help="A batch id (batch_...).")]
WebhookOpt = Annotated[
    str | None,
    typer.Option(
        "--webhook",
        metavar="URL",
        help="POST the batch's webhook events here (batch.completed or batch.failed, job.failed), "
        "signed with the tenant's secret (`routeq webhooks secret`).",
    ),
]
_WEBHOOK_NOTE = "webhook: events go to {url}, signed with the tenant's secret (`routeq webhooks secret`)"


def _input_rules(settings: Settings) -> InputRules:
    """The settings' limits and the catalog the workers route with: a line naming an unknown model
    or deployment is refused at submission, by line and field."""
    from producer.inputs import InputRules  # noqa: PLC0415 - pydantic models of requests, on use

    return InputRules.from_settings(settings, load_catalog_or_exit())


def _cannot_read(path: Path, exc: OSError) -> typer.Exit:
    return fail(f"cannot read {path}: {exc.strerror or exc}")


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
        raise fail(f"{path} has no valid lines to run", code=1)


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


def run(
    file: Annotated[
        Path | None,
        typer.Argument(help="JSONL file: OpenAI Batch lines or {prompt|messages, ...}.", show_default=False),
    ] = None,
    *,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Results JSONL path.")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs run at once (ROUTEQ_WORKER_CONCURRENCY).")
    ] = None,
    budget: BudgetOpt = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="BATCH_ID",
            help="Run what an interrupted `routeq run` left (instead of a FILE); finished jobs stay done.",
        ),
    ] = None,
    serve: Annotated[
        int | None,
        typer.Option(
            "--serve",
            metavar="PORT",
            help="Then keep running and serve the HTTP API on 127.0.0.1:PORT in dev mode (no keys).",
        ),
    ] = None,
    webhook: WebhookOpt = None,
) -> None:
    """Run a batch here and now: in-process Redis and workers, results to SQLite and a JSONL file.

    Ctrl-C stops taking jobs and lets running ones finish (Ctrl-C again stops them too); the rest
    stay queued in the database for `routeq run --resume BATCH_ID`.
    With `--serve PORT` the same in-process stack then serves the HTTP API (OpenAI-compatible
    chat completions and Batch API, results, events) until Ctrl-C, without API keys.
    """
    from producer.cli.running import RunOptions, run_embedded  # noqa: PLC0415 - imports workers: `run` only

    if (file is None) == (resume is None):
        raise fail("give the FILE to run, or --resume BATCH_ID to finish an interrupted run (not both)")
    if resume is not None and budget is not None:
        raise fail("--budget is set when a batch is made; a resumed batch keeps its own")
    settings = load_settings()
    # Warnings and errors only (the progress bar says the rest), in ROUTEQ_LOG_FORMAT.
    configure_logging(settings.log_format, level="WARNING")
    parsed = _read_input(file, settings) if file is not None else None
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})
    if webhook is not None and resume is not None:
        raise fail("--webhook is set when a batch is made; a resumed batch keeps its own")
    options = RunOptions(
        file=file, parsed=parsed, resume=resume, output=output, budget=budget, serve=serve, webhook=webhook
    )
    exit_code = execute(run_embedded(settings, options, console))
    if exit_code:  # everything is closed: exit as the signal would have (130 for Ctrl-C)
        raise typer.Exit(exit_code)


def submit(
    file: FileArg,
    *,
    wait: Annotated[bool, typer.Option("--wait", help="Follow progress until the batch is done.")] = False,
    name: Annotated[str | None, typer.Option(help="A name for the batch.")] = None,
    budget: BudgetOpt = None,
    chunk_lines: Annotated[
        int, typer.Option(min=1, help="Lines read, checked, written and queued at a time.")
    ] = 2_000,
    webhook: WebhookOpt = None,
) -> None:
    """Queue a batch on ROUTEQ_REDIS_URL for `routeq worker` processes; prints the batch id.

    The file is read, checked, written to SQL and queued a chunk at a time, so a file of any size
    takes the memory of one chunk; jobs of the first chunks may run while later ones are read.
    """
    from producer.cli.live_catalog import live_or_file_catalog  # noqa: PLC0415 - on use
    from producer.cli.reporting import status_table  # noqa: PLC0415 - start-up: imported on use
    from producer.inputs import InputRules  # noqa: PLC0415 - pydantic models of requests, on use

    settings = load_settings()
    # The workers route with the live catalog: lines are checked against it (the file before any).
    rules = InputRules.from_settings(settings, live_or_file_catalog(settings))
    try:
        source = file.open("rb")
    except OSError as exc:
        raise _cannot_read(file, exc) from exc

    async def go(client: Client) -> None:
        done = await _submit_file(
            client,
            source,
            file,
            rules,
            name=name or file.name,
            budget=budget,
            chunk_lines=chunk_lines,
            webhook=webhook,
        )
        _report_input(file, done.errors, done.lines_read, done.queued)
        assert done.batch_id is not None  # a file with a valid line makes a batch
        console.print(done.batch_id)
        if webhook is not None:
            err_console.print(
                _WEBHOOK_NOTE.format(url=webhook), highlight=False, soft_wrap=True, markup=False
            )
        if wait:
            await _follow_while_workers_live(client, settings, done.batch_id)
            err_console.print(status_table(await client.batch(done.batch_id)))

    with source:
        execute(with_client(settings, go))


async def _follow_while_workers_live(client: Client, settings: Settings, batch_id: str) -> None:
    """Follow the batch to its end, or fail within seconds when no live worker is registered."""
    from producer.cli import fleet  # noqa: PLC0415 - start-up: imported on use
    from producer.cli.reporting import follow_with_progress  # noqa: PLC0415 - start-up: imported on use

    follow = asyncio.ensure_future(follow_with_progress(client, await client.batch(batch_id), err_console))
    nobody = asyncio.ensure_future(fleet.until_no_live_worker(client.redis, settings))
    try:
        await asyncio.wait({follow, nobody}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (follow, nobody):
            task.cancel()
        await asyncio.gather(follow, nobody, return_exceptions=True)
    if not follow.cancelled():
        follow.result()  # the batch finished (or following it failed: raised here)
        return
    if not nobody.cancelled():
        nobody.result()  # the registry could not be read: raised here
    raise fail(
        f"no live worker on queue {settings.queue_name!r} of this Redis, so nothing runs {batch_id}: start "
        "`routeq worker` with the same ROUTEQ_REDIS_URL and ROUTEQ_QUEUE_NAME (`routeq workers` lists them). "
        f"The batch stays queued; follow it with `routeq watch {batch_id}`.",
        code=3,
    )


async def _submit_file(
    client: Client,
    source: BinaryIO,
    path: Path,
    rules: InputRules,
    *,
    name: str,
    budget: float | None,
    chunk_lines: int,
    webhook: str | None = None,
) -> SubmitProgress:
    """`Client.submit_chunks` of the file (a large one parsed in a process of its own), with a
    progress bar of the bytes read (on stderr); `source` is the file, open."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    from producer.parsing import JsonlFile  # noqa: PLC0415 - pydantic models of requests, on use

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
            bar.update(
                task, completed=progress.bytes_read, queued=progress.queued, rejected=len(progress.errors)
            )

        try:
            return await client.submit_chunks(
                JsonlFile(path, rules, chunk_lines=chunk_lines),
                name=name,
                budget_usd=budget,
                on_chunk=show,
                webhook_url=webhook,
            )
        except OSError as exc:
            raise _cannot_read(path, exc) from exc


def status(id: IdArg, as_json: JsonFlag = False) -> None:
    """A batch's counts per status, or one job's status, cost and attempts (reads SQL only)."""
    from producer.cli.reporting import status_table, status_view  # noqa: PLC0415 - start-up: imported on use
    from storage.jobs import ANY_TENANT  # noqa: PLC0415 - start-up: imported on use

    async def go(store: Store) -> None:
        if not id.startswith("job_"):
            batch = await store.batches.get(id, tenant=ANY_TENANT)
            if as_json:
                print_json(status_view(batch))
            else:
                console.print(status_table(batch))
            return
        job = await store.jobs.get(id, tenant=ANY_TENANT)
        attempts = await store.jobs.attempts(id, tenant=ANY_TENANT)
        if as_json:
            print_json(_job_view(job, attempts))
            return
        console.print(
            f"job {job.id} ({escape(job.custom_id)}) in {job.batch_id}: [bold]{job.status.value}[/bold]"
        )
        for attempt in attempts:
            outcome = (
                attempt["outcome"] if not attempt["error"] else f"{attempt['outcome']}: {attempt['error']}"
            )
            console.print(
                f"  try {attempt['run']}.{attempt['attempt_no']} {attempt['deployment']}: {escape(outcome)}"
            )
        if job.cost_usd is not None:
            console.print(f"  cost ${job.cost_usd:.6f} on {job.deployment}")

    execute(with_store(load_settings(), go))


def _job_view(job: JobRecord, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """One job as `routeq status job_... --json` prints it."""
    return {
        "id": job.id,
        "custom_id": job.custom_id,
        "batch_id": job.batch_id,
        "status": job.status.value,
        "deployment": job.deployment,
        "cost_usd": job.cost_usd,
        "latency_ms": job.latency_ms,
        "failovers": job.failovers,
        "error": job.error,
        "attempts": attempts,
    }


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
    """Finished results as OpenAI-batch-style JSONL: a batch's, or one job's (reads SQL only)."""
    from producer.outputs import metadata_filter, write_results  # noqa: PLC0415 - start-up: imported on use
    from storage.jobs import ANY_TENANT  # noqa: PLC0415 - start-up: imported on use

    try:
        pairs = metadata_filter(metadata or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--metadata") from None
    if pairs and id.startswith("job_"):
        raise fail("--metadata picks jobs of a batch: give a batch id, or drop it to get the job's result")

    async def go(store: Store) -> None:
        target = output or Path("/dev/stdout")
        if id.startswith("job_"):
            jobs: AsyncIterable[JobRecord] = _one(await store.jobs.get(id, tenant=ANY_TENANT))
        else:
            batch = await store.batches.get(id, tenant=ANY_TENANT)
            jobs = store.jobs.iter(batch.id, tenant=ANY_TENANT, metadata=pairs)
        written, pending = await write_results(target, jobs)
        if output is not None:
            err_console.print(f"{written} results written to {escape(str(output))}")
        if pending:
            err_console.print(f"[yellow]{pending} jobs not finished yet[/yellow]")

    execute(with_store(load_settings(), go))


async def _one(job: JobRecord) -> AsyncIterator[JobRecord]:
    yield job


def _batch_id(id: str, command: str) -> str:
    """`id` when it names a batch; a job id is one error line saying what to type instead."""
    if id.startswith("job_"):
        raise fail(
            f"`routeq {command}` takes a batch id; {id} is a job (`routeq status {id}` names its batch)"
        )
    return id


def watch(
    id: BatchIdArg,
    after: Annotated[str, typer.Option(help="Resume after this event id (0-0 = from the start).")] = "0-0",
) -> None:
    """Live progress of a batch from its event stream; failures are printed as they happen.

    A batch already finished is read from SQL alone: its summary needs no Redis.
    """
    from producer.cli.reporting import follow_with_progress, status_table  # noqa: PLC0415 - start-up: imported on use
    from storage.jobs import ANY_TENANT  # noqa: PLC0415 - start-up: imported on use

    batch_id = _batch_id(id, "watch")
    settings = load_settings()

    async def finished(store: Store) -> BatchRecord | None:
        batch = await store.batches.get(batch_id, tenant=ANY_TENANT)
        return batch if batch.status in ("completed", "cancelled") and not batch.submitting else None

    done = execute(with_store(settings, finished))
    if done is not None:
        console.print(status_table(done))
        console.print(
            f"{done.id} is finished (read from the database): `routeq results {done.id}` prints them"
        )
        return

    def show_failure(event: Event) -> None:
        if event.type == "job.failed":
            err_console.print(
                f"[red]{escape(str(event.data['custom_id']))}[/red]: {escape(str(event.data.get('error')))}",
                highlight=False,
            )

    async def go(client: Client) -> None:
        batch = await client.batch(batch_id)
        last = await follow_with_progress(client, batch, console, after=after, on_event=show_failure)
        console.print(status_table(await client.batch(batch_id)))
        console.print(f"last event id: {last}")

    execute(with_client(settings, go))


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


def requeue(id: BatchIdArg) -> None:
    """Re-enqueue a batch's jobs that nothing will run, and restore its counters, from SQL.

    For a crash mid-submit, a Redis data loss or jobs arq dropped: queued and running jobs with no
    live lease go back on the queue; a batch whose jobs are all finished is marked complete.
    """

    batch_id = _batch_id(id, "requeue")

    async def go(client: Client) -> None:
        console.print(f"{await client.requeue(batch_id)} jobs put back on the queue")

    execute(with_client(load_settings(), go))
