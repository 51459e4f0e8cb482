"""`routeq run` from start to end: submit (or resume), follow, Ctrl-C, summary, results, serve.

Ctrl-C while the batch runs: the first stops the in-process worker from taking jobs and gives the
running ones `ROUTEQ_SHUTDOWN_GRACE_S` to finish; a second cancels them at once. Cancelled jobs
are handed back to `queued` in SQL (`Embedded.stop_work`), so nothing is left `running`, and
`routeq run --resume BATCH_ID` later re-queues what is unfinished (`Client.requeue`: SQL is the
source of truth, the in-process Redis of the interrupted run is gone) and follows it to the end.
Jobs that finished are never run again.

Imports `producer.cli.embedded` (and so `workers`): only the `run` command imports this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from producer.cli.embedded import Embedded, Interrupted, embedded_client
from producer.cli.reporting import cache_line, follow_with_progress, simulated_line, summary_table
from producer.inputs import ParsedInput
from producer.outputs import write_results
from router_core.redact import mask_url
from router_core.simulated import simulated_note
from storage.jobs import ANY_TENANT, NewJob
from storage.settings import Settings
from storage.sql.store import Store
from storage.webhooks.model import Delivery, DeliveryState

__all__ = ["RunOptions", "run_embedded"]

# Exit status after Ctrl-C, as a shell reports a process SIGINT ended.
_INTERRUPTED = 128 + signal.SIGINT


@dataclass(frozen=True)
class RunOptions:
    """What `routeq run` was asked: a parsed FILE or a batch id to resume, and the rest."""

    file: Path | None
    parsed: ParsedInput | None
    resume: str | None
    output: Path | None
    budget: float | None
    serve: int | None
    webhook: str | None = None  # the batch's webhook URL


class CtrlC:
    """SIGINT while a batch runs: `first` is set by the first, `second` by the next ones.

    Installed with `signal.signal` (not asyncio's handler, which would cancel the whole command)
    for the time the batch runs; the previous handler comes back after.
    """

    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.second = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def _handle(self, _signum: int, _frame: Any) -> None:
        event = self.second if self.first.is_set() else self.first
        self._loop.call_soon_threadsafe(event.set)

    @contextmanager
    def installed(self) -> Iterator[CtrlC]:
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (an embedding host): Ctrl-C stays as it was
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


async def run_embedded(settings: Settings, options: RunOptions, console: Console) -> int:
    """Run (or resume) the batch on an in-process worker; returns the exit status (0, or 128 + signal)."""
    async with embedded_client(settings) as embedded:
        client = embedded.client
        started = time.perf_counter()
        batch_id = await _start(embedded, options, console)
        batch = await client.batch(batch_id)
        redis = "in-process Redis" if settings.redis_url is None else f"Redis {mask_url(settings.redis_url)}"
        console.print(
            f"batch [bold]{batch_id}[/bold]: {batch.total} jobs · {redis} · "
            f"{escape(mask_url(settings.database_url))}",
            soft_wrap=True,
        )
        note = simulated_note(embedded.catalog, embedded.simulated, settings.simulate)
        console.print(f"deployments: {escape(note)}", highlight=False, soft_wrap=True)
        with CtrlC().installed() as ctrl_c:
            try:
                await embedded.until(follow_with_progress(client, batch, console), stop=ctrl_c.first)
            except Interrupted:
                return await _interrupted(embedded, settings, batch_id, ctrl_c, console)
        elapsed = time.perf_counter() - started
        summary = await client.store.batches.summary(batch_id)
        console.print(summary_table(summary, embedded.simulated))
        for line in (simulated_line(summary, embedded.simulated), cache_line(summary)):
            if line is not None:
                console.print(line, highlight=False)
        path = options.output or Path(f"results-{batch_id}.jsonl")
        written, _ = await write_results(path, client.results(batch_id))
        console.print(
            f"{batch.total} jobs in {elapsed:.1f}s ({batch.total / elapsed:.0f} jobs/s). "
            f"Results: [bold]{escape(str(path))}[/bold] ({written} lines). "
            f"Later: `routeq results {batch_id}`.",
            soft_wrap=True,
        )
        if options.webhook is not None:
            await _report_webhooks(client.store, batch_id, settings, console)
        if options.serve is not None:
            return await _serve(embedded, settings, options.serve, console)
    return 0


async def _report_webhooks(store: Store, batch_id: str, settings: Settings, console: Console) -> None:
    """Give the in-process worker's sender time for one attempt at each of the batch's webhooks, then
    say how each went (a failed attempt is retried by any worker later opening this database).

    The batch's event is written when the batch is marked complete, just after its last job's
    terminal event (which ended the progress bar): at least the `--webhook` URL's delivery comes.
    """
    bound = time.monotonic() + settings.webhook_timeout_s + 2 * settings.webhook_poll_s + 1
    while True:
        found = await store.webhooks.deliveries(tenant=ANY_TENANT, batch_id=batch_id)
        if time.monotonic() > bound or (found and all(map(attempt_over, found))):
            break
        await asyncio.sleep(0.1)
    for d in found:
        tries = f"{d.attempts} attempt{'' if d.attempts == 1 else 's'} ({d.last_error or 'ok'})"
        console.print(
            f"webhook {d.event_type.value} to {d.url}: {d.state.value} after {tries}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )


def attempt_over(delivery: Delivery) -> bool:
    """Whether a delivery has an outcome to report: it is finished, or an attempt of it has ended
    (a failure due again later). A claimed attempt counts in `attempts` from its start, so a
    delivery with attempts but neither a status nor an error is still being sent."""
    ended = delivery.last_status is not None or delivery.last_error is not None
    return delivery.state != DeliveryState.PENDING or ended


async def _start(embedded: Embedded, options: RunOptions, console: Console) -> str:
    """Submit the parsed file, or re-queue what the batch being resumed has left; its id."""
    client = embedded.client
    if options.resume is not None:
        batch = await client.batch(options.resume)  # NotFoundError: one line, exit 1
        requeued = await client.requeue(batch.id)
        console.print(
            f"resuming {batch.id}: {batch.done} of {batch.total} jobs already finished, "
            f"{requeued} queued again",
            highlight=False,
            soft_wrap=True,
        )
        return batch.id
    # The command checked that it has a file or a batch to resume.
    assert options.parsed is not None
    assert options.file is not None
    items = [NewJob(item.custom_id, item.request) for item in options.parsed.items]
    invalid = [dataclasses.asdict(e) for e in options.parsed.errors]
    return await client.submit_batch(
        items,
        name=options.file.name,
        invalid_lines=invalid,
        budget_usd=options.budget,
        webhook_url=options.webhook,
    )


async def _interrupted(
    embedded: Embedded, settings: Settings, batch_id: str, ctrl_c: CtrlC, console: Console
) -> int:
    """Ctrl-C: let running jobs finish (or not, on a second Ctrl-C), hand back the rest, say how to resume."""
    running = sum(not t.done() for t in embedded.worker.tasks.values())
    if running:
        console.print(
            f"stopping: {running} running jobs get up to {settings.shutdown_grace_s}s to finish "
            "(Ctrl-C again to stop them now)",
            highlight=False,
            soft_wrap=True,
        )
    handed_back = await embedded.stop_work(grace_s=settings.shutdown_grace_s, hurry=ctrl_c.second)
    batch = await embedded.client.batch(batch_id)
    back = f" ({handed_back} stopped mid-run and put back)" if handed_back else ""
    console.print(
        f"interrupted: {batch.done} of {batch.total} jobs finished; the other {batch.total - batch.done} "
        f"are queued in the database{back}. Resume with: routeq run --resume {batch_id}",
        highlight=False,
        soft_wrap=True,
    )
    return _INTERRUPTED


async def _serve(embedded: Embedded, settings: Settings, port: int, console: Console) -> int:
    """`--serve`: the HTTP API in dev mode on the same in-process stack, until a signal stops it."""
    from producer.api import serve_app  # noqa: PLC0415 - FastAPI and uvicorn: --serve only

    dev = settings.model_copy(update={"api_dev_mode": True})
    console.print(
        f"HTTP API on http://127.0.0.1:{port} (docs at /docs), dev mode without keys. Ctrl-C stops."
    )
    console.print(f"Dashboard: http://127.0.0.1:{port}/ui")
    client = embedded.client
    stopped_by = await embedded.until(serve_app(dev, client.redis, client.store, host="127.0.0.1", port=port))
    return 0 if stopped_by is None else 128 + stopped_by
