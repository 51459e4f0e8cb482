"""What the CLI shows: a live progress bar fed by the event stream, status and summary tables, the
response cache's line of a run's summary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from storage.jobs import BatchRecord, BatchSummary, JobStatus

if TYPE_CHECKING:
    # Annotations only: `routeq status` shows a table and must not load Redis and arq for it.
    from producer.client import Client
    from producer.inputs import LineError
    from storage.bus.events import Event

__all__ = [
    "cache_line",
    "follow_with_progress",
    "print_line_errors",
    "simulated_line",
    "status_table",
    "status_view",
    "summary_table",
]

# Without an event for this long, check SQL: the batch may be finished and its stream expired.
_IDLE_CHECK_MS = 2_000


async def follow_with_progress(
    client: Client,
    batch: BatchRecord,
    console: Console,
    *,
    after: str = "0-0",
    on_event: Callable[[Event], None] | None = None,
) -> str:
    """Show a progress bar for `batch` from its events until it completes; returns the last event id."""
    failed = 0
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(batch.id, total=batch.total, completed=0, failed=0)
        while True:
            events = await client.events_bus.read(batch.id, after=after, block_ms=_IDLE_CHECK_MS)
            if not events and (await client.batch(batch.id)).done >= batch.total:
                progress.update(task, completed=batch.total)
                return after
            for event in events:
                after = event.id
                if on_event is not None:
                    on_event(event)
                if event.type == "job.failed":
                    failed += 1
                if event.type in ("batch.progress", "batch.completed"):
                    progress.update(task, completed=event.data["done"], failed=event.data["failed"])
                elif event.type.startswith("job."):
                    progress.update(task, advance=1, failed=failed)
                if event.type == "batch.completed":
                    return after


def status_view(batch: BatchRecord) -> dict[str, Any]:
    """The batch's status and counts as `routeq status --json` prints them."""
    return {
        "id": batch.id,
        "name": batch.name,
        "status": batch.status,
        "total": batch.total,
        "done": batch.done,
        "counts": {status.value: batch.counts.get(status, 0) for status in JobStatus},
        "rejected_lines": len(batch.invalid_lines),
        "created_at": batch.created_at,
        "completed_at": batch.completed_at,
    }


def status_table(batch: BatchRecord) -> Group:
    """`batch <id>: <status>` and the count of jobs per status."""
    table = Table()
    table.add_column("status")
    table.add_column("jobs", justify="right")
    for status in JobStatus:
        table.add_row(status.value, str(batch.counts.get(status, 0)))
    table.add_row("[bold]total", f"[bold]{batch.total}")
    if batch.invalid_lines:
        table.add_row("[red]rejected input lines", f"[red]{len(batch.invalid_lines)}")
    return Group(Text.assemble("batch ", (batch.id, "bold"), f": {batch.status}"), table)


def summary_table(summary: BatchSummary, simulated: frozenset[str] = frozenset()) -> Table:
    """Jobs, cost, latency and failovers per deployment; a simulated deployment is marked `(sim)`."""
    table = Table(title="jobs per deployment", title_justify="left")
    for column in ("deployment", "jobs", "cost $", "p50 ms", "p95 ms", "failovers"):
        table.add_column(column, justify="left" if column == "deployment" else "right")
    for row in summary.deployments:
        table.add_row(
            escape(row.deployment) + (" [dim](sim)[/dim]" if row.deployment in simulated else ""),
            str(row.jobs),
            f"{row.cost_usd:.6f}",
            f"{row.p50_latency_ms:.0f}",
            f"{row.p95_latency_ms:.0f}",
            str(row.failovers),
        )
    table.add_section()
    table.add_row(
        "[bold]succeeded",
        f"[bold]{summary.succeeded}",
        f"[bold]{sum((r.cost_usd for r in summary.deployments), Decimal(0)):.6f}",
        "",
        "",
        f"[bold]{summary.failovers}",
    )
    if summary.failed:
        reasons = ", ".join(f"{name} x{n}" for name, n in sorted(summary.failure_reasons.items()))
        table.add_row("[red]failed", f"[red]{summary.failed}", "", "", "", reasons)
    if summary.cancelled:
        table.add_row("cancelled", str(summary.cancelled), "", "", "", "")
    table.caption = (
        f"{summary.provider_calls} billed provider calls, ${summary.billed_usd:.6f} in the ledger "
        "(failed jobs' calls included)"
    )
    return table


def simulated_line(summary: BatchSummary, simulated: frozenset[str]) -> str | None:
    """How many of the batch's answers came from the simulated world; None when none did."""
    on_sim = sum(row.jobs for row in summary.deployments if row.deployment in simulated)
    if not on_sim:
        return None
    answered = sum(row.jobs for row in summary.deployments)
    every = f"all {on_sim}" if on_sim == answered else f"{on_sim} of {answered}"
    return f"simulated: {every} answers came from the simulated provider world, not a real API"


def cache_line(summary: BatchSummary) -> str | None:
    """The batch's use of the response cache in one line; None when no job used it."""
    if not summary.cache_jobs:
        return None
    return (
        f"cache: {summary.cache_hits} of {summary.cache_jobs} jobs served from it "
        f"(hit rate {summary.cache_hit_rate:.0%}), ${summary.saved_usd:.6f} saved"
    )


def print_line_errors(errors: Sequence[LineError], console: Console, *, source: str, limit: int = 20) -> None:
    """Each rejected input line with its number and reason (the first `limit`, then a count)."""
    for error in errors[:limit]:
        console.print(
            f"[red]{escape(source)}:{error.line}:[/red] {escape(error.reason)}",
            highlight=False,
            soft_wrap=True,
        )
    if len(errors) > limit:
        console.print(f"[red]... and {len(errors) - limit} more rejected lines[/red]")
