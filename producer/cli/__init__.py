"""The `routeq` command line: the typer app, wired from one module per command group.

batches.py    run, submit, status, results, watch, cancel, requeue
workers.py    worker
tools.py      sim, catalog, migrate (catalog_view.py: the catalog's table, wide or 80 columns)
admin.py      deployments ..., budget ...
live_catalog.py  deployments add/set/disable/enable/remove/import/export/history (the live catalog)
cache.py      cache stats, clear, policy
quality.py    feedback, quality
planning.py   plan (route without running)
evals.py      eval (reference sets scored on named deployments)
replay.py     replay (a batch re-planned under other strategies)
serving.py    serve, keys ...
spend.py      spend (per user, API key or batch, from the ledger)
tenants.py    tenant show, set-default-strategy
fleet.py      workers, queue: who works and what waits
webhooks.py   webhooks add, list, remove, secret, deliveries, retry
reporting.py  what the commands show: the progress bar, status and summary tables
running.py    `routeq run` from start to end: submit or --resume, follow, Ctrl-C, summary
embedded.py   `routeq run`'s engine: Redis (or fakeredis) and a worker in this process
_common.py    known errors as one red line; connections opened and closed for a command
"""

from __future__ import annotations

from typing import Annotated

import typer

from producer.cli import (
    admin,
    batches,
    cache,
    evals,
    fleet,
    live_catalog,
    planning,
    quality,
    replay,
    serving,
    spend,
    tenants,
    tools,
    webhooks,
    workers,
)
from producer.cli._common import FileOrCommand

__all__ = ["app", "main"]

# No locals in a traceback: an unexpected error must not print settings holding passwords or keys.
app = typer.Typer(
    help="routeq: route batches of LLM prompts across providers.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # noqa: PLC0415 - only for --version

        print(f"routeq {version('routeq')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """routeq: route batches of LLM prompts across providers."""


# The order of `routeq --help`.
for command in (
    tools.sim,
    batches.run,
    batches.submit,
    batches.status,
    batches.results,
    batches.watch,
    batches.cancel,
    batches.requeue,
    planning.plan,
    quality.feedback,
    quality.quality,
    replay.replay,
    workers.worker,
    fleet.workers,
    fleet.queue,
    tools.migrate,
    serving.serve,
):
    app.command()(command)
app.command(name="eval")(evals.run_eval)
app.command(name="spend")(spend.spend)
app.add_typer(admin.deployments_app, name="deployments")
# The live catalog's changes and history sit in the deployments group (`routeq catalog FILE` shows a file).
for name, change in (
    ("add", live_catalog.add),
    ("set", live_catalog.set_fields),
    ("disable", live_catalog.disable),
    ("enable", live_catalog.enable),
    ("remove", live_catalog.remove),
    ("import", live_catalog.import_file),
    ("export", live_catalog.export),
    ("history", live_catalog.history),
):
    admin.deployments_app.command(name)(change)
# `routeq catalog [FILE]` shows a catalog file; `routeq catalog export|import|history`, the live one.
catalog_app = typer.Typer(
    cls=FileOrCommand, help="Show a catalog file, or export, import and list the live one."
)
catalog_app.command("show")(tools.catalog)
for name, change in (
    ("export", live_catalog.export),
    ("import", live_catalog.import_file),
    ("history", live_catalog.history),
):
    catalog_app.command(name)(change)
app.add_typer(catalog_app, name="catalog")
app.add_typer(admin.budget_app, name="budget")
app.add_typer(cache.cache_app, name="cache")
app.add_typer(serving.keys_app, name="keys")
app.add_typer(tenants.tenant_app, name="tenant")
app.add_typer(webhooks.webhooks_app, name="webhooks")


def main() -> None:
    """The `routeq` console script."""
    app()
