"""`routeq worker`: an arq worker process against the fleet's Redis and database.

The only command, with `routeq run`, that imports `workers`, and it does so when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from producer.cli._common import execute, load_settings, with_client
from storage.logs import configure_logging, tune_gc

if TYPE_CHECKING:
    from producer.client import Client

__all__ = ["worker"]


def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs run at once (ROUTEQ_WORKER_CONCURRENCY).")
    ] = None,
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every job (DEBUG).")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Prometheus /metrics port, 0 = any free one (ROUTEQ_WORKER_METRICS_PORT)."
        ),
    ] = None,
) -> None:
    """Run a worker process against ROUTEQ_REDIS_URL and ROUTEQ_DATABASE_URL (scale by running more)."""
    from workers.context import Shared  # noqa: PLC0415 - only this command starts workers
    from workers.worker import build_worker, run_worker  # noqa: PLC0415 - only this command starts workers

    settings = load_settings()
    # routeq's and arq's lines in ROUTEQ_LOG_FORMAT; each job's own lines only with --verbose.
    configure_logging(settings.log_format, verbose=verbose)
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})
    if metrics_port is not None:
        settings = settings.model_copy(update={"worker_metrics_port": metrics_port})

    async def go(client: Client) -> None:
        # Connections were checked by with_client; the worker opens its own pool with retries.
        worker = build_worker(settings, burst=burst, shared=Shared(store=client.store))
        tune_gc(settings.gc_threshold)  # the imports are done: what they left alive is frozen
        await run_worker(worker)

    execute(with_client(settings, go))
